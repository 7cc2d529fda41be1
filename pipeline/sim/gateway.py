"""A rate-limiting gateway in front of the simulated model: a token bucket, as proxies and
hosted OpenAI-compatible APIs put in front of a model server (LiteLLM, Kong, Envoy, ...).

Each chat request takes one token; a request that finds the bucket empty gets 429 with a
``Retry-After`` of whole seconds until the next token (at least 1, as those gateways send it).
Pure logic: the clock is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ApiError


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: int  # bucket size
    tokens: float = -1.0  # starts full
    updated: float = 0.0

    def take(self, now: float) -> float | None:
        """Take a token at ``now``; None if granted, else the seconds until one is due."""
        if self.tokens < 0:
            self.tokens, self.updated = float(self.burst), now
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate


def retry_after_header(wait: float) -> str:
    """Whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait)))


def rate_limited(rate: float, wait: float) -> ApiError:
    """The 429 answer, in the OpenAI error shape."""
    message = (
        f"Rate limit reached: {rate:g} requests per second. "
        f"Please try again in {retry_after_header(wait)}s."
    )
    return ApiError(429, message, "rate_limit_error")

"""Retry policy as data plus pure functions: which failures to retry and how long to wait.

Retried: connection errors and timeouts, HTTP 408, 429 and 5xx, and 200 answers that are
malformed or hold no choices. Not retried: every other 4xx (the server's message is kept).
The wait is exponential backoff with full jitter
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/); a ``Retry-After``
header is honoured but capped, as openai-python does.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

RETRYABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6  # first try + retries
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_exp_base: float = 2.0
    retry_after_max: float = 60.0


def is_retryable_status(status: int) -> bool:
    """408, 429 and every 5xx are worth another attempt; other statuses are final."""
    return status in RETRYABLE_STATUS or 500 <= status <= 599


def compute_backoff(
    policy: RetryPolicy,
    attempt: int,
    retry_after: float | None = None,
    rand: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Full jitter: uniform in [0, min(wait_max, initial * base ** (attempt - 1))]. A server's
    ``Retry-After`` wins when given, capped at ``retry_after_max``.
    """
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, policy.retry_after_max)
    exponent = min(attempt - 1, 64)  # past this the cap has long won; avoids float overflow
    ceiling = min(policy.wait_max, policy.wait_initial * policy.wait_exp_base**exponent)
    return (rand or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if seconds == seconds else None  # NaN -> None

"""Simulator settings: the server (`SimConfig`) and injected faults (`FaultConfig`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: The /metrics dialects the simulator can speak (``none``: no /metrics at all, 404).
METRICS_FLAVOURS = ("vllm", "sglang", "llamacpp", "none")

#: Fault kinds in the order their probabilities are stacked on one uniform draw.
FAULT_KINDS: tuple[str, ...] = (
    "error_429",
    "error_503",
    "error_500",
    "reset",
    "hang",
    "malformed",
    "empty_choices",
)


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Per-request fault probabilities (0..1) for /v1/chat/completions, plus down windows.

    One uniform number is drawn per chat request; the probabilities are stacked in the order
    of `FAULT_KINDS`, so their sum should stay <= 1 (anything beyond 1 never fires).
    `schema` is drawn apart (its own seeded generator), only for structured-output requests
    that drew no other fault: such a request then gets a bad answer, the kinds of
    `structured_faults.KINDS` in turn (not JSON, or JSON that breaks the schema).
    `down` holds (start_seconds_after_server_start, duration_seconds) windows during which
    the listening socket is closed and open connections are dropped.
    """

    error_429: float = 0.0
    error_500: float = 0.0
    error_503: float = 0.0
    reset: float = 0.0
    hang: float = 0.0
    malformed: float = 0.0
    empty_choices: float = 0.0
    schema: float = 0.0  # a bad answer to a structured-output request (see structured_faults)
    retry_after: float | None = None
    hang_seconds: float = 3600.0
    down: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        for kind in (*FAULT_KINDS, "schema"):
            value = getattr(self, kind)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault probability {kind}={value} is not within 0..1")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"retry_after={self.retry_after} must be >= 0")
        if self.hang_seconds < 0:
            raise ValueError(f"hang_seconds={self.hang_seconds} must be >= 0")
        for start, duration in self.down:
            if start < 0 or duration <= 0 or not math.isfinite(start + duration):
                raise ValueError(f"bad down window ({start}, {duration})")

    def pick(self, draw: float) -> str | None:
        """The fault kind selected by a uniform draw in [0, 1), or None for a normal answer."""
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(self, kind)
            if draw < edge:
                return kind
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build from JSON-like data (unknown keys raise ValueError; lists become tuples)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "down":
                kwargs[key] = tuple((float(s), float(d)) for s, d in value)
            elif key == "retry_after":
                kwargs[key] = None if value is None else float(value)
            else:
                kwargs[key] = float(value)
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Settings of one simulated vLLM server."""

    host: str = "127.0.0.1"
    port: int = 0
    model: str = "gemma3-27b"
    max_model_len: int = 16384
    slots: int = 64
    latency: float = 0.0
    per_token: float = 0.0
    jitter: float = 0.0
    caption_words: int = 24
    kv_capacity_tokens: int = 1_000_000  # the KV cache; a small one makes the server KV-bound
    seed: int = 0
    faults: FaultConfig = field(default_factory=FaultConfig)
    metrics: str = "vllm"  # /metrics names: vllm, sglang, llamacpp, or none (404)
    metrics_delay: float = 0.0  # seconds each /metrics answer is late (a busy API server)
    gateway_rate: float = 0.0  # > 0: a rate-limiting gateway in front (requests/s, 429s)
    gateway_burst: int = 0  # its token bucket's size; 0 = one second's worth
    # (seconds after server start, slots or None, KV tokens or None): capacity changes
    capacity_changes: tuple[tuple[float, int | None, int | None], ...] = ()
    structured_outputs: bool = True  # False: response_format json_schema/json_object is a 400
    # vLLM's --api-key: any of these keys as "Authorization: Bearer KEY" is required on
    # /v1/* (and /v2, /inference, /cohere), else 401 {"error":"Unauthorized"}; () = open
    api_keys: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots={self.slots} must be >= 1")
        if self.max_model_len < 1:
            raise ValueError(f"max_model_len={self.max_model_len} must be >= 1")
        if min(self.latency, self.per_token, self.jitter) < 0 or self.jitter > 1:
            raise ValueError("latency and per_token must be >= 0, jitter within 0..1")
        if self.caption_words < 1:
            raise ValueError(f"caption_words={self.caption_words} must be >= 1")
        if self.kv_capacity_tokens < 1:
            raise ValueError(f"kv_capacity_tokens={self.kv_capacity_tokens} must be >= 1")
        if self.metrics not in METRICS_FLAVOURS:
            raise ValueError(
                f"metrics={self.metrics!r} is not one of {', '.join(METRICS_FLAVOURS)}"
            )
        if self.metrics_delay < 0 or self.gateway_rate < 0 or self.gateway_burst < 0:
            raise ValueError("metrics_delay, gateway_rate and gateway_burst must be >= 0")
        if any(not key for key in self.api_keys):
            raise ValueError("an API key must not be empty")
        for at, slots, kv in self.capacity_changes:
            if (
                not math.isfinite(at)
                or at < 0
                or (slots is not None and slots < 1)
                or (kv is not None and kv < 1)
            ):
                raise ValueError(f"bad capacity change ({at}, {slots}, {kv})")

    @property
    def burst(self) -> int:
        """The gateway's bucket size."""
        return self.gateway_burst or max(1, round(self.gateway_rate))

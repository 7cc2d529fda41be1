"""The simulated engine: a FIFO slot scheduler, service times, stats and metric counters.

At most `slots` requests run at once; the rest wait in an unbounded FIFO queue, like vLLM
(which never answers 429 on its own). A waiter that is cancelled (its client went away)
leaves the queue at once. Everything here runs on the server's event loop thread.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from .config import SimConfig


class FifoSlots:
    """A strictly first-come-first-served counting semaphore that exposes its queue length.

    ``acquire`` returns when the slot became this request's (loop time). ``release`` takes
    the time the holder's service was due to end: a GPU frees a batch slot on schedule and
    starts the next queued request then, whatever the API server is busy with. So a queued
    request's service starts at ``max(due end of the previous holder, its own arrival)``,
    which keeps the simulator's own Python work (answering 64 requests that end together)
    out of the slot time.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running = 0
        self._waiters: deque[tuple[asyncio.Future[float], float]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> float:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.running < self.slots and not self._waiters:
            self.running += 1
            return now
        waiter: asyncio.Future[float] = loop.create_future()
        entry = (waiter, now)
        self._waiters.append(entry)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just before the cancel: pass it on
            else:
                self._waiters.remove(entry)
            raise

    def release(self, freed_at: float | None = None) -> None:
        """Let go of a slot that freed at ``freed_at`` (loop time; default now)."""
        now = asyncio.get_running_loop().time()
        freed = now if freed_at is None else min(freed_at, now)
        while self._waiters:
            waiter, arrived = self._waiters.popleft()
            if not waiter.done():
                # hand the slot over; `running` stays the same
                waiter.set_result(max(freed, arrived))
                return
        self.running -= 1


@dataclass(slots=True)
class Stats:
    """Counters for tests and benchmarks (see `Engine.snapshot`)."""

    requests: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_running: int = 0
    max_waiting: int = 0
    images: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class Metrics:
    """Prometheus counters, never reset (like vLLM's)."""

    success: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    generation_tokens: int = 0


class Engine:
    """Scheduling, service-time simulation and bookkeeping for chat completions."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.slots = FifoSlots(config.slots)
        self.stats = Stats()
        self.metrics = Metrics()
        self.kv_tokens = 0
        self._jitter_rng = random.Random(config.seed + 1)

    @asynccontextmanager
    async def running(self, kv_tokens: int, seconds: float) -> AsyncIterator[float]:
        """Hold a slot (waiting in FIFO order) for `seconds` of service; account KV usage.

        Yields the loop time the service is due to end, counted from when the slot became
        this request's (see ``FifoSlots``); the body sleeps until then. The slot is handed
        on as freed at that due time, or now if the body ends early (a client went away)."""
        slots, stats = self.slots, self.stats
        if slots.running >= slots.slots or slots.waiting:
            stats.max_waiting = max(stats.max_waiting, slots.waiting + 1)
        due = await slots.acquire() + seconds
        stats.max_running = max(stats.max_running, slots.running)
        self.kv_tokens += kv_tokens
        try:
            yield due
        finally:
            self.kv_tokens -= kv_tokens
            slots.release(due)

    def service_time(self, completion_tokens: int) -> float:
        """Seconds of simulated generation for a request, with jitter applied."""
        seconds = self.config.latency + self.config.per_token * completion_tokens
        if seconds > 0 and self.config.jitter > 0:
            spread = self.config.jitter
            seconds *= 1.0 + self._jitter_rng.uniform(-spread, spread)
        return seconds

    def record_success(self, prompt_tokens: int, completion_tokens: int, reason: str) -> None:
        self.metrics.success[reason] += 1
        self.metrics.prompt_tokens += prompt_tokens
        self.metrics.generation_tokens += completion_tokens

    def reset_stats(self) -> None:
        in_flight = self.stats.in_flight
        self.stats = Stats(in_flight=in_flight, max_running=self.slots.running)
        self.stats.max_waiting = self.slots.waiting

    def snapshot(self) -> dict[str, Any]:
        """The stats as a plain, JSON-ready dict."""
        s = self.stats
        return {
            "requests": s.requests,
            "completed": s.completed,
            "errors": dict(s.errors),
            "faults": dict(s.faults),
            "in_flight": s.in_flight,
            "max_running": s.max_running,
            "max_waiting": s.max_waiting,
            "images": dict(s.images),
        }

"""The simulated engine: vLLM's scheduler in miniature — batch slots, a KV cache that fills,
preemption — plus service times, stats and metric counters.

A request (``Job``) waits in a FIFO queue until it is admitted; it then runs for its service
time and completes. Like vLLM's scheduler, admission needs both a free batch slot
(``--max-num-seqs``, here ``slots``) and room in the KV cache for the prompt; a running
request's KV grows from its prompt to prompt + output tokens over its service time. When the
running requests outgrow the cache, the newest one is preempted (vLLM's FCFS policy pops the
last of its running list): it frees its KV, goes back to the head of the queue and later
starts over (recompute), and ``vllm:num_preemptions_total`` counts it. After a preemption
nothing new is admitted until a request completes (vLLM skips the waiting queue in a step
that preempted). A waiter whose client goes away (``abort``) leaves at once.

Everything here runs on the server's event loop thread. Times are loop times. A finished
request hands its slot on at its due time, not when the Python server got round to it: a GPU
frees a batch slot on schedule and starts the next request then, so the simulator's own work
(answering 64 requests that end together) stays out of the service time.
"""

from __future__ import annotations

import asyncio
import random
from array import array
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .config import SimConfig

# Headroom kept free when admitting (a fraction of the cache). It stands in for vLLM's
# block granularity: a request needs a new KV block only every block_size tokens, so the
# real server does not preempt at the first token past a full cache.
KV_WATERMARK = 0.01


@dataclass(eq=False, slots=True)
class Job:
    """One request inside the engine."""

    prompt_tokens: int
    out_tokens: int
    service: float  # seconds of generation once running
    arrived: float
    done: asyncio.Future[None]
    admitted: asyncio.Event  # set while running
    started: float | None = None  # loop time the current run began; None while waiting
    first_started: float | None = None
    runs: int = 0  # admissions: 1 + times preempted and restarted
    timer: asyncio.TimerHandle | None = None

    @property
    def rate(self) -> float:
        """KV tokens added per second while running."""
        return self.out_tokens / self.service if self.service > 0 else 0.0

    @property
    def base(self) -> int:
        """KV tokens held at the start of a run (all of them when there is no service time)."""
        return self.prompt_tokens if self.service > 0 else self.prompt_tokens + self.out_tokens

    @property
    def due(self) -> float:
        assert self.started is not None
        return self.started + self.service

    async def reach(self, fraction: float) -> None:
        """Return once this request has generated ``fraction`` of its output (for SSE pacing);
        waits again after a preemption."""
        loop = asyncio.get_running_loop()
        while True:
            if self.started is None:
                await self.admitted.wait()
            run, started = self.runs, self.started
            assert started is not None
            delay = started + fraction * self.service - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.runs == run and self.started is not None:
                return


@dataclass(slots=True)
class Stats:
    """Counters for tests and benchmarks (see `Engine.snapshot`); zeroed by /sim/reset."""

    requests: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    schema_faults: Counter[str] = field(default_factory=Counter)  # by kind applied
    in_flight: int = 0
    max_running: int = 0
    max_waiting: int = 0
    preemptions: int = 0
    max_kv: float = 0.0
    unauthorized: int = 0  # requests answered 401 for want of the API key (--api-key)
    images: Counter[str] = field(default_factory=Counter)
    queue_waits: array[float] = field(default_factory=lambda: array("d"))  # arrival -> start


@dataclass(slots=True)
class Metrics:
    """Prometheus counters, never reset (like vLLM's)."""

    success: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0


def _percentile(values: array[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Engine:
    """Scheduling, KV accounting, service-time simulation and bookkeeping."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.slots = config.slots
        self.kv_capacity = config.kv_capacity_tokens
        self.running: list[Job] = []  # in admission order: the last is the newest
        self.waiting: OrderedDict[Job, None] = OrderedDict()
        self.stats = Stats()
        self.metrics = Metrics()
        self._jitter_rng = random.Random(config.seed + 1)
        # KV in use at time t is _base + _rate * t - _offset (every running job is in its
        # linear phase until it completes), kept up to date in O(1) per event.
        self._base = 0.0
        self._rate = 0.0
        self._offset = 0.0
        self._latest_due = 0.0
        self._hold = False  # a preemption happened: admit nothing until a completion
        self._overflow: asyncio.TimerHandle | None = None

    # -- the request's side ---------------------------------------------------------------------
    def submit(self, prompt_tokens: int, out_tokens: int, seconds: float) -> Job:
        """Queue a request (admitted at once when there is room)."""
        loop = asyncio.get_running_loop()
        job = Job(
            prompt_tokens, out_tokens, seconds, loop.time(), loop.create_future(), asyncio.Event()
        )
        self.waiting[job] = None
        self._admit(job.arrived)
        if job.started is None:
            self.stats.max_waiting = max(self.stats.max_waiting, len(self.waiting))
        return job

    def abort(self, job: Job) -> None:
        """The client went away: drop ``job`` wherever it is (idempotent)."""
        if job in self.waiting:
            del self.waiting[job]
        elif job in self.running:
            self._stop(job)
            self._admit(asyncio.get_running_loop().time())

    # -- scheduling -----------------------------------------------------------------------------
    def kv_used(self, at: float | None = None) -> float:
        """KV tokens held by running requests at loop time ``at`` (default now)."""
        if not self.running:
            return 0.0
        t = asyncio.get_running_loop().time() if at is None else at
        return max(0.0, self._base + self._rate * t - self._offset)

    def _admit(self, at: float) -> None:
        """Start queued requests while a slot and the KV cache have room; their service counts
        from ``at`` (the due time of the slot that freed), or their own arrival if later."""
        room = self.kv_capacity * (1.0 - KV_WATERMARK)
        if not self.running:
            self._hold = False  # nothing left to complete (every running request was aborted)
        while self.waiting and not self._hold and len(self.running) < self.slots:
            job = next(iter(self.waiting))
            if self.running and self.kv_used(at) + job.base > room:
                break
            del self.waiting[job]
            self._start(job, max(at, job.arrived))
        self._plan_overflow()

    def _start(self, job: Job, at: float) -> None:
        job.started = at
        job.runs += 1
        if job.first_started is None:
            job.first_started = at
            self.stats.queue_waits.append(at - job.arrived)
        self.running.append(job)
        self._base += job.base
        self._rate += job.rate
        self._offset += job.rate * at
        self._latest_due = max(self._latest_due, job.due)
        job.admitted.set()
        loop = asyncio.get_running_loop()
        job.timer = loop.call_at(job.due, self._complete, job)
        stats = self.stats
        stats.max_running = max(stats.max_running, len(self.running))
        stats.max_kv = max(stats.max_kv, self.kv_used(at) / self.kv_capacity)

    def _stop(self, job: Job) -> None:
        """Take ``job`` out of the running set, freeing its slot and KV."""
        assert job.started is not None
        self.running.remove(job)
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if self.running:
            self._base -= job.base
            self._rate -= job.rate
            self._offset -= job.rate * job.started
        else:  # start again from exact zeros (no drift)
            self._base = self._rate = self._offset = 0.0
        job.admitted.clear()

    def _complete(self, job: Job) -> None:
        due = job.due
        self._stop(job)
        self._hold = False
        if not job.done.done():
            job.done.set_result(None)
        self._admit(min(due, asyncio.get_running_loop().time()))

    def _plan_overflow(self) -> None:
        """Set a timer for when the running requests' growing KV would overflow the cache."""
        if self._overflow is not None:
            self._overflow.cancel()
            self._overflow = None
        if self._rate <= 0 or len(self.running) < 2:
            return  # one request alone may outgrow the cache: there is nothing to preempt
        at = (self.kv_capacity - self._base + self._offset) / self._rate
        if at < self._latest_due:  # else every running request completes first
            loop = asyncio.get_running_loop()
            self._overflow = loop.call_at(max(at, loop.time()), self._preempt)

    def _preempt(self) -> None:
        """The cache is full: preempt the newest running requests until the rest fit."""
        if self._overflow is not None:
            self._overflow.cancel()  # when called directly (set_capacity), not by the timer
            self._overflow = None
        now = asyncio.get_running_loop().time()
        while len(self.running) > 1 and self.kv_used(now) > self.kv_capacity * (1 + 1e-9):
            job = self.running[-1]
            self._stop(job)
            job.started = None
            self.waiting[job] = None
            self.waiting.move_to_end(job, last=False)  # to the head of the queue
            self._hold = True
            self.stats.preemptions += 1
            self.metrics.preemptions += 1
        self._plan_overflow()

    def set_capacity(self, slots: int | None = None, kv_tokens: int | None = None) -> None:
        """Change the batch size and/or the KV cache now (another tenant, a restart with other
        flags). Running requests above a smaller batch finish; a smaller cache preempts."""
        if slots is not None:
            self.slots = slots
        if kv_tokens is not None:
            self.kv_capacity = kv_tokens
        loop = asyncio.get_running_loop()
        self._hold = False
        self._preempt()
        self._admit(loop.time())

    # -- accounting -----------------------------------------------------------------------------
    def service_time(self, completion_tokens: int) -> float:
        """Seconds of simulated generation for a request, with jitter applied."""
        seconds = self.config.latency + self.config.per_token * completion_tokens
        if seconds > 0 and self.config.jitter > 0:
            spread = self.config.jitter
            seconds *= 1.0 + self._jitter_rng.uniform(-spread, spread)
        return seconds

    def record_success(self, prompt_tokens: int, completion_tokens: int, reason: str) -> None:
        self.stats.completed += 1
        self.metrics.success[reason] += 1
        self.metrics.prompt_tokens += prompt_tokens
        self.metrics.generation_tokens += completion_tokens

    def reset_stats(self) -> None:
        self.stats = Stats(
            in_flight=self.stats.in_flight,
            max_running=len(self.running),
            max_waiting=len(self.waiting),
        )

    def snapshot(self) -> dict[str, Any]:
        """The stats as a plain, JSON-ready dict."""
        s = self.stats
        waits = s.queue_waits
        return {
            "requests": s.requests,
            "completed": s.completed,
            "errors": dict(s.errors),
            "faults": dict(s.faults),
            "schema_faults": dict(s.schema_faults),
            "in_flight": s.in_flight,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "max_running": s.max_running,
            "max_waiting": s.max_waiting,
            "preemptions": s.preemptions,
            "max_kv": round(s.max_kv, 6),
            "unauthorized": s.unauthorized,
            "queue_wait": {
                "count": len(waits),
                "p50": _percentile(waits, 50),
                "p90": _percentile(waits, 90),
                "max": max(waits, default=None),
            },
            "images": dict(s.images),
        }

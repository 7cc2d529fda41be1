"""``--concurrency auto``: find and hold the server's sweet spot. Pure logic, no IO.

vLLM never answers 429: past its batch it queues requests without limit, and past its KV cache
it preempts and recomputes. So the pool itself must not overload it, yet must keep it busy.

- With vLLM's ``/metrics`` (``num_requests_waiting``, ``kv_cache_usage_perc``): keep a small
  positive waiting queue, 1 to max(4, the running batch) requests (every batch slot filled,
  nothing idle between steps, even when a whole batch ends at once; waiting requests hold no
  KV cache). Slow start:
  double while nothing has ever waited and our limit is in use (an idle slot is lost GPU time;
  overshooting only queues a few requests, which the next steps drain), then grow by ~10%.
  When the queue grows past its band, drop just the excess (at most 20% a step), so the limit
  never sinks below the batch the server is running; shrink by 20% when the KV cache nears
  full.
- Without metrics: latency feedback (AIMD). Latency sits at the service time while the server
  has room and rises once requests queue; double (then ~10%) while the recent latency is within
  1.5x of the best seen, shrink by 20% past 2x.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from .metrics import ServerLoad

KV_HIGH = 0.92


@dataclass(slots=True)
class AutoConcurrency:
    minimum: int = 1
    maximum: int = 256
    limit: int = 32
    saw_queue: bool = False  # once the server has queued, growth turns gentle
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    _best: float | None = None

    def observe_latency(self, seconds: float) -> None:
        self._latencies.append(seconds)

    def _bounded(self, value: float) -> int:
        return max(self.minimum, min(self.maximum, int(value)))

    def _grow(self) -> int:
        step = self.limit * (0.1 if self.saw_queue else 1.0)
        return self._bounded(self.limit + max(1.0, step))

    def update(self, load: ServerLoad | None, in_flight: int) -> int:
        """One control step; returns the new limit."""
        busy = in_flight >= 0.9 * self.limit  # growing an unused limit proves nothing
        if load is not None:
            # Waiting requests hold no KV cache and cost only queueing time. The queue must
            # refill slots the moment they free up, before our next request arrives, and when
            # a whole batch finishes at once (answers of equal length) that takes up to a batch
            # (bench/saturation.py, 64 slots, fixed limits: 64 -> 0.950 of ideal, 96 -> 0.966,
            # 128 -> 0.971; auto with a band of 12.5% of the batch 0.956, of 50% 0.958).
            band = max(4.0, float(load.running))
            if load.kv_cache >= KV_HIGH:
                self.saw_queue = True
                self.limit = self._bounded(self.limit * 0.8)
            elif load.waiting > band:
                # Every batch slot is taken (else nothing would wait): drop the excess queue
                # down to half the band, by at most 20% a step. A blind 20% cut would fall
                # below the batch size and leave slots idle until growth catches up.
                self.saw_queue = True
                excess = load.waiting - band / 2
                self.limit = self._bounded(max(self.limit * 0.8, self.limit - excess))
            elif load.waiting >= 1:
                self.saw_queue = True  # in the band: hold
            elif busy:
                self.limit = self._grow()
            return self.limit
        if len(self._latencies) < 8:
            return self.limit
        recent = statistics.median(self._latencies)
        self._best = recent if self._best is None else min(self._best, recent)
        if recent > 2.0 * self._best:
            self.saw_queue = True
            self.limit = self._bounded(self.limit * 0.8)
            self._latencies.clear()
        elif recent <= 1.5 * self._best and busy:
            self.limit = self._grow()
        return self.limit

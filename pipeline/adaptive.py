"""``--concurrency auto``: find and hold the server's sweet spot, and say why. Pure logic, no IO:
the steering loop (``steer.py``) feeds it evidence with the time it was gathered.

The aim: every request the server could be running is running, and only a small queue waits
(a request waiting at vLLM holds no KV cache; it is there to take a slot the moment one
frees). vLLM never answers 429 by itself: past its capacity it queues without limit, and past
its KV cache it preempts and recomputes. So the pool must not flood it, yet keep it busy.

Regimes, read from the server's ``/metrics`` (``metrics.py``):

- **room**: nothing waits. Grow (double until the server first queues — the slow start —
  then ~10% a step) while our limit is in use.
- **batch-bound** (requests wait, KV cache not full: the running batch is at
  ``--max-num-seqs``) and **kv-bound** (requests wait with the KV cache ~0.9-1.0 full,
  fewer running than ``--max-num-seqs``: the normal state of a busy GPU server): keep a
  queue of ``want`` (batch-bound: half the running batch, slots free in bursts; kv-bound: a
  quarter of it, at least 2, the cache frees a request or two at a time); past twice that,
  drop just the excess down to ``want``, so the limit never sinks below what the server
  runs. Our requests in flight that the server does not count yet (on the wire, or in its
  API server's preprocessing) count as queued: growth waits until the server has seen
  them. A full KV cache is not a reason to back off.
- **overloaded**: ``vllm:num_preemptions_total`` rose by more than one for every four of our
  requests that finished meanwhile (judged over at least two batches): the server admits
  more than its KV cache holds and is recomputing. (vLLM admits by the cache's current use
  and preempts the newest request when the running ones outgrow it, so a few preemptions
  are part of a full cache's normal life.) Cut to 90% of the running batch; grow back by
  one request a step only after a few quiet samples.
- **throttled**: a gateway in front of the model answers 429. When more than one attempt in
  ten is refused, cut to what gets through (answers/s x latency + 10%); a few 429s are the
  price of keeping the gateway's bucket drained (a 429 costs a round trip, an unspent token
  an answer). Grow back by one request a step once a second has passed without a 429.
- **no metrics** (none served, or none answered lately): steer by latency (AIMD): grow
  while the recent median latency is within 1.3x of the best seen, cut 20% past 1.7x (the
  queue then costs under ~0.7 of a service time).

Every signal carries the time its evidence was gathered. After a change, evidence counts
only once our requests in flight have met the new limit (more sent, or the excess drained)
and was gathered after that: a slow ``/metrics`` answer, or one fetched before the change
took effect, is never acted on twice.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from .metrics import ServerLoad

KV_FULL = 0.9  # KV-cache use from which a server with a queue is called kv-bound
PREEMPT_SHARE = 0.25  # preemptions per finished request that mean overload
QUIET_SAMPLES = 4  # fresh samples without overload before growing again
CAREFUL_SAMPLES = 40  # ... and before growing by 10% a step again (with 10 s without a 429)
THROTTLE_QUIET_S = 1.0  # seconds without a 429 before growing again
THROTTLE_SHARE = 0.1  # share of attempts answered 429 that calls for a cut
SETTLE_MIN_S = 1.0  # a change counts as settled after at most max(this, 2 x latency)


@dataclass(frozen=True, slots=True)
class Move:
    """One decision: the limit before and after, the regime seen, and why."""

    old: int
    new: int
    regime: str
    why: str
    seen: str = ""  # the evidence, e.g. "running 6, waiting 58, KV 0.92"

    @property
    def kind(self) -> str:
        return "hold" if self.new == self.old else "raise" if self.new > self.old else "cut"

    def __str__(self) -> str:
        seen = f" [{self.seen}]" if self.seen else ""
        return f"concurrency {self.old} -> {self.new}: {self.regime}{seen}: {self.why}"


def describe(load: ServerLoad) -> str:
    kv = "" if load.kv_cache is None else f", KV {load.kv_cache:.2f}"
    return f"running {load.running:g}, waiting {load.waiting:g}{kv}"


@dataclass(slots=True)
class AutoConcurrency:
    minimum: int = 1
    maximum: int = 256
    limit: int = 64
    saw_queue: bool = False  # once the server has queued, growth turns gentle
    regime: str = "starting"
    changed_at: float = -math.inf
    settled_at: float = -math.inf
    _raised: bool = False
    _preemptions: float | None = None
    _finished: int = 0  # our answers since the last /metrics sample
    _window: tuple[float, int] = (0.0, 0)  # preemptions and our answers, since the last verdict
    _quiet: int = QUIET_SAMPLES  # fresh samples since the last preemption
    _throttled_at: float = -math.inf
    _throttles: int = 0  # 429s to requests sent under the current limit...
    _answers: int = 0  # ...and answers to them
    _careful: bool = False  # after an overload or a 429: grow by one request a step
    # (started, seconds) of recent answers, and when each came: enough for a second's worth at
    # several thousand answers/s
    _latencies: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=256))
    _answered: deque[float] = field(default_factory=lambda: deque(maxlen=8192))
    _best: float | None = None

    # -- evidence --------------------------------------------------------------------------
    def observe_latency(self, started: float, seconds: float) -> None:
        """A successful request that started at ``started`` took ``seconds``."""
        self._latencies.append((started, seconds))
        self._answered.append(started + seconds)
        self._finished += 1
        if started >= self.settled_at >= self.changed_at:
            self._answers += 1

    def typical_latency(self) -> float | None:
        if not self._latencies:
            return None
        return statistics.median(s for _, s in self._latencies)

    def settle(self, in_flight: int, now: float) -> None:
        """Mark the last change as taken effect once in-flight requests have met the new limit
        (or after max(1 s, 2 x the typical latency): a feed that cannot fill it, a hang)."""
        if self.settled_at >= self.changed_at:
            return
        met = in_flight >= 0.9 * self.limit if self._raised else in_flight <= self.limit
        timeout = max(SETTLE_MIN_S, 2.0 * (self.typical_latency() or 0.0))
        if met or now - self.changed_at >= timeout:
            self.settled_at = now

    def fresh(self, gathered_at: float) -> bool:
        """Whether evidence gathered at ``gathered_at`` reflects the current limit."""
        return self.settled_at >= self.changed_at and gathered_at >= self.settled_at

    # -- decisions -------------------------------------------------------------------------
    def on_load(self, load: ServerLoad, in_flight: int, now: float) -> Move:
        """One control step on a fresh /metrics sample (the caller checks ``fresh``)."""
        seen = describe(load)
        running, waiting = load.running, load.waiting
        overload = self._overload(load, running)
        if overload is not None:
            seen += f", {overload[0]:g} preempted / {overload[1]} finished"
            self._quiet = 0
            self._careful = True
            target = 0.9 * min(self.limit, max(1.0, running))
            why = "frequent preemptions: the server takes in more than its KV cache holds"
            return self._move(target, "overloaded", why, seen, now)
        self._quiet += 1
        # Ours in flight that the server does not count yet: on the wire, or in its API
        # server's queue (parsing, image preprocessing); they will be waiting soon.
        unseen = max(0.0, in_flight - running - waiting)
        if waiting > 0:
            self.saw_queue = True
            full = load.kv_cache is not None and load.kv_cache >= KV_FULL
            regime = "kv-bound" if full else "batch-bound"
            # The queue to keep: enough to refill the slots that free before our next request
            # arrives. A batch-bound server frees slots in bursts (answers of equal length end
            # together): half a batch. A kv-bound one admits as the cache frees, a request or
            # two at a time, and on the real rig every request waiting beyond that cost
            # throughput (bench/vllm_kv.py): a quarter of a batch, at least 2.
            want = max(2.0, running / 4) if full else max(2.0, running / 2)
            if waiting > 2 * want:
                excess = waiting - want + unseen
                why = f"queue deeper than {2 * want:g}: dropping the excess"
                target = max(self.limit * 0.25, self.limit - excess)
                return self._move(target, regime, why, seen, now)
            why = f"queue within 1-{2 * want:g}: holding"
            return self._move(self.limit, regime, why, seen, now)
        if unseen > max(2.0, 0.1 * in_flight):
            why = f"nothing waits, but {unseen:g} of ours in flight are not counted yet: holding"
            return self._move(self.limit, "room", why, seen, now)
        return self._maybe_grow(in_flight, "room", "nothing waits", seen, now)

    def on_latency(self, in_flight: int, now: float) -> Move | None:
        """One control step by latency (no metrics): None until enough requests that started
        after the last change have answered."""
        recent = [s for started, s in self._latencies if started >= self.settled_at]
        if self.settled_at < self.changed_at or len(recent) < 8:
            return None
        self._quiet += 1
        median = statistics.median(recent)
        self._best = median if self._best is None else min(self._best, median)
        seen = f"median latency {median:.3g}s, best {self._best:.3g}s"
        if median > 1.7 * self._best:
            self.saw_queue = True
            return self._move(self.limit * 0.8, "queueing", "latency past 1.7x its best", seen, now)
        if median > 1.3 * self._best:
            why = "latency 1.3-1.7x its best: holding"
            return self._move(self.limit, "queueing", why, seen, now)
        return self._maybe_grow(in_flight, "room", "latency near its best", seen, now)

    def on_throttle(self, sent_at: float, now: float) -> None:
        """A request sent at ``sent_at`` got 429 (counted if sent under the current limit)."""
        self._throttled_at = now
        self._careful = True
        if self.fresh(sent_at):
            self._throttles += 1

    def on_throttles(self, now: float) -> Move | None:
        """One step on the 429s: when more than one attempt in ten under the current limit was
        refused, cut to what the server lets through: its answers per second times their
        latency (Little's law), plus 10%. A few 429s are the price of keeping a rate-limited
        server's bucket drained: a 429 costs a round trip, an unspent token an answer."""
        throttles, answers = self._throttles, self._answers
        if throttles + answers < 20 and throttles < 10:
            return None
        self._throttles = self._answers = 0
        share = throttles / (throttles + answers)
        if share <= THROTTLE_SHARE:
            return None
        latency = self.typical_latency() or 0.0
        span = max(2.0, 4.0 * latency)
        rate = sum(1 for done in self._answered if done > now - span) / span
        seen = f"{throttles} of {throttles + answers} attempts answered 429, {rate:.3g} answers/s"
        target = max(self.limit * 0.25, rate * latency * 1.1)
        why = "rate-limited: down to what gets through (answers/s x latency + 10%)"
        return self._move(min(target, self.limit), "throttled", why, seen, now)

    # -- helpers ---------------------------------------------------------------------------
    def _overload(self, load: ServerLoad, running: float) -> tuple[float, int] | None:
        """(preemptions, our answers) when the server preempts too often, judged over at least
        max(20, two batches) answers: a few preemptions in a short window are noise."""
        finished, self._finished = self._finished, 0
        if load.preemptions is None:
            return None
        preempted = 0.0
        if self._preemptions is not None:
            preempted = max(0.0, load.preemptions - self._preemptions)
        self._preemptions = load.preemptions
        window = (self._window[0] + preempted, self._window[1] + finished)
        enough = max(20.0, 2.0 * running)
        if window[1] < enough and window[0] <= PREEMPT_SHARE * enough:
            self._window = window  # too few answers yet to judge, and not plainly thrashing
            return None
        self._window = (0.0, 0)
        return window if window[0] > PREEMPT_SHARE * max(1, window[1]) else None

    def _maybe_grow(self, in_flight: int, regime: str, why: str, seen: str, now: float) -> Move:
        if in_flight < 0.9 * self.limit:
            return self._move(self.limit, regime, f"{why}; limit not in use: holding", seen, now)
        if now - self._throttled_at < THROTTLE_QUIET_S:
            return self._move(self.limit, "throttled", "429s within the last second: holding at "
                              "the rate limit", seen, now)  # fmt: skip
        if self._quiet < QUIET_SAMPLES:
            return self._move(self.limit, regime, f"{why}; recovering: holding", seen, now)
        if self._careful and self._quiet >= CAREFUL_SAMPLES and now - self._throttled_at > 10:
            self._careful = False  # long enough without trouble: back to proportional growth
        if self._careful:
            return self._move(self.limit + 1, regime, f"{why}: one more", seen, now)
        if not self.saw_queue:
            return self._move(self.limit * 2, regime, f"{why}: doubling (slow start)", seen, now)
        return self._move(
            self.limit + max(1.0, self.limit * 0.1), regime, f"{why}: +10%", seen, now
        )

    def _move(self, target: float, regime: str, why: str, seen: str, now: float) -> Move:
        new = max(self.minimum, min(self.maximum, int(target)))
        move = Move(self.limit, new, regime, why, seen)
        self.regime = regime
        if new != self.limit:
            self._raised = new > self.limit
            self.limit = new
            self.changed_at = now
        return move

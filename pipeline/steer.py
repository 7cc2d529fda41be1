"""The steering loop of ``--concurrency auto``: server evidence in, pool size out.

Takes the servers' ``/metrics`` (sampled by one task, one request per server at a time, so a
slow answer is never stacked or read twice), the latencies and 429s the request stage reports,
and the requests in flight; hands each piece of evidence to ``AutoConcurrency`` with the time
it was gathered, and resizes the pool's limiter with its decision. Records which regime it saw
and why it moved for the run summary, and logs every move at debug level (``-v``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import httpx

from .adaptive import AutoConcurrency, Move
from .breaker import metrics_url
from .metrics import ServerLoad, combine, server_load

log = logging.getLogger(__name__)

TICK_START_S = 0.1  # control steps during the slow start, so an idle GPU is found fast...
TICK_S = 0.25  # ...and after the server first queued...
STEADY_S = 1.0  # ...and /metrics samples once the limit has held for STEADY_AFTER samples:
STEADY_AFTER = 8  # vLLM renders ~55 KB of /metrics per request, on its API server's CPU
METRICS_TIMEOUT_S = 10.0  # one /metrics request
METRICS_ABSENT_S = 3.0  # no /metrics answer for this long: steer by latency meanwhile


@dataclass(slots=True)
class SteerReport:
    """What ``auto`` saw and did, for the run summary."""

    source: str = "starting"  # "vLLM /metrics", "latency (no /metrics)", ...
    regime_s: dict[str, float] = field(default_factory=dict)  # seconds spent in each regime
    moves: Counter[str] = field(default_factory=Counter)  # "raise"/"cut" by regime
    last_move: str = ""
    throttled: int = 0  # 429 answers

    def line(self) -> str:
        """One line for the summary: the regimes by share of time, the moves, the last one."""
        total = sum(self.regime_s.values())
        shares = ", ".join(
            f"{regime} {seconds / total:.0%}"
            for regime, seconds in sorted(self.regime_s.items(), key=lambda kv: -kv[1])
            if total > 0
        )
        moves = ", ".join(f"{n} {kind}" for kind, n in self.moves.most_common())
        text = f"by {self.source}; {shares or 'no steps'}; moves: {moves or 'none'}"
        if self.throttled:
            text += f"; {self.throttled} answers were 429"
        return text + (f"; last: {self.last_move}" if self.last_move else "")


class Steering:
    def __init__(
        self,
        auto: AutoConcurrency,
        limiter: anyio.CapacityLimiter,
        client: httpx.AsyncClient,
        urls: Callable[[], Sequence[str]],
        model: str,
        on_limit: Callable[[int], None],
    ) -> None:
        self.auto = auto
        self.limiter = limiter
        self.client = client
        self.urls = urls  # the base URLs of the endpoints that are up now
        self.model = model
        self.on_limit = on_limit
        self.report = SteerReport()
        self.use_metrics = True
        self._sample: tuple[float, ServerLoad] | None = None  # (gathered at, load), unread
        self._answered_at = time.monotonic()  # last /metrics answer (or the start)
        self._regime_since = time.monotonic()
        self._holds = 0  # control steps in a row that held the limit

    # -- evidence from the request stage ---------------------------------------------------
    def observe_latency(self, started: float, seconds: float) -> None:
        self.auto.observe_latency(started, seconds)

    def throttled(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` was answered 429."""
        self.report.throttled += 1
        self.auto.on_throttle(sent_at, time.monotonic())

    # -- the loops ---------------------------------------------------------------------------
    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sample_loop)
            await self._control_loop()

    async def _control_loop(self) -> None:
        auto = self.auto
        while True:
            await anyio.sleep(TICK_S if auto.saw_queue else TICK_START_S)
            now = time.monotonic()
            in_flight = int(self.limiter.borrowed_tokens)
            auto.settle(in_flight, now)
            move = auto.on_throttles(now) or self._step(in_flight, now)
            self._apply(move, now)

    def _step(self, in_flight: int, now: float) -> Move | None:
        """One step on the freshest evidence: a new /metrics sample, else (without /metrics, or
        none answered lately) the latencies."""
        auto = self.auto
        if self._sample is not None:
            (gathered_at, load), self._sample = self._sample, None  # each sample is read once
            return auto.on_load(load, in_flight, now) if auto.fresh(gathered_at) else None
        if self.use_metrics and now - self._answered_at <= METRICS_ABSENT_S:
            return None  # the next sample is on its way
        if self.use_metrics and self.report.source != "latency (no /metrics answer)":
            log.info("auto: no /metrics answer for %.0fs; steering by latency meanwhile",
                     now - self._answered_at)  # fmt: skip
            self.report.source = "latency (no /metrics answer)"
        return auto.on_latency(in_flight, now)

    async def _sample_loop(self) -> None:
        """Fetch /metrics from every endpoint that is up, one round at a time."""
        while self.use_metrics:
            await anyio.sleep(self._sample_every())
            started = time.monotonic()
            loads = await self._fetch_all()
            if loads is None:  # a server without metrics: latency from now on
                self.use_metrics = False
                self.report.source = "latency (no /metrics)"
                log.info("auto: no /metrics load gauges at %s: steering concurrency by latency",
                         metrics_url(self.urls()[0]) if self.urls() else "the server")  # fmt: skip
                return
            if loads:
                load = combine(loads)
                self._answered_at = time.monotonic()
                self._sample = (started, load)
                self.report.source = f"{load.server} /metrics"

    async def _fetch_all(self) -> list[ServerLoad] | None:
        """The loads of the servers that answered; None when one answered without gauges."""
        urls = list(self.urls())
        results: list[ServerLoad | bool | None] = [False] * len(urls)

        async def fetch(i: int, url: str) -> None:
            with anyio.move_on_after(METRICS_TIMEOUT_S):
                try:
                    response = await self.client.get(metrics_url(url))
                except httpx.HTTPError:
                    return  # an error or a timeout: no answer this round
                if response.status_code == 404:
                    results[i] = None
                elif response.status_code == 200:
                    results[i] = server_load(response.text, self.model)

        async with anyio.create_task_group() as tg:
            for i, url in enumerate(urls):
                tg.start_soon(fetch, i, url)
        if any(r is None for r in results):
            return None
        return [r for r in results if isinstance(r, ServerLoad)]

    def _sample_every(self) -> float:
        if not self.auto.saw_queue:
            return TICK_START_S
        return STEADY_S if self._holds >= STEADY_AFTER else TICK_S

    # -- applying ------------------------------------------------------------------------------
    def _apply(self, move: Move | None, now: float) -> None:
        report = self.report
        regime = self.auto.regime
        report.regime_s[regime] = report.regime_s.get(regime, 0.0) + now - self._regime_since
        self._regime_since = now
        if move is not None:
            self._holds = self._holds + 1 if move.kind == "hold" else 0
        if move is None or move.kind == "hold":
            return
        report.moves[f"{move.kind} ({move.regime})"] += 1
        report.last_move = str(move)
        self.limiter.total_tokens = move.new
        self.on_limit(move.new)
        log.debug("auto: %s", move)

"""Circuit breaker: outage signals from the workers -> one shared pause, a health probe, resume.

When the server goes away (connection refused, or a run of resets/502/503/504 with no success in
between), the breaker opens: every worker waits instead of burning its retries, and a single
prober polls ``/health`` with exponential backoff. The first healthy answer closes the breaker
and the workers go on. If the outage lasts longer than ``max_outage`` seconds, ``on_give_up``
is called so the run can stop cleanly with everything saved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

log = logging.getLogger(__name__)

OUTAGE_STATUS = frozenset({502, 503, 504})


def health_url(base_url: str) -> str:
    """vLLM serves ``/health`` at the root: ``http://h:8102/v1`` -> ``http://h:8102/health``."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/health", "", ""))


def metrics_url(base_url: str) -> str:
    """vLLM's Prometheus endpoint, next to ``/health``."""
    return health_url(base_url).removesuffix("/health") + "/metrics"


class Breaker:
    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        *,
        threshold: int = 5,
        max_outage: float = 1800.0,
        probe_initial: float = 0.25,
        probe_max: float = 10.0,
        on_give_up: Callable[[float], None] = lambda _s: None,
        name: str = "server",
    ) -> None:
        self.name = name
        self.probe = probe
        self.threshold = threshold
        self.max_outage = max_outage
        self.probe_initial = probe_initial
        self.probe_max = probe_max
        self.on_give_up = on_give_up
        self._strikes = 0
        self._closed = anyio.Event()
        self._closed.set()
        self._opened = anyio.Event()
        self.opened_at: float | None = None
        self.outages = 0

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    def success(self) -> None:
        self._strikes = 0

    def failure(self, *, certain: bool) -> bool:
        """Record an outage-like failure; ``certain`` (connection refused) opens at once.

        Returns True when the breaker is open afterwards: the caller should not count the
        attempt and should ``wait`` instead.
        """
        self._strikes += 1
        if not self.is_open and (certain or self._strikes >= self.threshold):
            self._open()
        return self.is_open

    def _open(self) -> None:
        self.opened_at = time.monotonic()
        self.outages += 1
        self._closed = anyio.Event()
        self._opened.set()
        log.warning("%s unreachable: pausing its requests and probing its health", self.name)

    async def wait(self) -> None:
        """Return when the breaker is closed."""
        await self._closed.wait()

    async def run(self) -> None:
        """The prober: sleeps until the breaker opens, then polls until healthy."""
        while True:
            await self._opened.wait()
            self._opened = anyio.Event()
            delay = self.probe_initial
            gave_up = False
            assert self.opened_at is not None
            while True:
                if await self.probe():
                    break
                down = time.monotonic() - self.opened_at
                if down >= self.max_outage and not gave_up:
                    gave_up = True
                    log.error("%s still unreachable after %.0fs", self.name, down)
                    self.on_give_up(down)
                wait = delay if gave_up else min(delay, max(0.0, self.max_outage - down))
                await anyio.sleep(wait)
                delay = min(delay * 2, self.probe_max)
            down = time.monotonic() - self.opened_at
            self._strikes = 0
            log.warning("%s healthy again after %.1fs; resuming", self.name, down)
            self._closed.set()


def http_probe(client: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[bool]]:
    """A probe that is healthy when ``url`` answers anything but a 5xx."""

    async def probe() -> bool:
        try:
            response = await client.get(url)
        except httpx.HTTPError:
            return False
        return response.status_code < 500

    return probe


async def wait_any(breakers: Sequence[Breaker]) -> None:
    """Return as soon as one of ``breakers`` is closed (at once if one already is)."""
    async with anyio.create_task_group() as tg:

        async def first(breaker: Breaker) -> None:
            await breaker.wait()
            tg.cancel_scope.cancel()

        for breaker in breakers:
            tg.start_soon(first, breaker)

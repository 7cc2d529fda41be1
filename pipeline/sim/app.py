"""`SimApp`: one simulated server on the running event loop — routing, fault draws, the
listening socket and down windows (listener closed, connections dropped, then re-listen on
the same port with SO_REUSEADDR).
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from collections.abc import Awaitable, Callable

from . import routes
from .config import FAULT_KINDS, FaultConfig, SimConfig
from .engine import Engine
from .gateway import TokenBucket
from .httpserver import HttpConnection, HttpRequest

Route = Callable[["SimApp", HttpRequest, HttpConnection], Awaitable[None]]

ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/health"): routes.health,
    ("GET", "/version"): routes.version,
    ("GET", "/v1/models"): routes.models,
    ("GET", "/metrics"): routes.metrics_page,
    ("POST", "/v1/chat/completions"): routes.chat_completions,
    ("GET", "/sim/stats"): routes.sim_stats,
    ("POST", "/sim/reset"): routes.sim_reset,
    ("POST", "/sim/faults"): routes.sim_faults,
    ("POST", "/sim/down"): routes.sim_down,
    ("POST", "/sim/capacity"): routes.sim_capacity,
}
_PATHS = {path for _, path in ROUTES}


class SimApp:
    """The simulator's state and lifecycle; all methods run on the loop's thread."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.engine = Engine(config)
        self.faults = config.faults
        self.port = config.port
        self.started_wall = int(time.time())
        self._fault_rng = random.Random(config.seed)
        self._id_rng = random.Random(config.seed + 2)
        self._any_fault = False
        self._connections: set[HttpConnection] = set()
        self._server: asyncio.Server | None = None
        self._t0 = 0.0
        self._down_until = 0.0
        self._down_task: asyncio.Task[None] | None = None
        self._windows: list[asyncio.TimerHandle] = []
        self._changes: list[asyncio.TimerHandle] = []
        self.gateway = (
            TokenBucket(config.gateway_rate, config.burst) if config.gateway_rate > 0 else None
        )

    # -- requests -----------------------------------------------------------------------------
    async def handle(self, req: HttpRequest, conn: HttpConnection) -> None:
        route = ROUTES.get((req.method, req.path))
        if route is not None:
            await route(self, req, conn)
        elif req.path in _PATHS:
            conn.send(405, b'{"detail":"Method Not Allowed"}', keep_alive=req.keep_alive)
        else:
            conn.send(404, b'{"detail":"Not Found"}', keep_alive=req.keep_alive)

    def draw_fault(self) -> str | None:
        """The fault kind for the next chat request (None almost always)."""
        if not self._any_fault:
            return None
        return self.faults.pick(self._fault_rng.random())

    def new_id(self) -> str:
        return f"chatcmpl-{self._id_rng.getrandbits(64):016x}"

    def set_faults(self, faults: FaultConfig) -> None:
        """Use `faults` for subsequent requests; its down windows count from server start."""
        self.faults = faults
        self._any_fault = any(getattr(faults, kind) > 0 for kind in FAULT_KINDS)
        for handle in self._windows:
            handle.cancel()
        loop = asyncio.get_running_loop()
        elapsed = loop.time() - self._t0
        self._windows = []
        for start, duration in faults.down:
            if start + duration > elapsed:
                delay = max(0.0, start - elapsed)
                remaining = start + duration - max(start, elapsed)
                self._windows.append(loop.call_later(delay, self.go_down, remaining))

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> int:
        """Bind and listen; returns the port (picked by the OS when config.port is 0)."""
        self._t0 = asyncio.get_running_loop().time()
        await self._listen()
        self.set_faults(self.faults)
        loop = asyncio.get_running_loop()
        self._changes = [
            loop.call_later(at, self.engine.set_capacity, slots, kv)
            for at, slots, kv in self.config.capacity_changes
        ]
        return self.port

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(50):
            try:
                self._server = await loop.create_server(
                    lambda: HttpConnection(self.handle, self._connections),
                    self.config.host,
                    self.port,
                    reuse_address=True,
                    backlog=4096,
                )
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self.port == 0 or attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        assert self._server is not None
        self.port = self._server.sockets[0].getsockname()[1]

    def go_down(self, seconds: float) -> None:
        """Stop listening and drop every connection for `seconds` (extends a current window)."""
        loop = asyncio.get_running_loop()
        self._down_until = max(self._down_until, loop.time() + seconds)
        if self._down_task is not None:
            return
        self._stop_listening()
        self._down_task = loop.create_task(self._stay_down())

    async def _stay_down(self) -> None:
        loop = asyncio.get_running_loop()
        while (delay := self._down_until - loop.time()) > 0:
            await asyncio.sleep(delay)
        await self._listen()
        self._down_task = None

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._connections):
            conn.abort(rst=False)

    async def close(self) -> None:
        """Stop listening, drop connections and cancel timers."""
        for handle in (*self._windows, *self._changes):
            handle.cancel()
        if self._down_task is not None:
            self._down_task.cancel()
            await asyncio.gather(self._down_task, return_exceptions=True)
            self._down_task = None
        server = self._server
        self._stop_listening()
        if server is not None:
            await server.wait_closed()

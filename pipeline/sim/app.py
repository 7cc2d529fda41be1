"""`SimApp`: one simulated server on the running event loop — the aiohttp.web application
(routing, 404/405 as vLLM's JSON), fault draws, the listening socket and down windows
(connections dropped, listener closed, then re-listen on the same port with SO_REUSEADDR).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import routes, structured_faults
from .config import FAULT_KINDS, FaultConfig, SimConfig
from .engine import Engine
from .gateway import TokenBucket

Route = Callable[["SimApp", web.Request], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# path -> method -> route; any other method on these paths is 405, any other path 404.
ROUTES: dict[str, dict[str, Route]] = {
    "/health": {"GET": routes.health},
    "/version": {"GET": routes.version},
    "/v1/models": {"GET": routes.models},
    "/metrics": {"GET": routes.metrics_page},
    "/v1/chat/completions": {"POST": routes.chat_completions},
    "/sim/stats": {"GET": routes.sim_stats},
    "/sim/reset": {"POST": routes.sim_reset},
    "/sim/faults": {"POST": routes.sim_faults},
    "/sim/down": {"POST": routes.sim_down},
    "/sim/capacity": {"POST": routes.sim_capacity},
}
MAX_BODY = 64 * 1024 * 1024  # request bodies up to 64 MiB (aiohttp's default is 1 MiB)
# With API keys, vLLM 0.32's AuthenticationMiddleware guards the paths starting with these
# (a plain prefix test, as vLLM's) and lets everything else through: /health, /metrics, ...
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


class SimApp:
    """The simulator's state and lifecycle; all methods run on the loop's thread."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.engine = Engine(config)
        self.faults = config.faults
        self.port = config.port
        self.started_wall = int(time.time())
        self._keys = [hashlib.sha256(k.encode()).digest() for k in config.api_keys]
        self._fault_rng = random.Random(config.seed)
        self._id_rng = random.Random(config.seed + 2)
        self._schema_rng = random.Random(config.seed + 3)
        self._schema_turn = 0
        self._any_fault = False
        self._runner: web.AppRunner | None = None
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
    def web_app(self) -> web.Application:
        """The aiohttp.web application: ROUTES, then 405 and 404 with vLLM's JSON bodies."""
        app = web.Application(client_max_size=MAX_BODY)
        for path, methods in ROUTES.items():
            resource = app.router.add_resource(path)
            for method, route in methods.items():
                resource.add_route(method, self._bind(route))
            resource.add_route("*", self._bind(routes.method_not_allowed))
        app.router.add_route("*", "/{tail:.*}", self._bind(routes.not_found))
        return app

    def _bind(self, route: Route) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            if self._keys and not self.authorized(request):
                self.engine.stats.unauthorized += 1
                return routes.unauthorized()
            try:
                return await route(self, request)
            except web.HTTPRequestEntityTooLarge:
                return routes.too_large()

        return handler

    def authorized(self, request: web.Request) -> bool:
        """vLLM's check with ``--api-key``: OPTIONS and unguarded paths pass; a guarded one
        needs ``Authorization: Bearer <one of the keys>`` (scheme in any case; the keys
        compared as sha256 digests in constant time, as vLLM does)."""
        if request.method == "OPTIONS" or not request.path.startswith(GUARDED_PREFIXES):
            return True
        scheme, _, param = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(param.encode()).digest()
        match = False
        for key in self._keys:
            match |= secrets.compare_digest(digest, key)
        return match

    def draw_fault(self) -> str | None:
        """The fault kind for the next chat request (None almost always)."""
        if not self._any_fault:
            return None
        return self.faults.pick(self._fault_rng.random())

    def draw_schema_fault(self) -> str | None:
        """For a structured-output request without another fault: the bad-answer kind, the
        kinds of `structured_faults.KINDS` in turn, or None (a good answer)."""
        chance = self.faults.schema
        if chance <= 0 or self._schema_rng.random() >= chance:
            return None
        kinds = structured_faults.KINDS
        self._schema_turn += 1
        return kinds[(self._schema_turn - 1) % len(kinds)]

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
        # No access log (aiohttp then does no per-request logging or timing); a client that
        # goes away cancels its handler, so a queued or running request leaves the engine.
        self._runner = web.AppRunner(
            self.web_app(), access_log=None, handler_cancellation=True, shutdown_timeout=5.0
        )
        await self._runner.setup()
        await self._listen()
        self.set_faults(self.faults)
        loop = asyncio.get_running_loop()
        self._changes = [
            loop.call_later(at, self.engine.set_capacity, slots, kv)
            for at, slots, kv in self.config.capacity_changes
        ]
        return self.port

    async def _listen(self) -> None:
        """Listen as aiohttp's TCPSite does (its protocol factory, `runner.server`), but with
        the asyncio server in hand, so that a down window can close it at once."""
        loop = asyncio.get_running_loop()
        assert self._runner is not None and self._runner.server is not None
        for attempt in range(50):
            try:
                self._server = await loop.create_server(
                    self._runner.server,
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
        if self._runner is not None and self._runner.server is not None:
            for handler in self._runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()  # its handler is cancelled (connection lost)
        if self._server is not None:
            self._server.close()
            self._server = None

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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

"""Running the simulator: `serve` (forever, on the current loop) and `SimServer` (a handle
that runs it on a background thread with its own event loop, for tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from .app import SimApp
from .config import FaultConfig, SimConfig

T = TypeVar("T")


async def serve(config: SimConfig, *, ready: Callable[[int], None] | None = None) -> None:
    """Serve `config` until cancelled; `ready` is called with the bound port once listening."""
    app = SimApp(config)
    port = await app.start()
    try:
        if ready is not None:
            ready(port)
        await asyncio.Event().wait()
    finally:
        await app.close()


class SimServer:
    """A simulator on a background thread: ``with SimServer(SimConfig()) as sim: ...``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: SimApp | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._final_stats: dict[str, Any] | None = None

    @property
    def port(self) -> int:
        return self._require_app().port

    @property
    def url(self) -> str:
        """Root URL without /v1, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def start(self, timeout: float = 10.0) -> SimServer:
        """Start the thread and wait until the server listens."""
        if self._thread is not None:
            raise RuntimeError("SimServer already started")
        self._thread = threading.Thread(target=self._run, name="vllm-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulator did not start in time")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError(f"simulator failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); never escapes the thread
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = SimApp(self.config)
        await app.start()
        self._app = app
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await app.close()
            self._final_stats = app.engine.snapshot()

    def stop(self) -> None:
        """Stop the server and join its thread (idempotent)."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- thread-safe controls -------------------------------------------------------------------
    def _require_app(self) -> SimApp:
        if self._app is None:
            raise RuntimeError("SimServer is not running")
        return self._app

    def _call(self, make: Callable[[SimApp], Coroutine[Any, Any, T]]) -> T:
        app, loop = self._require_app(), self._loop
        if loop is None or loop.is_closed() or self._thread is None:
            raise RuntimeError("SimServer is not running")
        coro = make(app)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()
            raise
        return future.result(timeout=10)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the stats dict; after `stop` it is the final one."""
        if self._thread is None and self._final_stats is not None:
            return self._final_stats

        async def snap(app: SimApp) -> dict[str, Any]:
            return app.engine.snapshot()

        return self._call(snap)

    def reset_stats(self) -> None:
        async def reset(app: SimApp) -> None:
            app.engine.reset_stats()

        self._call(reset)

    def set_faults(self, faults: FaultConfig) -> None:
        """Use `faults` for subsequent requests."""

        async def apply(app: SimApp) -> None:
            app.set_faults(faults)

        self._call(apply)

    def go_down(self, seconds: float) -> None:
        """Start a down window now: connections are refused for `seconds`."""

        async def down(app: SimApp) -> None:
            app.go_down(seconds)

        self._call(down)

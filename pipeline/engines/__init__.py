"""Execution engines for ``caption run``.

``local`` (the default) is ``pipeline.runner.Runner``: one process, anyio tasks and threads.
``ray`` (``pip install caption[ray]``) runs the same job as a Ray Data pipeline
(``pipeline.engines.ray_engine``); Ray is imported only when that engine is chosen, so the
base install never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Job
    from ..runner import Runner

ENGINES = ("local", "ray")
DEFAULT_ENGINE = "local"


def make_runner(
    job: Job,
    *,
    api_key: str | None,
    engine: str = DEFAULT_ENGINE,
    ray_address: str | None = None,
    handle_signals: bool = False,
) -> Runner:
    """The runner of ``job`` for ``engine``; ``ray`` imports Ray here, and only here."""
    if engine == "local":
        from ..runner import Runner

        return Runner(job, api_key=api_key, handle_signals=handle_signals)
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            from ..errors import ConfigError

            raise ConfigError(
                "--engine ray needs Ray, which is not installed: pip install 'caption[ray]'"
            ) from None
        from .ray_engine import RayRunner

        return RayRunner(job, api_key=api_key, address=ray_address, handle_signals=handle_signals)
    raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")

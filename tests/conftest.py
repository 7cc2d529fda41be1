"""Shared fixtures: generated images and the simulator on a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_images

from pipeline.sim import SimConfig, SimServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return make_images(tmp_path / "images", 24)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(slots=8, latency=0.01)) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_api_key_from_the_developer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's exported VLLM_API_KEY / OPENAI_API_KEY must not leak into the tests (the
    simulator, like vllm serve, would then require it)."""
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

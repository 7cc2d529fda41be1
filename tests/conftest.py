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

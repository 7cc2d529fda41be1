"""--concurrency auto: the controller's table of reactions, and an end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest
from helpers import make_images

from pipeline.adaptive import AutoConcurrency
from pipeline.cli import main
from pipeline.metrics import ServerLoad
from pipeline.sim import SimConfig, SimServer


@pytest.mark.parametrize(
    ("load", "in_flight", "saw_queue", "expected"),
    [
        (ServerLoad(16, 0, 0.1), 16, False, 32),  # room and busy, no queue yet: double
        (ServerLoad(16, 0, 0.1), 16, True, 17),  # after a queue was seen: ~10%
        (ServerLoad(16, 0, 0.1), 4, False, 16),  # limit not in use: hold
        (ServerLoad(16, 2, 0.1), 16, False, 16),  # small positive queue: hold
        (ServerLoad(16, 30, 0.1), 16, False, 12),  # queue 30, band 16: drop 30 - 8, capped at 20%
        (ServerLoad(16, 18, 0.1), 16, False, 12),  # queue 18, band 16: drop 18 - 8 = 10 (> 20%)
        (ServerLoad(4, 5, 0.1), 16, False, 13),  # queue 5, band 4 (the floor): drop just 5 - 2
        (ServerLoad(16, 0, 0.95), 16, False, 12),  # KV cache nearly full: shrink
    ],
)
def test_metrics_mode_reactions(
    load: ServerLoad, in_flight: int, saw_queue: bool, expected: int
) -> None:
    """With vLLM's gauges the limit grows, holds or shrinks as documented."""
    auto = AutoConcurrency(limit=16, saw_queue=saw_queue)
    assert auto.update(load, in_flight) == expected


def test_queue_excess_cut_keeps_the_batch_full() -> None:
    """64 running, 70 waiting (band 64): drop the excess 70 - 32 -> 162, not 200 x 0.8 = 160."""
    auto = AutoConcurrency(limit=200, saw_queue=True)
    assert auto.update(ServerLoad(64, 70, 0.1), 200) == 162
    assert auto.update(ServerLoad(64, 60, 0.1), 162) == 162  # in the band: hold


def test_bounds_are_respected() -> None:
    """The limit never leaves [minimum, maximum]."""
    auto = AutoConcurrency(minimum=2, maximum=20, limit=18)
    assert auto.update(ServerLoad(18, 0, 0.0), 18) == 20
    auto = AutoConcurrency(minimum=2, maximum=20, limit=2)
    assert auto.update(ServerLoad(2, 50, 0.0), 2) == 2


def test_latency_mode_backs_off_when_latency_doubles() -> None:
    """Without metrics: grow while latency is near its best, shrink once it doubles."""
    auto = AutoConcurrency(limit=10)
    for _ in range(8):
        auto.observe_latency(0.1)
    assert auto.update(None, 10) == 20
    for _ in range(64):
        auto.observe_latency(0.35)
    assert auto.update(None, 20) == 16


@pytest.mark.parametrize("metrics", [True, False], ids=["metrics", "latency"])
def test_auto_finds_the_slots(
    tmp_path: Path, metrics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against 96 slots, auto climbs from its start (64) to at least the slot count."""
    if not metrics:
        monkeypatch.setattr("pipeline.runner.metrics_url", lambda url: url + "/no-metrics-here")
    root = make_images(tmp_path / "img", 1000, size=(32, 24))[0].parent.parent
    with SimServer(SimConfig(slots=96, latency=0.25)) as sim:
        code = main(["run", "--endpoint", sim.base_url, "--input", str(root), "--output",
                     str(tmp_path / "o"), "--prompt", "x", "--no-progress"])  # fmt: skip
        peak = sim.stats()["max_running"]
    assert code == 0
    rows = ds.dataset(tmp_path / "o").to_table(columns=["concurrency"]).to_pylist()
    assert max(int(r["concurrency"]) for r in rows) >= 96
    assert peak == 96

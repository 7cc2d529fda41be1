"""The fault suite: faults injected by the simulator, crashes and signals, over loopback.

Figures these tests establish are written into bench/RELIABILITY.md by bench/fault_suite.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from helpers import down_after, make_images

from pipeline.cli import main
from pipeline.sim import FaultConfig, SimConfig, SimServer

PROMPT = "使用中文描述这张图像"


def cmd(sim: SimServer, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--endpoint", sim.base_url, "--input", str(root), "--output", str(out),
        "--prompt", PROMPT, "--no-progress", *extra,
    ]  # fmt: skip


def rows(out: Path) -> list[dict[str, object]]:
    return ds.dataset(out, format="parquet").to_table().to_pylist()


def ok_keys(out: Path) -> list[object]:
    return [r["key"] for r in rows(out) if r["status"] == "ok"]


def test_mixed_faults_and_hangs_every_item_ok(tmp_path: Path) -> None:
    """25% mixed faults + 3% hangs: every item ends ok, no key has two ok rows."""
    n = 120
    root = make_images(tmp_path / "img", n, size=(48, 32))[0].parent.parent
    faults = FaultConfig(
        error_429=0.05, error_500=0.05, error_503=0.05, reset=0.05, malformed=0.025,
        empty_choices=0.025, hang=0.03, hang_seconds=30,
    )  # fmt: skip
    with SimServer(SimConfig(slots=16, latency=0.02, faults=faults, seed=3)) as sim:
        code = main(cmd(sim, root, tmp_path / "out", "--concurrency", "16", "--timeout", "1",
                        "--retries", "30", "--backoff-max", "0.2"))  # fmt: skip
        stats = sim.stats()
    assert code == 0
    keys = ok_keys(tmp_path / "out")
    assert len(keys) == len(set(keys)) == n
    assert stats["faults"].get("hang", 0) > 0 and sum(stats["faults"].values()) > n * 0.15


def test_seven_second_outage_mid_run(tmp_path: Path) -> None:
    """The server goes away for 7 s mid-run: workers wait, nothing fails, retries not burned."""
    n = 160
    root = make_images(tmp_path / "img", n, size=(48, 32))[0].parent.parent
    with SimServer(SimConfig(slots=8, latency=0.05)) as sim:
        down_after(sim, n // 4, 7.0)
        t0 = time.monotonic()
        code = main(cmd(sim, root, tmp_path / "out", "--concurrency", "8", "--retries", "2"))
        wall = time.monotonic() - t0
    assert code == 0
    got = rows(tmp_path / "out")
    assert sorted(r["status"] for r in got) == ["ok"] * n
    assert wall >= 7.0
    # --retries 2 and nothing failed: the outage spent no retries (it lasted 7 s, far
    # longer than 3 attempts with backoff could have bridged).


def test_outage_longer_than_max_outage_exits_75(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outage past --max-outage ends the run with exit 75, what was done saved."""
    n = 80
    root = make_images(tmp_path / "img", n, size=(48, 32))[0].parent.parent
    with SimServer(SimConfig(slots=4, latency=0.05)) as sim:
        down_after(sim, 10, 60.0)
        t0 = time.monotonic()
        code = main(cmd(sim, root, tmp_path / "out", "--concurrency", "4", "--max-outage", "2"))
        wall = time.monotonic() - t0
    assert code == 75
    assert wall < 15
    saved = ok_keys(tmp_path / "out")
    assert 10 <= len(saved) < n
    assert not any(r["status"] == "failed" for r in rows(tmp_path / "out"))
    assert "To resume" in capsys.readouterr().err


def _spawn(sim: SimServer, root: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *cmd(sim, root, out, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigint_finishes_in_flight_then_exits_130(tmp_path: Path) -> None:
    """SIGINT: in-flight requests finish and are saved, exit 130, the rerun completes."""
    n, conc = 60, 4
    root = make_images(tmp_path / "img", n, size=(48, 32))[0].parent.parent
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=conc, latency=0.4)) as sim:
        proc = _spawn(sim, root, out, "--concurrency", str(conc))
        deadline = time.monotonic() + 30
        while sim.stats()["completed"] < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err.decode()
        assert b"To resume" in err
        sent = sim.stats()["completed"]
        saved = len(ok_keys(out))
        assert saved == sent  # every answer that arrived was saved, in flight ones included
        rerun = _spawn(sim, root, out, "--concurrency", str(conc))
        rerun.communicate(timeout=60)
        assert rerun.returncode == 0
        assert sim.stats()["completed"] == n  # nothing was asked twice
    keys = ok_keys(out)
    assert len(keys) == len(set(keys)) == n


@pytest.mark.slow
def test_second_sigint_stops_at_once(tmp_path: Path) -> None:
    """A second SIGINT cancels in-flight requests at once; output stays readable."""
    root = make_images(tmp_path / "img", 20, size=(48, 32))[0].parent.parent
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=4, latency=30.0)) as sim:
        proc = _spawn(sim, root, out, "--concurrency", "4", "--grace-period", "60")
        deadline = time.monotonic() + 30
        while sim.stats()["in_flight"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 5
    assert proc.returncode == 130
    assert [r for r in rows(out) if r["status"] == "ok"] == []  # nothing finished in 30 s
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_sigterm_exits_143(tmp_path: Path) -> None:
    """SIGTERM stops the same way with exit code 143."""
    root = make_images(tmp_path / "img", 30, size=(48, 32))[0].parent.parent
    with SimServer(SimConfig(slots=2, latency=0.3)) as sim:
        proc = _spawn(sim, root, tmp_path / "out", "--concurrency", "2")
        deadline = time.monotonic() + 30
        while sim.stats()["completed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 143


@pytest.mark.slow
def test_sigkill_at_ten_random_moments(tmp_path: Path) -> None:
    """10 SIGKILLs at random moments: one ok row per item, redone work <= kills x concurrency."""
    n, conc, kills = 300, 8, 10
    root = make_images(tmp_path / "img", n, size=(48, 32))[0].parent.parent
    out = tmp_path / "out"
    rng = random.Random(int(os.environ.get("CAPTION_TEST_SEED", "11")))
    with SimServer(SimConfig(slots=conc, latency=0.05)) as sim:
        for _ in range(kills):
            proc = _spawn(sim, root, out, "--concurrency", str(conc))
            time.sleep(rng.uniform(0.3, 1.2))
            proc.kill()
            proc.communicate()
        final = _spawn(sim, root, out, "--concurrency", str(conc))
        final.communicate(timeout=120)
        assert final.returncode == 0
        completed = sim.stats()["completed"]
    keys = ok_keys(out)
    assert len(keys) == len(set(keys)) == n
    assert completed <= n + kills * conc, completed

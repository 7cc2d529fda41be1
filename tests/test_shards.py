"""--shard I/N: N runs split one job into one output folder with no coordination."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from helpers import make_images

from pipeline.errors import ConfigError
from pipeline.shards import OutputLock, Shard, parse_shard, running_shards, shard_of, tag_of
from pipeline.sim import SimConfig, SimServer

pytestmark = pytest.mark.slow

IMAGES = 60


def test_shards_cover_every_identity_exactly_once() -> None:
    identities = [f"{d}/img{i:05d}.jpg" for d in "abc" for i in range(400)]
    for n in (1, 2, 3, 7, 10):
        shards = [Shard(i, n) for i in range(n)]
        for identity in identities:
            assert sum(s.has(identity) for s in shards) == 1
        sizes = [sum(s.has(x) for x in identities) for s in shards]
        assert min(sizes) > len(identities) / n * 0.7  # a hash spreads them
    assert shard_of("a.jpg", 1) == 0


def test_parse_shard() -> None:
    assert parse_shard("2/7") == Shard(2, 7)
    assert parse_shard(" 0 / 1 ") == Shard(0, 1)
    assert parse_shard(None) is None
    for bad in ("7/7", "-1/3", "1/0", "a/b", "3"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    assert Shard(2, 7).tag == "s2of7"
    assert tag_of("20261203T052940Z-c477c8-s2of7") == "s2of7"
    assert tag_of("20261203T052940Z-c477c8") is None


def _cmd(sim: SimServer, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline", "run", "--endpoint", sim.base_url, "--input",
        str(images), "--prompt", "describe", "--output", str(out), "--no-progress",
        "--flush-interval", "0.2", *extra,
    ]  # fmt: skip


def _ok_keys(out: Path) -> list[str]:
    table = ds.dataset(out, format="parquet").to_table(columns=["key", "status"])
    pairs = zip(table["key"].to_pylist(), table["status"].to_pylist(), strict=True)
    return [k for k, s in pairs if s == "ok"]


@pytest.mark.parametrize("n", [1, 3, 7])
def test_concurrent_shards_write_every_item_once(tmp_path: Path, n: int) -> None:
    images = tmp_path / "images"
    make_images(images, IMAGES, size=(32, 24))
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=16, latency=0.02)) as sim:
        procs = [
            subprocess.Popen(
                _cmd(sim, images, out, "--shard", f"{i}/{n}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(n)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        for p, (_out, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err  # no lock conflict between shards
        keys = _ok_keys(out)
        assert len(keys) == len(set(keys)) == IMAGES
        assert sim.stats()["requests"] == IMAGES
        # the part files carry their shard
        tags = {tag_of(p.name.removeprefix("part-").rsplit("-", 1)[0]) for p in out.glob("part-*")}
        assert tags == {f"s{i}of{n}" for i in range(n)}
        # a run without --shard sees everything the shards wrote: nothing left to do
        plain = subprocess.run(_cmd(sim, images, out), capture_output=True, text=True, timeout=60)
        assert plain.returncode == 0, plain.stderr
        # and so does a rerun with another N
        other = subprocess.run(
            _cmd(sim, images, out, "--shard", f"0/{n + 1}"), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert other.returncode == 0, other.stderr
        assert sim.stats()["requests"] == IMAGES
    assert len(_ok_keys(out)) == IMAGES


def test_locks(tmp_path: Path, sim: SimServer) -> None:
    """The same shard twice: 75; a run without --shard beside a shard: 75; shards of another N
    beside running shards: 75; another shard of the same N: runs."""
    images = tmp_path / "images"
    make_images(images, 6, size=(16, 16))
    out = tmp_path / "out"
    out.mkdir()
    held = OutputLock(out, Shard(1, 3))
    held.acquire("20990101T000000Z-abcdef-s1of3")
    try:
        assert running_shards(out) == {"s1of3"}
        same = subprocess.run(_cmd(sim, images, out, "--shard", "1/3"), capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert same.returncode == 75, same.stderr
        assert "shard 1/3" in same.stderr
        plain = subprocess.run(_cmd(sim, images, out), capture_output=True, text=True, timeout=60)
        assert plain.returncode == 75, plain.stderr
        other_n = subprocess.run(_cmd(sim, images, out, "--shard", "0/2"), capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
        assert other_n.returncode == 75, other_n.stderr
        assert "one N" in other_n.stderr
        sibling = subprocess.run(_cmd(sim, images, out, "--shard", "0/3"), capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
        assert sibling.returncode == 0, sibling.stderr
    finally:
        held.release()
    assert running_shards(out) == set()


def test_a_killed_shard_is_recovered_by_its_rerun_not_by_a_running_sibling(
    tmp_path: Path,
) -> None:
    """Shard 0 is SIGKILLed mid-run while shard 1 runs; shard 1's own files are never touched by
    shard 0's rerun, shard 0's journal is folded in by its rerun, and the dataset ends with every
    image once."""
    images = tmp_path / "images"
    make_images(images, 200, size=(16, 16))
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=4, latency=0.05)) as sim:
        slow = subprocess.Popen(
            _cmd(sim, images, out, "--shard", "1/2", "--concurrency", "2"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        victim = subprocess.Popen(
            _cmd(sim, images, out, "--shard", "0/2", "--concurrency", "2"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # wait (bounded by the runs) until shard 0 has journaled some rows, then kill it
            while victim.poll() is None and not any(out.glob("_caption_journal-*-s0of2-*.jsonl")):
                time.sleep(0.02)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=30)
            assert slow.poll() is None, "shard 1 ended too soon for the test"
            rerun = subprocess.run(_cmd(sim, images, out, "--shard", "0/2"), capture_output=True,
                                   text=True, timeout=120)  # fmt: skip
            assert rerun.returncode == 0, rerun.stderr
            _o, err = slow.communicate(timeout=120)
            assert slow.returncode == 0, err
        finally:
            for p in (slow, victim):
                if p.poll() is None:
                    p.kill()
    keys = _ok_keys(out)
    assert len(keys) == len(set(keys)) == 200
    assert not list(out.glob("_caption_journal-*.jsonl"))

"""Reliability figures: faults injected, items, duplicate ok rows, lost and redone work.

Runs three scenarios against the simulator (loopback only, bounded in count and time) and
prints a markdown report (``make bench-faults`` appends it to bench/RELIABILITY.md):
  1. 25% mixed faults (429/500/503/reset/malformed/empty) + 3% hangs, read timeout 1 s;
  2. a 7-second outage (listener closed: connection refused) a quarter of the way in;
  3. SIGKILL of the CLI at 10 random moments, then a final run.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import down_after, make_images

from pipeline.sim import FaultConfig, SimConfig, SimServer


def cli(sim: SimServer, root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--endpoint", sim.base_url, "--input",
            str(root), "--output", str(out), "--prompt", "Describe.", "--no-progress", *extra]  # fmt: skip


def tally(out: Path) -> tuple[int, int]:
    """(ok rows, duplicate ok rows)."""
    keys = [r["key"] for r in ds.dataset(out).to_table(columns=["key", "status"]).to_pylist()
            if r["status"] == "ok"]  # fmt: skip
    return len(set(keys)), len(keys) - len(set(keys))


def mixed(tmp: Path, n: int) -> str:
    root = tmp / "mixed"
    make_images(root, n, size=(48, 32), seed=5)
    faults = FaultConfig(error_429=0.05, error_500=0.05, error_503=0.05, reset=0.05,
                         malformed=0.025, empty_choices=0.025, hang=0.03, hang_seconds=30)  # fmt: skip
    with SimServer(SimConfig(slots=32, latency=0.02, faults=faults, seed=9)) as sim:
        t0 = time.monotonic()
        p = subprocess.run(cli(sim, root, tmp / "o1", "--concurrency", "32", "--timeout", "1",
                               "--retries", "30", "--backoff-max", "0.5"), capture_output=True)  # fmt: skip
        wall = time.monotonic() - t0
        st = sim.stats()
    ok, dup = tally(tmp / "o1")
    injected = sum(st["faults"].values())
    return (f"| 25% mixed faults + 3% hangs | {n} | {injected} ({dict(sorted(st['faults'].items()))}) "
            f"| {ok} | {dup} | {n - ok} | {st['requests']} requests, exit {p.returncode}, {wall:.1f}s |")  # fmt: skip


def outage(tmp: Path, n: int) -> str:
    root = tmp / "outage"
    make_images(root, n, size=(48, 32), seed=6)
    with SimServer(SimConfig(slots=16, latency=0.05)) as sim:
        down_after(sim, n // 4, 7.0)
        t0 = time.monotonic()
        p = subprocess.run(cli(sim, root, tmp / "o2", "--concurrency", "16", "--retries", "2"),
                           capture_output=True)  # fmt: skip
        wall = time.monotonic() - t0
        st = sim.stats()
    ok, dup = tally(tmp / "o2")
    return (f"| 7 s outage (connection refused) | {n} | 1 outage of 7 s | {ok} | {dup} | {n - ok} "
            f"| {st['requests']} requests, exit {p.returncode}, {wall:.1f}s (retries=2 not burned) |")  # fmt: skip


def kills(tmp: Path, n: int, k: int, conc: int) -> str:
    root = tmp / "kills"
    make_images(root, n, size=(48, 32), seed=7)
    rng = random.Random(13)
    with SimServer(SimConfig(slots=conc, latency=0.05)) as sim:
        for _ in range(k):
            proc = subprocess.Popen(cli(sim, root, tmp / "o3", "--concurrency", str(conc)),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(rng.uniform(0.3, 1.5))
            proc.kill()
            proc.wait()
        p = subprocess.run(
            cli(sim, root, tmp / "o3", "--concurrency", str(conc)), capture_output=True
        )
        st = sim.stats()
    ok, dup = tally(tmp / "o3")
    redone = st["completed"] - n
    return (f"| SIGKILL x{k} at random moments | {n} | {k} kills | {ok} | {dup} | {n - ok} "
            f"| {st['completed']} answers for {n} items: {redone} redone (bound {k}x{conc}={k * conc}), "
            f"exit {p.returncode} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"\n## Fault suite, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores, "
              f"`python bench/fault_suite.py --items {args.items}`\n")  # fmt: skip
        print(
            "| scenario | items | faults injected | ok items | duplicate ok rows | lost | notes |"
        )
        print("|---|---|---|---|---|---|---|")
        print(mixed(tmp, args.items), flush=True)
        print(outage(tmp, args.items), flush=True)
        print(kills(tmp, args.items, 10, 16), flush=True)


if __name__ == "__main__":
    main()

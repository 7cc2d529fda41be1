"""Benchmark 1 (issue 5): does --concurrency auto saturate the server with no tuning?

Simulator (own process) with 64 slots and 0.25 s per request; 3,000 small images; the pipeline
with the default ``--concurrency auto``. Ideal throughput = slots / latency = 256 req/s.
Reports achieved / ideal, the concurrency it settled on, how long after the process was
launched its first request began (its row's started_at; that request then also imports the HTTP
transport, 0.15-0.26 s here), and the same with a fixed 64.
Run: .venv/bin/python bench/saturation.py [--items 3000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_images


def sim(
    tmp: Path, slots: int = 64, latency: float = 0.25, *extra: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`caption sim` in its own process on a free port (more flags in `extra`); its process
    and base URL."""
    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sim", "--port", "0", "--port-file", str(port_file),
         "--slots", str(slots), "--latency", str(latency), *extra],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("simulator did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}/v1"


class Run(NamedTuple):
    wall: float  # seconds, the whole process
    summary: str  # the summary's "wall time" line
    launched: float  # time.time() when the process was started

    @property
    def run_wall(self) -> float:
        """The summary's wall time: the run itself, without Python start-up and preflight."""
        return float(self.summary.split()[2].rstrip("s,"))


def command(urls: list[str], images: Path, out: Path, *flags: str) -> list[str]:
    """`caption run` over `images` into a fresh `out` (removed first) against `urls`."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "run", "--input", str(images), "--output", str(out),
           "--prompt", "Describe.", "--no-progress", *flags]  # fmt: skip
    for url in urls:
        cmd += ["--endpoint", url]
    return cmd


def run(urls: list[str], images: Path, out: Path, *flags: str) -> Run:
    """`caption run` over `images` into a fresh `out` against `urls`, with `flags`."""
    cmd = command(urls, images, out, *flags)
    launched, t0 = time.time(), time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.monotonic() - t0
    summary = next(ln.strip() for ln in p.stdout.splitlines() if "wall time" in ln)
    return Run(wall, summary, launched)


def busy_window(out: Path, launched: float) -> tuple[float, float]:
    """Seconds from the first request sent to the last answer received (from the rows), and
    from the process's launch to the first request."""
    import pyarrow.parquet as pq

    t = pq.ParquetFile(next(out.glob("part-*.parquet"))).read(columns=["started_at", "finished_at"])
    first = min(t.column("started_at").to_pylist())
    last = max(t.column("finished_at").to_pylist())
    return (last - first).total_seconds(), first.timestamp() - launched


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    ideal = args.slots / args.latency
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_images(tmp / "images", args.items, size=(64, 48))
        proc, url = sim(tmp, args.slots, args.latency)
        try:
            print(f"\n## Saturation, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores: "
                  f"simulator {args.slots} slots x {args.latency}s, {args.items} requests, "
                  f"ideal {ideal:.0f} req/s (`bench/saturation.py`)\n")  # fmt: skip
            print("Ratios to ideal: whole process (Python start, preflight, walk included); in "
                  "the run (the summary's items/s); server busy (first request sent to last "
                  "answer).\n")  # fmt: skip
            print("| rep | concurrency | whole process | in the run | server busy | first request "
                  "begun after launch | summary line |")  # fmt: skip
            print("|---|---|---|---|---|---|---|")
            got: dict[str, list[tuple[float, float, float]]] = {}
            for rep in range(1, args.reps + 1):
                for conc in ("auto", str(args.slots)):
                    out = tmp / f"out-{conc}"
                    r = run([url], tmp / "images", out, "--concurrency", conc)
                    in_run = float(r.summary.split("s, ")[1].split(" items/s")[0])
                    busy, first = busy_window(out, r.launched)
                    ratios = (args.items / r.wall / ideal, in_run / ideal,
                              args.items / busy / ideal)  # fmt: skip
                    got.setdefault(conc, []).append(ratios)
                    print(f"| {rep} | {conc} | {ratios[0]:.3f} | {ratios[1]:.3f} | "
                          f"{ratios[2]:.3f} | {first:.2f} s | {r.summary} |", flush=True)  # fmt: skip
            print()
            for conc, rows in got.items():
                med = [statistics.median(r[i] for r in rows) for i in range(3)]
                print(f"median over {args.reps} runs, concurrency {conc}: whole process "
                      f"{med[0]:.3f}, in the run {med[1]:.3f}, server busy {med[2]:.3f}")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()

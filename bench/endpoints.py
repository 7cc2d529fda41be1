"""Benchmark 6 (issue 5): two endpoints vs one — does throughput add up?

Each simulator (own process): 8 slots x 0.25 s (32 req/s, so the servers, not the client, are
the limit). 600 requests with ``--concurrency auto``: first against one endpoint, then against
two (``--endpoint A --endpoint B``). Ratio = rate with two / rate with one.
Run: .venv/bin/python bench/endpoints.py [--items 600]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_images
from saturation import sim


def run(urls: list[str], images: Path, out: Path) -> tuple[float, str]:
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-m", "pipeline", "run", "--input", str(images), "--output", str(out),
            "--prompt", "Describe.", "--no-progress"]  # fmt: skip
    for url in urls:
        args += ["--endpoint", url]
    p = subprocess.run(args, capture_output=True, text=True, check=True)
    line = next(ln.strip() for ln in p.stdout.splitlines() if "wall time" in ln)
    return float(line.split()[2].rstrip("s,")), line


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=600)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_images(tmp / "images", args.items, size=(64, 48))
        (tmp / "a").mkdir()
        (tmp / "b").mkdir()
        pa, ua = sim(tmp / "a", 8, 0.25)
        pb, ub = sim(tmp / "b", 8, 0.25)
        try:
            one, l1 = run([ua], tmp / "images", tmp / "o1")
            two, l2 = run([ua, ub], tmp / "images", tmp / "o2")
        finally:
            for p in (pa, pb):
                p.terminate()
                p.wait()
    print(f"\n## Two endpoints vs one, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores; "
          f"each simulator 8 slots x 0.25 s (32 req/s); {args.items} requests\n")  # fmt: skip
    print("| endpoints | run wall s | items/s |\n|---|---|---|")
    print(f"| 1 | {one:.1f} | {args.items / one:.1f} |")
    print(f"| 2 | {two:.1f} | {args.items / two:.1f} |")
    print(f"\nratio: {one / two:.2f}x   ({l1} / {l2})")


if __name__ == "__main__":
    main()

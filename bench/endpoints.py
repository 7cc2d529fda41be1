"""Benchmark 6 (issue 5): two endpoints vs one — does throughput add up?

Each simulator (own process): 8 slots x 0.25 s (32 req/s, so the servers, not the client, are
the limit). 600 requests with ``--concurrency auto``: first against one endpoint, then against
two (``--endpoint A --endpoint B``). Ratio = rate with two / rate with one.
Run: .venv/bin/python bench/endpoints.py [--items 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_images
from saturation import run, sim


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
            r1 = run([ua], tmp / "images", tmp / "o1")
            r2 = run([ua, ub], tmp / "images", tmp / "o2")
            one, two = r1.run_wall, r2.run_wall
        finally:
            for p in (pa, pb):
                p.terminate()
                p.wait()
    print(f"\n## Two endpoints vs one, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores; "
          f"each simulator 8 slots x 0.25 s (32 req/s); {args.items} requests\n")  # fmt: skip
    print("| endpoints | run wall s | items/s |\n|---|---|---|")
    print(f"| 1 | {one:.1f} | {args.items / one:.1f} |")
    print(f"| 2 | {two:.1f} | {args.items / two:.1f} |")
    print(f"\nratio: {one / two:.2f}x   ({r1.summary} / {r2.summary})")


if __name__ == "__main__":
    main()

"""Shards: one `caption run` vs `--shard 0/2` + `--shard 1/2` at once, on 12-MP photos.

The client's own work is the point here (read, hash, decode at draft scale, resize to 896 px,
JPEG-encode), so the simulator is fast and wide (256 slots, 20 ms per answer) and every photo is
distinct (4000x3000, ~4 MB, gradients + noise). Each run starts from an empty output folder;
the time is from launching the process(es) to the last one's exit (imports included, as cron
would see it). Variants alternate within a rep. On N machines the shards do not share cores, so
the per-process rate measured here (one process alone) is what each machine adds, on paper.

Run: .venv/bin/python bench/shards.py [--photos 48] [--reps 3]   (appends to bench/RESULTS.md)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_downscale import make_photos

from pipeline.sim import SimConfig, SimServer

RESULTS = Path(__file__).with_name("RESULTS.md")


def cmd(url: str, photos: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline", "run", "--endpoint", url, "--input", str(photos),
        "--output", str(out), "--prompt", "Describe.", "--max-tokens", "16", "--no-progress",
        "--concurrency", "64", *extra,
    ]  # fmt: skip


def timed(commands: list[list[str]]) -> float:
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    for p in procs:
        _out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"caption failed ({p.returncode}): {err.decode()[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "caption-bench-photos"
    )
    args = ap.parse_args()
    photos = args.cache / f"{args.photos}"
    if len(list(photos.glob("*.jpg"))) != args.photos:
        shutil.rmtree(photos, ignore_errors=True)
        print(f"making {args.photos} 12-MP photos in {photos} ...", flush=True)
        make_photos(photos, args.photos)
    size_mb = sum(p.stat().st_size for p in photos.glob("*.jpg")) / args.photos / 1e6
    rates: dict[str, list[float]] = {"1 process": [], "2 shards (0/2 + 1/2)": []}
    with SimServer(SimConfig(slots=256, latency=0.02)) as sim, tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = list(rates) if rep % 2 == 0 else list(reversed(rates))
            for variant in order:
                out = Path(tmp) / f"out-{rep}-{variant[0]}"
                if variant == "1 process":
                    wall = timed([cmd(sim.base_url, photos, out)])
                else:
                    wall = timed(
                        [cmd(sim.base_url, photos, out, "--shard", f"{i}/2") for i in range(2)]
                    )
                rates[variant].append(args.photos / wall)
                print(
                    f"rep {rep + 1} {variant}: {wall:.2f} s, {args.photos / wall:.2f} images/s",
                    flush=True,
                )
    load = os.getloadavg()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    one, two = (statistics.median(v) for v in rates.values())
    lines = [
        f"\n## Shards: 1 process vs 2 shard processes, {when}, {os.cpu_count()} cores (`bench/shards.py`)\n",
        f"{args.photos} distinct 4000x3000 JPEGs ({size_mb:.1f} MB each) -> 896 px; simulator 256 slots x 20 ms; "
        f"launch to exit, imports included; {args.reps} reps, variants alternating.\n",
        "| variant | images/s per rep | median |",
        "|---|---|---|",
        *(
            f"| {k} | {', '.join(f'{r:.2f}' for r in v)} | {statistics.median(v):.2f} |"
            for k, v in rates.items()
        ),
        "",
        f"2 shards / 1 process: {two / one:.2f}x on this machine. Load average after: {load[0]:.2f}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()

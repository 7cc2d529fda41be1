"""Benchmark 5 (issue 5): cheap bookkeeping.

1. No-op rerun over N finished items (default 100,000): the output folder holds an ok row for
   every item and the hash cache knows every file, as after a finished run (made directly with
   the pipeline's own key, cache and Parquet code, since captioning 100k images first would
   take most of an hour here). Then ``caption run`` is timed as a whole process against the
   simulator: it must read no image and send no request.
2. Peak RSS of walking M files (default 1,000,000 empty files in 1,000 folders) with the
   pipeline's walker, measured in a child process (``ru_maxrss``).
Run: .venv/bin/python bench/bookkeeping.py [--items 100000] [--files 1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saturation import sim

from pipeline.config import ImageConfig, PromptConfig
from pipeline.payload import item_key
from pipeline.schema import STATUS_OK, schema_with_job, utc_now
from pipeline.sink import PartWriter
from pipeline.state import HashCache

PROMPT = "Describe."


def make_finished(root: Path, out: Path, n: int) -> None:
    out.mkdir(parents=True)
    cache = HashCache(out / "_caption_hashes.sqlite")
    writer = PartWriter(out, "bench", schema_with_job({}))
    prompt = PromptConfig(name="prompt", text=PROMPT)
    rows = []
    now = utc_now()
    for i in range(n):
        d = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        p = d / f"img{i:06d}.jpg"
        p.write_bytes(b"x")
        st = p.stat()
        rel = f"{d.name}/{p.name}"
        sha = f"{i:064x}"
        cache.remember(rel, st.st_size, st.st_mtime_ns, sha, st.st_ctime_ns, st.st_ino)
        key = item_key(image_sha256=sha, relpath=rel, model="gemma3-27b", prompt=prompt,
                       text=PROMPT, image=ImageConfig())  # fmt: skip
        rows.append({"key": key, "image_path": rel, "image_sha256": sha, "prompt_name": "prompt",
                     "model": "gemma3-27b", "status": STATUS_OK, "caption": "a caption " * 20,
                     "attempts": 1, "finished_at": now, "run_id": "bench", "endpoint": "x"})  # fmt: skip
        if len(rows) == 50_000:
            writer.write(rows)
            rows = []
    writer.write(rows)
    cache.close()


def noop_rerun(n: int, reps: int = 5) -> str:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.monotonic()
        make_finished(tmp / "img", tmp / "out", n)
        setup = time.monotonic() - t0
        server, url = sim(tmp)
        try:
            walls, rsss = [], []
            for _ in range(reps):
                t0 = time.monotonic()
                p = subprocess.run([sys.executable, "-c", RUN, "run", "--endpoint", url,
                                    "--input", str(tmp / "img"), "--output", str(tmp / "out"),
                                    "--prompt", PROMPT, "--no-progress"],
                                   capture_output=True, text=True)  # fmt: skip
                walls.append(time.monotonic() - t0)
                rsss.append(float(p.stderr.split("peak-rss-mb")[-1].split()[0]))
        finally:
            server.terminate()
            server.wait()
    summary = [ln.strip() for ln in p.stdout.splitlines() if "items " in ln or "latency" in ln]
    each = ", ".join(f"{w:.2f}" for w in walls)
    return (f"| no-op rerun, {n:,} finished items | median {statistics.median(walls):.2f} s of "
            f"{reps} runs ({each}; whole process, exit {p.returncode}) | peak RSS "
            f"{max(rsss):.0f} MB | {'; '.join(summary)} | setup {setup:.0f} s |")  # fmt: skip


# Peak RSS from /proc (VmHWM): ru_maxrss would carry over the parent's peak across fork+exec.
HWM = "int([ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]) / 1024"
WALK = f"""
import sys
from pathlib import Path
from pipeline.walker import walk_images
n = sum(1 for _ in walk_images(Path(sys.argv[1]), ("*.jpg",)))
print(n, {HWM})
"""
RUN = f"""
import runpy, sys
sys.argv = ["caption", *sys.argv[1:]]
try:
    runpy.run_module("pipeline", run_name="__main__")
finally:
    print("peak-rss-mb", {HWM}, file=sys.stderr)
"""


def walk_rss(m: int) -> str:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        t0 = time.monotonic()
        for i in range(m):
            if i % 1000 == 0:
                folder = root / f"d{i // 1000:04d}"
                folder.mkdir()
            (folder / f"f{i:07d}.jpg").touch()
        setup = time.monotonic() - t0
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-c", WALK, str(root)], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        wall = time.monotonic() - t0
    return (
        f"| walk of {m:,} files | {wall:.1f} s | peak RSS {float(out[1]):.0f} MB "
        f"| {out[0]} files yielded | setup {setup:.0f} s |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=1_000_000)
    args = ap.parse_args()
    print(f"\n## Bookkeeping, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores "
          f"(`bench/bookkeeping.py --items {args.items} --files {args.files}`)\n")  # fmt: skip
    print("| what | time | memory | result | note |\n|---|---|---|---|---|")
    print(noop_rerun(args.items), flush=True)
    print(walk_rss(args.files), flush=True)


if __name__ == "__main__":
    main()

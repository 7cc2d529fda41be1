"""Benchmark 4 (issue 5): 12-MP camera JPEGs -> 896 px JPEG data URIs per second.

naive  = full decode + LANCZOS resize + JPEG encode + base64 (what a simple script does);
ours   = pipeline.encode.encode_image (JPEG draft mode to the target box, then resize),
on 1 thread, and on as many threads as cores (the pipeline's encoder pool; Pillow releases the
GIL while decoding and resizing). Photo-like images: gradients + noise, ~4 MB.

This VM does not give N x for N cores, and how much it gives depends on the work, so each rep
also measures the machine's ceiling for *this* work: the same ``encode_image`` calls in N
independent worker processes, each with its own copy of the images (no GIL, no shared state, no
data crossing a process boundary while timed), together vs one alone. The sha256 ceiling (pure
compute on a small working set) is kept for reference. A process pool that is sent the file
bytes per task (what an encoder process pool would do) is measured too.
Run: .venv/bin/python bench/preprocess.py [--images 12] [--reps 8]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_downscale import make_photos

from pipeline.config import ImageConfig
from pipeline.encode import encode_image

CFG = ImageConfig()
PER_THREAD = 24  # images each thread (or process) encodes in one timed step
_BLOBS: list[bytes] = []  # the images, in this process (set by _load)


def _load(paths: list[str]) -> None:
    global _BLOBS
    _BLOBS = [Path(p).read_bytes() for p in paths]


def naive(raw: bytes) -> str:
    im = Image.open(io.BytesIO(raw)).convert("RGB")
    scale = 896 / max(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def ours(raw: bytes) -> str:
    return encode_image(raw, CFG).data_uri


def _encode_n(n: int, offset: int = 0) -> float:
    """Encode n of this process's images (from `offset`, cycling); return the seconds taken."""
    t0 = time.perf_counter()
    for i in range(offset, offset + n):
        ours(_BLOBS[i % len(_BLOBS)])
    return time.perf_counter() - t0


def _sha_n(n: int) -> float:
    """n x sha256 of a 16 MB buffer: C work on a small working set; returns its seconds."""
    buf = b"\x5a" * (16 << 20)
    t0 = time.perf_counter()
    for _ in range(n):
        hashlib.sha256(buf).digest()
    return time.perf_counter() - t0


def per_image_naive(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        naive(_BLOBS[i % len(_BLOBS)])
    return (time.perf_counter() - t0) / n


def per_image_threads(threads: int) -> float:
    """Seconds per image with `threads` threads, each encoding PER_THREAD images."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(_encode_n, [PER_THREAD] * threads, range(0, threads * 7, 7)))
    return (time.perf_counter() - t0) / (threads * PER_THREAD)


def per_image_process_pool(pool: ProcessPoolExecutor, workers: int) -> float:
    """Seconds per image when a process pool is sent each image's bytes (as a pool would)."""
    work = (_BLOBS * (workers * PER_THREAD // len(_BLOBS) + 1))[: workers * PER_THREAD]
    t0 = time.perf_counter()
    list(pool.map(ours, work, chunksize=1))
    return (time.perf_counter() - t0) / len(work)


def ceiling(pool: ProcessPoolExecutor, workers: int, fn, n: int) -> float:  # type: ignore[no-untyped-def]
    """Throughput of `workers` independent processes doing fn(n) at once vs one alone."""
    alone = pool.submit(fn, n).result()
    together = max(pool.map(fn, [n] * workers))
    return workers * alone / together


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        paths = [str(p) for p in make_photos(Path(d), args.images)]
        _load(paths)
        mb = sum(map(len, _BLOBS)) / len(_BLOBS) / 1e6
        print(f"\n## Preprocessing, {time.strftime('%Y-%m-%d %H:%M')} UTC, {cores} cores, "
              f"{args.images} photos 4000x3000 ({mb:.1f} MB) -> 896 px data URIs; "
              f"load average before: {os.getloadavg()[0]:.2f} "
              "(`bench/preprocess.py`)\n")  # fmt: skip
        print(f"Per rep: ms per image; then ratios. 'threads vs 1' = the pipeline's encoder pool "
              f"({cores} threads) vs one thread; 'ceiling' = the same encode calls in {cores} "
              "independent processes vs one (what this VM gives for this work).\n")  # fmt: skip
        print(f"| rep | naive, 1 thread | ours, 1 thread | ours, {cores} threads | "
              f"ours, pool of {cores} processes | per core vs naive | {cores} threads vs 1 | "
              f"process pool vs 1 | ceiling: encode in {cores} processes | threads / ceiling | "
              "ceiling: sha256 |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        rows: list[dict[str, float]] = []
        with ProcessPoolExecutor(cores, initializer=_load, initargs=(paths,)) as pool:
            list(pool.map(_encode_n, [2] * cores))  # workers up and warm
            per_image_threads(cores)
            for rep in range(1, args.reps + 1):
                r = {
                    "naive": per_image_naive(args.images),
                    "one": _encode_n(PER_THREAD) / PER_THREAD,
                    "threads": per_image_threads(cores),
                    "pool": per_image_process_pool(pool, cores),
                    "ceiling": ceiling(pool, cores, _encode_n, PER_THREAD),
                    "sha": ceiling(pool, cores, _sha_n, 16),
                }
                rows.append(r)
                print(f"| {rep} | {r['naive'] * 1e3:.0f} | {r['one'] * 1e3:.1f} | "
                      f"{r['threads'] * 1e3:.1f} | {r['pool'] * 1e3:.1f} | "
                      f"{r['naive'] / r['one']:.2f}x | {r['one'] / r['threads']:.2f}x | "
                      f"{r['one'] / r['pool']:.2f}x | {r['ceiling']:.2f}x | "
                      f"{r['one'] / r['threads'] / r['ceiling']:.2f} | {r['sha']:.2f}x |",
                      flush=True)  # fmt: skip

    def med(fn) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(fn(r) for r in rows)

    best = {k: min(r[k] for r in rows) for k in ("naive", "one", "threads", "pool")}
    same_rep = [r["one"] / r["threads"] for r in rows]
    print(f"\nbest of {args.reps} (timeit's rule: the least disturbed run): naive "
          f"{best['naive'] * 1e3:.0f} ms, ours 1 thread {best['one'] * 1e3:.1f} ms "
          f"({best['naive'] / best['one']:.2f}x naive per core), {cores} threads "
          f"{best['threads'] * 1e3:.1f} ms ({best['one'] / best['threads']:.2f}x one thread, "
          f"{best['naive'] / best['threads']:.2f}x naive)")  # fmt: skip
    print(f"medians of {args.reps} reps: {cores} threads vs 1 {statistics.median(same_rep):.2f}x "
          f"(range {min(same_rep):.2f}-{max(same_rep):.2f}x); process pool vs 1 "
          f"{med(lambda r: r['one'] / r['pool']):.2f}x; ceiling for this work in {cores} "
          f"independent processes {med(lambda r: r['ceiling']):.2f}x (range "
          f"{min(r['ceiling'] for r in rows):.2f}-{max(r['ceiling'] for r in rows):.2f}x); threads "
          f"/ ceiling {med(lambda r: r['one'] / r['threads'] / r['ceiling']):.2f}; "
          f"sha256 ceiling {med(lambda r: r['sha']):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

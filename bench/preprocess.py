"""Benchmark 4 (issue 5): 12-MP camera JPEGs -> 896 px JPEG data URIs per second.

naive  = full decode + LANCZOS resize + JPEG encode + base64 (what a simple script does);
ours   = pipeline.encode.encode_image (JPEG draft mode to the target box, then resize),
on 1 thread, and on as many threads as cores (the pipeline's encoder pool; Pillow releases the
GIL while decoding, resizing and encoding). Photo-like images: gradients + noise, ~4-5 MB.
Each rep also measures the machine ceiling: the same C work (sha256) in N independent processes
vs one, since this VM does not give 2x for 2 cores (vCPUs slow each other down).
Run: .venv/bin/python bench/preprocess.py [--images 12] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import base64
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_downscale import make_photos  # noqa: E402

from pipeline.config import ImageConfig  # noqa: E402
from pipeline.encode import encode_image  # noqa: E402

CFG = ImageConfig()


def naive(raw: bytes) -> str:
    im = Image.open(io.BytesIO(raw)).convert("RGB")
    scale = 896 / max(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def ours(raw: bytes) -> str:
    return encode_image(raw, CFG).data_uri


def rate(fn, blobs: list[bytes], threads: int, rounds: int = 4) -> float:  # type: ignore[no-untyped-def]
    work = blobs * rounds
    t0 = time.perf_counter()
    if threads == 1:
        for b in work:
            fn(b)
    elif threads < 0:
        with ProcessPoolExecutor(-threads) as pool:
            list(pool.map(fn, work))
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, work))
    return len(work) / (time.perf_counter() - t0)


def _sha_work(_: int) -> float:
    """~1 s of GIL-free C work (sha256 of a 16 MB buffer, repeated); returns its own seconds."""
    import hashlib

    buf = b"\x5a" * (16 << 20)
    t0 = time.perf_counter()
    for _ in range(24):
        hashlib.sha256(buf).digest()
    return time.perf_counter() - t0


def machine_ceiling(cores: int) -> float:
    """What this VM gives for the same C work on every core at once vs one core alone
    (independent processes, no shared state): the most any encoder can scale here."""
    with ProcessPoolExecutor(cores) as pool:
        alone = list(pool.map(_sha_work, [0]))[0]
        together = max(pool.map(_sha_work, range(cores)))
    return cores * alone / together


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        paths = make_photos(Path(d), args.images)
        blobs = [p.read_bytes() for p in paths]
    mb = sum(map(len, blobs)) / len(blobs) / 1e6
    print(f"\n## Preprocessing, {time.strftime('%Y-%m-%d %H:%M')} UTC, {cores} cores, "
          f"{args.images} photos 4000x3000 ({mb:.1f} MB) -> 896 px data URIs; "
          f"load average before: {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| rep | naive 1 thread ms | ours 1 thread ms | ours "
          f"{cores} threads ms | ours {cores} processes ms | per core vs naive "
          f"| {cores} threads vs 1 | {cores} processes vs 1 | machine ceiling ({cores} "
          "processes of C work vs 1) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    best: dict[str, float] = {}
    for rep in range(1, args.reps + 1):
        naive1 = rate(naive, blobs, 1)
        ours1 = rate(ours, blobs, 1)
        oursn = rate(ours, blobs, cores)
        oursp = rate(ours, blobs, -cores)
        ceiling = machine_ceiling(cores)
        ratios.append(oursn / ours1)
        for name, r in (("naive1", naive1), ("ours1", ours1), ("oursn", oursn), ("oursp", oursp)):
            best[name] = max(best.get(name, 0.0), r)
        print(f"| {rep} | {1000 / naive1:.0f} | {1000 / ours1:.0f} | {1000 / oursn:.0f} | "
              f"{1000 / oursp:.0f} | {ours1 / naive1:.2f}x | {oursn / ours1:.2f}x | "
              f"{oursp / ours1:.2f}x | {ceiling:.2f}x |", flush=True)  # fmt: skip
    print(f"\nbest of {args.reps} (timeit's rule: the least disturbed run): naive "
          f"{1000 / best['naive1']:.0f} ms, ours 1 thread {1000 / best['ours1']:.0f} ms "
          f"({best['ours1'] / best['naive1']:.2f}x naive per core), {cores} threads "
          f"{1000 / best['oursn']:.0f} ms ({best['oursn'] / best['ours1']:.2f}x one thread, "
          f"{best['oursn'] / best['naive1']:.2f}x naive); same-rep {cores} threads vs 1: median "
          f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark 4 (issue 5): 12-MP camera JPEGs -> 896 px JPEG data URIs per second.

naive  = full decode + LANCZOS resize + JPEG encode + base64 (what a simple script does);
ours   = pipeline.encode.encode_image (JPEG draft mode to the target box, then resize),
on 1 thread, and on as many threads as cores (the pipeline's encoder pool; Pillow releases the
GIL while decoding, resizing and encoding). Photo-like images: gradients + noise, ~4-5 MB.
Run: .venv/bin/python bench/preprocess.py [--images 12]
"""

from __future__ import annotations

import argparse
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


def rate(fn, blobs: list[bytes], threads: int, rounds: int = 2) -> float:  # type: ignore[no-untyped-def]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        paths = make_photos(Path(d), args.images)
        blobs = [p.read_bytes() for p in paths]
    mb = sum(map(len, blobs)) / len(blobs) / 1e6
    naive1 = rate(naive, blobs, 1)
    ours1 = rate(ours, blobs, 1)
    oursn = rate(ours, blobs, cores)
    oursp = rate(ours, blobs, -cores)
    print(f"\n## Preprocessing, {time.strftime('%Y-%m-%d %H:%M')} UTC, {cores} cores, "
          f"{args.images} photos 4000x3000 ({mb:.1f} MB) -> 896 px data URIs\n")  # fmt: skip
    print("| method | images/s | ms/image | vs naive |")
    print("|---|---|---|---|")
    for label, r in (("naive, 1 thread", naive1), ("ours, 1 thread", ours1),
                     (f"ours, {cores} threads", oursn), (f"ours, {cores} processes", oursp)):  # fmt: skip
        print(f"| {label} | {r:.2f} | {1000 / r:.0f} | {r / naive1:.2f}x |")
    print(f"\nper core: {ours1 / naive1:.2f}x naive; {cores} threads: {oursn / ours1:.2f}x one "
          f"thread; {cores} processes: {oursp / ours1:.2f}x one thread")  # fmt: skip


if __name__ == "__main__":
    main()

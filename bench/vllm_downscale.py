"""Real vLLM: does sending 896 px JPEGs instead of the original big photos relieve the server?

Makes N photo-like 12-MP JPEGs (4000x3000: gradients plus noise, ~4-5 MB each), then captions
them twice with the pipeline against a real vLLM at the same concurrency: once downscaled to
896 px (the default), once at full size (``--max-side 100000``). Reports images/s and the
server's own time per image, from vLLM's /metrics histograms
(``vllm:e2e_request_latency_seconds`` sum/count deltas, and the time between arrival and
scheduling is in there too), plus request body sizes.

Run: make bench-vllm   (starts the tiny real vLLM via tests/vllm/rig.sh, runs this, stops it)
or:  CAPTION_VLLM_URL=http://127.0.0.1:18102/v1 .venv/bin/python bench/vllm_downscale.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import anyio
import httpx
from PIL import Image, ImageFilter

from pipeline.config import Overrides, load_job
from pipeline.metrics import parse
from pipeline.runner import Runner


def make_photos(folder: Path, n: int, size: tuple[int, int] = (4000, 3000)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = size
        base = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        noise = Image.effect_noise((w, h), 40 + i).convert("RGB")
        tint = Image.new("RGB", (w, h), ((i * 53) % 256, (i * 97) % 256, (i * 31) % 256))
        im = Image.blend(Image.blend(base, noise, 0.35), tint, 0.3).filter(ImageFilter.SMOOTH)
        path = folder / f"photo{i:03d}.jpg"
        im.save(path, quality=95)
        paths.append(path)
    return paths


def histogram(url: str, name: str) -> tuple[float, float]:
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    total = count = 0.0
    for s in parse(text):
        if s.name == f"{name}_sum":
            total += s.value
        elif s.name == f"{name}_count":
            count += s.value
    return total, count


def run_once(url: str, photos: Path, out: Path, max_side: int, conc: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    job = load_job(None, Overrides(endpoint=url, input=str(photos), output=str(out),
                                   prompt="Describe.", max_tokens=16, concurrency=conc,
                                   max_side=max_side, no_progress=True))  # fmt: skip
    s0, c0 = histogram(url, "vllm:e2e_request_latency_seconds")
    t0 = time.monotonic()
    result = anyio.run(Runner(job, api_key=None).run)
    wall = time.monotonic() - t0
    s1, c1 = histogram(url, "vllm:e2e_request_latency_seconds")
    assert result.tally.ok == result.tally.done > 0, result.tally
    import pyarrow.dataset as ds

    t = ds.dataset(out).to_table(columns=["width", "height", "encode_s", "latency_s"]).to_pylist()
    return {
        "images_per_s": result.tally.ok / wall,
        "server_s_per_image": (s1 - s0) / max(1.0, c1 - c0),
        "client_latency_s": sum(r["latency_s"] for r in t) / len(t),
        "encode_s": sum(r["encode_s"] for r in t) / len(t),
        "width": t[0]["width"],
        "height": t[0]["height"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    url = os.environ.get("CAPTION_VLLM_URL", "http://127.0.0.1:18102/v1")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        photos = make_photos(tmp / "photos", args.images)
        mb = sum(p.stat().st_size for p in photos) / len(photos) / 1e6
        small = run_once(url, tmp / "photos", tmp / "o1", 896, args.concurrency)
        big = run_once(url, tmp / "photos", tmp / "o2", 100_000, args.concurrency)
    print(f"\n## Real vLLM: 896 px vs original, {time.strftime('%Y-%m-%d %H:%M')} UTC, "
          f"{os.cpu_count()} cores, {args.images} photos of 4000x3000 ({mb:.1f} MB each), "
          f"concurrency {args.concurrency}, max_tokens 16\n")  # fmt: skip
    print("| sent | images/s | vLLM e2e s/image (server) | client latency s | encode s |")
    print("|---|---|---|---|---|")
    for label, r in (("896 px (default)", small), ("original 4000x3000", big)):
        print(f"| {label} ({r['width']:.0f}x{r['height']:.0f}) | {r['images_per_s']:.2f} | "
              f"{r['server_s_per_image']:.3f} | {r['client_latency_s']:.3f} | {r['encode_s']:.3f} |")  # fmt: skip
    print(f"\nratio: {small['images_per_s'] / big['images_per_s']:.2f}x images/s, "
          f"{big['server_s_per_image'] / small['server_s_per_image']:.2f}x less server time per image")  # fmt: skip


if __name__ == "__main__":
    main()

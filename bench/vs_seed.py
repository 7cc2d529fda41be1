"""Benchmark 2 (issue 5): the seed's one-image-at-a-time script vs the pipeline, same server.

Server: the simulator with 64 slots and 0.25 s per request (a GPU server that batches).
Seed: one blocking POST at a time with the seed's exact body (base64 of the original file,
system "You are a helpful assistant.", max_tokens 2048, temperature 0.7, top_p 0.9), through
a synchronous httpx client (the seed used requests; same wire traffic). Pipeline: ``caption run``
with the defaults (``--concurrency auto``). Rates from separate runs over the same images.
Run: .venv/bin/python bench/vs_seed.py [--seed-items 40] [--items 1500]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_images
from saturation import run, sim


def seed_rate(url: str, paths: list[Path]) -> float:
    prompt = "使用中文描述这张图像"
    with httpx.Client(timeout=600) as client:
        t0 = time.monotonic()
        for path in paths:
            b64 = base64.b64encode(path.read_bytes()).decode("utf-8")
            payload = {
                "model": "gemma3-27b",
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": [
                        {"type": "text", "text": prompt},
                        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}},
                    ]},
                ],
                "max_tokens": 2048, "temperature": 0.7, "top_p": 0.9,
            }  # fmt: skip
            r = client.post(url + "/chat/completions", json=payload)
            r.raise_for_status()
            r.json()["choices"][0]["message"]["content"]
        return len(paths) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed-items", type=int, default=40)
    ap.add_argument("--items", type=int, default=1500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        paths = make_images(tmp / "images", args.items, size=(640, 480))
        proc, url = sim(tmp)
        try:
            seed = seed_rate(url, paths[: args.seed_items])
            wall, summary, _ = run([url], tmp / "images", tmp / "out", "--concurrency", "auto")
        finally:
            proc.terminate()
            proc.wait()
    ours = args.items / wall
    print(f"\n## Seed script vs pipeline, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} "
          f"cores; simulator 64 slots x 0.25 s; 640x480 JPEGs\n")  # fmt: skip
    print("| client | images | images/s |\n|---|---|---|")
    print(f"| seed: one request at a time | {args.seed_items} | {seed:.2f} |")
    print(f"| caption run (auto), whole process | {args.items} | {ours:.1f} |")
    print(f"\nspeed-up: {ours / seed:.0f}x  ({summary})")


if __name__ == "__main__":
    main()

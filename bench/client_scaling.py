"""Does the pipeline's throughput hold as concurrency grows? (issue 2's client trap)

Starts the simulator in its own process with zero latency, then, in this process:
  * the whole pipeline (`caption run`: walk, hash, encode, request, Parquet) over N small images,
  * a bare loop with ONE httpx.AsyncClient and one big pool posting the same kind of body,
  * the pipeline's sharded client alone (ChatClient) posting the same body,
at concurrency 16, 64 and 256. Prints a markdown table. Bounded: N requests per cell.

Run: .venv/bin/python bench/client_scaling.py [--big] [--items 2000] [--reps 5]  (both in make bench)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_images
from saturation import sim

from pipeline.client import ChatClient
from pipeline.config import EndpointConfig, ImageConfig, Overrides, PromptConfig, load_job
from pipeline.encode import encode_image
from pipeline.payload import build_body
from pipeline.runner import Runner
from pipeline.schema import skip_pandas_probe


def make_noisy(folder: Path, n: int) -> None:
    """Pre-sized 896x672 photo-like JPEGs (~165 KB; their data URI is ~220 KB)."""
    from PIL import Image

    folder.mkdir(parents=True)
    base = Image.linear_gradient("L").resize((896, 672)).convert("RGB")
    for i in range(n):
        noise = Image.effect_noise((896, 672), 36 + i % 8).convert("RGB")
        Image.blend(base, noise, 0.15).save(folder / f"p{i:05d}.jpg", quality=90)


async def post_loop(post, n: int, conc: int) -> float:  # type: ignore[no-untyped-def]
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < n:
            sent += 1
            await post()

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(conc):
            tg.start_soon(worker)
    return n / (time.perf_counter() - t0)


async def bare_httpx(url: str, body: bytes, n: int, conc: int) -> float:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def post() -> None:
            r = await client.post(url + "/chat/completions", content=body,
                                  headers={"content-type": "application/json"})  # fmt: skip
            r.raise_for_status()

        return await post_loop(post, n, conc)


async def bare_aiohttp(url: str, body: bytes, n: int, conc: int) -> float:
    """The reference: a bare aiohttp loop posting the same bytes (no pipeline at all)."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:

        async def post() -> None:
            async with session.post(url + "/chat/completions", data=body,
                                    headers={"content-type": "application/json"}) as r:  # fmt: skip
                r.raise_for_status()
                await r.read()

        return await post_loop(post, n, conc)


async def sharded(url: str, body: dict[str, object], n: int, conc: int) -> float:
    client = ChatClient(EndpointConfig(url=url), concurrency=conc, api_key=None)
    try:

        async def post() -> None:
            await client.complete(body)

        return await post_loop(post, n, conc)
    finally:
        await client.aclose()


def pipeline_rate(url: str, images: Path, out: Path, conc: int) -> float:
    skip_pandas_probe()  # as `caption run` does
    shutil.rmtree(out, ignore_errors=True)
    job = load_job(None, Overrides(endpoint=url, input=str(images), output=str(out),
                                   prompt="Describe.", concurrency=conc, no_progress=True))  # fmt: skip
    result = anyio.run(Runner(job, api_key=None).run)
    assert result.tally.ok == result.tally.done, result.tally
    return result.tally.ok / result.wall_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--conc", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--reps", type=int, default=5, help="runs per cell; medians are reported")
    ap.add_argument(
        "--big", action="store_true", help="896x672 noisy photos: ~200 KB base64 bodies"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.big:
            make_noisy(tmp / "images", args.items)
        else:
            make_images(tmp / "images", args.items, size=(64, 48))
        sample = next((tmp / "images").rglob("*.jpg"))
        uri = encode_image(sample.read_bytes(), ImageConfig()).data_uri
        body = build_body("gemma3-27b", PromptConfig(text="Describe."), "Describe.", uri)
        import json

        raw = json.dumps(body).encode()
        proc, url = sim(tmp, slots=4096, latency=0)
        try:
            print(f"# client scaling, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} "
                  f"cores, {args.items} requests per cell, body {len(raw)} bytes, zero-latency "
                  f"simulator; median of {args.reps} runs per cell (bare httpx: one run)")  # fmt: skip
            print("\n| concurrency | bare aiohttp loop (req/s) | bare httpx, one pool (req/s) "
                  "| ChatClient sharded (req/s) | whole pipeline (items/s) | pipeline / bare aiohttp "
                  "| runs: pipeline / bare |\n|---|---|---|---|---|---|---|")  # fmt: skip
            httpx_one = {c: anyio.run(bare_httpx, url, raw, args.items, c) for c in args.conc}
            bare: dict[int, list[float]] = {c: [] for c in args.conc}
            client: dict[int, list[float]] = {c: [] for c in args.conc}
            pipe: dict[int, list[float]] = {c: [] for c in args.conc}
            # Interleaved: each rep runs every concurrency and every client, so the VM's drifts
            # hit all cells alike and a same-rep ratio compares runs made a minute apart.
            for _ in range(args.reps):
                for conc in args.conc:
                    bare[conc].append(anyio.run(bare_aiohttp, url, raw, args.items, conc))
                    client[conc].append(anyio.run(sharded, url, body, args.items, conc))
                    pipe[conc].append(pipeline_rate(url, tmp / "images", tmp / "out", conc))
            for conc in args.conc:
                r, b, c = (statistics.median(x[conc]) for x in (bare, client, pipe))
                runs = ", ".join(
                    f"{p:.0f}/{q:.0f}" for p, q in zip(pipe[conc], bare[conc], strict=True)
                )
                print(f"| {conc} | {r:.0f} | {httpx_one[conc]:.0f} | {b:.0f} | {c:.0f} | "
                      f"{c / r:.2f} | {runs} |")  # fmt: skip
            lo, hi = min(args.conc), max(args.conc)
            same_rep = [h / lo_ for h, lo_ in zip(pipe[hi], pipe[lo], strict=True)]
            bare_rep = [h / lo_ for h, lo_ in zip(bare[hi], bare[lo], strict=True)]
            print(f"\nwhole pipeline at {hi} vs {lo}: ratio of medians "
                  f"{statistics.median(pipe[hi]) / statistics.median(pipe[lo]):.2f}; same-rep "
                  f"ratios {', '.join(f'{x:.2f}' for x in same_rep)} (median "
                  f"{statistics.median(same_rep):.2f}); bare aiohttp same-rep median "
                  f"{statistics.median(bare_rep):.2f}", flush=True)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()

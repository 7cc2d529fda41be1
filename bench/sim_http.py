"""Does the simulator need its hand-written HTTP/1.1 server, or would aiohttp.web do? (the issue
"move pipeline/sim/httpserver.py to aiohttp.web unless a side-by-side measurement shows the
benchmarks need the hand-written one")

Starts, each in its own process (as the benchmarks run the simulator, see `saturation.sim`):
  * hand-written: the current simulator, `python -m pipeline sim --slots 1000000 --latency 0`;
  * aiohttp.web: an `aiohttp.web` app (`AppRunner`/`TCPSite`, `access_log=None`) in this file
    (`--serve-aiohttp PORT_FILE`) serving POST /v1/chat/completions with the simulator's own
    pieces, used read-only: `chat.parse_chat`, `responses.generate` / `completion_body`, the
    `engine.Engine` scheduler (`submit` / `job.done` / `abort`, as routes._chat uses it), plus
    GET /v1/models, /metrics, /sim/stats through the same `routes` functions.
Then, in this process, loads both with the clients of `bench/client_scaling.py`: the pipeline's
own `ChatClient`, the bare aiohttp loop (the benchmark's reference) and the whole pipeline
(`Runner` over image files, its `pipeline_rate`), at concurrency 16, 64 and 256, with ~1 KB
bodies (32x24 JPEGs) and ~200 KB bodies (896x672 noisy JPEGs), interleaving the two servers
within each repetition. Per cell: requests/s, and the server process's CPU seconds per
1,000 requests (utime + stime from /proc/PID/stat before and after the cell): client and server
share this machine's cores, so a costlier server lowers the client's measured throughput.
Last, `bench/saturation.py`'s run (`caption run --concurrency auto`, 3,000 small images, 64 slots
x 0.25 s) against each server, also in its own process.

Run: .venv/bin/python bench/sim_http.py [--reps 3] [--saturation-reps 2]  (about 3 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

MODEL = "gemma3-27b"
HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
# This checkout's `pipeline`, here and in every child process (not whatever the venv points at).
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The throughputs the benchmarks need the simulator to sustain (bench/RESULTS.md, 2026-12-02,
# the best medians of the two `make bench` runs and the separate runs; client and simulator
# sharing the 2 cores). name -> (client, body, req/s)
NEEDED = {
    "whole pipeline, ~1 KB (client_scaling)": ("whole pipeline", "small", 1435),
    "whole pipeline, ~200 KB (client_scaling --big)": ("whole pipeline", "big", 834),
    "ChatClient alone, ~1 KB (client_scaling)": ("ChatClient", "small", 3801),
    "ChatClient alone, ~200 KB (client_scaling --big)": ("ChatClient", "big", 1127),
    "bare aiohttp loop, ~1 KB (client_scaling's reference)": ("bare aiohttp loop", "small", 9810),
    "bare aiohttp loop, ~200 KB (target 3's denominator)": ("bare aiohttp loop", "big", 1145),
}


# -- the aiohttp.web server (its own process) -------------------------------------------------
def serve_aiohttp(port_file: Path, slots: int, latency: float) -> None:
    """Serve the simulator's chat semantics on aiohttp.web until SIGTERM."""
    import signal

    from aiohttp import web

    from pipeline.sim import responses, routes
    from pipeline.sim.chat import parse_chat
    from pipeline.sim.config import SimConfig
    from pipeline.sim.engine import Engine
    from pipeline.sim.errors import ApiError

    config = SimConfig(slots=slots, latency=latency)
    engine = Engine(config)
    id_rng = random.Random(config.seed + 2)
    started_wall = int(time.time())
    json_type = "application/json"
    server_header = {"server": "vllm-sim"}

    def answer(status: int, body: bytes) -> web.Response:
        return web.Response(status=status, body=body, content_type=json_type, headers=server_header)

    async def chat(request: web.Request) -> web.Response:
        raw = await request.read()
        stats = engine.stats
        stats.requests += 1
        stats.in_flight += 1
        try:
            try:
                req = parse_chat(raw, config.model, config.max_model_len)
            except ApiError as exc:
                stats.errors[str(exc.status)] += 1
                return answer(exc.status, exc.body())
            completion = responses.generate(
                config.model, req, config.caption_words, config.max_model_len
            )
            n_out = len(completion.words)
            cid = f"chatcmpl-{id_rng.getrandbits(64):016x}"
            created = int(time.time())
            # As routes._chat: the engine queues the job, admits it and completes it on its due.
            job = engine.submit(req.prompt_tokens, n_out, engine.service_time(n_out))
            try:
                await job.done
            except asyncio.CancelledError:
                engine.abort(job)
                engine.metrics.success["abort"] += 1
                raise
            body = responses.completion_body(
                cid, created, config.model, req.prompt_tokens, completion
            )
            if req.images:
                stats.images[req.images[0].sha12] += 1
            engine.record_success(req.prompt_tokens, n_out, completion.finish_reason)
            return answer(200, body)
        finally:
            stats.in_flight -= 1

    class Capture:
        """Stands in for the hand-written server's connection to reuse a GET route as is."""

        answer: web.Response

        def send(self, status: int, body: bytes, content_type: str = json_type,
                 headers: tuple[tuple[str, str], ...] = (), *, keep_alive: bool = True) -> None:  # fmt: skip
            self.answer = web.Response(
                status=status, body=body, headers={"content-type": content_type, **server_header}
            )

    shim = SimpleNamespace(config=config, engine=engine, started_wall=started_wall)

    def reuse(route: Callable[..., Awaitable[None]]) -> Callable[[web.Request], Awaitable[Any]]:
        async def handler(request: web.Request) -> web.Response:
            conn = Capture()
            await route(shim, SimpleNamespace(keep_alive=True, body=b""), conn)
            return conn.answer

        return handler

    async def main() -> None:
        # client_max_size: the hand-written server takes bodies up to 64 MiB (aiohttp: 1 MiB).
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", reuse(routes.models))
        app.router.add_get("/sim/stats", reuse(routes.sim_stats))
        app.router.add_get("/metrics", reuse(routes.metrics_page))
        # access_log=None: no access logger at all (aiohttp then skips its per-request timing);
        # handler_cancellation: a client that goes away cancels its handler and so leaves the
        # slot queue at once, as in the hand-written server (aiohttp's default lets it run on).
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, config.host, 0, backlog=4096, reuse_address=True)
        await site.start()
        port = runner.addresses[0][1]
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, port_file)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


# -- starting the servers -----------------------------------------------------------------------
def start(kind: str, tmp: Path, slots: int, latency: float) -> tuple[subprocess.Popen[bytes], str]:
    """One server in its own process on a free port; its process and base URL (…/v1)."""
    port_file = tmp / f"port-{kind}-{slots}"
    port_file.unlink(missing_ok=True)
    if kind == "hand":
        cmd = [sys.executable, "-m", "pipeline", "sim", "--port", "0", "--port-file", str(port_file),
               "--slots", str(slots), "--latency", str(latency)]  # fmt: skip
    else:
        cmd = [sys.executable, str(HERE), "--serve-aiohttp", str(port_file),
               "--slots", str(slots), "--latency", str(latency)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"{kind} server did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}/v1"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_cpu() -> tuple[float, float]:
    """CPU seconds of the whole machine (all cores) in processes (user + nice + system) and
    stolen by the hypervisor, from /proc/stat."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:9]]
    return (t[0] + t[1] + t[2]) / CLK_TCK, t[7] / CLK_TCK


# During the cells: CPU seconds of other processes, CPU seconds stolen, wall seconds.
OTHERS = [0.0, 0.0, 0.0]


# -- bodies and image folders --------------------------------------------------------------
def jpeg(im: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def noisy(i: int) -> Any:
    """bench/client_scaling.py's make_noisy: a pre-sized photo-like 896x672 image."""
    from PIL import Image

    base = Image.linear_gradient("L").resize((896, 672)).convert("RGB")
    noise = Image.effect_noise((896, 672), 36 + i % 8).convert("RGB")
    return Image.blend(base, noise, 0.15)


def bodies() -> dict[str, bytes]:
    """The encoded request bodies, built as the pipeline builds them: small (~1 KB), big (~200 KB)."""
    from PIL import Image

    from pipeline.config import ImageConfig, PromptConfig
    from pipeline.encode import encode_image
    from pipeline.payload import build_body, encode_body

    small = Image.new("RGB", (32, 24), (40, 120, 200))
    small.putpixel((3, 0), (255, 0, 0))
    out = {}
    for name, im in (("small", small), ("big", noisy(0))):
        uri = encode_image(jpeg(im), ImageConfig()).data_uri
        body = build_body(MODEL, PromptConfig(text="Describe."), "Describe.", uri)
        out[name] = encode_body(body, stream=False)
    return out


def image_folders(tmp: Path, n_small: int, n_big: int) -> dict[str, Path]:
    """Image trees for the whole pipeline: distinct 32x24 JPEGs; distinct 896x672 noisy JPEGs
    (8 noisy images, each file made distinct by a numbered JPEG comment after the SOI marker:
    making a noisy image takes ~26 ms, and the pipeline sends identical images only once)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_images

    make_images(tmp / "small", n_small, size=(32, 24))
    photos = [jpeg(noisy(i)) for i in range(8)]
    for i in range(n_big):
        sub = tmp / "big" / "abcd"[i % 4]
        sub.mkdir(parents=True, exist_ok=True)
        tag = b"sim_http %d" % i
        com = b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag
        photo = photos[i % 8]
        (sub / f"p{i:05d}.jpg").write_bytes(photo[:2] + com + photo[2:])
    return {"small": tmp / "small", "big": tmp / "big"}


# -- clients (as in bench/client_scaling.py) --------------------------------------------------
async def post_loop(post: Callable[[], Awaitable[Any]], n: int, conc: int) -> float:
    import anyio

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


async def chat_client(url: str, raw: bytes, n: int, conc: int) -> float:
    """The pipeline's own client, posting an encoded body (`ChatClient.send`); one request
    first, outside the timing, to check the answer."""
    from pipeline.client import ChatClient
    from pipeline.config import EndpointConfig

    client = ChatClient(EndpointConfig(url=url), concurrency=conc, api_key=None)
    try:
        first = await client.send(raw)
        assert first.caption.startswith("[simulated caption by"), first.caption
        return await post_loop(lambda: client.send(raw), n - 1, conc)
    finally:
        await client.aclose()


async def bare_aiohttp(url: str, raw: bytes, n: int, conc: int) -> float:
    """client_scaling's reference: a bare aiohttp loop posting the same bytes."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:

        async def post() -> None:
            async with session.post(url + "/chat/completions", data=raw,
                                    headers={"content-type": "application/json"}) as r:  # fmt: skip
                r.raise_for_status()
                await r.read()

        await post()
        return await post_loop(post, n - 1, conc)


def whole_pipeline(url: str, images: Path, n: int, conc: int) -> float:
    """client_scaling's `pipeline_rate`: `Runner` end to end over `images` (n files)."""
    from client_scaling import pipeline_rate

    return pipeline_rate(url, images, images.with_name(images.name + "-out"), conc)


CLIENTS = ("ChatClient", "bare aiohttp loop", "whole pipeline")


def completed(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats", timeout=10) as r:
        return int(json.load(r)["completed"])


def cell(client: str, proc: subprocess.Popen[bytes], url: str, what: bytes | Path, n: int,
         conc: int) -> tuple[float, float, float]:  # fmt: skip
    """(req/s, server CPU s per 1,000 requests, client CPU s per 1,000 requests)."""
    import anyio

    done0 = completed(url)
    s0, c0, (m0, st0), t0 = cpu_seconds(proc.pid), self_cpu(), machine_cpu(), time.monotonic()
    if client == "whole pipeline":
        assert isinstance(what, Path)
        rate = whole_pipeline(url, what, n, conc)
    else:
        assert isinstance(what, bytes)
        post = chat_client if client == "ChatClient" else bare_aiohttp
        rate = anyio.run(post, url, what, n, conc)
    s1, c1, (m1, st1) = cpu_seconds(proc.pid), self_cpu(), machine_cpu()
    OTHERS[0] += max(0.0, (m1 - m0) - (s1 - s0) - (c1 - c0))
    OTHERS[1] += st1 - st0
    OTHERS[2] += time.monotonic() - t0
    got = completed(url) - done0
    assert got == n, f"server completed {got} requests, expected {n}"
    return rate, (s1 - s0) * 1000 / n, (c1 - c0) * 1000 / n


# -- saturation (bench/saturation.py's run, against either server) ----------------------------
def saturation(tmp: Path, reps: int, items: int) -> dict[str, list[tuple[float, float, str]]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_images
    from saturation import busy_window, run

    make_images(tmp / "sat-images", items, size=(64, 48))
    servers = {k: start(k, tmp, 64, 0.25) for k in ("hand", "aiohttp")}
    got: dict[str, list[tuple[float, float, str]]] = {k: [] for k in servers}
    try:
        for rep in range(reps):
            for kind in ("hand", "aiohttp") if rep % 2 == 0 else ("aiohttp", "hand"):
                out = tmp / f"sat-out-{kind}"
                r = run([servers[kind][1]], tmp / "sat-images", out, "--concurrency", "auto")
                in_run = float(r.summary.split("s, ")[1].split(" items/s")[0])
                busy, _ = busy_window(out, r.launched)
                got[kind].append((in_run / 256, items / busy / 256, r.summary))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    return got


# -- main -------------------------------------------------------------------------------------
def verdict(need: float, hand: float, aio: float) -> str:
    """Can aiohttp.web serve the rate the benchmark needs (its best cell vs the need)?"""
    if aio >= need:
        return "yes"
    if hand < need:
        return "neither reaches it here today"
    return "NO"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve-aiohttp", type=Path, metavar="PORT_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--slots", type=int, default=1_000_000, help=argparse.SUPPRESS)
    ap.add_argument("--latency", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--conc", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--small", type=int, default=3000, help="requests per ~1 KB client cell")
    ap.add_argument("--big", type=int, default=1000, help="requests per ~200 KB client cell")
    ap.add_argument("--items", type=int, nargs=2, default=[2000, 1000], metavar=("SMALL", "BIG"),
                    help="images per whole-pipeline cell")  # fmt: skip
    ap.add_argument("--reps", type=int, default=3, help="runs per cell; medians are reported")
    ap.add_argument("--saturation-reps", type=int, default=2, help="0 skips the saturation part")
    ap.add_argument("--saturation-items", type=int, default=3000)
    args = ap.parse_args()
    if args.serve_aiohttp is not None:
        serve_aiohttp(args.serve_aiohttp, args.slots, args.latency)
        return

    import aiohttp
    from aiohttp import http_parser, http_writer

    import pipeline
    from pipeline.schema import skip_pandas_probe

    skip_pandas_probe()
    t_start = time.monotonic()
    c_parser = http_parser.HttpRequestParser is not http_parser.HttpRequestParserPy
    c_writer = http_writer._serialize_headers is not http_writer._py_serialize_headers
    raw = bodies()
    sizes = {k: len(v) for k, v in raw.items()}
    names = ("hand", "aiohttp")
    label = {"hand": "hand-written", "aiohttp": "aiohttp.web"}
    # (rate, server CPU, client CPU) per (client, body, conc, server), one entry per rep
    res: dict[tuple[str, str, int, str], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        folders = image_folders(tmp, *args.items)
        work: dict[tuple[str, str], tuple[bytes | Path, int]] = {}
        for body, n_req, n_img in (("small", args.small, args.items[0]),
                                   ("big", args.big, args.items[1])):  # fmt: skip
            work[("ChatClient", body)] = (raw[body], n_req)
            work[("bare aiohttp loop", body)] = (raw[body], n_req)
            work[("whole pipeline", body)] = (folders[body], n_img)
        servers = {k: start(k, tmp, 1_000_000, 0.0) for k in names}
        load0 = os.getloadavg()[0]
        try:
            for kind in names:  # warm-up: imports, first connections
                for client in CLIENTS[:2]:
                    cell(client, *servers[kind], raw["small"], 300, 16)
            for rep in range(args.reps):
                for client in CLIENTS:
                    for body in ("small", "big"):
                        for conc in args.conc:
                            order = names if (rep + conc // 16) % 2 == 0 else names[::-1]
                            for kind in order:
                                r = cell(client, *servers[kind], *work[(client, body)], conc)
                                res.setdefault((client, body, conc, kind), []).append(r)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait()
        t_cells = time.monotonic() - t_start
        sat = {}
        if args.saturation_reps:
            sat = saturation(tmp, args.saturation_reps, args.saturation_items)

    print(f"# Simulator HTTP server: hand-written (pipeline/sim/httpserver.py) vs aiohttp.web, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores (`bench/sim_http.py`)\n")  # fmt: skip
    print(f"Python {sys.version.split()[0]}, aiohttp {aiohttp.__version__} (C parser "
          f"{'on' if c_parser else 'OFF'}, C header writer {'on' if c_writer else 'OFF'}), "
          f"asyncio's default loop in both; each server in its own process, zero latency, "
          f"1,000,000 slots; bodies {sizes['small']:,} B (32x24 JPEG) and {sizes['big']:,} B "
          f"(896x672 noisy JPEG); {args.small:,} / {args.big:,} requests per client cell, "
          f"{args.items[0]:,} / {args.items[1]:,} images per whole-pipeline cell; median of "
          f"{args.reps} reps, the two servers interleaved in each rep; load average before "
          f"{load0:.2f}; these cells took {t_cells:.0f} s, during which other processes used "
          f"{OTHERS[0] / OTHERS[2]:.0%} of one core and the hypervisor stole "
          f"{OTHERS[1] / OTHERS[2]:.0%} of one (/proc/stat: user+nice+system less the two "
          f"processes of each cell; steal); code: "
          f"{Path(pipeline.__file__).parent}.\n")  # fmt: skip
    print("CPU = CPU seconds per 1,000 requests (= ms per request): server = the server "
          "process's utime+stime from /proc/PID/stat (10 ms ticks); client = this process's "
          "(the load generator; the whole pipeline's encoder threads included).\n")  # fmt: skip
    print("| client | body | concurrency | hand-written req/s | aiohttp.web req/s | aiohttp / hand "
          "(same-rep median) | server CPU hand | server CPU aiohttp | aiohttp / hand | client CPU "
          "hand / aiohttp | runs req/s: hand ; aiohttp |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med: dict[tuple[str, str, int, str], tuple[float, ...]] = {
        key: tuple(statistics.median(r[i] for r in rows) for i in range(3))
        for key, rows in res.items()
    }

    def rep_ratios(client: str, body: str, concs: list[int]) -> list[float]:
        """aiohttp.web / hand-written req/s, one ratio per (concurrency, rep) pair."""
        return [
            a[0] / h[0]
            for c in concs
            for h, a in zip(
                res[(client, body, c, "hand")], res[(client, body, c, "aiohttp")], strict=True
            )
        ]

    for client in CLIENTS:
        for body in ("small", "big"):
            for conc in args.conc:
                h, a = med[(client, body, conc, "hand")], med[(client, body, conc, "aiohttp")]
                same = statistics.median(rep_ratios(client, body, [conc]))
                runs = " ; ".join(
                    ", ".join(f"{r[0]:.0f}" for r in res[(client, body, conc, k)]) for k in names
                )
                print(f"| {client} | {body} ({sizes[body] / 1000:.0f} KB) | {conc} | {h[0]:.0f} | "
                      f"{a[0]:.0f} | {a[0] / h[0]:.2f} ({same:.2f}) | {h[1]:.3f} | {a[1]:.3f} | "
                      f"{a[1] / h[1]:.2f} | {h[2]:.3f} / {a[2]:.3f} | {runs} |")  # fmt: skip
    print()
    cpu_extra = {}
    for body in ("small", "big"):
        keys = [(c, body, n) for c in CLIENTS for n in args.conc]
        h = statistics.median(med[(*k, "hand")][1] for k in keys)
        a = statistics.median(med[(*k, "aiohttp")][1] for k in keys)
        cpu_extra[body] = a - h
        print(f"server CPU per request, {body} body, median over the {len(keys)} cells: "
              f"hand-written {h:.3f} ms, aiohttp.web {a:.3f} ms ({a / h:.2f}x, "
              f"{a - h:+.3f} ms)")  # fmt: skip
    print()
    for conc in args.conc:
        got = []
        for k in names:
            pipe, bare = (res[(c, "big", conc, k)] for c in ("whole pipeline", "bare aiohttp loop"))
            ratios = [p[0] / b[0] for p, b in zip(pipe, bare, strict=True)]
            got.append(f"{label[k]} {statistics.median(ratios):.2f} "
                       f"({', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
        print(f"target 3 (whole pipeline / bare aiohttp loop, ~200 KB, >= 0.5), same-rep median "
              f"(runs) at {conc}: {'; '.join(got)}")  # fmt: skip

    if sat:
        print(f"\n## Saturation against each server: `caption run --concurrency auto`, "
              f"{args.saturation_items:,} images, 64 slots x 0.25 s, ideal 256 req/s "
              f"(bench/saturation.py's run; issue 5's target: >= 0.97 in the run)\n")  # fmt: skip
        print("| server | in the run (ratio to ideal) | server busy | summary lines |")
        print("|---|---|---|---|")
        for kind in names:
            rows = sat[kind]
            print(f"| {label[kind]} | {', '.join(f'{r[0]:.3f}' for r in rows)} (median "
                  f"{statistics.median(r[0] for r in rows):.3f}) | "
                  f"{', '.join(f'{r[1]:.3f}' for r in rows)} | "
                  f"{'; '.join(r[2] for r in rows)} |")  # fmt: skip

    print("\n## Does aiohttp.web keep up with what the benchmarks need?\n")
    print("Needed = the best medians in bench/RESULTS.md (2026-12-02, hand-written server). "
          "Best here = this run's best median over the concurrencies, same client and body: "
          "what each server can serve to that client. Same-rep = aiohttp.web / hand-written "
          "req/s, the median over every (concurrency, rep) pair: how much that benchmark's "
          "figure would move. 'CPU taken' = the extra server CPU per request (aiohttp.web minus "
          "hand-written, this run's median for the body) x the needed rate: the share of one "
          "of the 2 cores the client would lose at that rate.\n")  # fmt: skip
    print("| benchmark figure | needed req/s | best here: hand-written | best here: aiohttp.web "
          "| aiohttp.web serves it? | same-rep aiohttp / hand | CPU taken from the client |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for what, (client, body, need) in NEEDED.items():
        h = max(med[(client, body, c, "hand")][0] for c in args.conc)
        a = max(med[(client, body, c, "aiohttp")][0] for c in args.conc)
        same = statistics.median(rep_ratios(client, body, args.conc))
        print(f"| {what} | {need:,} | {h:,.0f} | {a:,.0f} | {verdict(need, h, a)} | "
              f"{same:.2f} | {cpu_extra[body] * need / 10:+.1f}% of a core |")  # fmt: skip
    if sat:
        h, a = (statistics.median(r[0] for r in sat[k]) for k in names)
        print(f"| saturation, 64 slots x 0.25 s: in the run, ratio to ideal 256 req/s (>= 0.97) "
              f"| 256 | {h:.3f} | {a:.3f} | {verdict(0.97, h, a)} | "
              f"{a / h:.3f} | {cpu_extra['small'] * 256 / 10:+.1f}% of a core |")  # fmt: skip
    print(f"\ntotal {time.monotonic() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

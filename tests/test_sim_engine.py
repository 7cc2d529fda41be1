"""Tests of the simulator's engine: KV-bound admission, preemption, aborts, capacity changes,
the rate-limiting gateway, the /metrics dialects and delay, queue-wait stats and the new flags.

Timing: requests that must be seen running or waiting get a long service time and are then
aborted by closing their sockets, so a slow machine cannot change what is observed; bounds
on simulated times are derived from what the run recorded (arrival spread, elapsed time).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from pipeline.metrics import server_load
from pipeline.sim import SimConfig, SimServer
from pipeline.sim.chat import parse_chat
from pipeline.sim.cli import add_arguments, config_from_args, run_from_args
from pipeline.sim.engine import KV_WATERMARK, Engine
from pipeline.sim.gateway import TokenBucket, rate_limited, retry_after_header

MODEL = "gemma3-27b"
LONG = 60.0  # service seconds of requests that are looked at and then aborted


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- helpers --------------------------------------------------------------------------------------
def jpeg(color: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def data_uri(raw: bytes) -> str:
    return f"data:image/jpeg;base64,{base64.b64encode(raw).decode()}"


def chat_body(
    uri: str | None = None, *, max_tokens: int | None = None, **extra: Any
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "Describe this image."}]
    if uri is not None:
        content.append({"type": "image_url", "image_url": {"url": uri}})
    messages = [
        {"role": "system", "content": "You write captions."},
        {"role": "user", "content": content},
    ]
    body: dict[str, Any] = {"model": MODEL, "messages": messages, **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def prompt_tokens(body: dict[str, Any]) -> int:
    """The simulator's prompt token count for ``body``."""
    return parse_chat(json.dumps(body).encode(), MODEL, 16384).prompt_tokens


def sample(page: str, name: str, **labels: str) -> float:
    """The value of the first ``name`` line of a Prometheus page carrying ``labels``."""
    for line in page.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if m is None or m[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m[2] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m[3])
    raise AssertionError(f"{name} {labels} not in metrics:\n{page}")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def state(sim: SimServer) -> tuple[int, int]:
    s = sim.stats()
    return s["running"], s["waiting"]


class RawPost:
    """A chat request on a socket of its own, so that a test can abort it by closing it."""

    def __init__(self, sim: SimServer, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", sim.port), timeout=10)
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + data)

    def close(self) -> None:
        self.sock.close()


def post_in_order(sim: SimServer, stack: ExitStack, bodies: list[dict[str, Any]]) -> list[RawPost]:
    """Send ``bodies`` one at a time, each once the server has counted the one before (so
    their FIFO order is known); every socket is closed when ``stack`` closes."""
    posts = []
    base = sim.stats()["requests"]
    for i, body in enumerate(bodies):
        post = RawPost(sim, body)
        stack.callback(post.close)
        posts.append(post)
        wait_for(lambda: sim.stats()["requests"] >= len(posts) + base, f"request {i} to arrive")
    return posts


async def astats(client: httpx.AsyncClient, sim: SimServer) -> dict[str, Any]:
    stats: dict[str, Any] = (await client.get(f"{sim.url}/sim/stats")).json()
    return stats


async def await_stats(
    client: httpx.AsyncClient, sim: SimServer, check: Callable[[dict[str, Any]], bool], what: str
) -> None:
    with anyio.fail_after(15):
        while not check(await astats(client, sim)):
            await anyio.sleep(0.01)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def sim_log() -> Iterator[list[logging.LogRecord]]:
    """Warnings and errors logged by the simulator, aiohttp's server and asyncio."""
    handler = Records()
    handler.setLevel(logging.WARNING)
    saved = []
    for name in ("pipeline.sim", "aiohttp", "asyncio"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.disabled))
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger, level, disabled in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.disabled = disabled


# -- 1. KV-bound admission ------------------------------------------------------------------------
def test_kv_cache_bounds_admission_before_the_slots_do() -> None:
    """A cache fitting 3 prompts runs 3 of 6 with 8 slots free; /metrics: near full, 3 wait."""
    body = chat_body(data_uri(jpeg("red")))
    prompt = prompt_tokens(body)
    kv = int(3.5 * prompt / (1 - KV_WATERMARK))  # room for 3.5 prompts: the 4th does not fit
    with (
        SimServer(SimConfig(slots=8, latency=LONG, kv_capacity_tokens=kv)) as sim,
        ExitStack() as stack,
    ):
        posts = post_in_order(sim, stack, [body] * 6)
        page = httpx.get(f"{sim.url}/metrics", timeout=10).text
        assert sample(page, "vllm:num_requests_running") == 3 < sim.config.slots
        waiting = sample(page, "vllm:num_requests_waiting")
        assert waiting == 3
        assert sample(page, "vllm:num_requests_waiting_by_reason", reason="capacity") == waiting
        assert sample(page, "vllm:num_requests_waiting_by_reason", reason="deferred") == 0
        usage = sample(page, "vllm:kv_cache_usage_perc")
        assert 3 * prompt / kv <= usage < (1 - KV_WATERMARK)
        assert usage > 0.8
        stats = sim.stats()
        assert (stats["max_running"], stats["max_waiting"], stats["preemptions"]) == (3, 3, 0)
        assert stats["queue_wait"]["count"] == 3  # only the admitted have a queue wait
        for post in posts[:3]:  # the first three leave: the next three fit and start
            post.close()
        wait_for(lambda: state(sim) == (3, 0), "the waiting three to start")
        for post in posts[3:]:
            post.close()
        wait_for(lambda: sim.stats()["in_flight"] == 0, "the aborts")
        assert state(sim) == (0, 0) and sim.stats()["queue_wait"]["count"] == 6


# -- 2. preemption --------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_preemption_counts_and_every_request_still_completes() -> None:
    """Outgrowing a small KV cache preempts (counted alike in metric and stats); all get 200."""
    images = [jpeg(c) for c in ("red", "green", "blue", "yellow")]
    bodies = [chat_body(data_uri(raw)) for raw in images]
    prompt = prompt_tokens(bodies[0])
    words = 400
    kv = 800  # two prompts fit (564), three do not; one request alone peaks at prompt + 400
    assert 2 * prompt <= kv * (1 - KV_WATERMARK) < 3 * prompt and prompt + words < kv
    # Two running requests overflow 800 tokens before the older ends, however they overlap.
    config = SimConfig(slots=1, latency=0.5, caption_words=words, kv_capacity_tokens=kv)
    with SimServer(config) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=60) as client:
            answers: dict[int, httpx.Response] = {}

            async def one(i: int) -> None:
                answers[i] = await client.post("/chat/completions", json=bodies[i])

            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(one, i)
                await await_stats(client, sim, lambda s: s["requests"] == 4, "arrivals")
                # slots=1 queued them; now the KV cache, not the slots, is the limit
                r = await client.post(f"{sim.url}/sim/capacity", json={"slots": 4})
                assert r.status_code == 200
            page = (await client.get(f"{sim.url}/metrics")).text
    for i, raw in enumerate(images):
        r = answers[i]
        assert r.status_code == 200
        body = r.json()
        content = body["choices"][0]["message"]["content"]
        assert f"image {hashlib.sha256(raw).hexdigest()[:12]} 64x48" in content
        assert len(content.split()) == words == body["usage"]["completion_tokens"]
        assert body["choices"][0]["finish_reason"] == "stop"
    stats = sim.stats()
    preemptions = sample(page, "vllm:num_preemptions_total")
    assert preemptions >= 1 and stats["preemptions"] == preemptions
    assert stats["completed"] == 4 and stats["errors"] == {}
    assert (stats["running"], stats["waiting"]) == (0, 0)
    assert 0 < stats["max_kv"] <= 1
    assert sample(page, "vllm:request_success_total", finished_reason="stop") == 4
    assert sample(page, "vllm:generation_tokens_total") == 4 * words  # restarts count once


@pytest.mark.anyio
async def test_engine_preempts_the_newest_and_restarts_it() -> None:
    """Growing KV preempts newer runs, never the oldest; one restart per preemption; all finish."""
    engine = Engine(SimConfig(slots=4, kv_capacity_tokens=1000))
    jobs = [engine.submit(300, 600, 0.3) for _ in range(3)]  # 900 fits; 3 x 900 do not
    assert engine.running == jobs and not engine.waiting
    with anyio.fail_after(20):
        for job in jobs:
            await job.done
    assert engine.stats.preemptions >= 1
    assert engine.stats.preemptions == engine.metrics.preemptions
    assert engine.stats.preemptions == sum(j.runs for j in jobs) - len(jobs)
    assert jobs[0].runs == 1 and jobs[-1].runs >= 2
    assert not engine.running and not engine.waiting and engine.kv_used() == 0
    assert engine.stats.queue_waits.tolist()[0] == 0.0 and len(engine.stats.queue_waits) == 3


@pytest.mark.anyio
async def test_engine_admits_nothing_after_a_preemption_until_a_completion() -> None:
    """After a preemption nothing starts (even what fits) until the next completion."""
    engine = Engine(SimConfig(slots=4, kv_capacity_tokens=1000))
    a = engine.submit(300, 600, 1.0)  # peaks at 900 alone
    b = engine.submit(10, 600, 1.0)  # together they overflow at ~0.58 s
    assert a.started is not None and engine.running == [a, b]
    a_due = a.started + 1.0
    with anyio.fail_after(20):
        while engine.stats.preemptions == 0:
            await asyncio.sleep(0.005)
    late = a.done.done()  # only if the loop was so late that a has completed meanwhile
    assert late or (b.started is None and engine.running == [a])
    c = engine.submit(10, 1, 0.01)  # room for both b and c, and free slots
    assert late or (b.started is None and c.started is None)
    with anyio.fail_after(20):
        await a.done
    assert b.started == a_due  # not at the preemption, when it would have fitted
    assert late or c.started == a_due  # nor at its arrival
    assert engine.stats.preemptions == 1 and (a.runs, b.runs, c.runs) == (1, 2, 1)
    engine.abort(b)
    engine.abort(c)


@pytest.mark.anyio
async def test_engine_smaller_cache_preempts_at_once_and_larger_readmits() -> None:
    """A smaller cache preempts the newest at once, to the queue head; a larger one readmits."""
    engine = Engine(SimConfig(slots=4))
    a, b, c = (engine.submit(300, 10, LONG) for _ in range(3))
    d = engine.submit(1, 1, LONG)
    assert engine.running == [a, b, c, d]
    engine.set_capacity(slots=3)  # fewer slots: nobody is stopped
    assert engine.running == [a, b, c, d]
    engine.set_capacity(kv_tokens=700)
    # the newest first (d, then c) until the rest fit; both back at the head, in their order
    assert engine.running == [a, b] and list(engine.waiting) == [c, d]
    assert c.started is None and not c.admitted.is_set() and engine.stats.preemptions == 2
    assert engine.kv_used() <= 700
    engine.set_capacity(slots=4, kv_tokens=100_000)
    assert engine.running == [a, b, c, d] and c.runs == 2 and c.first_started is not None
    for job in (a, b, c, d):
        engine.abort(job)
    assert not engine.running and engine.kv_used() == 0


# -- 3. aborts ------------------------------------------------------------------------------------
def test_aborted_waiting_and_running_requests_lose_no_slot(
    sim_log: list[logging.LogRecord],
) -> None:
    """Aborted queued/running/streamed requests log no error and lose no slot."""
    logging.getLogger("aiohttp.server").error("probe")  # the capture works
    assert [r.getMessage() for r in sim_log] == ["probe"]
    sim_log.clear()
    long = chat_body(max_tokens=100)  # 100 tokens x 0.1 s: 10 s of service
    config = SimConfig(slots=1, per_token=0.1, caption_words=100)
    with SimServer(config) as sim, ExitStack() as stack:
        a, b, c, d = post_in_order(sim, stack, [long, long, long, {**long, "stream": True}])
        assert state(sim) == (1, 3)
        b.close()  # queued
        wait_for(lambda: state(sim) == (1, 2), "the queued abort")
        a.close()  # running: c starts
        wait_for(lambda: state(sim) == (1, 1), "the running abort")
        c.close()  # running: the streamed d starts
        wait_for(lambda: state(sim) == (1, 0), "d to start")
        d.close()  # running and streaming
        wait_for(lambda: sim.stats()["in_flight"] == 0, "every handler to end")
        assert state(sim) == (0, 0)
        page = httpx.get(f"{sim.url}/metrics", timeout=10).text
        assert sample(page, "vllm:request_success_total", finished_reason="abort") == 4
        sim.reset_stats()
        short = chat_body(max_tokens=2)  # 0.2 s each

        def one(_: int) -> int:
            return httpx.post(
                f"{sim.base_url}/chat/completions", json=short, timeout=30
            ).status_code

        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(one, range(3))) == [200] * 3
        stats = sim.stats()
        assert (stats["completed"], stats["running"], stats["waiting"]) == (3, 0, 0)
        assert stats["max_running"] == 1 and stats["in_flight"] == 0
    bad = [r for r in sim_log if r.levelno >= logging.WARNING]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.anyio
async def test_engine_abort_is_idempotent() -> None:
    """Aborting a queued, a running or a completed job twice is harmless and frees the slot."""
    engine = Engine(SimConfig(slots=1))
    a, b, c = (engine.submit(10, 5, 0.05) for _ in range(3))
    assert engine.running == [a] and list(engine.waiting) == [b, c]
    engine.abort(b)
    engine.abort(b)
    assert list(engine.waiting) == [c]
    engine.abort(a)
    engine.abort(a)
    assert engine.running == [c] and not engine.waiting
    with anyio.fail_after(10):
        await c.done
    engine.abort(c)
    engine.abort(c)
    assert not engine.running and not engine.waiting
    d = engine.submit(10, 5, 0.01)
    assert engine.running == [d]
    with anyio.fail_after(10):
        await d.done
    snap = engine.snapshot()
    assert (snap["running"], snap["waiting"]) == (0, 0) and engine.kv_used() == 0


@pytest.mark.anyio
async def test_engine_hands_the_slot_over_at_the_due_time() -> None:
    """A slot passes on at the holder's due time (or abort), never before the next's arrival."""
    loop = asyncio.get_running_loop()
    engine = Engine(SimConfig(slots=1))
    a = engine.submit(1, 1, 0.01)
    b = engine.submit(1, 1, 0.01)
    assert a.started is not None and b.started is None
    due = a.started + 0.01
    time.sleep(0.05)  # the server is busy past the holder's due time
    with anyio.fail_after(10):
        await b.admitted.wait()
    assert b.started == due  # not the late completion time
    assert engine.stats.queue_waits.tolist() == [0.0, due - b.arrived]
    with anyio.fail_after(10):
        await b.done
    await asyncio.sleep(0.02)
    c = engine.submit(1, 1, LONG)  # arrives after every due time
    assert c.started == c.arrived
    d = engine.submit(1, 1, 0.01)
    before = loop.time()
    engine.abort(c)  # the holder goes away long before its due time
    assert d.started is not None and before <= d.started <= loop.time()
    engine.abort(d)


# -- 4. capacity changes --------------------------------------------------------------------------
def test_capacity_endpoint_raises_and_lowers_the_running_cap() -> None:
    """POST /sim/capacity: more slots admit at once; fewer let the running end, then cap."""
    body = chat_body()
    with (
        SimServer(SimConfig(slots=4, latency=LONG)) as sim,
        ExitStack() as stack,
        httpx.Client(timeout=10) as client,
    ):
        first = post_in_order(sim, stack, [body] * 6)
        assert state(sim) == (4, 2)
        r = client.post(f"{sim.url}/sim/capacity", json={"slots": 6})
        assert (r.status_code, r.json()) == (200, {"ok": True})
        assert state(sim) == (6, 0)  # admitted before the answer
        assert client.post(f"{sim.url}/sim/capacity", json={"slots": 2}).status_code == 200
        assert state(sim) == (6, 0)  # nobody is stopped
        later = post_in_order(sim, stack, [body] * 2)
        assert state(sim) == (6, 2)
        for post in first[:5]:
            post.close()
        wait_for(lambda: state(sim) == (2, 1), "the cap of 2 to show")
        client.post(f"{sim.url}/sim/reset")
        first[5].close()
        wait_for(lambda: state(sim) == (2, 0), "the last waiter to start")
        assert sim.stats()["max_running"] == 2
        assert client.post(f"{sim.url}/sim/capacity", json={"slots": 3}).status_code == 200
        client.post(f"{sim.url}/sim/reset")
        post_in_order(sim, stack, [body] * 3)
        assert state(sim) == (3, 2)
        assert sim.stats()["max_running"] == 3
        for post in later:
            post.close()


def test_capacity_endpoint_rejects_bad_bodies() -> None:
    """POST /sim/capacity: 400 unless positive integers in a JSON object; GET is 405."""
    with SimServer(SimConfig(slots=2)) as sim, httpx.Client(timeout=10) as client:
        url = f"{sim.url}/sim/capacity"
        bad: list[bytes] = [
            b'{"slots": 0}',
            b'{"slots": -3}',
            b'{"slots": "4"}',
            b'{"slots": 2.5}',
            b'{"kv_tokens": 0}',
            b'{"slots": 2, "kv_tokens": "many"}',
            b"{not json",
            b"[1, 2]",
            b"null",
            b'"slots"',
        ]
        for raw in bad:
            r = client.post(url, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400, raw
            assert r.json()["detail"].startswith("bad capacity request"), raw
        assert client.get(url).status_code == 405
        assert client.post(url, json={"kv_tokens": 5000}).status_code == 200
        assert client.post(url, json={}).status_code == 200


def test_configured_capacity_changes_take_effect_at_their_time() -> None:
    """capacity_changes raise the slots at 1.0 s and shrink the cache at 2.0 s, not before."""
    body = chat_body(data_uri(jpeg("red")))
    prompt = prompt_tokens(body)
    changes = ((1.0, 3, None), (2.0, None, int(2.5 * prompt)))
    before = time.monotonic()
    with (
        SimServer(SimConfig(slots=1, latency=LONG, capacity_changes=changes)) as sim,
        ExitStack() as stack,
    ):
        post_in_order(sim, stack, [body] * 3)
        early = sim.stats()
        asked = time.monotonic() - before  # all three had arrived by then
        # The server started after `before`: a snapshot done within 1.0 s predates both changes.
        assert (early["running"], early["waiting"]) == (1, 2) or asked >= 1.0
        # 1 slot: (1, 2); 3 slots: (3, 0); then a cache of 2.5 prompts: (2, 1) for good.
        if asked < 2.0:  # (else the arrivals straddled the changes; only the end state is sure)
            wait_for(lambda: sim.stats()["max_running"] == 3, "the slots to be raised")
            assert time.monotonic() - before >= 1.0
        wait_for(lambda: state(sim) == (2, 1), "the cache to shrink")
        assert time.monotonic() - before >= 2.0
        stats = sim.stats()
        # all three ran before the cache shrank: the newest was preempted, back to the queue
        assert (stats["max_running"], stats["preemptions"]) == (3, 1) or asked >= 2.0


# -- 5. the gateway -------------------------------------------------------------------------------
def test_gateway_rate_limits_with_retry_after() -> None:
    """Gateway 1/s, burst 3: 7 back-to-back give 3 x 200 then ~4 x 429 with Retry-After."""
    rate, burst, extra = 1.0, 3, 4
    with (
        SimServer(SimConfig(gateway_rate=rate, gateway_burst=burst)) as sim,
        httpx.Client(base_url=sim.base_url, timeout=10) as client,
    ):
        client.get(f"{sim.url}/health")  # connect before timing
        start = time.monotonic()
        answers = [client.post("/chat/completions", json=chat_body()) for _ in range(burst + extra)]
        elapsed = time.monotonic() - start
        codes = [r.status_code for r in answers]
        assert codes[:burst] == [200] * burst
        limited = [r for r in answers if r.status_code == 429]
        assert set(codes) <= {200, 429}
        # at most rate * elapsed tokens came back during the burst
        assert extra - math.floor(rate * elapsed) <= len(limited) <= extra
        assert limited or rate * elapsed >= extra
        for r in limited:
            assert re.fullmatch(r"[1-9][0-9]*", r.headers["retry-after"])
            error = r.json()["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == 429
            assert "Rate limit" in error["message"] and "1 requests per second" in error["message"]
        stats = sim.stats()
        assert stats["errors"] == {"429": len(limited)}
        assert stats["requests"] == burst + extra and stats["completed"] == codes.count(200)
        time.sleep(int(limited[-1].headers["retry-after"]) if limited else 1 / rate)
        assert client.post("/chat/completions", json=chat_body()).status_code == 200


def test_token_bucket_grants_the_burst_then_refills_at_the_rate() -> None:
    """TokenBucket (injected clock): full burst, then the wait for a token; refills at rate."""
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(100.0) for _ in range(3)] == [None, None, None]
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.25) == pytest.approx(0.25)  # half a token came back
    assert bucket.take(100.5) is None  # a whole token
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert [bucket.take(1000.0) for _ in range(4)][:3] == [None, None, None]  # capped at burst
    assert bucket.take(1000.0) is not None
    assert [retry_after_header(w) for w in (0.0, 0.01, 1.0, 1.2)] == ["1", "1", "1", "2"]
    error = rate_limited(2.0, 1.2)
    assert error.status == 429 and json.loads(error.body())["error"]["type"] == "rate_limit_error"
    # an explicit burst is used as given; the default is at least one token
    assert SimConfig(gateway_rate=2, gateway_burst=5).burst == 5
    assert SimConfig(gateway_rate=0.2).burst == 1


# -- 6. /metrics dialects -------------------------------------------------------------------------
DIALECT_LINES = {
    "vllm": (
        "vLLM",
        'vllm:num_requests_running{engine="0",model_name="gemma3-27b"} 1.0',
        'vllm:num_requests_waiting{engine="0",model_name="gemma3-27b"} 2.0',
    ),
    "sglang": (
        "SGLang",
        'sglang:num_running_reqs{model_name="gemma3-27b"} 1.0',
        'sglang:num_queue_reqs{model_name="gemma3-27b"} 2.0',
    ),
    "llamacpp": (
        "llama.cpp",
        "llamacpp:requests_processing 1.0",
        "llamacpp:requests_deferred 2.0",
    ),
}


@pytest.mark.parametrize("flavour", sorted(DIALECT_LINES))
def test_metrics_dialects_read_back_by_the_client(flavour: str) -> None:
    """Each --metrics dialect has its names/labels; server_load reads back running/waiting."""
    server, running_line, waiting_line = DIALECT_LINES[flavour]
    with (
        SimServer(SimConfig(slots=1, latency=LONG, metrics=flavour)) as sim,
        ExitStack() as stack,
    ):
        post_in_order(sim, stack, [chat_body()] * 3)
        r = httpx.get(f"{sim.url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "text/plain; version=0.0.4"
    )
    lines = r.text.splitlines()
    assert running_line in lines and waiting_line in lines
    others = {"vllm:", "sglang:", "llamacpp:"} - {f"{flavour}:"}
    assert not any(line.startswith(tuple(others)) for line in lines)
    load = server_load(r.text, MODEL)
    assert load is not None
    assert (load.running, load.waiting, load.server) == (1, 2, server)
    if flavour == "llamacpp":
        assert load.kv_cache is None
    else:
        assert load.kv_cache is not None and 0 < load.kv_cache < 0.01
    if flavour == "sglang":
        assert f'sglang:token_usage{{model_name="{MODEL}"}} {load.kv_cache!r}' in lines


def test_metrics_none_is_404() -> None:
    """--metrics none: /metrics is 404 while the API still serves."""
    with SimServer(SimConfig(metrics="none")) as sim, httpx.Client(timeout=10) as client:
        assert client.get(f"{sim.url}/metrics").status_code == 404
        assert client.post(f"{sim.base_url}/chat/completions", json=chat_body()).status_code == 200


# -- 7. metrics delay -----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_metrics_delay_answers_late_with_the_state_when_asked() -> None:
    """metrics_delay: /metrics answers >= 0.5 s late with the gauges as they were when asked."""
    delay, service = 0.5, 0.3
    with SimServer(SimConfig(slots=2, latency=service, metrics_delay=delay)) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:
            codes: list[int] = []

            async def one() -> None:
                codes.append((await client.post("/chat/completions", json=chat_body())).status_code)

            async with anyio.create_task_group() as tg:
                first_sent = time.monotonic()
                tg.start_soon(one)
                tg.start_soon(one)
                await await_stats(client, sim, lambda s: s["requests"] == 2, "both to arrive")
                # both run from their arrival (after first_sent) for `service` seconds
                asked = time.monotonic()
                stale = await client.get(f"{sim.url}/metrics")
                answered = time.monotonic()
                after = await astats(client, sim)
            assert codes == [200, 200]
            assert answered - asked >= delay - 1e-3
            # The page was made at or before answered - delay; both requests run at least
            # until first_sent + service, so a page made before then must show both.
            made_by = answered - delay
            running = sample(stale.text, "vllm:num_requests_running")
            assert running == 2 or made_by >= first_sent + service
            # They were due before the answer (delay > service): gone by the time it came.
            assert (after["running"], after["completed"]) == (0, 2)
            fresh = await client.get(f"{sim.url}/metrics")
            assert sample(fresh.text, "vllm:num_requests_running") == 0


# -- 8. queue-wait stats --------------------------------------------------------------------------
@pytest.mark.anyio
async def test_queue_wait_stats_follow_the_fifo() -> None:
    """slots=1, 4 queued: queue_wait count 4, p50 ~ 2L and max ~ 3L within the arrival spread."""
    service, n = 0.3, 4
    with SimServer(SimConfig(slots=1, latency=service)) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:
            codes: list[int] = []

            async def one() -> None:
                codes.append((await client.post("/chat/completions", json=chat_body())).status_code)

            async with anyio.create_task_group() as tg:
                start = time.monotonic()
                sent: list[int] = []
                for i in range(n):
                    tg.start_soon(one)
                    sent.append(i)
                    await await_stats(client, sim, lambda s: s["requests"] == len(sent), "arrival")
                spread = time.monotonic() - start  # every arrival lies within this window
            stats = await astats(client, sim)
    assert codes == [200] * n
    waits = stats["queue_wait"]
    assert waits["count"] == n
    eps = 1e-6
    assert 2 * service - spread <= waits["p50"] <= 2 * service + eps
    assert 3 * service - spread <= waits["max"] <= 3 * service + eps
    assert waits["p90"] == waits["max"]
    assert stats["max_running"] == 1
    assert stats["max_waiting"] >= 1 or spread >= service  # (else each came after the last)


# -- 9. the command line --------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caption sim")
    add_arguments(parser)
    return parser


def test_cli_parses_the_new_flags() -> None:
    """The new flags (--kv-tokens ... --capacity-change 20:32, 20::4000) reach SimConfig."""
    args = _parser().parse_args(
        [
            *("--kv-tokens", "5000", "--metrics", "sglang", "--metrics-delay", "0.25"),
            *("--gateway-rate", "7.5", "--gateway-burst", "4"),
            *("--capacity-change", "20:32", "--capacity-change", "20::4000"),
            *("--capacity-change", "30.5:8:1200"),
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.kv_capacity_tokens, cfg.metrics, cfg.metrics_delay) == (5000, "sglang", 0.25)
    assert (cfg.gateway_rate, cfg.gateway_burst, cfg.burst) == (7.5, 4, 4)
    assert cfg.capacity_changes == ((20.0, 32, None), (20.0, None, 4000), (30.5, 8, 1200))
    default = config_from_args(_parser().parse_args([]))
    assert (default.metrics, default.metrics_delay, default.gateway_rate) == ("vllm", 0.0, 0.0)
    assert default.capacity_changes == () and default.kv_capacity_tokens == 1_000_000


@pytest.mark.parametrize("bad", ["20", "x:4", "20:four", "20:1.5", ":4", "20:4:5:6", "20:4:x"])
def test_cli_rejects_a_malformed_capacity_change(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed --capacity-change is an argparse error naming the flag and the form."""
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args([f"--capacity-change={bad}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --capacity-change" in err and "AT:SLOTS[:KV_TOKENS]" in err
    assert repr(bad) in err


def test_cli_rejects_bad_values_of_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --metrics is a usage error; impossible values make `caption sim` exit 2."""
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--metrics", "prometheus"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    for argv in (["--capacity-change", "20:0"], ["--gateway-rate", "-1"], ["--kv-tokens", "0"]):
        assert run_from_args(_parser().parse_args(["--port", "0", *argv])) == 2
        err = capsys.readouterr().err
        assert err.startswith("caption sim: ") and "serving" not in err


@pytest.mark.anyio
async def test_engine_aborting_every_running_job_after_a_preemption_admits_the_queue() -> None:
    """After a preemption nothing new is admitted until a completion, unless nothing is left
    running: aborting every running request lets the queue start (it hung before)."""
    engine = Engine(SimConfig(slots=4, kv_capacity_tokens=1000))
    a, b, c = (engine.submit(300, 400, 60.0) for _ in range(3))
    engine.set_capacity(kv_tokens=700)  # a smaller cache: c, then b, are preempted
    assert engine.stats.preemptions >= 1 and engine.waiting
    for job in list(engine.running):
        engine.abort(job)
    assert engine.running, "the queue was not admitted after the running requests went away"
    for job in (a, b, c):
        engine.abort(job)


@pytest.mark.anyio
async def test_engine_one_request_outgrowing_the_cache_does_not_spin() -> None:
    """A single request bigger than the whole cache runs (nothing to preempt) and arms no
    preemption timer: it used to re-arm one at once, in a busy loop."""
    engine = Engine(SimConfig(kv_capacity_tokens=1000))
    job = engine.submit(300, 2000, 0.3)
    await asyncio.sleep(0.05)
    assert engine.running == [job] and engine._overflow is None
    with anyio.fail_after(10):
        await job.done
    assert engine.stats.preemptions == 0

"""Tests of pipeline.sim, the vLLM-compatible server simulator, over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from pipeline.sim import FaultConfig, SimConfig, SimServer
from pipeline.sim.imagesize import image_size

MODEL = "gemma3-27b"
JSON = "application/json"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def jpeg(color: str, size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def data_uri(raw: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def chat_body(
    uri: str | None = None, text: str = "Describe this image.", **extra: Any
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if uri is not None:
        content.append({"type": "image_url", "image_url": {"url": uri}})
    messages = [
        {"role": "system", "content": "You write captions."},
        {"role": "user", "content": content},
    ]
    return {"model": MODEL, "messages": messages, "max_tokens": 16, **extra}


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(max_model_len=2048)) as server:
        yield server


@pytest.fixture
def client(sim: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=5) as c:
        yield c


def test_success_shape_and_caption_depends_on_image(sim: SimServer, client: httpx.Client) -> None:
    """A 200 answer has vLLM's shape and names sha256[:12] and size of its own image."""
    images = [jpeg("red"), jpeg("blue", (64, 48))]
    for raw in images:
        r = client.post("/chat/completions", json=chat_body(data_uri(raw)))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
        assert body["model"] == MODEL and isinstance(body["created"], int)
        assert body["system_fingerprint"].startswith("vllm-")
        choice = body["choices"][0]
        assert choice["index"] == 0 and choice["finish_reason"] == "length"
        assert choice["message"]["role"] == "assistant" and choice["stop_reason"] is None
        content = choice["message"]["content"]
        width, height = Image.open(io.BytesIO(raw)).size
        assert "simulated" in content
        assert f"image {hashlib.sha256(raw).hexdigest()[:12]} {width}x{height}" in content
        usage = body["usage"]
        assert usage["completion_tokens"] == 16 == len(content.split())
        assert usage["total_tokens"] == usage["prompt_tokens"] + 16
        assert 270 < usage["prompt_tokens"] < 300
    stats = sim.stats()
    assert stats["completed"] == 2 and stats["requests"] == 2
    assert stats["images"] == {hashlib.sha256(raw).hexdigest()[:12]: 1 for raw in images}


def test_no_image_and_stop_reason(client: httpx.Client) -> None:
    """Without an image the caption says "no image"; a short caption ends with "stop"."""
    r = client.post("/chat/completions", json=chat_body(None, max_tokens=100))
    choice = r.json()["choices"][0]
    assert "no image" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] == 24


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP"])
def test_image_size_reads_headers(fmt: str) -> None:
    """The fast header reader gives the same size as Pillow and rejects non-images."""
    buf = io.BytesIO()
    Image.new("RGB", (123, 45), "red").save(buf, fmt)
    assert image_size(buf.getvalue()) == (123, 45)
    with pytest.raises(ValueError):
        image_size(b"\xff\xd8\xff" + b"garbage" * 5)


def test_streaming_shape(client: httpx.Client) -> None:
    """Streaming sends vLLM's SSE: role delta, content deltas, finish, usage chunk, [DONE]."""
    uri = data_uri(jpeg("green"))
    plain = client.post("/chat/completions", json=chat_body(uri)).json()
    body = chat_body(uri, stream=True, stream_options={"include_usage": True})
    r = client.post("/chat/completions", json=body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content_chunks = chunks[1:-1]
    assert [c["choices"][0]["finish_reason"] for c in content_chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in content_chunks[:-1])
    text = "".join(c["choices"][0]["delta"]["content"] for c in content_chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == []
    usage = plain["usage"]
    assert chunks[-1]["usage"] == {
        "prompt_tokens": usage["prompt_tokens"],
        "total_tokens": usage["total_tokens"],
        "completion_tokens": usage["completion_tokens"],
    }


def _err(message: str, param: str | None = None, kind: str = "BadRequestError") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": 400}}


GOOD = data_uri(jpeg("white"))
ERROR_CASES: list[tuple[str, bytes, int, dict[str, Any]]] = [
    (
        "malformed-json",
        b"{bad json",
        400,
        _err(
            "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.1', 'msg': 'JSON decode"
            " error', 'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting property name "
            "enclosed in double quotes'}}",
            "body.1",
            "Bad Request",
        ),
    ),
    (
        "messages-missing",
        json.dumps({"model": MODEL}).encode(),
        400,
        _err(
            "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field "
            "required', 'input': '<dict of 1 items>'}",
            "body.messages",
            "Bad Request",
        ),
    ),
    (
        "unknown-model",
        json.dumps(chat_body(GOOD, model="gpt-4o")).encode(),
        404,
        {
            "error": {
                "message": "The model `gpt-4o` does not exist. Valid aliases: gemma3-27b.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        },
    ),
    (
        "max-tokens-too-big",
        json.dumps(chat_body(GOOD, max_tokens=4096)).encode(),
        400,
        _err(
            "max_tokens=4096 cannot be greater than max_model_len=2048. Please request fewer "
            "output tokens. (parameter=max_tokens, value=4096)",
            "max_tokens",
        ),
    ),
    (
        "max-completion-tokens-too-big",
        json.dumps({**chat_body(GOOD), "max_tokens": None, "max_completion_tokens": 4096}).encode(),
        400,
        _err(
            "max_completion_tokens=4096 cannot be greater than max_model_len=2048. Please request"
            " fewer output tokens. (parameter=max_completion_tokens, value=4096)",
            "max_completion_tokens",
        ),
    ),
    (
        "max-tokens-zero",
        json.dumps(chat_body(GOOD, max_tokens=0)).encode(),
        400,
        _err("max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)", "max_tokens"),
    ),
    (
        "negative-temperature",
        json.dumps(chat_body(GOOD, temperature=-1)).encode(),
        400,
        _err(
            "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)",
            "temperature",
        ),
    ),
    (  # 1 BOS + 3 gen prompt + (4 + 5) system + (4 + 1900) user text + 260 image = 2177
        "prompt-too-long",
        json.dumps(chat_body(GOOD, text="x" * 4 * 1900)).encode(),
        400,
        _err(
            "This model's maximum context length is 2048 tokens. However, your prompt contains at"
            " least 2177 input tokens, which exceeds this limit even without any output tokens. "
            "Please reduce the length of the input prompt. (parameter=input_tokens, value=2177)",
            "input_tokens",
        ),
    ),
    (
        "broken-base64",
        json.dumps(chat_body("data:image/jpeg;base64,@@not-base64@@")).encode(),
        400,
        _err("Non-base64 digit found"),
    ),
    (
        "not-an-image",
        json.dumps(chat_body(data_uri(b"definitely not an image" * 10))).encode(),
        400,
        _err("Failed to load image: cannot identify image file <_io.BytesIO object>"),
    ),
    (
        "roles-not-alternating",
        json.dumps(
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                ],
            }
        ).encode(),
        400,
        _err("Conversation roles must alternate user/assistant/user/assistant/..."),
    ),
]


@pytest.mark.parametrize(
    ("raw", "status", "expected"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_error_bodies(
    sim: SimServer, client: httpx.Client, raw: bytes, status: int, expected: dict[str, Any]
) -> None:
    """Each invalid request gets vLLM 0.32.0's exact status and error body."""
    r = client.post("/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json() == expected
    assert sim.stats()["errors"] == {str(status): 1}


def test_context_overflow_caps_generation(client: httpx.Client) -> None:
    """prompt + max_tokens > context but max_tokens <= context: 200, capped at the context."""
    body = chat_body(GOOD, text="y" * 4 * 1760, max_tokens=2000)
    r = client.post("/chat/completions", json=body)
    assert r.status_code == 200
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 2048
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_models_health_version(sim: SimServer, client: httpx.Client) -> None:
    """/v1/models has vLLM's shape with max_model_len; /health is 200 empty; /version works."""
    models = client.get("/models").json()
    assert models["object"] == "list"
    card = models["data"][0]
    assert card["id"] == MODEL and card["owned_by"] == "vllm" and card["max_model_len"] == 2048
    health = client.get(f"{sim.url}/health")
    assert health.status_code == 200 and health.content == b""
    assert client.get(f"{sim.url}/version").json() == {"version": "0.32.0-sim"}
    assert client.get(f"{sim.url}/nope").status_code == 404


def _gauge(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


@pytest.mark.anyio
async def test_metrics_gauges_and_slot_queue() -> None:
    """With slots=2, 6 concurrent requests run 2 at a time (3 rounds); /metrics shows it."""
    config = SimConfig(slots=2, latency=0.2)
    with SimServer(config) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=10) as client:
            results: list[int] = []

            async def one(i: int) -> None:
                r = await client.post("/chat/completions", json=chat_body(data_uri(jpeg("red"))))
                results.append(r.status_code)

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(one, i)
                await anyio.sleep(0.1)
                page = (await client.get(f"{sim.url}/metrics")).text
            elapsed = time.perf_counter() - start
    assert results == [200] * 6
    assert 0.55 < elapsed < 1.2
    assert _gauge(page, "vllm:num_requests_running") == 2
    assert _gauge(page, "vllm:num_requests_waiting") == 4
    assert 0 < _gauge(page, "vllm:kv_cache_usage_perc") < 1
    for name in ("# TYPE vllm:request_success_total counter", 'engine="0",model_name="gemma3-27b"'):
        assert name in page
    stats = sim.stats()
    assert stats["max_running"] == 2 and stats["max_waiting"] == 4 and stats["completed"] == 6


@pytest.mark.anyio
async def test_disconnected_waiter_leaves_queue() -> None:
    """A client that gives up while queued leaves the FIFO queue at once."""
    with SimServer(SimConfig(slots=1, latency=0.6)) as sim:
        async with (
            httpx.AsyncClient(base_url=sim.base_url, timeout=5) as client,
            anyio.create_task_group() as tg,
        ):

            async def first() -> None:
                await client.post("/chat/completions", json=chat_body())

            tg.start_soon(first)
            with anyio.fail_after(5):  # the first holds the only slot (however busy the box)
                while sim.stats()["in_flight"] < 1:
                    await anyio.sleep(0.01)
            with pytest.raises(httpx.ReadTimeout):  # only the wait for the answer is short
                await client.post("/chat/completions", json=chat_body(),
                                  timeout=httpx.Timeout(5, read=0.2))  # fmt: skip
            await anyio.sleep(0.05)
            page = (await client.get(f"{sim.url}/metrics")).text
            assert _gauge(page, "vllm:num_requests_waiting") == 0
            assert sim.stats()["in_flight"] == 1


FAULT_CASES = ["error_429", "error_500", "error_503", "reset", "hang", "malformed", "empty"]


@pytest.mark.parametrize("kind", FAULT_CASES)
def test_fault_seen_by_client(sim: SimServer, kind: str) -> None:
    """Each injected fault kind is observed by an HTTP client as intended."""
    field = "empty_choices" if kind == "empty" else kind
    sim.set_faults(FaultConfig.from_dict({field: 1.0, "retry_after": 2.5, "hang_seconds": 30}))
    with httpx.Client(base_url=sim.base_url, timeout=0.5) as client:
        assert client.get(f"{sim.url}/health").status_code == 200  # faults spare other routes

        def post() -> httpx.Response:
            return client.post("/chat/completions", json=chat_body(GOOD))

        if kind in ("error_429", "error_503"):
            r = post()
            assert r.status_code == int(kind[-3:]) and r.headers["retry-after"] == "2.5"
            assert r.json()["error"]["code"] == r.status_code
        elif kind == "error_500":
            r = post()
            assert r.status_code == 500 and "retry-after" not in r.headers
        elif kind == "reset":
            with pytest.raises(httpx.TransportError):
                post()
        elif kind == "hang":
            with pytest.raises(httpx.ReadTimeout):
                post()
        elif kind == "malformed":
            r = post()
            assert r.status_code == 200
            with pytest.raises(json.JSONDecodeError):
                r.json()
        else:
            r = post()
            assert r.status_code == 200 and r.json()["choices"] == []
    assert sim.stats()["faults"] == {field: 1}
    assert sim.stats()["completed"] == 0


def test_fault_probability_is_seeded(sim: SimServer) -> None:
    """A 50% fault rate hits about half the requests; the rest succeed."""
    sim.set_faults(FaultConfig(error_503=0.5))
    with httpx.Client(base_url=sim.base_url, timeout=5) as client:
        codes = [client.post("/chat/completions", json=chat_body()).status_code for _ in range(200)]
    assert 60 < codes.count(503) < 140 and codes.count(200) == 200 - codes.count(503)


def test_down_window_refuses_then_recovers(sim: SimServer) -> None:
    """During a down window connections are refused; afterwards the same port answers."""
    with httpx.Client(base_url=sim.base_url, timeout=2) as client:
        assert client.get(f"{sim.url}/health").status_code == 200
        sim.go_down(0.5)
        with pytest.raises(httpx.ConnectError):
            client.get(f"{sim.url}/health")
        time.sleep(0.7)
        assert client.post("/chat/completions", json=chat_body()).status_code == 200


def test_configured_down_window_and_control_endpoints() -> None:
    """FaultConfig.down windows count from start; /sim/ endpoints control a running server."""
    faults = FaultConfig(down=((0.3, 0.3),))
    with SimServer(SimConfig(faults=faults)) as sim, httpx.Client(timeout=2) as client:
        assert client.get(f"{sim.url}/health").status_code == 200
        time.sleep(0.4)
        with pytest.raises(httpx.ConnectError):
            client.get(f"{sim.url}/health")
        time.sleep(0.35)
        r = client.post(f"{sim.url}/sim/faults", json={"error_429": 1.0, "retry_after": 1})
        assert r.json() == {"ok": True}
        assert client.post(f"{sim.base_url}/chat/completions", json=chat_body()).status_code == 429
        assert client.get(f"{sim.url}/sim/stats").json()["errors"] == {"429": 1}
        assert client.post(f"{sim.url}/sim/reset").status_code == 200
        assert client.get(f"{sim.url}/sim/stats").json()["requests"] == 0
        assert client.post(f"{sim.url}/sim/faults", json={"bogus": 1}).status_code == 400
        assert client.post(f"{sim.url}/sim/down", json={"seconds": 0.4}).status_code == 200
        time.sleep(0.1)
        with pytest.raises(httpx.ConnectError):
            client.get(f"{sim.url}/health")


def test_raw_keepalive_pipelining_and_connection_close(sim: SimServer) -> None:
    """Two pipelined requests are answered in order; `Connection: close` closes the socket."""
    with socket.create_connection(("127.0.0.1", sim.port), timeout=2) as sock:
        sock.sendall(
            b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b"0.32.0-sim") < data.rindex(b"HTTP/1.1 200 OK")
    assert b"connection: close" in data.lower()


def test_http_details_404_405_expect_continue_and_big_bodies(
    sim: SimServer, client: httpx.Client
) -> None:
    """404/405 are vLLM's JSON; `server: vllm-sim`; Expect: 100-continue is honoured; a
    body over aiohttp's default 1 MiB is read (up to 64 MiB)."""
    for method, path, status, detail in (
        ("GET", "/nope", 404, "Not Found"),
        ("GET", "/v1/chat/completions", 405, "Method Not Allowed"),
        ("HEAD", "/health", 405, "Method Not Allowed"),
        ("POST", "/health", 405, "Method Not Allowed"),
    ):
        r = client.request(method, f"{sim.url}{path}")
        assert r.status_code == status
        assert r.headers["content-type"] == "application/json"
        assert r.headers["server"] == "vllm-sim"
        if method != "HEAD":
            assert r.content == f'{{"detail":"{detail}"}}'.encode()
    body = json.dumps(chat_body(GOOD)).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and b"simulated" in data
    padded = body + b" " * (3 << 20)  # JSON allows trailing whitespace
    r = client.post("/chat/completions", content=padded, headers={"content-type": JSON})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16


@pytest.mark.slow
def test_cli_subprocess(tmp_path: Path) -> None:
    """`python -m pipeline.sim --port 0 --port-file F` serves, prints its URL, exits 0 on TERM."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.sim", "--port", "0", "--port-file", str(port_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = int(port_file.read_text())
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat_body(GOOD))
        assert r.status_code == 200
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.startswith(f"caption sim: serving {MODEL} on http://127.0.0.1:{port}/v1 (slots=64")

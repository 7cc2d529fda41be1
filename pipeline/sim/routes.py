"""HTTP endpoints of the simulator: vLLM's API plus the /sim/ control endpoints.

Faults apply only to POST /v1/chat/completions. One fault kind is drawn per request (see
`FaultConfig.pick`). 429, 503, reset and hang act at once, before validation; 500,
malformed and empty_choices are answered after the request has held a slot for its service
time. A valid structured-output request that drew none of them may then draw a schema fault
(`SimApp.draw_schema_fault`): a 200 whose answer is not JSON or breaks the schema, counted in
`stats["faults"]["schema"]` and, by kind applied, `stats["schema_faults"]`.
`stats["errors"]` counts every non-200 answer to a chat request, injected or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web

from . import errors, gateway, metrics, responses
from .chat import ChatRequest, parse_chat
from .config import FaultConfig
from .engine import Job
from .errors import ApiError

if TYPE_CHECKING:
    from .app import SimApp

VERSION = b'{"version":"0.32.0-sim"}'
_JSON_OK = b'{"ok":true}'
JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"
SERVER = "vllm-sim"


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def answer(
    status: int, body: bytes, content_type: str = JSON, extra: dict[str, str] | None = None
) -> web.Response:
    """A complete answer with exactly these content type and body bytes."""
    headers = {"Content-Type": content_type, "Server": SERVER}
    if extra:
        headers.update(extra)
    return web.Response(status=status, body=body, headers=headers)


def _drop(request: web.Request, *, rst: bool) -> NoReturn:
    """Drop the connection now, without an answer; with `rst` the peer gets a TCP reset. The
    handler then ends as it does when the client goes away (cancelled: aiohttp logs nothing)."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if rst and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    raise asyncio.CancelledError


async def not_found(app: SimApp, request: web.Request) -> web.StreamResponse:
    return answer(404, b'{"detail":"Not Found"}')


async def method_not_allowed(app: SimApp, request: web.Request) -> web.StreamResponse:
    return answer(405, b'{"detail":"Method Not Allowed"}')


def unauthorized() -> web.Response:
    """vLLM's answer to a request without the right API key (its AuthenticationMiddleware:
    Starlette's JSONResponse, so compact JSON and no ``{"error": {...}}`` object)."""
    return answer(401, b'{"error":"Unauthorized"}')


def too_large() -> web.Response:
    """A request body over the limit (`client_max_size`): answered, then the connection closes."""
    resp = answer(413, b'{"detail":"request body too large"}')
    resp.force_close()
    return resp


async def health(app: SimApp, request: web.Request) -> web.StreamResponse:
    return answer(200, b"")


async def version(app: SimApp, request: web.Request) -> web.StreamResponse:
    return answer(200, VERSION)


async def models(app: SimApp, request: web.Request) -> web.StreamResponse:
    cfg = app.config
    permission = {
        "id": f"modelperm-{app.started_wall:x}",
        "object": "model_permission",
        "created": app.started_wall,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": cfg.model,
        "object": "model",
        "created": app.started_wall,
        "owned_by": "vllm",
        "root": f"/sim/{cfg.model}",
        "parent": None,
        "max_model_len": cfg.max_model_len,
        "permission": [permission],
    }
    return answer(200, _json({"object": "list", "data": [card]}))


async def metrics_page(app: SimApp, request: web.Request) -> web.StreamResponse:
    """The gauges as they are when asked; a busy API server (``metrics_delay``) hands them
    over late, so the client reads a stale picture."""
    cfg = app.config
    if cfg.metrics == "none":
        return answer(404, b'{"detail":"Not Found"}')
    body = metrics.render(app.engine, cfg.model, cfg.metrics)
    if cfg.metrics_delay > 0:
        await asyncio.sleep(cfg.metrics_delay)
    return answer(200, body, metrics.CONTENT_TYPE)


async def sim_stats(app: SimApp, request: web.Request) -> web.StreamResponse:
    return answer(200, _json(app.engine.snapshot()))


async def sim_reset(app: SimApp, request: web.Request) -> web.StreamResponse:
    app.engine.reset_stats()
    return answer(200, _JSON_OK)


async def sim_faults(app: SimApp, request: web.Request) -> web.StreamResponse:
    try:
        faults = FaultConfig.from_dict(json.loads(await request.read() or b"{}"))
    except (ValueError, TypeError, AttributeError) as exc:
        return answer(400, _json({"detail": str(exc)}))
    app.set_faults(faults)
    return answer(200, _JSON_OK)


async def sim_down(app: SimApp, request: web.Request) -> web.StreamResponse:
    try:
        seconds = float(json.loads(await request.read() or b"{}")["seconds"])
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
    except (ValueError, TypeError, KeyError) as exc:
        return answer(400, _json({"detail": f"bad down request: {exc}"}))
    resp = answer(200, _JSON_OK)
    resp.force_close()
    # Written now, so that it leaves before go_down drops every connection, this one too.
    with contextlib.suppress(ConnectionError):
        await resp.prepare(request)
        await resp.write_eof()
    asyncio.get_running_loop().call_soon(app.go_down, seconds)
    return resp


async def sim_capacity(app: SimApp, request: web.Request) -> web.StreamResponse:
    """``{"slots": N, "kv_tokens": M}`` (either may be left out): change capacity now."""
    try:
        data = json.loads(await request.read() or b"{}")
        slots, kv = data.get("slots"), data.get("kv_tokens")
        for value in (slots, kv):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            if value is not None and not ok:
                raise ValueError(f"{value!r} is not a positive integer")
    except (ValueError, AttributeError) as exc:
        return answer(400, _json({"detail": f"bad capacity request: {exc}"}))
    app.engine.set_capacity(slots, kv)
    return answer(200, _JSON_OK)


def _error(app: SimApp, error: ApiError) -> web.Response:
    app.engine.stats.errors[str(error.status)] += 1
    retry_after = app.faults.retry_after
    if error.status in (429, 503) and retry_after is not None:
        return answer(error.status, error.body(), extra={"Retry-After": f"{retry_after:g}"})
    return answer(error.status, error.body())


async def chat_completions(app: SimApp, request: web.Request) -> web.StreamResponse:
    raw = await request.read()  # first: as vLLM, the request counts once it has arrived whole
    app.engine.stats.requests += 1
    app.engine.stats.in_flight += 1
    try:
        return await _chat(app, request, raw)
    finally:
        app.engine.stats.in_flight -= 1


async def _chat(app: SimApp, request: web.Request, raw: bytes) -> web.StreamResponse:
    if app.gateway is not None:
        wait = app.gateway.take(time.monotonic())
        if wait is not None:
            app.engine.stats.errors["429"] += 1
            body = gateway.rate_limited(app.config.gateway_rate, wait).body()
            return answer(429, body, extra={"Retry-After": gateway.retry_after_header(wait)})
    fault = app.draw_fault()
    if fault is not None:
        app.engine.stats.faults[fault] += 1
    if fault in ("error_429", "error_503"):
        return _error(app, errors.injected(429 if fault == "error_429" else 503))
    if fault == "reset":
        _drop(request, rst=True)
    if fault == "hang":
        await asyncio.sleep(app.faults.hang_seconds)
        _drop(request, rst=False)
    cfg = app.config
    try:
        chat = parse_chat(
            raw, cfg.model, cfg.max_model_len, structured_outputs=cfg.structured_outputs
        )
    except ApiError as exc:
        return _error(app, exc)
    schema_fault = None
    if fault is None and chat.response_format is not None:
        schema_fault = app.draw_schema_fault()
    completion = responses.generate(
        cfg.model, chat, cfg.caption_words, cfg.max_model_len, schema_fault
    )
    if completion.schema_fault is not None:
        app.engine.stats.faults["schema"] += 1
        app.engine.stats.schema_faults[completion.schema_fault] += 1
    n_out = completion.tokens
    cid = app.new_id()
    created = int(time.time())
    engine = app.engine
    job = engine.submit(chat.prompt_tokens, n_out, engine.service_time(n_out))
    stream: web.StreamResponse | None = None
    try:
        if chat.stream and fault is None:
            stream = await _stream(app, request, chat, completion, cid, created, job)
        await job.done
    except asyncio.CancelledError:
        engine.abort(job)
        engine.metrics.success["abort"] += 1
        raise
    if fault == "error_500":
        return _error(app, errors.injected(500))
    if chat.stream:
        if fault is not None:
            stream = await _stream_fault(app, request, fault, cid, created)
        else:
            _record_success(app, chat, completion)
        assert stream is not None
        try:
            await stream.write_eof()
        except ConnectionError:
            raise asyncio.CancelledError from None  # gone at the end: as cancelled, quietly
        return stream
    if fault == "malformed":
        body = responses.completion_body(cid, created, cfg.model, chat.prompt_tokens, completion)
        return answer(200, body[: len(body) // 2])
    if fault == "empty_choices":
        body = responses.completion_body(cid, created, cfg.model, chat.prompt_tokens, None)
        return answer(200, body)
    body = responses.completion_body(cid, created, cfg.model, chat.prompt_tokens, completion)
    _record_success(app, chat, completion)
    return answer(200, body)


def _record_success(app: SimApp, chat: ChatRequest, completion: responses.Completion) -> None:
    stats = app.engine.stats
    if chat.images:
        stats.images[chat.images[0].sha12] += 1
    n_out = completion.tokens
    app.engine.record_success(chat.prompt_tokens, n_out, completion.finish_reason)


async def _start_stream(request: web.Request) -> web.StreamResponse:
    """The head of a streamed 200 answer (chunked for HTTP/1.1), sent now."""
    stream = web.StreamResponse(headers={"Content-Type": SSE, "Server": SERVER})
    await stream.prepare(request)
    return stream


async def _stream(
    app: SimApp,
    request: web.Request,
    chat: ChatRequest,
    completion: responses.Completion,
    cid: str,
    created: int,
    job: Job,
) -> web.StreamResponse:
    """Send the SSE events of a streamed answer, paced by the request's progress in the
    engine (each delta when its share of the output is generated); the caller ends it."""
    model = app.config.model
    await job.admitted.wait()  # vLLM sends the first chunk with the engine's first output
    try:
        stream = await _start_stream(request)
        first = {"role": "assistant", "content": ""}
        await stream.write(responses.sse_chunk(cid, created, model, first))
        deltas = responses.stream_deltas(completion) or [""]
        for index, delta in enumerate(deltas):
            await job.reach((index + 1) / len(deltas))
            last = index == len(deltas) - 1
            reason = completion.finish_reason if last else None
            chunk = responses.sse_chunk(cid, created, model, {"content": delta}, reason)
            await stream.write(chunk)
        if chat.include_usage:
            n_out = completion.tokens
            usage = responses.sse_usage(cid, created, model, chat.prompt_tokens, n_out)
            await stream.write(usage)
        await stream.write(responses.SSE_DONE)
    except ConnectionError:  # the client has gone: end as its cancellation would
        raise asyncio.CancelledError from None
    return stream


async def _stream_fault(
    app: SimApp, request: web.Request, fault: str, cid: str, created: int
) -> web.StreamResponse:
    """A streamed 200 answer that is broken (malformed JSON or no choices at all)."""
    model = app.config.model
    first = responses.sse_chunk(cid, created, model, {"role": "assistant", "content": ""})
    if fault == "malformed":
        event = first[: len(first) // 2] + b"\n\n"
    else:
        event = responses.sse_no_choices(cid, created, model)
    try:
        stream = await _start_stream(request)
        for data in (event, responses.SSE_DONE):
            await stream.write(data)
    except ConnectionError:
        raise asyncio.CancelledError from None
    return stream

"""HTTP endpoints of the simulator: vLLM's API plus the /sim/ control endpoints.

Faults apply only to POST /v1/chat/completions. One fault kind is drawn per request (see
`FaultConfig.pick`). 429, 503, reset and hang act at once, before validation; 500,
malformed and empty_choices are answered after the request has held a slot for its service
time. `stats["errors"]` counts every non-200 answer to a chat request, injected or not.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from . import errors, gateway, metrics, responses
from .chat import ChatRequest, parse_chat
from .config import FaultConfig
from .engine import Job
from .errors import ApiError
from .httpserver import HttpConnection, HttpRequest

if TYPE_CHECKING:
    from .app import SimApp

VERSION = b'{"version":"0.32.0-sim"}'
_JSON_OK = b'{"ok":true}'


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


async def health(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    conn.send(200, b"", headers=(), keep_alive=req.keep_alive)


async def version(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    conn.send(200, VERSION, keep_alive=req.keep_alive)


async def models(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
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
    conn.send(200, _json({"object": "list", "data": [card]}), keep_alive=req.keep_alive)


async def metrics_page(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    """The gauges as they are when asked; a busy API server (``metrics_delay``) hands them
    over late, so the client reads a stale picture."""
    cfg = app.config
    if cfg.metrics == "none":
        conn.send(404, b'{"detail":"Not Found"}', keep_alive=req.keep_alive)
        return
    body = metrics.render(app.engine, cfg.model, cfg.metrics)
    if cfg.metrics_delay > 0:
        await asyncio.sleep(cfg.metrics_delay)
    conn.send(200, body, metrics.CONTENT_TYPE, keep_alive=req.keep_alive)


async def sim_stats(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    conn.send(200, _json(app.engine.snapshot()), keep_alive=req.keep_alive)


async def sim_reset(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    app.engine.reset_stats()
    conn.send(200, _JSON_OK, keep_alive=req.keep_alive)


async def sim_faults(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    try:
        faults = FaultConfig.from_dict(json.loads(req.body or b"{}"))
    except (ValueError, TypeError, AttributeError) as exc:
        conn.send(400, _json({"detail": str(exc)}), keep_alive=req.keep_alive)
        return
    app.set_faults(faults)
    conn.send(200, _JSON_OK, keep_alive=req.keep_alive)


async def sim_down(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    try:
        seconds = float(json.loads(req.body or b"{}")["seconds"])
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
    except (ValueError, TypeError, KeyError) as exc:
        conn.send(400, _json({"detail": f"bad down request: {exc}"}), keep_alive=req.keep_alive)
        return
    conn.send(200, _JSON_OK, keep_alive=False)
    asyncio.get_running_loop().call_soon(app.go_down, seconds)


async def sim_capacity(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    """``{"slots": N, "kv_tokens": M}`` (either may be left out): change capacity now."""
    try:
        data = json.loads(req.body or b"{}")
        slots, kv = data.get("slots"), data.get("kv_tokens")
        for value in (slots, kv):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            if value is not None and not ok:
                raise ValueError(f"{value!r} is not a positive integer")
    except (ValueError, AttributeError) as exc:
        conn.send(400, _json({"detail": f"bad capacity request: {exc}"}), keep_alive=req.keep_alive)
        return
    app.engine.set_capacity(slots, kv)
    conn.send(200, _JSON_OK, keep_alive=req.keep_alive)


def _send_error(app: SimApp, conn: HttpConnection, req: HttpRequest, error: ApiError) -> None:
    app.engine.stats.errors[str(error.status)] += 1
    headers: tuple[tuple[str, str], ...] = ()
    retry_after = app.faults.retry_after
    if error.status in (429, 503) and retry_after is not None:
        headers = (("retry-after", f"{retry_after:g}"),)
    conn.send(error.status, error.body(), headers=headers, keep_alive=req.keep_alive)


async def chat_completions(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    app.engine.stats.requests += 1
    app.engine.stats.in_flight += 1
    try:
        await _chat(app, req, conn)
    finally:
        app.engine.stats.in_flight -= 1


async def _chat(app: SimApp, req: HttpRequest, conn: HttpConnection) -> None:
    if app.gateway is not None:
        wait = app.gateway.take(time.monotonic())
        if wait is not None:
            app.engine.stats.errors["429"] += 1
            headers = (("retry-after", gateway.retry_after_header(wait)),)
            body = gateway.rate_limited(app.config.gateway_rate, wait).body()
            conn.send(429, body, headers=headers, keep_alive=req.keep_alive)
            return
    fault = app.draw_fault()
    if fault is not None:
        app.engine.stats.faults[fault] += 1
    if fault in ("error_429", "error_503"):
        _send_error(app, conn, req, errors.injected(429 if fault == "error_429" else 503))
        return
    if fault == "reset":
        conn.abort(rst=True)
        return
    if fault == "hang":
        await asyncio.sleep(app.faults.hang_seconds)
        conn.abort(rst=False)
        return
    cfg = app.config
    try:
        request = parse_chat(req.body, cfg.model, cfg.max_model_len)
    except ApiError as exc:
        _send_error(app, conn, req, exc)
        return
    completion = responses.generate(cfg.model, request, cfg.caption_words, cfg.max_model_len)
    n_out = len(completion.words)
    cid = app.new_id()
    created = int(time.time())
    engine = app.engine
    job = engine.submit(request.prompt_tokens, n_out, engine.service_time(n_out))
    try:
        if request.stream and fault is None:
            await _stream(app, conn, request, completion, cid, created, job)
        await job.done
    except asyncio.CancelledError:
        engine.abort(job)
        engine.metrics.success["abort"] += 1
        raise
    if fault == "error_500":
        _send_error(app, conn, req, errors.injected(500))
        return
    if request.stream:
        if fault is not None:
            _stream_fault(app, conn, fault, cid, created)
        conn.end_chunked()
        if not req.keep_alive:
            conn.close()
    elif fault == "malformed":
        body = responses.completion_body(cid, created, cfg.model, request.prompt_tokens, completion)
        conn.send(200, body[: len(body) // 2], keep_alive=req.keep_alive)
    elif fault == "empty_choices":
        body = responses.completion_body(cid, created, cfg.model, request.prompt_tokens, None)
        conn.send(200, body, keep_alive=req.keep_alive)
    else:
        body = responses.completion_body(cid, created, cfg.model, request.prompt_tokens, completion)
        conn.send(200, body, keep_alive=req.keep_alive)
    if fault is None:
        _record_success(app, request, completion)


def _record_success(app: SimApp, request: ChatRequest, completion: responses.Completion) -> None:
    stats = app.engine.stats
    if request.images:
        stats.images[request.images[0].sha12] += 1
    n_out = len(completion.words)
    app.engine.record_success(request.prompt_tokens, n_out, completion.finish_reason)


async def _stream(
    app: SimApp,
    conn: HttpConnection,
    request: ChatRequest,
    completion: responses.Completion,
    cid: str,
    created: int,
    job: Job,
) -> None:
    """Send the SSE events of a streamed answer, paced by the request's progress in the
    engine (each delta when its share of the output is generated)."""
    model = app.config.model
    await job.admitted.wait()  # vLLM sends the first chunk with the engine's first output
    conn.start_chunked(200, "text/event-stream; charset=utf-8")
    await conn.write_chunk(
        responses.sse_chunk(cid, created, model, {"role": "assistant", "content": ""})
    )
    deltas = responses.stream_deltas(completion) or [""]
    for index, delta in enumerate(deltas):
        await job.reach((index + 1) / len(deltas))
        last = index == len(deltas) - 1
        reason = completion.finish_reason if last else None
        await conn.write_chunk(responses.sse_chunk(cid, created, model, {"content": delta}, reason))
    if request.include_usage:
        n_out = len(completion.words)
        usage = responses.sse_usage(cid, created, model, request.prompt_tokens, n_out)
        await conn.write_chunk(usage)
    await conn.write_chunk(responses.SSE_DONE)


def _stream_fault(app: SimApp, conn: HttpConnection, fault: str, cid: str, created: int) -> None:
    """A streamed 200 answer that is broken (malformed JSON or no choices at all)."""
    model = app.config.model
    conn.start_chunked(200, "text/event-stream; charset=utf-8")
    first = responses.sse_chunk(cid, created, model, {"role": "assistant", "content": ""})
    if fault == "malformed":
        event = first[: len(first) // 2] + b"\n\n"
    else:
        event = responses.sse_no_choices(cid, created, model)
    for data in (event, responses.SSE_DONE):
        conn.write(b"%x\r\n%b\r\n" % (len(data), data))

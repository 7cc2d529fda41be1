"""The simulated caption text and vLLM's exact success bodies (JSON and SSE chunks).

The caption starts with a marker that proves which image was received, e.g.
``[simulated caption by gemma3-27b] image 3fa9c1d2e4b5 320x240 — prompt: ... — lorem ...``
where ``3fa9c1d2e4b5`` is ``sha256(decoded image bytes).hexdigest()[:12]`` of the first image.
The marker is within the first 7 words, so it survives ``max_tokens >= 7``. One word counts as
one completion token.

A structured-output request (``response_format`` json_schema / json_object) is answered with
the JSON text of `structured` (or, for a ``--fault-schema`` fault, of `structured_faults`),
counted like any text: ``ceil(utf-8 bytes / 4)`` tokens. Past ``max_tokens`` (or the context)
it is cut at ``limit * 4`` bytes, on a character boundary, with finish_reason "length": a
cut-off JSON, as a real server sends it. It streams in pieces of about 4 bytes (one a token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any

from . import structured_faults
from .chat import ChatRequest, text_tokens
from .structured import answer_text, structured_answer

SYSTEM_FINGERPRINT = "vllm-0.32.0-sim"
PROMPT_WORDS = 8
FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed")


@dataclass(frozen=True, slots=True)
class Completion:
    """The text generated for one request: its pieces (one a token, as streamed; joined, the
    content), the completion tokens, why generation stopped, and the ``--fault-schema`` kind
    applied to a structured answer (None: a good answer)."""

    pieces: tuple[str, ...]
    tokens: int
    finish_reason: str
    schema_fault: str | None = None

    @property
    def content(self) -> str:
        return "".join(self.pieces)


def generate(
    model: str,
    request: ChatRequest,
    caption_words: int,
    max_model_len: int,
    schema_fault: str | None = None,
) -> Completion:
    """The simulated answer, cut at `max_tokens` and at the context length: a caption, or
    for a structured-output request its JSON (broken as `schema_fault` says, if given)."""
    limit = max(0, max_model_len - request.prompt_tokens)
    if request.max_tokens is not None:
        limit = min(limit, request.max_tokens)
    if request.response_format is not None:
        return _structured(request, limit, schema_fault)
    head = ["[simulated", "caption", "by", f"{model}]"]
    if request.images:
        image = request.images[0]
        head += ["image", image.sha12, f"{image.width}x{image.height}"]
    else:
        head += ["no", "image"]
    head += ["—", "prompt:", *request.prompt_text.split()[:PROMPT_WORDS], "—"]
    words = [*head, *islice(cycle(FILLER), max(0, caption_words - len(head)))][:caption_words]
    reason = "length" if len(words) > limit else "stop"
    words = words[:limit]
    pieces = tuple(word if i == 0 else " " + word for i, word in enumerate(words))
    return Completion(pieces, len(words), reason)


def _structured(request: ChatRequest, limit: int, fault: str | None) -> Completion:
    rf = request.response_format
    assert rf is not None
    sha12 = request.images[0].sha12 if request.images else None
    if fault is None:
        text = answer_text(structured_answer(rf.schema, sha12, request.prompt_text))
    else:
        fault, text = structured_faults.bad_answer(fault, rf.schema, sha12, request.prompt_text)
    reason = "stop"
    if text_tokens(text) > limit:
        text = cut_utf8(text, limit * 4)
        reason = "length"
    return Completion(token_pieces(text), text_tokens(text), reason, fault)


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` within `max_bytes` UTF-8 bytes (whole characters)."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def token_pieces(text: str) -> tuple[str, ...]:
    """`text` in consecutive pieces of at least 4 UTF-8 bytes (the last may be shorter),
    whole characters each: the tokens a streamed answer is sent in."""
    pieces: list[str] = []
    start = size = 0
    for index, char in enumerate(text):
        size += len(char.encode("utf-8"))
        if size >= 4:
            pieces.append(text[start : index + 1])
            start, size = index + 1, 0
    if start < len(text):
        pieces.append(text[start:])
    return tuple(pieces)


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def completion_body(
    cid: str, created: int, model: str, prompt_tokens: int, completion: Completion | None
) -> bytes:
    """A `chat.completion` body; `completion=None` gives the `"choices": []` fault variant."""
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    if completion is not None:
        completion_tokens = completion.tokens
        message = {
            "role": "assistant",
            "content": completion.content,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "reasoning": None,
        }
        choices.append(
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": completion.finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
            }
        )
    usage = _usage(prompt_tokens, completion_tokens)
    usage.update(prompt_tokens_details=None, completion_tokens_details=None)
    return _dumps(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def sse_chunk(
    cid: str, created: int, model: str, delta: dict[str, str], finish_reason: str | None = None
) -> bytes:
    """One `data: {chat.completion.chunk}` SSE event with a single choice."""
    choice: dict[str, Any] = {
        "index": 0,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    if finish_reason is not None:
        choice["stop_reason"] = None
    return _sse(
        {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        | {"choices": [choice]}
    )


def sse_usage(
    cid: str, created: int, model: str, prompt_tokens: int, completion_tokens: int
) -> bytes:
    """The final `"choices": []` chunk carrying usage (sent when include_usage is set)."""
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    return _sse(head | {"choices": [], "usage": _usage(prompt_tokens, completion_tokens)})


def sse_no_choices(cid: str, created: int, model: str) -> bytes:
    """A chunk with `"choices": []` and no usage (the empty-choices fault when streaming)."""
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    return _sse(head | {"choices": []})


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + _dumps(data) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def stream_deltas(completion: Completion) -> list[str]:
    """Content deltas, one per token; concatenated they equal `completion.content`."""
    return list(completion.pieces)

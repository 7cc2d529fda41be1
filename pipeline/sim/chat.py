"""Parse and validate a /v1/chat/completions request body the way vLLM 0.32.0 does.

Prompt token count (an approximation; the real tokenizer is not available):

    prompt_tokens = 1 (BOS) + 3 (generation prompt)
                  + sum over messages of (4 turn-wrapper tokens + ceil(utf8 bytes of text / 4))
                  + 260 per image (256 soft tokens + 4 wrapper tokens, like real Gemma 3)

Images must be `data:` URIs; they are base64-decoded (strictly) and only their header is read
(`imagesize`, no full decode), which gives the size and rejects non-images. ``response_format``
is parsed by `response_format` (json_object / json_schema, or None for plain text).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from . import errors
from .errors import ApiError
from .imagesize import image_size
from .response_format import ResponseFormat, check_constraint, parse_response_format

TOKENS_PER_IMAGE = 256 + 4
TOKENS_PER_MESSAGE = 4
TOKENS_FIXED = 1 + 3
# vLLM decodes with pybase64, whose wording differs from the standard library's.
_B64_MESSAGES = {"Only base64 data is allowed": "Non-base64 digit found"}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the simulator knows about one received image."""

    sha12: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat completion request."""

    max_tokens: int | None
    stream: bool
    include_usage: bool
    prompt_tokens: int
    prompt_text: str
    images: tuple[ImageInfo, ...]
    response_format: ResponseFormat | None = None  # None: a free-text answer


def text_tokens(text: str) -> int:
    """Approximate token count of a text: one token per 4 UTF-8 bytes, rounded up."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def parse_chat(
    raw: bytes, model: str, max_model_len: int, *, structured_outputs: bool = True
) -> ChatRequest:
    """Validate `raw` (the request body) or raise `ApiError` with vLLM's exact answer;
    `structured_outputs` False rejects json_schema / json_object response formats."""
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errors.json_invalid(exc.pos, exc.msg) from None
    except UnicodeDecodeError:
        raise errors.json_invalid(0, "Invalid UTF-8") from None
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        raise ApiError(400, f"1 validation error:\n  {msg}", "Bad Request", "body")
    response_format = parse_response_format(body, enabled=structured_outputs)
    if "messages" not in body:
        raise errors.missing_field("messages", body)
    messages = body["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise errors.validation("list_type", "messages", "Input should be a valid list", body)
    requested = body.get("model")
    if requested is not None and requested != model:
        raise errors.unknown_model(str(requested), model)
    max_tokens = _max_tokens(body, max_model_len)
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise errors.validation(
                "float_type", "temperature", "Input should be a valid number", body
            )
        if temperature < 0:
            raise errors.negative_temperature(float(temperature))
    prompt_tokens, prompt_text, images = _read_messages(messages, body)
    _check_alternation(messages)
    if prompt_tokens > max_model_len:
        raise errors.prompt_too_long(prompt_tokens, max_model_len)
    check_constraint(response_format)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return ChatRequest(
        max_tokens=max_tokens,
        stream=bool(body.get("stream", False)),
        include_usage=include_usage,
        prompt_tokens=prompt_tokens,
        prompt_text=prompt_text,
        images=images,
        response_format=response_format,
    )


def _max_tokens(body: dict[str, Any], max_model_len: int) -> int | None:
    chosen: int | None = None
    for param in ("max_tokens", "max_completion_tokens"):
        value = body.get(param)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise errors.validation("int_type", param, "Input should be a valid integer", body)
        if value > max_model_len:
            raise errors.too_many_output_tokens(param, value, max_model_len)
        chosen = value if param == "max_completion_tokens" or chosen is None else chosen
    if chosen is not None and chosen < 1:
        raise errors.too_few_output_tokens(chosen)
    return chosen


def _read_messages(
    messages: list[dict[str, Any]], body: dict[str, Any]
) -> tuple[int, str, tuple[ImageInfo, ...]]:
    tokens = TOKENS_FIXED
    images: list[ImageInfo] = []
    prompt_text = ""
    for message in messages:
        tokens += TOKENS_PER_MESSAGE
        content = message.get("content")
        texts: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise errors.validation("dict_type", "messages", "Input should be a dict", body)
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    images.append(_load_image(part.get("image_url")))
                    tokens += TOKENS_PER_IMAGE
        elif content is not None:
            raise errors.validation("string_type", "messages", "Input should be a string", body)
        tokens += sum(text_tokens(t) for t in texts)
        if message.get("role") == "user" and texts:
            prompt_text = " ".join(texts)
    return tokens, prompt_text, tuple(images)


def _load_image(image_url: Any) -> ImageInfo:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url.startswith("data:"):
        raise errors.bad_request("vllm-sim: only data: image URLs are supported")
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise errors.bad_request("vllm-sim: only base64 data: image URLs are supported")
    try:
        raw = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise errors.bad_request(_B64_MESSAGES.get(str(exc), str(exc))) from None
    try:
        width, height = image_size(raw)
    except ValueError:
        raise errors.not_an_image() from None
    return ImageInfo(hashlib.sha256(raw).hexdigest()[:12], width, height)


def _check_alternation(messages: list[dict[str, Any]]) -> None:
    """Gemma 3's chat template: fold a leading system message; roles must then alternate."""
    turns = messages[1:] if messages and messages[0].get("role") == "system" else messages
    for index, message in enumerate(turns):
        if (message.get("role") == "user") != (index % 2 == 0):
            raise errors.roles_not_alternating()

"""Request bodies and item keys: prompt + image -> OpenAI chat body, and the resume key.

The body is exactly the shape of the original one-image script: a system message (unless the
prompt sets none), then one user message holding the prompt text and the image as a data URI
(the image first with ``image_first``);
``model``, ``max_tokens``, ``temperature``, ``top_p``, plus the prompt's ``extra`` fields, and
for a prompt with a JSON Schema its ``response_format``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any

from .config import ImageConfig, PromptConfig
from .structured import response_format

KEY_VERSION = 2


def build_body(model: str, prompt: PromptConfig, text: str, data_uri: str) -> dict[str, Any]:
    """The JSON body of one ``POST /chat/completions``."""
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    content: list[dict[str, Any]] = [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": data_uri}},
    ]
    if prompt.image_first:  # a prefix shared by every prompt of the image
        content.reverse()
    messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": prompt.max_tokens,
        "temperature": prompt.temperature,
        "top_p": prompt.top_p,
    }
    if prompt.schema is not None:
        body["response_format"] = response_format(prompt.name, prompt.schema)
    body.update(prompt.extra)
    return body


# Stands in for each image's data URI while the rest of the body goes through ``json.dumps``;
# random per process, so no prompt text or model name can contain it.
_SLOT = f"image-{secrets.token_hex(16)}"
_SLOT_JSON = json.dumps(_SLOT)


def _splice_safe(url: object) -> bool:
    """A base64 data URI that JSON would copy unchanged (ASCII, no quote or backslash)."""
    return (
        isinstance(url, str)
        and url.startswith("data:")
        and url.isascii()  # O(1) in CPython
        and '"' not in url
        and "\\" not in url
    )


def _lift_images(message: Any, uris: list[str]) -> Any:
    """``message`` with each data URI replaced by the slot (collected in ``uris``)."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return message
    parts = []
    for part in content:
        image = part.get("image_url") if isinstance(part, dict) else None
        if isinstance(image, dict) and _splice_safe(image.get("url")):
            uris.append(image["url"])
            part = {**part, "image_url": {**image, "url": _SLOT}}
        parts.append(part)
    return {**message, "content": parts}


def encode_body(body: Mapping[str, Any], *, stream: bool = False) -> bytes:
    """The body as UTF-8 JSON bytes, with ``stream`` options when asked.

    Same bytes as ``json.dumps(body, ensure_ascii=False)``, but each image's data URI is spliced
    in instead of being scanned character by character by the JSON encoder: that scan was 45%
    of the client's CPU with ~220 KB images (1.9 ms of 2 ms per body; py-spy, bench/RESULTS.md).
    """
    if stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    uris: list[str] = []
    messages = body.get("messages")
    lifted = body
    if isinstance(messages, list):
        lifted = {**body, "messages": [_lift_images(m, uris) for m in messages]}
    text = json.dumps(lifted, ensure_ascii=False)
    pieces = text.split(_SLOT_JSON)
    if len(pieces) != len(uris) + 1:  # cannot happen with a random slot; stay correct anyway
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    parts = [pieces[0].encode("utf-8")]
    for uri, piece in zip(uris, pieces[1:], strict=True):
        parts += (b'"', uri.encode("ascii"), b'"', piece.encode("utf-8"))
    return b"".join(parts)  # one allocation, not a growing buffer and a final copy


def settings_digest(
    model: str, prompt: PromptConfig, image: ImageConfig, *, named: bool = True
) -> bytes:
    """The part of a key that is the same for every image of a prompt (computed once).

    ``named=False`` leaves the prompt's name out: for the request key, which is about what is
    sent, not about which row it fills.
    """
    material = {
        "v": KEY_VERSION,
        "model": model,
        "prompt": prompt.name if named else None,
        "system": prompt.system,
        "max_tokens": prompt.max_tokens,
        "temperature": prompt.temperature,
        "top_p": prompt.top_p,
        "extra": prompt.extra,
        "max_side": image.max_side,
        "jpeg_quality": image.jpeg_quality,
        "passthrough": image.passthrough,
    }
    if prompt.image_first:  # only when set, so the keys of earlier runs stay as they were
        material["image_first"] = True
    if prompt.schema is not None:  # what is sent names the prompt: json_schema.name
        material["schema"] = {"name": prompt.name, "schema": prompt.schema}
    blob = json.dumps(material, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).digest()


def key_from(settings: bytes, image_sha256: str, relpath: str, text: str) -> str:
    """An item key from a ``settings_digest`` and the per-image parts (fast: no JSON)."""
    h = hashlib.sha256(settings)
    for part in (image_sha256, relpath, text):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def item_key(
    *,
    image_sha256: str,
    relpath: str,
    model: str,
    prompt: PromptConfig,
    text: str,
    image: ImageConfig,
) -> str:
    """Stable id of one (image, prompt) item: same inputs and settings -> same key.

    It covers the image content and its path, the prompt's name and rendered text, its system
    text and sampling parameters, the model and the image settings. Change any of them and the
    item is new work; change none and a rerun skips it.
    """
    return key_from(settings_digest(model, prompt, image), image_sha256, relpath, text)


def request_key(
    *, image_sha256: str, model: str, prompt: PromptConfig, text: str, image: ImageConfig
) -> str:
    """Id of the request itself: what is sent, whatever the file's path or the prompt's name.

    Identical image content under several paths (with a prompt that does not name the path)
    gives the same request key: it is sent once and its answer is written to every row.
    """
    return key_from(settings_digest(model, prompt, image, named=False), image_sha256, "", text)

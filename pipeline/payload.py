"""Request bodies and item keys: prompt + image -> OpenAI chat body, and the resume key.

The body is exactly the shape of the original one-image script: a system message (unless the
prompt sets none), then one user message holding the prompt text and the image as a data URI;
``model``, ``max_tokens``, ``temperature``, ``top_p``, plus the prompt's ``extra`` fields.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .config import ImageConfig, PromptConfig

KEY_VERSION = 2


def build_body(model: str, prompt: PromptConfig, text: str, data_uri: str) -> dict[str, Any]:
    """The JSON body of one ``POST /chat/completions``."""
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": data_uri}},
            ],
        }
    )
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": prompt.max_tokens,
        "temperature": prompt.temperature,
        "top_p": prompt.top_p,
    }
    body.update(prompt.extra)
    return body


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
    }
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

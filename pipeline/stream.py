"""Streamed answers: the SSE lines of a ``stream: true`` chat completion -> one ``Completion``.

vLLM sends ``data: {chat.completion.chunk}`` lines: a first delta with the role, content deltas,
a last content chunk carrying ``finish_reason``, then (with ``stream_options.include_usage``) a
chunk with ``"choices": []`` and ``usage``, then ``data: [DONE]``. Pure: no IO.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import RetryableError

MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a caption is text; anything bigger is not an answer


@dataclass(slots=True)
class StreamState:
    """Accumulates one streamed answer, line by line."""

    parts: list[str] = field(default_factory=list)
    chars: int = 0
    finish_reason: str | None = None
    model: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def feed(self, line: str) -> bool:
        """Take one SSE line; True when it carried the first piece of text (for TTFT)."""
        line = line.strip()
        if not line.startswith("data:"):
            return False  # blank separators, comments, event names
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return False
        try:
            chunk = json.loads(data)
        except ValueError:
            raise RetryableError(
                "malformed stream: a chunk is not valid JSON", status=200
            ) from None
        if not isinstance(chunk, dict):
            raise RetryableError("malformed stream: a chunk is not an object", status=200)
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        first_text = False
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                first_text = not self.parts
                self.parts.append(text)
                self.chars += len(text)
                if self.chars > MAX_ANSWER_BYTES:  # characters: close enough
                    raise RetryableError("answer too large", status=200)
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
        return first_text

    def text(self) -> str:
        if not self.done:
            raise RetryableError("stream ended before [DONE]", status=200)
        if self.finish_reason is None and not self.parts:
            raise RetryableError("malformed stream: no choices", status=200)
        return "".join(self.parts)

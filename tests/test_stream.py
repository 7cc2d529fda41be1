"""StreamState: vLLM's SSE chunk lines -> one answer (pure)."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import RetryableError
from pipeline.stream import StreamState


def chunk(content: str | None = None, reason: str | None = None, **extra: object) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": reason}
    body = {"model": "gemma3-27b", "choices": [choice], **extra}
    return "data: " + json.dumps(body)


USAGE = "data: " + json.dumps(
    {"choices": [], "usage": {"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 18}}
)


def feed(lines: list[str]) -> StreamState:
    state = StreamState()
    for line in lines:
        state.feed(line)
    return state


def test_vllm_sequence_gives_text_reason_and_usage() -> None:
    """Role delta, content deltas, finish chunk, usage chunk and [DONE] make one answer."""
    lines = [chunk(""), "", chunk("a "), chunk("cat"), chunk(None, "length"), USAGE, "data: [DONE]"]
    state = feed(lines)
    assert state.text() == "a cat"
    assert state.finish_reason == "length"
    assert state.usage["completion_tokens"] == 3
    assert state.model == "gemma3-27b"


def test_first_text_is_signalled_once() -> None:
    """feed() is True only for the chunk carrying the first non-empty text (TTFT)."""
    state = StreamState()
    assert [state.feed(x) for x in (chunk(""), chunk("a"), chunk("b"))] == [False, True, False]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([chunk("a")], "before \\[DONE\\]"),
        (["data: {not json"], "not valid JSON"),
        (["data: [DONE]"], "no choices"),
        (["data: [1, 2]"], "not an object"),
    ],
)
def test_broken_streams_are_retryable(lines: list[str], match: str) -> None:
    """Cut, malformed or empty streams raise RetryableError."""
    with pytest.raises(RetryableError, match=match):
        feed(lines).text()

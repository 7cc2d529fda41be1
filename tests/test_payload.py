"""Request bodies and item keys."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from pipeline.config import ImageConfig, PromptConfig
from pipeline.payload import _SLOT, build_body, encode_body, item_key

URI = "data:image/jpeg;base64,/9j/AAAA"


class TestBuildBody:
    def test_exact_shape_with_system(self) -> None:
        """System message first, then one user message holding [text, image_url]."""
        prompt = PromptConfig(
            name="p", text="ignored", system="Be brief.", max_tokens=64, temperature=0.2, top_p=0.5
        )
        body = build_body("gemma3-27b", prompt, "Describe cat.jpg", URI)
        assert body == {
            "model": "gemma3-27b",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe cat.jpg"},
                        {"type": "image_url", "image_url": {"url": URI}},
                    ],
                },
            ],
            "max_tokens": 64,
            "temperature": 0.2,
            "top_p": 0.5,
        }

    @pytest.mark.parametrize("system", [None, ""])
    def test_no_system_message_when_system_unset(self, system: str | None) -> None:
        """With no system text the body holds only the user message."""
        prompt = PromptConfig(name="p", text="t", system=system)
        body = build_body("m", prompt, "hello", URI)
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert body["messages"][0]["content"][0] == {"type": "text", "text": "hello"}

    def test_uses_rendered_text_not_template(self) -> None:
        """The text argument (rendered per image) is sent, not the prompt's template."""
        prompt = PromptConfig(name="p", text="Describe $filename")
        body = build_body("m", prompt, "Describe dog.png", URI)
        assert body["messages"][-1]["content"][0]["text"] == "Describe dog.png"

    def test_extra_fields_are_merged(self) -> None:
        """The prompt's extra mapping is merged into the top level of the body."""
        extra = {"seed": 7, "stop": ["\n\n"], "repetition_penalty": 1.1}
        prompt = PromptConfig(name="p", text="t", extra=extra)
        body = build_body("m", prompt, "t", URI)
        for key, value in extra.items():
            assert body[key] == value
        assert body["model"] == "m"
        assert len(body["messages"]) == 2

    def test_image_first_puts_the_image_before_the_text(self) -> None:
        """image_first sends the image, then the text: a prefix every prompt of it shares."""
        body = build_body("m", _prompt(image_first=True), "Describe", "data:image/jpeg;base64,QQ==")
        assert [part["type"] for part in body["messages"][-1]["content"]] == ["image_url", "text"]

    def test_schema_adds_response_format_and_nothing_else(self) -> None:
        """A schema'd prompt's body is the free-text body plus its response_format."""
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        plain = build_body("m", _prompt(), "Describe", "data:image/jpeg;base64,QQ==")
        body = build_body("m", _prompt(schema=schema), "Describe", "data:image/jpeg;base64,QQ==")
        assert body.pop("response_format") == {
            "type": "json_schema",
            "json_schema": {"name": BASE_PROMPT.name, "schema": schema, "strict": True},
        }
        assert body == plain

    def test_body_is_json_serialisable(self) -> None:
        """The body can be encoded as JSON unchanged."""
        prompt = PromptConfig(name="p", text="t", extra={"seed": 1})
        body = build_body("m", prompt, "Ünïcode text", URI)
        assert json.loads(json.dumps(body)) == body


BASE_PROMPT = PromptConfig(
    name="describe",
    text="Describe $filename",
    system="You are a helpful assistant.",
    max_tokens=256,
    temperature=0.7,
    top_p=0.9,
    extra={"seed": 1},
)
BASE_IMAGE = ImageConfig(max_side=896, jpeg_quality=90)
BASE_ARGS: dict[str, Any] = {
    "image_sha256": "a" * 64,
    "relpath": "animals/cat.jpg",
    "model": "gemma3-27b",
    "prompt": BASE_PROMPT,
    "text": "Describe cat.jpg",
    "image": BASE_IMAGE,
}


def _user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": list(parts)}]}


def _img(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


class TestEncodeBody:
    """The data URI is spliced in, but the bytes are exactly what json.dumps would give."""

    @pytest.mark.parametrize(
        "body",
        [
            build_body("gemma3-27b", PromptConfig(extra={"seed": 1}), "使用中文描述这张图像", URI),
            build_body("m", PromptConfig(system=None), 'quote " and \\ and \n', URI),
            _user(_img(URI), {"type": "text", "text": "two"}, _img(URI + "BBBB")),
            _user(_img("https://example.com/cat.jpg")),
            _user(_img('data:image/jpeg;base64,"quote"')),
            _user(_img("data:image/jpeg;base64,back\\slash")),
            _user(_img("data:image/jpeg;base64,ünïcode")),
            _user({"type": "text", "text": _SLOT}, _img(URI)),
            {"model": _SLOT, "messages": "not a list"},
            {"model": "m", "messages": [{"role": "user", "content": "plain"}, "odd"]},
        ],
        ids=[
            "zh-with-extra",
            "escapes-in-text",
            "two-images",
            "http-url",
            "uri-with-quote",
            "uri-with-backslash",
            "uri-non-ascii",
            "slot-in-text",
            "slot-as-model",
            "odd-messages",
        ],
    )
    def test_same_bytes_as_json_dumps(self, body: dict[str, Any]) -> None:
        assert encode_body(body) == json.dumps(body, ensure_ascii=False).encode("utf-8")

    def test_stream_options_added(self) -> None:
        body = build_body("m", PromptConfig(), "t", URI)
        sent = json.loads(encode_body(body, stream=True))
        assert sent == {**body, "stream": True, "stream_options": {"include_usage": True}}
        assert "stream" not in body  # the caller's body is not changed


def _prompt(**changes: Any) -> PromptConfig:
    return dataclasses.replace(BASE_PROMPT, **changes)


def _image(**changes: Any) -> ImageConfig:
    return dataclasses.replace(BASE_IMAGE, **changes)


class TestItemKey:
    def test_stable_for_equal_inputs(self) -> None:
        """Equal (but separately built) inputs give the same 32-hex-digit key."""
        again = dict(
            BASE_ARGS,
            prompt=_prompt(extra={"seed": 1}),
            image=ImageConfig(max_side=896, jpeg_quality=90),
        )
        key = item_key(**BASE_ARGS)
        assert key == item_key(**again)
        assert len(key) == 32
        int(key, 16)

    def test_extra_key_order_does_not_matter(self) -> None:
        """Two extra mappings with the same items in another order give the same key."""
        a = dict(BASE_ARGS, prompt=_prompt(extra={"seed": 1, "stop": ["x"]}))
        b = dict(BASE_ARGS, prompt=_prompt(extra={"stop": ["x"], "seed": 1}))
        assert item_key(**a) == item_key(**b)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("image_sha256", "b" * 64),
            ("relpath", "animals/cat2.jpg"),
            ("relpath", "other/cat.jpg"),
            ("model", "gemma3-4b"),
            ("text", "Describe cat.jpg!"),
            ("prompt", _prompt(system="Be terse.")),
            ("prompt", _prompt(system=None)),
            ("prompt", _prompt(max_tokens=255)),
            ("prompt", _prompt(temperature=0.2)),
            ("prompt", _prompt(top_p=0.95)),
            ("prompt", _prompt(name="another-prompt")),
            ("prompt", _prompt(extra={"seed": 2})),
            ("prompt", _prompt(extra={})),
            ("image", _image(max_side=512)),
            ("image", _image(jpeg_quality=85)),
            ("image", _image(passthrough=False)),
            ("prompt", _prompt(image_first=True)),
            ("prompt", _prompt(schema={"type": "object", "properties": {"a": {}}})),
        ],
    )
    def test_key_changes_with_each_input(self, field: str, value: Any) -> None:
        """Changing any one input that affects the answer gives a new key."""
        changed = dict(BASE_ARGS, **{field: value})
        assert item_key(**changed) != item_key(**BASE_ARGS)

    def test_prompt_template_itself_is_not_in_key(self) -> None:
        """Only the rendered text counts: an equivalent template renders to the same key."""
        changed = dict(BASE_ARGS, prompt=_prompt(text="Describe ${filename}"))
        assert item_key(**changed) == item_key(**BASE_ARGS)


def test_request_key_ignores_path_and_prompt_name() -> None:
    """The request key is the same for the same bytes and prompt under any path or name."""
    from pipeline.payload import request_key

    a = request_key(image_sha256="a" * 64, model="m", prompt=_prompt(), text="t", image=_image())
    b = request_key(
        image_sha256="a" * 64, model="m", prompt=_prompt(name="other"), text="t", image=_image()
    )
    c = request_key(image_sha256="b" * 64, model="m", prompt=_prompt(), text="t", image=_image())
    assert a == b != c

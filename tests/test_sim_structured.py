"""Tests of the simulator's structured outputs: the schema-valid answer generator (pure), the
``--fault-schema`` bad answers, and over loopback: ``response_format`` parsing and vLLM's error
bodies, token accounting and truncation, streaming, ``--structured-outputs off``."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import math
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from PIL import Image

from pipeline.sim import FaultConfig, SimConfig, SimServer
from pipeline.sim.chat import parse_chat
from pipeline.sim.cli import add_arguments, config_from_args
from pipeline.sim.structured import answer_text, structured_answer, value_seed
from pipeline.sim.structured_faults import KINDS, bad_answer

MODEL = "gemma3-27b"
ROOT = Path(__file__).resolve().parents[1]
ANNOTATE: dict[str, Any] = json.loads((ROOT / "data/schemas/annotate.json").read_text())
SHAS = ("3fa9c1d2e4b5", "0123456789ab", None)


# -- helpers --------------------------------------------------------------------------------------
def jpeg(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "JPEG")
    return buf.getvalue()


def sha12(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:12]


def schema_format(schema: dict[str, Any], name: str = "annotate") -> dict[str, Any]:
    json_schema = {"name": name, "schema": schema, "strict": True}
    return {"type": "json_schema", "json_schema": json_schema}


def chat_body(
    raw: bytes | None = None, *, response_format: Any = None, max_tokens: int = 512, **extra: Any
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "Annotate this image."}]
    if raw is not None:
        url = f"data:image/jpeg;base64,{base64.b64encode(raw).decode()}"
        content.append({"type": "image_url", "image_url": {"url": url}})
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        **extra,
    }
    if response_format is not None:
        body["response_format"] = response_format
    return body


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)  # type: ignore[no-any-return]


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def sse_contents(text: str) -> tuple[list[str], list[Any], list[dict[str, Any]]]:
    """(content deltas, finish reasons, usage chunks) of an SSE answer."""
    events = [e[len("data: ") :] for e in text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas, reasons = [], []
    for chunk in chunks[1:]:
        if chunk["choices"]:
            deltas.append(chunk["choices"][0]["delta"]["content"])
            reasons.append(chunk["choices"][0]["finish_reason"])
    return deltas, reasons, [c["usage"] for c in chunks if "usage" in c]


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(max_model_len=4096)) as server:
        yield server


@pytest.fixture
def client(sim: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=5) as c:
        yield c


# -- 1. the value generator, keyword by keyword ----------------------------------------------------
KEYWORD_SCHEMAS: dict[str, dict[str, Any]] = {
    "string-lengths": {"type": "string", "minLength": 30, "maxLength": 40},
    "string-short-max": {"type": "string", "maxLength": 5},
    "enum": {"enum": ["a", 1, None, {"x": 1}]},
    "const": {"const": {"fixed": [1, 2]}},
    "integer-bounds": {"type": "integer", "minimum": -3, "maximum": 3},
    "integer-exclusive": {"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 6},
    "integer-only-max": {"type": "integer", "maximum": -200},
    "integer-only-min": {"type": "integer", "minimum": 1000},
    "integer-fractional-bounds": {"type": "integer", "minimum": 0.5, "maximum": 1.5},
    "number-exclusive": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.001},
    "number-unbounded": {"type": "number"},
    "number-point": {"type": "number", "minimum": 2.5, "maximum": 2.5},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "type-list": {"type": ["string", "null"], "maxLength": 20},
    "type-list-null-first": {"type": ["null", "integer"], "minimum": 7, "maximum": 7},
    "array-bounds": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 5},
    "array-max-zero": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
    "prefix-items": {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string", "format": "date"}],
        "items": False,
    },
    "unique-items": {
        "type": "array",
        "items": {"enum": ["x", "y"]},
        "minItems": 1,
        "maxItems": 3,
        "uniqueItems": True,
    },
    "object": {
        "type": "object",
        "properties": {
            "must": {"type": "string"},
            "may": {"type": "integer"},
            "never": False,
        },
        "required": ["must", "extra"],
        "additionalProperties": {"type": "boolean"},
    },
    "any-of": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]},
    "one-of": {"oneOf": [{"type": "integer", "minimum": 50}, {"type": "string"}]},
    "all-of": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ],
        "unevaluatedProperties": False,
    },
    "ref-defs": {
        "type": "object",
        "properties": {"r": {"$ref": "#/$defs/Rating"}, "p": {"$ref": "#/$defs/Point"}},
        "required": ["r", "p"],
        "$defs": {
            "Rating": {"enum": ["lo", "hi"]},
            "Point": {
                "type": "object",
                "properties": {"x": {"type": "number"}},
                "additionalProperties": False,
            },
        },
    },
    "ref-recursive": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}},
        },
        "required": ["name", "children"],
    },
    "formats": {
        "type": "object",
        "properties": {
            "d": {"type": "string", "format": "date"},
            "dt": {"type": "string", "format": "date-time"},
            "t": {"type": "string", "format": "time"},
            "u": {"type": "string", "format": "uuid"},
            "e": {"type": "string", "format": "email"},
            "w": {"type": "string", "format": "uri"},
        },
    },
    "inferred": {"properties": {"n": {"minimum": 3}, "l": {"items": {}}, "s": {}}},
    "annotate": ANNOTATE,
}
DRAFT7_TUPLE = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "array",
    "items": [{"type": "boolean"}, {"definitions": {}, "$ref": "#/definitions/S"}],
    "additionalItems": False,
    "definitions": {"S": {"type": "string", "maxLength": 12}},
}


@pytest.mark.parametrize("sha", SHAS)
@pytest.mark.parametrize(
    "schema", [*KEYWORD_SCHEMAS.values(), DRAFT7_TUPLE], ids=[*KEYWORD_SCHEMAS, "draft7-tuple"]
)
def test_answer_is_valid_for_each_keyword(schema: dict[str, Any], sha: str | None) -> None:
    """The generated value validates against schemas using each supported keyword."""
    value = structured_answer(schema, sha, "Annotate this image.")
    validator(schema).validate(value)
    assert json.loads(answer_text(value)) == value


def test_formats_and_string_rules_are_exact() -> None:
    """Formats give valid dates, times, uuids, emails; strings follow "<sha12> <label>"."""
    sha = "3fa9c1d2e4b5"
    value = structured_answer(KEYWORD_SCHEMAS["formats"], sha, "")
    dt.date.fromisoformat(value["d"])
    assert dt.datetime.fromisoformat(value["dt"]).tzinfo is not None
    assert re.fullmatch(r"\d\d:\d\d:\d\dZ", value["t"])
    assert uuid.UUID(value["u"]).version == 4 and value["u"].endswith("-" + sha)
    assert value["e"] == f"{sha}.e@example.com" and value["w"] == f"https://example.com/{sha}/w"
    assert structured_answer({"type": "string"}, sha, "") == sha
    assert structured_answer({"type": "string", "maxLength": 5}, sha, "") == sha[:5]
    padded = structured_answer({"type": "string", "minLength": 20}, sha, "")
    assert padded == sha + "." * 8
    assert structured_answer({"type": "string", "pattern": "^[A-Z]+$"}, sha, "") == sha
    assert structured_answer({"type": "string"}, None, "") == "noimage"


def test_json_object_answer_names_image_and_prompt() -> None:
    """json_object (schema None): {"answer": "<sha12> <first 8 prompt words>"}."""
    prompt = "one two  three four five six seven eight nine"
    answer = structured_answer(None, "abcdefabcdef", prompt)
    assert answer == {"answer": "abcdefabcdef one two three four five six seven eight"}
    assert structured_answer(None, None, "") == {"answer": "noimage"}


def _seed(sha: str, path: str) -> int:
    """The documented seed, recomputed here on purpose (not `value_seed`)."""
    return int(hashlib.sha256((sha + path).encode()).hexdigest()[:16], 16)


@pytest.mark.parametrize("sha", ["3fa9c1d2e4b5", "0123456789ab", "noimage"])
def test_annotate_answer_follows_the_documented_rules(sha: str) -> None:
    """For data/schemas/annotate.json every value is what the module docstring says."""
    value = structured_answer(ANNOTATE, sha, "ignored")
    assert value_seed(sha, "/rating") == _seed(sha, "/rating")
    assert list(value) == ["tags", "objects", "short_caption", "contains_text", "rating"]
    n_tags = min(max(1 + _seed(sha, "/tags") % 3, 1), 6)
    assert value["tags"] == [f"{sha} tags {i}" for i in range(n_tags)]
    n_objects = min(1 + _seed(sha, "/objects") % 3, 6)
    assert value["objects"] == [
        {
            "name": f"{sha} objects {i} name"[:24],
            "count": 1 + _seed(sha, f"/objects/{i}/count") % 99,
        }
        for i in range(n_objects)
    ]
    assert value["short_caption"] == f"{sha} short_caption"
    assert value["contains_text"] == (_seed(sha, "/contains_text") % 2 == 1)
    enum = ANNOTATE["properties"]["rating"]["enum"]
    assert value["rating"] == enum[_seed(sha, "/rating") % len(enum)]


def test_answers_are_deterministic_and_per_image() -> None:
    """Same inputs give the same text; two images give different strings, each its own sha."""
    first = answer_text(structured_answer(ANNOTATE, "aaaaaaaaaaaa", "p"))
    assert first == answer_text(structured_answer(ANNOTATE, "aaaaaaaaaaaa", "p"))
    assert "\n" not in first and ", " not in first
    a = structured_answer(ANNOTATE, "aaaaaaaaaaaa", "p")
    b = structured_answer(ANNOTATE, "bbbbbbbbbbbb", "p")
    assert a["short_caption"].startswith("aaaaaaaaaaaa") and "bbbbbbbbbbbb" not in first
    assert b["short_caption"].startswith("bbbbbbbbbbbb")
    assert all(tag.startswith("bbbbbbbbbbbb ") for tag in b["tags"])


@pytest.mark.parametrize(
    "schema",
    [
        {"type": 5},
        {"type": []},
        {"properties": [], "required": "x"},
        {"enum": "x"},
        {"enum": []},
        {"$ref": "http://example.com/remote.json"},
        {"$ref": "#/$defs/missing"},
        {"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}},
        {"allOf": [{"$ref": "#"}]},
        {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]},
        {"type": "integer", "minimum": "3", "maximum": float("inf")},
        {"type": "array", "minItems": -1, "maxItems": "2", "items": 7},
        {"type": "string", "maxLength": -1, "minLength": 1e6},
        {"anyOf": []},
        {"type": "number", "minimum": 5, "maximum": 1},
    ],
)
def test_odd_schemas_never_raise(schema: dict[str, Any]) -> None:
    """Nonsense or impossible schemas still give an answer (a crash would be a 500)."""
    answer_text(structured_answer(schema, "3fa9c1d2e4b5", "x"))
    for kind in KINDS:
        bad_answer(kind, schema, "3fa9c1d2e4b5", "x")


# -- 2. bad answers (--fault-schema) --------------------------------------------------------------
def test_bad_answers_break_the_schema_as_documented() -> None:
    """prose and cut are not JSON; missing, type and enum are JSON failing that keyword."""
    check = validator(ANNOTATE)
    sha = "3fa9c1d2e4b5"
    good = answer_text(structured_answer(ANNOTATE, sha, "p"))
    expected = {"missing": "required", "type": "type", "enum": "enum"}
    for kind in KINDS:
        applied, text = bad_answer(kind, ANNOTATE, sha, "p")
        assert applied == kind
        if kind in ("prose", "cut"):
            assert not is_json(text)
            assert text == (
                "Sure! Here is the JSON: " + good if kind == "prose" else good[: len(good) // 2]
            )
            continue
        errors = list(check.iter_errors(json.loads(text)))
        assert [e.validator for e in errors] == [expected[kind]], kind


def test_bad_answer_fallbacks() -> None:
    """Kinds that do not fit the schema become another kind, still a bad answer."""
    assert bad_answer("missing", {"type": "integer"}, "a" * 12, "")[0] == "type"
    assert bad_answer("enum", {"type": "object", "properties": {}}, "a" * 12, "")[0] == "type"
    assert bad_answer("type", {}, "a" * 12, "") == (
        "prose",
        'Sure! Here is the JSON: "aaaaaaaaaaaa"',
    )
    assert bad_answer("cut", {"const": 12345}, "a" * 12, "")[0] == "prose"
    kind, text = bad_answer("enum", None, "a" * 12, "hi")
    assert kind == "type" and isinstance(json.loads(text), list)


# -- 3. over loopback -----------------------------------------------------------------------------
def test_json_schema_answer_over_http(sim: SimServer, client: httpx.Client) -> None:
    """Each image gets its own schema-valid answer; tokens = ceil(utf-8 bytes / 4)."""
    check = validator(ANNOTATE)
    for color in ("red", "blue"):
        raw = jpeg(color)
        r = client.post(
            "/chat/completions", json=chat_body(raw, response_format=schema_format(ANNOTATE))
        )
        assert r.status_code == 200
        choice = r.json()["choices"][0]
        content = choice["message"]["content"]
        assert choice["finish_reason"] == "stop"
        assert content == answer_text(structured_answer(ANNOTATE, sha12(raw), ""))
        check.validate(json.loads(content))
        assert json.loads(content)["short_caption"].startswith(sha12(raw))
        assert r.json()["usage"]["completion_tokens"] == math.ceil(len(content.encode()) / 4)
    assert sim.stats()["completed"] == 2 and sim.stats()["faults"] == {}


def test_json_object_and_text_formats(client: httpx.Client) -> None:
    """json_object gives a JSON object; type text gives the usual free-text caption."""
    raw = jpeg("green")
    r = client.post(
        "/chat/completions", json=chat_body(raw, response_format={"type": "json_object"})
    )
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert answer == {"answer": f"{sha12(raw)} Annotate this image."}
    r = client.post("/chat/completions", json=chat_body(raw, response_format={"type": "text"}))
    assert "simulated caption" in r.json()["choices"][0]["message"]["content"]


def test_truncation_at_max_tokens_cuts_on_a_character_boundary(client: httpx.Client) -> None:
    """Past max_tokens the JSON is cut at max_tokens*4 bytes (whole characters), "length"."""
    schema = {"type": "object", "properties": {"ab": {"const": "é" * 50}}}
    r = client.post(
        "/chat/completions", json=chat_body(response_format=schema_format(schema), max_tokens=5)
    )
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == '{"ab":"' + "é" * 6  # 19 of the 20 bytes allowed
    assert r.json()["usage"]["completion_tokens"] == 5
    full = answer_text(structured_answer(ANNOTATE, None, ""))
    body = chat_body(response_format=schema_format(ANNOTATE), max_tokens=10)
    content = client.post("/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert content == full[:40] and not is_json(content)


def test_truncation_at_the_context_room() -> None:
    """prompt + answer beyond max_model_len: cut at the room left, finish_reason "length"."""
    body = chat_body(jpeg("red"), response_format=schema_format(ANNOTATE), max_tokens=200)
    prompt = parse_chat(json.dumps(body).encode(), MODEL, 100_000).prompt_tokens
    with SimServer(SimConfig(max_model_len=prompt + 7)) as sim, httpx.Client() as client:
        r = client.post(f"{sim.base_url}/chat/completions", json=body)
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    full = answer_text(structured_answer(ANNOTATE, sha12(jpeg("red")), ""))
    assert choice["message"]["content"] == full[:28]
    assert r.json()["usage"]["completion_tokens"] == 7


@pytest.mark.parametrize("max_tokens", [512, 9])
def test_streaming_sends_the_same_text(client: httpx.Client, max_tokens: int) -> None:
    """Streamed deltas concatenate to the non-streamed JSON text, with the same usage."""
    raw = jpeg("white")
    body = chat_body(raw, response_format=schema_format(ANNOTATE), max_tokens=max_tokens)
    plain = client.post("/chat/completions", json=body).json()
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    r = client.post("/chat/completions", json=stream_body)
    assert r.headers["content-type"].startswith("text/event-stream")
    deltas, reasons, usages = sse_contents(r.text)
    assert "".join(deltas) == plain["choices"][0]["message"]["content"]
    assert len(deltas) > 1 and all(deltas)
    assert reasons[-1] == plain["choices"][0]["finish_reason"] and set(reasons[:-1]) == {None}
    assert usages[-1]["completion_tokens"] == plain["usage"]["completion_tokens"]


def test_fault_schema_gives_each_kind_of_bad_answer() -> None:
    """--fault-schema 1.0: every structured answer is bad, the five kinds in turn; plain
    requests are untouched; /sim/stats counts them."""
    check = validator(ANNOTATE)
    raw = jpeg("red")
    seen: list[str] = []
    with (
        SimServer(SimConfig(faults=FaultConfig(schema=1.0))) as sim,
        httpx.Client(base_url=sim.base_url, timeout=5) as client,
    ):
        for index in range(10):
            body = chat_body(raw, response_format=schema_format(ANNOTATE), stream=index % 3 == 2)
            r = client.post("/chat/completions", json=body)
            assert r.status_code == 200
            if body["stream"]:
                deltas, reasons, _ = sse_contents(r.text)
                text, reason = "".join(deltas), reasons[-1]
            else:
                choice = r.json()["choices"][0]
                text, reason = choice["message"]["content"], choice["finish_reason"]
            assert reason == "stop"
            if not is_json(text):
                seen.append("prose" if text.startswith("Sure!") else "cut")
            else:
                errors = list(check.iter_errors(json.loads(text)))
                assert len(errors) == 1
                seen.append(
                    {"required": "missing", "type": "type", "enum": "enum"}[errors[0].validator]
                )
        plain = client.post("/chat/completions", json=chat_body(raw)).json()
        assert "simulated caption" in plain["choices"][0]["message"]["content"]
        stats = sim.stats()
    assert seen == [*KINDS, *KINDS]
    assert stats["faults"] == {"schema": 10}
    assert stats["schema_faults"] == dict.fromkeys(KINDS, 2)


def test_structured_outputs_off_rejects_response_format() -> None:
    """--structured-outputs off: json_schema and json_object get 400 naming response_format."""
    with (
        SimServer(SimConfig(structured_outputs=False)) as sim,
        httpx.Client(base_url=sim.base_url, timeout=5) as client,
    ):
        for rf in (schema_format(ANNOTATE), {"type": "json_object"}):
            r = client.post("/chat/completions", json=chat_body(response_format=rf))
            assert r.status_code == 400
            assert r.json() == {
                "error": {
                    "message": "response_format is not supported by this server",
                    "type": "BadRequestError",
                    "param": "response_format",
                    "code": 400,
                }
            }
        r = client.post("/chat/completions", json=chat_body(response_format={"type": "text"}))
        assert r.status_code == 200
        assert sim.stats()["errors"] == {"400": 2}


def test_cli_flags_reach_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    """--fault-schema and --structured-outputs set FaultConfig.schema / structured_outputs."""
    parser = argparse.ArgumentParser(prog="caption sim")
    add_arguments(parser)
    cfg = config_from_args(
        parser.parse_args(["--fault-schema", "0.25", "--structured-outputs", "off"])
    )
    assert cfg.faults.schema == 0.25 and cfg.structured_outputs is False
    default = config_from_args(parser.parse_args([]))
    assert default.faults.schema == 0.0 and default.structured_outputs is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--structured-outputs", "maybe"])
    assert "expected on or off" in capsys.readouterr().err
    with pytest.raises(ValueError, match="schema"):
        FaultConfig(schema=1.5)
    help_text = parser.format_help()
    assert "--fault-schema" in help_text and "--structured-outputs" in help_text


# Bodies from vLLM 0.32.0 itself (its ChatCompletionRequest validators and validation handler,
# run on these inputs).
def _bad(message: str, param: str | None, kind: str = "BadRequestError") -> dict[str, Any]:
    """An error body; a `kind` of "Bad Request" (pydantic's) takes `param` after the field."""
    if kind == "Bad Request" and param is not None:
        param = "body.response_format" + param
    return {"error": {"message": message, "type": kind, "param": param, "code": 400}}


def _error(kind: str, field: str, msg: str, value: str, ctx: str = "") -> str:
    """One error line of vLLM's validation message."""
    tail = f", 'ctx': {ctx}" if ctx else ""
    return f"{{'type': '{kind}', 'loc': 'body.response_format{field}', 'msg': {msg}, " \
        f"'input': '{value}'{tail}}}"  # fmt: skip


def _union(first: str, n_items: int, type_input: str | None) -> str:
    """vLLM's message for a response_format that fits no branch of its union: the errors of
    ResponseFormat (`first`), StructuralTagResponseFormat and the legacy structural tag."""
    items = f"<dict of {n_items} items>"
    if type_input is None:
        tag = _error("missing", ".type", "'Field required'", items)
    else:
        expected = "\"'structural_tag'\""
        msg = "\"Input should be 'structural_tag'\""
        tag = _error("literal_error", ".type", msg, type_input, f"{{'expected': {expected}}}")
    lines = [first, tag, _error("missing", ".format", "'Field required'", items), tag]
    lines += [_error("missing", f".{key}", "'Field required'", items) for key in _LEGACY]
    return f"{len(lines)} validation errors:" + "".join(f"\n  {line}" for line in lines)


_LEGACY = ("structures", "triggers")
NONE_SPECIFIED = (
    "You must use one kind of structured outputs constraint but none are specified: {'json': "
    "None, 'regex': None, 'choice': None, 'grammar': None, 'json_object': None, "
    "'disable_any_whitespace': False, 'disable_additional_properties': False, "
    "'whitespace_pattern': None, 'structural_tag': None, '_backend': None, '_backend_was_auto': "
    "False}"
)
MISSING_JSON_SCHEMA = (
    "When response_format type is 'json_schema', the 'json_schema' field must be provided. "
    "(parameter=response_format)"
)
_TYPES = "\"'text', 'json_object' or 'json_schema'\""
LITERAL = _error(
    "literal_error", ".type", "\"Input should be 'text', 'json_object' or 'json_schema'\"", "xml",
    f"{{'expected': {_TYPES}}}",
)  # fmt: skip
NO_TYPE = _error("missing", ".type", "'Field required'", "<dict of 0 items>")
NO_NAME = _error("missing", ".json_schema.name", "'Field required'", "<dict of 1 items>")
NOT_DICT = _error("dict_type", ".json_schema.schema", "'Input should be a valid dictionary'", "no")
NOT_OBJECT = "3 validation errors:" + "".join(
    "\n  "
    + _error(
        "model_type",
        "",
        f"'Input should be a valid dictionary or instance of {cls}'",
        "json",
        f"{{'class_name': '{cls}'}}",
    )
    for cls in (
        "ResponseFormat",
        "StructuralTagResponseFormat",
        "LegacyStructuralTagResponseFormat",
    )
)
_SCHEMA_X = {"name": "x", "schema": "no"}
MALFORMED: dict[str, tuple[Any, dict[str, Any]]] = {
    "no-json-schema": ({"type": "json_schema"}, _bad(MISSING_JSON_SCHEMA, "response_format")),
    "null-json-schema": (
        {"type": "json_schema", "json_schema": None},
        _bad(MISSING_JSON_SCHEMA, "response_format"),
    ),
    "no-schema": (
        {"type": "json_schema", "json_schema": {"name": "x"}},
        _bad(NONE_SPECIFIED, None),
    ),
    "unknown-type": ({"type": "xml"}, _bad(_union(LITERAL, 1, "xml"), ".type", "Bad Request")),
    "no-type": ({}, _bad(_union(NO_TYPE, 0, None), ".type", "Bad Request")),
    "no-name": (
        {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        _bad(_union(NO_NAME, 2, "json_schema"), ".json_schema.name", "Bad Request"),
    ),
    "schema-not-an-object": (
        {"type": "json_schema", "json_schema": _SCHEMA_X},
        _bad(_union(NOT_DICT, 2, "json_schema"), ".json_schema.schema", "Bad Request"),
    ),
    "not-an-object": ("json", _bad(NOT_OBJECT, "", "Bad Request")),
}


@pytest.mark.parametrize(("rf", "expected"), MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_response_format_gets_vllms_400(
    sim: SimServer, client: httpx.Client, rf: Any, expected: dict[str, Any]
) -> None:
    """A malformed response_format gets vLLM 0.32.0's status and error body."""
    r = client.post("/chat/completions", json=chat_body(jpeg("red"), response_format=rf))
    assert r.status_code == 400
    assert r.json() == expected
    assert sim.stats()["errors"] == {"400": 1}

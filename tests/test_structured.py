"""Structured answers: schema -> typed columns, answer -> validated column values (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.errors import ConfigError
from pipeline.schema import COLUMNS
from pipeline.structured import (
    AnswerCheck,
    SchemaViolation,
    check_schema,
    columns_of,
    merge_columns,
    response_format,
)

ANNOTATE = json.loads(
    (Path(__file__).parents[1] / "data" / "schemas" / "annotate.json").read_text("utf-8")
)
GOOD = {
    "tags": ["cat", "sofa"],
    "objects": [{"name": "cat", "count": 1}],
    "short_caption": "A cat on a sofa.",
    "contains_text": False,
    "rating": "good",
}


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


class TestColumns:
    @pytest.mark.parametrize(
        ("node", "expected"),
        [
            ({"type": "string"}, pa.string()),
            ({"type": "integer"}, pa.int64()),
            ({"type": "number"}, pa.float64()),
            ({"type": "boolean"}, pa.bool_()),
            ({"enum": ["a", "b"]}, pa.string()),
            ({"type": "string", "enum": ["a", "b"]}, pa.string()),
            ({"enum": [1, 2, 3]}, pa.int64()),
            ({"enum": [1, 2.5]}, pa.float64()),
            ({"const": True}, pa.bool_()),
            ({"type": ["string", "null"]}, pa.string()),
            ({"type": ["integer", "number"]}, pa.float64()),
            ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, pa.int64()),
            ({"type": "array", "items": {"type": "string"}}, pa.list_(pa.string())),
            (
                {"type": "array", "items": obj(n={"type": "string"}, c={"type": "integer"})},
                pa.list_(pa.struct([("n", pa.string()), ("c", pa.int64())])),
            ),
            (obj(a=obj(b={"type": "boolean"})), pa.struct([("a", pa.struct([("b", pa.bool_())]))])),
        ],
    )
    def test_json_types_map_to_arrow_types(
        self, node: dict[str, Any], expected: pa.DataType
    ) -> None:
        """Each JSON Schema type becomes the contract's Arrow type, nested the same way."""
        ((name, col),) = columns_of(obj(x=node))
        assert name == "x"
        assert col.type == expected

    @pytest.mark.parametrize(
        "node",
        [
            {"type": "object"},  # free-form: no fixed fields
            {"type": "array"},  # no items schema
            {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "string"}},
            {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            {"type": ["string", "integer"]},
            {"enum": ["a", 1]},
            {},
        ],
    )
    def test_no_single_type_becomes_json_text(self, node: dict[str, Any]) -> None:
        """A property without one Arrow type is a string column holding its JSON text."""
        ((_, col),) = columns_of(obj(x=node))
        assert (col.kind, col.type) == ("json", pa.string())

    def test_local_refs_are_followed_and_recursion_is_json(self) -> None:
        """$ref to $defs is resolved; a recursive one falls back to JSON text."""
        schema = {
            "$defs": {
                "pt": obj(x={"type": "number"}, y={"type": "number"}),
                "tree": obj(kids={"type": "array", "items": {"$ref": "#/$defs/tree"}}),
            },
            **obj(p={"$ref": "#/$defs/pt"}, t={"$ref": "#/$defs/tree"}),
        }
        cols = dict(columns_of(schema))
        assert cols["p"].type == pa.struct([("x", pa.float64()), ("y", pa.float64())])
        assert cols["t"].type == pa.struct([("kids", pa.list_(pa.string()))])

    def test_annotate_schema_columns(self) -> None:
        """The example schema's columns, in the schema's order."""
        cols = [(n, c.type) for n, c in check_schema(ANNOTATE, "prompt #1")]
        assert cols == [
            ("tags", pa.list_(pa.string())),
            ("objects", pa.list_(pa.struct([("name", pa.string()), ("count", pa.int64())]))),
            ("short_caption", pa.string()),
            ("contains_text", pa.bool_()),
            ("rating", pa.string()),
        ]


class TestCheckSchema:
    @pytest.mark.parametrize(
        ("schema", "match"),
        [
            ([1, 2], "must be a JSON object"),
            ({"type": "objekt", "properties": {}}, "not a valid JSON Schema"),
            ({"type": "object", "properties": {"a": {"minimum": "x"}}}, r"\$.properties.a"),
            ({"type": "string"}, "describe an object with properties"),
            ({"type": "object"}, "describe an object with properties"),
        ],
    )
    def test_bad_schemas_are_config_errors(self, schema: Any, match: str) -> None:
        """A schema that is not valid, or not an object with properties, stops the run."""
        with pytest.raises(ConfigError, match=match):
            check_schema(schema, "prompt #1 (p)")


class TestAnswerCheck:
    def test_valid_answer_gives_column_values(self) -> None:
        """A valid answer's properties come back as the columns' Python values."""
        assert AnswerCheck(ANNOTATE).values(json.dumps(GOOD), "stop") == GOOD

    def test_values_build_an_arrow_table(self) -> None:
        """The values fit the Arrow types the columns declare."""
        check = AnswerCheck(ANNOTATE)
        schema = pa.schema([(n, c.type) for n, c in check.columns])
        table = pa.Table.from_pylist([check.values(json.dumps(GOOD), "stop")], schema=schema)
        assert table.to_pylist() == [GOOD]

    @pytest.mark.parametrize(
        ("answer", "finish", "message"),
        [
            ("Sure! {", "stop", r"^not JSON: Expecting value"),
            ('{"tags": ["a", ', "length", r"^the answer was cut off at max_tokens"),
            (
                json.dumps({**GOOD, "objects": [{"name": "cat", "count": 0}]}),
                "stop",
                r"^\$\.objects\[0\]\.count: 0 is less than the minimum of 1$",
            ),
            (
                json.dumps({k: v for k, v in GOOD.items() if k != "rating"}),
                "stop",
                r'^\$: "rating" is a required property$',
            ),
            (
                json.dumps({**GOOD, "rating": "superb"}),
                "stop",
                r'^\$\.rating: "superb" is not one of',
            ),
            (
                json.dumps({**GOOD, "contains_text": "no"}),
                "stop",
                r'^\$\.contains_text: "no" is not of type "boolean"',
            ),
            (json.dumps({**GOOD, "extra": 1}), "stop", r"^\$: Additional properties"),
            ("[1, 2]", "stop", r'^\$: \[1,2\] is not of type "object"'),
        ],
    )
    def test_bad_answers_say_why_with_the_path(
        self, answer: str, finish: str, message: str
    ) -> None:
        """Not JSON, cut off, or breaking the schema: the validator's message with the JSON path."""
        with pytest.raises(SchemaViolation, match=message):
            AnswerCheck(ANNOTATE).values(answer, finish)

    def test_integral_float_fits_an_integer_column(self) -> None:
        """JSON Schema counts 2.0 as an integer; its column gets the int 2."""
        check = AnswerCheck(obj(n={"type": "integer"}))
        assert check.values('{"n": 2.0}', "stop") == {"n": 2}

    def test_integer_beyond_int64_is_a_violation(self) -> None:
        """A valid integer that no int64 column can hold fails instead of breaking the write."""
        with pytest.raises(SchemaViolation, match=r"\$\.n: .* does not fit the int64 column"):
            AnswerCheck(obj(n={"type": "integer"})).values('{"n": 1e30}', "stop")

    def test_any_of_reports_the_deepest_error(self) -> None:
        """An anyOf failure names the deepest sub-error, not "not valid under any of"."""
        point = obj(lat={"type": "number", "maximum": 90})
        schema = obj(where={"anyOf": [point, {"type": "null"}]})
        with pytest.raises(SchemaViolation, match=r"^\$\.where\.lat: 100 is greater than the max"):
            AnswerCheck(schema).values('{"where": {"lat": 100}}', "stop")

    def test_formats_are_asserted_and_refs_stay_offline(self) -> None:
        """A format is checked; a remote $ref is never fetched: the schema is refused."""
        check = AnswerCheck(obj(day={"type": "string", "format": "date"}))
        with pytest.raises(SchemaViolation, match=r"^\$\.day: .*date"):
            check.values('{"day": "yesterday"}', "stop")
        with pytest.raises(ConfigError, match="not a valid JSON Schema"):
            check_schema(obj(a={"$ref": "http://127.0.0.1:9/x.json"}), "p")

    def test_json_text_columns_and_missing_optional_properties(self) -> None:
        """A free-form property is stored as JSON text; an absent optional one is null."""
        check = AnswerCheck(obj(meta={"type": "object"}, note={"type": "string"}))
        assert check.values('{"meta": {"a": [1]}}', "stop") == {"meta": '{"a": [1]}', "note": None}


class TestMergeColumns:
    def test_same_property_same_type_is_one_column(self) -> None:
        """Two prompts may share a property of the same type: one column."""
        a = columns_of(obj(label={"type": "string"}, n={"type": "integer"}))
        b = columns_of(obj(label={"enum": ["x"]}))
        assert merge_columns([("a", a), ("b", b)], COLUMNS) == (
            ("label", pa.string()),
            ("n", pa.int64()),
        )

    def test_type_clash_names_both_prompts(self) -> None:
        """The same property typed differently by two prompts is a configuration error."""
        a = columns_of(obj(n={"type": "integer"}))
        b = columns_of(obj(n={"type": "number"}))
        with pytest.raises(
            ConfigError, match=r"'n' is int64 in prompt 'a' but double in prompt 'b'"
        ):
            merge_columns([("a", a), ("b", b)], COLUMNS)

    @pytest.mark.parametrize("name", ["status", "caption", "key", "image_path"])
    def test_builtin_names_are_refused(self, name: str) -> None:
        """A property named like a built-in column is a configuration error."""
        with pytest.raises(ConfigError, match=f"{name!r} has the name of a built-in"):
            merge_columns([("p", columns_of(obj(**{name: {"type": "string"}})))], COLUMNS)


def test_response_format_shape() -> None:
    """The request carries OpenAI's json_schema response_format, named after the prompt."""
    assert response_format("tags", {"type": "object"}) == {
        "type": "json_schema",
        "json_schema": {"name": "tags", "schema": {"type": "object"}, "strict": True},
    }

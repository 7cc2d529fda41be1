"""Structured answers: a prompt's JSON Schema -> typed output columns; an answer -> their values.

Pure, no IO. A schema'd prompt asks the server for JSON that follows its schema
(``response_format``); each top-level property of the schema becomes an output column of that
name::

    string, enum/const of strings   -> string        integer (enum of integers) -> int64
    number                          -> float64       boolean                     -> bool
    array with one "items" schema   -> list<item>    object with "properties"    -> struct
    ["T", "null"], anyOf/oneOf whose branches map to one type -> that type (nullable)

Anything else (a free-form object, an array without one items schema, a union of different
types, a recursive ``$ref``) becomes a string column holding the value's JSON text, so no
answer is ever lost to a type it cannot take. ``AnswerCheck`` parses one answer, validates it
against the schema and hands on the column values, or raises ``SchemaViolation`` with the
validator's message and the JSON path.

The validator is ``jsonschema-rs``, chosen by measurement (bench/RESULTS.md, issue 12): ~1 us
per valid answer of the example schema against ~90 us for ``jsonschema`` (12% of a core at
1,000 answers/s; 53% with a 22-property schema) and 4 us for ``fastjsonschema``, which is a
draft-07 validator that silently accepts answers breaking 2020-12 keywords. Same messages as
``jsonschema``; every draft up to 2020-12; formats asserted; ``offline`` so a user's schema
cannot make the run fetch URLs or read local files through ``$ref``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import pyarrow as pa

from .errors import ConfigError

_INT64 = (-(2**63), 2**63 - 1)
_SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
}


class SchemaViolation(ValueError):
    """One answer is not JSON, was cut off, or does not follow the schema (message: why)."""


@dataclass(frozen=True, slots=True)
class Column:
    """How one JSON value becomes one Arrow value: its kind, type and (for list/struct) parts."""

    kind: str  # "string" | "integer" | "number" | "boolean" | "json" | "list" | "struct"
    type: pa.DataType
    item: Column | None = None  # for "list"
    fields: tuple[tuple[str, Column], ...] = ()  # for "struct"


def _json_column() -> Column:
    return Column("json", pa.string())


class _Mapper:
    """Walks one schema (resolving local ``$ref``) to its ``Column`` plan."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self._resolving: list[str] = []

    def resolve(self, node: Any) -> Any:
        ref = node.get("$ref") if isinstance(node, Mapping) else None
        if not isinstance(ref, str):
            return node
        if not ref.startswith("#"):
            return None  # remote refs: not followed here (the validator may still use them)
        target: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                return None
            target = target[part]
        return target

    def column(self, node: Any) -> Column:
        ref = node.get("$ref") if isinstance(node, Mapping) else None
        if isinstance(ref, str):
            if ref in self._resolving:
                return _json_column()  # recursive: no fixed Arrow type
            self._resolving.append(ref)
            try:
                target = self.resolve(node)
                return _json_column() if target is None else self.column(target)
            finally:
                self._resolving.pop()
        if not isinstance(node, Mapping):
            return _json_column()
        if "enum" in node or "const" in node:
            values = node["enum"] if "enum" in node else [node["const"]]
            return _column_of_values(values)
        types = node.get("type")
        if types is None:
            branches = node.get("anyOf", node.get("oneOf"))
            if isinstance(branches, list):
                return self._union(branches)
            all_of = node.get("allOf")
            if isinstance(all_of, list) and len(all_of) == 1:
                return self.column(all_of[0])
            return _json_column()
        names = [types] if isinstance(types, str) else list(types)
        names = [t for t in names if t != "null"]
        if names == ["integer", "number"] or names == ["number", "integer"]:
            return Column("number", pa.float64())
        if len(names) != 1:
            return _json_column()
        (name,) = names
        if name in _SCALARS:
            return Column(name, _SCALARS[name])
        if name == "array":
            items = node.get("items")
            if not isinstance(items, Mapping) or "prefixItems" in node:
                return _json_column()
            item = self.column(items)
            return Column("list", pa.list_(item.type), item=item)
        if name == "object":
            props = node.get("properties")
            if not isinstance(props, Mapping) or not props:
                return _json_column()  # free-form object: no fixed fields
            fields = tuple((str(k), self.column(v)) for k, v in props.items())
            return Column("struct", pa.struct([(k, c.type) for k, c in fields]), fields=fields)
        return _json_column()

    def _union(self, branches: list[Any]) -> Column:
        real = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
        columns = [self.column(b) for b in real]
        if columns and all(c == columns[0] for c in columns):
            return columns[0]
        return _json_column()


def _column_of_values(values: Any) -> Column:
    """An enum's (or const's) column: the one type all its values share, else JSON text."""
    vals = [v for v in values if v is not None] if isinstance(values, list) else []
    if vals and all(isinstance(v, str) for v in vals):
        return Column("string", pa.string())
    if vals and all(isinstance(v, bool) for v in vals):
        return Column("boolean", pa.bool_())
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return Column("integer", pa.int64())
    if vals and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        return Column("number", pa.float64())
    return _json_column()


def columns_of(schema: Mapping[str, Any]) -> tuple[tuple[str, Column], ...]:
    """The output columns of a schema: one per top-level property, in the schema's order."""
    mapper = _Mapper(schema)
    props = mapper.resolve(schema).get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return ()
    return tuple((str(name), mapper.column(node)) for name, node in props.items())


def check_schema(schema: Any, where: str) -> tuple[tuple[str, Column], ...]:
    """Raise ``ConfigError`` unless ``schema`` is a valid JSON Schema describing an object with
    properties (each becomes a column); return its columns."""
    if not isinstance(schema, Mapping):
        raise ConfigError(f"{where}: schema must be a JSON object (a JSON Schema)")
    try:
        _compile(schema)
    except jsonschema_rs.ValidationError as exc:
        path = _path(exc.instance_path)
        raise ConfigError(f"{where}: not a valid JSON Schema: {path}: {exc.message}") from None
    columns = columns_of(schema)
    if schema.get("type") != "object" or not columns:
        raise ConfigError(
            f'{where}: the schema must describe an object with properties ("type": "object", '
            '"properties": {...}): each top-level property becomes an output column'
        )
    return columns


def _compile(schema: Mapping[str, Any]) -> Any:
    """The schema's validator (its draft from ``$schema``, else 2020-12); raises
    ``jsonschema_rs.ValidationError`` for a schema that is not valid."""
    return jsonschema_rs.validator_for(dict(schema), validate_formats=True, offline=True)


def _deepest(error: Any) -> Any:
    """For an anyOf/oneOf failure, the sub-error deepest in the answer (what jsonschema's
    ``best_match`` reports): ``$.location.lat: 100 is greater than the maximum of 90`` says
    more than "not valid under any of the schemas listed"."""
    while context := getattr(error.kind, "context", None):
        sub = max((e for branch in context for e in branch), key=lambda e: len(e.instance_path))
        if len(sub.instance_path) <= len(error.instance_path):
            break
        error = sub
    return error


def _path(parts: Any) -> str:
    """``['objects', 0, 'count']`` -> ``$.objects[0].count`` (the JSONPath jsonschema prints)."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


class AnswerCheck:
    """One prompt's schema, compiled once: answer text -> column values, or ``SchemaViolation``."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._validator = _compile(schema)
        self.columns = columns_of(schema)

    def values(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        """The columns' values of one answer (``SchemaViolation`` says why there are none)."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            if finish_reason == "length":
                raise SchemaViolation(
                    f"the answer was cut off at max_tokens ({len(text)} characters, not "
                    "complete JSON); raise max_tokens"
                ) from None
            raise SchemaViolation(f"not JSON: {exc}") from None
        try:
            self._validator.validate(value)
        except jsonschema_rs.ValidationError as exc:
            error = _deepest(exc)
            raise SchemaViolation(f"{_path(error.instance_path)}: {error.message}") from None
        if not isinstance(value, dict):
            raise SchemaViolation(f"$: {_short(value)} is not an object")
        return {name: convert(value.get(name), col, f"$.{name}") for name, col in self.columns}


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def convert(value: Any, col: Column, path: str) -> Any:
    """A validated JSON value -> the Python value its Arrow column takes."""
    if value is None:
        return None
    kind = col.kind
    if kind == "json":
        return json.dumps(value, ensure_ascii=False)
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "integer" and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and _INT64[0] <= value <= _INT64[1]:
            return value
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number
    if kind == "list" and isinstance(value, list) and col.item is not None:
        return [convert(v, col.item, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "struct" and isinstance(value, dict):
        return {k: convert(value.get(k), c, f"{path}.{k}") for k, c in col.fields}
    raise SchemaViolation(f"{path}: {_short(value)} does not fit the {col.type} column")


def merge_columns(
    prompts: list[tuple[str, tuple[tuple[str, Column], ...]]], builtin: tuple[str, ...]
) -> tuple[tuple[str, pa.DataType], ...]:
    """The job's structured columns from each schema'd prompt's columns (by prompt name).

    A property named like a built-in column, or typed differently by two prompts, is a
    ``ConfigError`` naming both.
    """
    seen: dict[str, tuple[pa.DataType, str]] = {}
    for prompt, columns in prompts:
        for name, col in columns:
            if name in builtin:
                raise ConfigError(
                    f"prompt {prompt!r}: schema property {name!r} has the name of a built-in "
                    f"output column; rename the property (built-in: {', '.join(builtin)})"
                )
            if name in seen and seen[name][0] != col.type:
                other_type, other = seen[name]
                raise ConfigError(
                    f"schema property {name!r} is {other_type} in prompt {other!r} but "
                    f"{col.type} in prompt {prompt!r}: one column has one type; rename one"
                )
            seen.setdefault(name, (col.type, prompt))
    return tuple((name, t) for name, (t, _) in seen.items())


def response_format(name: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The request's ``response_format`` for a schema'd prompt (OpenAI's json_schema form)."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}

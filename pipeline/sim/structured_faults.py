"""Bad answers to structured-output requests: the ``--fault-schema`` fault. Pure.

In: a fault kind (the simulator takes `KINDS` in turn), the request's schema (None for
``json_object``), the image's sha12 and the prompt. Out: the kind applied and the answer text
(`bad_answer`); the good answer it breaks is `structured.structured_answer`'s. The kinds
alternate between text that is not JSON and JSON that breaks the schema:

- ``prose``: ``"Sure! Here is the JSON: " + <the good text>`` (not JSON).
- ``missing``: the first object found (breadth-first from the root) that holds a property its
  schema requires loses the first such property; else it becomes ``type``.
- ``cut``: the good text's first half (in characters; not JSON), although the answer still
  ends with finish_reason "stop"; ``prose`` when that half still parses (a bare number).
- ``type``: the first value below the root (breadth-first; else the root) whose schema
  declares ``type`` is replaced by the first of ``"<sha12> wrong type"``, 12345, true, [], {},
  null that the declared types do not allow; for json_object the answer is wrapped in an
  array. When nothing declares a type it becomes ``prose``.
- ``enum``: the first value found whose schema has ``enum`` becomes ``"<sha12> not in enum"``;
  else it becomes ``type``.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .structured import (
    NO_IMAGE,
    Schema,
    answer_text,
    item_schemas,
    resolve,
    structured_answer,
)

KINDS = ("prose", "missing", "cut", "type", "enum")
PROSE = "Sure! Here is the JSON: "


@dataclass(slots=True)
class _Spot:
    """One value inside an answer, where it sits and its (resolved) schema."""

    parent: dict[str, Any] | list[Any] | None
    key: Any
    value: Any
    schema: dict[str, Any]

    def replace(self, value: Any) -> None:
        assert self.parent is not None
        self.parent[self.key] = value


def bad_answer(
    kind: str, schema: Schema | None, image_sha12: str | None, prompt_text: str
) -> tuple[str, str]:
    """(the kind applied, the answer text) for fault `kind` (one of `KINDS`)."""
    sha12 = image_sha12 or NO_IMAGE
    good = structured_answer(schema, image_sha12, prompt_text)
    text = answer_text(good)
    if kind == "cut":
        half = text[: len(text) // 2]
        try:
            json.loads(half)
        except json.JSONDecodeError:
            return kind, half
        kind = "prose"
    if kind == "prose":
        return kind, PROSE + text
    value = copy.deepcopy(good)
    root: Schema = schema if schema is not None else {"type": "object"}
    spots = _spots(value, root)
    if kind == "missing" and _drop_required(spots):
        return kind, answer_text(value)
    if kind == "enum" and _leave_enum(spots, sha12):
        return kind, answer_text(value)
    if schema is None:
        return "type", answer_text([value])
    for spot in [*spots[1:], spots[0]]:
        wrong = _wrong_value(spot.schema, sha12)
        if wrong is not _NOTHING:
            if spot.parent is None:
                return "type", answer_text(wrong)
            spot.replace(wrong)
            return "type", answer_text(value)
    return "prose", PROSE + text


_NOTHING = object()


def _spots(value: Any, root: Schema) -> list[_Spot]:
    """Every value in the answer, breadth-first from the root, with its resolved schema."""
    out: list[_Spot] = []
    queue: deque[tuple[Any, Any, Any, Any]] = deque([(None, None, value, root)])
    while queue:
        parent, key, current, raw = queue.popleft()
        s = resolve(raw, root)
        out.append(_Spot(parent, key, current, s))
        if isinstance(current, dict):
            properties = s.get("properties")
            properties = properties if isinstance(properties, Mapping) else {}
            extra = s.get("additionalProperties")
            for name, child in current.items():
                queue.append((current, name, child, properties.get(name, extra)))
        elif isinstance(current, list):
            prefix, rest = item_schemas(s)
            for index, child in enumerate(current):
                queue.append(
                    (current, index, child, prefix[index] if index < len(prefix) else rest)
                )
    return out


def _drop_required(spots: list[_Spot]) -> bool:
    for spot in spots:
        required = spot.schema.get("required")
        if isinstance(spot.value, dict) and isinstance(required, list):
            for name in required:
                if isinstance(name, str) and name in spot.value:
                    del spot.value[name]
                    return True
    return False


def _leave_enum(spots: list[_Spot], sha12: str) -> bool:
    for spot in spots:
        enum = spot.schema.get("enum")
        if spot.parent is not None and isinstance(enum, list) and enum:
            outside = f"{sha12} not in enum"
            while outside in enum:
                outside += "!"
            spot.replace(outside)
            return True
    return False


def _wrong_value(schema: Mapping[str, Any], sha12: str) -> Any:
    """A value whose JSON type `schema` does not allow, or `_NOTHING` (no declared type)."""
    declared = schema.get("type")
    listed = declared if isinstance(declared, list) else [declared]
    allowed = {kind for kind in listed if isinstance(kind, str)}
    # in order of preference, each with the JSON Schema types that would accept it
    wrong: tuple[tuple[Any, set[str]], ...] = (
        (f"{sha12} wrong type", {"string"}),
        (12345, {"integer", "number"}),
        (True, {"boolean"}),
        ([], {"array"}),
        ({}, {"object"}),
        (None, {"null"}),
    )
    for value, accepted_by in wrong:
        if allowed and not accepted_by & allowed:
            return value
    return _NOTHING

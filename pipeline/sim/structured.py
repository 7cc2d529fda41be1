"""Schema-valid JSON answers for structured-output requests (``response_format``). Pure.

In: a JSON Schema (or None for ``{"type": "json_object"}``), the image's ``sha12`` and the
prompt text. Out: the answer value (`structured_answer`) and its text (`answer_text`, compact
one-line JSON, ``ensure_ascii=False``). ``sha12`` is ``sha256(decoded image bytes)
.hexdigest()[:12]`` of the request's first image, as in free-text captions, or ``"noimage"``.

The rules (tests of the pipeline rely on them). Each value has a *path*, its JSON Pointer in
the answer (RFC 6901: ``""`` is the root, then ``"/tags/0"``, ``"/objects/1/count"``), a
*label*, the path's tokens joined by spaces (``"objects 1 count"``), and a *seed*:

    seed = int(sha256((sha12 + path).encode()).hexdigest()[:16], 16)      # `value_seed`

- ``const`` → it; ``enum`` → ``enum[seed % len(enum)]`` (both before ``type``).
- string → ``f"{sha12} {label}"`` (``sha12`` alone at the root), cut to ``maxLength`` (so a
  prefix of sha12 when maxLength < 12), padded with ``"."`` to ``minLength``. Formats:
  ``date`` → 2000-01-01 + (seed % 10000) days; ``date-time`` → that date, ``"T"``, the time
  of day (seed // 10000) % 86400 seconds as ``HH:MM:SS``, ``"Z"``; ``time`` → that
  ``HH:MM:SSZ``; ``uuid`` → version-4 form from ``h = sha256((sha12 + path).encode())
  .hexdigest()``: ``h[0:8]-h[8:12]-4h[13:16]-Vh[17:20]-sha12`` (V = "89ab"[int(h[16], 16) % 4];
  the last group is ``h[20:32]`` when sha12 is not 12 hex digits); ``email`` →
  ``f"{sha12}.{slug}@example.com"`` (``f"{sha12}@example.com"`` at the root); ``uri`` →
  ``f"https://example.com/{sha12}/{slug}"``, where slug is the label with every run of
  characters other than ASCII letters and digits made one ``-``. ``pattern`` is NOT honoured.
- integer → ``lo + seed % (hi - lo + 1)`` over the inclusive range [lo, hi] given by
  minimum / maximum / exclusiveMinimum / exclusiveMaximum (draft-4 boolean forms too):
  unbounded [0, 99]; only lo: [lo, lo + 99]; only hi: [0, hi], or [hi - 99, hi] when hi < 0.
- number → ``lo + (hi - lo) * k / 1000`` with ``k = 1 + seed % 999``, rounded to 6 decimals
  unless that would reach a bound; lo and hi are the bounds as given (defaults as for
  integers); the value is strictly inside, so exclusive bounds hold; ``lo`` when lo >= hi.
- boolean → ``seed % 2 == 1``; null → null.
- array → ``clamp(1 + seed % 3, minItems, maxItems)`` items, item i at ``f"{path}/{i}"``
  from ``prefixItems[i]`` (or draft-7 tuple ``items``), else from ``items``; with prefix items
  the count is at least their number (exactly it when no further items are allowed), still at
  most maxItems. ``uniqueItems`` drops repeats (never below minItems).
- object → every property of ``properties`` in order, required and optional (a ``false``
  property schema is left out), then any ``required`` name not among them (its value from
  ``additionalProperties`` when that is a schema); never anything else.
- ``type`` lists (``["string", "null"]``): the first type that is not "null". No ``type``:
  properties/required → object; items/prefixItems/minItems/maxItems → array;
  minimum/maximum/exclusive* → number; otherwise string.
- ``$ref``: local JSON Pointers (``#/$defs/X``, ``#/definitions/X``, ``#``), sibling keywords
  merged in; ``allOf``: branches merged (``properties`` and ``required`` united, else the
  first wins); ``anyOf`` / ``oneOf``: the first branch, merged with the sibling keywords.
- From nesting depth 8 on (the root is depth 0) objects leave optional properties out and
  arrays get minItems items, so recursive schemas end.
- Not honoured: pattern, multipleOf, min/maxProperties, contains, not, if/then/else,
  dependent*, patternProperties, remote $ref.

``json_object`` (schema None): ``{"answer": f"{sha12} {the prompt's first 8 words}"}``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

NO_IMAGE = "noimage"
MAX_DEPTH = 8
PROMPT_WORDS = 8
_HARD_DEPTH = 64  # a schema with no finite instance (a required self-reference) ends here
_RESOLVE_STEPS = 256  # $ref / allOf / anyOf steps for one value's schema
_EPOCH = dt.date(2000, 1, 1)
_INFER = (
    (("properties", "required", "additionalProperties"), "object"),
    (("items", "prefixItems", "minItems", "maxItems"), "array"),
    (("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"), "number"),
)
Schema = Mapping[str, Any]


def value_seed(sha12: str, path: str) -> int:
    """The seed of the value at JSON Pointer `path` for image `sha12`."""
    return int(hashlib.sha256((sha12 + path).encode()).hexdigest()[:16], 16)


def structured_answer(schema: Schema | None, image_sha12: str | None, prompt_text: str) -> Any:
    """The answer value: valid against `schema`, or the json_object answer when it is None."""
    sha12 = image_sha12 or NO_IMAGE
    if schema is None:
        words = " ".join(prompt_text.split()[:PROMPT_WORDS])
        return {"answer": f"{sha12} {words}".rstrip()}
    return _Maker(schema, sha12).value(schema, (), 0)


def answer_text(value: Any) -> str:
    """The answer as a model would write it: compact one-line JSON, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def pointer(tokens: tuple[str, ...]) -> str:
    """The JSON Pointer (RFC 6901) of a path given as tokens."""
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def resolve(schema: Any, root: Schema) -> dict[str, Any]:
    """`schema` with $ref, allOf and anyOf/oneOf (first branch) folded in; never raises."""
    return _resolve(schema, root, [_RESOLVE_STEPS])


def _resolve(schema: Any, root: Schema, budget: list[int]) -> dict[str, Any]:
    """`resolve` within a step budget shared by the nested calls (self-references end)."""
    current: dict[str, Any] = dict(schema) if isinstance(schema, Mapping) else {}
    while budget[0] > 0:
        budget[0] -= 1
        ref = current.pop("$ref", None)
        if isinstance(ref, str):
            current = merge(_dict(_lookup(root, ref)), current)
            continue
        branches = current.pop("allOf", None)
        if isinstance(branches, list):
            for branch in branches:
                current = merge(current, _resolve(branch, root, budget))
            continue
        for key in ("anyOf", "oneOf"):
            options = current.pop(key, None)
            if isinstance(options, list) and options:
                current = merge(_resolve(options[0], root, budget), current)
                break
        else:
            return current
    for key in ("$ref", "allOf", "anyOf", "oneOf"):
        current.pop(key, None)
    return current


def merge(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """Two schemas as one: properties and required united, otherwise `first` wins."""
    out = dict(first)
    for key, value in second.items():
        if key == "properties" and isinstance(value, Mapping):
            properties = _dict(first.get(key))
            for name, sub in value.items():
                properties.setdefault(name, sub)
            out[key] = properties
        elif key == "required" and isinstance(value, list):
            out[key] = list(dict.fromkeys([*_list(first.get(key)), *value]))
        else:
            out.setdefault(key, value)
    return out


def type_of(schema: Schema) -> str:
    """The JSON type the answer uses for (resolved) `schema`."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return declared
    if isinstance(declared, list) and declared:
        others = [t for t in declared if t != "null" and isinstance(t, str)]
        return others[0] if others else "null"
    for keys, kind in _INFER:
        if any(key in schema for key in keys):
            return kind
    return "string"


class _Maker:
    """Builds one answer; holds the root schema (for $ref) and the image's sha12."""

    def __init__(self, root: Schema, sha12: str) -> None:
        self.root = root
        self.sha12 = sha12

    def value(self, schema: Any, path: tuple[str, ...], depth: int) -> Any:
        if depth > _HARD_DEPTH:
            return None
        s = resolve(schema, self.root)
        seed = value_seed(self.sha12, pointer(path))
        if "const" in s:
            return s["const"]
        enum = s.get("enum")
        if isinstance(enum, list) and enum:
            return enum[seed % len(enum)]
        kind = type_of(s)
        if kind == "object":
            return self.object(s, path, depth)
        if kind == "array":
            return self.array(s, path, depth, seed)
        if kind in ("integer", "number"):
            return _number(s, seed, integer=kind == "integer")
        if kind == "boolean":
            return seed % 2 == 1
        if kind == "null":
            return None
        return self.string(s, path, seed)

    def object(self, s: Schema, path: tuple[str, ...], depth: int) -> dict[str, Any]:
        required = [name for name in _list(s.get("required")) if isinstance(name, str)]
        out: dict[str, Any] = {}
        for name, sub in _dict(s.get("properties")).items():
            if sub is False or (depth >= MAX_DEPTH and name not in required):
                continue
            out[name] = self.value(sub, (*path, name), depth + 1)
        extra = s.get("additionalProperties")
        for name in required:
            if name not in out:
                out[name] = self.value(_dict(extra), (*path, name), depth + 1)
        return out

    def array(self, s: Schema, path: tuple[str, ...], depth: int, seed: int) -> list[Any]:
        prefix, rest = item_schemas(s)
        low = max(0, _int(s.get("minItems")) or 0)
        high = _int(s.get("maxItems"))
        count = low if depth >= MAX_DEPTH else max(low, 1 + seed % 3)
        if prefix:
            count = len(prefix) if rest is False else max(count, len(prefix))
        if high is not None:
            count = min(count, high)
        items = [
            self.value(prefix[i] if i < len(prefix) else rest, (*path, str(i)), depth + 1)
            for i in range(count)
        ]
        if s.get("uniqueItems") is True:
            unique: list[Any] = []
            for index, item in enumerate(items):
                if item not in unique or len(items) - index <= low - len(unique):
                    unique.append(item)
            items = unique
        return items

    def string(self, s: Schema, path: tuple[str, ...], seed: int) -> str:
        sha12 = self.sha12
        label = " ".join(path)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
        fmt = s.get("format")
        days, seconds = seed % 10000, (seed // 10000) % 86400
        clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"
        if fmt == "date":
            return (_EPOCH + dt.timedelta(days=days)).isoformat()
        if fmt == "date-time":
            return f"{(_EPOCH + dt.timedelta(days=days)).isoformat()}T{clock}"
        if fmt == "time":
            return clock
        if fmt == "uuid":
            h = hashlib.sha256((sha12 + pointer(path)).encode()).hexdigest()
            tail = sha12 if re.fullmatch(r"[0-9a-f]{12}", sha12) else h[20:32]
            return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{tail}"
        if fmt == "email":
            return f"{sha12}.{slug}@example.com" if slug else f"{sha12}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/{sha12}/{slug}".rstrip("/")
        text = f"{sha12} {label}".rstrip()
        longest = _int(s.get("maxLength"))
        if longest is not None and longest >= 0:
            text = text[:longest]
        shortest = _int(s.get("minLength")) or 0
        return text.ljust(shortest, ".")


def item_schemas(s: Schema) -> tuple[list[Any], Any]:
    """(prefix item schemas, schema of further items; False when none are allowed)."""
    items = s.get("items")
    if isinstance(items, list):  # draft 7 tuple form
        return items, s.get("additionalItems", {})
    prefix = _list(s.get("prefixItems"))
    return prefix, {} if items is None else items


def _number(s: Schema, seed: int, *, integer: bool) -> int | float:
    low_incl, high_incl = _num(s.get("minimum")), _num(s.get("maximum"))
    low_excl, high_excl = _num(s.get("exclusiveMinimum")), _num(s.get("exclusiveMaximum"))
    if s.get("exclusiveMinimum") is True:  # draft 4: a flag on minimum
        low_incl, low_excl = None, low_incl
    if s.get("exclusiveMaximum") is True:
        high_incl, high_excl = None, high_incl
    lows: list[float]
    highs: list[float]
    if integer:
        lows = [math.ceil(low_incl)] if low_incl is not None else []
        lows += [math.floor(low_excl) + 1] if low_excl is not None else []
        highs = [math.floor(high_incl)] if high_incl is not None else []
        highs += [math.ceil(high_excl) - 1] if high_excl is not None else []
    else:
        lows = [v for v in (low_incl, low_excl) if v is not None]
        highs = [v for v in (high_incl, high_excl) if v is not None]
    low: float | None = max(lows) if lows else None
    high: float | None = min(highs) if highs else None
    if low is None:
        low = 0 if high is None or high >= 0 else high - 99
    if high is None:
        high = low + 99
    if integer:
        return int(low) + seed % max(1, int(high) - int(low) + 1)
    if high <= low:
        return low
    exact = low + (high - low) * (1 + seed % 999) / 1000
    rounded = round(exact, 6)
    return rounded if low < rounded < high else exact


def _lookup(root: Schema, ref: str) -> Any:
    """The schema a local `$ref` points at ({} when it is remote or dangling)."""
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for token in unquote(ref[1:]).split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return {}
    return node


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value

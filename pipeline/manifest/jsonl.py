"""JSONL: a manifest file, one JSON object per line -> one ``Entry`` per line.

``_sample_jsonl`` takes the path and the keep columns and hands on, from the first
``INFER_LINES`` records, whether there is an ``id`` key and each keep column's output type
(``_infer``). ``_jsonl_entries`` takes a JSONL ``Manifest`` and hands on its lines as entries,
fitting each kept value to its column's type (``_FIT``): one that does not fit is a row error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from .common import Entry, Manifest, ManifestError, _bind, _hint, _json, _lines, _open, text_of

log = logging.getLogger(__package__)  # "pipeline.manifest", as before the split

INFER_LINES = 1000  # JSONL keep columns take their type from this many first records
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _records(path: Path | str, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) of each non-blank line."""
    for number, text in enumerate(_lines(path, f), 1):
        if not text or text.isspace():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(path, f"not JSON: {exc.msg} (column {exc.colno})", number) from None
        except (ValueError, RecursionError) as exc:  # e.g. an integer of 5,000 digits
            raise ManifestError(path, f"not JSON: {exc}", number) from None
        if not isinstance(value, dict):
            kind = _JSON_KINDS.get(type(value), "value")
            raise ManifestError(path, f"not a JSON object but {kind}", number)
        yield number, value


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number"}
_JSON_KINDS |= {bool: "true/false", type(None): "null"}


def _sample_jsonl(path: Path | str, keep: tuple[str, ...]) -> tuple[bool, dict[str, pa.DataType]]:
    """Whether the first ``INFER_LINES`` records have an id, and each keep column's type."""
    seen: dict[str, list[Any]] = {name: [] for name in keep}
    keys: set[str] = set()
    count = 0
    with _open(path) as f:
        for _, record in _records(path, f):
            keys.update(record)
            for name, values in seen.items():
                if record.get(name) is not None:
                    values.append(record[name])
            count += 1
            if count == INFER_LINES:
                break
    if count and "image" not in keys:
        found = tuple(sorted(keys)[:30])
        raise ManifestError(
            path, f"no 'image' key in the first {count:,} lines{_hint('image', found)}"
        )
    for name in keep:
        if name not in keys and count:
            log.warning("keep column %r is in none of the first %d lines of %s", name, count, path)
    return "id" in keys, {name: _infer(values) for name, values in seen.items()}


def _infer(values: list[Any]) -> pa.DataType:
    """All bool -> bool; all int64 -> int64; int/float -> float64; else (or none) -> string."""
    if not values:
        return pa.string()
    if all(isinstance(v, bool) for v in values):
        return pa.bool_()
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return pa.string()
    ints = [v for v in values if isinstance(v, int)]
    if any(not _INT64[0] <= v <= _INT64[1] for v in ints):
        return pa.string()  # a float64 would round them
    return pa.int64() if len(ints) == len(values) else pa.float64()


def _to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise ValueError


def _to_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]:
        return value
    raise ValueError


def _to_float(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)  # OverflowError (a ValueError's sibling) past 1e308
    raise ValueError


def _to_str(value: Any) -> Any:
    return value if isinstance(value, str) else _json(value)


_FIT: dict[str, Callable[[Any], Any]] = {
    "bool": _to_bool,
    "int64": _to_int,
    "double": _to_float,
    "string": _to_str,
}


def _jsonl_entries(m: Manifest) -> Iterator[Entry]:
    fits = [(name, _FIT[str(m.keep_types[name])]) for name in m.keep]
    wanted = m.variables
    entry = _bind(m, "line")
    with _open(m.path) as f:
        for line, record in _records(m.path, f):
            variables = {
                key: text
                for key, value in record.items()
                if key != "image"
                and (wanted is None or key in wanted)
                and (text := text_of(value)) is not None
            }
            kept: dict[str, Any] = {}
            error = None
            for name, fit in fits:
                value = record.get(name)
                try:
                    kept[name] = None if value is None else fit(value)
                except (ValueError, OverflowError):
                    kept[name] = None
                    error = error or (
                        f"manifest line {line}: keep column {name!r} holds {_short(value)}, "
                        f"which does not fit its type {m.keep_types[name]} (from the first "
                        f"{INFER_LINES:,} lines)"
                    )
            image = record.get("image")
            if image is not None and not isinstance(image, str):
                error = f"manifest line {line}: image is a {type(image).__name__}, not a path"
                image = None
            ident = text_of(record.get("id"))
            yield entry(line, ident, image, variables, kept, error)


def _short(value: Any) -> str:
    text = _json(value)
    return text if len(text) <= 60 else text[:57] + "..."

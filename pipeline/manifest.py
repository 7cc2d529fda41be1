"""Read a manifest lazily: a CSV, JSONL or Parquet file -> ``Entry`` records, one per row.

A manifest lists a job's images instead of a folder walk. Column ``image`` holds a path
(relative to the manifest's folder, or absolute; ``~`` expanded) or, in Parquet only, the image
bytes: a binary column, or the ``{bytes, path}`` struct that Hugging Face ``datasets`` writes
for its Image feature (null bytes with a path: a file; both null: no image).

- Identity: ``id`` as text when present and non-empty; else the path as written (POSIX,
  normalised: ``./a/b.jpg`` -> ``a/b.jpg``); else the struct's ``path``; else
  ``<manifest file name>#<line>``. Lines and Parquet rows count from 1.
- Variables: every column but ``image`` (``id`` included; Parquet columns holding bytes
  excluded), as text (``text_of``). Null, a missing key or an empty CSV cell: absent.
- Keep columns are copied into the output rows, typed (``Manifest.keep_types``): CSV string;
  Parquet the column's type if JSON can hold it, else string; JSONL inferred from the first
  ``INFER_LINES`` records (bool, int64, float64, else string holding JSON for non-strings).

Nothing is held beyond one line (CSV, JSONL) or one record batch of the needed columns
(Parquet), so a million-row manifest streams in flat memory. Problems come in two sizes:

- the file cannot be parsed -> ``ManifestError`` (a ``ConfigError``: exit 2) naming the file
  and the line (CSV, JSONL) or row (Parquet). It can come mid-stream, from the iterator.
- one row is unusable (no image, a kept value that does not fit its column's type, a CSV record
  with the wrong number of fields) -> ``Entry.error``; the pipeline records an ``invalid`` row.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import functools
import json
import logging
import os
import posixpath
import struct
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
INFER_LINES = 1000  # JSONL keep columns take their type from this many first records
MAX_LINE = 64 << 20  # a longer line is not a manifest line (a binary file, most likely)
BATCH_ROWS = 1024  # Parquet rows per batch when images are paths...
BATCH_ROWS_BYTES = 16  # ...and when they are embedded (a batch then holds its images)
_INT64 = (-(1 << 63), (1 << 63) - 1)


class ManifestError(ConfigError):
    """The manifest cannot be read or parsed; ``line`` is the line (or Parquet row) if known."""

    def __init__(
        self, path: Path, reason: str, line: int | None = None, unit: str = "line"
    ) -> None:
        where = f"manifest {path}" if line is None else f"manifest {path}, {unit} {line}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line


class Entry(NamedTuple):
    """One manifest row (a named tuple: one is made per row, a million per big manifest)."""

    identity: str  # id, else the path as written, else the struct's path, else "<file>#<line>"
    line: int  # 1-based: CSV line where the record starts, JSONL line, Parquet row
    path: str | None  # absolute path of the image file; None with embedded bytes or no image
    data: bytes | None  # embedded image bytes (Parquet)
    variables: Mapping[str, str]  # prompt variables: every column but image; absent if null
    keep: Mapping[str, Any]  # the keep columns' values, typed as keep_types (None: missing)
    error: str | None  # why this row cannot be captioned, e.g. "manifest line 12: no image"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``open_manifest`` learnt from the header, schema or first lines."""

    path: Path  # absolute
    format: str  # "csv", "jsonl" or "parquet"
    columns: tuple[str, ...] | None  # all columns, image included; None for JSONL
    has_id: bool  # JSONL: an id key in one of the first INFER_LINES records
    keep: tuple[str, ...]
    keep_types: Mapping[str, pa.DataType]  # output column type of each keep column
    variables: frozenset[str] | None  # the columns read as variables; None: all but image
    image_kind: str  # "path"; in Parquet also "binary" or "struct" ({bytes, path})


def open_manifest(
    path: Path, keep: tuple[str, ...] = (), *, variables: Collection[str] | None = None
) -> Manifest:
    """Check the manifest at ``path`` (its type from the extension) and read its header, schema
    or first ``INFER_LINES`` lines. ``variables`` limits which columns become prompt variables
    (and which Parquet columns are read). Raises ``ManifestError`` if it cannot be parsed,
    ``ConfigError`` for an unsupported extension or a ``keep`` column it does not have."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"manifest {path}: unsupported file type {path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    path = Path(os.path.abspath(os.path.expanduser(path)))
    keep = tuple(dict.fromkeys(keep))
    wanted = None if variables is None else frozenset(variables)
    kind = "path"
    if fmt == "jsonl":
        has_id, types = _sample_jsonl(path, keep)
        return Manifest(path, fmt, None, has_id, keep, types, wanted, kind)
    if fmt == "csv":
        with _open(path) as f:
            header = next(_csv_records(path, f), None)
        if header is None:
            raise ManifestError(path, "empty file: no header line")
        columns = tuple(header[1])
        _check_columns(path, columns, keep)
        types = {name: pa.string() for name in keep}
    else:
        with _parquet(path) as pf:
            schema = pf.schema_arrow
        columns = tuple(schema.names)
        _check_columns(path, columns, keep)
        kind = _image_kind(path, schema.field("image").type)
        if "image" in keep and kind != "path":
            raise ConfigError(f"manifest {path}: keep 'image': it holds image bytes, not a path")
        types = {name: _keep_type(schema.field(name).type) for name in keep}
    return Manifest(path, fmt, columns, "id" in columns, keep, types, wanted, kind)


def read_entries(manifest: Manifest) -> Iterator[Entry]:
    """Stream ``manifest``'s rows as entries, in file order; blank lines are skipped. Raises
    ``ManifestError`` (mid-stream) where the file stops being parseable."""
    read = {"csv": _csv_entries, "jsonl": _jsonl_entries, "parquet": _parquet_entries}
    return read[manifest.format](manifest)


# --- shared ------------------------------------------------------------------------------


def text_of(value: Any) -> str | None:
    """A column value -> its variable text: str as is, bool "true"/"false", numbers str(),
    list/dict compact JSON, anything else str(); None stays None (the variable is absent)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict | tuple):
        return _json(value)
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _path_entry(
    folder: str,
    name: str,
    unit: str,
    line: int,
    ident: str | None,
    image: str | None,
    variables: dict[str, str],
    keep: dict[str, Any],
    error: str | None,
) -> Entry:
    """An entry for an image path as written in the manifest ``name`` in ``folder`` (or for no
    image: then a row error). Readers bind the first three arguments once per stream."""
    if not image:
        error = error or f"manifest {unit} {line}: no image"
        return Entry(ident or f"{name}#{line}", line, None, None, variables, keep, error)
    full = os.path.expanduser(image) if image[0] == "~" else image
    full = os.path.normpath(os.path.join(folder, full))
    written = posixpath.normpath(image.replace(os.sep, "/"))
    return Entry(ident or written, line, full, None, variables, keep, error)


def _bind(m: Manifest, unit: str) -> Callable[..., Entry]:
    return functools.partial(_path_entry, str(m.path.parent), m.path.name, unit)


def _check_columns(path: Path, columns: tuple[str, ...], keep: tuple[str, ...]) -> None:
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ManifestError(path, f"column(s) named twice: {', '.join(twice)}")
    if "image" not in columns:
        raise ManifestError(path, f"no 'image' column{_hint('image', columns)}")
    for name in keep:
        if name not in columns:
            raise ConfigError(
                f"keep column {name!r} is not in manifest {path}{_hint(name, columns)}"
            )


def _hint(name: str, columns: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(name, columns, n=1)
    maybe = f" (did you mean {near[0]!r}?)" if near else ""
    return f"{maybe}; its columns: {', '.join(map(repr, columns)) or '(none)'}"


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")  # the caller closes it
    except OSError as exc:
        raise ManifestError(path, f"cannot read: {exc.strerror or exc}") from None


def _lines(path: Path, f: IO[bytes]) -> Iterator[str]:
    """Every physical line of ``f`` decoded, line ending kept (what ``csv`` wants); bytes that
    are not UTF-8 raise with their line number (a text-mode file only knows its 8 KB chunk)."""
    read = functools.partial(f.readline, MAX_LINE + 1)
    number = 0
    while True:
        try:
            raw = read()
        except OSError as exc:
            raise ManifestError(path, f"cannot read: {exc.strerror or exc}", number + 1) from None
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE:
            raise ManifestError(path, f"line longer than {MAX_LINE >> 20} MiB", number)
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            yield raw.decode()
        except UnicodeDecodeError as exc:
            reason = f"not UTF-8 (byte {exc.start + 1} of the line)"
            raise ManifestError(path, reason, number) from None


# --- CSV ---------------------------------------------------------------------------------


def _csv_records(path: Path, f: IO[bytes]) -> Iterator[tuple[int, list[str]]]:
    """(line where it starts, fields) of each record; blank lines are skipped. Strict quoting:
    a lax reader would swallow the rest of the file after one stray quote."""
    reader = csv.reader(_lines(path, f), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            at = reader.line_num
            began = "" if at == start else f" (in the record that starts at line {start})"
            raise ManifestError(path, f"bad CSV: {exc}{began}", at) from None
        if fields:
            yield start, fields


def _csv_entries(m: Manifest) -> Iterator[Entry]:
    assert m.columns is not None  # set for every CSV manifest
    width, columns = len(m.columns), m.columns
    image_at = columns.index("image")
    id_at = columns.index("id") if m.has_id else None
    wanted = m.variables
    var_at = [
        (i, c) for i, c in enumerate(columns) if c != "image" and (wanted is None or c in wanted)
    ]
    keep_at = [(name, columns.index(name)) for name in m.keep]
    entry = _bind(m, "line")
    with _open(m.path) as f:
        records = _csv_records(m.path, f)
        header = next(records, None)
        if header is None or tuple(header[1]) != columns:
            raise ManifestError(m.path, "its header changed since the job started")
        for line, fields in records:
            if len(fields) != width:
                error = f"manifest line {line}: {len(fields)} fields, the header has {width}"
                keep = dict.fromkeys(m.keep)
                yield Entry(f"{m.path.name}#{line}", line, None, None, {}, keep, error)
                continue
            ident = None if id_at is None else fields[id_at]
            variables = {c: fields[i] for i, c in var_at if fields[i]}
            kept = {name: fields[i] or None for name, i in keep_at}
            yield entry(line, ident, fields[image_at], variables, kept, None)


# --- JSONL -------------------------------------------------------------------------------


def _records(path: Path, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
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


def _sample_jsonl(path: Path, keep: tuple[str, ...]) -> tuple[bool, dict[str, pa.DataType]]:
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


# --- Parquet -----------------------------------------------------------------------------


def _parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(path, f"not a readable Parquet file: {exc}") from None


def _image_kind(path: Path, t: pa.DataType) -> str:
    t = _unwrap(t)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "path"
    if _is_binary(t):
        return "binary"
    names = [f.name for f in t] if pa.types.is_struct(t) else []
    if "bytes" in names and _is_binary(t.field("bytes").type):
        return "struct"
    raise ManifestError(
        path, f"column 'image' is {t}: want a path (string), bytes or a {{bytes, path}} struct"
    )


def _is_binary(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _keep_type(t: pa.DataType) -> pa.DataType:
    """A column's type in the output: its own when JSON can hold it, else string (via str())."""
    t = _unwrap(t)
    return t if _plain(t) else pa.string()


def _unwrap(t: pa.DataType) -> pa.DataType:
    """A dictionary-encoded (categorical) column's value type; any other type as is."""
    return t.value_type if pa.types.is_dictionary(t) else t


def _plain(t: pa.DataType) -> bool:
    types = pa.types
    if types.is_string(t) or types.is_large_string(t) or types.is_boolean(t):
        return True
    if types.is_integer(t) or types.is_floating(t):
        return True
    if types.is_list(t) or types.is_large_list(t) or types.is_fixed_size_list(t):
        return _plain(t.value_type)
    return bool(types.is_struct(t) and all(_plain(f.type) for f in t))


def _holds_bytes(t: pa.DataType) -> bool:
    """Binary, or a list/struct with binary inside: image data, never prompt text."""
    t = _unwrap(t)
    if pa.types.is_struct(t):
        return any(_holds_bytes(f.type) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _holds_bytes(t.value_type)
    return _is_binary(t)


def _parquet_entries(m: Manifest) -> Iterator[Entry]:
    """Batches of the needed columns only: ``image``, ``id``, the variables and keep columns.
    Columns that hold bytes (a second image, a mask) are never variables."""
    assert m.columns is not None  # set for every Parquet manifest
    size = BATCH_ROWS if m.image_kind == "path" else BATCH_ROWS_BYTES
    with _parquet(m.path) as pf:
        schema = pf.schema_arrow
        var_names = [
            c
            for c in m.columns
            if c != "image"
            and (m.variables is None or c in m.variables)
            and not _holds_bytes(schema.field(c).type)
        ]
        needed = {"image", *var_names, *m.keep} | ({"id"} if m.has_id else set())
        read = [c for c in m.columns if c in needed]
        done = 0
        for group in range(pf.metadata.num_row_groups):  # one group at a time: errors name it
            rows = pf.metadata.row_group(group).num_rows
            batches = pf.iter_batches(batch_size=size, row_groups=[group], columns=read)
            last = done + rows
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (OSError, pa.ArrowException) as exc:
                    where = f"row group {group} (rows {last - rows + 1}-{last})"
                    reason = f"cannot read {where}: {exc}"
                    raise ManifestError(m.path, reason, done + 1, "row") from None
                yield from _batch_entries(m, batch, done, var_names)
                done += batch.num_rows


def _batch_entries(
    m: Manifest, batch: pa.RecordBatch, done: int, var_names: list[str]
) -> Iterator[Entry]:
    images = batch.column("image").to_pylist()
    count = len(images)
    ids = _texts(batch.column("id")) if m.has_id else [None] * count
    var_cols = [(name, _texts(batch.column(name))) for name in var_names]
    keep_cols = [(name, _kept(batch.column(name))) for name in m.keep]
    entry = _bind(m, "row")
    for i, image in enumerate(images):
        line = done + i + 1
        variables = {name: v for name, values in var_cols if (v := values[i]) is not None}
        kept = {name: values[i] for name, values in keep_cols}
        if m.image_kind == "path":
            yield entry(line, ids[i], image, variables, kept, None)
            continue
        data, where = (image, None) if m.image_kind == "binary" else _unpack(image)
        if not data:  # no bytes: the struct's path, if any, names a file
            yield entry(line, ids[i], where, variables, kept, None)
            continue
        written = posixpath.normpath(where) if where else f"{m.path.name}#{line}"
        yield Entry(ids[i] or written, line, None, data, variables, kept, None)


def _unpack(image: dict[str, Any] | None) -> tuple[bytes | None, str | None]:
    """The ``{bytes, path}`` struct of a Hugging Face Image feature -> (bytes, path)."""
    if image is None:
        return None, None
    where = image.get("path")
    return image["bytes"], where if isinstance(where, str) and where else None


def _texts(column: pa.Array) -> list[str | None]:
    """A column's values as variable texts (``text_of``); float32/16 in their shortest form."""
    t = column.type
    values = column.to_pylist()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return values  # type: ignore[no-any-return]
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        code = "f" if pa.types.is_float32(t) else "e"
        return [None if v is None else _short_float(v, code) for v in values]
    return [text_of(v) for v in values]


def _short_float(value: float, code: str) -> str:
    """A float32/float16 value as Python would print it had it been written in that precision
    (0.1f arrives as 0.10000000149011612): the fewest digits that round-trip."""
    for digits in range(3, 10):
        short = float(f"{value:.{digits}g}")
        try:
            if struct.unpack(code, struct.pack(code, short))[0] == value:
                return str(short)
        except OverflowError:  # rounded past the type's largest value
            continue
    return str(value)  # nan: never equal to itself


def _kept(column: pa.Array) -> list[Any]:
    """A keep column's values; str() of each when JSON cannot hold its type (``_keep_type``)."""
    values = column.to_pylist()
    if not _plain(_unwrap(column.type)):
        return [None if v is None else str(v) for v in values]
    return values  # type: ignore[no-any-return]

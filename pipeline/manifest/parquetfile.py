"""Parquet: a manifest file -> its schema's columns, then one ``Entry`` per row, batch by batch.

``open_manifest`` checks the schema with ``_parquet``, ``_image_kind`` (path, binary or a
``{bytes, path}`` struct) and ``_keep_type``. ``_parquet_entries`` takes a Parquet ``Manifest``
and hands on its rows as entries, reading one record batch of the needed columns at a time
(``BATCH_ROWS``, or ``BATCH_ROWS_BYTES`` when the batch holds the images themselves).
"""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .common import Entry, Manifest, ManifestError, _bind, manifest_name, text_of

BATCH_ROWS = 1024  # Parquet rows per batch when images are paths...
BATCH_ROWS_BYTES = 16  # ...and when they are embedded (a batch then holds its images)


def _parquet(path: Path | str) -> pq.ParquetFile:
    try:
        if isinstance(path, str):  # a URI: ranged reads (footer first, the columns needed)
            from ..storage import resolve

            loc = resolve(path)
            return pq.ParquetFile(loc.path, filesystem=loc.fs)
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(path, f"not a readable Parquet file: {exc}") from None


def _image_kind(path: Path | str, t: pa.DataType) -> str:
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
        written = posixpath.normpath(where) if where else f"{manifest_name(m.path)}#{line}"
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

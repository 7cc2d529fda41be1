"""What the format readers share: the types, the row -> ``Entry`` helpers and the line reader.

Takes nothing from the other submodules (they all import from here). Hands on ``Entry`` and
``Manifest`` (the types ``open_manifest`` and ``read_entries`` trade in), ``ManifestError``,
``text_of`` (a column value -> its variable text), ``_bind`` / ``_path_entry`` (a row -> an
``Entry`` for an image path), the header checks (``_check_columns``, ``_hint``) and
``_open`` / ``_lines`` (a file -> decoded lines, each numbered in its error).
"""

from __future__ import annotations

import codecs
import difflib
import functools
import io
import json
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import pyarrow as pa

from ..errors import ConfigError
from ..storage import is_uri, uri_beside

MAX_LINE = 64 << 20  # a longer line is not a manifest line (a binary file, most likely)


class ManifestError(ConfigError):
    """The manifest cannot be read or parsed; ``line`` is the line (or Parquet row) if known."""

    def __init__(
        self, path: Path | str, reason: str, line: int | None = None, unit: str = "line"
    ) -> None:
        where = f"manifest {path}" if line is None else f"manifest {path}, {unit} {line}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line


class Entry(NamedTuple):
    """One manifest row (a named tuple: one is made per row, a million per big manifest)."""

    identity: str  # id, else the path as written, else the struct's path, else "<file>#<line>"
    line: int  # 1-based: CSV line where the record starts, JSONL line, Parquet row
    path: str | None  # absolute path or URI of the image file; None: embedded bytes or no image
    data: bytes | None  # embedded image bytes (Parquet)
    variables: Mapping[str, str]  # prompt variables: every column but image; absent if null
    keep: Mapping[str, Any]  # the keep columns' values, typed as keep_types (None: missing)
    error: str | None  # why this row cannot be captioned, e.g. "manifest line 12: no image"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What ``open_manifest`` learnt from the header, schema or first lines."""

    path: Path | str  # absolute; str: a URI (the manifest is in object storage)
    format: str  # "csv", "jsonl" or "parquet"
    columns: tuple[str, ...] | None  # all columns, image included; None for JSONL
    has_id: bool  # JSONL: an id key in one of the first INFER_LINES records
    keep: tuple[str, ...]
    keep_types: Mapping[str, pa.DataType]  # output column type of each keep column
    variables: frozenset[str] | None  # the columns read as variables; None: all but image
    image_kind: str  # "path"; in Parquet also "binary" or "struct" ({bytes, path})


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
    image: then a row error). Readers bind the first three arguments once per stream.

    A URI (``s3://b/k``) stays as written. ``folder`` may be a manifest's URI itself (one in
    object storage): relative paths are then objects beside it; a local path is an error."""
    if not image:
        error = error or f"manifest {unit} {line}: no image"
        return Entry(ident or f"{name}#{line}", line, None, None, variables, keep, error)
    if is_uri(image):
        return Entry(ident or image, line, image, None, variables, keep, error)
    if is_uri(folder):
        written = posixpath.normpath(image.replace("\\", "/"))
        if image[0] in "/~" or os.path.isabs(image):
            error = error or (
                f"manifest {unit} {line}: {image} is a local path; a manifest in object "
                "storage names its images by URI or relative to itself"
            )
            return Entry(ident or written, line, None, None, variables, keep, error)
        return Entry(ident or written, line, uri_beside(folder, written), None, variables, keep,
                     error)  # fmt: skip
    full = os.path.expanduser(image) if image[0] == "~" else image
    full = os.path.normpath(os.path.join(folder, full))
    written = posixpath.normpath(image.replace(os.sep, "/"))
    return Entry(ident or written, line, full, None, variables, keep, error)


def _bind(m: Manifest, unit: str) -> Callable[..., Entry]:
    if isinstance(m.path, str):  # a URI: ``_path_entry`` resolves relative paths beside it
        return functools.partial(_path_entry, m.path, manifest_name(m.path), unit)
    return functools.partial(_path_entry, str(m.path.parent), m.path.name, unit)


def manifest_name(path: Path | str) -> str:
    """The manifest's file name (a URI's last path component, without its query)."""
    if isinstance(path, Path):
        return path.name
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def manifest_suffix(path: Path | str) -> str:
    """The manifest's extension, lower case (``.csv``), from a path or a URI."""
    return posixpath.splitext(manifest_name(path))[1].lower()


def _check_columns(path: Path | str, columns: tuple[str, ...], keep: tuple[str, ...]) -> None:
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


def _open(path: Path | str) -> IO[bytes]:
    """The manifest file opened for reading (the caller closes it); a URI is streamed from its
    object store (buffered, so reading a line does not cost a request)."""
    if isinstance(path, str):
        return _open_uri(path)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ManifestError(path, f"cannot read: {exc.strerror or exc}") from None


def _open_uri(uri: str) -> IO[bytes]:
    from ..storage import resolve

    loc = resolve(uri)
    try:  # (no HEAD first: the open says whether it is there)
        stream = loc.fs.open_input_stream(loc.path, compression=None)
    except FileNotFoundError:
        raise ManifestError(uri, "no such object") from None
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(uri, f"cannot read: {exc}") from None
    return io.BufferedReader(stream, 1 << 20)


def _lines(path: Path | str, f: IO[bytes]) -> Iterator[str]:
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

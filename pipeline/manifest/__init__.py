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

One module per format, behind the two functions here (``open_manifest``, ``read_entries``)::

    common       Entry, Manifest, ManifestError, text_of; the row -> Entry helpers and the
                 line reader the formats share
    csvfile      CSV: header, then records (strict quoting)
    jsonl        JSONL: keep-column types from the first lines, then one object per line
    parquetfile  Parquet: schema and image kind, then record batches of the needed columns
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from pathlib import Path

import pyarrow as pa

from ..errors import ConfigError
from .common import (
    MAX_LINE,
    Entry,
    Manifest,
    ManifestError,
    _check_columns,
    _open,
    manifest_suffix,
    text_of,
)
from .csvfile import _csv_entries, _csv_records
from .jsonl import INFER_LINES, _jsonl_entries, _sample_jsonl
from .parquetfile import (
    BATCH_ROWS,
    BATCH_ROWS_BYTES,
    _image_kind,
    _keep_type,
    _parquet,
    _parquet_entries,
)

__all__ = [
    "BATCH_ROWS",
    "BATCH_ROWS_BYTES",
    "FORMATS",
    "INFER_LINES",
    "MAX_LINE",
    "Entry",
    "Manifest",
    "ManifestError",
    "count_rows",
    "open_manifest",
    "read_entries",
    "text_of",
]

FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def open_manifest(
    path: Path | str, keep: tuple[str, ...] = (), *, variables: Collection[str] | None = None
) -> Manifest:
    """Check the manifest at ``path`` (a local path, or a URI: ``storage.is_uri``; its type
    from the extension) and read its header, schema
    or first ``INFER_LINES`` lines. ``variables`` limits which columns become prompt variables
    (and which Parquet columns are read). Raises ``ManifestError`` if it cannot be parsed,
    ``ConfigError`` for an unsupported extension or a ``keep`` column it does not have."""
    suffix = manifest_suffix(path)
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise ConfigError(
            f"manifest {path}: unsupported file type {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    if not isinstance(path, str):
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


def count_rows(path: Path | str) -> int | None:
    """How many rows the manifest has, cheaply (Parquet: its footer; CSV: records; JSONL:
    non-blank lines), for the progress total; None when it cannot tell (the run itself then
    reports what is wrong with the file)."""
    import csv
    import io

    kind = FORMATS.get(manifest_suffix(path))
    try:
        if kind == "parquet":
            with _parquet(path) as pf:
                return int(pf.metadata.num_rows)
        if kind == "csv":
            with _open(path) as raw, io.TextIOWrapper(raw, "utf-8-sig", newline="") as fh:
                return max(0, sum(1 for record in csv.reader(fh) if record) - 1)
        if kind == "jsonl":
            with _open(path) as fh:
                return sum(1 for line in fh if line.strip())
    except (OSError, ValueError, csv.Error, pa.ArrowException, ManifestError):
        return None
    return None

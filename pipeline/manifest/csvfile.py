"""CSV: a manifest file -> its header's columns, then one ``Entry`` per record.

``_csv_records`` takes an open file and hands on (start line, fields) per record (strict
quoting, blank lines skipped); ``open_manifest`` reads the header with it. ``_csv_entries``
takes a CSV ``Manifest`` and hands on its rows as entries: every value is text, an empty cell
is absent, a record with the wrong number of fields is a row error.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .common import Entry, Manifest, ManifestError, _bind, _lines, _open, manifest_name


def _csv_records(path: Path | str, f: IO[bytes]) -> Iterator[tuple[int, list[str]]]:
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
                yield Entry(f"{manifest_name(m.path)}#{line}", line, None, None, {}, keep, error)
                continue
            ident = None if id_at is None else fields[id_at]
            variables = {c: fields[i] for i, c in var_at if fields[i]}
            kept = {name: fields[i] or None for name, i in keep_at}
            yield entry(line, ident, fields[image_at], variables, kept, None)

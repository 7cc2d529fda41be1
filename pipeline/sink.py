"""The Parquet sink: result rows -> part files in the output dataset directory.

Rows are buffered and written as one part file per flush (at least every ``flush_interval``
seconds while rows arrive). Each part is written to a hidden temp name, fsynced, then renamed
into place, so a reader or a crash never sees a half-written file. Part files are named
``part-<run_id>-<seq>.parquet``; everything else in the folder starts with ``_`` or ``.`` so
``pyarrow.dataset``, pandas, polars and duckdb read only the parts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import rows_to_table
from .shards import is_live, tag_of
from .storage import RemotePath, Where, open_parquet

PART_GLOB = "part-*.parquet"
COMPACT_MARKER = "_caption_compact.json"
COMPACT_MIN_PARTS = 2
MERGE_ROWS = 65_536


def fsync_dir(folder: Where) -> None:
    if isinstance(folder, RemotePath):
        return  # an object store has no folders: each object is durable when its upload ends
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(final: Where) -> Iterator[BinaryIO]:
    """A hidden temp file for ``final``: on success it is fsynced, made 0644 and renamed into
    place, and the folder fsynced; on error it is removed. Readers and crashes never see a
    half-written ``final``. In an object store (``RemotePath``) the bytes are gathered in
    memory and uploaded whole on success: an object appears whole or not at all."""
    if isinstance(final, RemotePath):
        buf = io.BytesIO()
        yield buf
        final.write_bytes(buf.getvalue())
        return
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o644)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomic(table: pa.Table, final: Where) -> None:
    """Write ``table`` to ``final`` through ``atomic_file``."""
    with atomic_file(final) as fh:
        pq.write_table(table, fh, compression="zstd")


def part_name(run_id: str, seq: int) -> str:
    return f"part-{run_id}-{seq:05d}.parquet"


def merged_name(run_id: str) -> str:
    return f"part-{run_id}-all.parquet"


class PartWriter:
    """Appends rows; ``flush()`` turns the buffered rows into one new part file (blocking IO)."""

    def __init__(self, folder: Where, run_id: str, schema: pa.Schema) -> None:
        self.folder = folder
        self.run_id = run_id
        self.schema = schema
        self.buffer: list[dict[str, Any]] = []
        self.seq = 0
        self.rows_written = 0
        self.parts: list[Where] = []

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)

    def take(self) -> list[dict[str, Any]]:
        rows, self.buffer = self.buffer, []
        return rows

    def write(self, rows: list[dict[str, Any]], seq: int | None = None) -> Where | None:
        """Write ``rows`` as part file ``seq`` (default: the next one); call from a worker
        thread. The collector passes its journal segment's number, so a segment and the part
        it became share one number."""
        if not rows:
            return None
        self.seq = self.seq + 1 if seq is None else seq
        final = self.folder / part_name(self.run_id, self.seq)
        write_atomic(rows_to_table(rows, self.schema), final)
        self.rows_written += len(rows)
        self.parts.append(final)
        return final


def remove_stale_temps(folder: Where, live: Collection[str] = ()) -> int:
    """Delete temp files crashed runs left behind, but those of the shards in ``live`` (running
    now: their temps are in use). Call while holding the lock."""
    removed = 0
    for tmp in folder.glob(".part-*.parquet.tmp"):
        run_id = tmp.name[len(".part-") : -len(".parquet.tmp")].rsplit("-", 1)[0]
        if is_live(run_id, set(live)):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def marker_name(run_id: str) -> str:
    """The compaction marker of ``run_id``'s shard (one per shard: shards compact at once)."""
    tag = tag_of(run_id)
    return COMPACT_MARKER if tag is None else f"_caption_compact-{tag}.json"


def compact(
    folder: Where,
    run_id: str,
    parts: list[Where],
    schema: pa.Schema,
    state: Path | None = None,
) -> Where | None:
    """Merge one run's small part files into ``part-<run_id>-all.parquet`` (blocking IO).

    Crash-safe: a marker listing the small parts is made durable before the merged file is
    renamed in; ``recover_compaction`` finishes or undoes an interrupted compaction, so a key
    is never left with two copies of its row. The marker goes in ``state`` (the local state
    folder of an object-store output), else in ``folder``.
    """
    if len(parts) < COMPACT_MIN_PARTS:
        return None
    final = folder / merged_name(run_id)
    marker = (state or folder) / marker_name(run_id)
    with atomic_file(marker) as fh:
        fh.write(json.dumps({"merged": final.name, "parts": [p.name for p in parts]}).encode())
    _merge(parts, final, schema)
    for part in parts:
        part.unlink(missing_ok=True)
    marker.unlink()
    fsync_dir(folder)
    if state is not None:
        fsync_dir(state)
    return final


def _merge(parts: list[Where], final: Where, schema: pa.Schema) -> None:
    """Stream ``parts`` into one file with row groups of about ``MERGE_ROWS`` rows."""
    with atomic_file(final) as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
        pending: list[pa.Table] = []
        rows = 0
        for part in parts:
            table = open_parquet(part).read().cast(schema)  # no pyarrow.dataset import
            pending.append(table)
            rows += table.num_rows
            if rows >= MERGE_ROWS:
                writer.write_table(pa.concat_tables(pending))
                pending, rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending))


def widen(part: Where, schema: pa.Schema) -> None:
    """Rewrite ``part`` with ``schema``'s columns that it lacks added as nulls (blocking IO).

    The rows and their values do not change, so a crash midway leaves the old file or the new
    one, never a mix; the file keeps its own metadata (its run's job).
    """
    pf = open_parquet(part)
    have = pf.schema_arrow
    target = pa.schema(
        [have.field(f.name) if f.name in have.names else f for f in schema], metadata=have.metadata
    )
    with atomic_file(part) as fh, pq.ParquetWriter(fh, target, compression="zstd") as writer:
        for batch in pf.iter_batches(batch_size=MERGE_ROWS):
            columns = [
                batch.column(f.name) if f.name in have.names else pa.nulls(batch.num_rows, f.type)
                for f in target
            ]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=target))


def recover_compaction(
    folder: Where, live: Collection[str] = (), state: Path | None = None
) -> None:
    """Finish the compactions crashes interrupted, but those of the shards in ``live`` (call
    while holding the lock). Markers are in ``state`` when given (an object-store output)."""
    for marker in (state or folder).glob("_caption_compact*.json"):
        tag = marker.name.removeprefix("_caption_compact").removesuffix(".json").lstrip("-")
        if tag and tag in live:
            continue
        try:
            plan = json.loads(marker.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (ValueError, OSError):
            plan = None  # torn marker: it was never complete, so the merged file never landed
        if plan is not None and (folder / plan["merged"]).exists():
            for name in plan["parts"]:
                (folder / name).unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        fsync_dir(folder)
        if state is not None:
            fsync_dir(state)

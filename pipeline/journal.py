"""The journal: every result row, durable within moments, before it reaches Parquet.

Rows are appended as JSON lines to ``_caption_journal-<run_id>-<seq>.jsonl`` and fsynced in
groups (one fsync per batch that arrived while the previous one was being written). Segment
``seq`` holds exactly the rows of part file ``part-<run_id>-<seq>.parquet``; once that part is
renamed into place the segment is deleted. At the next start, ``recover`` turns any segment
whose part never landed into that part file, so a SIGKILL loses only the requests in flight
and the answers not yet fsynced (those that arrived during the last group write; their count
is not bounded, it depends on how fast the disk syncs): the rerun sends those again.

The run's row schema (its own columns differ from job to job) is written beside its first
segment as ``_caption_journal-<run_id>.arrow``, so ``recover`` rebuilds a crashed run's part
with that run's column types; it goes when the run's last segment goes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import threading
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from .schema import rows_to_table
from .shards import is_live
from .sink import atomic_file, fsync_dir, merged_name, part_name, write_atomic
from .storage import Where

log = logging.getLogger(__name__)

PREFIX = "_caption_journal-"
_NAME = re.compile(r"^_caption_journal-(?P<run>.+)-(?P<seq>\d{5})\.jsonl$")
_TIME_FIELDS = ("started_at", "finished_at")


def segment_name(run_id: str, seq: int) -> str:
    return f"{PREFIX}{run_id}-{seq:05d}.jsonl"


def schema_name(run_id: str) -> str:
    return f"{PREFIX}{run_id}.arrow"


def _read_schema(path: Path) -> pa.Schema | None:
    try:
        return pa.ipc.read_schema(pa.py_buffer(path.read_bytes()))
    except (OSError, pa.ArrowException):
        return None


def _encode(row: dict[str, Any]) -> str:
    out = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}
    return json.dumps(out, ensure_ascii=False)


def _decode(line: str) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(line)
    for name in _TIME_FIELDS:
        if isinstance(row.get(name), str):
            row[name] = dt.datetime.fromisoformat(row[name])
    return row


class Journal:
    """Appends rows to the current segment; ``rotate`` starts the next one. Thread-safe."""

    def __init__(self, folder: Path, run_id: str, schema: pa.Schema | None = None) -> None:
        self.folder = folder
        self.run_id = run_id
        self.schema = schema  # written beside the first segment, for ``recover``
        self.seq = 1
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()

    def path(self, seq: int) -> Path:
        return self.folder / segment_name(self.run_id, seq)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write and fsync ``rows`` to the current segment (blocking; call from a thread)."""
        if not rows:
            return
        with self._lock:
            if self._fh is None:
                if self.schema is not None and not self._schema_path.exists():
                    with atomic_file(self._schema_path) as fh:
                        fh.write(self.schema.serialize().to_pybytes())
                self._fh = open(self.path(self.seq), "a", encoding="utf-8")  # noqa: SIM115
                os.chmod(self.path(self.seq), 0o644)
                fsync_dir(self.folder)
            try:
                self._fh.write("".join(_encode(r) + "\n" for r in rows))
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError:  # disk full...: what reached the file stays, a torn line is dropped
                self._drop()
                raise

    def _drop(self) -> None:
        """Close the segment, dropping what could not be written (no retry on close)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with contextlib.suppress(OSError):  # the file is closed even when its flush fails
            fh.close()

    def rotate(self) -> int:
        """Close the current segment and return its number; later rows go to the next one."""
        with self._lock:
            self._drop()
            done, self.seq = self.seq, self.seq + 1
            return done

    def discard(self, seq: int) -> None:
        """Delete segment ``seq`` once its part file is durable."""
        self.path(seq).unlink(missing_ok=True)

    @property
    def _schema_path(self) -> Path:
        return self.folder / schema_name(self.run_id)

    def close(self) -> None:
        """Close the segment; the schema file goes once no segment of this run is left."""
        with self._lock:
            self._drop()
            if not any(self.folder.glob(f"{PREFIX}{self.run_id}-*.jsonl")):
                self._schema_path.unlink(missing_ok=True)


def read_segment(path: Path) -> list[dict[str, Any]]:
    """The rows of one segment; a torn last line (crash mid-write) is dropped."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn write: never fsynced, never acknowledged
            try:
                rows.append(_decode(line))
            except (ValueError, TypeError):
                log.warning("skipping an unreadable journal line in %s", path.name)
    return rows


def recover(
    folder: Path, schema: pa.Schema, live: Collection[str] = (), parts: Where | None = None
) -> int:
    """Fold leftover journal segments into part files (call while holding the lock), but those
    of the shards in ``live``: they are running now, their segments are in use.

    Returns the number of rows recovered. A segment whose part already landed is deleted. Each
    run's rows take that run's schema (its ``.arrow`` file), else ``schema``. The part files
    go to ``parts`` (an object-store output; the journal stays in the local ``folder``).
    """
    out: Where = folder if parts is None else parts
    recovered = 0
    schemas: dict[str, pa.Schema | None] = {}
    for seg in sorted(folder.glob(f"{PREFIX}*.jsonl")):
        m = _NAME.match(seg.name)
        if m is None:
            continue
        run_id, seq = m["run"], int(m["seq"])
        if is_live(run_id, set(live)):
            continue
        part = out / part_name(run_id, seq)
        merged = out / merged_name(run_id)
        if not part.exists() and not merged.exists():
            try:
                rows = read_segment(seg)
                if run_id not in schemas:
                    schemas[run_id] = _read_schema(folder / schema_name(run_id))
                if rows:
                    write_atomic(rows_to_table(rows, schemas[run_id] or schema), part)
                    recovered += len(rows)
            except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
                aside = seg.with_name(seg.name + ".unreadable")
                log.error("cannot recover journal %s (%s); kept as %s", seg.name, exc, aside.name)
                os.replace(seg, aside)
                continue
        seg.unlink()
    for path in folder.glob(f"{PREFIX}*.arrow"):  # its run's segments are all gone now
        run_id = path.name[len(PREFIX) : -len(".arrow")]
        if not is_live(run_id, set(live)) and not any(folder.glob(f"{PREFIX}{run_id}-*.jsonl")):
            path.unlink(missing_ok=True)
    if recovered:
        fsync_dir(out)
        log.info("recovered %d result rows from the journal of an interrupted run", recovered)
    return recovered

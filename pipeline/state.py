"""Resume state of an output folder: the lock, the keys already done, the file-hash cache.

- ``_caption.lock`` (and, for ``--shard``, ``_caption.shard-<I>of<N>.lock``): ``flock``s held
  for the whole run, so two runs never write the same items (``shards.py``; the kernel releases
  them if the process dies).
- Done keys: the ``key`` of every ``ok`` row in the part files; a rerun skips them.
- ``_caption_hashes.sqlite``: (relative path, size, mtime, ctime, inode) -> sha256, so a
  rerun does not read unchanged images just to find out that their keys are done.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from .errors import ConfigError, OutputError
from .schema import STATUS_INVALID, STATUS_OK, own_columns
from .shards import LOCK_NAME as LOCK_NAME  # the locks live in shards.py
from .shards import OutputLock as OutputLock
from .sink import PART_GLOB
from .storage import Where, open_parquet

log = logging.getLogger(__name__)

HASHES_NAME = "_caption_hashes.sqlite"


@dataclass(frozen=True, slots=True)
class LockHolder:
    """The run that holds an output's lock now."""

    pid: int | None
    run_id: str | None
    started_at: str | None


def lock_holders(folder: Path) -> list[LockHolder]:
    """The runs writing to ``folder`` now: the one holding ``_caption.lock``, or the shard runs
    holding their shard locks (a lock left by a dead process is free: the kernel released it).
    Each lock is tested with a shared, non-blocking ``flock`` for an instant: a run starting in
    that instant would see the output as busy (exit 75)."""
    holders = []
    for path in [folder / LOCK_NAME, *sorted(folder.glob("_caption.shard-*.lock"))]:
        holder = _holder(path)
        if holder is not None:
            holders.append(holder)
    return holders


def _holder(path: Path) -> LockHolder | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 200).decode(errors="replace").split()
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    pid = int(text[0]) if text and text[0].isdigit() else None
    run_id = text[1] if len(text) > 1 and text[1] != "-" else None
    return LockHolder(pid, run_id, text[2] if len(text) > 2 else None)


def load_done_keys(folder: Where, *, include_invalid: bool = True) -> set[str]:
    """Keys a rerun skips (see ``scan_parts``)."""
    return scan_parts(folder, include_invalid=include_invalid)[0]


def scan_parts(
    folder: Where, *, include_invalid: bool = True
) -> tuple[set[str], dict[Where, pa.Schema]]:
    """Keys a rerun skips, and each part file's schema.

    Skipped: every ``ok`` row, and (unless ``include_invalid`` is False) every ``invalid`` row
    whose file was read: the key covers the file's bytes, so the same bytes would be invalid
    again. Unreadable files (no sha256) are always tried again.

    A part file that cannot be read stops the run: skipping it would redo its items and give
    their keys a second ``ok`` row once the file is readable again.
    """
    for _attempt in range(SCAN_TRIES - 1):
        try:
            return _scan_parts(folder, include_invalid=include_invalid)
        except FileNotFoundError:
            # a shard running beside this run merged its parts and deleted them between the
            # listing and the read: the merged file (written first) holds them; list again
            continue
    return _scan_parts(folder, include_invalid=include_invalid, vanished_ok=False)


SCAN_TRIES = 5


def _scan_parts(
    folder: Where, *, include_invalid: bool, vanished_ok: bool = True
) -> tuple[set[str], dict[Where, pa.Schema]]:
    parts: list[Where] = sorted(folder.glob(PART_GLOB))
    done: set[str] = set()
    schemas: dict[Where, pa.Schema] = {}
    for part in parts:
        try:
            # ParquetFile, not read_table: read_table imports pyarrow.dataset (0.27 s).
            pf = open_parquet(part)
            table = pf.read(columns=["key", "status", "image_sha256"])
            schemas[part] = pf.schema_arrow
        except FileNotFoundError:
            if vanished_ok:
                raise
            raise OutputError(
                f"part file {part} keeps vanishing while it is read (is something deleting "
                "files in the output folder?)"
            ) from None
        except (OSError, ValueError) as exc:
            raise OutputError(
                f"cannot read the part file {part} ({exc}); move it out of the output folder "
                "(its items will then be captioned again) or restore it, then rerun"
            ) from None
        columns = (table.column(c).to_pylist() for c in ("key", "status", "image_sha256"))
        done.update(
            key
            for key, status, sha in zip(*columns, strict=True)
            if status == STATUS_OK
            or (include_invalid and status == STATUS_INVALID and sha is not None)
        )
    return done, schemas


def dataset_schema(schema: pa.Schema, parts: dict[Where, pa.Schema]) -> pa.Schema:
    """This run's schema widened with the columns earlier runs wrote, so every part file of
    the dataset can hold one schema (readers then see one table whatever each run asked for).

    A column that an earlier run typed differently is a ``ConfigError`` naming the part file.
    """
    have = {f.name: f for f in schema}
    extra: list[pa.Field] = []
    for part, part_schema in parts.items():
        for f in own_columns(part_schema):
            known = have.get(f.name)
            if known is None:
                have[f.name] = f
                extra.append(f)
            elif known.type != f.type:
                raise ConfigError(
                    f"column {f.name!r} is {known.type} in this job but {f.type} in "
                    f"{part} (an earlier run): one column keeps one type in a dataset; rename "
                    "the schema property or the kept column, or write to another --output"
                )
    return pa.schema([*schema, *extra], metadata=schema.metadata)


def parts_to_widen(schema: pa.Schema, parts: dict[Where, pa.Schema]) -> list[Where]:
    """The part files that lack some of ``schema``'s columns."""
    names = set(schema.names)
    return [part for part, s in parts.items() if not names <= set(s.names)]


class HashCache:
    """(relpath, size, mtime, ctime, inode) -> sha256, persisted in SQLite; thread-safe.

    ctime and the inode are in the key because tools can restore size and mtime after an
    edit, but not ctime.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: look up only (``--dry-run``); the file must exist and is not changed."""
        self.path = path
        self._db_lock = threading.Lock()  # guards the connection
        self._lock = threading.Lock()  # guards the pending list only: never held during IO
        self._pending: list[tuple[str, int, int, int, int, str]] = []
        if readonly:
            uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"  # creates no -wal/-shm
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            return
        # shard runs share the cache: wait for another process's write instead of failing
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files_v2 (relpath TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, sha256 TEXT)"
        )

    def lookup(
        self, relpath: str, size: int, mtime_ns: int, ctime_ns: int = 0, ino: int = 0
    ) -> str | None:
        """The cached sha256 of ``relpath`` if its size, mtime, ctime and inode still match."""
        return self.lookup_many([(relpath, size, mtime_ns, ctime_ns, ino)])[0]

    def lookup_many(self, files: list[tuple[str, int, int, int, int]]) -> list[str | None]:
        """``lookup`` for a batch of (relpath, size, mtime_ns, ctime_ns, ino), in one query."""
        if not files:
            return []
        marks = ",".join("?" * len(files))
        with self._db_lock:
            found = {
                row[0]: row[1:]
                for row in self._db.execute(
                    "SELECT relpath, size, mtime_ns, ctime_ns, ino, sha256 FROM files_v2 "
                    f"WHERE relpath IN ({marks})",
                    [f[0] for f in files],
                )
            }
        out: list[str | None] = []
        for relpath, *stamp in files:
            row = found.get(relpath)
            ok = row is not None and tuple(row[:4]) == tuple(stamp) and isinstance(row[4], str)
            out.append(row[4] if ok and row is not None else None)
        return out

    def remember(
        self, relpath: str, size: int, mtime_ns: int, sha256: str, ctime_ns: int = 0, ino: int = 0
    ) -> None:
        with self._lock:
            self._pending.append((relpath, size, mtime_ns, ctime_ns, ino, sha256))

    def flush(self) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
        if rows:
            with self._db_lock:
                self._write(rows)

    def _write(self, rows: Iterable[tuple[str, int, int, int, int, str]]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO files_v2 VALUES (?, ?, ?, ?, ?, ?)", rows)
        self._db.execute("COMMIT")

    def close(self) -> None:
        self.flush()
        with self._db_lock, contextlib.suppress(sqlite3.Error):
            self._db.close()


def open_hash_cache(folder: Path) -> HashCache:
    """Open the cache; a damaged one is only a cache: it is moved aside and started anew."""
    path = folder / HASHES_NAME
    try:
        return HashCache(path)
    except sqlite3.Error as exc:
        if not path.is_file():
            raise OutputError(f"cannot open the hash cache {path}: {exc}") from None
        aside = folder / f"{HASHES_NAME}.damaged-{int(time.time())}"
        log.warning("hash cache %s is damaged (%s); moved to %s, starting anew", path, exc, aside)
        os.replace(path, aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    try:
        return HashCache(path)
    except sqlite3.Error as exc:
        raise OutputError(f"cannot open the hash cache {path}: {exc}") from None

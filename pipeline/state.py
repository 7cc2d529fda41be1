"""Resume state of an output folder: the lock, the keys already done, the file-hash cache.

- ``_caption.lock``: an ``flock`` held for the whole run, so two runs never write one output
  (the kernel releases it if the process dies).
- Done keys: the ``key`` of every ``ok`` row in the part files; a rerun skips them.
- ``_caption_hashes.sqlite``: (relative path, size, mtime) -> sha256, so a rerun does not read
  unchanged images just to find out that their keys are done.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .errors import OutputBusyError, OutputError
from .schema import STATUS_OK
from .sink import PART_GLOB

log = logging.getLogger(__name__)

LOCK_NAME = "_caption.lock"
HASHES_NAME = "_caption_hashes.sqlite"


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``<output>/_caption.lock``."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(
                f"another caption run is writing to {self.path.parent} (lock {self.path} is "
                "held); wait for it to finish or use another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def load_done_keys(folder: Path) -> set[str]:
    """Keys with an ``ok`` row in the part files of ``folder`` (unreadable parts are skipped)."""
    parts = sorted(folder.glob(PART_GLOB))
    if not parts:
        return set()
    done: set[str] = set()
    try:
        dataset = ds.dataset([str(p) for p in parts], format="parquet")
        table = dataset.to_table(columns=["key"], filter=pc.field("status") == STATUS_OK)
        done.update(table.column("key").to_pylist())
        return done
    except (OSError, ValueError) as exc:
        log.warning("reading output parts together failed (%s); reading them one by one", exc)
    for part in parts:
        try:
            table = pq.read_table(part, columns=["key", "status"])
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable part file %s: %s", part.name, exc)
            continue
        ok = table.filter(pc.equal(table.column("status"), STATUS_OK))
        done.update(ok.column("key").to_pylist())
    return done


class HashCache:
    """(relpath, size, mtime_ns) -> sha256, persisted in SQLite; safe to use from threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (relpath TEXT PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, sha256 TEXT)"
        )
        self._pending: list[tuple[str, int, int, str]] = []

    def lookup(self, relpath: str, size: int, mtime_ns: int) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, sha256 FROM files WHERE relpath = ?", (relpath,)
            ).fetchone()
        if row is None or row[0] != size or row[1] != mtime_ns:
            return None
        sha = row[2]
        return sha if isinstance(sha, str) else None

    def remember(self, relpath: str, size: int, mtime_ns: int, sha256: str) -> None:
        with self._lock:
            self._pending.append((relpath, size, mtime_ns, sha256))

    def flush(self) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
            if rows:
                self._write(rows)

    def _write(self, rows: Iterable[tuple[str, int, int, str]]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", rows)
        self._db.execute("COMMIT")

    def close(self) -> None:
        self.flush()
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()


def open_hash_cache(folder: Path) -> HashCache:
    try:
        return HashCache(folder / HASHES_NAME)
    except sqlite3.Error as exc:
        raise OutputError(f"cannot open the hash cache {folder / HASHES_NAME}: {exc}") from None

"""The collecting stage: result rows -> journal (at once) and Parquet parts (every few seconds).

Each row is appended to the journal by a group-commit task (write + fsync per batch), and
buffered for the next part file. A flush writes the buffered rows as part ``k``, whose journal
segment ``k`` holds exactly the same rows, then deletes that segment. Journal writes and
flushes never overlap (one lock), so a row is never in two segments.

A write that fails (disk full, over quota, read-only, the folder gone) is reported once through
``on_storage_error`` (the runner stops sending at once, exit 74); the journal is not written
after that, but each later flush still tries to land its rows as a part file, so whatever the
disk can still take is kept. Rows lost that way were never acknowledged: a rerun sends them
again.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .errors import StorageError
from .journal import Journal
from .progress import Reporter, Tally
from .sink import PartWriter, part_name
from .state import HashCache

log = logging.getLogger(__name__)

Row = dict[str, Any]


class Collector:
    def __init__(
        self,
        writer: PartWriter,
        journal: Journal,
        cache: HashCache,
        tally: Tally,
        reporter: Reporter,
        flush_interval: float,
        on_storage_error: Callable[[StorageError], None] = lambda _err: None,
    ) -> None:
        self.writer = writer
        self.journal = journal
        self.cache = cache
        self.tally = tally
        self.reporter = reporter
        self.flush_interval = flush_interval
        self._unjournaled: list[Row] = []
        self._wake = anyio.Event()
        self._io = anyio.Lock()
        self._closed = False
        self.on_storage_error = on_storage_error
        self.storage_error: StorageError | None = None  # the first failed write
        self._cache_broken = False

    async def run(self, rx: MemoryObjectReceiveStream[Row]) -> None:
        """Consume rows until the stream ends, then flush everything."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._journal_loop)
            last = time.monotonic()
            async with rx:
                ended = False
                while not ended:
                    wait = max(0.0, last + self.flush_interval - time.monotonic())
                    with anyio.move_on_after(min(wait, 1.0)):
                        try:
                            self.add(await rx.receive())
                        except anyio.EndOfStream:
                            break
                        ended = self._drain(rx)
                        self._wake.set()  # once per batch of rows: the journal takes them all
                    self.reporter.refresh()
                    if time.monotonic() - last >= self.flush_interval:
                        await self.flush()
                        last = time.monotonic()
            self._closed = True
            self._wake.set()
        await self.flush()
        self.reporter.refresh()

    def _drain(self, rx: MemoryObjectReceiveStream[Row]) -> bool:
        """Add the rows already waiting, without a timer or a checkpoint each; True when the
        stream has ended."""
        while True:
            try:
                self.add(rx.receive_nowait())
            except anyio.WouldBlock:
                return False
            except anyio.EndOfStream:
                return True

    def add(self, row: Row) -> None:
        self.writer.add(row)
        self.tally.record(row)
        self._unjournaled.append(row)

    async def _journal_loop(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake = anyio.Event()
            async with self._io:
                rows, self._unjournaled = self._unjournaled, []
                if self.storage_error is not None:
                    continue  # the rows still go to the next part file, if it can be written
                try:
                    await anyio.to_thread.run_sync(self.journal.append, rows)
                except OSError as exc:
                    self._failed(StorageError(self.journal.path(self.journal.seq), exc))

    def _failed(self, err: StorageError) -> None:
        if self.storage_error is None:
            self.storage_error = err
            self.on_storage_error(err)

    async def flush(self) -> None:
        """Write the buffered rows as the next part file and retire its journal segment."""
        async with self._io:
            rows, self._unjournaled = self.writer.take(), []
            err = await anyio.to_thread.run_sync(self._flush_blocking, rows)
        if err is not None:
            self._failed(err)

    def _flush_blocking(self, rows: list[Row]) -> StorageError | None:
        """(In a worker thread.) The error of a part file that could not be written."""
        err = None
        if rows:
            seq = self.journal.rotate()
            try:
                self.writer.write(rows, seq)
            except OSError as exc:  # the segment (what of it was written) stays for recovery
                err = StorageError(self.writer.folder / part_name(self.writer.run_id, seq), exc)
            else:
                self.journal.discard(seq)
        if not self._cache_broken:
            try:
                self.cache.flush()
            except sqlite3.Error as exc:  # only a cache: the next run hashes those files again
                self._cache_broken = True
                log.warning(
                    "cannot update the hash cache %s (%s); carrying on without it",
                    self.cache.path,
                    exc,
                )
        return err

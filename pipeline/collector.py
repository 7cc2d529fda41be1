"""The collecting stage: result rows -> journal (at once) and Parquet parts (every few seconds).

Each row is appended to the journal by a group-commit task (write + fsync per batch), and
buffered for the next part file. A flush writes the buffered rows as part ``k``, whose journal
segment ``k`` holds exactly the same rows, then deletes that segment. Journal writes and
flushes never overlap (one lock), so a row is never in two segments.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .journal import Journal
from .progress import Reporter, Tally
from .sink import PartWriter
from .state import HashCache

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
                await anyio.to_thread.run_sync(self.journal.append, rows)

    async def flush(self) -> None:
        """Write the buffered rows as the next part file and retire its journal segment."""
        async with self._io:
            rows, self._unjournaled = self.writer.take(), []
            await anyio.to_thread.run_sync(self._flush_blocking, rows)

    def _flush_blocking(self, rows: list[Row]) -> None:
        if rows:
            seq = self.journal.rotate()
            self.writer.write(rows, seq)
            self.journal.discard(seq)
        self.cache.flush()

"""The run loop: job -> walk -> prepare -> bounded request pool -> collector -> Parquet.

Stages are tasks joined by small bounded memory streams, so memory stays flat in the number of
images::

    walk (thread, batches) -> prepare x E (hash, skip done, encode in threads)
        -> request x N (retries, circuit breaker) -> collector (journal + part files)

Stopping (SIGINT/SIGTERM, or an outage longer than ``max_outage``) cancels the feeding stages,
lets requests in flight finish for a grace period, then cancels them; the collector is outside
both scopes, so every answer received is saved.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shlex
import signal
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pyarrow as pa
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .adaptive import AutoConcurrency
from .breaker import Breaker, health_url, http_probe
from .client import ChatClient, auth_headers, tls_for
from .collector import Collector
from .config import Job
from .errors import (
    EXIT_FAILED,
    EXIT_IOERR,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    OutputError,
    StorageError,
)
from .feed import Feed, remote_input
from .items import RequestItem, Row, RowMaker
from .journal import Journal
from .journal import recover as recover_journal
from .progress import Reporter, Tally
from .requester import Requester, Route
from .results import append_run_line
from .retry import RetryPolicy
from .schema import COLUMNS, schema_with_job
from .shards import Shard, is_live, parse_shard, recovering, running_shards
from .sink import PartWriter, compact, recover_compaction, remove_stale_temps, widen
from .state import (
    HashCache,
    OutputLock,
    dataset_schema,
    open_hash_cache,
    parts_to_widen,
    scan_parts,
)
from .steer import Steering
from .storage import RemotePath, Where, output_place, state_folder
from .structured import AnswerCheck, columns_of, merge_columns
from .walker import ImageFile

log = logging.getLogger(__name__)

STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
REMOTE_READERS = 16  # threads reading (and encoding) images from an object store at once
AUTO_START = 64  # first concurrency of "auto"; it doubles per step while the server has room


@dataclass(slots=True)
class RunResult:
    tally: Tally
    run_id: str
    output: Where
    wall_s: float
    stop_reason: str | None = None
    stop_code: int | None = None
    limited: bool = False  # the run sent its [run] limit of items and stopped feeding

    @property
    def exit_code(self) -> int:
        if self.stop_code is not None:
            return self.stop_code
        return EXIT_FAILED if self.tally.failed else EXIT_OK


def new_run_id(shard: Shard | None = None) -> str:
    """``20261203T052940Z-c477c8``; a shard's run ends in its tag (``-s2of7``)."""
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    return run_id if shard is None else f"{run_id}-{shard.tag}"


class Runner:
    def __init__(
        self,
        job: Job,
        *,
        api_key: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.job = job
        self.api_key = api_key
        self.transport = transport
        self.handle_signals = handle_signals
        self.shard = parse_shard(job.run.shard)
        self.run_id = new_run_id(self.shard)
        self.tally = Tally(prompts=len(job.prompts), limit=job.run.limit)
        r = job.run
        self.policy = RetryPolicy(
            attempts=r.retries + 1,
            wait_initial=r.backoff_initial,
            wait_max=r.backoff_max,
            retry_after_max=r.retry_after_max,
        )
        self.encoders = max(2, os.cpu_count() or 2)
        if remote_input(job):
            self.encoders = max(self.encoders, REMOTE_READERS)  # reads wait on the network
        self.stop_reason: str | None = None
        self.stop_code: int | None = None
        self.limited = False  # stopped feeding at [run] limit
        self._feed_scope: anyio.CancelScope | None = None
        self._work_scope: anyio.CancelScope | None = None
        self._requester: Requester | None = None
        self._routes: list[Route] = []

    # --- entry point --------------------------------------------------------------------

    async def run(self) -> RunResult:
        where = self.job.run.output
        out = output_place(where)  # the part files: a local folder or an object-store prefix
        # lock, journal, hash cache, run log: the output folder, or a local state folder
        state = state_folder(where, self.job.run.state_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise StorageError(exc.filename or out, exc) from None
            raise OutputError(f"cannot create output folder {out}: {exc}") from None
        if isinstance(out, RemotePath):
            log.info("output %s; its lock, journal and hash cache are in %s", out, state)
        lock = OutputLock(state, self.shard)
        try:
            lock.acquire(self.run_id)
        except OSError as exc:
            raise StorageError(exc.filename or state, exc) from None
        try:
            try:
                result = await self._run_locked(out, state)
            except OSError as exc:  # setting up or finishing: recovery, widening, the cache...
                raise StorageError(exc.filename or out, exc) from None
            self._log_run(state, "end", result)
            return result
        finally:
            lock.release()

    async def _run_locked(self, out: Where, state: Path) -> RunResult:
        schema = schema_with_job(self.job.public_dict(), job_columns(self.job))
        apart = None if state == out else state  # bookkeeping kept apart from the parts

        def prepare() -> tuple[set[str], pa.Schema]:
            """Recover what crashed runs left (not what running shards are writing), then
            read the done keys and the dataset's schema; one starting run at a time."""
            with recovering(state):
                live = running_shards(state, mine=self.shard) if self.shard is not None else set()
                _recover(out, schema, live, apart)
                return _scan(out, schema, include_invalid=not self.job.run.retry_invalid, live=live)

        done, schema = await anyio.to_thread.run_sync(prepare)
        self._log_run(state, "start")
        cache = open_hash_cache(state)
        writer = PartWriter(out, self.run_id, schema)
        journal = Journal(state, self.run_id, schema)
        reporter = Reporter(self.tally, enabled=self.job.run.progress)
        started = time.monotonic()
        collector = Collector(
            writer, journal, cache, self.tally, reporter, self.job.run.flush_interval,
            self._storage_failed,
        )  # fmt: skip
        try:
            await self._pipeline(cache, done, collector)
        finally:
            reporter.close()
            journal.close()
            with contextlib.suppress(sqlite3.Error):  # only a cache
                await anyio.to_thread.run_sync(cache.close)
        wall = time.monotonic() - started
        if collector.storage_error is None:
            try:
                await anyio.to_thread.run_sync(
                    compact, out, self.run_id, writer.parts, writer.schema, apart
                )
            except OSError as exc:  # the parts stay as they are; the next run recovers
                self._storage_failed(StorageError(exc.filename or out, exc))
        return RunResult(
            self.tally, self.run_id, out, wall, self.stop_reason, self.stop_code, self.limited
        )

    def _log_run(self, out: Path, event: str, result: RunResult | None = None) -> None:
        """A start or end line in the output's run log (``caption status`` reads it); a failed
        write is only a warning: the rows are what matter."""
        record: dict[str, object] = {"event": event, "run_id": self.run_id}
        if result is None:
            inp = self.job.input.manifest or self.job.input.root
            record |= {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": shlex.join(["caption", *sys.argv[1:]]),
                "input": inp if isinstance(inp, str) else str(Path(inp).resolve()),
                "prompts": [p.name for p in self.job.prompts],
            }
        else:
            t = result.tally
            record |= {
                "exit_code": result.exit_code,
                "wall_s": round(result.wall_s, 3),
                "stop_reason": result.stop_reason,
                "counts": {
                    "images": t.images, "items": t.done, "ok": t.ok, "failed": t.failed,
                    "invalid": t.invalid, "skipped": t.skipped, "requests": t.requests,
                    "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                },
            }  # fmt: skip
        try:
            append_run_line(out, record)
        except OSError as exc:
            log.warning("cannot append to the run log in %s: %s", out, exc)

    async def _pipeline(self, cache: HashCache, done: set[str], collector: Collector) -> None:
        fixed = self.job.run.concurrency
        n = fixed or self.job.run.max_concurrency  # workers; the limiter sets how many send
        auto = None if fixed else AutoConcurrency(maximum=n, limit=min(AUTO_START, n))
        limiter = anyio.CapacityLimiter(auto.limit if auto else n)
        self.tally.concurrency = int(limiter.total_tokens)
        if auto is not None:
            self.tally.concurrency_bounds = f"auto {auto.minimum}-{auto.maximum}"
        # manifest rows may carry their image's bytes: fewer of them wait
        files_tx, files_rx = anyio.create_memory_object_stream[ImageFile](
            256 if self.job.input.manifest is None else 16
        )
        items_tx, items_rx = anyio.create_memory_object_stream[RequestItem](min(n, 32))
        rows_tx, rows_rx = anyio.create_memory_object_stream[Row](2 * n + 16)
        make_row = RowMaker(self.job, self.run_id)
        feed = Feed(
            self.job, cache, done, self.tally, make_row, anyio.CapacityLimiter(self.encoders),
            self._input_failed, self._limit_reached,
        )  # fmt: skip
        headers = auth_headers(self.api_key)
        probe_client = httpx.AsyncClient(
            timeout=5.0,
            headers=headers,
            transport=self.transport,
            verify=tls_for(self.job.endpoint),
        )
        urls = self.job.endpoint.urls
        per_route = -(-n // len(urls))
        routes = [
            Route(
                url,
                ChatClient(
                    self.job.endpoint,
                    concurrency=per_route,
                    api_key=self.api_key,
                    transport=self.transport,
                    url=url,
                ),
                Breaker(
                    http_probe(probe_client, health_url(url)),
                    max_outage=self.job.run.max_outage,
                    on_give_up=self._outage_give_up,
                    name=url if len(urls) > 1 else "server",
                ),
            )
            for url in urls
        ]
        self._routes = routes
        steering = None
        if auto is not None:
            steering = Steering(
                auto,
                limiter,
                probe_client,
                lambda: [r.url for r in routes if not r.breaker.is_open],
                self.job.endpoint.model,
                self._on_limit,
            )
            self.tally.steer = steering.report
        requester = Requester(
            routes, self.policy, make_row, self.job.endpoint.model, limiter, steering,
            self._throttle_give_up, self.job.run.max_outage,
            {p.name: AnswerCheck(p.schema) for p in self.job.prompts if p.schema is not None},
            len(self.job.prompts),
        )  # fmt: skip
        self._requester = requester
        self._feed_scope = anyio.CancelScope()
        self._work_scope = anyio.CancelScope()
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(collector.run, rows_rx)
                async with anyio.create_task_group() as aux:
                    for route in routes:
                        aux.start_soon(route.breaker.run)
                    if steering is not None:
                        aux.start_soon(steering.run)
                    if self.handle_signals:
                        aux.start_soon(self._watch_signals)
                    with self._work_scope:
                        async with anyio.create_task_group() as work:
                            work.start_soon(
                                self._feed, feed, files_tx, files_rx, items_tx, rows_tx.clone()
                            )
                            for _ in range(n):
                                work.start_soon(requester.worker, items_rx.clone(), rows_tx.clone())
                            items_rx.close()
                            rows_tx.close()
                    aux.cancel_scope.cancel()
        finally:
            self.tally.outages = sum(r.breaker.outages for r in routes)
            for route in routes:
                await route.client.aclose()
            await probe_client.aclose()

    async def _feed(
        self,
        feed: Feed,
        files_tx: MemoryObjectSendStream[ImageFile],
        files_rx: MemoryObjectReceiveStream[ImageFile],
        items_tx: MemoryObjectSendStream[RequestItem],
        rows_tx: MemoryObjectSendStream[Row],
    ) -> None:
        assert self._feed_scope is not None
        with self._feed_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._count, feed)
                tg.start_soon(feed.walk, files_tx)
                for _ in range(self.encoders):
                    tg.start_soon(feed.prepare, files_rx.clone(), items_tx.clone(), rows_tx.clone())
                files_rx.close()
                items_tx.close()
                rows_tx.close()

    async def _count(self, feed: Feed) -> None:
        """Learn the size of the whole input by a walk of its own, so the progress total (and
        its ETA) is known long before the feeding walk, which runs only a little ahead of the
        requests, gets to the end. Started only once the requests hold the feeding walk back:
        until then that walk is itself the quickest count (a rerun with nothing new to do
        never pays for a second walk)."""
        await feed.held_back.wait()
        if self.tally.walk_done:
            return
        stop = threading.Event()
        try:
            got = await anyio.to_thread.run_sync(feed.count, stop.is_set, abandon_on_cancel=True)
        except (OSError, ValueError) as exc:  # the feeding walk reports real input problems
            log.debug("counting the input failed: %s", exc)
            return
        finally:
            stop.set()
        if got is not None and not self.tally.walk_done:
            images, skipped = got
            self.tally.expect(images=images, skipped=skipped)
            log.debug("counted the input: %d images, %s items already done", images, skipped)

    # --- stopping -----------------------------------------------------------------------

    def stop(self, reason: str, code: int, grace: float) -> None:
        """Stop taking new work; cancel requests in flight after ``grace`` seconds."""
        if self.stop_reason is None:
            self.stop_reason, self.stop_code = reason, code
        if self._requester is not None:
            self._requester.stopping = True
        if self._feed_scope is None or self._work_scope is None:
            return
        self._feed_scope.cancel()
        if grace <= 0:
            self._work_scope.cancel()
        else:
            self._work_scope.deadline = min(self._work_scope.deadline, anyio.current_time() + grace)

    def _on_limit(self, limit: int) -> None:
        self.tally.concurrency = limit
        self.tally.concurrency_max = max(self.tally.concurrency_max, limit)

    def _limit_reached(self) -> None:
        """``--limit`` items were sent: stop feeding; requests in flight finish as usual."""
        self.limited = True
        if self._feed_scope is not None:
            self._feed_scope.cancel()

    def _storage_failed(self, err: StorageError) -> None:
        """The output cannot be written: stop sending at once, keep what is durable (exit 74)."""
        log.error("%s; stopping", err)
        self.stop(str(err), EXIT_IOERR, 0)

    def _input_failed(self, why: str) -> None:
        """The manifest cannot be read on: stop (exit 2), saving what is done."""
        self.stop(why, EXIT_USAGE, self.job.run.grace_period)

    def _throttle_give_up(self, throttled_s: float) -> None:
        """Every answer has been 429 for max_outage seconds: try later."""
        self.stop(
            f"the server answered only 429 for {throttled_s:.0f}s (max_outage)", EXIT_TEMPFAIL, 0
        )

    def _outage_give_up(self, down_s: float) -> None:
        """One breaker has been open past max_outage: stop if no endpoint is left."""
        if all(r.breaker.is_open for r in self._routes):
            what = "the server was" if len(self._routes) == 1 else "every endpoint was"
            self.stop(f"{what} unreachable for {down_s:.0f}s (max_outage)", EXIT_TEMPFAIL, 0)
        else:
            log.warning("an endpoint has been down for %.0fs; the others carry on", down_s)

    async def _watch_signals(self) -> None:
        grace = self.job.run.grace_period
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stop_reason is None:
                    log.warning(
                        "%s: finishing requests in flight (up to %.0fs), then saving; "
                        "press Ctrl-C again to stop at once",
                        name,
                        grace,
                    )
                    self.stop(f"stopped by {name}", 128 + signum, grace)
                else:
                    log.warning("%s again: stopping now", name)
                    self.stop(self.stop_reason, 128 + signum, 0)


def job_columns(job: Job) -> list[tuple[str, pa.DataType]]:
    """The job's own output columns: its prompts' schema properties, its kept manifest columns."""
    columns = list(
        merge_columns([(p.name, columns_of(p.schema)) for p in job.prompts if p.schema], COLUMNS)
    )
    if job.input.manifest is not None and job.input.keep:
        from .manifest import open_manifest

        types = open_manifest(job.input.manifest, job.input.keep).keep_types
        columns += [(name, types[name]) for name in job.input.keep]
    return columns


def _scan(
    out: Where, schema: pa.Schema, *, include_invalid: bool, live: set[str]
) -> tuple[set[str], pa.Schema]:
    """Done keys, and the dataset's schema: this run's, widened with earlier runs' columns;
    part files that lack some of its columns get them (as nulls), so all read as one table
    (but those of shards running now: their own run widens them later)."""
    done, parts = scan_parts(out, include_invalid=include_invalid)
    schema = dataset_schema(schema, parts)
    narrow = [
        p
        for p in parts_to_widen(schema, parts)
        if not is_live(p.name.removeprefix("part-").rsplit("-", 1)[0], live)
    ]
    if narrow:
        log.info("adding the job's new columns to %d earlier part file(s)", len(narrow))
    for part in narrow:
        widen(part, schema)
    return done, schema


def _recover(out: Where, schema: pa.Schema, live: set[str], state: Path | None) -> None:
    """Undo what crashed runs left half-done (temp files, a compaction, the journal), but not
    what the shards in ``live`` are writing now. ``state``: where the journal and compaction
    markers are when not in ``out`` (an object-store output)."""
    remove_stale_temps(out, live)
    recover_compaction(out, live, state)
    journal = state if state is not None else out
    assert isinstance(journal, Path)  # only a local output keeps its journal beside its parts
    recover_journal(journal, schema, live, parts=out)

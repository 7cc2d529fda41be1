"""``caption run --engine ray``: the same job as a Ray Data pipeline.

The driver (this process) does what must happen in one place, with the local engine's own code:
the output lock, journal recovery, the done keys, the walk's hash-cache check (``Feed.walk``:
files whose items are all done are dropped before anything is read), and the collecting stage
(the local ``Collector``: journal first, then ``part-<run_id>-<seq>.parquet`` files, then the
same compaction), so crash recovery, resume and the dataset are the local engine's. Ray does
the rest, across the cluster::

    Ray tasks: list the input's top-level folders at once (``listing.list_folder``; a manifest
               is read by the driver, one stream)
    driver: hash cache -> file records (pickled ImageFile, in blocks)
      -> map_batches(prepare_batch)      tasks, 1 CPU each: read, sha256, keys, skip done,
                                          decode + resize + encode (``encode_image``)
      -> map_batches(RequestStage)       actors: each runs the local ``Requester`` (retries,
                                          breaker, 429 handling, schema checks) with its own
                                          ChatClient, Breaker and ``auto`` steering, on the
                                          asyncio loop Ray gives an async actor; per-actor
                                          concurrency = total / actors
      -> driver: iter_batches -> rows -> Collector (journal + Parquet parts)

``--limit N``: the request actors take their items from one ``Budget`` actor, so exactly N go
to the server; the driver hands the pipeline as many files as items are left (a file has one
at least) and, if some were unreadable or partly done, another round.

Every record between stages is ``(kind, payload)`` with a pickled payload: ``item`` (a
``RequestItem``), ``row`` (a result row: every ``invalid`` and ``failed`` outcome is one, so
a bad image or a failed request never fails the Ray job), ``seen`` (hash-cache entry and
skipped count of a file read by a worker), ``stat`` (an actor's current limit and ``auto``
report) and ``stop`` (an actor gave up: outage or 429 past ``max_outage``). Pickling keeps the
Arrow schema of a block fixed whatever columns a row has.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import pickle
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pyarrow as pa
from anyio.streams.memory import MemoryObjectSendStream
from pyarrow.fs import FileSystem

from ..adaptive import AutoConcurrency
from ..breaker import Breaker, health_url, http_probe
from ..client import ChatClient, auth_headers, tls_for
from ..collector import Collector
from ..config import Job
from ..errors import EXIT_TEMPFAIL, InvalidImageError
from ..feed import Feed, ItemKeys, input_fs, invalid_rows, load_file, remote_input
from ..items import Pending, RequestItem, Row, RowMaker
from ..requester import Requester, Route
from ..retry import RetryPolicy
from ..runner import AUTO_START, Runner
from ..schema import STATUS_FAILED, utc_now
from ..shards import parse_shard
from ..state import HashCache
from ..steer import Steering, SteerReport
from ..structured import AnswerCheck
from ..walker import ImageFile
from .listing import Folder, iter_folder, iter_top, list_folder

log = logging.getLogger(__name__)

DEFAULT_ACTORS = 2  # request actors (asyncio, mostly waiting on the server)
ACTOR_CPUS = 0.0  # request actors reserve no CPU: they wait on the server (~1-3 ms of CPU per
# request), and on a 2-core node a reserved quarter would leave room for one decoding task only
PREPARE_BATCH = 4  # files per prepare call (a 12-MP JPEG costs ~0.1 s to decode and shrink)
GATE = 2  # items an actor has under way, per request slot
SWITCH_POLL_S = 0.25  # how often a request actor asks whether the run is stopping
STOP_DRAIN_S = 5.0  # after an actor gives up, wait this long for the others' rows
MAX_CALLS = 130  # concurrent calls of one request actor at most
BLOCK_BYTES = 1 << 20  # Ray Data blocks between stages end at about this size
MAX_BLOCKS = 25_000  # input blocks at most
ROUND_BYTES = 512 << 20  # file records (embedded images included) the driver holds at once
LIST_CPUS = 0.5  # a listing task mostly waits on the file system or the object store
MAX_LISTINGS = 64  # folders being listed at once (each task returns its folder's files)
LOCAL_TASK_FOLDERS = 16  # a local tree's top-level folders from which tasks list them
LIST_POLL_S = 0.5  # how often the driver, waiting for listings, asks whether the run stopped

ITEM, ROW, SEEN, STAT, STOP = "item", "row", "seen", "stat", "stop"


# --- records between stages ---------------------------------------------------------------


def _table(records: list[tuple[str, bytes]]) -> pa.Table:
    return pa.table(
        {
            "kind": pa.array([k for k, _ in records], pa.string()),
            "payload": pa.array([p for _, p in records], pa.binary()),
        }
    )


def _records(batch: pa.Table) -> Iterator[tuple[str, bytes]]:
    yield from zip(
        batch.column("kind").to_pylist(), batch.column("payload").to_pylist(), strict=True
    )


def _dump(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


# --- stage 1: prepare (Ray tasks) -----------------------------------------------------------

_DONE: dict[str, set[str]] = {}  # per worker process: the run's done keys, fetched once


def _done_keys(done: Any) -> set[str]:
    import ray

    ref = done.hex()
    if ref not in _DONE:
        _DONE.clear()  # one run at a time per worker process
        _DONE[ref] = ray.get(done)
    return _DONE[ref]


def prepare_batch(batch: pa.Table, *, job: Job, run_id: str, done: Any) -> pa.Table:
    """File records -> item, invalid-row and seen records (``Feed._load`` + ``Feed.prepare``,
    one file at a time, in a Ray worker)."""
    keys = ItemKeys(job)
    make_row = RowMaker(job, run_id)
    done_keys = _done_keys(done)
    fs = input_fs(job)  # a URI folder input's
    out: list[tuple[str, bytes]] = []
    for blob in batch.column("file").to_pylist():
        f: ImageFile = pickle.loads(blob)
        try:
            out += prepare_file(f, job, keys, done_keys, make_row, fs)
        except Exception as exc:  # never fail the Ray job for one file: an invalid row
            log.exception("preparing %s failed", f.relpath)
            why = f"cannot prepare the image: {type(exc).__name__}: {exc}"
            out += _invalid(make_row, f, None, keys.pending(f, ""), why)
    return _table(out)


def prepare_file(
    f: ImageFile,
    job: Job,
    keys: ItemKeys,
    done: set[str],
    make_row: RowMaker,
    fs: FileSystem | None = None,
) -> list[tuple[str, bytes]]:
    """The records of one file, as the local feed makes them (``feed.load_file``; ``fs``: the
    object store of a URI input; each worker resolves it from its own environment)."""
    try:
        got = load_file(f, job, keys, done, fs)
    except InvalidImageError as exc:  # unreadable: its bytes are unknown
        return _invalid(make_row, f, None, keys.pending(f, ""), str(exc))
    sha = got.sha
    cached = (f.relpath, f.size, f.mtime_ns, sha, f.ctime_ns, f.ino) if f.data is None else None
    out = [(SEEN, _dump((cached, len(job.prompts) - len(got.todo))))]
    unusable = [p for p in got.todo if p.error is not None]
    usable = [p for p in got.todo if p.error is None]
    out += _invalid(make_row, f, sha, unusable, "")
    if got.error is not None:
        return out + _invalid(make_row, f, sha, usable, got.error)
    if got.image is None:
        return out
    for p in usable:
        item = RequestItem(p.key, p.request_key, f.relpath, sha, p.prompt, p.text, got.image,
                           got.encode_s, 0.0, f.keep)  # fmt: skip
        out.append((ITEM, _dump(item)))
    return out


def _invalid(
    make_row: RowMaker, f: ImageFile, sha: str | None, items: list[Pending], error: str
) -> list[tuple[str, bytes]]:
    return [(ROW, _dump(row)) for row in invalid_rows(make_row, f, sha, items, error)]


# --- stage 2: requests (Ray actors) ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ActorPlan:
    """How the run's concurrency is split over the request actors."""

    actors: int
    fixed: int | None  # per actor (None: auto)
    maximum: int  # per actor: the workers, and auto's upper bound
    start: int  # per actor: auto's first limit

    @classmethod
    def of(cls, job: Job, actors: int) -> ActorPlan:
        fixed = job.run.concurrency
        total = fixed or job.run.max_concurrency
        actors = max(1, min(actors, total))
        per = math.ceil(total / actors)
        start = math.ceil(min(AUTO_START, total) / actors)
        return cls(actors, per if fixed else None, per, start)


class Budget:
    """``--limit``: the items still allowed to go to the server, in a tiny Ray actor shared
    by the request actors (one call per block of items, not per item)."""

    def __init__(self, limit: int) -> None:
        self.remaining = limit

    def take(self, n: int) -> int:
        """Up to ``n`` items may go; how many."""
        granted = min(n, self.remaining)
        self.remaining -= granted
        return granted

    def left(self) -> int:
        return self.remaining


class RequestStage:
    """A request actor: the local request stage (``Requester`` with its routes, breakers and
    ``auto`` steering) on the event loop Ray runs for an async actor."""

    def __init__(
        self,
        job: Job,
        api_key: str | None,
        run_id: str,
        plan: ActorPlan,
        switch: Any = None,
        budget: Any = None,
    ) -> None:
        self.job = job
        self.switch = switch  # the driver's Switch actor: set when the run is being stopped
        self.budget = budget  # the driver's Budget actor with --limit (else None)
        self.draining = False  # the run is stopping: send nothing new, finish what is sent
        self.api_key = api_key
        self.plan = plan
        self.make_row = RowMaker(job, run_id)
        self.name = f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.limit = plan.fixed or plan.start
        self.limit_max = self.limit
        self.stopped: tuple[str, int] | None = None
        self._requester: Requester | None = None
        self._routes: list[Route] = []
        self._steering: Steering | None = None
        self._started: asyncio.Lock | None = None
        self._halt: asyncio.Event | None = None  # set when the actor gives up
        # Items this actor has started: twice its limit (the rest wait here, unsent), so a
        # stopping run sends at most one more round, and a retry's backoff (which holds a
        # place here, not a request slot) leaves the pool room.
        self._gate: anyio.CapacityLimiter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def _start(self) -> Requester:
        if self._started is None:
            self._started = asyncio.Lock()
            self._halt = asyncio.Event()
        async with self._started:
            if self._requester is not None:
                return self._requester
            job, plan = self.job, self.plan
            r = job.run
            policy = RetryPolicy(
                attempts=r.retries + 1,
                wait_initial=r.backoff_initial,
                wait_max=r.backoff_max,
                retry_after_max=r.retry_after_max,
            )
            auto = None
            if plan.fixed is None:
                auto = AutoConcurrency(maximum=plan.maximum, limit=plan.start)
            limiter = anyio.CapacityLimiter(auto.limit if auto else plan.maximum)
            self._gate = anyio.CapacityLimiter(GATE * int(limiter.total_tokens))
            probe_client = httpx.AsyncClient(
                timeout=5.0, headers=auth_headers(self.api_key), verify=tls_for(job.endpoint)
            )
            urls = job.endpoint.urls
            per_route = -(-plan.maximum // len(urls))
            self._routes = [
                Route(
                    url,
                    ChatClient(job.endpoint, concurrency=per_route, api_key=self.api_key, url=url),
                    Breaker(
                        http_probe(probe_client, health_url(url)),
                        max_outage=r.max_outage,
                        on_give_up=self._outage_give_up,
                        name=url if len(urls) > 1 else "server",
                    ),
                )
                for url in urls
            ]
            if auto is not None:
                self._steering = Steering(
                    auto, limiter, probe_client,
                    lambda: [x.url for x in self._routes if not x.breaker.is_open],
                    job.endpoint.model, self._on_limit,
                )  # fmt: skip
            self._requester = Requester(
                self._routes, policy, self.make_row, job.endpoint.model, limiter, self._steering,
                self._throttle_give_up, r.max_outage,
                {p.name: AnswerCheck(p.schema) for p in job.prompts if p.schema is not None},
                len(job.prompts),
            )  # fmt: skip
            loops = [route.breaker.run() for route in self._routes]
            if self._steering is not None:
                loops.append(self._steering.run())
            if self.switch is not None:
                loops.append(self._watch_switch())
            self._tasks = [asyncio.create_task(loop) for loop in loops]
            return self._requester

    async def _watch_switch(self) -> None:
        """Drain once the driver is stopping (Ctrl-C, a storage error...): as the local
        runner's stop, nothing new is sent and what is under way finishes."""
        while not self.draining:
            await asyncio.sleep(SWITCH_POLL_S)
            if await self.switch.get.remote():
                self.draining = True

    def _on_limit(self, limit: int) -> None:
        if self._gate is not None:
            self._gate.total_tokens = GATE * limit
        self.limit = limit
        self.limit_max = max(self.limit_max, limit)

    def _stop(self, reason: str) -> None:
        """Give up (as the local runner's stop with no grace): items waiting for the server
        end without a row, so their calls return and the driver hears of the stop."""
        if self.stopped is None:
            self.stopped = (reason, EXIT_TEMPFAIL)
            if self._requester is not None:
                self._requester.stopping = True
            if self._halt is not None:
                self._halt.set()

    def _outage_give_up(self, down_s: float) -> None:
        if all(r.breaker.is_open for r in self._routes):
            what = "the server was" if len(self._routes) == 1 else "every endpoint was"
            self._stop(f"{what} unreachable for {down_s:.0f}s (max_outage)")

    def _throttle_give_up(self, throttled_s: float) -> None:
        self._stop(f"the server answered only 429 for {throttled_s:.0f}s (max_outage)")

    async def _gated(self, requester: Requester, item: RequestItem) -> Row | None:
        assert self._gate is not None
        async with self._gate:
            if self.stopped is not None or self.draining:
                return None  # never sent: the next run does it
            return await requester.caption(item)

    async def _one(self, requester: Requester, item: RequestItem) -> Row | None:
        if self.stopped is not None or self.draining or self._halt is None:
            return None  # never sent: the next run does it
        task = asyncio.ensure_future(self._gated(requester, item))
        halted = asyncio.ensure_future(self._halt.wait())
        await asyncio.wait({task, halted}, return_when=asyncio.FIRST_COMPLETED)
        halted.cancel()
        if not task.done():  # the actor gave up while this item waited: no row, redone
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return None
        try:
            row = task.result()
            if row is None:
                return None
        except Exception as exc:  # a bug must not fail the Ray job: a failed row (redone)
            log.exception("request for %s failed", item.relpath)
            now = utc_now()
            return self.make_row(
                item.key, item.relpath, item.sha256, item.prompt, STATUS_FAILED, now, now,
                error=f"internal error: {type(exc).__name__}: {exc}", attempts=0,
                **(item.keep or {}),
            )  # fmt: skip
        if row.get("concurrency") is not None:  # the run's total, as the local engine records
            row["concurrency"] = row["concurrency"] * self.plan.actors
        return row

    async def __call__(self, batch: pa.Table) -> pa.Table:
        requester = await self._start()
        out: list[tuple[str, bytes]] = []
        items: list[RequestItem] = []
        now = time.perf_counter()  # queue_wait_s: from here (clocks differ across nodes)
        for kind, payload in _records(batch):
            if kind == ITEM:
                items.append(dataclasses.replace(pickle.loads(payload), ready_at=now))
            else:
                out.append((kind, payload))
        if items and self.budget is not None:  # --limit: the rest are left for the next run
            items = items[: await self.budget.take.remote(len(items))]
        rows = await asyncio.gather(*(self._one(requester, item) for item in items))
        out += [(ROW, _dump(row)) for row in rows if row is not None]
        report = self._steering.report if self._steering is not None else None
        outages = sum(r.breaker.outages for r in self._routes)
        out.append((STAT, _dump((self.name, self.limit, self.limit_max, report, outages))))
        if self.stopped is not None:
            out.append((STOP, _dump(self.stopped)))
        return _table(out)


# --- the driver -------------------------------------------------------------------------------


def merge_reports(reports: list[SteerReport]) -> SteerReport | None:
    """One ``auto`` report for the summary from the actors' reports."""
    if not reports:
        return None
    merged = SteerReport(source=reports[0].source)
    regimes: Counter[str] = Counter()
    for r in reports:
        regimes.update(r.regime_s)
        merged.moves.update(r.moves)
        merged.throttled += r.throttled
        merged.last_move = r.last_move or merged.last_move
    merged.regime_s = dict(regimes)
    return merged


class Switch:
    """A flag in a tiny Ray actor: the driver sets it when the run stops; request actors poll
    it (the driver cannot reach into Ray Data's actors otherwise)."""

    def __init__(self) -> None:
        self.on = False

    def set(self) -> None:
        self.on = True

    def get(self) -> bool:
        return self.on


class RayRunner(Runner):
    """``Runner`` with its pipeline on Ray; lock, recovery, scan, collector, compaction and
    the run log are the local runner's."""

    def __init__(
        self,
        job: Job,
        *,
        api_key: str | None,
        address: str | None = None,
        actors: int = DEFAULT_ACTORS,
        handle_signals: bool = False,
    ) -> None:
        super().__init__(job, api_key=api_key, handle_signals=handle_signals)
        self.address = address
        self.plan = ActorPlan.of(job, actors)
        self._stats: dict[str, tuple[int, int, SteerReport | None, int]] = {}
        self._switch: Any = None  # a Switch actor, once the dataset is built

    def stop(self, reason: str, code: int, grace: float) -> None:
        """The local stop, and the request actors told to send nothing new."""
        super().stop(reason, code, grace)
        if self._switch is not None:
            self._switch.set.remote()

    def _reader_env(self) -> dict[str, Any]:
        """The listing and reading tasks get this process's AWS_* settings (the endpoint, the
        keys) when the job may read object storage (a URI input, or a manifest, which may
        name objects): a worker resolves the file system from them. Not otherwise: tasks with
        a runtime_env of their own need worker processes of their own (seconds to start)."""
        inp = self.job.input
        if not (remote_input(self.job) or inp.manifest is not None):
            return {}
        aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        return {"runtime_env": {"env_vars": aws}} if aws else {}

    async def _pipeline(self, cache: HashCache, done: set[str], collector: Collector) -> None:
        import ray

        owns_ray = not ray.is_initialized()
        if owns_ray:
            log.info("starting Ray (%s)", self.address or "a local cluster")
            await anyio.to_thread.run_sync(
                lambda: ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            )
        # Ray Data's advice (e.g. "only 1 input for 2 actors" on a small input) is not for
        # the user of caption; the progress line and the summary say what happened.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.")
        if not log.isEnabledFor(logging.DEBUG):  # -v shows Ray Data's own log lines
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours is the progress line
        ctx.print_on_execution_start = False
        ctx.verbose_stats_logs = False
        ctx.target_max_block_size = BLOCK_BYTES  # rows move on (and reach the driver) in
        # small blocks, not one block per task
        plan = self.plan
        self.tally.concurrency = self.tally.concurrency_max = plan.actors * (
            plan.fixed or plan.start
        )
        if plan.fixed is None:
            self.tally.concurrency_bounds = f"auto {plan.actors}-{plan.actors * plan.maximum}"
        rows_tx, rows_rx = anyio.create_memory_object_stream[Row](256)
        feed = Feed(
            self.job, cache, done, self.tally, RowMaker(self.job, self.run_id),
            anyio.CapacityLimiter(1), self._input_failed, self._limit_reached,
        )  # fmt: skip
        self._feed_scope = anyio.CancelScope()
        self._work_scope = anyio.CancelScope()
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(collector.run, rows_rx)
                async with rows_tx, anyio.create_task_group() as aux:
                    if self.handle_signals:
                        aux.start_soon(self._watch_signals)
                    with self._work_scope:
                        await self._drive(ray, feed, done, cache, rows_tx)
                    aux.cancel_scope.cancel()
        finally:
            if owns_ray:
                await anyio.to_thread.run_sync(ray.shutdown)

    def _listed(self, ray: Any) -> Iterator[ImageFile]:
        """A folder input's files (this shard's): the top level streamed here, each top-level
        folder listed by its own Ray task (``listing.list_folder``), started as the top level
        names it, at most ``MAX_LISTINGS`` at once, handed on in the order they finish (a
        local tree of few folders: listed here, see ``LOCAL_TASK_FOLDERS``).
        Blocking (it runs in the walk's thread); it gives up within ``LIST_POLL_S`` once the
        run stops or reaches ``--limit``, and cancels the listings still running."""
        inp, shard = self.job.input, self.job.run.shard
        part = parse_shard(shard)
        task = ray.remote(num_cpus=LIST_CPUS, **self._reader_env())(list_folder)
        waiting: list[str] = []  # folders not started yet
        running: list[Any] = []
        folders = 0

        def start() -> None:
            while waiting and len(running) < MAX_LISTINGS:
                running.append(task.remote(inp.root, waiting.pop(0), inp.patterns, shard))

        def harvest(timeout: float) -> Iterator[ImageFile]:
            ready, rest = ray.wait(running, num_returns=1, timeout=timeout)
            running[:] = rest
            for ref in ready:
                yield from ray.get(ref)

        # An object store's prefixes always go to tasks (pages wait on the network, parsing
        # them is CPU); a local tree only when it has LOCAL_TASK_FOLDERS folders or more:
        # below that, starting the tasks' worker processes costs more than listing here.
        in_tasks = isinstance(inp.root, str)
        try:
            for entry in iter_top(inp.root, inp.patterns):
                if isinstance(entry, Folder):
                    waiting.append(entry.name)
                    folders += 1
                    in_tasks = in_tasks or folders >= LOCAL_TASK_FOLDERS
                    if in_tasks and len(running) >= MAX_LISTINGS:
                        yield from harvest(0)  # one that is done already, without waiting
                    if in_tasks:
                        start()
                elif part is None or part.has(entry.relpath):
                    yield entry
            if not in_tasks:
                for name in waiting:
                    yield from iter_folder(inp.root, name, inp.patterns, shard)
                return
            if folders:
                log.info("listing %d top-level folders in Ray tasks", folders)
            while running or waiting:
                start()
                if self.stop_reason is not None or self.limited:
                    return
                yield from harvest(LIST_POLL_S)
        finally:
            for ref in running:  # stopped early: the listings still under way are not needed
                ray.cancel(ref)

    def _dataset(self, ray: Any, files: list[bytes], done: Any, budget: Any) -> Any:
        """The pipeline over ``files`` (pickled ``ImageFile`` records); ``done``: the done
        keys in Ray's object store (put once a run, fetched once per worker process)."""
        # a prepare call per block of PREPARE_BATCH files (small blocks keep every actor fed;
        # measured: blocks of 24 small files left one of two actors idle), fewer and larger
        # blocks for a huge input (the driver holds one Arrow table per block)
        per_block = max(PREPARE_BATCH, math.ceil(len(files) / MAX_BLOCKS))
        blocks = [
            pa.table({"file": pa.array(files[i : i + per_block], pa.binary())})
            for i in range(0, len(files), per_block)
        ]
        plan = self.plan
        # One call of an actor takes one block of records and sends all its items at once;
        # enough calls run at a time to fill the actor's share of the requests in flight when
        # each block holds a single item (a few 12-MP photos fill BLOCK_BYTES) and some calls
        # wait for their slowest item.
        calls = min(MAX_CALLS, plan.maximum + 2)
        return (
            ray.data.from_arrow(blocks)
            .map_batches(
                prepare_batch,
                fn_kwargs={"job": self.job, "run_id": self.run_id, "done": done},
                batch_size=PREPARE_BATCH,
                batch_format="pyarrow",
                num_cpus=1,
                **self._reader_env(),
            )
            .map_batches(
                RequestStage,
                fn_constructor_kwargs={
                    "job": self.job,
                    "api_key": self.api_key,
                    "run_id": self.run_id,
                    "plan": plan,
                    "switch": self._switch,
                    "budget": budget,
                },
                batch_size=None,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(
                    size=plan.actors,
                    max_concurrent_calls_per_actor=calls,
                    max_tasks_in_flight_per_actor=2 * calls,
                ),
                num_cpus=ACTOR_CPUS,
            )
        )

    async def _drive(
        self,
        ray: Any,
        feed: Feed,
        done: set[str],
        cache: HashCache,
        rows_tx: MemoryObjectSendStream[Row],
    ) -> None:
        limit = self.job.run.limit
        budget = None if limit is None else ray.remote(num_cpus=0)(Budget).remote(limit)
        self._switch = ray.remote(num_cpus=0)(Switch).remote()  # a stop from now on reaches it
        done_ref = ray.put(done)
        # with --limit, a round takes at least enough files to fill the pipeline: rounds of a
        # few files whose items turn out done (a rerun elsewhere) would each start Ray Data
        least = PREPARE_BATCH * self.plan.actors * 4
        tx, rx = anyio.create_memory_object_stream[ImageFile](256)
        listed = None if self.job.input.manifest is not None else self._listed(ray)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._walk, feed, tx, listed)
            async with rx:
                try:
                    # The walk's files (done ones dropped by the hash cache) in rounds: all at
                    # once (up to ROUND_BYTES: a manifest's embedded images are not all held),
                    # or with --limit as many as the items still allowed (a file has one at
                    # least), then more if some were invalid or partly done.
                    while self.stop_reason is None:
                        want = math.inf
                        if budget is not None:
                            want = await anyio.to_thread.run_sync(
                                lambda: ray.get(budget.left.remote())
                            )
                            if want <= 0:
                                self.limited = True
                                break
                            want = max(want, least)
                        files: list[bytes] = []  # pickled: 183 B a record vs 476 B as objects
                        size = 0
                        async for f in rx:
                            files.append(_dump(f))
                            size += len(files[-1])
                            if len(files) >= want or size >= ROUND_BYTES:
                                break
                        if not files or self.stop_reason is not None:
                            break  # (a stop ends the walk: what it gave is for the next run)
                        ds = self._dataset(ray, files, done_ref, budget)
                        del files
                        await self._run(ds, cache, rows_tx)
                finally:
                    # the walk may wait to send: cancel it while its stream is still open
                    # (closing the stream first would fail its send)
                    tg.cancel_scope.cancel()

    async def _walk(
        self, feed: Feed, tx: MemoryObjectSendStream[ImageFile], listed: Iterator[ImageFile] | None
    ) -> None:
        """The walk, in the scope a stop cancels (the datasets under way drain instead)."""
        assert self._feed_scope is not None
        try:
            with self._feed_scope:
                await feed.walk(tx, listed)
        finally:
            tx.close()  # (the walk closes it too) the rounds' loop must see the end

    async def _run(self, ds: Any, cache: HashCache, rows_tx: MemoryObjectSendStream[Row]) -> None:
        """Execute one dataset, its output batches handed to the event loop as they come."""
        halt = threading.Event()

        def pump() -> None:
            """Iterate the dataset (blocking) and hand each batch to the event loop; closing
            the iterator on the way out shuts Ray's execution of it down."""
            batches = ds.iter_batches(batch_format="pyarrow", batch_size=None)
            try:
                for batch in batches:
                    if halt.is_set():
                        break
                    anyio.from_thread.run(self._take, batch, cache, rows_tx)
            except Exception:  # the run was stopped: the event loop is gone or cancelled
                if not halt.is_set():
                    raise
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()

        try:
            await anyio.to_thread.run_sync(pump, abandon_on_cancel=True)
        finally:
            halt.set()

    async def _take(
        self, batch: pa.Table, cache: HashCache, rows_tx: MemoryObjectSendStream[Row]
    ) -> None:
        """Hand one output batch's rows to the collector; note the rest in the tally."""
        for kind, payload in _records(batch):
            obj = pickle.loads(payload)
            if kind == ROW:
                await rows_tx.send(obj)
            elif kind == SEEN:
                cached, skipped = obj
                self.tally.skipped += skipped
                if cached is not None:
                    cache.remember(*cached)
            elif kind == STAT:
                name, limit, limit_max, report, outages = obj
                self._stats[name] = (limit, limit_max, report, outages)
                self._update_tally()
            elif kind == STOP:
                reason, code = obj
                # the other actors give up on the same server within moments: their rows of
                # answers already received come back meanwhile and are saved
                self.stop(reason, code, STOP_DRAIN_S)
            else:  # pragma: no cover - an item can only leave a request actor as a row
                log.error("unexpected %r record from the Ray pipeline", kind)

    def _update_tally(self) -> None:
        stats = self._stats.values()
        plan = self.plan
        if plan.fixed is None:  # actors not heard from yet are at their first limit
            unheard = max(0, plan.actors - len(stats)) * plan.start
            self.tally.concurrency = sum(s[0] for s in stats) + unheard
        self.tally.concurrency_max = max(self.tally.concurrency_max, self.tally.concurrency)
        self.tally.outages = sum(s[3] for s in stats)
        self.tally.steer = merge_reports([s[2] for s in stats if s[2] is not None])

"""The run loop: job -> walk -> plan/encode -> bounded request pool -> Parquet parts.

Stages are tasks joined by small bounded memory streams, so memory stays flat in the number of
images::

    walk (thread, batches)  ->  prepare x E (hash, skip done, encode in threads)
        ->  request x N (retries, backoff)  ->  sink (rows -> part files every few seconds)

Invalid images become rows straight from the prepare stage. Blocking work (directory listing,
file reads, Pillow, Parquet, SQLite) runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pyarrow as pa
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from .client import ChatClient
from .collector import Collector
from .config import Job, PromptConfig
from .encode import EncodedImage, encode_image
from .errors import InvalidImageError, OutputError, PermanentError, RetryableError
from .journal import Journal
from .journal import recover as recover_journal
from .payload import build_body, item_key
from .progress import Reporter, Tally
from .retry import RetryPolicy, compute_backoff
from .schema import STATUS_FAILED, STATUS_INVALID, STATUS_OK, schema_with_job, utc_now
from .sink import PartWriter, compact, recover_compaction, remove_stale_temps
from .state import HashCache, OutputLock, load_done_keys, open_hash_cache
from .templates import render
from .walker import ImageFile, walk_images

log = logging.getLogger(__name__)

WALK_BATCH = 256
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Pending:
    """One (image, prompt) item that still needs a caption."""

    key: str
    prompt: PromptConfig
    text: str


@dataclass(frozen=True, slots=True)
class RequestItem:
    key: str
    relpath: str
    sha256: str
    prompt: PromptConfig
    text: str
    image: EncodedImage
    encode_s: float
    ready_at: float  # perf_counter when it entered the request queue


@dataclass(slots=True)
class RunResult:
    tally: Tally
    run_id: str
    output: Path
    wall_s: float
    parts: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.tally.failed else 0


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class Runner:
    def __init__(
        self, job: Job, *, api_key: str | None, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.job = job
        self.api_key = api_key
        self.transport = transport
        self.run_id = new_run_id()
        self.tally = Tally()
        r = job.run
        self.policy = RetryPolicy(
            attempts=r.retries + 1,
            wait_initial=r.backoff_initial,
            wait_max=r.backoff_max,
            retry_after_max=r.retry_after_max,
        )
        self.encoders = max(2, os.cpu_count() or 2)
        self.cpu = anyio.CapacityLimiter(self.encoders)
        self.done: set[str] = set()

    # --- entry point --------------------------------------------------------------------

    async def run(self) -> RunResult:
        out = self.job.run.output
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {out}: {exc}") from None
        lock = OutputLock(out)
        lock.acquire()
        try:
            schema = schema_with_job(self.job.public_dict())
            await anyio.to_thread.run_sync(_recover, out, schema)
            self.done = await anyio.to_thread.run_sync(load_done_keys, out)
            cache = open_hash_cache(out)
            writer = PartWriter(out, self.run_id, schema)
            journal = Journal(out, self.run_id)
            reporter = Reporter(self.tally, enabled=self.job.run.progress)
            started = time.monotonic()
            collector = Collector(
                writer, journal, cache, self.tally, reporter, self.job.run.flush_interval
            )
            try:
                await self._pipeline(cache, collector)
            finally:
                reporter.close()
                journal.close()
                await anyio.to_thread.run_sync(cache.close)
            wall = time.monotonic() - started
            merged = await anyio.to_thread.run_sync(
                compact, out, self.run_id, writer.parts, writer.schema
            )
            parts = [merged] if merged else writer.parts
            return RunResult(self.tally, self.run_id, out, wall, parts)
        finally:
            lock.release()

    async def _pipeline(self, cache: HashCache, collector: Collector) -> None:
        n = self.job.run.concurrency
        files_tx, files_rx = anyio.create_memory_object_stream[tuple[ImageFile, str | None]](
            WALK_BATCH
        )
        items_tx, items_rx = anyio.create_memory_object_stream[RequestItem](n)
        rows_tx, rows_rx = anyio.create_memory_object_stream[Row](2 * n + 16)
        client = ChatClient(
            self.job.endpoint, concurrency=n, api_key=self.api_key, transport=self.transport
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._walk, cache, files_tx)
                for _ in range(self.encoders):
                    tg.start_soon(
                        self._prepare, cache, files_rx.clone(), items_tx.clone(), rows_tx.clone()
                    )
                for _ in range(n):
                    tg.start_soon(self._request, client, items_rx.clone(), rows_tx.clone())
                tg.start_soon(collector.run, rows_rx)
                for stream in (files_rx, items_tx, items_rx, rows_tx):
                    stream.close()
        finally:
            await client.aclose()

    # --- stage 1: walk ------------------------------------------------------------------

    async def _walk(
        self, cache: HashCache, tx: ObjectSendStream[tuple[ImageFile, str | None]]
    ) -> None:
        files: Iterator[ImageFile] = walk_images(self.job.input.root, self.job.input.patterns)

        def next_batch() -> list[tuple[ImageFile, str | None]]:
            batch = list(itertools.islice(files, WALK_BATCH))
            return [(f, cache.lookup(f.relpath, f.size, f.mtime_ns)) for f in batch]

        async with tx:
            while batch := await anyio.to_thread.run_sync(next_batch):
                for entry in batch:
                    self.tally.images += 1
                    await tx.send(entry)
        self.tally.walk_done = True

    # --- stage 2: hash, skip what is done, encode --------------------------------------

    def _pending(self, f: ImageFile, sha: str) -> list[Pending]:
        out = []
        for prompt in self.job.prompts:
            text = render(prompt.text, f.relpath)
            key = item_key(
                image_sha256=sha,
                relpath=f.relpath,
                model=self.job.endpoint.model,
                prompt=prompt,
                text=text,
                image=self.job.image,
            )
            out.append(Pending(key, prompt, text))
        return out

    async def _prepare(
        self,
        cache: HashCache,
        rx: ObjectReceiveStream[tuple[ImageFile, str | None]],
        tx: ObjectSendStream[RequestItem],
        rows: ObjectSendStream[Row],
    ) -> None:
        n_prompts = len(self.job.prompts)
        async with rx, tx, rows:
            async for f, cached_sha in rx:
                if cached_sha is not None:
                    todo = [p for p in self._pending(f, cached_sha) if p.key not in self.done]
                    if not todo:
                        self.tally.skipped += n_prompts
                        continue
                try:
                    raw = await anyio.to_thread.run_sync(_read, f.path, limiter=self.cpu)
                except InvalidImageError as exc:
                    await self._invalid(rows, f, "", self._pending(f, ""), str(exc))
                    continue
                sha = hashlib.sha256(raw).hexdigest()
                cache.remember(f.relpath, f.size, f.mtime_ns, sha)
                if sha != cached_sha:
                    todo = [p for p in self._pending(f, sha) if p.key not in self.done]
                self.tally.skipped += n_prompts - len(todo)
                if not todo:
                    continue
                self.tally.discovered += len(todo)
                t0 = time.perf_counter()
                try:
                    image = await anyio.to_thread.run_sync(
                        encode_image, raw, self.job.image, limiter=self.cpu
                    )
                except InvalidImageError as exc:
                    await self._invalid(rows, f, sha, todo, str(exc), counted=True)
                    continue
                encode_s = time.perf_counter() - t0
                del raw
                for p in todo:
                    item = RequestItem(
                        p.key, f.relpath, sha, p.prompt, p.text, image, encode_s,
                        time.perf_counter(),
                    )  # fmt: skip
                    await tx.send(item)

    async def _invalid(
        self,
        rows: ObjectSendStream[Row],
        f: ImageFile,
        sha: str,
        items: list[Pending],
        error: str,
        *,
        counted: bool = False,
    ) -> None:
        if not counted:
            self.tally.discovered += len(items)
        now = utc_now()
        for p in items:
            await rows.send(
                self._row(p.key, f.relpath, sha or None, p.prompt, STATUS_INVALID, now, now,
                          error=error, attempts=0)
            )  # fmt: skip

    # --- stage 3: requests --------------------------------------------------------------

    async def _request(
        self, client: ChatClient, rx: ObjectReceiveStream[RequestItem], rows: ObjectSendStream[Row]
    ) -> None:
        async with rx, rows:
            async for item in rx:
                await rows.send(await self._caption(client, item))

    async def _caption(self, client: ChatClient, item: RequestItem) -> Row:
        queue_wait = time.perf_counter() - item.ready_at
        started = utc_now()
        body = build_body(self.job.endpoint.model, item.prompt, item.text, item.image.data_uri)
        common = {
            "queue_wait_s": queue_wait,
            "encode_s": item.encode_s,
            "width": item.image.width,
            "height": item.image.height,
        }
        attempt = 0
        while True:
            attempt += 1
            t0 = time.perf_counter()
            try:
                c = await client.complete(body)
            except RetryableError as exc:
                latency = time.perf_counter() - t0
                if attempt >= self.policy.attempts:
                    return self._row(
                        item.key, item.relpath, item.sha256, item.prompt, STATUS_FAILED, started,
                        utc_now(), error=f"{exc} (gave up after {attempt} attempts)",
                        http_status=exc.status, attempts=attempt, latency_s=latency, **common,
                    )  # fmt: skip
                delay = compute_backoff(self.policy, attempt, exc.retry_after)
                log.debug("retrying %s in %.2fs after: %s", item.relpath, delay, exc)
                await anyio.sleep(delay)
                continue
            except PermanentError as exc:
                return self._row(
                    item.key, item.relpath, item.sha256, item.prompt, STATUS_FAILED, started,
                    utc_now(), error=str(exc), http_status=exc.status, attempts=attempt,
                    latency_s=time.perf_counter() - t0, **common,
                )  # fmt: skip
            return self._row(
                item.key, item.relpath, item.sha256, item.prompt, STATUS_OK, started, utc_now(),
                caption=c.caption, finish_reason=c.finish_reason, http_status=c.status,
                prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                attempts=attempt, latency_s=time.perf_counter() - t0, **common,
            )  # fmt: skip

    def _row(
        self,
        key: str,
        relpath: str,
        sha: str | None,
        prompt: PromptConfig,
        status: str,
        started: Any,
        finished: Any,
        **fields: Any,
    ) -> Row:
        return {
            "key": key,
            "image_path": relpath,
            "image_sha256": sha,
            "prompt_name": prompt.name,
            "model": self.job.endpoint.model,
            "status": status,
            "started_at": started,
            "finished_at": finished,
            "run_id": self.run_id,
            "endpoint": self.job.endpoint.url,
            **fields,
        }


def _recover(out: Path, schema: pa.Schema) -> None:
    """Undo what a crashed run left half-done: temp files, a compaction, the journal."""
    remove_stale_temps(out)
    recover_compaction(out)
    recover_journal(out, schema)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InvalidImageError("file disappeared before it could be read") from None
    except PermissionError:
        raise InvalidImageError("permission denied reading the file") from None
    except OSError as exc:
        raise InvalidImageError(f"cannot read file: {exc.strerror or exc}") from None

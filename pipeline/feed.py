"""The feeding stages: input folder -> (walk) -> files -> (prepare) -> encoded request items.

The walk lists the tree in a worker thread, a batch at a time, and looks each file up in the
hash cache. ``prepare`` works out each file's items (image x prompt) and their keys, skips the
ones already done without reading the file when its size and mtime are unchanged, and
otherwise reads, hashes and encodes it in a thread. Unreadable or undecodable files become
``invalid`` rows here and never reach the server.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream

from .config import Job
from .encode import EncodedImage, encode_image
from .errors import InvalidImageError
from .items import Pending, RequestItem, Row, RowMaker
from .payload import key_from, settings_digest
from .progress import Tally
from .schema import STATUS_INVALID, utc_now
from .state import HashCache
from .templates import render, uses_variables
from .walker import ImageFile, walk_images

WALK_BATCH = 256
PREPARE_BATCH = 16  # files per thread hop at most...
PREPARE_BATCH_BYTES = 1 << 20  # ...and about this many bytes


@dataclass(frozen=True, slots=True)
class Loaded:
    """One file after reading: its hash, the items still to do, and the image (or why not)."""

    sha: str
    todo: list[Pending]
    image: EncodedImage | None
    error: str | None
    encode_s: float


MAX_FILE_BYTES = 1 << 30  # no image we can send is this big; refuse before reading it


def read_file(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """The file's bytes and their sha256 (blocking: call in a worker thread)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise InvalidImageError(f"file too large ({size:,} bytes)")
            raw = fh.read()
        return raw, hashlib.sha256(raw).hexdigest()
    except FileNotFoundError:
        raise InvalidImageError("file disappeared before it could be read") from None
    except PermissionError:
        raise InvalidImageError("permission denied reading the file") from None
    except IsADirectoryError:
        raise InvalidImageError("is a folder, not a file") from None
    except OSError as exc:
        raise InvalidImageError(f"cannot read file: {exc.strerror or exc}") from None


class Feed:
    def __init__(
        self,
        job: Job,
        cache: HashCache,
        done: set[str],
        tally: Tally,
        make_row: RowMaker,
        cpu: anyio.CapacityLimiter,
    ) -> None:
        self.job = job
        self.cache = cache
        self.done = done
        self.tally = tally
        self.make_row = make_row
        self.cpu = cpu
        # Per prompt: its settings digests (of the row, and of the request), and its text when
        # it uses no $variables.
        self._prompts = [
            (
                p,
                settings_digest(job.endpoint.model, p, job.image),
                settings_digest(job.endpoint.model, p, job.image, named=False),
                None if uses_variables(p.text) else render(p.text, ""),  # "$$" -> "$"
            )
            for p in job.prompts
        ]

    async def walk(self, tx: ObjectSendStream[ImageFile]) -> None:
        """List the tree in a thread, a batch at a time; files whose items are all done (by
        the hash cache) are counted and dropped there, never reaching the event loop."""
        files: Iterator[ImageFile] = walk_images(self.job.input.root, self.job.input.patterns)
        n_prompts = len(self.job.prompts)

        def next_batch() -> tuple[int, int, list[ImageFile]]:
            batch = list(itertools.islice(files, WALK_BATCH))
            shas = self.cache.lookup_many(
                [(f.relpath, f.size, f.mtime_ns, f.ctime_ns, f.ino) for f in batch]
            )
            todo = [
                f
                for f, sha in zip(batch, shas, strict=True)
                if sha is None or self.pending(f, sha, skip_done=True)
            ]
            return len(batch), (len(batch) - len(todo)) * n_prompts, todo

        async with tx:
            while True:
                seen, skipped, todo = await anyio.to_thread.run_sync(next_batch)
                if not seen:
                    break
                self.tally.images += seen
                self.tally.skipped += skipped
                for entry in todo:
                    await tx.send(entry)
        self.tally.walk_done = True

    def pending(self, f: ImageFile, sha: str, *, skip_done: bool = False) -> list[Pending]:
        """Every (image, prompt) item of ``f`` with its key; with ``skip_done`` only those not
        done yet (keys are checked before any object is made: most files of a rerun have none)."""
        out = []
        for prompt, settings, request_settings, fixed_text in self._prompts:
            text = fixed_text if fixed_text is not None else render(prompt.text, f.relpath)
            key = key_from(settings, sha, f.relpath, text)
            if not (skip_done and key in self.done):
                rkey = key_from(request_settings, sha, "", text)
                out.append(Pending(key, prompt, text, rkey))
        return out

    def _load(self, f: ImageFile) -> Loaded:
        """Read, hash, find the items still to do and encode, in one worker-thread hop."""
        raw, sha = read_file(f.full)  # the walker's str: no Path per file
        todo = self.pending(f, sha, skip_done=True)
        if not todo:
            return Loaded(sha, todo, None, None, 0.0)
        t0 = time.perf_counter()
        try:
            image = encode_image(raw, self.job.image)
        except InvalidImageError as exc:
            return Loaded(sha, todo, None, str(exc), 0.0)
        return Loaded(sha, todo, image, None, time.perf_counter() - t0)

    def _load_batch(self, files: list[ImageFile]) -> list[Loaded | InvalidImageError]:
        """``_load`` for several files in one thread hop (an unreadable file: its error)."""
        out: list[Loaded | InvalidImageError] = []
        for f in files:
            try:
                out.append(self._load(f))
            except InvalidImageError as exc:
                out.append(exc)
        return out

    async def prepare(
        self,
        rx: MemoryObjectReceiveStream[ImageFile],
        tx: ObjectSendStream[RequestItem],
        rows: ObjectSendStream[Row],
    ) -> None:
        n_prompts = len(self.job.prompts)
        async with rx, tx, rows:
            async for first in rx:
                # Small files already waiting go along in the same thread hop: a hop costs
                # the event loop ~0.1 ms, as much as reading, hashing and passing through a
                # small JPEG. Big ones go one by one, so both encoder threads stay busy.
                batch, size = [first], max(first.size, 0)
                while len(batch) < PREPARE_BATCH and size < PREPARE_BATCH_BYTES:
                    try:
                        f = rx.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    batch.append(f)
                    size += max(f.size, 0)
                results = await anyio.to_thread.run_sync(self._load_batch, batch, limiter=self.cpu)
                for f, got in zip(batch, results, strict=True):
                    if isinstance(got, InvalidImageError):  # unreadable: its bytes are unknown
                        await self._invalid(rows, f, None, self.pending(f, ""), str(got))
                        continue
                    self.cache.remember(f.relpath, f.size, f.mtime_ns, got.sha, f.ctime_ns, f.ino)
                    self.tally.skipped += n_prompts - len(got.todo)
                    if got.error is not None:
                        await self._invalid(rows, f, got.sha, got.todo, got.error)
                        continue
                    if got.image is None:
                        continue
                    for p in got.todo:  # keys were computed in the thread
                        item = RequestItem(
                            p.key, p.request_key, f.relpath, got.sha, p.prompt, p.text, got.image,
                            got.encode_s, time.perf_counter(),
                        )  # fmt: skip
                        await tx.send(item)

    async def _invalid(
        self,
        rows: ObjectSendStream[Row],
        f: ImageFile,
        sha: str | None,
        items: list[Pending],
        error: str,
    ) -> None:
        now = utc_now()
        for p in items:
            row = self.make_row(
                p.key, f.relpath, sha, p.prompt, STATUS_INVALID, now, now, error=error, attempts=0
            )
            await rows.send(row)

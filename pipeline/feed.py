"""The feeding stages: input folder or manifest -> (walk) -> files -> (prepare) -> request items.

The walk lists the tree (or streams the manifest's rows) in a worker thread, a batch at a time,
and looks each file up in the hash cache. ``prepare`` works out each file's items (image x
prompt) and their keys, skips the ones already done without reading the file when its size and
mtime are unchanged, and otherwise reads, hashes and encodes it in a thread, once for all its
prompts. Unreadable or undecodable files, and manifest rows that name a missing file or lack a
variable their prompt uses, become ``invalid`` rows here and never reach the server. A manifest
that cannot be parsed stops the run (``on_fatal``) with what was done so far saved.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pyarrow.fs import FileSystem

from .config import Job
from .encode import EncodedImage, encode_image
from .errors import ConfigError, InvalidImageError
from .items import Pending, RequestItem, Row, RowMaker
from .manifest import Entry, ManifestError, count_rows, open_manifest, read_entries
from .payload import key_from, settings_digest
from .progress import Tally
from .schema import STATUS_INVALID, utc_now
from .shards import parse_shard
from .state import HashCache
from .storage import ObjectStat, is_uri, read_bytes, read_uri, resolve, stat_uri
from .templates import MissingVariable, names, render, uses_variables
from .walker import ImageFile, walk_input

WALK_BATCH = 256
PREPARE_BATCH = 16  # files per thread hop at most...
PREPARE_BATCH_BYTES = 1 << 20  # ...and about this many bytes
WALK_BATCH_BYTES = 64 << 20  # a walk batch of manifest rows with embedded images ends here


@dataclass(frozen=True, slots=True)
class Loaded:
    """One file after reading: its hash, the items still to do, and the image (or why not)."""

    sha: str
    todo: list[Pending]
    image: EncodedImage | None
    error: str | None
    encode_s: float


MAX_FILE_BYTES = 1 << 30  # no image we can send is this big; refuse before reading it


def read_file(path: str | os.PathLike[str], fs: FileSystem | None = None) -> tuple[bytes, str]:
    """The file's bytes and their sha256 (blocking: call in a worker thread). With ``fs`` (a
    URI input), ``path`` is an object in that ``pyarrow.fs`` file system."""
    if fs is not None:
        return _read_object(fs, str(path))
    if isinstance(path, str) and is_uri(path):  # a manifest row naming an object
        try:
            raw = read_uri(path)
        except FileNotFoundError:
            raise InvalidImageError("object disappeared before it could be read") from None
        except (OSError, ConfigError) as exc:
            raise InvalidImageError(f"cannot read object: {exc}") from None
        return _checked(raw)
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


def _read_object(fs: FileSystem, path: str) -> tuple[bytes, str]:
    try:
        raw = read_bytes(fs, path)
    except FileNotFoundError:
        raise InvalidImageError("object disappeared before it could be read") from None
    except OSError as exc:
        raise InvalidImageError(f"cannot read object: {exc}") from None
    return _checked(raw)


def _checked(raw: bytes) -> tuple[bytes, str]:
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidImageError(f"file too large ({len(raw):,} bytes)")
    return raw, hashlib.sha256(raw).hexdigest()


def remote_input(job: Job) -> bool:
    """Whether the job reads its images from object storage (a URI folder or manifest): reads
    then wait on the network, so more of them overlap."""
    inp = job.input
    return isinstance(inp.manifest, str) or (inp.manifest is None and isinstance(inp.root, str))


def input_fs(job: Job) -> FileSystem | None:
    """The ``pyarrow.fs`` file system of a URI folder input (None for a local folder or a
    manifest: a manifest's objects are URIs, ``read_file`` resolves each)."""
    inp = job.input
    if inp.manifest is None and isinstance(inp.root, str):
        return resolve(inp.root).fs
    return None


def input_files(job: Job, keys: ItemKeys) -> Iterator[ImageFile]:
    """The input's files (a folder walk or a manifest's rows), only the run's shard's."""
    inp = job.input
    files = (
        walk_input(inp.root, inp.patterns)
        if inp.manifest is None
        else manifest_files(inp.manifest, inp.keep, keys.variables)
    )
    shard = parse_shard(job.run.shard)
    return files if shard is None else (f for f in files if shard.has(f.relpath))


class ItemKeys:
    """The items of one input file (one per prompt) and their keys."""

    def __init__(self, job: Job) -> None:
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
        self.variables: set[str] = set().union(*(names(p.text) for p in job.prompts))

    def pending(self, f: ImageFile, sha: str, done: set[str] | None = None) -> list[Pending]:
        """Every (image, prompt) item of ``f`` with its key, but those whose key is in ``done``
        (keys are checked before any object is made: most files of a rerun have none)."""
        out = []
        for prompt, settings, request_settings, fixed_text in self._prompts:
            error = None
            if fixed_text is not None:
                text = fixed_text
            else:
                try:
                    text = render(prompt.text, f.relpath, f.variables)
                except MissingVariable as exc:  # the key then holds the template itself
                    text, error = prompt.text, f"the manifest row has no value for ${exc.args[0]}"
            key = key_from(settings, sha, f.relpath, text)
            if done is None or key not in done:
                rkey = key_from(request_settings, sha, "", text)
                out.append(Pending(key, prompt, text, rkey, error))
        return out


class Feed:
    def __init__(
        self,
        job: Job,
        cache: HashCache,
        done: set[str],
        tally: Tally,
        make_row: RowMaker,
        cpu: anyio.CapacityLimiter,
        on_fatal: Callable[[str], None] = lambda _why: None,
        on_limit: Callable[[], None] = lambda: None,
    ) -> None:
        self.job = job
        self.on_limit = on_limit  # ``[run] limit`` items were sent: stop feeding
        self.budget = job.run.limit  # items still allowed to go to the server (None: no cap)
        self._sending = 0  # items being handed on now (a stop must not cancel one midway)
        self.on_fatal = on_fatal  # the input cannot be read on: stop the run (exit 2)
        self.cache = cache
        self.done = done
        self.tally = tally
        self.make_row = make_row
        self.cpu = cpu
        self.keys = ItemKeys(job)
        # Set once the walk must wait for the requests (or has ended): only then is a counting
        # walk worth its cost; a rerun with little new work walks to the end unhindered.
        self.held_back = anyio.Event()
        self.fs = input_fs(job)
        self.remote = remote_input(job)

    async def walk(
        self, tx: MemoryObjectSendStream[ImageFile], files: Iterator[ImageFile] | None = None
    ) -> None:
        """List the tree in a thread, a batch at a time; files whose items are all done (by
        the hash cache) are counted and dropped there, never reaching the event loop.
        ``files``: the input's files of this shard from elsewhere (default ``files()``)."""
        inp = self.job.input
        files = self.files() if files is None else files

        def take() -> list[ImageFile]:
            if inp.manifest is None:
                return list(itertools.islice(files, WALK_BATCH))
            batch: list[ImageFile] = []
            size = 0
            for f in itertools.islice(files, WALK_BATCH):
                batch.append(f)
                size += len(f.data or b"")
                if size >= WALK_BATCH_BYTES:
                    break
            return batch

        def next_batch() -> tuple[int, int, list[ImageFile]]:
            return self.classify(take())

        async with tx:
            while True:
                try:
                    seen, skipped, todo = await anyio.to_thread.run_sync(next_batch)
                except ManifestError as exc:
                    self.on_fatal(str(exc))
                    break
                except OSError as exc:  # an object store's listing failed (a folder walk
                    self.on_fatal(str(exc))  # skips what it cannot read instead)
                    break
                if not seen:
                    break
                self.tally.images += seen
                self.tally.skipped += skipped
                for entry in todo:
                    if not self.held_back.is_set():
                        try:
                            tx.send_nowait(entry)
                            continue
                        except anyio.WouldBlock:  # the requests hold the walk back from now on
                            self.held_back.set()
                    await tx.send(entry)
        self.tally.walk_done = True
        self.held_back.set()  # (wakes a counting walk that waited for it: nothing to count)

    def files(self) -> Iterator[ImageFile]:
        """The input's files (a folder walk or a manifest's rows), only this run's shard's."""
        return input_files(self.job, self.keys)

    def classify(self, batch: list[ImageFile]) -> tuple[int, int, list[ImageFile]]:
        """(files seen, items skipped, files still to prepare) of a walk batch: files whose
        items are all done by the hash cache's sha256 are counted and dropped (blocking)."""
        n_prompts = len(self.job.prompts)
        on_disk = [f for f in batch if f.data is None and f.error is None]
        cached = dict(
            zip(
                (f.relpath for f in on_disk),
                self.cache.lookup_many(
                    [(f.relpath, f.size, f.mtime_ns, f.ctime_ns, f.ino) for f in on_disk]
                ),
                strict=True,
            )
        )
        todo = []
        for f in batch:
            sha = cached.get(f.relpath) if f.data is None else hashlib.sha256(f.data).hexdigest()
            if f.error is not None or sha is None or self.pending(f, sha, skip_done=True):
                todo.append(f)
        return len(batch), (len(batch) - len(todo)) * n_prompts, todo

    def count(self, stopped: Callable[[], bool]) -> tuple[int, int | None] | None:
        """(images, items already done) of the whole input, by a walk of its own beside the
        feeding one, so the progress total is known within seconds (blocking). A manifest's
        rows are only counted (hashing embedded images twice would cost too much): its done
        items turn up as the feed meets them. None if ``stopped()`` or it cannot tell."""
        inp = self.job.input
        if inp.manifest is not None:
            if self.job.run.shard is not None:
                return None  # a shard's share of the rows is only known by reading them
            rows = count_rows(inp.manifest)
            return None if rows is None else (rows, None)
        images = skipped = 0
        files = self.files()
        while batch := list(itertools.islice(files, WALK_BATCH)):
            if stopped():
                return None
            seen, skip, _todo = self.classify(batch)
            images += seen
            skipped += skip
        return images, skipped

    def pending(self, f: ImageFile, sha: str, *, skip_done: bool = False) -> list[Pending]:
        """Every (image, prompt) item of ``f`` with its key; with ``skip_done`` only those not
        done yet."""
        return self.keys.pending(f, sha, self.done if skip_done else None)

    def _load(self, f: ImageFile) -> Loaded:
        """Read, hash, find the items still to do and encode, in one worker-thread hop."""
        return load_file(f, self.job, self.keys, self.done, self.fs)

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
                # objects: one per hop, so the reads of several threads overlap their waits
                most = 1 if self.remote or is_uri(first.full) else PREPARE_BATCH
                while len(batch) < most and size < PREPARE_BATCH_BYTES:
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
                    if f.data is None:
                        self.cache.remember(
                            f.relpath, f.size, f.mtime_ns, got.sha, f.ctime_ns, f.ino
                        )
                    self.tally.skipped += n_prompts - len(got.todo)
                    unusable = [p for p in got.todo if p.error is not None]
                    usable = [p for p in got.todo if p.error is None]
                    if unusable:
                        await self._invalid(rows, f, got.sha, unusable, "")
                    if got.error is not None:
                        await self._invalid(rows, f, got.sha, usable, got.error)
                        continue
                    if got.image is None:
                        continue
                    for p in usable:  # keys were computed in the thread; one image for all
                        if self.budget is not None:
                            if self.budget <= 0:
                                break
                            self.budget -= 1
                        item = RequestItem(
                            p.key, p.request_key, f.relpath, got.sha, p.prompt, p.text, got.image,
                            got.encode_s, time.perf_counter(), f.keep,
                        )  # fmt: skip
                        self._sending += 1
                        try:
                            await tx.send(item)
                        finally:
                            self._sending -= 1
                        if self.budget == 0 and self._sending == 0:
                            self.on_limit()  # the last ones are all sent: stop feeding

    async def _invalid(
        self,
        rows: ObjectSendStream[Row],
        f: ImageFile,
        sha: str | None,
        items: list[Pending],
        error: str,
    ) -> None:
        """An ``invalid`` row per item: ``error``, else the item's own (a missing variable)."""
        for row in invalid_rows(self.make_row, f, sha, items, error):
            await rows.send(row)


def load_file(
    f: ImageFile, job: Job, keys: ItemKeys, done: set[str], fs: FileSystem | None
) -> Loaded:
    """Read ``f``, hash it, find its items not in ``done`` and encode it once for all of them
    (blocking; both engines' preparing step). An unreadable file: ``InvalidImageError``."""
    if f.error is not None:
        raise InvalidImageError(f.error)
    if f.data is not None:
        raw, sha = f.data, hashlib.sha256(f.data).hexdigest()
    else:
        raw, sha = read_file(f.full, fs)  # the walker's str: no Path per file
    todo = keys.pending(f, sha, done)
    if all(p.error is not None for p in todo):
        return Loaded(sha, todo, None, None, 0.0)
    t0 = time.perf_counter()
    try:
        image = encode_image(raw, job.image)
    except InvalidImageError as exc:
        return Loaded(sha, todo, None, str(exc), 0.0)
    return Loaded(sha, todo, image, None, time.perf_counter() - t0)


def invalid_rows(
    make_row: RowMaker, f: ImageFile, sha: str | None, items: list[Pending], error: str
) -> list[Row]:
    """An ``invalid`` row per item: ``error``, else the item's own (a missing variable)."""
    now = utc_now()
    return [
        make_row(
            p.key,
            f.relpath,
            sha,
            p.prompt,
            STATUS_INVALID,
            now,
            now,
            error=error or p.error,
            attempts=0,
            **(f.keep or {}),
        )
        for p in items
    ]


def manifest_files(path: Path | str, keep: tuple[str, ...], used: set[str]) -> Iterator[ImageFile]:
    """A manifest's rows as ``ImageFile`` records: a file it names is stat'ed here (missing:
    an ``error``); embedded bytes and row problems pass through. Raises ``ManifestError``
    (with the line) when the manifest cannot be parsed on, after the rows before it.

    Objects (URIs) are stat'ed ``STAT_THREADS`` at a time, a chunk of rows at once: one HEAD
    request each, so a million-row manifest in object storage is not a million round trips
    one after another."""
    entries = read_entries(open_manifest(path, keep, variables=used))
    with concurrent.futures.ThreadPoolExecutor(STAT_THREADS, "caption-stat") as pool:
        while True:
            chunk: list[Entry] = []
            broken: ManifestError | None = None
            held = 0  # bytes of embedded images in the chunk
            try:
                for e in entries:
                    chunk.append(e)
                    held += len(e.data or b"")
                    if len(chunk) >= STAT_CHUNK or held >= STAT_CHUNK_BYTES:
                        break
            except ManifestError as exc:
                broken = exc
            uris = [e.path for e in chunk if e.error is None and e.data is None and e.path
                    and is_uri(e.path)]  # fmt: skip
            stats = dict(zip(uris, pool.map(_stat_object, uris), strict=True)) if uris else {}
            for e in chunk:
                yield _manifest_file(e, stats.get(e.path or ""))
            if broken is not None:
                raise broken
            if len(chunk) < STAT_CHUNK and held < STAT_CHUNK_BYTES:
                return


STAT_THREADS = 16  # HEAD requests in flight for the objects a manifest names
STAT_CHUNK = 256  # manifest rows read ahead to stat their objects together...
STAT_CHUNK_BYTES = 8 << 20  # ...fewer when they embed their images (not 256 photos held)


def _stat_object(uri: str) -> ObjectStat | str:
    """The object's stat, or why it cannot be read (a row error)."""
    try:
        return stat_uri(uri)
    except FileNotFoundError:
        return "object not found"
    except (OSError, ConfigError) as exc:
        return str(exc)


def _manifest_file(e: Entry, stat: ObjectStat | str | None) -> ImageFile:
    variables, kept = e.variables, e.keep or None
    if e.error is not None or e.data is not None or e.path is None:
        error = e.error or (None if e.data is not None else f"line {e.line}: no image")
        size = len(e.data) if e.data is not None else -1
        return ImageFile("", e.identity, size, 0, data=e.data, variables=variables, keep=kept,
                         error=error)  # fmt: skip
    if isinstance(stat, str):
        return ImageFile(e.path, e.identity, -1, 0, variables=variables, keep=kept,
                         error=f"{stat}: {e.path} (manifest line {e.line})")  # fmt: skip
    if stat is not None:
        return ImageFile(e.path, e.identity, stat.size, stat.mtime_ns, 0, stat.version,
                         variables=variables, keep=kept)  # fmt: skip
    try:
        info = os.stat(e.path)
    except OSError as exc:
        why = "file not found" if isinstance(exc, FileNotFoundError) else exc.strerror
        return ImageFile(e.path, e.identity, -1, 0, variables=variables, keep=kept,
                         error=f"{why}: {e.path} (manifest line {e.line})")  # fmt: skip
    return ImageFile(e.path, e.identity, info.st_size, info.st_mtime_ns, info.st_ctime_ns,
                     info.st_ino, variables=variables, keep=kept)  # fmt: skip

"""Shards: ``--shard I/N`` takes the images whose identity hash falls in shard I of N.

N cron jobs on N machines split one job with no coordination and write into one output folder:

- An image's shard is ``blake2b(identity) mod N`` (identity: its path relative to the input
  root, or its manifest identity), so shards 0..N-1 cover every image exactly once for any N,
  and all prompts of an image fall in one shard. Keys do not depend on the shard: a rerun with
  another N (or none) skips what any shard did.
- A sharded run's id ends in ``-s<I>of<N>``; part files and journal segments carry it in their
  names, so nothing two shards write collides.
- Locks (``flock``): a run without ``--shard`` holds ``_caption.lock`` exclusively; a shard run
  holds it shared (so no unsharded run starts meanwhile) and ``_caption.shard-<I>of<N>.lock``
  exclusively (the same shard twice: exit 75). Shard runs of another N at the same time are
  refused too (their items overlap).
- Leftovers of a crashed run (journal segments, temp files, a compaction marker) are finished by
  the next run that starts, unless they belong to a shard that is running now: a shard's
  leftovers are its own until its lock is free. Starting runs take ``_caption.recover.lock`` in
  turn while they recover, so two never recover the same leftovers at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, OutputBusyError

LOCK_NAME = "_caption.lock"
RECOVER_LOCK_NAME = "_caption.recover.lock"
_SHARD_LOCK = re.compile(r"^_caption\.shard-(?P<i>\d+)of(?P<n>\d+)\.lock$")
_TAG = re.compile(r"-(?P<tag>s(?P<i>\d+)of(?P<n>\d+))$")


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    count: int

    @property
    def tag(self) -> str:
        """``s2of7``: ends the run ids (and so the file names) of this shard's runs."""
        return f"s{self.index}of{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def has(self, identity: str) -> bool:
        return shard_of(identity, self.count) == self.index


def parse_shard(text: str | None) -> Shard | None:
    """``"2/7"`` -> ``Shard(2, 7)``; ``ConfigError`` unless 0 <= I < N."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise ConfigError(f'shard must be "I/N" (e.g. "0/4"), got {text!r}')
    index, count = int(m[1]), int(m[2])
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {text!r}: need N >= 1 and 0 <= I < N (shards are 0..N-1)")
    return Shard(index, count)


def shard_of(identity: str, count: int) -> int:
    """The shard (0..count-1) of an image identity."""
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def tag_of(run_id: str) -> str | None:
    """The shard tag a run id ends in (``s2of7``), or None for an unsharded run."""
    m = _TAG.search(run_id)
    return m["tag"] if m else None


def shard_lock_path(folder: Path, shard: Shard) -> Path:
    """``_caption.shard-<I>of<N>.lock``, as the README names it."""
    return folder / f"_caption.shard-{shard.index}of{shard.count}.lock"


def _held(path: Path) -> bool:
    """Whether another open file holds an ``flock`` on ``path`` (tested for an instant)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the test lock
    return False


def running_shards(folder: Path, *, mine: Shard | None = None) -> set[str]:
    """Tags of the shards that other runs are writing now."""
    tags = set()
    for path in folder.glob("_caption.shard-*.lock"):
        m = _SHARD_LOCK.match(path.name)
        tag = m and f"s{m['i']}of{m['n']}"
        if tag and (mine is None or tag != mine.tag) and _held(path):
            tags.add(tag)
    return tags


def is_live(run_id: str, live: set[str]) -> bool:
    """Whether a run's leftovers belong to a shard that is running now (not ours to touch)."""
    tag = tag_of(run_id)
    return tag is not None and tag in live


class OutputLock:
    """The output's lock for one run: exclusive, or shared plus its shard's (see the module)."""

    def __init__(self, folder: Path, shard: Shard | None = None) -> None:
        self.folder = folder
        self.shard = shard
        self.path = folder / LOCK_NAME
        self._fds: list[int] = []

    def acquire(self, run_id: str = "") -> None:
        """Take the lock(s) and write ``<pid> <run_id> <start time>`` into the run's own lock
        file (``status`` reads it back); ``OutputBusyError`` if another run has them."""
        where = self.folder
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fds.append(fd)
        mode = fcntl.LOCK_EX if self.shard is None else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            what = "another caption run" if self.shard is None else "a caption run without --shard"
            also = "" if self.shard is None else " (shards run beside each other, not beside it)"
            raise OutputBusyError(
                f"{what} is writing to {where} (lock {self.path} is held){also}; wait for it "
                "to finish or use another --output"
            ) from None
        own = fd
        if self.shard is not None:
            others = {
                t
                for t in running_shards(where, mine=self.shard)
                if not t.endswith(f"of{self.shard.count}")
            }
            if others:
                self.release()
                running = ", ".join(sorted(others))
                raise OutputBusyError(
                    f"shards of another count are writing to {where} ({running}); shards that "
                    f"run at once must all use one N (this run: {self.shard})"
                )
            path = shard_lock_path(where, self.shard)
            own = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            self._fds.append(own)
            try:
                fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.release()
                raise OutputBusyError(
                    f"another caption run is writing shard {self.shard} to {where} (lock {path} "
                    "is held); wait for it to finish"
                ) from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(own, 0)
        os.write(own, f"{os.getpid()} {run_id or '-'} {started}\n".encode())

    def release(self) -> None:
        for fd in reversed(self._fds):
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._fds = []


@contextlib.contextmanager
def recovering(folder: Path) -> Iterator[None]:
    """Held while a starting run recovers leftovers: one run at a time (blocking)."""
    fd = os.open(folder / RECOVER_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

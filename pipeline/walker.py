"""Walk the input folder lazily: root -> ``ImageFile`` records, one at a time, in a fixed order.

Depth-first, entries sorted by name within each folder, so two walks of the same tree give the
same order. Hidden entries (names starting with ``.``) are skipped. Symlinks are followed, but a
folder is entered at most once (keyed by device and inode), so symlink loops end. Only one
folder's listing is held at a time per level of depth: a million files never become a million
objects at once.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class ImageFile(NamedTuple):
    """One file found by the walk. A named tuple: 0.7 us to make vs 2 us for a frozen
    dataclass, and a no-op rerun makes one per file (100,000 in bench/bookkeeping.py)."""

    full: str  # absolute path (a str: building a Path per file costs more than its stat)
    relpath: str  # relative to the input root, POSIX separators, always valid UTF-8
    size: int  # bytes; -1 when stat failed (the encoder reports why)
    mtime_ns: int
    ctime_ns: int = 0  # with the inode, catches edits that restore size and mtime
    ino: int = 0
    # From a manifest row (None for a walked file):
    data: bytes | None = None  # the image's bytes, embedded in the manifest (no file)
    variables: Mapping[str, str] | None = None  # the row's template variables
    keep: Mapping[str, Any] | None = None  # the row's columns copied into its result rows
    error: str | None = None  # why the row is unusable (an ``invalid`` row, never sent)

    @property
    def path(self) -> Path:
        return Path(self.full)


def printable(name: str) -> str:
    """A file name that is not valid UTF-8 arrives with surrogate escapes (PEP 383); spell those
    bytes as ``\\xNN`` so the name can be stored, sent and printed."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        return raw.decode("utf-8", "backslashreplace")


def _matcher(patterns: tuple[str, ...]) -> Callable[[str], object]:
    """One compiled, case-insensitive regex for all the globs (8 fnmatch calls cost more)."""
    joined = "|".join(fnmatch.translate(p) for p in patterns)
    return re.compile(joined, re.IGNORECASE).match


def walk_images(root: Path, patterns: tuple[str, ...]) -> Iterator[ImageFile]:
    """Yield the files under ``root`` whose name matches one of ``patterns`` (any case)."""
    root = root.resolve()
    matches = _matcher(patterns)
    seen: set[tuple[int, int]] = set()
    st = root.stat()
    seen.add((st.st_dev, st.st_ino))
    # Each stack frame: (folder path ending in "/", its relative prefix, sorted remaining
    # names, which of them are folders). Paths are joined by "+": os.path.join costs 1.5 us.
    base = str(root).rstrip("/") + "/"
    stack: list[tuple[str, str, list[str], set[str]]] = [(base, "", *_listing(base))]
    while stack:
        folder, prefix, names, dirs = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        is_dir = name in dirs
        if not is_dir and not matches(name):
            continue  # no stat() for files that are not images
        full = folder + name
        rel = f"{prefix}{printable(name)}"
        try:
            info = os.stat(full)  # follows symlinks
        except OSError:
            if os.path.islink(full) and not is_dir:
                yield ImageFile(full, rel, -1, 0)  # dangling link: reported later
            continue
        if is_dir:
            ident = (info.st_dev, info.st_ino)
            if ident in seen:
                continue  # symlink loop or second link to a folder already walked
            seen.add(ident)
            stack.append((full + "/", f"{rel}/", *_listing(full)))
        elif not stat.S_ISDIR(info.st_mode):
            yield ImageFile(
                full, rel, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino
            )


def _listing(folder: str) -> tuple[list[str], set[str]]:
    """Visible names in ``folder`` sorted in reverse (``pop()`` yields them in order), and
    which of them are folders (from the directory entry's type: no stat() per entry)."""
    try:
        with os.scandir(folder) as it:
            entries = [(e.name, _is_dir(e)) for e in it if not e.name.startswith(".")]
    except OSError as exc:
        log.warning("skipping unreadable folder %s: %s", folder, exc.strerror or exc)
        return [], set()
    names = sorted((n for n, _ in entries), reverse=True)
    return names, {n for n, d in entries if d}


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; no syscall unless the entry is a link
    except OSError:
        return False


def walk_objects(uri: str, patterns: tuple[str, ...]) -> Iterator[ImageFile]:
    """``walk_images`` for a URI (``s3://bucket/prefix``): the objects below it whose name
    matches, streamed from the store's listing (``storage.iter_objects``). ``full`` is the
    object's path in its file system (``bucket/key``); the S3 ETag stands in for the inode in
    the hash cache's key (it changes with the bytes)."""
    from .storage import etag_number, iter_objects, resolve

    for obj in iter_objects(resolve(uri), _matcher(patterns)):
        yield ImageFile(obj.path, obj.relpath, obj.size, obj.mtime_ns, 0, etag_number(obj.etag))


def walk_input(root: Path | str, patterns: tuple[str, ...]) -> Iterator[ImageFile]:
    """The input's image files: a local folder's walk, or a URI's listing."""
    if isinstance(root, str):
        return walk_objects(root, patterns)
    return walk_images(root, patterns)

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageFile:
    path: Path  # absolute path
    relpath: str  # relative to the input root, POSIX separators, always valid UTF-8
    size: int  # bytes; -1 when stat failed (the encoder reports why)
    mtime_ns: int
    ctime_ns: int = 0  # with the inode, catches edits that restore size and mtime
    ino: int = 0


def printable(name: str) -> str:
    """A file name that is not valid UTF-8 arrives with surrogate escapes (PEP 383); spell those
    bytes as ``\\xNN`` so the name can be stored, sent and printed."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        return raw.decode("utf-8", "backslashreplace")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


def walk_images(root: Path, patterns: tuple[str, ...]) -> Iterator[ImageFile]:
    """Yield the files under ``root`` whose name matches one of ``patterns`` (any case)."""
    root = root.resolve()
    seen: set[tuple[int, int]] = set()
    st = root.stat()
    seen.add((st.st_dev, st.st_ino))
    # Each stack frame: (folder path, its relative prefix, sorted remaining names).
    stack: list[tuple[str, str, list[str]]] = [(str(root), "", _listing(str(root)))]
    while stack:
        folder, prefix, names = stack[-1]
        if not names:
            stack.pop()
            continue
        name = names.pop()
        full = os.path.join(folder, name)
        rel = f"{prefix}{printable(name)}"
        try:
            info = os.stat(full)  # follows symlinks
        except OSError:
            if os.path.islink(full) and _matches(name, patterns):
                yield ImageFile(Path(full), rel, -1, 0)  # dangling link: reported later
            continue
        if os.path.isdir(full):
            ident = (info.st_dev, info.st_ino)
            if ident in seen:
                continue  # symlink loop or second link to a folder already walked
            seen.add(ident)
            stack.append((full, f"{rel}/", _listing(full)))
        elif _matches(name, patterns):
            yield ImageFile(
                Path(full), rel, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino
            )


def _listing(folder: str) -> list[str]:
    """Visible names in ``folder``, sorted in reverse so that ``pop()`` yields them in order."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if not e.name.startswith(".")]
    except OSError as exc:
        log.warning("skipping unreadable folder %s: %s", folder, exc.strerror or exc)
        return []
    names.sort(reverse=True)
    return names

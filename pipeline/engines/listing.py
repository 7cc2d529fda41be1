"""An input folder listed in parts, so the parts can be listed at once (``--engine ray``).

``iter_top`` lists only the top level of the input (streamed): the files directly in it, and
the names of its folders (``split_input`` gathers them). ``list_folder`` lists one of those
folders whole (recursively), with paths relative to the input root, only the images of one
shard; the Ray engine runs one task per folder, so a tree of many folders (a camera archive by
day, a bucket by prefix) is listed by as many workers as the cluster gives it. Together they
yield exactly what ``walk_input`` yields (tested): the same files, the same ``relpath`` and
hash-cache keys, in another order. One difference: a symlink inside one top-level folder that
leads into another is followed by both listings (the single walk follows a folder once), so
those images are listed under both paths. A folder's records come back from its task as one
list (a single folder of a million files is one list of ~0.2 GB on the driver).

Pure functions of the file system: no Ray here, so they are tested without it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs

from .. import storage
from ..shards import parse_shard
from ..storage import (
    Location,
    datetime_ns,
    etag_number,
    resolve,
    s3_client,
    uri_child,
)
from ..walker import ImageFile, _matcher, printable, walk_images, walk_objects


@dataclass(frozen=True)
class Split:
    """The top level of an input: its folders (listed by ``list_folder``) and its files."""

    folders: list[str]  # names as the file system has them (a local one may be undecodable)
    files: list[ImageFile]


class Folder(NamedTuple):
    """A top-level folder of the input, to be listed by ``list_folder``."""

    name: str


def iter_top(root: Path | str, patterns: tuple[str, ...]) -> Iterator[ImageFile | Folder]:
    """The input's top level (one listing, not recursive), streamed: its image files and its
    folders as they come (a flat bucket of a million objects is never one list); hidden names
    are left out, as the walk leaves them out. ``OSError`` if the root cannot be listed."""
    if isinstance(root, str):
        return _top_objects(resolve(root), patterns)
    return _top_folder(root.resolve(), patterns)


def split_input(root: Path | str, patterns: tuple[str, ...]) -> Split:
    """``iter_top`` gathered: the folders and the files."""
    folders: list[str] = []
    files: list[ImageFile] = []
    for entry in iter_top(root, patterns):
        if isinstance(entry, Folder):
            folders.append(entry.name)
        else:
            files.append(entry)
    return Split(folders, files)


def list_folder(
    root: Path | str, folder: str, patterns: tuple[str, ...], shard: str | None = None
) -> list[ImageFile]:
    """The images in ``folder`` (a name from ``split_input``) and below, ``relpath`` relative to
    ``root``; with ``shard`` (``"I/N"``) only that shard's. (A Ray task's whole answer.)"""
    return list(iter_folder(root, folder, patterns, shard))


def iter_folder(
    root: Path | str, folder: str, patterns: tuple[str, ...], shard: str | None = None
) -> Iterator[ImageFile]:
    """``list_folder``, streamed."""
    prefix = f"{printable(folder)}/"
    files: Iterator[ImageFile]
    if isinstance(root, str):
        files = walk_objects(uri_child(root, folder), patterns)
    else:
        files = walk_images(Path(root) / folder, patterns)
    part = parse_shard(shard)
    for f in files:
        f = f._replace(relpath=prefix + f.relpath)
        if part is None or part.has(f.relpath):
            yield f


def _top_folder(root: Path, patterns: tuple[str, ...]) -> Iterator[ImageFile | Folder]:
    matches = _matcher(patterns)
    top = root.stat()
    seen = {(top.st_dev, top.st_ino)}  # as the walk: a folder reached twice is listed once
    with os.scandir(root) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        try:
            is_dir = e.is_dir()  # follows symlinks, as the walk does
        except OSError:
            is_dir = False
        if is_dir:
            try:
                info = os.stat(e.path)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                yield Folder(e.name)
            continue
        if not matches(e.name):
            continue
        full = os.path.join(root, e.name)
        try:
            info = os.stat(full)
        except OSError:
            if os.path.islink(full):
                yield ImageFile(full, printable(e.name), -1, 0)  # dangling link
            continue
        if not stat.S_ISDIR(info.st_mode):
            yield ImageFile(full, printable(e.name), info.st_size, info.st_mtime_ns,
                            info.st_ctime_ns, info.st_ino)  # fmt: skip


def _top_objects(loc: Location, patterns: tuple[str, ...]) -> Iterator[ImageFile | Folder]:
    matches = _matcher(patterns)
    if loc.s3 is not None and storage.botocore_available():
        bucket, _, prefix = loc.path.partition("/")
        prefix = f"{prefix}/" if prefix else ""
        client = s3_client(loc.s3)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
        while True:
            try:
                page = client.list_objects_v2(**kwargs)
            except Exception as exc:  # botocore's errors share no base class with OSError
                raise OSError(f"cannot list {loc.uri}: {exc}") from None
            for common in page.get("CommonPrefixes", ()):
                name = str(common["Prefix"])[len(prefix) :].rstrip("/")
                if name and not name.startswith("."):
                    yield Folder(name)
            for obj in page.get("Contents", ()):
                name = str(obj["Key"])[len(prefix) :]
                if name and not name.startswith(".") and matches(name):
                    etag = etag_number(str(obj.get("ETag", "")).strip('"'))
                    mtime = datetime_ns(obj.get("LastModified"))
                    path = f"{bucket}/{obj['Key']}"
                    yield ImageFile(path, name, int(obj["Size"]), mtime, 0, etag)
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=False))
    except (OSError, pa.ArrowException) as exc:
        raise OSError(f"cannot list {loc.uri}: {exc}") from None
    for info in sorted(infos, key=lambda i: i.path):
        name = info.base_name
        if name.startswith("."):
            continue
        if info.type == pafs.FileType.Directory:
            yield Folder(name)
        elif info.type == pafs.FileType.File and matches(name):
            yield ImageFile(info.path, name, info.size or 0, info.mtime_ns or 0)

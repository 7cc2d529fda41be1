"""``pipeline.engines.listing``: an input listed in parts (the Ray engine's parallel listing)
yields exactly what the one walk yields. The object-store half is in test_storage_s3.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import make_images

from pipeline.config.settings import DEFAULT_PATTERNS
from pipeline.engines.listing import list_folder, split_input
from pipeline.shards import parse_shard
from pipeline.walker import ImageFile, walk_input


def parts_of(root: Path | str, shard: str | None = None) -> list[ImageFile]:
    split = split_input(root, DEFAULT_PATTERNS)
    part = parse_shard(shard)
    files = [f for f in split.files if part is None or part.has(f.relpath)]
    for name in split.folders:
        files += list_folder(root, name, DEFAULT_PATTERNS, shard)
    return sorted(files)


def walked(root: Path | str, shard: str | None = None) -> list[ImageFile]:
    part = parse_shard(shard)
    return sorted(
        f for f in walk_input(root, DEFAULT_PATTERNS) if part is None or part.has(f.relpath)
    )


def test_parts_equal_the_walk(tmp_path: Path) -> None:
    root = tmp_path / "in"
    make_images(root, 12)  # a/ b/ c/ d/
    make_images(root / "deep" / "er", 3, seed=2)
    (root / "top.jpg").write_bytes((root / "a" / "img0000.jpg").read_bytes())
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.jpg").write_bytes(b"x")
    (root / "a" / ".skip.jpg").write_bytes(b"x")
    (root / "empty").mkdir()
    os.symlink(root / "b", root / "link-to-b")  # b again: listed once, as the walk does
    os.symlink(root, root / "loop")
    split = split_input(root, DEFAULT_PATTERNS)
    assert split.folders == ["a", "b", "c", "d", "deep", "empty"]
    assert [f.relpath for f in split.files] == ["top.jpg"]
    got = parts_of(root)
    assert got == walked(root)  # same paths, sizes, times, inodes
    assert len(got) == 12 + 3 + 1
    assert "deep/er/a/img0000.jpg" in {f.relpath for f in got}


@pytest.mark.parametrize("shard", ["0/3", "1/3", "2/3"])
def test_parts_of_a_shard(tmp_path: Path, shard: str) -> None:
    root = tmp_path / "in"
    make_images(root, 30)
    (root / "x.jpg").write_bytes(b"x")
    assert parts_of(root, shard) == walked(root, shard)


def test_an_undecodable_folder_name(tmp_path: Path) -> None:
    root = tmp_path / "in"
    odd = os.fsdecode(b"caf\xe9")
    make_images(root / odd, 2)
    assert parts_of(root) == walked(root)
    assert all(f.relpath.startswith("caf\\xe9/") for f in parts_of(root))

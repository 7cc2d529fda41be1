"""The lazy, deterministic walk of the input folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

import pipeline.walker as walker
from pipeline.config import DEFAULT_PATTERNS
from pipeline.walker import ImageFile, walk_images


def touch(root: Path, *relpaths: str) -> None:
    """Create small files (content = their relative path) under ``root``."""
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())


def rels(root: Path, patterns: tuple[str, ...] = DEFAULT_PATTERNS) -> list[str]:
    return [f.relpath for f in walk_images(root, patterns)]


class TestOrder:
    def test_depth_first_sorted_by_name(self, tmp_path: Path) -> None:
        """Entries are visited depth-first in name order, whatever the creation order."""
        touch(tmp_path, "c.jpeg", "a/sub/x.png", "b.jpg", "a/2.jpg", "B.jpg", "a/10.jpg")
        assert rels(tmp_path) == [
            "B.jpg",
            "a/10.jpg",
            "a/2.jpg",
            "a/sub/x.png",
            "b.jpg",
            "c.jpeg",
        ]

    def test_two_walks_give_the_same_order(self, tmp_path: Path) -> None:
        """Walking the same tree twice yields the same sequence."""
        touch(tmp_path, *(f"d{i % 3}/e{i % 2}/img{i}.jpg" for i in range(30)))
        first = rels(tmp_path)
        assert len(first) == 30
        assert first == rels(tmp_path)

    def test_folder_is_walked_in_place_among_files(self, tmp_path: Path) -> None:
        """A folder's files come where the folder's name sorts, before later siblings."""
        touch(tmp_path, "a.jpg", "m/inner.jpg", "z.jpg")
        assert rels(tmp_path) == ["a.jpg", "m/inner.jpg", "z.jpg"]


class TestFilter:
    @pytest.mark.parametrize(
        ("name", "included"),
        [
            ("photo.jpg", True),
            ("PHOTO.JPG", True),
            ("Photo.JpEg", True),
            ("scan.TIFF", True),
            ("icon.png", True),
            ("anim.GIF", True),
            ("pic.webp", True),
            ("pic.bmp", True),
            ("notes.txt", False),
            ("photo.jpg.bak", False),
            ("jpg", False),
            ("photo.jpgx", False),
            ("photo", False),
            (".hidden.jpg", False),
        ],
    )
    def test_default_patterns(self, tmp_path: Path, name: str, included: bool) -> None:
        """Default patterns match image extensions in any case; others and hidden are skipped."""
        touch(tmp_path, name, "keep.jpg")
        assert (name in rels(tmp_path)) is included
        assert "keep.jpg" in rels(tmp_path)

    def test_patterns_are_case_insensitive_both_ways(self, tmp_path: Path) -> None:
        """An upper-case pattern matches lower-case names too."""
        touch(tmp_path, "a.jpg", "b.JPG", "c.png")
        assert rels(tmp_path, ("*.JPG",)) == ["a.jpg", "b.JPG"]

    def test_custom_patterns(self, tmp_path: Path) -> None:
        """Only names matching one of the given patterns are yielded."""
        touch(tmp_path, "cam_001.jpg", "cam_002.png", "other.jpg")
        assert rels(tmp_path, ("cam_*",)) == ["cam_001.jpg", "cam_002.png"]

    def test_hidden_folders_are_skipped(self, tmp_path: Path) -> None:
        """Files inside folders whose name starts with a dot are never yielded."""
        touch(tmp_path, ".cache/a.jpg", ".git/objects/b.jpg", "sub/.thumbs/c.jpg", "sub/d.jpg")
        assert rels(tmp_path) == ["sub/d.jpg"]

    def test_empty_tree(self, tmp_path: Path) -> None:
        """A folder without matching files yields nothing."""
        touch(tmp_path, "readme.txt", "empty/.keep")
        (tmp_path / "nothing").mkdir()
        assert rels(tmp_path) == []


class TestRecords:
    def test_relpath_is_relative_posix_and_path_absolute(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """relpath is relative with '/' separators; path is absolute and points at the file."""
        touch(tmp_path, "x/y/z.jpg")
        monkeypatch.chdir(tmp_path)
        [item] = list(walk_images(Path("x"), DEFAULT_PATTERNS))  # a relative root
        assert item.relpath == "y/z.jpg"
        assert not PurePosixPath(item.relpath).is_absolute()
        assert "\\" not in item.relpath
        assert item.path.is_absolute()
        assert item.path == (tmp_path / "x" / "y" / "z.jpg").resolve()

    def test_size_and_mtime_come_from_stat(self, tmp_path: Path) -> None:
        """size, mtime, ctime and inode are the file's stat values."""
        touch(tmp_path, "a/pic.png")
        st = (tmp_path / "a" / "pic.png").stat()
        [item] = list(walk_images(tmp_path, DEFAULT_PATTERNS))
        assert item == ImageFile(
            str((tmp_path / "a" / "pic.png").resolve()),
            "a/pic.png",
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        )


class TestSymlinks:
    def test_symlink_loop_to_parent_terminates(self, tmp_path: Path) -> None:
        """A folder symlink pointing back up the tree is not re-entered; each file comes once."""
        touch(tmp_path, "top.jpg", "sub/a.jpg", "sub/deeper/b.jpg")
        os.symlink("..", tmp_path / "sub" / "loop")
        os.symlink(".", tmp_path / "sub" / "deeper" / "self")
        os.symlink("../..", tmp_path / "sub" / "deeper" / "up2")
        found = rels(tmp_path)
        assert found == ["sub/a.jpg", "sub/deeper/b.jpg", "top.jpg"]

    def test_second_link_to_walked_folder_is_skipped(self, tmp_path: Path) -> None:
        """Two names for one folder: its files are yielded once, under the first name."""
        touch(tmp_path, "a/pic.jpg")
        os.symlink("a", tmp_path / "b")
        assert rels(tmp_path) == ["a/pic.jpg"]

    def test_file_symlink_is_followed(self, tmp_path: Path) -> None:
        """A symlink to an image is yielded under the link's name with the target's size."""
        touch(tmp_path, "real/pic.jpg")
        os.symlink(tmp_path / "real" / "pic.jpg", tmp_path / "link.jpg")
        items = {f.relpath: f for f in walk_images(tmp_path, DEFAULT_PATTERNS)}
        assert sorted(items) == ["link.jpg", "real/pic.jpg"]
        assert items["link.jpg"].size == (tmp_path / "real" / "pic.jpg").stat().st_size

    def test_dangling_symlink_is_reported_with_size_minus_one(self, tmp_path: Path) -> None:
        """A broken link with an image name is yielded with size -1 (the encoder reports it)."""
        os.symlink(tmp_path / "missing.jpg", tmp_path / "broken.jpg")
        os.symlink(tmp_path / "missing.txt", tmp_path / "broken.txt")
        items = list(walk_images(tmp_path, DEFAULT_PATTERNS))
        assert [(f.relpath, f.size) for f in items] == [("broken.jpg", -1)]


class TestLaziness:
    def test_returns_an_iterator(self, tmp_path: Path) -> None:
        """walk_images returns an iterator whose first item is available via next()."""
        touch(tmp_path, "a/1.jpg", "b/2.jpg")
        walk = walk_images(tmp_path, DEFAULT_PATTERNS)
        assert isinstance(walk, Iterator)
        assert next(walk).relpath == "a/1.jpg"

    def test_later_folders_are_listed_only_when_reached(self, tmp_path: Path) -> None:
        """A file added to a not-yet-visited folder after the first next() is still found."""
        touch(tmp_path, "a/1.jpg", "z/2.jpg")
        walk = walk_images(tmp_path, DEFAULT_PATTERNS)
        assert next(walk).relpath == "a/1.jpg"
        touch(tmp_path, "z/3.jpg")
        assert [f.relpath for f in walk] == ["z/2.jpg", "z/3.jpg"]

    def test_nothing_is_listed_before_first_next(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Calling walk_images does no IO until the first item is requested."""
        calls: list[str] = []
        real = walker._listing

        def spy(folder: str) -> list[str]:
            calls.append(folder)
            return real(folder)

        monkeypatch.setattr(walker, "_listing", spy)
        touch(tmp_path, "a/1.jpg", "b/2.jpg", "c/3.jpg")
        walk = walk_images(tmp_path, DEFAULT_PATTERNS)
        assert calls == []
        next(walk)
        assert [Path(c).name for c in calls] == [tmp_path.name, "a"]

"""Output-folder state: the run lock, the hash cache, done keys, the Parquet sink.

Also the pure progress helpers (``percentile``, ``format_summary``, ``Tally``), which read the
same result rows.
"""

from __future__ import annotations

import datetime as dt
import os
from array import array
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError, OutputError
from pipeline.journal import Journal, recover, schema_name
from pipeline.progress import Tally, format_summary, percentile
from pipeline.schema import (
    COLUMNS,
    SCHEMA,
    STATUS_FAILED,
    STATUS_INVALID,
    STATUS_OK,
    rows_to_table,
    schema_with_job,
)
from pipeline.sink import PartWriter, remove_stale_temps, widen, write_atomic
from pipeline.state import (
    LOCK_NAME,
    HashCache,
    OutputLock,
    dataset_schema,
    load_done_keys,
    open_hash_cache,
    parts_to_widen,
    scan_parts,
)

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def row(key: str, status: str = STATUS_OK, **extra: Any) -> dict[str, Any]:
    """A result row with every non-nullable schema field set."""
    base: dict[str, Any] = {
        "key": key,
        "image_path": f"imgs/{key}.jpg",
        "image_sha256": "0" * 64,
        "prompt_name": "describe",
        "model": "gemma3-27b",
        "status": status,
        "caption": "a caption" if status == STATUS_OK else None,
        "error": None if status == STATUS_OK else "HTTP 400: nope",
        "attempts": 1,
        "finished_at": T0,
        "run_id": "run1",
        "endpoint": "http://127.0.0.1:8102/v1",
    }
    base.update(extra)
    return base


class TestOutputLock:
    def test_second_acquire_raises_output_error(self, tmp_path: Path) -> None:
        """A second lock on the same folder fails with OutputError naming the folder."""
        first, second = OutputLock(tmp_path), OutputLock(tmp_path)
        first.acquire()
        try:
            with pytest.raises(OutputError, match="another caption run") as info:
                second.acquire()
            assert str(tmp_path) in str(info.value)
        finally:
            first.release()

    def test_released_lock_can_be_reacquired(self, tmp_path: Path) -> None:
        """After release another OutputLock on the folder succeeds."""
        first = OutputLock(tmp_path)
        first.acquire()
        first.release()
        second = OutputLock(tmp_path)
        second.acquire()
        try:
            with pytest.raises(OutputError):
                OutputLock(tmp_path).acquire()
        finally:
            second.release()
        third = OutputLock(tmp_path)
        third.acquire()
        third.release()

    def test_failed_acquire_does_not_break_holder(self, tmp_path: Path) -> None:
        """A refused acquire leaves the first lock held (a third try is refused too)."""
        first = OutputLock(tmp_path)
        first.acquire()
        try:
            for _ in range(2):
                with pytest.raises(OutputError):
                    OutputLock(tmp_path).acquire()
        finally:
            first.release()

    def test_lock_file_holds_pid(self, tmp_path: Path) -> None:
        """The lock file is created in the folder and names the holder's pid."""
        lock = OutputLock(tmp_path)
        lock.acquire("20260101T000000Z-abcdef")
        try:
            pid, run_id, started = (tmp_path / LOCK_NAME).read_text().split()
            assert (pid, run_id) == (str(os.getpid()), "20260101T000000Z-abcdef")
            assert started.endswith("Z")
        finally:
            lock.release()

    def test_release_twice_is_harmless(self, tmp_path: Path) -> None:
        """release() on a released (or never acquired) lock does nothing."""
        lock = OutputLock(tmp_path)
        lock.release()
        lock.acquire()
        lock.release()
        lock.release()
        other = OutputLock(tmp_path)
        other.acquire()
        other.release()

    def test_different_folders_do_not_conflict(self, tmp_path: Path) -> None:
        """Locks on two output folders are independent."""
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a, b = OutputLock(tmp_path / "a"), OutputLock(tmp_path / "b")
        a.acquire()
        b.acquire()
        a.release()
        b.release()


class TestHashCache:
    def test_remember_flush_reopen_lookup(self, tmp_path: Path) -> None:
        """A flushed entry survives closing and reopening the cache."""
        cache = open_hash_cache(tmp_path)
        cache.remember("a/cat.jpg", 1234, 1_700_000_000_000_000_000, "ab" * 32)
        cache.flush()
        cache.close()
        again = open_hash_cache(tmp_path)
        try:
            assert again.lookup("a/cat.jpg", 1234, 1_700_000_000_000_000_000) == "ab" * 32
        finally:
            again.close()

    @pytest.mark.parametrize(
        ("relpath", "size", "mtime_ns"),
        [
            ("a/cat.jpg", 1235, 100),
            ("a/cat.jpg", 1234, 101),
            ("a/cat.jpg", 0, 0),
            ("a/dog.jpg", 1234, 100),
            ("A/cat.jpg", 1234, 100),
        ],
    )
    def test_lookup_misses_when_anything_differs(
        self, tmp_path: Path, relpath: str, size: int, mtime_ns: int
    ) -> None:
        """A different size, mtime or path is a miss (None), not a stale hash."""
        cache = HashCache(tmp_path / "h.sqlite")
        try:
            cache.remember("a/cat.jpg", 1234, 100, "f" * 64)
            cache.flush()
            assert cache.lookup("a/cat.jpg", 1234, 100) == "f" * 64
            assert cache.lookup(relpath, size, mtime_ns) is None
        finally:
            cache.close()

    def test_newer_entry_replaces_older(self, tmp_path: Path) -> None:
        """Remembering a path again replaces its size, mtime and hash."""
        cache = HashCache(tmp_path / "h.sqlite")
        try:
            cache.remember("x.jpg", 1, 1, "1" * 64)
            cache.flush()
            cache.remember("x.jpg", 2, 2, "2" * 64)
            cache.flush()
            assert cache.lookup("x.jpg", 1, 1) is None
            assert cache.lookup("x.jpg", 2, 2) == "2" * 64
        finally:
            cache.close()

    def test_close_flushes_pending(self, tmp_path: Path) -> None:
        """close() writes entries remembered since the last flush."""
        cache = HashCache(tmp_path / "h.sqlite")
        cache.remember("late.jpg", 5, 6, "7" * 64)
        cache.close()
        again = HashCache(tmp_path / "h.sqlite")
        try:
            assert again.lookup("late.jpg", 5, 6) == "7" * 64
        finally:
            again.close()

    def test_unusable_path_is_output_error(self, tmp_path: Path) -> None:
        """A cache that cannot be opened is an OutputError."""
        with pytest.raises(OutputError, match="hash cache"):
            open_hash_cache(tmp_path / "missing-folder")


class TestLoadDoneKeys:
    def write_parts(self, folder: Path, *batches: list[dict[str, Any]]) -> PartWriter:
        writer = PartWriter(folder, "run1", schema_with_job({"job": "test"}))
        for rows in batches:
            writer.write(rows)
        return writer

    def test_empty_folder(self, tmp_path: Path) -> None:
        """No part files means no done keys."""
        assert load_done_keys(tmp_path) == set()

    def test_ok_and_read_invalid_keys_are_done(self, tmp_path: Path) -> None:
        """ok keys are done, and invalid keys whose bytes were read; failed ones are not."""
        writer = self.write_parts(
            tmp_path,
            [row("k1"), row("k2", STATUS_FAILED), row("k3", STATUS_INVALID)],
            [row("k4"), row("k2"), row("k5", STATUS_INVALID, image_sha256=None)],
        )
        assert [p.name for p in writer.parts] == [
            "part-run1-00001.parquet",
            "part-run1-00002.parquet",
        ]
        assert load_done_keys(tmp_path) == {"k1", "k2", "k3", "k4"}
        assert load_done_keys(tmp_path, include_invalid=False) == {"k1", "k2", "k4"}

    def test_other_files_are_ignored(self, tmp_path: Path) -> None:
        """Only part-*.parquet files are read; temps and other parquet files are not."""
        self.write_parts(tmp_path, [row("k1")])
        write_atomic(rows_to_table([row("other")], SCHEMA), tmp_path / "extra.parquet")
        write_atomic(rows_to_table([row("tmp")], SCHEMA), tmp_path / "sub.parquet")
        (tmp_path / "sub.parquet").rename(tmp_path / ".part-x-00001.parquet.tmp")
        assert load_done_keys(tmp_path) == {"k1"}

    @pytest.mark.parametrize(
        "content",
        [b"this is not parquet at all", b"", b"PAR1garbagePAR1"],
        ids=["garbage", "empty", "fake-magic"],
    )
    def test_corrupt_part_stops_with_output_error(self, tmp_path: Path, content: bytes) -> None:
        """An unreadable part file stops the run, naming it (skipping it would redo its keys)."""
        self.write_parts(tmp_path, [row("k1")], [row("k2"), row("k3", STATUS_FAILED)])
        (tmp_path / "part-x.parquet").write_bytes(content)
        with pytest.raises(OutputError, match=r"part-x\.parquet"):
            load_done_keys(tmp_path)

    def test_truncated_part_stops_with_output_error(self, tmp_path: Path) -> None:
        """A real part cut in half (a torn copy) is reported, not silently skipped."""
        self.write_parts(tmp_path, [row("k1")])
        good = (tmp_path / "part-run1-00001.parquet").read_bytes()
        (tmp_path / "part-a-torn.parquet").write_bytes(good[: len(good) // 2])
        with pytest.raises(OutputError, match="part-a-torn"):
            load_done_keys(tmp_path)


class TestSink:
    def test_write_atomic_leaves_no_temp_and_is_readable(self, tmp_path: Path) -> None:
        """write_atomic produces the final file only, and it reads back equal."""
        table = rows_to_table([row("k1"), row("k2", STATUS_FAILED)], SCHEMA)
        final = tmp_path / "part-r-00001.parquet"
        write_atomic(table, final)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["part-r-00001.parquet"]
        back = pq.read_table(final)
        assert back.schema.equals(SCHEMA)
        assert back.column("key").to_pylist() == ["k1", "k2"]
        assert (final.stat().st_mode & 0o777) == 0o644

    def test_write_atomic_replaces_existing(self, tmp_path: Path) -> None:
        """Writing to an existing name replaces it with the new content."""
        final = tmp_path / "part-r-00001.parquet"
        write_atomic(rows_to_table([row("old")], SCHEMA), final)
        write_atomic(rows_to_table([row("new")], SCHEMA), final)
        assert pq.read_table(final).column("key").to_pylist() == ["new"]
        assert [p.name for p in tmp_path.iterdir()] == ["part-r-00001.parquet"]

    def test_part_writer_keeps_job_metadata_and_counts(self, tmp_path: Path) -> None:
        """Parts carry the job in their schema metadata; empty writes make no file."""
        writer = PartWriter(tmp_path, "r9", schema_with_job({"model": "m"}))
        assert writer.write([]) is None
        writer.add(row("a"))
        writer.add(row("b"))
        path = writer.write(writer.take())
        assert writer.buffer == []
        assert path == tmp_path / "part-r9-00001.parquet"
        assert writer.rows_written == 2
        meta = pq.read_schema(path).metadata
        assert meta[b"caption.job"] == b'{"model": "m"}'

    def test_rows_to_table_fills_missing_with_null(self) -> None:
        """Columns missing from a row are null and types follow the schema."""
        table = rows_to_table([row("k", width=10)], SCHEMA)
        assert table.column_names == list(COLUMNS)
        assert table.column("latency_s").to_pylist() == [None]
        assert table.column("width").type == pa.int32()
        assert table.column("finished_at").to_pylist() == [T0]

    def test_missing_required_field_never_becomes_a_part(self, tmp_path: Path) -> None:
        """A row without a non-nullable field (status) fails the write; no part appears."""
        bad = row("k")
        del bad["status"]
        final = tmp_path / "part-r-00001.parquet"
        with pytest.raises(pa.ArrowInvalid, match="status"):
            write_atomic(rows_to_table([bad], SCHEMA), final)
        assert not final.exists()
        assert load_done_keys(tmp_path) == set()

    def test_remove_stale_temps(self, tmp_path: Path) -> None:
        """Only hidden part temp files are removed; parts and other files stay."""
        for name in (".part-a-00001.parquet.tmp", ".part-b-00002.parquet.tmp"):
            (tmp_path / name).write_bytes(b"x")
        (tmp_path / "part-a-00001.parquet").write_bytes(b"x")
        (tmp_path / "_caption.lock").write_bytes(b"")
        assert remove_stale_temps(tmp_path) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "_caption.lock",
            "part-a-00001.parquet",
        ]


class TestOwnColumns:
    """A job's own columns (schema properties, kept manifest columns) across runs."""

    TAGS = pa.list_(pa.string())

    def test_recovered_journal_keeps_its_runs_column_types(self, tmp_path: Path) -> None:
        """A crashed run's journal comes back with that run's columns, typed, though the
        recovering run's schema has none of them; the schema file then goes."""
        theirs = schema_with_job({}, [("tags", self.TAGS), ("n", pa.int64())])
        journal = Journal(tmp_path, "crashed", theirs)
        journal.append([row("k1", tags=["a", "b"], n=3)])
        journal.rotate()  # closes the segment's file, as the kernel does for a killed process
        assert (tmp_path / schema_name("crashed")).exists()
        assert recover(tmp_path, schema_with_job({})) == 1
        (part,) = tmp_path.glob("part-*.parquet")
        table = pq.read_table(part)
        assert table.schema.field("tags").type == self.TAGS
        assert table.to_pylist()[0]["tags"] == ["a", "b"] and table.to_pylist()[0]["n"] == 3
        assert not (tmp_path / schema_name("crashed")).exists()

    def test_closed_journal_removes_its_schema_file_once_its_segments_are_gone(
        self, tmp_path: Path
    ) -> None:
        """The schema file lives exactly as long as the run's journal segments."""
        journal = Journal(tmp_path, "r1", schema_with_job({}))
        journal.append([row("k1")])
        journal.close()
        assert (tmp_path / schema_name("r1")).exists()  # the segment still holds a row
        journal.discard(journal.rotate())
        journal.close()
        assert not (tmp_path / schema_name("r1")).exists()

    def test_dataset_schema_widens_and_old_parts_get_null_columns(self, tmp_path: Path) -> None:
        """Columns of earlier runs join this run's; a part lacking some gets them as nulls,
        keeping its rows and its own metadata."""
        old = schema_with_job({"run": "old"}, [("mood", pa.string())])
        write_atomic(
            rows_to_table([row("k1", mood="calm")], old), tmp_path / "part-a-00001.parquet"
        )
        mine = schema_with_job({"run": "new"}, [("tags", self.TAGS)])
        done, parts = scan_parts(tmp_path)
        assert done == {"k1"}
        wide = dataset_schema(mine, parts)
        assert wide.names[-2:] == ["tags", "mood"]
        assert wide.metadata == mine.metadata
        (narrow,) = parts_to_widen(wide, parts)
        widen(narrow, wide)
        table = pq.read_table(narrow)
        assert set(table.column_names) == set(wide.names)
        assert table.to_pylist()[0]["mood"] == "calm" and table.to_pylist()[0]["tags"] is None
        assert table.schema.metadata[b"caption.job"] == b'{"run": "old"}'
        assert parts_to_widen(wide, scan_parts(tmp_path)[1]) == []

    def test_a_column_retyped_since_an_earlier_run_is_a_config_error(self, tmp_path: Path) -> None:
        """One column keeps one type in a dataset: the part file that disagrees is named."""
        old = schema_with_job({}, [("n", pa.int64())])
        write_atomic(rows_to_table([row("k1", n=1)], old), tmp_path / "part-a-00001.parquet")
        mine = schema_with_job({}, [("n", pa.string())])
        with pytest.raises(ConfigError, match=r"'n' is string in this job but int64 in .*part-a"):
            dataset_schema(mine, scan_parts(tmp_path)[1])


class TestPercentile:
    @pytest.mark.parametrize(
        ("values", "q", "expected"),
        [
            ([], 50, None),
            ([7.0], 50, 7.0),
            ([7.0], 95, 7.0),
            ([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0),
            ([5.0, 1.0, 4.0, 2.0, 3.0], 50, 3.0),
            ([1.0, 2.0, 3.0, 4.0, 5.0], 25, 2.0),
            ([1.0, 2.0, 3.0, 4.0, 5.0], 95, 4.8),
            ([1.0, 2.0, 3.0, 4.0, 5.0], 99, 4.96),
            ([10.0, 20.0], 50, 15.0),
            ([float(i) for i in range(101)], 90, 90.0),
            pytest.param(
                [1.0, 2.0, 3.0, 4.0, 5.0],
                0,
                1.0,
                id="q0-is-minimum",
            ),
            pytest.param(
                [1.0, 2.0, 3.0, 4.0, 5.0],
                100,
                5.0,
                id="q100-is-maximum",
            ),
        ],
    )
    def test_table(self, values: list[float], q: float, expected: float | None) -> None:
        """percentile interpolates linearly over the 0..100 range."""
        result = percentile(array("d", values), q)
        if expected is None:
            assert result is None
        else:
            assert result == pytest.approx(expected)


class TestSummary:
    def test_counts_and_output_path(self) -> None:
        """The summary shows every count, the rate, latencies, tokens and the output path."""
        tally = Tally(
            skipped=4,
            images=9,
            ok=3,
            failed=1,
            invalid=2,
            requests=7,
            prompt_tokens=12345,
            completion_tokens=678,
            concurrency=16,
            concurrency_max=24,
        )
        tally.latencies.extend([1.0, 2.0, 3.0])
        text = format_summary(tally, 10.0, "/data/out/captions")
        assert "6 this run: 3 ok, 1 failed, 2 invalid" in text
        assert "4 already done" in text
        assert "9 image files" in text
        assert "0.30 items/s at concurrency 16 (peak 24)" in text
        tally.concurrency_bounds = "auto 1-256"
        text = format_summary(tally, 10.0, "/data/out/captions")
        assert "0.30 items/s at concurrency 16 (auto 1-256, peak 24)" in text
        assert "p50 2.00s" in text
        assert "(7 requests sent)" in text
        assert "12,345 prompt + 678 completion" in text
        assert "/data/out/captions" in text

    def test_no_latencies_and_zero_wall_time(self) -> None:
        """With nothing done the summary says n/a and does not divide by zero."""
        text = format_summary(Tally(), 0.0, "out")
        assert "latency    n/a" in text
        assert "0.00 items/s" in text
        assert "0 this run: 0 ok, 0 failed, 0 invalid" in text

    def test_tally_record(self) -> None:
        """record() counts rows by status and sums attempts, tokens and ok latencies."""
        tally = Tally()
        tally.record(row("a", attempts=2, latency_s=0.5, prompt_tokens=10, completion_tokens=3))
        tally.record(row("b", STATUS_FAILED, attempts=6, latency_s=9.0))
        tally.record(row("c", STATUS_INVALID, attempts=0))
        assert (tally.ok, tally.failed, tally.invalid, tally.done) == (1, 1, 1, 3)
        assert tally.requests == 8
        assert (tally.prompt_tokens, tally.completion_tokens) == (10, 3)
        assert list(tally.latencies) == [0.5]


def test_cli_keeps_pyarrow_from_importing_pandas() -> None:
    """After skip_pandas_probe, writing rows imports no pandas; asking for pandas still works."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        from pipeline.schema import SCHEMA, rows_to_table, skip_pandas_probe
        skip_pandas_probe()
        table = rows_to_table([{"key": "k", "image_path": "a.jpg", "status": "ok"}], SCHEMA)
        assert "pandas" not in sys.modules, "pyarrow imported pandas"
        frame = table.to_pandas()
        assert "pandas" in sys.modules and frame["key"].tolist() == ["k"]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

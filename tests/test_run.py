"""End to end against the simulator over loopback: the ``caption run`` command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from helpers import make_images, sent_marker

from pipeline.cli import main
from pipeline.sim import FaultConfig, SimConfig, SimServer

PROMPT = "使用中文描述这张图像"


def run_cli(sim: SimServer, images: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "run", "--endpoint", sim.base_url, "--model", "gemma3-27b",
            "--input", str(images), "--output", str(out), "--prompt", PROMPT,
            "--no-progress", "--flush-interval", "0.5", *extra,
        ]
    )  # fmt: skip


def read_rows(out: Path) -> list[dict[str, object]]:
    return ds.dataset(out, format="parquet").to_table().to_pylist()


def ok_rows(out: Path) -> list[dict[str, object]]:
    return [r for r in read_rows(out) if r["status"] == "ok"]


class TestCaptionFolder:
    def test_every_image_gets_its_own_caption(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """Each ok row's caption carries the marker of exactly the image in that row."""
        out = tmp_path / "out"
        assert run_cli(sim, images[0].parent.parent, out, "--concurrency", "8") == 0
        rows = ok_rows(out)
        assert len(rows) == len(images)
        root = images[0].parent.parent
        for row in rows:
            path = root / str(row["image_path"])
            assert sent_marker(path) in str(row["caption"]), row["image_path"]
            assert "simulated" in str(row["caption"])
        assert len({r["caption"] for r in rows}) == len(images)

    def test_exactly_one_request_per_item_and_rerun_sends_none(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """A clean run sends one request per item; a rerun of the finished job sends zero."""
        out, root = tmp_path / "out", images[0].parent.parent
        assert run_cli(sim, root, out) == 0
        assert sim.stats()["requests"] == len(images)
        sim.reset_stats()
        assert run_cli(sim, root, out) == 0
        assert sim.stats()["requests"] == 0
        assert len(ok_rows(out)) == len(images)

    def test_rerun_does_only_new_images(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """Images added after a run are the only work of the next run."""
        out, root = tmp_path / "out", images[0].parent.parent
        assert run_cli(sim, root, out) == 0
        make_images(root / "new", 5, seed=99)
        sim.reset_stats()
        assert run_cli(sim, root, out) == 0
        assert sim.stats()["requests"] == 5
        keys = [r["key"] for r in ok_rows(out)]
        assert len(keys) == len(set(keys)) == len(images) + 5

    def test_output_schema_and_metadata(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """Rows carry the documented columns; the schema metadata holds the job without secrets."""
        out, root = tmp_path / "out", images[0].parent.parent
        os.environ["VLLM_API_KEY"] = "sk-secret-test-value"
        try:
            assert run_cli(sim, root, out) == 0
        finally:
            del os.environ["VLLM_API_KEY"]
        part = sorted(out.glob("part-*.parquet"))[0]
        schema = pq.read_schema(part)
        for col in ("key", "image_path", "image_sha256", "prompt_name", "model", "status",
                    "caption", "finish_reason", "error", "prompt_tokens", "completion_tokens",
                    "attempts", "queue_wait_s", "encode_s", "latency_s", "started_at",
                    "finished_at", "run_id", "endpoint", "width", "height"):  # fmt: skip
            assert col in schema.names
        job = json.loads(schema.metadata[b"caption.job"])
        assert job["endpoint"]["model"] == "gemma3-27b"
        for f in out.iterdir():
            if f.is_file():
                assert b"sk-secret-test-value" not in f.read_bytes(), f.name
        row = ok_rows(out)[0]
        assert row["prompt_tokens"] and row["completion_tokens"] and row["attempts"] == 1
        assert str(row["image_path"]).count("/") == 1 and not str(row["image_path"]).startswith("/")

    def test_several_prompts_make_several_items(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """Two [[prompt]] tables give image x prompt items, templates rendered per image."""
        root, out = images[0].parent.parent, tmp_path / "out"
        job = tmp_path / "job.toml"
        job.write_text(
            f'[endpoint]\nurl = "{sim.base_url}"\n[input]\nroot = "{root}"\n'
            '[[prompt]]\nname = "zh"\ntext = "使用中文描述这张图像"\n'
            '[[prompt]]\nname = "tags"\ntext = "Tags for $filename in $parent"\nmax_tokens = 40\n'
            f'[run]\noutput = "{out}"\nprogress = false\n',
            encoding="utf-8",
        )
        assert main(["run", str(job)]) == 0
        rows = ok_rows(out)
        assert len(rows) == 2 * len(images)
        assert sim.stats()["requests"] == 2 * len(images)
        tags = [r for r in rows if r["prompt_name"] == "tags"]
        assert all(Path(str(r["image_path"])).name in str(r["caption"]) for r in tags)


class TestFailures:
    def test_retries_under_injected_faults(self, images: list[Path], tmp_path: Path) -> None:
        """With 40% mixed faults every item still ends ok, some after several attempts."""
        faults = FaultConfig(
            error_429=0.08, error_500=0.08, error_503=0.08, reset=0.08, malformed=0.04,
            empty_choices=0.04, retry_after=0.05,
        )  # fmt: skip
        with SimServer(SimConfig(slots=8, faults=faults, seed=7)) as sim:
            code = run_cli(sim, images[0].parent.parent, tmp_path / "out", "--retries", "12")
            stats = sim.stats()
        assert code == 0
        rows = ok_rows(tmp_path / "out")
        assert len(rows) == len(images)
        assert max(int(str(r["attempts"])) for r in rows) > 1
        assert stats["requests"] > len(images)
        assert sum(stats["faults"].values()) > 0

    def test_400_is_not_retried_and_keeps_the_message(
        self, images: list[Path], tmp_path: Path
    ) -> None:
        """An over-long prompt gets vLLM's 400 once, the row keeps its message, exit code 1."""
        with SimServer(SimConfig(max_model_len=2048)) as sim:
            code = main(
                ["run", "--endpoint", sim.base_url, "--input", str(images[0].parent.parent),
                 "--output", str(tmp_path / "out"), "--prompt", "word " * 9000,
                 "--max-tokens", "16", "--no-progress"]
            )  # fmt: skip
            requests = sim.stats()["requests"]
        assert code == 1
        assert requests == len(images)
        rows = read_rows(tmp_path / "out")
        assert {r["status"] for r in rows} == {"failed"}
        assert all(r["attempts"] == 1 and r["http_status"] == 400 for r in rows)
        assert "maximum context length" in str(rows[0]["error"])

    def test_invalid_images_become_rows(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """A zero-byte file and a text file named .jpg are 'invalid' rows; exit code stays 0."""
        root = images[0].parent.parent
        (root / "empty.jpg").write_bytes(b"")
        (root / "notes.jpg").write_text("not an image")
        assert run_cli(sim, root, tmp_path / "out") == 0
        rows = {r["image_path"]: r for r in read_rows(tmp_path / "out")}
        assert rows["empty.jpg"]["status"] == "invalid" and "empty" in str(
            rows["empty.jpg"]["error"]
        )
        assert rows["notes.jpg"]["status"] == "invalid"
        assert sum(1 for r in rows.values() if r["status"] == "ok") == len(images)
        assert sim.stats()["requests"] == len(images)

    def test_config_errors_exit_2(self, sim: SimServer, images: list[Path], tmp_path: Path) -> None:
        """Unknown model (names the served ones) and a missing input folder are exit code 2."""
        root = str(images[0].parent.parent)
        assert main(["run", "--endpoint", sim.base_url, "--model", "gpt-4o", "--input", root,
                     "--output", str(tmp_path / "o"), "--prompt", "x"]) == 2  # fmt: skip
        assert main(["run", "--endpoint", sim.base_url, "--input", str(tmp_path / "nope"),
                     "--output", str(tmp_path / "o"), "--prompt", "x"]) == 2  # fmt: skip
        assert sim.stats()["requests"] == 0


def journal_rows(out: Path) -> list[dict[str, object]]:
    """The rows the journal holds, as recovery reads them: whole lines only (a last line without
    its newline is a write the kill tore; ``pipeline.journal.read_segment`` drops it too)."""
    rows: list[dict[str, object]] = []
    for seg in sorted(out.glob("_caption_journal-*.jsonl")):
        *whole, _torn = seg.read_text(encoding="utf-8").split("\n")  # _torn: "" unless torn
        rows += [json.loads(line) for line in whole]
    return rows


def journal_lines(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in out.glob("_caption_journal-*.jsonl"))


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_finishes(tmp_path: Path) -> None:
    """SIGKILL mid-run: no answer the journal holds is requested again, the rerun redoes
    exactly the rest (requests cut by the kill, answers not yet journaled), no key twice.

    How many answers the kill loses is not a constant: an answer reaches the journal through
    the rows stream, the collector's ``_unjournaled`` list and a group write + fsync in a
    thread, and while one group is being written the next grows without a cap (the workers are
    not held back by the journal). What is bounded is the requests in flight (``--concurrency``)
    and which answers are lost: the newest ones, never a group from the middle of the run."""
    n, conc, latency = 240, 8, 0.1  # the server answers at most conc / latency = 80 a second
    root = tmp_path / "images"
    paths = make_images(root, n, size=(48, 32))
    marker = {p.relative_to(root).as_posix(): sent_marker(p) for p in paths}
    every = set(marker.values())
    assert len(every) == n  # the simulator's per-image counts tell every image apart
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=conc, latency=latency)) as sim:
        # --flush-interval 3600: no part file lands before the kill, only the journal holds rows
        cmd = [
            sys.executable, "-m", "pipeline", "run", "--endpoint", sim.base_url,
            "--input", str(root), "--output", str(out), "--prompt", PROMPT,
            "--concurrency", str(conc), "--flush-interval", "3600", "--no-progress",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill once the server gave a third of the answers and the journal holds some, however
        # slow this machine is: the server still has >= 2 s of answers to give (mid-run), and
        # the kill falls anywhere within a journal group write, not just after one.
        deadline = time.monotonic() + 60
        while sim.stats()["completed"] < n // 3 or not journal_lines(out):
            assert proc.poll() is None, f"the run ended before the kill: {proc.returncode}"
            assert time.monotonic() < deadline, ("no kill point after 60 s", sim.stats())
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"
        # The server cancels what the dead client had in flight once it sees the sockets close.
        settle = time.monotonic() + 10
        while sim.stats()["in_flight"] and time.monotonic() < settle:
            time.sleep(0.02)
        first = sim.stats()
        assert not list(out.glob("part-*.parquet"))
        saved_rows = journal_rows(out)
        sim.reset_stats()
        rerun = subprocess.run(cmd, capture_output=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr.decode()
        second = sim.stats()

    # What the journal held at the kill: each row is its own image's answer, each image once.
    for row in saved_rows:
        assert row["status"] == "ok" and marker[str(row["image_path"])] in str(row["caption"])
    saved = {marker[str(r["image_path"])] for r in saved_rows}
    assert len(saved) == len(saved_rows) and 0 < len(saved) < n
    # The first run: answers the server gave (in the order it gave them), requests cut.
    answered = list(first["images"])
    assert set(first["images"].values()) == {1} and first["completed"] == len(answered)
    cut = first["requests"] - first["completed"]
    assert first["in_flight"] == 0 and 0 <= cut <= conc, first  # the limiter: --concurrency
    assert saved <= set(answered), "the journal holds an answer the server never gave"
    lost = set(answered) - saved  # answered but not journaled at the kill

    # The rerun requests exactly what the journal did not hold, each image once: no journaled
    # answer is requested again, and the only answers redone are the lost ones.
    again = second["images"]
    assert not saved & set(again), ("journaled answers requested again", saved & set(again))
    assert set(again) == every - saved and set(again.values()) == {1}
    assert second["requests"] == second["completed"] == n - len(saved), second
    redone = set(answered) & set(again)
    assert redone == lost
    assert first["requests"] + second["requests"] == n + cut + len(redone)
    # Which answers are lost: the newest. The journal keeps the collector's order, which is the
    # order answers were read; an answer can be read after a later one only if that one was in
    # flight with it, so fewer than --concurrency journaled answers come after any lost one.
    pos = {sha: i for i, sha in enumerate(answered)}
    newer = max((sum(pos[s] > pos[u] for s in saved) for u in lost), default=0)
    assert newer < conc, (newer, len(lost), cut, len(answered), len(saved))

    rows = ok_rows(out)
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == n
    assert ds.dataset(out, format="parquet").count_rows() == n
    assert pc.sum(pc.equal(ds.dataset(out).to_table().column("status"), "ok")).as_py() == n


class TestOutputFolder:
    def test_pandas_polars_duckdb_read_it(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """The output folder opens as one table in pandas, polars and duckdb."""
        import duckdb
        import pandas as pd
        import polars as pl

        out = tmp_path / "out"
        assert run_cli(sim, images[0].parent.parent, out) == 0
        n = len(images)
        assert len(pd.read_parquet(out)) == n
        assert pl.scan_parquet(str(out / "*.parquet")).collect().height == n
        got = duckdb.sql(f"select count(*) from read_parquet('{out}/*.parquet')").fetchall()[0]
        assert got == (n,)

    def test_noop_rerun_reads_no_image(self, sim: SimServer, images: list[Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
        """A rerun over unchanged images opens none of them (size+mtime -> sha256 cache)."""
        import pipeline.feed as feed

        out, root = tmp_path / "out", images[0].parent.parent
        assert run_cli(sim, root, out) == 0
        reads: list[Path] = []
        real = feed.read_file
        monkeypatch.setattr(feed, "read_file", lambda p, *fs: reads.append(Path(p)) or real(p, *fs))
        assert run_cli(sim, root, out) == 0
        assert reads == []
        images[0].write_bytes(images[1].read_bytes())  # changed content: read and redone
        assert run_cli(sim, root, out) == 0
        assert reads == [images[0]]

    def test_parts_are_compacted_per_run(self, images: list[Path], tmp_path: Path) -> None:
        """Many flushes during a run end as one merged part file holding every row."""
        out = tmp_path / "out"
        with SimServer(SimConfig(slots=2, latency=0.05)) as sim:
            assert run_cli(sim, images[0].parent.parent, out, "--flush-interval", "0.1",
                           "--concurrency", "2") == 0  # fmt: skip
        parts = sorted(p.name for p in out.glob("part-*.parquet"))
        assert len(parts) == 1 and parts[0].endswith("-all.parquet")
        assert len(ok_rows(out)) == len(images)
        assert not list(out.glob(".*tmp"))

    def test_interrupted_compaction_is_finished_on_next_start(self, sim: SimServer,
                                                              images: list[Path],
                                                              tmp_path: Path) -> None:  # fmt: skip
        """A crash after the merged file landed but before the small parts went: no duplicates."""
        from pipeline.sink import COMPACT_MARKER

        out, root = tmp_path / "out", images[0].parent.parent
        assert run_cli(sim, root, out, "--flush-interval", "100") == 0
        (part,) = out.glob("part-*.parquet")
        merged = out / "part-x-all.parquet"
        merged.write_bytes(part.read_bytes())  # as if the merge had landed, parts not yet gone
        (out / COMPACT_MARKER).write_text(json.dumps({"merged": merged.name, "parts": [part.name]}))
        sim.reset_stats()
        assert run_cli(sim, root, out) == 0
        assert sim.stats()["requests"] == 0
        keys = [r["key"] for r in ok_rows(out)]
        assert len(keys) == len(set(keys)) == len(images)

    def test_second_run_on_same_output_exits_75(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """While one run holds the output lock, another exits at once with code 75."""
        from pipeline.state import OutputLock

        out = tmp_path / "out"
        out.mkdir()
        lock = OutputLock(out)
        lock.acquire()
        try:
            assert run_cli(sim, images[0].parent.parent, out) == 75
        finally:
            lock.release()
        assert sim.stats()["requests"] == 0

    def test_no_progress_writes_log_lines(self, images: list[Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
        """With --no-progress a long run logs 'progress N/M items' lines."""
        import pipeline.progress as progress

        monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
        with SimServer(SimConfig(slots=2, latency=0.05)) as sim, caplog.at_level("INFO"):
            assert (
                run_cli(sim, images[0].parent.parent, tmp_path / "out", "--concurrency", "2") == 0
            )
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress")]
        assert lines and "ok=" in lines[-1]


class TestStreaming:
    def test_streamed_answers_equal_their_images_with_ttft(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """--stream: each row has its own image's caption, token usage and a time to first token."""
        out, root = tmp_path / "out", images[0].parent.parent
        assert run_cli(sim, root, out, "--stream") == 0
        rows = ok_rows(out)
        assert len(rows) == len(images) == sim.stats()["requests"]
        for row in rows:
            assert sent_marker(root / str(row["image_path"])) in str(row["caption"])
            assert row["completion_tokens"] and row["prompt_tokens"]
            assert 0 < float(str(row["ttft_s"])) <= float(str(row["latency_s"]))

    def test_broken_streams_are_retried(self, images: list[Path], tmp_path: Path) -> None:
        """Streams cut by resets, 500s and malformed chunks are retried until every item is ok."""
        faults = FaultConfig(error_500=0.15, reset=0.1, malformed=0.1, empty_choices=0.1)
        with SimServer(SimConfig(slots=8, faults=faults, seed=5)) as sim:
            code = run_cli(sim, images[0].parent.parent, tmp_path / "out", "--stream",
                           "--retries", "20", "--backoff-max", "0.1")  # fmt: skip
            faulted = sum(sim.stats()["faults"].values())
        assert code == 0 and faulted > 0
        rows = ok_rows(tmp_path / "out")
        assert len({r["key"] for r in rows}) == len(rows) == len(images)
        assert all("simulated" in str(r["caption"]) for r in rows)


def test_identical_images_are_sent_once(sim: SimServer, images: list[Path], tmp_path: Path) -> None:
    """The same bytes under three more paths: one request, the caption written to every row."""
    root = images[0].parent.parent
    for name in ("copy1.jpg", "sub/copy2.jpg", "sub/deeper/copy3.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(images[0].read_bytes())
    out = tmp_path / "out"
    assert run_cli(sim, root, out, "--concurrency", "4") == 0
    assert sim.stats()["requests"] == len(images)
    rows = {str(r["image_path"]): r for r in ok_rows(out)}
    assert len(rows) == len(images) + 3
    first = rows[str(images[0].relative_to(root))]
    copies = [rows[n] for n in ("copy1.jpg", "sub/copy2.jpg", "sub/deeper/copy3.jpg")]
    assert {r["caption"] for r in copies} == {first["caption"]}
    assert len({r["key"] for r in [first, *copies]}) == 4  # one row (and key) per path
    assert sorted(int(str(r["attempts"])) for r in [first, *copies]) == [0, 0, 0, 1]

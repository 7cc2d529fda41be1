"""Running it day to day: --dry-run, --limit, caption status, cron-grade logs, help and
the small things a new user hits (an empty folder, --api-key, --version)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from pipeline.cli import main
from pipeline.results import current, read_rows, read_runs
from pipeline.sim import SimServer
from pipeline.state import OutputLock
from pipeline.status import dataset_status

PROMPT = "使用中文描述这张图像"


def run_cli(sim: SimServer, images: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "run", "--endpoint", sim.base_url, "--input", str(images), "--output", str(out),
            "--prompt", PROMPT, "--no-progress", "--flush-interval", "0.5", *extra,
        ]
    )  # fmt: skip


def ok_count(out: Path) -> int:
    table = ds.dataset(out, format="parquet").to_table(columns=["status"])
    return table["status"].to_pylist().count("ok")


class TestDryRun:
    def test_sends_no_chat_request_and_writes_nothing(
        self, sim: SimServer, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "out"
        assert run_cli(sim, images[0].parents[1], out, "--dry-run") == 0
        assert sim.stats()["requests"] == 0
        assert not out.exists()
        text = capsys.readouterr().out
        assert "24 images" in text
        assert "0 already done, 0 invalid, 24 to send" in text

    def test_counts_what_is_done_and_estimates_tokens(
        self, sim: SimServer, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, out = images[0].parents[1], tmp_path / "out"
        assert run_cli(sim, root, out, "--limit", "5") == 0
        sent = sim.stats()["requests"]
        before = sorted(p.name for p in out.iterdir())
        capsys.readouterr()
        assert run_cli(sim, root, out, "--dry-run") == 0
        assert sim.stats()["requests"] == sent  # not one more chat request
        assert sorted(p.name for p in out.iterdir()) == before
        text = capsys.readouterr().out
        assert "5 already done, 0 invalid, 19 to send" in text
        # the estimate per item is the simulator's own prompt token count of such an item
        rows = read_rows(out, ["prompt_tokens"])["prompt_tokens"].to_pylist()
        assert f"~{rows[0] * 19:,} prompt tokens" in text

    def test_missing_manifest_files_count_as_invalid(
        self, sim: SimServer, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        manifest = tmp_path / "m.csv"
        lines = ["image", *(str(p) for p in images[:3]), str(tmp_path / "gone.jpg")]
        manifest.write_text("\n".join(lines) + "\n")
        code = main(
            [
                "run", "--endpoint", sim.base_url, "--manifest", str(manifest), "--output",
                str(tmp_path / "out"), "--prompt", PROMPT, "--dry-run",
            ]
        )  # fmt: skip
        assert code == 0
        assert "0 already done, 1 invalid, 3 to send" in capsys.readouterr().out


class TestLimit:
    def test_limit_caps_a_run_and_the_rerun_does_the_rest(
        self, sim: SimServer, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, out = images[0].parents[1], tmp_path / "out"
        assert run_cli(sim, root, out, "--limit", "7") == 0
        assert ok_count(out) == 7
        assert sim.stats()["requests"] == 7
        assert "stopped at --limit 7" in capsys.readouterr().err
        assert run_cli(sim, root, out) == 0
        assert ok_count(out) == 24

    def test_limit_must_be_positive(self, tmp_path: Path) -> None:
        assert main(["run", "--input", str(tmp_path), "--prompt", "x", "--output",
                     str(tmp_path / "o"), "--limit", "0"]) == 2  # fmt: skip


class TestStatus:
    def test_finished_partial_and_locked(
        self, sim: SimServer, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root, out = images[0].parents[1], tmp_path / "out"
        assert run_cli(sim, root, out, "--limit", "10") == 0
        st = dataset_status(out)
        p = st.prompts["prompt"]
        assert (p.ok, p.failed, p.invalid, p.pending) == (10, 0, 0, 14)
        assert st.last_run is not None and st.last_run.exit_code == 0
        assert st.running == []
        assert st.last_run.counts["items"] == 10

        assert run_cli(sim, root, out) == 0
        st = dataset_status(out)
        p = st.prompts["prompt"]
        assert (p.ok, p.pending) == (24, 0)
        assert len(st.runs) == 2
        assert dataset_status(out, walk=False).prompts["prompt"].pending is None

        lock = OutputLock(out)
        lock.acquire("20990101T000000Z-abcdef")
        try:
            capsys.readouterr()
            assert main(["status", str(out), "--json"]) == 0
            data = json.loads(capsys.readouterr().out)
        finally:
            lock.release()
        (holder,) = data["running"]
        assert holder["run_id"] == "20990101T000000Z-abcdef"
        assert holder["pid"] > 0
        assert data["prompts"]["prompt"] == {
            "ok": 24, "failed": 0, "invalid": 0, "pending": 0, "total": 24,
        }  # fmt: skip
        assert data["last_run"]["exit_code"] == 0
        assert dataset_status(out).running == []  # released

    def test_failed_then_ok_counts_once(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """A failed row superseded by a later ok row counts as ok, not both."""
        from pipeline.sim import FaultConfig

        root, out = images[0].parents[1], tmp_path / "out"
        sim.set_faults(FaultConfig(error_500=1.0))
        assert run_cli(sim, root, out, "--retries", "0") == 1
        assert dataset_status(out).prompts["prompt"].failed == 24
        sim.set_faults(FaultConfig())
        assert run_cli(sim, root, out) == 0
        rows = read_rows(out)
        assert rows.num_rows == 48
        assert current(rows).num_rows == 24
        p = dataset_status(out).prompts["prompt"]
        assert (p.ok, p.failed, p.pending) == (24, 0, 0)
        assert [r.exit_code for r in read_runs(out)] == [1, 0]

    def test_state_dir_does_not_move_a_local_outputs_lock(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        """--state-dir is for URI outputs: a local output keeps its lock (and run log) in
        itself, so a run given another state folder still meets the running one (exit 75)."""
        out = tmp_path / "out"
        out.mkdir()
        held = OutputLock(out)
        held.acquire("20990101T000000Z-abcdef")
        try:
            code = run_cli(sim, images[0].parents[1], out, "--state-dir", str(tmp_path / "st"))
        finally:
            held.release()
        assert code == 75
        assert not (tmp_path / "st").exists()

    def test_not_a_dataset(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["status", str(tmp_path / "nope")]) == 2
        assert "not a folder" in capsys.readouterr().err


class TestLogs:
    def test_json_log_file(self, sim: SimServer, images: list[Path], tmp_path: Path) -> None:
        log_file = tmp_path / "caption.log"
        out = tmp_path / "out"
        code = run_cli(
            sim, images[0].parents[1], out, "--log-file", str(log_file), "--log-format", "json"
        )
        assert code == 0
        records = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert records, "nothing logged"
        for rec in records:
            assert {"time", "level", "event", "message"} <= set(rec)
        summary = [r for r in records if r["event"] == "summary"]
        assert len(summary) == 1
        assert summary[0]["counts"]["ok"] == 24
        assert summary[0]["exit_code"] == 0
        # appended, not replaced, by the next run
        assert run_cli(sim, images[0].parents[1], out, "--log-file", str(log_file),
                       "--log-format", "json") == 0  # fmt: skip
        again = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert len([r for r in again if r["event"] == "summary"]) == 2

    def test_bad_log_format(self, tmp_path: Path) -> None:
        assert main(["run", "--input", str(tmp_path), "--prompt", "x", "--output",
                     str(tmp_path / "o"), "--log-format", "xml"]) == 2  # fmt: skip


class TestNewUser:
    def test_empty_folder_says_so(
        self, sim: SimServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        folder = tmp_path / "docs"
        folder.mkdir()
        for i in range(3):
            (folder / f"note{i}.txt").write_text("x")
        (folder / "scan.heic").write_bytes(b"x")
        assert run_cli(sim, folder, tmp_path / "out") == 0
        err = capsys.readouterr().err
        assert f"no image files in {folder}" in err
        assert "4 files there" in err and ".txt 3" in err and ".heic 1" in err
        assert "--pattern" in err

    def test_api_key_flag_points_to_the_environment(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exc:
            main(["run", "--api-key", "sekret"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "VLLM_API_KEY" in err and "ambiguous" not in err

    def test_version_and_help(self) -> None:
        version = subprocess.run(
            [sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True
        )
        assert version.returncode == 0 and version.stdout.startswith("caption ")
        helptext = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--help"], capture_output=True, text=True
        ).stdout
        for needle in ("exit codes:", "74", "75", "examples:", "--dry-run", "--limit",
                       "VLLM_API_KEY", "(2048)", "(0.7)", "(0.9)"):  # fmt: skip
            assert needle in helptext, needle


class TestProgressTotal:
    def test_total_is_known_long_before_the_feeding_walk_ends(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A counting walk beside the feeding one: the progress lines carry the total (and a
        percentage) while most items are still to do. The feeding walk runs at most a few
        hundred files ahead of the requests, so with 1,200 files it cannot have ended before
        ~700 items are done: a total shown earlier came from the count."""
        import re

        from helpers import make_images

        import pipeline.progress as progress
        from pipeline.sim import SimConfig

        monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
        root = tmp_path / "img"
        make_images(root, 1200, size=(8, 8))
        with SimServer(SimConfig(slots=8, latency=0.02)) as sim, caplog.at_level("INFO"):
            assert run_cli(sim, root, tmp_path / "out", "--concurrency", "8") == 0
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress")]
        with_total = [m for m in lines if re.match(r"progress \d+/1200 items \(\d+%\)", m)]
        assert with_total, lines
        first_done = int(re.match(r"progress (\d+)/", with_total[0]).group(1))  # type: ignore[union-attr]
        assert first_done < 700, with_total[0]

    def test_rerun_total_leaves_out_what_is_done(
        self, sim: SimServer, images: list[Path], tmp_path: Path
    ) -> None:
        from pipeline.config import Overrides, load_job
        from pipeline.feed import Feed
        from pipeline.items import RowMaker
        from pipeline.progress import Tally
        from pipeline.state import load_done_keys, open_hash_cache

        root, out = images[0].parents[1], tmp_path / "out"
        assert run_cli(sim, root, out, "--limit", "10") == 0
        job = load_job(None, Overrides(input=str(root), output=str(out), prompt=PROMPT))
        cache = open_hash_cache(out)
        try:
            import anyio

            feed = Feed(job, cache, load_done_keys(out), Tally(), RowMaker(job, "r"),
                        anyio.CapacityLimiter(1))  # fmt: skip
            assert feed.count(lambda: False) == (24, 10)
            assert feed.count(lambda: True) is None
        finally:
            cache.close()

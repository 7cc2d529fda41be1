"""``--engine ray``: the same job on Ray Data (local mode, 2 CPUs) against the simulator.

Same rows and keys as the local engine on the same data, resume across engines both ways, and
a bad image or a burst of HTTP 500s become rows, never a failed Ray job. Marked ``ray`` (run
by ``make test-ray``); skipped when Ray is not installed (the base install has no Ray).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from helpers import down_after, make_images, sent_marker

from pipeline.cli import build_parser, overrides_from
from pipeline.config import Job, load_job
from pipeline.errors import ConfigError
from pipeline.progress import format_summary
from pipeline.runner import Runner, RunResult
from pipeline.sim import FaultConfig, SimConfig, SimServer

ray = pytest.importorskip("ray")

from pipeline.engines import make_runner  # noqa: E402
from pipeline.engines.ray_engine import ActorPlan, RayRunner, merge_reports  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(300),
    # Ray's own deprecations (DataContext fields it sets itself), not ours
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    pytest.mark.filterwarnings("ignore::UserWarning:ray.*"),
]

PROMPT = "使用中文描述这张图像"
COMPARED = (
    "key", "image_path", "image_sha256", "prompt_name", "model", "status", "caption",
    "finish_reason", "width", "height", "error",
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _ray() -> Iterator[None]:
    """One local Ray for the module (starting one costs seconds); runners leave it up."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def job_for(sim: SimServer, root: Path, out: Path, *extra: str) -> Job:
    args = build_parser().parse_args(
        [
            "run", "--endpoint", sim.base_url, "--model", "gemma3-27b", "--input", str(root),
            "--output", str(out), "--prompt", PROMPT, "--no-progress",
            "--flush-interval", "0.5", *extra,
        ]
    )  # fmt: skip
    return load_job(args.job, overrides_from(args))


def run(runner: Runner) -> RunResult:
    async def go() -> RunResult:
        return await runner.run()

    return anyio.run(go)


def run_ray(job: Job, **kw: Any) -> RunResult:
    return run(RayRunner(job, api_key=None, **kw))


def run_local(job: Job) -> RunResult:
    return run(Runner(job, api_key=None))


def rows(out: Path) -> list[dict[str, Any]]:
    return sorted(ds.dataset(out, format="parquet").to_table().to_pylist(), key=lambda r: r["key"])


def comparable(out: Path) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in COMPARED) for r in rows(out)]


def test_same_rows_and_keys_as_the_local_engine(
    sim: SimServer, images: list[Path], tmp_path: Path
) -> None:
    """Both engines give the same rows (keys, paths, hashes, captions) for the same data; the
    Ray run's dataset has the local layout: parts named by its run id, the same caption.job
    metadata, no journal left behind."""
    root = images[0].parent.parent
    local, remote = tmp_path / "local", tmp_path / "ray"
    r_local = run_local(job_for(sim, root, local, "--concurrency", "8"))
    sim.reset_stats()
    r_ray = run_ray(job_for(sim, root, remote, "--concurrency", "8"))
    assert r_ray.exit_code == 0, r_ray.stop_reason
    assert sim.stats()["requests"] == len(images)  # one request per item, none repeated
    assert comparable(remote) == comparable(local)
    assert len(rows(remote)) == len(images)
    for row in rows(remote):
        assert sent_marker(root / row["image_path"]) in row["caption"]
        assert row["run_id"] == r_ray.run_id and row["status"] == "ok"
        assert row["concurrency"] == 8 and row["attempts"] == 1
    parts = sorted(p.name for p in remote.glob("part-*.parquet"))
    assert parts and all(p.startswith(f"part-{r_ray.run_id}-") for p in parts)
    assert not list(remote.glob("_caption_journal-*"))

    def job_meta(out: Path) -> bytes:
        meta = pq.read_schema(next(out.glob("part-*.parquet"))).metadata
        return meta[b"caption.job"].replace(str(out).encode(), b"OUT")

    assert job_meta(remote) == job_meta(local)
    assert pq.read_schema(next(remote.glob("part-*.parquet"))) == pq.read_schema(
        next(local.glob("part-*.parquet"))
    )
    # progress and summary: the same tally, the same summary lines
    t, u = r_ray.tally, r_local.tally
    assert (t.ok, t.failed, t.invalid, t.skipped, t.images, t.requests) == (
        u.ok, u.failed, u.invalid, u.skipped, u.images, u.requests,
    )  # fmt: skip
    summary = format_summary(t, r_ray.wall_s, str(remote))
    assert f"{len(images)} ok, 0 failed, 0 invalid" in summary
    assert "at concurrency 8" in summary


@pytest.mark.parametrize("first", ["local", "ray"])
def test_resume_across_engines(
    first: str, sim: SimServer, images: list[Path], tmp_path: Path
) -> None:
    """Half the images done by one engine: the other does only the rest, and a third run of
    either sends nothing (done keys are the same keys)."""
    root = images[0].parent.parent
    out = tmp_path / "out"
    half = tmp_path / "half"
    for p in images[: len(images) // 2]:
        dest = half / p.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    # the first engine captions half the tree (same relative paths), the second the whole tree
    one = run_ray if first == "ray" else run_local
    two = run_local if first == "ray" else run_ray
    assert one(job_for(sim, half, out)).exit_code == 0
    sim.reset_stats()
    result = two(job_for(sim, root, out))
    assert result.exit_code == 0, result.stop_reason
    assert sim.stats()["requests"] == len(images) - len(images) // 2
    assert result.tally.skipped == len(images) // 2
    assert len({r["key"] for r in rows(out)}) == len(images) == len(rows(out))
    sim.reset_stats()
    again = one(job_for(sim, root, out))
    assert sim.stats()["requests"] == 0 and again.tally.skipped == len(images)


def test_a_bad_image_and_a_500_burst_are_rows(tmp_path: Path) -> None:
    """A truncated JPEG and a file that is no image become invalid rows, items that meet only
    HTTP 500s become failed rows (after their retries), and the Ray job finishes; the rerun
    redoes exactly the failed ones."""
    root = tmp_path / "images"
    make_images(root, 12)
    (root / "a" / "broken.jpg").write_bytes((root / "a" / "img0000.jpg").read_bytes()[:300])
    (root / "b" / "notes.jpg").write_bytes(b"this is not an image")
    faults = FaultConfig(error_500=0.5)
    with SimServer(SimConfig(slots=8, latency=0.01, seed=7, faults=faults)) as sim:
        job = job_for(sim, root, tmp_path / "out", "--retries", "1", "--backoff-initial", "0.01",
                      "--backoff-max", "0.02", "--concurrency", "4")  # fmt: skip
        result = run_ray(job)
        got = rows(tmp_path / "out")
        by_status: dict[str, list[dict[str, Any]]] = {}
        for r in got:
            by_status.setdefault(r["status"], []).append(r)
        assert len(got) == 14
        invalid = {r["image_path"] for r in by_status["invalid"]}
        assert invalid == {"a/broken.jpg", "b/notes.jpg"}
        failed = by_status.get("failed", [])
        assert failed, "with p=0.5 and 2 attempts some items fail"
        assert all("HTTP 500" in r["error"] and r["attempts"] == 2 for r in failed)
        assert result.exit_code == 1  # failed rows: exit 1, as the local engine
        assert result.tally.failed == len(failed) and result.tally.invalid == 2
        assert "HTTP 500" in format_summary(result.tally, result.wall_s, "out")
        # the rerun on a healthy server sends exactly the failed items again
        sim.set_faults(FaultConfig())
        sim.reset_stats()
        again = run_ray(job)
        assert sim.stats()["requests"] == len(failed)
        assert again.exit_code == 0 and again.tally.ok == len(failed)


def test_auto_concurrency_is_split_over_the_actors(
    sim: SimServer, images: list[Path], tmp_path: Path
) -> None:
    """``auto`` runs in each actor with its share of max_concurrency; the summary's auto line
    merges what the actors saw."""
    plan = ActorPlan.of(job_for(sim, tmp_path, tmp_path / "o", "--max-concurrency", "10"), 2)
    assert (plan.actors, plan.fixed, plan.maximum, plan.start) == (2, None, 5, 5)
    fixed = ActorPlan.of(job_for(sim, tmp_path, tmp_path / "o", "--concurrency", "7"), 2)
    assert (fixed.fixed, fixed.maximum) == (4, 4)
    root = images[0].parent.parent
    result = run_ray(job_for(sim, root, tmp_path / "out"))
    assert result.exit_code == 0 and result.tally.ok == len(images)
    assert result.tally.concurrency_bounds.startswith("auto 2-")
    assert result.tally.steer is not None
    assert "auto " in format_summary(result.tally, result.wall_s, "out")
    assert merge_reports([]) is None


def test_engine_choice_and_limit(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = job_for(sim, tmp_path, tmp_path / "out")
    assert type(make_runner(job, api_key=None)) is Runner
    assert type(make_runner(job, api_key=None, engine="ray")) is RayRunner
    with pytest.raises(ValueError, match="unknown engine"):
        make_runner(job, api_key=None, engine="spark")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)  # as if Ray were not installed
        with pytest.raises(ConfigError, match=r"pip install 'caption\[ray\]'"):
            make_runner(job, api_key=None, engine="ray")


def test_limit_is_exact_on_ray(tmp_path: Path) -> None:
    """--limit N on Ray sends exactly N items (the request actors share one budget), even when
    the first files taken turn out unreadable (a second round takes more); the rerun without
    a limit does the rest."""
    root = tmp_path / "img"
    make_images(root, 300, size=(16, 12))  # more than the walk's buffer (256) + the limit
    for i in range(4):
        (root / "a" / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    with SimServer(SimConfig(slots=32, latency=0.02)) as sim:
        first = run_ray(job_for(sim, root, tmp_path / "out", "--limit", "7", "--concurrency", "4"))
        assert first.exit_code == 0, first.stop_reason
        assert sim.stats()["requests"] == 7
        assert first.tally.ok == 7 and first.limited
        rest = run_ray(job_for(sim, root, tmp_path / "out", "--concurrency", "32"))
        assert rest.exit_code == 0 and rest.tally.ok == 293 and not rest.limited
        assert sim.stats()["requests"] == 300
    table = ds.dataset(tmp_path / "out", format="parquet").to_table()
    assert table.filter(pc.equal(table["status"], "ok")).num_rows == 300
    assert table.filter(pc.equal(table["status"], "invalid")).num_rows >= 4


def test_a_wide_tree_is_listed_in_ray_tasks(
    sim: SimServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A local tree of LOCAL_TASK_FOLDERS top-level folders or more is listed by Ray tasks:
    the same rows and keys as the local engine's walk (fewer folders are listed on the
    driver; an object store's prefixes always in tasks: test_object_store_input_on_ray)."""
    from pipeline.engines.ray_engine import LOCAL_TASK_FOLDERS

    root = tmp_path / "wide"
    for i in range(LOCAL_TASK_FOLDERS + 2):
        make_images(root / f"day{i:02d}", 2, size=(16, 12), seed=i)
    (root / "top.jpg").write_bytes((root / "day00" / "a" / "img0000.jpg").read_bytes())
    caplog.set_level(logging.INFO, logger="pipeline.engines.ray_engine")
    r_ray = run_ray(job_for(sim, root, tmp_path / "ray"))
    assert f"listing {LOCAL_TASK_FOLDERS + 2} top-level folders in Ray tasks" in caplog.text
    r_local = run_local(job_for(sim, root, tmp_path / "local"))
    assert r_ray.exit_code == r_local.exit_code == 0
    assert r_ray.tally.ok == 2 * (LOCAL_TASK_FOLDERS + 2) + 1
    assert comparable(tmp_path / "ray") == comparable(tmp_path / "local")


def test_rounds_bound_what_the_driver_holds(
    sim: SimServer, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more file records than ROUND_BYTES (a manifest's embedded images, a huge input)
    the driver runs the pipeline in rounds: every item still exactly once."""
    from pipeline.engines import ray_engine

    monkeypatch.setattr(ray_engine, "ROUND_BYTES", 2_000)  # ~10 records a round
    rounds = []
    dataset = RayRunner._dataset

    def counted(self: RayRunner, ray_: Any, files: list[bytes], *args: Any) -> Any:
        rounds.append(len(files))
        return dataset(self, ray_, files, *args)

    monkeypatch.setattr(RayRunner, "_dataset", counted)
    root = images[0].parent.parent
    result = run_ray(job_for(sim, root, tmp_path / "out"))
    assert result.exit_code == 0 and result.tally.ok == len(images)
    assert len(rounds) >= 2 and sum(rounds) == len(images)
    assert sim.stats()["requests"] == len(images)


def test_manifest_schema_prompts_and_two_endpoints_match_the_local_engine(tmp_path: Path) -> None:
    """An annotation job on Ray: a manifest (a kept column, a template variable), a schema
    prompt with typed columns and a free-text one, two servers. Same rows, keys and typed
    values as the local engine; both servers get requests."""
    data = Path(__file__).parent.parent / "data"
    manifest = data / "manifests" / "catalog.csv"
    rows_in = len(manifest.read_text().splitlines()) - 1
    with (
        SimServer(SimConfig(slots=8, latency=0.01)) as a,
        SimServer(SimConfig(slots=8, latency=0.01)) as b,
    ):
        outs = {}
        for engine in ("local", "ray"):
            out = tmp_path / engine
            job_file = tmp_path / f"{engine}.toml"
            job_file.write_text(
                f'[endpoint]\nurl = ["{a.base_url}", "{b.base_url}"]\nmodel = "gemma3-27b"\n'
                f'[input]\nmanifest = "{manifest}"\nkeep = ["source"]\n'
                f'[[prompt]]\nname = "annotate"\ntext = "Annotate $title"\n'
                f'schema = "{data / "schemas" / "annotate.json"}"\nmax_tokens = 512\n'
                f'[[prompt]]\nname = "caption"\ntext = "{PROMPT}"\n'
                f'[run]\noutput = "{out}"\nconcurrency = 6\nflush_interval = 0.5\n'
            )
            job = load_job(job_file, overrides_from(build_parser().parse_args(["run"])))
            result = run_local(job) if engine == "local" else run_ray(job)
            assert result.exit_code == 0, result.stop_reason
            outs[engine] = out
        assert a.stats()["requests"] > 0 and b.stats()["requests"] > 0
    typed = ("tags", "short_caption", "contains_text", "rating", "source")
    local, remote = rows(outs["local"]), rows(outs["ray"])
    assert len(remote) == 2 * rows_in
    assert [tuple(r[c] for c in (*COMPARED, *typed)) for r in remote] == [
        tuple(r[c] for c in (*COMPARED, *typed)) for r in local
    ]
    assert "scikit-image" in {r["source"] for r in remote}
    assert all(r["tags"] for r in remote if r["prompt_name"] == "annotate")


def test_the_concurrency_is_kept(tmp_path: Path) -> None:
    """--concurrency 32 over 2 actors: the server sees 32 requests at once, as with the local
    engine (16 per actor, each call's items sent together). Each answer takes 2 s, so the
    requests, not the preparing tasks, are the limit however busy the machine is: with 0.4 s
    the preparing tasks of a loaded 2-core box (CI) fed only 28 at once."""
    root = make_images(tmp_path / "img", 128, size=(48, 32))[0].parent.parent
    with SimServer(SimConfig(slots=64, latency=2.0)) as sim:
        result = run_ray(job_for(sim, root, tmp_path / "out", "--concurrency", "32"))
        stats = sim.stats()
    assert result.exit_code == 0 and result.tally.ok == 128
    assert stats["max_running"] == 32  # never more than asked, and all of it used


def test_an_outage_past_max_outage_stops_with_75(tmp_path: Path) -> None:
    """The actors' breakers give up as the local one does: exit 75, what was answered is
    saved, nothing failed, and the rerun finishes the job."""
    n = 80
    root = make_images(tmp_path / "img", n, size=(48, 32))[0].parent.parent
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=4, latency=0.05)) as sim:
        down_after(sim, 10, 60.0)
        t0 = time.monotonic()
        result = run_ray(job_for(sim, root, out, "--concurrency", "4", "--max-outage", "2"))
        wall = time.monotonic() - t0
    assert result.exit_code == 75, result.stop_reason
    assert "unreachable" in (result.stop_reason or "")
    assert wall < 30
    saved = rows(out)
    assert 10 <= len(saved) < n and all(r["status"] == "ok" for r in saved)
    with SimServer(SimConfig(slots=8, latency=0.01)) as sim:
        again = run_ray(job_for(sim, root, out))
        assert again.exit_code == 0 and sim.stats()["requests"] == n - len(saved)
    assert len(rows(out)) == n


DRIVER = """
import sys, anyio
from pipeline.cli import build_parser, overrides_from
from pipeline.config import load_job
from pipeline.engines import make_runner
url, root, out, prompt = sys.argv[1:5]
args = build_parser().parse_args(["run", "--endpoint", url, "--model", "gemma3-27b", "--input",
    root, "--output", out, "--prompt", prompt, "--no-progress", "--flush-interval", "0.5",
    "--concurrency", "4"])
job = load_job(args.job, overrides_from(args))
async def go():
    return await make_runner(job, api_key=None, engine="ray", handle_signals=True).run()
sys.exit(anyio.run(go).exit_code)
"""


def _spawn(tmp_path: Path, sim: SimServer, root: Path, out: Path) -> subprocess.Popen[str]:
    """A driver process as ``caption run --engine ray`` will be once cli.py wires it (its own
    local Ray, started and shut down by the run)."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return subprocess.Popen(
        [sys.executable, str(script), sim.base_url, str(root), str(out), PROMPT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(sim: SimServer, completed: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while sim.stats()["completed"] < completed:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_sigint_finishes_what_is_under_way_then_exits_130(tmp_path: Path) -> None:
    """Ctrl-C: the actors send nothing new (at most one more round), what was answered is
    saved, exit 130; the rerun does exactly the rest."""
    n = 60
    root = make_images(tmp_path / "img", n, size=(48, 32))[0].parent.parent
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=4, latency=0.4)) as sim:
        proc = _spawn(tmp_path, sim, root, out)
        _wait_for(sim, 12, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "SIGINT: finishing requests in flight" in err
        saved = rows(out)
        assert 12 <= len(saved) <= 12 + 2 * 2 * 4  # in flight + one more round, 2 actors
        assert sim.stats()["completed"] == len(saved)
        sim.reset_stats()
        again = run_ray(job_for(sim, root, out, "--concurrency", "4"))
        assert again.exit_code == 0 and sim.stats()["requests"] == n - len(saved)
    assert len(rows(out)) == n


@pytest.mark.slow
def test_a_killed_driver_is_recovered_from_its_journal(tmp_path: Path) -> None:
    """SIGKILL of the driver: the next run (here the local engine) turns the journal into
    part files, as for a local run, and sends only what was never answered and saved."""
    n = 60
    root = make_images(tmp_path / "img", n, size=(48, 32))[0].parent.parent
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=4, latency=0.2)) as sim:
        proc = _spawn(tmp_path, sim, root, out)
        _wait_for(sim, 20, proc)
        time.sleep(0.3)  # some rows journaled, not yet in a part file
        proc.kill()
        proc.communicate(timeout=60)
        # The orphaned local Ray (its actors) goes on for a moment until it sees its driver
        # is gone: those answers are lost, as a killed run's requests in flight are.
        quiet_since, seen = time.monotonic(), sim.stats()["requests"]
        while time.monotonic() - quiet_since < 2.0:
            time.sleep(0.1)
            now = sim.stats()["requests"]
            if now != seen:
                quiet_since, seen = time.monotonic(), now
        journaled = sum(
            len(p.read_text().splitlines()) for p in out.glob("_caption_journal-*.jsonl")
        )
        sim.reset_stats()
        result = run_local(job_for(sim, root, out))
        assert result.exit_code == 0
        keys = [r["key"] for r in rows(out)]
        assert len(keys) == len(set(keys)) == n
        assert sim.stats()["requests"] == n - result.tally.skipped
        assert result.tally.skipped >= journaled  # the journal's rows count as done


def test_shards_mix_engines(sim: SimServer, images: list[Path], tmp_path: Path) -> None:
    """--shard works on the Ray engine (the driver's walk takes the shard's images): shard 0
    on Ray and shard 1 locally cover the job once; an unsharded rerun sends nothing."""
    root, out = images[0].parent.parent, tmp_path / "out"
    first = run_ray(job_for(sim, root, out, "--shard", "0/2"))
    second = run_local(job_for(sim, root, out, "--shard", "1/2"))
    assert first.exit_code == second.exit_code == 0
    assert first.run_id.endswith("-s0of2") and 0 < first.tally.ok < len(images)
    assert first.tally.ok + second.tally.ok == len(images)
    assert all(p.name.startswith("part-") for p in out.glob("*.parquet"))
    sim.reset_stats()
    again = run_ray(job_for(sim, root, out))
    assert sim.stats()["requests"] == 0 and again.tally.skipped == len(images)


def test_cli_engine_flag_runs_on_ray_and_the_local_rerun_has_nothing_left(
    tmp_path: Path, sim: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`caption run --engine ray` (the flag, not only make_runner): a whole run on Ray, then
    the same command on the local engine finds nothing to do."""
    from pipeline.cli import main

    root = tmp_path / "img"
    make_images(root, 12, size=(32, 24))
    args = ["run", "--endpoint", sim.base_url, "--input", str(root), "--output",
            str(tmp_path / "out"), "--prompt", PROMPT, "--no-progress"]  # fmt: skip
    assert main([*args, "--engine", "ray"]) == 0
    assert sim.stats()["requests"] == 12
    assert main([*args, "--engine", "local"]) == 0
    assert sim.stats()["requests"] == 12
    assert "0 ok" in capsys.readouterr().out.split("caption run summary")[-1]


def test_object_store_input_on_ray(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--input s3://... on the Ray engine (a real moto_server on loopback): Ray tasks list the
    bucket's top-level prefixes, the Ray workers read the objects; a local rerun finds nothing
    to do. Then a manifest in the bucket naming the same objects relative to itself."""
    from s3server import moto_server

    from pipeline.cli import main

    root = tmp_path / "img"
    paths = make_images(root, 8, size=(32, 24))
    with moto_server(tmp_path / "moto.log") as s3:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        bucket = s3.new_bucket()
        fs = s3.fs()
        for p in paths:
            with fs.open_output_stream(f"{bucket}/in/{p.relative_to(root).as_posix()}") as fh:
                fh.write(p.read_bytes())
        args = ["run", "--endpoint", sim.base_url, "--input", f"s3://{bucket}/in", "--output",
                str(tmp_path / "out"), "--prompt", PROMPT, "--no-progress"]  # fmt: skip
        assert main([*args, "--engine", "ray"]) == 0
        assert sim.stats()["requests"] == 8
        rows = ds.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()
        assert sorted(r["image_path"] for r in rows) == sorted(
            p.relative_to(root).as_posix() for p in paths
        )
        assert {r["status"] for r in rows} == {"ok"}
        for r in rows:  # each row got its own image's caption
            assert sent_marker(root / str(r["image_path"])) in str(r["caption"])
        assert main([*args, "--engine", "local"]) == 0
        assert sim.stats()["requests"] == 8
        listing = "\n".join(["image", *(f"in/{p.relative_to(root).as_posix()}" for p in paths)])
        with fs.open_output_stream(f"{bucket}/list.csv") as fh:
            fh.write(listing.encode())
        manifest_args = ["run", "--endpoint", sim.base_url, "--manifest",
                         f"s3://{bucket}/list.csv", "--output", str(tmp_path / "m"), "--prompt",
                         PROMPT, "--no-progress"]  # fmt: skip
        assert main([*manifest_args, "--engine", "ray"]) == 0
        rows = ds.dataset(tmp_path / "m", format="parquet").to_table().to_pylist()
        assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
        for r in rows:
            assert sent_marker(root / str(r["image_path"])[3:]) in str(r["caption"])

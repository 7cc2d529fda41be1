"""A full disk, a read-only output and a vanished output folder, for real (a small tmpfs).

The run must stop sending at once, keep what is durable, print one line naming the path and
the errno, and exit 74 (EX_IOERR); a rerun once there is room must end with every image ok
exactly once. Needs root (to mount a tmpfs); skipped, saying so, without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from helpers import make_images

from pipeline.sim import SimServer

pytestmark = pytest.mark.slow

IMAGES = 600


def _mount(where: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "out"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs (CI runs as root)")
    try:
        _mount(where, "200k")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def _run(sim: SimServer, images: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "pipeline", "run", "--endpoint", sim.base_url, "--input",
        str(images), "--prompt", "describe", "--output", str(out), "--no-progress",
        "--flush-interval", "0.2",
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _ok_rows(out: Path) -> tuple[int, int]:
    """(ok rows, distinct keys among them)."""
    table = ds.dataset(out, format="parquet").to_table(columns=["key", "status"])
    keys = [
        k
        for k, s in zip(*(table[c].to_pylist() for c in ("key", "status")), strict=True)
        if s == "ok"
    ]
    return len(keys), len(set(keys))


def _one_line_no_traceback(stderr: str, needle: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("caption:")]
    assert len(lines) == 1, stderr
    assert needle in lines[0], stderr


def test_disk_full_stops_with_74_and_a_rerun_resumes(
    tmp_path: Path, tmpfs: Path, sim: SimServer
) -> None:
    images = tmp_path / "images"
    make_images(images, IMAGES, size=(32, 24))
    first = _run(sim, images, tmpfs)
    assert first.returncode == 74, first.stderr
    _one_line_no_traceback(first.stderr, "No space left on device (ENOSPC)")
    assert str(tmpfs) in first.stderr
    # it stopped at once: far fewer requests than images
    assert sim.stats()["completed"] < IMAGES
    subprocess.run(["mount", "-o", "remount,size=50m", str(tmpfs)], check=True)
    second = _run(sim, images, tmpfs)
    assert second.returncode == 0, second.stderr
    assert _ok_rows(tmpfs) == (IMAGES, IMAGES)  # every image once: nothing lost, no duplicate


def test_read_only_output_exits_74(tmp_path: Path, tmpfs: Path, sim: SimServer) -> None:
    images = tmp_path / "images"
    make_images(images, 8)
    subprocess.run(["mount", "-o", "remount,size=50m", str(tmpfs)], check=True)
    assert _run(sim, images, tmpfs).returncode == 0
    make_images(images, 12, seed=2)  # new work
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    ro = _run(sim, images, tmpfs)
    assert ro.returncode == 74, ro.stderr
    _one_line_no_traceback(ro.stderr, "Read-only file system (EROFS)")
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    again = _run(sim, images, tmpfs)
    assert again.returncode == 0, again.stderr
    ok, distinct = _ok_rows(tmpfs)
    assert ok == distinct == 8 + 12


def test_output_folder_removed_mid_run_exits_74(tmp_path: Path, sim: SimServer) -> None:
    """The output folder is deleted while the run writes: a clear stop, not a traceback."""
    images = tmp_path / "images"
    make_images(images, 300, size=(32, 24))
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "pipeline", "run", "--endpoint", sim.base_url, "--input",
        str(images), "--prompt", "describe", "--output", str(out), "--no-progress",
        "--flush-interval", "0.1", "--concurrency", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # wait (bounded by the run itself) until a part file has landed, then pull the folder
        while proc.poll() is None and not any(out.glob("part-*.parquet")):
            time.sleep(0.02)
        shutil.rmtree(out, ignore_errors=True)
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        pytest.skip("the run finished before the folder was removed")
    assert proc.returncode == 74, stderr
    _one_line_no_traceback(stderr, "No such file or directory (ENOENT)")


def test_an_fsspec_scheme_as_input_and_output(tmp_path: Path) -> None:
    """A scheme pyarrow.fs does not know goes through fsspec when fsspec has it: here its
    in-process ``memory://`` file system holds the input and the output (the state folder is
    local, as for any URI output); the rerun sends nothing."""
    import anyio
    import fsspec
    import pyarrow.dataset as ds

    from pipeline import storage
    from pipeline.config import Overrides, load_job
    from pipeline.runner import Runner
    from pipeline.sim import SimConfig, SimServer

    mem = fsspec.filesystem("memory")
    for p in make_images(tmp_path / "img", 6):
        mem.pipe(f"/fsspec-test/in/{p.relative_to(tmp_path / 'img').as_posix()}", p.read_bytes())
    loc = storage.resolve("memory://fsspec-test/in")
    assert sorted(o.relpath for o in storage.iter_objects(loc))[:2] == [
        "a/img0000.jpg",
        "a/img0004.jpg",
    ]
    with SimServer(SimConfig(slots=4, latency=0.01)) as sim:
        job = load_job(
            None,
            Overrides(
                endpoint=sim.base_url, input="memory://fsspec-test/in", prompt="describe",
                output="memory://fsspec-test/out", state_dir=str(tmp_path / "state"),
                no_progress=True,
            ),
        )  # fmt: skip

        async def go() -> int:
            return (await Runner(job, api_key=None).run()).tally.ok

        assert anyio.run(go) == 6
        assert anyio.run(go) == 0
        assert sim.stats()["requests"] == 6
    out = storage.resolve("memory://fsspec-test/out")
    table = ds.dataset(out.path, filesystem=out.fs, format="parquet").to_table()
    assert table.num_rows == 6 and set(table.column("status").to_pylist()) == {"ok"}
    mem.rm("/fsspec-test", recursive=True)

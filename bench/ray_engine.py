"""Issue 14 (Ray part): local engine vs ``--engine ray``, images/s on this machine.

12-MP photo-like JPEGs (4000x3000, gradients + noise, ~4 MB, as bench/preprocess.py makes
them), sent at 896 px to the simulator in its own process (fast answers: the client machine's
CPU, decoding and shrinking, is what is measured). Each rep captions the same photos into a
fresh output with the local engine and with the Ray engine on a local Ray of this machine's
cores (started once, outside the timed runs; its start-up is reported apart). Per run:
images/s = ok rows / the run's wall time (walk, decode, requests, Parquet; the same span for
both engines); "first row" = seconds from the run's start to its first row (Ray: starting the
request actors, ~1 s of imports each, and the first prepare tasks); "steady" = rows per second
from the first row to the last (what a node adds once the pipeline runs: the per-node cost for
the N-machine estimate).

Run: .venv/bin/python bench/ray_engine.py [--images 48] [--reps 3] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saturation import sim
from vllm_downscale import make_photos

from pipeline import collector
from pipeline.config import Job, Overrides, load_job
from pipeline.runner import Runner, RunResult


def job_of(url: str, photos: Path, out: Path, concurrency: int) -> Job:
    return load_job(None, Overrides(endpoint=url, input=str(photos), output=str(out),
                                    prompt="Describe.", max_tokens=16, concurrency=concurrency,
                                    max_side=896, no_progress=True))  # fmt: skip


ROW_TIMES: list[float] = []  # monotonic time of each row reaching the collector
_add = collector.Collector.add


def _timed_add(self: collector.Collector, row: dict[str, object]) -> None:
    ROW_TIMES.append(time.monotonic())
    _add(self, row)


collector.Collector.add = _timed_add  # type: ignore[method-assign]


def run(runner: Runner) -> tuple[RunResult, float, float]:
    """The result, seconds to the first row, and rows/s from the first row to the last."""

    async def go() -> RunResult:
        return await runner.run()

    ROW_TIMES.clear()
    t0 = time.monotonic()
    result = anyio.run(go)
    first = ROW_TIMES[0] - t0
    span = ROW_TIMES[-1] - ROW_TIMES[0]
    return result, first, (len(ROW_TIMES) - 1) / span if span > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.05, help="simulator seconds per answer")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / "caption-12mp")
    ap.add_argument("--copies", type=int, default=4,
                    help="hard links of each photo in copyN/ folders: more files to decode (each "
                         "is read and decoded; identical answers are shared, not re-sent)")  # fmt: skip
    args = ap.parse_args()

    import ray

    from pipeline.engines.ray_engine import RayRunner

    cores = os.cpu_count() or 1
    have = sorted(args.photos.glob("photo*.jpg"))
    if len(have) < args.images:
        t0 = time.perf_counter()
        make_photos(args.photos, args.images)
        print(f"made {args.images} photos in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    photos = args.photos
    for extra in sorted(photos.glob("photo*.jpg"))[args.images :]:
        extra.unlink()
    mb = sum(p.stat().st_size for p in photos.glob("photo*.jpg")) / args.images / 1e6
    tree = Path(tempfile.mkdtemp(prefix="caption-ray-bench-"))
    for c in range(args.copies):
        (tree / f"copy{c}").mkdir()
        for p in sorted(photos.glob("photo*.jpg")):
            os.link(p, tree / f"copy{c}" / p.name)
    files = args.images * args.copies

    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    results: dict[str, list[float]] = {"local": [], "ray": []}
    firsts: dict[str, list[float]] = {"local": [], "ray": []}
    steady: dict[str, list[float]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        proc, url = sim(tmp, 64, args.latency)
        try:
            # a warm-up of each (Ray's first run starts its worker processes and actors)
            for engine in ("local", "ray"):
                out = tmp / f"warm-{engine}"
                job = job_of(url, tree, out, args.concurrency)
                run(
                    Runner(job, api_key=None) if engine == "local" else RayRunner(job, api_key=None)
                )
                shutil.rmtree(out)
            for _ in range(args.reps):
                for engine in ("local", "ray"):
                    out = tmp / engine
                    job = job_of(url, tree, out, args.concurrency)
                    runner = (
                        Runner(job, api_key=None)
                        if engine == "local"
                        else RayRunner(job, api_key=None)
                    )
                    result, first, rate = run(runner)
                    assert result.tally.ok == files, (engine, result.tally)
                    results[engine].append(files / result.wall_s)
                    firsts[engine].append(first)
                    steady[engine].append(rate)
                    shutil.rmtree(out)
        finally:
            proc.terminate()
            proc.wait()
            ray.shutdown()
            shutil.rmtree(tree)

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"#### Local vs Ray engine, {stamp}, {cores} cores (`bench/ray_engine.py`): "
          f"{files} files ({args.images} photos 4000x3000, {mb:.1f} MB, x {args.copies} hard links) -> 896 px, simulator 64 slots x "
          f"{args.latency}s in its own process, concurrency {args.concurrency}; "
          f"local Ray (`ray.init(num_cpus={cores})`) started once in {ray_start:.1f}s, "
          "not in the timings\n")  # fmt: skip
    print("| rep | local images/s | ray images/s | ray / local | local first row | ray first row "
          "| local steady | ray steady |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for i in range(args.reps):
        a, b = results["local"][i], results["ray"][i]
        print(f"| {i + 1} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {firsts['local'][i]:.2f}s "
              f"| {firsts['ray'][i]:.2f}s | {steady['local'][i]:.1f}/s | {steady['ray'][i]:.1f}/s |")  # fmt: skip
    la, ra = statistics.median(results["local"]), statistics.median(results["ray"])
    print(f"\nmedian of {args.reps}: local {la:.1f} images/s ({1000 / la:.1f} ms per image), "
          f"ray {ra:.1f} images/s ({1000 / ra:.1f} ms per image), ray / local {ra / la:.2f}x; "
          f"per core: local {la / cores:.1f}, ray {ra / cores:.1f} images/s")  # fmt: skip
    med = statistics.median
    print(f"first row: local {med(firsts['local']):.2f}s, ray {med(firsts['ray']):.2f}s; "
          f"steady (first row to last): local {med(steady['local']):.1f} images/s, "
          f"ray {med(steady['ray']):.1f} images/s; load average at the end: "
          f"{os.getloadavg()[0]:.2f} (other work on this machine shows there)")  # fmt: skip


if __name__ == "__main__":
    main()

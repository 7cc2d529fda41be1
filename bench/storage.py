"""Listing memory on a real S3-compatible server (moto_server on loopback): the paged listing
``pipeline.storage.iter_objects`` uses (botocore ListObjectsV2, one page of 1,000 held at a
time) against pyarrow's whole-list ``get_file_info(FileSelector(recursive=True))`` and
pyarrow level by level (one "folder" listing held per level).

Each listing runs in a fresh child process; the figure is its peak resident memory during the
listing (sampled every 5 ms) minus its memory before (imports, client made, one request).

    .venv/bin/python bench/storage.py --objects 20000 50000

moto accepts ~235 PUTs/s here (one Python process), so a million objects would take 70
minutes to create: against moto the bench measures a few counts. ``--synthetic`` lists a
million (and 100,000) objects from ``synthetic_s3.SyntheticS3``, a listing-only endpoint that
answers ListObjectsV2 with made-up keys in S3's wire format: the paged listing, the feeding
walk on top of it (``walker.walk_objects``: name filter, ImageFile records), and the Ray
engine's split listing (``engines.listing``: the top level, then each folder as one task
would, one after another here).

    .venv/bin/python bench/storage.py --synthetic 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3server import moto_server

from pipeline import storage

FOLDERS = 100

CHILD = r"""
import json, os, sys, threading, time
import pyarrow.fs as pafs
from pipeline import storage
from pipeline.config.settings import DEFAULT_PATTERNS
from pipeline.engines.listing import list_folder, split_input
from pipeline.walker import walk_objects
method, uri = sys.argv[1], sys.argv[2]
loc = storage.resolve(uri)
bucket = loc.path.split("/")[0]
storage.s3_client(loc.s3).list_objects_v2(Bucket=bucket, MaxKeys=1)  # client made, connected
if method.startswith("pyarrow"):
    loc.fs.get_file_info(loc.path)  # pyarrow's client likewise
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE
before = rss()
peak = [before]
done = threading.Event()
def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], rss())
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
if method == "paged":
    n = sum(1 for _ in storage.iter_objects(loc))
elif method == "walk":
    n = sum(1 for _ in walk_objects(uri, DEFAULT_PATTERNS))
elif method == "split":
    split = split_input(uri, DEFAULT_PATTERNS)
    n = len(split.files)
    for name in split.folders:
        n += len(list_folder(uri, name, DEFAULT_PATTERNS))
elif method == "pyarrow-recursive":
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    n = sum(1 for i in infos if i.type == pafs.FileType.File)
else:
    n = sum(1 for _ in storage._iter_levels(loc, None))
took = time.perf_counter() - t
done.set()
peak[0] = max(peak[0], rss())
print(json.dumps({"n": n, "mib": (peak[0] - before) / 2**20, "s": took}))
"""


def listing(method: str, uri: str, env: dict[str, str]) -> dict[str, float]:
    """``CHILD``'s figures for one listing ``method`` of ``uri``, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, method, uri],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    res: dict[str, float] = json.loads(out.stdout)
    return res


def synthetic(counts: list[int]) -> None:
    from synthetic_s3 import SyntheticS3

    rows = []
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    for count in sorted(counts):
        with SyntheticS3(count) as s3:
            uri = f"s3://bucket/imgs?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
            for method in ("paged", "walk", "split"):
                res = listing(method, uri, env)
                assert res["n"] == count, res
                rows.append((count, method, res["mib"], res["s"]))
                print(f"{count:>9} {method:6} +{res['mib']:6.1f} MiB {res['s']:7.1f} s", flush=True)
    print(
        "\n| objects (synthetic endpoint) | listing | peak RSS growth | time |\n|---|---|---|---|"
    )
    for count, method, mib, took in rows:
        print(f"| {count:,} | {method} | {mib:.1f} MiB | {took:.1f} s |")


def fill(client: object, bucket: str, start: int, stop: int) -> None:
    def put(i: int) -> None:
        key = f"imgs/{i % FOLDERS:03d}/{i:08d}-some-typical-file-name.jpg"
        client.put_object(Bucket=bucket, Key=key, Body=b"x")  # type: ignore[attr-defined]

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(start, stop)))


def throughput(images: int) -> None:
    """``caption run`` of ``images`` small JPEGs against the simulator (64 slots, 10 ms):
    local folder -> local output, against bucket -> bucket on moto; first run and rerun."""
    import shutil
    import tempfile

    from helpers import make_images

    from pipeline.sim import SimConfig, SimServer

    tmp = Path(tempfile.mkdtemp(prefix="caption-bench-"))
    try:
        make_images(tmp / "imgs", images, size=(640, 480))
        with moto_server() as server, SimServer(SimConfig(slots=64, latency=0.01)) as sim:
            env = {**os.environ, **server.env(), "XDG_CACHE_HOME": str(tmp / "cache")}
            bucket = server.new_bucket()
            fs = server.fs()
            for p in sorted((tmp / "imgs").rglob("*.jpg")):
                with fs.open_output_stream(f"{bucket}/in/{p.relative_to(tmp / 'imgs')}") as fh:
                    fh.write(p.read_bytes())
            print(f"\n| {images} images 640x480 | first run | rerun (all skipped) |\n|---|---|---|")
            for name, inp, out in (
                ("local -> local", str(tmp / "imgs"), str(tmp / "out")),
                ("s3 -> s3 (moto)", f"s3://{bucket}/in", f"s3://{bucket}/out"),
            ):
                cells = []
                for _ in range(2):
                    cmd = [
                        sys.executable, "-m", "pipeline", "run", "--endpoint", sim.base_url,
                        "--input", inp, "--output", out, "--prompt", "describe",
                        "--no-progress", "--concurrency", "64",
                    ]  # fmt: skip
                    t = time.perf_counter()
                    subprocess.run(cmd, env=env, check=True, capture_output=True)
                    took = time.perf_counter() - t
                    cells.append(f"{took:.2f} s ({images / took:.0f} images/s)")
                print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--throughput", type=int, default=0, metavar="N", help="only: run N images")
    ap.add_argument("--synthetic", type=int, nargs="+", metavar="N",
                    help="only: list N made-up objects from a listing-only endpoint")  # fmt: skip
    args = ap.parse_args()
    if args.synthetic:
        synthetic(args.synthetic)
        return
    if args.throughput:
        throughput(args.throughput)
        return
    rows = []
    with moto_server() as server:
        os.environ.update(server.env())
        bucket = server.new_bucket()
        loc = storage.resolve(f"s3://{bucket}/imgs")
        client = storage.s3_client(loc.s3)  # type: ignore[arg-type]
        have = 0
        for target in sorted(args.objects):
            t = time.perf_counter()
            fill(client, bucket, have, target)
            print(f"{target} objects: created in {time.perf_counter() - t:.0f} s", flush=True)
            have = target
            for method in ("paged", "pyarrow-levels", "pyarrow-recursive"):
                res = listing(method, f"s3://{bucket}/imgs", dict(os.environ))
                rows.append((target, method, res["n"], res["mib"], res["s"]))
                print(f"  {method:18} {res['n']:>8} objects  +{res['mib']:7.1f} MiB  "
                      f"{res['s']:6.1f} s", flush=True)  # fmt: skip
    print("\n| objects | listing | peak RSS growth | time |\n|---|---|---|---|")
    for target, method, _n, mib, s in rows:
        print(f"| {target:,} | {method} | {mib:.1f} MiB | {s:.1f} s |")


if __name__ == "__main__":
    main()

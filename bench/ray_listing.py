"""The Ray engine's parallel listing against the single paged listing, on an S3 endpoint with a
realistic delay per page (``synthetic_s3.SyntheticS3``: made-up keys in S3's wire format).

Serial: ``walker.walk_objects`` (what the local engine's walk does: one ListObjectsV2 page
after another). Ray: ``RayRunner._listed`` itself (the top level on the driver, then one task
per top-level prefix, 0.5 CPU each) on a local Ray with this machine's cores. Both count every
object; the Ray figure includes Ray's task start-up, not ``ray.init``.

    .venv/bin/python bench/ray_listing.py --objects 200000 --latency 0.03
    .venv/bin/python bench/ray_listing.py --records 1000000   # the driver's memory per file

``--records N``: what the Ray driver holds per file still to do, measured (RSS growth) for N
typical records: as ``ImageFile`` objects, as the pickled bytes a round keeps, and as the
Arrow blocks handed to Ray Data.
"""

from __future__ import annotations

import argparse
import os
import time
import types

import ray
from synthetic_s3 import SyntheticS3

from pipeline.config.settings import DEFAULT_PATTERNS
from pipeline.engines.ray_engine import RayRunner
from pipeline.walker import walk_objects


def records(n: int) -> None:
    import pickle

    import pyarrow as pa

    from pipeline.walker import ImageFile

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    files = [
        ImageFile(f"bucket/photos/2026/{i % 100:03d}/{i:08d}-some-typical-file-name.jpg",
                  f"{i % 100:03d}/{i:08d}-some-typical-file-name.jpg", 4_800_000 + i,
                  1796285896060894231 + i, 0, 332395415167532705 + i)
        for i in range(n)
    ]  # fmt: skip
    objects = rss() - before
    dumped = [pickle.dumps(f, protocol=pickle.HIGHEST_PROTOCOL) for f in files]
    del files
    before = rss()
    pickled_bytes = sum(map(len, dumped))
    blocks = [pa.table({"file": pa.array(dumped[i : i + 40], pa.binary())})
              for i in range(0, n, 40)]  # fmt: skip
    arrow = sum(b.nbytes for b in blocks)
    print(f"{n:,} file records: as ImageFile objects {objects / n:.0f} B each; pickled "
          f"{pickled_bytes / n:.0f} B (+ ~33 B per bytes object); Arrow blocks {arrow / n:.0f} B; "
          f"rss after the blocks +{(rss() - before) / n:.0f} B each")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=200_000)
    ap.add_argument("--folders", type=int, default=100)
    ap.add_argument("--latency", type=float, default=0.03, help="seconds per page")
    ap.add_argument("--records", type=int, default=0, metavar="N", help="only: driver memory")
    args = ap.parse_args()
    if args.records:
        records(args.records)
        return
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "x")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "x")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with SyntheticS3(args.objects, folders=args.folders, latency=args.latency) as s3:
        uri = f"s3://bucket/imgs?endpoint_override=127.0.0.1:{s3.port}&scheme=http"
        job = types.SimpleNamespace(
            input=types.SimpleNamespace(root=uri, patterns=DEFAULT_PATTERNS, manifest=None),
            run=types.SimpleNamespace(shard=None),
        )
        fake = types.SimpleNamespace(job=job, _reader_env=lambda: {})
        sum(1 for _ in RayRunner._listed(fake, ray))  # type: ignore[arg-type]  # warm: workers up
        results = {}
        for name, listing in (
            ("serial (walk_objects)", lambda: walk_objects(uri, DEFAULT_PATTERNS)),
            ("Ray tasks (RayRunner._listed)", lambda: RayRunner._listed(fake, ray)),  # type: ignore[arg-type]
        ):
            t = time.perf_counter()
            n = sum(1 for _ in listing())
            took = time.perf_counter() - t
            assert n == args.objects, (name, n)
            results[name] = took
            print(f"{name:32} {n:,} objects in {took:6.1f} s ({n / took:,.0f}/s)", flush=True)
    ray.shutdown()
    serial, par = results.values()
    print(f"\n{args.objects:,} objects in {args.folders} prefixes, {args.latency * 1000:.0f} ms "
          f"per page, {os.cpu_count()} cores: serial {serial:.1f} s, Ray {par:.1f} s "
          f"({serial / par:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()

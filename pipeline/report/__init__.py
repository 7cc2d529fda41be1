"""``caption report OUTPUT [-o report.html]``: one self-contained HTML page about a dataset.

The job and its runs (counts by status, wall time, images/s, tokens, p50/p95 latency), plots
of throughput over time and of the latency and token distributions (uPlot), the errors grouped
by kind with examples, and a gallery of every current row (thumbnail, caption, typed fields,
quality flags) that can be searched and filtered by status, prompt, flag and error kind. It
works offline from ``file://``: nothing is fetched.

::

    data     the numbers: pure functions of the dataset's rows and run log
    thumbs   the images' thumbnails (Pillow, in a thread pool)
    html     collect + render + write: build_report
    static/  the page's template, script and styles, and uPlot (MIT, vendored)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..errors import EXIT_OK, EXIT_USAGE, OutputError
from ..storage import path_or_uri
from .html import MAX_THUMBNAILS, ThumbnailOptions, Timings, build_report, default_dest
from .thumbs import QUALITY, SIZE

__all__ = [
    "ThumbnailOptions",
    "add_report_arguments",
    "build_report",
    "default_dest",
    "run_report",
]

log = logging.getLogger("pipeline")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``caption report``."""
    parser.add_argument("output", type=path_or_uri, help="the dataset folder (a run's --output)")
    parser.add_argument(
        "-o", "--out", dest="report_file", type=Path, default=None, metavar="FILE",
        help="the HTML file to write (default: OUTPUT-report.html beside the dataset folder)",
    )  # fmt: skip
    parser.add_argument(
        "--images", type=Path, default=None, metavar="DIR",
        help="where the images are now, if they moved since the run (default: the job's "
        "input folder, or the paths in its manifest)",
    )  # fmt: skip
    parser.add_argument(
        "--no-thumbnails", action="store_true",
        help="placeholders instead of thumbnails (smaller and faster)",
    )  # fmt: skip
    parser.add_argument(
        "--thumbnail-size", type=int, default=SIZE, metavar="PX",
        help=f"longest side of a thumbnail (default {SIZE})",
    )  # fmt: skip
    parser.add_argument(
        "--max-thumbnails", type=int, default=MAX_THUMBNAILS, metavar="N",
        help=f"images with a thumbnail, at most; the others show a placeholder (default "
        f"{MAX_THUMBNAILS:,}: ~4.5 KB each in the file)",
    )  # fmt: skip


def run_report(args: argparse.Namespace) -> int:
    """``caption report``: write the page, print where it is. 0, or 2 if ``output`` is not a
    dataset (or a flag is out of range)."""
    if not 16 <= args.thumbnail_size <= 1024:
        print("caption report: --thumbnail-size must be within 16-1024", file=sys.stderr)
        return EXIT_USAGE
    if args.max_thumbnails < 0:
        print("caption report: --max-thumbnails must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    timings = Timings()
    t0 = time.perf_counter()
    try:
        thumbs = ThumbnailOptions(
            enabled=not args.no_thumbnails, images=args.images, size=args.thumbnail_size,
            quality=QUALITY, limit=args.max_thumbnails,
        )  # fmt: skip
        dest = build_report(args.output, args.report_file, thumbs, timings=timings)
    except OutputError as exc:
        print(f"caption report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"caption report: cannot write the report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    size = timings.bytes / 1e6
    print(
        f"report  {dest} ({size:.1f} MB, {timings.thumbnails:,} thumbnails, "
        f"{time.perf_counter() - t0:.1f}s)\nopen it in a browser: {dest.resolve().as_uri()}"
    )
    return EXIT_OK

"""``build_report``: an output dataset -> one self-contained HTML file.

Everything the page needs is inside it: the styles, uPlot (the plotting library, vendored in
``static/``; chosen by measurement, bench/RESULTS.md), the page's own script, the data as JSON
in a ``<script type="application/json">`` element and the thumbnails as base64 lines in a
``<script type="text/plain">`` one. The page fetches nothing: its Content-Security-Policy
allows no source but ``data:`` images and the page's own two scripts (by hash).

Captions, errors and typed values are model or server output: they only ever reach the page
as JSON strings (``<`` ``>`` ``&`` escaped as ``\\u003c``..., so no ``</script>`` or ``<!--``
can end the element early) and the script shows them with ``textContent``, never as markup.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .. import __version__
from ..quality import FLAGS, with_flags
from ..results import current, job_of, read_rows, read_runs
from ..schema import STATUS_OK
from ..sink import atomic_file
from . import data as d
from . import thumbs as t

log = logging.getLogger("pipeline")

MAX_THUMBNAILS = 20_000  # distinct images given a thumbnail; the rest get a placeholder
MAX_RUN_CHARTS = 50  # runs with their own throughput series (the latest ones)
OVER_LIMIT = "over --max-thumbnails"
_MARKER = re.compile(r"@@([A-Z_]+)@@")


def quality_flags(table: pa.Table, job: dict[str, Any] | None) -> list[list[str]]:
    """Each row's quality flags (``pipeline.quality``); the one place that knows its API."""
    flagged = with_flags(table, job)
    return [list(f or ()) for f in flagged["flags"].to_pylist()]


def json_for_script(value: Any) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as
    unicode escapes (no ``</script>``, ``<!--`` or ``]]>`` can appear), U+2028/9 escaped.
    NaN and infinities become null; what JSON has no type for (Decimal, time) its text."""
    try:
        text = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str
        )
    except ValueError:  # a NaN or infinity somewhere (hand-made data): null, as JSON has it
        text = json.dumps(d.jsonable(value), ensure_ascii=False, separators=(",", ":"), default=str)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


@dataclass(frozen=True, slots=True)
class ThumbnailOptions:
    """Which images of a report get a thumbnail, and how it is made."""

    enabled: bool = True  # False: placeholders only (a smaller, faster report)
    images: Path | None = None  # where the images are now, if they moved since the run
    size: int = t.SIZE
    quality: int = t.QUALITY
    limit: int = MAX_THUMBNAILS  # distinct images with a thumbnail, at most
    workers: int | None = None


@dataclass
class Timings:
    read_s: float = 0.0
    summarise_s: float = 0.0
    thumbnails_s: float = 0.0
    render_s: float = 0.0
    thumbnails: int = 0
    bytes: int = 0


def collect(
    output: Path | str,
    thumbs: ThumbnailOptions | None = None,
    *,
    timings: Timings | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The page's data (JSON-ready) and its thumbnails (base64 JPEGs) for ``output``."""
    timings = timings if timings is not None else Timings()
    t0 = time.perf_counter()
    rows = read_rows(output)
    cur = current(rows)
    job = job_of(output)
    records = read_runs(output)
    t1 = time.perf_counter()
    timings.read_s = t1 - t0

    runs = d.run_summaries(rows, records)
    summary = d.job_summary(str(output), job, rows, cur, runs)
    flags = quality_flags(cur, job) if cur.num_rows else []
    groups = d.error_groups(cur)
    charts: dict[str, Any] = {
        "throughput": asdict(d.throughput(rows)),
        "latency": asdict(d.histogram(rows["latency_s"], rows["prompt_name"])),
        "completion_tokens": asdict(
            d.histogram(rows["completion_tokens"], rows["prompt_name"], integer=True)
        ),
        "prompt_tokens": asdict(
            d.histogram(rows["prompt_tokens"], rows["prompt_name"], integer=True)
        ),
        "runs": {},
    }
    if len(runs) > 1:
        for run in runs[-MAX_RUN_CHARTS:]:
            part = rows.filter(pc.equal(rows["run_id"], run.run_id))
            if part.num_rows:
                charts["runs"][run.run_id] = asdict(d.throughput(part))
    t2 = time.perf_counter()
    timings.summarise_s = t2 - t1

    paths = cur["image_path"].to_pylist()
    thumb_of, encoded, thumb_info = _thumbnails(job, paths, thumbs or ThumbnailOptions())
    timings.thumbnails_s = time.perf_counter() - t2
    timings.thumbnails = len(encoded)

    group_of = {(g.status, g.kind): i for i, g in enumerate(groups)}
    kinds = [
        group_of.get((st, d.error_kind(hs, err)), -1) if st != STATUS_OK else -1
        for st, hs, err in zip(
            cur["status"].to_pylist(),
            cur["http_status"].to_pylist(),
            cur["error"].to_pylist(),
            strict=True,
        )
    ]
    columns, gallery = d.gallery_rows(cur, flags, [thumb_of[p] for p in paths])
    columns.append("error_group")
    for row, kind in zip(gallery, kinds, strict=True):
        row.append(kind)

    prompts = [
        {
            "name": p.get("name"),
            "text": p.get("text"),
            "max_tokens": p.get("max_tokens"),
            "schema": p.get("schema") is not None,
        }
        for p in (job or {}).get("prompts") or []
    ]
    page = {
        "version": 1,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "caption_version": __version__,
        "job": asdict(summary),
        "prompts": prompts,
        "runs": [asdict(r) for r in runs],
        "charts": charts,
        "errors": [asdict(g) for g in groups],
        "flags": {"known": list(FLAGS), "counts": d.flag_counts(flags)},
        "thumbs": thumb_info,
        "gallery": {"columns": columns, "rows": gallery},
    }
    return page, encoded


def _thumbnails(
    job: dict[str, Any] | None, paths: list[str], opts: ThumbnailOptions
) -> tuple[dict[str, int | str], list[str], dict[str, Any]]:
    """image_path -> thumbnail index or the reason for none; the thumbnails; what happened."""
    images, enabled, size, quality, limit, workers = (
        opts.images, opts.enabled, opts.size, opts.quality, opts.limit, opts.workers,
    )  # fmt: skip
    distinct = list(dict.fromkeys(paths))
    info: dict[str, Any] = {"size": size, "quality": quality, "images": len(distinct)}
    if not enabled:
        info["made"] = 0
        return dict.fromkeys(distinct, t.OFF), [], info
    sources = t.image_sources(job, distinct, images)
    files: dict[Path | str, int] = {}  # file -> its place in the work list (one file: once)
    todo: list[Path | str] = []
    slot: dict[str, int | str] = {}
    for path in distinct:
        src = sources[path]
        if src.path is None:
            slot[path] = src.reason or t.NO_FILE
        elif src.path in files:
            slot[path] = files[src.path]
        elif len(todo) >= limit:
            slot[path] = OVER_LIMIT
        else:
            files[src.path] = len(todo)
            slot[path] = len(todo)
            todo.append(src.path)
    max_pixels = ((job or {}).get("image") or {}).get("max_pixels") or t.MAX_PIXELS
    if todo:
        log.info("report: making %d thumbnails (%d px)", len(todo), size)

    def progress(done: int) -> None:
        log.info("report: %d/%d thumbnails", done, len(todo))

    made = t.thumbnails(
        todo, size=size, quality=quality, max_pixels=max_pixels, workers=workers,
        progress=progress,
    )  # fmt: skip
    encoded: list[str] = []
    index: dict[int, int | str] = {}
    for i, jpeg in enumerate(made):
        if jpeg is None:
            index[i] = t.UNREADABLE
        else:
            index[i] = len(encoded)
            encoded.append(base64.b64encode(jpeg).decode("ascii"))
    out = {p: index[s] if isinstance(s, int) else s for p, s in slot.items()}
    reasons: dict[str, int] = {}
    for value in out.values():
        if isinstance(value, str):
            reasons[value] = reasons.get(value, 0) + 1
    info.update(made=len(encoded), missing=reasons)
    return out, encoded, info


def render(page: dict[str, Any], thumbs: list[str]) -> str:
    """The HTML text of the report."""
    app_js = _static("report.js")
    uplot_js = _static("uPlot.iife.min.js")
    csp = "; ".join(
        [
            "default-src 'none'",
            "img-src data:",
            "style-src 'unsafe-inline'",
            f"script-src {_sha256(uplot_js)} {_sha256(app_js)}",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )
    job = page.get("job") or {}
    title = f"caption report: {Path(str(job.get('output') or '')).name or 'dataset'}"
    values = {
        "CSP": html.escape(csp),
        "TITLE": html.escape(title),
        "UPLOT_CSS": _static("uPlot.min.css"),
        "CSS": _static("report.css"),
        "DATA": json_for_script(page),
        "THUMBS": "\n".join(thumbs),  # base64: [A-Za-z0-9+/=] only
        "UPLOT_JS": uplot_js,
        "APP_JS": app_js,
    }
    return _MARKER.sub(lambda m: values[m.group(1)], _static("report.html"))


def default_dest(output: Path | str) -> Path:
    """``out/demo`` -> ``out/demo-report.html``: beside the dataset, not in it (a dataset
    folder holds only what readers of Parquet datasets expect). A dataset in object storage
    (``s3://b/x/out``): ``out-report.html`` in the working folder, where a browser opens it."""
    if isinstance(output, str):
        name = output.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "dataset"
        return Path(os.path.abspath(f"{name}-report.html"))
    output = Path(os.path.abspath(output))
    return output.with_name(output.name + "-report.html")


def build_report(
    output: Path | str,
    dest: Path | None = None,
    thumbs: ThumbnailOptions | None = None,
    *,
    timings: Timings | None = None,
) -> Path:
    """Write the report of the dataset ``output`` to ``dest`` (default ``default_dest``),
    atomically (a reader never sees half a file); returns ``dest``.

    ``thumbs``: see ``ThumbnailOptions`` (its ``images`` default: the job's input root, or the
    manifest's paths).
    ``output`` is a folder, or a URI (``s3://...``: rows and run log read from there and the
    local state folder, thumbnails from the objects). Raises ``OutputError`` if ``output`` is
    not a readable dataset.
    """
    timings = timings if timings is not None else Timings()
    dest = dest or default_dest(output)
    page, encoded = collect(output, thumbs, timings=timings)
    t0 = time.perf_counter()
    text = render(page, encoded).encode("utf-8")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dest) as f:
        f.write(text)
    timings.render_s = time.perf_counter() - t0
    timings.bytes = len(text)
    return dest

"""The report's numbers, from an output dataset: pure functions of Arrow tables, no IO.

- ``job_summary``: what the dataset holds now (the current row of each image x prompt).
- ``run_summaries``: one line per run, from the run log (``_caption_runs.jsonl``) where it has
  the run, and always from the rows that carry the run's ``run_id``.
- ``throughput`` / ``histogram``: the plots' series, binned here so a 10,000-row dataset is a
  few hundred numbers in the page.
- ``error_groups``: failed and invalid rows grouped by kind, with examples.
- ``gallery_rows``: the current rows as JSON-ready lists for the page's gallery.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..progress import error_kind as summary_error_kind
from ..results import RunRecord
from ..schema import COLUMNS, STATUS_FAILED, STATUS_INVALID, STATUS_OK

STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_INVALID)
NICE_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600,
              86400)  # fmt: skip
MAX_BINS = 100
EXAMPLES = 3


def quantiles(values: pa.Array | pa.ChunkedArray, qs: Sequence[float]) -> list[float | None]:
    """Linear-interpolated quantiles of the non-null values (None for none)."""
    values = pc.drop_null(values)
    if len(values) == 0:
        return [None for _ in qs]
    return [float(x) for x in pc.quantile(values, q=list(qs)).to_pylist()]


def _sum(values: pa.ChunkedArray) -> int:
    total = pc.sum(values).as_py()
    return int(total) if total is not None else 0


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def status_counts(table: pa.Table) -> dict[str, int]:
    """Rows per status, the three known ones always present (0), others after them."""
    counts = dict.fromkeys(STATUSES, 0)
    if table.num_rows:
        for entry in pc.value_counts(table["status"]).to_pylist():
            counts[entry["values"]] = int(entry["counts"])
    return counts


@dataclass
class Latency:
    p50: float | None
    p95: float | None
    max: float | None


def latency_of(table: pa.Table) -> Latency:
    col = table["latency_s"]
    p50, p95 = quantiles(col, (0.5, 0.95))
    top = pc.max(col).as_py() if table.num_rows else None
    return Latency(p50, p95, top)


@dataclass
class JobSummary:
    """What the dataset holds now: counts over the current rows, cost over every row."""

    output: str
    source: str | None  # the job file, if the job came from one
    model: str | None
    endpoints: list[str]
    input: str | None  # the input root or manifest
    prompts: list[str]
    items: int  # image x prompt pairs with a row
    images: int
    counts: dict[str, int]  # current rows by status
    rows: int  # every row, superseded ones included
    runs: int
    requests: int  # attempts over every row
    prompt_tokens: int
    completion_tokens: int
    latency: Latency  # over every row with a latency (one per answered or failed request)
    first_started: str | None
    last_finished: str | None
    busy_s: float | None  # seconds with a run going (sum over runs)
    images_per_s: float | None  # images with a current row / busy_s
    fields: list[str]  # typed columns (schema'd prompts, manifest keep columns)


def job_summary(
    output: str,
    job: dict[str, Any] | None,
    rows: pa.Table,
    cur: pa.Table,
    runs: Sequence[RunSummary],
) -> JobSummary:
    job = job or {}
    endpoint = job.get("endpoint") or {}
    inp = job.get("input") or {}
    urls = [endpoint["url"]] if endpoint.get("url") else []
    urls += list(endpoint.get("extra_urls") or [])
    prompts = [p.get("name", "?") for p in job.get("prompts") or []]
    for name in sorted(set(cur["prompt_name"].to_pylist()) - set(prompts)):
        prompts.append(name)
    models = pc.unique(rows["model"]).to_pylist() if rows.num_rows else []
    started = pc.min(rows["started_at"]).as_py() if rows.num_rows else None
    finished = pc.max(rows["finished_at"]).as_py() if rows.num_rows else None
    walls = [r.wall_s for r in runs if r.wall_s is not None]
    busy = sum(walls) if walls else None
    images = len(pc.unique(cur["image_path"])) if cur.num_rows else 0
    return JobSummary(
        output=output,
        source=job.get("source"),
        model=endpoint.get("model") or (", ".join(models) if models else None),
        endpoints=urls,
        input=inp.get("manifest") or inp.get("root"),
        prompts=prompts,
        items=cur.num_rows,
        images=images,
        counts=status_counts(cur),
        rows=rows.num_rows,
        runs=len(runs),
        requests=_sum(rows["attempts"]) if rows.num_rows else 0,
        prompt_tokens=_sum(rows["prompt_tokens"]) if rows.num_rows else 0,
        completion_tokens=_sum(rows["completion_tokens"]) if rows.num_rows else 0,
        latency=latency_of(rows),
        first_started=_iso(started),
        last_finished=_iso(finished),
        busy_s=busy,
        images_per_s=images / busy if busy and images else None,
        fields=field_names(cur.schema),
    )


def field_names(schema: pa.Schema) -> list[str]:
    """The typed columns: a schema'd prompt's properties, a manifest's keep columns."""
    return [name for name in schema.names if name not in COLUMNS and name != "flags"]


@dataclass
class RunSummary:
    """One run: from its rows (always) and its run-log lines (when the log has them)."""

    run_id: str
    started_at: str | None
    ended_at: str | None
    wall_s: float | None  # the log's wall time, else first request sent to last answer
    rows: int
    counts: dict[str, int]
    images: int
    images_per_s: float | None
    items_per_s: float | None
    prompt_tokens: int
    completion_tokens: int
    latency: Latency
    exit_code: int | None = None
    stop_reason: str | None = None
    host: str | None = None
    command: str | None = None
    logged: bool = False  # the run log has this run
    log_counts: dict[str, int] = field(default_factory=dict)


def run_summaries(rows: pa.Table, records: Sequence[RunRecord]) -> list[RunSummary]:
    """One summary per run id seen in the rows or the log, oldest first."""
    by_id = {r.run_id: r for r in records}
    ids = list(by_id)
    if rows.num_rows:
        ids += [i for i in pc.unique(rows["run_id"]).to_pylist() if i not in by_id]
    out: list[RunSummary] = []
    for run_id in ids:
        part = rows.filter(pc.equal(rows["run_id"], run_id)) if rows.num_rows else rows
        rec = by_id.get(run_id)
        first = pc.min(part["started_at"]).as_py() if part.num_rows else None
        if first is None and part.num_rows:
            first = pc.min(part["finished_at"]).as_py()
        last = pc.max(part["finished_at"]).as_py() if part.num_rows else None
        wall = rec.wall_s if rec is not None and rec.wall_s is not None else None
        if wall is None and first is not None and last is not None:
            wall = (last - first).total_seconds()
        # images with a row from this run (the log's "images" counts the files found, done
        # or not: a rerun that finds everything done would have a rate of files/wall)
        images = len(pc.unique(part["image_path"])) if part.num_rows else 0
        rate = wall if wall and wall > 0 else None
        out.append(
            RunSummary(
                run_id=run_id,
                started_at=rec.started_at if rec else _iso(first),
                ended_at=(rec.ended_at if rec and rec.ended_at else _iso(last)),
                wall_s=wall,
                rows=part.num_rows,
                counts=status_counts(part),
                images=images,
                images_per_s=images / rate if rate and images else None,
                items_per_s=part.num_rows / rate if rate and part.num_rows else None,
                prompt_tokens=_sum(part["prompt_tokens"]) if part.num_rows else 0,
                completion_tokens=_sum(part["completion_tokens"]) if part.num_rows else 0,
                latency=latency_of(part),
                exit_code=rec.exit_code if rec else None,
                stop_reason=rec.stop_reason if rec else None,
                host=rec.host if rec else None,
                command=rec.command if rec else None,
                logged=rec is not None,
                log_counts=dict(rec.counts) if rec else {},
            )
        )
    out.sort(key=lambda r: r.started_at or "")
    return out


@dataclass
class Series:
    """A plot's data: x values and named y series of the same length (None: no value)."""

    x: list[float]
    ys: dict[str, list[float | None]]
    unit: str = ""  # of x
    step: float = 0.0  # bin width (histograms, throughput)


def nice_step(span: float, max_bins: int = MAX_BINS) -> float:
    """The smallest of 0.1 s, 0.2 s, 0.5 s, 1 s, ... 1 day that cuts ``span`` seconds into at
    most ``max_bins`` bins (whole days per bin beyond that)."""
    for step in NICE_STEPS:
        if span / step <= max_bins:
            return float(step)
    return float(math.ceil(span / max_bins / 86400) * 86400)


def _unix_s(col: pa.ChunkedArray) -> list[float]:
    """Timestamps (us, UTC) -> Unix seconds as floats."""
    micros = pc.cast(pc.cast(col, pa.int64()), pa.float64())
    seconds: list[float] = pc.divide(micros, 1e6).to_pylist()
    return seconds


def throughput(rows: pa.Table) -> Series:
    """Rows finished per second, by status, in time bins over the rows' span (x: bin start,
    Unix seconds), and the mean ``concurrency`` of the requests started in each bin.

    Bins with nothing in them are gaps (None) in ``concurrency``; the rates are 0 there.
    """
    if rows.num_rows == 0:
        return Series([], {s: [] for s in (*STATUSES, "concurrency")}, "s")
    finished = _unix_s(rows["finished_at"])
    started = _unix_s(pc.fill_null(rows["started_at"], rows["finished_at"]))
    t0, t1 = min(started), max(finished)
    step = nice_step(max(t1 - t0, 0.1))
    t0 = math.floor(t0 / step) * step
    n = int((t1 - t0) // step) + 1
    counts = {s: [0] * n for s in STATUSES}
    conc_sum, conc_n = [0.0] * n, [0] * n
    statuses = rows["status"].to_pylist()
    concurrency = rows["concurrency"].to_pylist()
    for fin, st, sta, conc in zip(finished, started, statuses, concurrency, strict=True):
        counts.setdefault(sta, [0] * n)[int((fin - t0) // step)] += 1
        if conc is not None:
            i = int((st - t0) // step)
            conc_sum[i] += conc
            conc_n[i] += 1
    ys: dict[str, list[float | None]] = {s: [c / step for c in col] for s, col in counts.items()}
    ys["concurrency"] = [s / k if k else None for s, k in zip(conc_sum, conc_n, strict=True)]
    return Series([t0 + i * step for i in range(n)], ys, "s", step)


def histogram(
    values: pa.ChunkedArray | pa.Array,
    groups: pa.ChunkedArray | pa.Array | None = None,
    *,
    bins: int | None = None,
    integer: bool = False,
    clip_q: float = 0.995,
) -> Series:
    """Counts of ``values`` in ``bins`` (default ~sqrt(n), 5-40) equal bins from the smallest
    value to the ``clip_q`` quantile; larger values count in the last bin (so one outlier does
    not squash the plot). ``groups``: one series per distinct group value (e.g. prompt), else "all".
    ``integer``: bin edges on whole numbers (token counts)."""
    mask = pc.is_valid(values)
    vals = pc.filter(values, mask).to_pylist()
    keys = ["all"] * len(vals) if groups is None else pc.filter(groups, mask).to_pylist()
    if not vals:
        return Series([], {})
    if bins is None:  # ~sqrt(n), 5 to 40: a handful of rows is not spread over 40 spikes
        bins = min(40, max(5, math.ceil(math.sqrt(len(vals)))))
    lo = float(min(vals))
    hi = quantiles(pa.array(vals, pa.float64()), (clip_q,))[0] or 0.0
    if integer:  # whole-number edges; the top value gets its own bin
        hi = math.ceil(hi) + 1.0
        width = float(max(1, math.ceil((hi - lo) / bins)))
        bins = max(1, math.ceil((hi - lo) / width))
    else:
        hi = max(hi, lo + 1e-3)
        width = (hi - lo) / bins
    names = sorted({str(k) for k in keys})
    counts = {name: [0] * bins for name in names}
    for v, k in zip(vals, keys, strict=True):
        i = min(bins - 1, max(0, int((v - lo) // width)))
        counts[str(k)][i] += 1
    ys: dict[str, list[float | None]] = {k: [float(c) for c in v] for k, v in counts.items()}
    return Series([lo + i * width for i in range(bins)], ys, "", width)


def error_kind(http_status: int | None, error: str | None) -> str:
    """The kind the run's summary gives the same error (``progress.error_kind``: ``HTTP 500``,
    ``timeout``, ``cannot decode image``...), with the HTTP status when the kind lacks it."""
    if not error:
        return f"HTTP {http_status}" if http_status and http_status != 200 else "(no message)"
    kind = summary_error_kind(error)
    if http_status and http_status != 200 and not kind.startswith("HTTP"):
        return f"HTTP {http_status}: {kind}"
    return kind


@dataclass
class ErrorExample:
    image_path: str
    prompt_name: str
    error: str | None
    http_status: int | None
    attempts: int | None
    run_id: str


@dataclass
class ErrorGroup:
    status: str
    kind: str
    count: int  # current rows of this kind (still failed now)
    prompts: dict[str, int]
    examples: list[ErrorExample]


def error_groups(cur: pa.Table, examples: int = EXAMPLES) -> list[ErrorGroup]:
    """The current failed and invalid rows grouped by ``error_kind``, largest group first."""
    bad = cur.filter(pc.is_in(cur["status"], pa.array([STATUS_FAILED, STATUS_INVALID])))
    cols = ["image_path", "prompt_name", "status", "error", "http_status", "attempts", "run_id"]
    groups: dict[tuple[str, str], ErrorGroup] = {}
    for row in bad.select(cols).to_pylist():
        kind = error_kind(row["http_status"], row["error"])
        group = groups.get((row["status"], kind))
        if group is None:
            group = groups[(row["status"], kind)] = ErrorGroup(row["status"], kind, 0, {}, [])
        group.count += 1
        group.prompts[row["prompt_name"]] = group.prompts.get(row["prompt_name"], 0) + 1
        if len(group.examples) < examples:
            fields = ("image_path", "prompt_name", "error", "http_status", "attempts", "run_id")
            group.examples.append(ErrorExample(*(row[f] for f in fields)))
    return sorted(groups.values(), key=lambda g: (-g.count, g.status, g.kind))


GALLERY_COLUMNS = (
    "image_path", "prompt_name", "status", "caption", "error", "finish_reason",
    "latency_s", "prompt_tokens", "completion_tokens", "attempts", "width", "height",
)  # fmt: skip


def jsonable(value: Any) -> Any:
    """A column value as JSON: datetimes as ISO text, bytes as a size, floats finite."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value):,} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def gallery_rows(
    cur: pa.Table, flags: Sequence[Sequence[str]], thumbs: Sequence[int | str]
) -> tuple[list[str], list[list[Any]]]:
    """The gallery's columns and rows: ``GALLERY_COLUMNS``, then ``flags`` (quality flags),
    ``thumb`` (index into the thumbnails, or why there is none) and ``fields`` (the typed columns as
    a {name: value} object, or null)."""
    names = field_names(cur.schema)
    columns = [*GALLERY_COLUMNS, "flags", "thumb", "fields"]
    data = {c: cur[c].to_pylist() for c in GALLERY_COLUMNS}
    own = {c: cur[c].to_pylist() for c in names}
    rows: list[list[Any]] = []
    for i in range(cur.num_rows):
        row: list[Any] = [data[c][i] for c in GALLERY_COLUMNS]
        lat = row[GALLERY_COLUMNS.index("latency_s")]
        if lat is not None:
            row[GALLERY_COLUMNS.index("latency_s")] = round(lat, 3)
        fields = {n: jsonable(own[n][i]) for n in names if own[n][i] is not None}
        row += [list(flags[i]), thumbs[i], fields or None]
        rows.append(row)
    return columns, rows


def flag_counts(flags: Iterable[Sequence[str]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for row in flags:
        counts.update(row)
    return dict(counts.most_common())

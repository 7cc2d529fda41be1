"""Benchmark (issue 12): what structured answers and manifests cost, and that they leave the
saturation figure where it was.

1. Per-item CPU (``time.thread_time``, median of several runs over many distinct answers) with
   data/schemas/annotate.json and a bigger schema written here (22 properties: nested objects,
   arrays of objects, enums, a ``$ref``, an ``anyOf``, formats): ``json.loads`` alone,
   jsonschema-rs's ``validate`` alone, the conversion to column values alone,
   ``AnswerCheck.values`` on a valid answer, on one that breaks the schema deep inside, on one
   cut off at max_tokens; python ``jsonschema`` as a reference (not used by the pipeline). Then
   the client's other steps a schema changes, each without / with it: the request body
   (``response_format``), the journal line, ``rows_to_table`` of full result rows (with vs
   without the schema's columns) and their zstd Parquet file (in memory). Answers come from
   the simulator's own generator (``structured_answer``), one per image.
2. Saturation: ``caption run`` (its own process, default ``--concurrency auto``) against
   ``caption sim`` (its own process, 64 slots x 0.25 s: ideal 256 req/s) with (a) the
   free-text prompt of bench/saturation.py and (b) the same prompt with ``--schema
   data/schemas/annotate.json --max-tokens 512``, alternating a, b over the reps. Per run:
   images/s, ratio to ideal, the client's and the simulator's CPU per item, and the CPU the
   rest of the machine used meanwhile (a disturbed run shows there).
3. Manifest streaming: 1,000,000-row CSV, JSONL and Parquet manifests (id, image, title,
   source; paths to files that do not exist: only the reader is measured), each streamed by
   ``read_entries`` in a fresh process: time per row, and RSS (VmRSS, VmHWM) after 10,000
   rows, after half and at the end; the Parquet one again with Arrow's system allocator.

Before each part the script waits (``--quiet-wait`` s at most) for the machine to be quiet and
notes its load; during each part (and each saturation run) it measures the CPU that other
processes used (all cores' user + system time minus its own and its children's): above 0.25
cores the part is marked disturbed, and should be rerun (``--parts NAME``).

Prints a markdown section; ``--append`` also appends it to bench/RESULTS.md.
Run: .venv/bin/python bench/structured.py [--items 3000] [--reps 2] [--rows 1000000]
     [--parts cpu saturation manifests] [--append]   (in make bench, without --append)
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import io
import itertools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

ANNOTATE = ROOT / "data" / "schemas" / "annotate.json"
RESULTS = ROOT / "bench" / "RESULTS.md"
TICK = os.sysconf("SC_CLK_TCK")
DISTURBED = 0.25  # cores used by other processes during a saturation run: a disturbed run
HELD = 20_000  # manifest entries kept in a list to measure what one costs in memory
PROMPT = "Describe."  # bench/saturation.py's prompt (its `command` sets it)

_unit = {"type": "number", "minimum": 0, "maximum": 1}
BIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "catalog",
    "type": "object",
    "$defs": {
        "box": {
            "type": "object",
            "properties": {"x": _unit, "y": _unit, "w": _unit, "h": _unit},
            "required": ["x", "y", "w", "h"],
            "additionalProperties": False,
        }
    },
    "properties": {
        "scene": {"type": "string", "enum": ["indoor", "outdoor", "studio", "underwater", "aerial", "other"]},
        "time_of_day": {"enum": ["dawn", "day", "dusk", "night", "unknown"]},
        "weather": {"type": ["string", "null"], "enum": ["clear", "cloudy", "rain", "snow", "fog", None]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 1, "maxItems": 10, "uniqueItems": True},
        "objects": {
            "type": "array",
            "maxItems": 12,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 32},
                    "count": {"type": "integer", "minimum": 1, "maximum": 999},
                    "box": {"$ref": "#/$defs/box"},
                    "attributes": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 5},
                    "confidence": _unit,
                },
                "required": ["name", "count", "box", "attributes", "confidence"],
                "additionalProperties": False,
            },
        },
        "people": {
            "type": "object",
            "properties": {
                "count": {"type": "integer", "minimum": 0, "maximum": 1000},
                "ages": {"type": "array", "items": {"enum": ["child", "teen", "adult", "senior"]}},
                "activities": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 5},
            },
            "required": ["count", "ages", "activities"],
            "additionalProperties": False,
        },
        "colors": {
            "type": "array",
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 16}, "fraction": _unit},
                "required": ["name", "fraction"],
                "additionalProperties": False,
            },
        },
        "text_in_image": {
            "type": "object",
            "properties": {
                "present": {"type": "boolean"},
                "language": {"type": ["string", "null"], "maxLength": 8},
                "content": {"type": "string", "maxLength": 500},
            },
            "required": ["present", "language", "content"],
            "additionalProperties": False,
        },
        "short_caption": {"type": "string", "maxLength": 160},
        "long_caption": {"type": "string", "maxLength": 2000},
        "rating": {"enum": ["poor", "fair", "good", "excellent"]},
        "aesthetic_score": {"type": "number", "minimum": 0, "maximum": 10},
        "sharpness": {"type": "integer", "minimum": 1, "maximum": 5},
        "nsfw": {"type": "boolean"},
        "watermark": {"type": "boolean"},
        "style": {"enum": ["photo", "illustration", "painting", "render", "screenshot", "diagram"]},
        "camera": {
            "type": "object",
            "properties": {
                "angle": {"enum": ["eye-level", "high", "low", "overhead"]},
                "distance": {"enum": ["close-up", "medium", "wide"]},
                "orientation": {"enum": ["landscape", "portrait", "square"]},
            },
            "required": ["angle", "distance", "orientation"],
            "additionalProperties": False,
        },
        "location": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "lat": {"type": "number", "minimum": -90, "maximum": 90},
                        "lon": {"type": "number", "minimum": -180, "maximum": 180},
                        "country": {"type": "string", "maxLength": 56},
                    },
                    "required": ["lat", "lon", "country"],
                    "additionalProperties": False,
                },
                {"type": "null"},
            ]
        },
        "date_taken": {"type": ["string", "null"], "format": "date"},
        "photo_id": {"type": "string", "format": "uuid"},
        "source_url": {"type": "string", "format": "uri"},
        "keywords": {"type": "array", "items": {"type": "string", "minLength": 2, "maxLength": 32}, "maxItems": 15},
    },
    "additionalProperties": False,
}  # fmt: skip
BIG_SCHEMA["required"] = list(BIG_SCHEMA["properties"])


# --- the machine -----------------------------------------------------------------------------


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat. Busy is processes' time
    (user, nice, system): interrupts and softirqs (the loopback traffic of the runs measured
    here) are left out, so busy minus our processes' rusage is other processes' CPU."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2], sum(fields[:8])


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores were busy (all processes) over the next `seconds`."""
    b0, _ = _cpu_jiffies()
    time.sleep(seconds)
    b1, _ = _cpu_jiffies()
    return (b1 - b0) / TICK / seconds


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return ", ".join(f.read().split()[:3])


def machine() -> str:
    return f"load average {load_average()}; {busy_cores():.2f} of {os.cpu_count()} cores busy over the last second"


def wait_quiet(limit: float, most: float = 0.3) -> str:
    """Wait (up to `limit` s) until the machine uses at most `most` cores; say how it was."""
    deadline = time.monotonic() + limit
    while busy_cores(1.0) > most and time.monotonic() < deadline:
        pass
    return machine()


def our_cpu() -> float:
    """CPU seconds of this process and its children that have ended."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# --- 1. per-item CPU -------------------------------------------------------------------------


def per_item_us(
    cells: dict[str, tuple[Callable[[Any], object], list[Any]]], runs: int
) -> dict[str, list[float]]:
    """Thread CPU µs per call of each cell's function over its items, `runs` times: round-robin
    (each run times every cell once, so a slow spell of the VM hits them alike), after one
    untimed pass over a few items, the garbage collector off while timed (as in timeit)."""
    for fn, items in cells.values():
        for x in items[:50]:
            fn(x)
    out: dict[str, list[float]] = {name: [] for name in cells}
    gc.disable()
    try:
        for _ in range(runs):
            for name, (fn, items) in cells.items():
                t0 = time.thread_time()
                for x in items:
                    fn(x)
                out[name].append((time.thread_time() - t0) / len(items) * 1e6)
    finally:
        gc.enable()
    return out


def sha12_of(i: int) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()[:12]


def broken(schema_name: str, value: dict[str, Any]) -> dict[str, Any]:
    """`value` with one value deep inside that breaks the schema."""
    bad = copy.deepcopy(value)
    if schema_name == "annotate":
        bad["objects"][0]["count"] = 0  # below the minimum of 1
    else:
        bad["location"]["lat"] = 100.5  # above 90, inside an anyOf
    return bad


def full_row(i: int, text: str, values: dict[str, Any]) -> dict[str, Any]:
    """A result row as the pipeline writes it: every built-in column set (+ `values`)."""
    import datetime as dt

    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC) + dt.timedelta(milliseconds=4 * i)
    h = hashlib.sha256(str(i).encode()).hexdigest()
    row = {
        "key": h[:32], "image_path": f"{'abcd'[i % 4]}/img{i:05d}.jpg", "image_sha256": h,
        "prompt_name": "annotate", "model": "gemma3-27b", "status": "ok", "caption": text,
        "finish_reason": "stop", "error": None, "http_status": 200, "prompt_tokens": 282,
        "completion_tokens": len(text) // 4, "response_model": "gemma3-27b", "attempts": 1,
        "queue_wait_s": 0.0004, "encode_s": 0.008, "latency_s": 0.2687, "ttft_s": None,
        "concurrency": 128, "started_at": now, "finished_at": now + dt.timedelta(seconds=0.27),
        "run_id": "20261202T120000Z-abcdef", "endpoint": "http://127.0.0.1:8102/v1",
        "width": 64, "height": 48,
    }  # fmt: skip
    return row | values


STEPS = (
    ("body", "request body"),
    ("journal", "journal line"),
    ("build", "rows_to_table"),
    ("write", "Parquet write"),
)


def tiny_jpeg_uri(i: int) -> str:
    """A 64x48 JPEG data URI (as bench/saturation.py's images), one colour per `i`."""
    import base64

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (i % 256, (7 * i) % 256, (13 * i) % 256)).save(buf, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def client_steps(
    prompt: Any, rows: list[dict[str, Any]], schema: Any, uris: list[str]
) -> dict[str, float]:
    """µs per item of the client's steps a schema changes (and Parquet bytes per row): the
    request body of each of `uris` for `prompt`, the journal line of each row, one table of
    `rows` and its zstd Parquet file."""
    import pyarrow.parquet as pq

    from pipeline.journal import _encode as journal_line
    from pipeline.payload import build_body, encode_body
    from pipeline.schema import rows_to_table

    k = len(rows)
    t0 = time.thread_time()
    for uri in uris:
        encode_body(build_body("gemma3-27b", prompt, PROMPT, uri))
    t1 = time.thread_time()
    for row in rows:
        journal_line(row)
    t2 = time.thread_time()
    table = rows_to_table(rows, schema)
    t3, w0 = time.thread_time(), time.process_time()
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    w1 = time.process_time()  # process CPU: zstd may use threads
    return {"body": (t1 - t0) / len(uris) * 1e6, "journal": (t2 - t1) / k * 1e6,
            "build": (t3 - t2) / k * 1e6, "write": (w1 - w0) / k * 1e6, "bytes": buf.tell() / k}  # fmt: skip


def cpu_part(args: argparse.Namespace, md: list[str], notes: dict[str, Any]) -> None:
    import jsonschema

    from pipeline.config.settings import PromptConfig
    from pipeline.schema import COLUMNS, schema_with_job
    from pipeline.sim.structured import answer_text, structured_answer
    from pipeline.structured import (
        AnswerCheck,
        SchemaViolation,
        check_schema,
        convert,
        merge_columns,
    )

    schemas = {"annotate": json.loads(ANNOTATE.read_text()), "big": BIG_SCHEMA}
    uris = [tiny_jpeg_uri(i) for i in range(args.answers)]
    n, runs = args.answers, args.runs
    table: list[tuple[str, ...]] = []
    build: list[tuple[str, ...]] = []
    got: dict[str, dict[str, float]] = {}
    for name, schema in schemas.items():
        columns = check_schema(schema, name)
        check = AnswerCheck(schema)
        values = [structured_answer(schema, sha12_of(i), PROMPT) for i in range(n)]
        texts = [answer_text(v) for v in values]
        bad = [answer_text(broken(name, v)) for v in values]
        cut = [t[: len(t) // 2] for t in texts]
        for t in bad[:3]:  # the broken answers must fail, the others pass
            try:
                check.values(t, "stop")
                raise SystemExit(f"{name}: a broken answer passed")
            except SchemaViolation:
                pass
        parsed = [json.loads(t) for t in texts]
        ref = jsonschema.validators.validator_for(schema)(
            schema, format_checker=jsonschema.FormatChecker()
        )

        def invalid(t: str, check: AnswerCheck = check) -> None:
            try:  # noqa: SIM105 (contextlib.suppress costs more than what is measured)
                check.values(t, "stop")
            except SchemaViolation:
                pass

        def cut_off(t: str, check: AnswerCheck = check) -> None:
            try:  # noqa: SIM105
                check.values(t, "length")
            except SchemaViolation:
                pass

        def columns_of_parsed(v: dict[str, Any], check: AnswerCheck = check) -> object:
            return {name: convert(v.get(name), col, f"$.{name}") for name, col in check.columns}

        validator = check._validator
        cells = per_item_us({
            "json.loads": (json.loads, texts),
            "jsonschema-rs validate (parsed)": (validator.validate, parsed),
            "convert to column values (parsed, valid)": (columns_of_parsed, parsed),
            "AnswerCheck.values, valid": (lambda t, c=check: c.values(t, "stop"), texts),
            "AnswerCheck.values, breaks the schema": (invalid, bad),
            "AnswerCheck.values, cut off (not JSON)": (cut_off, cut),
            "python jsonschema validate (reference, unused)": (ref.validate, parsed[: max(100, n // 10)]),
        }, runs)  # fmt: skip
        got[name] = {k: statistics.median(v) for k, v in cells.items()}
        size = statistics.mean(len(t.encode()) for t in texts)
        for what, all_runs in cells.items():
            table.append((name, f"{len(columns)}", f"{size:.0f} B", what, f"{statistics.median(all_runs):.2f}",
                          f"{min(all_runs):.2f}-{max(all_runs):.2f}"))  # fmt: skip

        # the rest of a schema'd item's extra work in the client, each step without / with
        # the schema: the request body (response_format), the journal line, the table, the file
        k = args.table_rows
        plain = schema_with_job({"bench": name})
        typed = schema_with_job({"bench": name}, merge_columns([(name, columns)], COLUMNS))
        rows_typed = [
            full_row(i, texts[i % n], check.values(texts[i % n], "stop")) for i in range(k)
        ]
        rows_plain = [full_row(i, texts[i % n], {}) for i in range(k)]
        prompts = {"without": PromptConfig(name=name, text=PROMPT),
                   "with": PromptConfig(name=name, text=PROMPT, schema=schema)}  # fmt: skip
        row_sets = {"without": (rows_plain, plain), "with": (rows_typed, typed)}
        inputs = {label: (prompts[label], *row_sets[label], uris) for label in prompts}
        for label in inputs:  # warm-up
            client_steps(*inputs[label])
        samples: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
        gc.disable()
        for r in range(2 * runs + 1):  # alternating which goes first; extra = same-run difference
            for label in ("without", "with") if r % 2 == 0 else ("with", "without"):
                samples[label].append(client_steps(*inputs[label]))
        gc.enable()
        cost: dict[str, float] = {}
        for step in ("body", "journal", "build", "write", "bytes"):
            for label, got_ in samples.items():
                cost[f"{step} {label}"] = statistics.median(x[step] for x in got_)
            cost[f"{step} extra"] = statistics.median(
                w[step] - o[step] for o, w in zip(samples["without"], samples["with"], strict=True)
            )
        got[name] |= cost
        for step, what in STEPS:
            was, now, extra = (cost[f"{step} {x}"] for x in ("without", "with", "extra"))
            build.append((name, what, f"{was:.2f}", f"{now:.2f}", f"{extra:+.2f}"))
        build.append((name, "Parquet bytes per row (zstd)", f"{cost['bytes without']:.0f}",
                      f"{cost['bytes with']:.0f}", f"{cost['bytes with'] - cost['bytes without']:+.0f}"))  # fmt: skip
    notes["cpu"] = got

    md.append(f"### 1. CPU per item (thread CPU time; median of {runs} runs over {n:,} distinct "
              f"answers from the simulator's generator, python jsonschema over {max(100, n // 10):,}; "
              "the cells timed round-robin, the garbage collector off while timed)\n")  # fmt: skip
    md.append("| schema | properties | answer size | what | µs per item (median) | runs' range |")
    md.append("|---|---|---|---|---|---|")
    md += ["| " + " | ".join(r) + " |" for r in table]
    md.append("")
    md.append(f"The rest of a schema'd item's extra work in the client, each step without / with "
              f"the schema, µs per item: the request body (`build_body` + `encode_body`, a 64x48 "
              f"JPEG, `response_format` added), the journal line, and {args.table_rows:,} full "
              "result rows (all 25 built-in columns set, `caption` holding the JSON answer) made a "
              "table (`rows_to_table`, thread CPU) and a zstd Parquet file in memory (process "
              f"CPU). Medians of {2 * runs + 1} runs, without and with alternating, and of the "
              "same-run differences:\n")  # fmt: skip
    md.append("| schema | step | without | with | extra (same-run differences) |")
    md.append("|---|---|---|---|---|")
    md += ["| " + " | ".join(r) + " |" for r in build]
    md.append("")


# --- 2. saturation ---------------------------------------------------------------------------


def client_run(
    url: str, sim_pid: int, images: Path, out: Path, flags: Iterable[str]
) -> dict[str, Any]:
    """One `caption run` in its own process; its rates, CPU and the rest of the machine's CPU."""
    import pyarrow.parquet as pq
    from saturation import command

    cmd = command([url], images, out, *flags)
    sim0, (busy0, _), ru0 = (
        proc_cpu(sim_pid),
        _cpu_jiffies(),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    ru1, (busy1, _), sim1 = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        _cpu_jiffies(),
        proc_cpu(sim_pid),
    )
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"caption run exited {p.returncode}")
    summary = next(ln.strip() for ln in p.stdout.splitlines() if "wall time" in ln)
    rate = float(summary.split("s, ")[1].split(" items/s")[0])
    t = pq.read_table(out, columns=["status", "attempts", "started_at", "finished_at"])
    rows = t.num_rows
    ok = t.column("status").to_pylist().count("ok")
    retried = sum(a > 1 for a in t.column("attempts").to_pylist())
    first = min(t.column("started_at").to_pylist())
    last = max(t.column("finished_at").to_pylist())
    client = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    sim = sim1 - sim0
    others = max(0.0, (busy1 - busy0) / TICK - client - sim)
    return {
        "summary": summary, "rate": rate, "wall": wall, "rows": rows, "ok": ok, "retried": retried,
        "busy_rate": ok / (last - first).total_seconds(), "process_rate": rows / wall,
        "client_cpu": client, "sim_cpu": sim, "others_cores": others / wall,
        "conc": summary.split("at concurrency ")[1].split()[0],
    }  # fmt: skip


def latest_saturation() -> tuple[str, str, float | None]:
    """The latest `Saturation, <date>` section of bench/RESULTS.md: its date, its auto medians
    line and its ratio to ideal in the run."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    best: tuple[str, str, float] | None = None
    for m in re.finditer(r"^#+ Saturation, (\d{4}-\d\d-\d\d \d\d:\d\d) UTC(.*)$", text, re.M):
        line = re.search(
            r"^median over .*concurrency auto: .*in the run ([\d.]+).*$", text[m.end() :], re.M
        )
        if line and (best is None or m.group(1) > best[0]):
            items = re.search(r"(\d+) requests", m.group(2))
            said = f"{line.group(0)} ({items.group(1) if items else '?'} requests)"
            best = (m.group(1), said, float(line.group(1)))
    return best or ("-", "none found", None)


def saturation_part(args: argparse.Namespace, md: list[str], notes: dict[str, Any]) -> None:
    from helpers import make_images
    from saturation import sim

    ideal = args.slots / args.latency
    variants = {"a": (), "b": ("--schema", str(ANNOTATE), "--max-tokens", "512")}
    runs: list[tuple[int, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-structured-") as d:
        tmp = Path(d)
        make_images(tmp / "images", args.items, size=(64, 48))
        proc, url = sim(tmp, args.slots, args.latency)
        try:
            for rep in range(1, args.reps + 1):
                order = "ab" if rep % 2 else "ba"  # a b, b a, ...: neither always goes first
                for v in order:
                    r = client_run(url, proc.pid, tmp / "images", tmp / f"out-{v}", variants[v])
                    runs.append((rep, v, r))
                    print(f"  rep {rep} {v}: {r['summary']}; client {r['client_cpu']:.2f} s CPU; "
                          f"others {r['others_cores']:.2f} cores", file=sys.stderr, flush=True)  # fmt: skip
        finally:
            proc.terminate()
            proc.wait()

    md.append(f"### 2. Saturation: simulator {args.slots} slots x {args.latency} s (ideal {ideal:.0f} req/s), "
              f"{args.items:,} images 64x48, default `--concurrency auto`\n")  # fmt: skip
    md.append("(a) `--prompt Describe.`; (b) the same with `--schema data/schemas/annotate.json "
              "--max-tokens 512`. Ratios to ideal: in the run (the summary's items/s), server busy "
              "(first request to last answer), whole process. CPU per item: the client process "
              "(getrusage of the child: start-up, preflight, walk, encode, journal, Parquet "
              "included) and the simulator (/proc); others = CPU the rest of the machine used "
              "during the run (all cores' busy time minus both), in cores.\n")  # fmt: skip
    md.append(
        "| rep | run | images/s in the run | in the run / ideal | server busy / ideal | whole process / ideal | ok | retried | client CPU ms/item | simulator CPU ms/item | others (cores) | settled at |"
    )
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for rep, v, r in runs:
        md.append(f"| {rep} | {v} | {r['rate']:.1f} | {r['rate'] / ideal:.3f} | {r['busy_rate'] / ideal:.3f} | "
                  f"{r['process_rate'] / ideal:.3f} | {r['ok']:,} | {r['retried']} | "
                  f"{r['client_cpu'] / r['rows'] * 1e3:.3f} | {r['sim_cpu'] / r['rows'] * 1e3:.3f} | "
                  f"{r['others_cores']:.2f}{' (disturbed)' if r['others_cores'] > DISTURBED else ''} | {r['conc']} |")  # fmt: skip
    md.append("")
    by = {v: [r for _, w, r in runs if w == v] for v in "ab"}
    med = {v: {k: statistics.median(r[k] / (r["rows"] if "cpu" in k else 1) for r in by[v])
               for k in ("rate", "busy_rate", "client_cpu", "sim_cpu")} for v in "ab"}  # fmt: skip
    pairs = [(b["rate"] / a["rate"]) for a, b in zip(by["a"], by["b"], strict=True)]
    cpu_diff = {k: statistics.median((b[k] - a[k]) / a["rows"] for a, b in zip(by["a"], by["b"], strict=True))
                for k in ("client_cpu", "sim_cpu")}  # fmt: skip
    notes["saturation"] = {
        "med": med,
        "pairs": pairs,
        "ideal": ideal,
        "runs": runs,
        "cpu_diff": cpu_diff,
    }
    md.append(f"Medians over {args.reps} reps: (a) {med['a']['rate']:.1f} images/s = {med['a']['rate'] / ideal:.3f} "
              f"of ideal in the run ({med['a']['busy_rate'] / ideal:.3f} server busy), client "
              f"{med['a']['client_cpu'] * 1e3:.3f} ms CPU per item; (b) {med['b']['rate']:.1f} images/s = "
              f"{med['b']['rate'] / ideal:.3f} ({med['b']['busy_rate'] / ideal:.3f}), client "
              f"{med['b']['client_cpu'] * 1e3:.3f} ms per item. **b/a = {med['b']['rate'] / med['a']['rate']:.3f}** "
              f"(same-rep ratios {', '.join(f'{x:.3f}' for x in pairs)}); CPU per item b - a, median of "
              f"the same-rep differences: client {cpu_diff['client_cpu'] * 1e6:+.0f} µs, simulator "
              f"{cpu_diff['sim_cpu'] * 1e6:+.0f} µs.\n")  # fmt: skip
    notes["saturation"]["latest"] = latest_saturation()
    md.append(
        f"Latest `Saturation` section of this file, {notes['saturation']['latest'][0]} UTC: {notes['saturation']['latest'][1]}.\n"
    )


# --- 3. manifests ----------------------------------------------------------------------------


def write_manifests(folder: Path, rows: int) -> dict[str, Path]:
    """CSV, JSONL and Parquet manifests of `rows` rows: id, image, title, source."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def row(i: int) -> tuple[str, str, str, str]:
        return (
            f"img-{i:07d}",
            f"images/{i % 100:02d}/img{i:07d}.jpg",
            f"Photo number {i} of the set",
            f"source-{i % 7}",
        )

    paths = {"csv": folder / "m.csv", "jsonl": folder / "m.jsonl", "parquet": folder / "m.parquet"}
    chunk = 100_000
    with open(paths["csv"], "w") as c, open(paths["jsonl"], "w") as j:
        c.write("id,image,title,source\n")
        for start in range(0, rows, chunk):
            part = [row(i) for i in range(start, min(rows, start + chunk))]
            c.write("".join(f"{a},{b},{t},{s}\n" for a, b, t, s in part))
            j.write(
                "".join(
                    json.dumps({"id": a, "image": b, "title": t, "source": s}) + "\n"
                    for a, b, t, s in part
                )
            )
    cols = list(zip(*(row(i) for i in range(rows)), strict=True))
    table = pa.table(
        {
            name: pa.array(col)
            for name, col in zip(("id", "image", "title", "source"), cols, strict=True)
        }
    )
    pq.write_table(table, paths["parquet"], row_group_size=100_000, compression="zstd")
    return paths


def stream(path: str, first: int, total: int) -> None:
    """(In a fresh process) stream every entry of manifest `path` with read_entries, as the
    annotate job would ($title a variable, source kept); print one JSON line of figures: time,
    and memory after imports, after `first` rows, after half of `total` and at the end."""
    import pyarrow as pa

    from pipeline.manifest import open_manifest, read_entries

    def status(field: str) -> float:  # MB; VmHWM, unlike ru_maxrss, starts afresh at exec
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    def memory() -> dict[str, float]:
        return {"rss": status("VmRSS"), "peak": status("VmHWM"),
                "arrow": pa.default_memory_pool().max_memory() / 2**20}  # fmt: skip

    at = {"start": memory()}
    marks = {first: "first", total // 2: "half"}
    t0, c0 = time.perf_counter(), time.process_time()
    m = open_manifest(Path(path), ("source",), variables={"title"})
    count, errors = 0, 0
    for entry in read_entries(m):
        count += 1
        errors += entry.error is not None
        if count in marks:
            at[marks[count]] = memory()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    at["end"] = memory()
    # the yardstick: what keeping each entry would cost (a reader that held its rows)
    before = status("VmRSS")
    held = list(itertools.islice(read_entries(m), HELD))
    entry_bytes = (status("VmRSS") - before) * 2**20 / len(held)
    print(json.dumps({"rows": count, "errors": errors, "wall": wall, "cpu": cpu, "pool":
                      pa.default_memory_pool().backend_name, "entry_bytes": entry_bytes} | at))  # fmt: skip


def manifests_part(args: argparse.Namespace, md: list[str], notes: dict[str, Any]) -> None:
    first = args.first
    rows_out = []
    got = {}
    with tempfile.TemporaryDirectory(prefix="bench-manifests-") as d:
        t0 = time.monotonic()
        paths = write_manifests(Path(d), args.rows)
        made = time.monotonic() - t0
        runs = [(fmt, path, {}) for fmt, path in paths.items()]
        runs.append(("parquet", paths["parquet"], {"ARROW_DEFAULT_MEMORY_POOL": "system"}))
        for fmt, path, env in runs:
            p = subprocess.run([sys.executable, __file__, "--stream", str(path), "--first", str(first),
                                "--rows", str(args.rows)], env=os.environ | env,
                               capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(p.stdout.strip().splitlines()[-1])
            label = fmt if not env else f"{fmt} ({r['pool']} allocator)"
            got[label] = r
            size = path.stat().st_size / 2**20
            print(
                f"  {label}: {r['rows']:,} rows in {r['wall']:.1f} s", file=sys.stderr, flush=True
            )
            rows_out.append((f"{label} ({r['pool']})" if not env else label, f"{size:.0f} MB", f"{r['rows']:,}",
                             f"{r['wall'] / r['rows'] * 1e6:.2f}", f"{r['cpu'] / r['rows'] * 1e6:.2f}",
                             f"{r['rows'] / r['wall']:,.0f}", f"{r['start']['rss']:.0f}",
                             *(f"{r[k]['rss']:.0f} / {r[k]['peak']:.0f}" for k in ("first", "half", "end")),
                             f"{r['half']['peak'] - r['first']['peak']:+.1f} / {r['end']['peak'] - r['half']['peak']:+.1f}",
                             f"{r['end']['arrow']:.1f}"))  # fmt: skip
    notes["manifests"] = got
    half = args.rows // 2
    md.append(f"### 3. Manifest streaming: {args.rows:,} rows (id, image, title, source; images that do "
              f"not exist), `read_entries` in a fresh process, `$title` a variable and `source` kept as in "
              f"jobs/annotate.toml; Parquet in row groups of 100,000, zstd (files made in {made:.0f} s)\n")  # fmt: skip
    md.append(f"RSS / peak (VmRSS / VmHWM) in MB after imports, after {first:,} rows, after "
              f"{half:,} and at the end; the peak of Arrow's own allocations (its memory pool's `max_memory()`). The last Parquet row is "
              "the same file read with `ARROW_DEFAULT_MEMORY_POOL=system` (glibc malloc instead of "
              "mimalloc).\n")  # fmt: skip
    md.append(f"| manifest (Arrow pool) | file | rows | µs per row (wall) | µs per row (CPU) | rows/s | RSS after imports | after {first:,} | after {half:,} | at the end | peak growth {first:,} → {half:,} / → end | Arrow's pool, peak MB |")  # fmt: skip
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    md += ["| " + " | ".join(r) + " |" for r in rows_out]
    md.append("")


# --- the reading -----------------------------------------------------------------------------


def reading(notes: dict[str, Any], args: argparse.Namespace) -> list[str]:
    out = []
    budget = 1e6 * args.latency / args.slots  # µs per item at the ideal rate
    for part, others in notes.get("others", {}).items():
        if others > DISTURBED:
            out.append(f"- **Disturbed**: other processes used {others:.2f} cores on average during "
                       f"part {part}; rerun it with `--parts {part}` on a quiet machine.")  # fmt: skip
    if "cpu" in notes:
        for name, g in notes["cpu"].items():
            extra = {step: g[f"{step} extra"] for step, _ in STEPS}
            per = g["AnswerCheck.values, valid"] + sum(extra.values())
            out.append(f"- {name}: a valid answer costs {g['AnswerCheck.values, valid']:.1f} µs to parse, "
                       f"validate and convert (json.loads {g['json.loads']:.1f}, jsonschema-rs "
                       f"{g['jsonschema-rs validate (parsed)']:.1f}, the conversion to column values "
                       f"{g['convert to column values (parsed, valid)']:.1f}); with the rest ("
                       + ", ".join(f"{what} {extra[step]:+.1f}" for step, what in STEPS)
                       + f") {per:.0f} µs per item: {per / budget:.1%} of one core at the "
                       f"simulator's {1e6 / budget:.0f} items/s ({per * 1000 / 1e6:.1%} at 1,000/s). "
                       f"python jsonschema would take {g['python jsonschema validate (reference, unused)']:.0f} µs "
                       f"for the validation alone.")  # fmt: skip
    if "saturation" in notes:
        s = notes["saturation"]
        med = s["med"]
        ratio = med["b"]["rate"] / med["a"]["rate"]
        a_spread = [r["rate"] for _, v, r in s["runs"] if v == "a"]
        out.append(f"- Saturation: b/a {ratio:.3f} (same-rep {min(s['pairs']):.3f}-{max(s['pairs']):.3f}); "
                   f"(a) itself ranged {min(a_spread):.1f}-{max(a_spread):.1f} images/s "
                   f"({(max(a_spread) - min(a_spread)) / statistics.median(a_spread):.1%}). The client's CPU per "
                   f"item went {med['a']['client_cpu'] * 1e3:.3f} → {med['b']['client_cpu'] * 1e3:.3f} ms "
                   f"(same-rep differences: median {s['cpu_diff']['client_cpu'] * 1e6:+.0f} µs), the simulator's "
                   f"{med['a']['sim_cpu'] * 1e3:.3f} → {med['b']['sim_cpu'] * 1e3:.3f} ms "
                   f"({s['cpu_diff']['sim_cpu'] * 1e6:+.0f} µs: it generates the schema'd answers).")  # fmt: skip
        when, _, before = s["latest"]
        if before is not None:
            out.append(f"- In the run, (a) {med['a']['rate'] / s['ideal']:.3f} and (b) "
                       f"{med['b']['rate'] / s['ideal']:.3f} of ideal; the latest `Saturation` section "
                       f"({when} UTC) had {before:.3f}.")  # fmt: skip
        disturbed = [f"rep {rep} {v}" for rep, v, r in s["runs"] if r["others_cores"] > DISTURBED]
        if disturbed:
            out.append(f"- **Disturbed**: other processes used more than {DISTURBED} cores during "
                       f"{', '.join(disturbed)}; rerun with `--parts saturation` on a quiet machine.")  # fmt: skip
    if "manifests" in notes:
        flat_rows = {}
        for label, r in notes["manifests"].items():
            grew = r["end"]["peak"] - r["first"]["peak"]
            per_row = grew * 2**20 / max(1, r["rows"] - args.first)
            flat_rows[label] = (grew, per_row, per_row < 0.02 * r["entry_bytes"])
        for label, r in notes["manifests"].items():
            per = r["wall"] / r["rows"] * 1e6
            grew, per_row, flat = flat_rows[label]
            system = next((v for k, v in flat_rows.items() if "system" in k), None)
            verdict = "flat." if flat else "**grows with the rows**."
            if not flat and label == "parquet" and system is not None and system[2]:
                verdict = (f"grows, but the same read with glibc malloc is flat ({system[0]:+.1f} MB): "
                           "the reader holds nothing per row; mimalloc keeps freed pages of Arrow's "
                           "decoding threads.")  # fmt: skip
            out.append(f"- {label} manifest: {per:.1f} µs per row ({per / budget:.2%} of one core at "
                       f"{1e6 / budget:.0f} items/s); peak RSS {r['first']['peak']:.0f} MB after "
                       f"{args.first:,} rows, {r['half']['peak']:.0f} after {args.rows // 2:,}, "
                       f"{r['end']['peak']:.0f} after {r['rows']:,}: {grew:+.1f} MB, {per_row:.1f} bytes "
                       f"per row, where holding the entries would take {r['entry_bytes']:.0f} bytes "
                       f"per row (Arrow's own allocations peaked at {r['end']['arrow']:.1f} MB): "
                       + verdict)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=("cpu", "saturation", "manifests"),
        default=["cpu", "saturation", "manifests"],
    )
    ap.add_argument("--answers", type=int, default=2000, help="distinct answers per CPU figure")
    ap.add_argument("--runs", type=int, default=7, help="runs per CPU figure (median)")
    ap.add_argument("--table-rows", type=int, default=2000, help="rows per table built")
    ap.add_argument("--items", type=int, default=3000, help="images per saturation run")
    ap.add_argument("--reps", type=int, default=2, help="saturation reps (a and b each)")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per manifest")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="seconds to wait for a quiet machine before each part",
    )
    ap.add_argument(
        "--append", action="store_true", help="also append the section to bench/RESULTS.md"
    )
    ap.add_argument("--stream", help=argparse.SUPPRESS)
    ap.add_argument(
        "--first", type=int, default=10_000, help="manifest rows before the first RSS reading"
    )
    args = ap.parse_args()
    if args.stream:
        stream(args.stream, args.first, args.rows)
        return

    started = time.gmtime()
    cmd = " ".join([".venv/bin/python", os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    md = [f"## Issue 12: structured answers and manifests, {time.strftime('%Y-%m-%d %H:%M', started)} UTC, "
          f"{os.cpu_count()} cores (`bench/structured.py`)\n",
          f"Command: `{cmd}`; load average before: {load_average()}. Client and simulator "
          "share the cores.\n"]  # fmt: skip
    notes: dict[str, Any] = {}
    parts = {"cpu": cpu_part, "saturation": saturation_part, "manifests": manifests_part}
    for name in args.parts:
        state = wait_quiet(args.quiet_wait)
        print(f"{name}: {state}", file=sys.stderr, flush=True)
        at = time.strftime("%H:%M:%S", time.gmtime())
        body: list[str] = []
        ours0, busy0, t0 = our_cpu(), _cpu_jiffies()[0], time.monotonic()
        parts[name](args, body, notes)
        others = ((_cpu_jiffies()[0] - busy0) / TICK - (our_cpu() - ours0)) / (
            time.monotonic() - t0
        )
        notes.setdefault("others", {})[name] = others
        flag = " (**disturbed**)" if others > DISTURBED else ""
        body.insert(1, f"Started {at} UTC; before it: {state}. During it, other processes used "
                       f"{max(0.0, others):.2f} cores on average{flag}.\n")  # fmt: skip
        md += body
    md.append("### Reading\n")
    md += reading(notes, args)
    md.append(
        f"\nFinished {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; after: {machine()}."
    )
    text = "\n".join(md) + "\n"
    print(text)
    if args.append:
        with open(RESULTS, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()

"""``caption export OUTPUT --format FORMAT``: an output dataset -> what a trainer or a notebook
reads, one row per image x prompt (each item's latest ``ok`` answer), with quality flags.

::

    txt          <stem>.txt per image (kohya, OneTrainer): beside the images, or under --to DIR
    jsonl, csv   one record per image x prompt: RECORD_COLUMNS, the job's own columns, flags
    parquet      one file: every column of the current rows, plus flags
    imagefolder  --to DIR/metadata.jsonl + the images: datasets.load_dataset("imagefolder", ...)

The single-file formats go to ``<OUTPUT>.<format>`` beside the dataset folder (never inside it:
pyarrow, pandas, polars and duckdb would read it as a part), or ``--to PATH`` (a folder: the file
goes in it; ``-``: standard output, jsonl and csv). Every file is written to a temp name and
renamed into place. ``export`` is the core (tests call it); ``add_export_arguments`` and
``run_export`` are the command line.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import EXIT_FAILED, EXIT_OK, ConfigError, OutputError
from .export_files import FileCounts, Images, export_imagefolder, export_txt
from .quality import FLAGS, count_flags, with_flags
from .results import current, job_of, part_files, place, read_rows
from .schema import COLUMNS
from .sink import atomic_file
from .storage import RemotePath, Where, open_parquet, path_or_uri
from .structured import columns_of

FORMATS = ("txt", "jsonl", "csv", "parquet", "imagefolder")
EXISTING = ("skip", "overwrite", "fail")
STATUSES = ("ok", "failed", "invalid", "any")
SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
# jsonl and csv: what a row says about its answer (the parquet format keeps every column)
RECORD_COLUMNS = (
    "key", "image_path", "image_sha256", "prompt_name", "model", "status", "caption",
    "finish_reason", "error", "prompt_tokens", "completion_tokens", "width", "height",
    "finished_at", "run_id",
)  # fmt: skip
BATCH = 10_000


@dataclass
class Selection:
    """The rows an export writes, and how they were chosen."""

    table: pa.Table  # the current rows (status, prompt), with ``flags``, minus excluded ones
    job: dict[str, Any] | None  # the dataset's job (``caption.job``)
    prompts: list[str]  # the prompts among the current rows of the status (before --prompt)
    rows: int  # current rows of the status and prompt, before --exclude-flag
    excluded: int  # rows dropped by --exclude-flag
    flags: dict[str, int]  # rows carrying each flag, before --exclude-flag


@dataclass
class ExportResult:
    """What ``export`` did. ``written`` counts records (jsonl, csv, parquet) or files (txt
    caption files, imagefolder images)."""

    format: str
    target: str  # the file or folder written; "-": standard output; "beside the images"
    rows: int = 0  # rows selected (latest per image x prompt, status, prompt)
    excluded: int = 0  # dropped by --exclude-flag
    written: int = 0
    skipped: int = 0  # not written: the file was there (--existing skip)
    missing: int = 0  # not written: the image was not found
    clashes: int = 0  # not written: several rows would write one file
    flags: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every selected row not excluded on purpose or kept on purpose was written."""
        return self.missing == 0 and self.clashes == 0


def parse_flags(values: Sequence[str]) -> tuple[str, ...]:
    """``--exclude-flag`` values (repeatable, or comma-separated) -> flag names; raises
    ``ConfigError`` for a name that is not a flag."""
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FLAGS]
    if unknown:
        raise ConfigError(
            f"unknown quality flag {', '.join(map(repr, unknown))}: the flags are "
            f"{', '.join(FLAGS)}"
        )
    return tuple(dict.fromkeys(names))


def dataset_job(output: Where) -> dict[str, Any] | None:
    """The job of the newest run (``results.job_of``), with the prompts of every run: a prompt
    that an earlier run had and the newest one dropped keeps its text and schema, so its rows
    are still flagged by what it asked for."""
    job = job_of(output)
    if job is None:
        return None
    prompts = {p.get("name"): p for p in job.get("prompts") or ()}
    for part in reversed(part_files(output)):
        try:
            raw = (open_parquet(part).schema_arrow.metadata or {}).get(b"caption.job")
            older = json.loads(raw) if raw else {}
        except (OSError, ValueError):
            continue
        for p in older.get("prompts") or ():
            prompts.setdefault(p.get("name"), p)
    return {**job, "prompts": list(prompts.values())}


def select(
    output: Where,
    *,
    status: str = "ok",
    prompt: str | None = None,
    exclude_flags: Sequence[str] = (),
) -> Selection:
    """The latest row of each image x prompt with ``status`` (``"any"``: whatever it is), with
    its quality flags (duplicates are compared across every prompt), of ``prompt`` if given,
    minus those carrying an ``exclude_flags`` flag."""
    if status not in STATUSES:
        raise ConfigError(f"--status must be one of {', '.join(STATUSES)}, got {status!r}")
    excluded_flags = set(parse_flags(exclude_flags))
    if not part_files(output):
        raise OutputError(
            f"{output} holds no caption part files (part-*.parquet): nothing to export"
        )
    job = dataset_job(output)
    rows = current(read_rows(output), status=None if status == "any" else status)
    table = with_flags(rows, job)
    prompts = sorted(set(table["prompt_name"].to_pylist()))
    if prompt is not None:
        known = set(prompts) | {p.get("name") for p in (job or {}).get("prompts") or ()}
        if prompt not in known:
            raise ConfigError(
                f"no prompt {prompt!r} in {output}; its prompts: {', '.join(prompts) or '(none)'}"
            )
        table = table.filter(pc.equal(table["prompt_name"], prompt))
    flags = count_flags(table["flags"])
    n = table.num_rows
    if excluded_flags:
        keep = [not excluded_flags.intersection(f) for f in table["flags"].to_pylist()]
        table = table.filter(pa.array(keep, pa.bool_()))
    return Selection(table, job, prompts, n, n - table.num_rows, flags)


def _own_columns(table: pa.Table) -> list[str]:
    """The job's own columns (schema properties, kept manifest columns), in table order."""
    return [c for c in table.column_names if c not in COLUMNS and c != "flags"]


def _prompt_fields(job: Mapping[str, Any] | None, prompt: str, table: pa.Table) -> list[str]:
    """The own columns that belong to ``prompt``: its schema's properties and the kept manifest
    columns (all own columns when the job is unknown)."""
    own = _own_columns(table)
    if job is None:
        return own
    mine: set[str] = set((job.get("input") or {}).get("keep") or ())
    for p in job.get("prompts") or ():
        if p.get("name") == prompt and p.get("schema") is not None:
            mine.update(name for name, _ in columns_of(p["schema"]))
    return [c for c in own if c in mine]


def _inside(path: Path, folder: Where) -> bool:
    """``path`` is in ``folder`` where readers of the dataset would see it (not in a hidden or
    ``_`` entry, which pyarrow, pandas, polars and duckdb skip)."""
    if isinstance(folder, RemotePath):
        return False  # a local file is never inside an object store's prefix
    try:
        rel = path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return not rel.parts or not rel.parts[0].startswith(("_", "."))


def _single_target(output: Where, fmt: str, to: str | Path | None) -> Path | None:
    """Where a single-file format goes (None: standard output)."""
    if isinstance(output, RemotePath):
        if to is None:
            raise ConfigError(f"{output} is in object storage: give --to FILE (or - for stdout)")
        default_name = output.name + SUFFIX[fmt]
    else:
        default_name = output.resolve().name + SUFFIX[fmt]
        if to is None:
            return output.resolve().with_name(default_name)
    if str(to) == "-":
        if fmt == "parquet":
            raise ConfigError("--to -: parquet is not written to standard output; give a file")
        return None
    path = Path(to)
    return path / default_name if path.is_dir() else path


# --- records -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A value JSON cannot hold as it is -> text (timestamps and dates as ISO 8601)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_plain)


def _cell(value: Any) -> str:
    """A CSV cell: null empty, booleans true/false, lists and structs as JSON text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | dict | tuple):
        return _json(value)
    return str(_plain(value))


def _batches(table: pa.Table) -> Iterator[list[dict[str, Any]]]:
    for batch in table.to_batches(max_chunksize=BATCH):
        yield batch.to_pylist()


def write_jsonl(table: pa.Table, fh: IO[bytes]) -> None:
    for rows in _batches(table):
        fh.write("".join(_json(row) + "\n" for row in rows).encode("utf-8"))


def write_csv(table: pa.Table, fh: IO[bytes]) -> None:
    """RFC 4180 CSV (UTF-8, no BOM, a header line)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(table.column_names)
    names = table.column_names
    for rows in _batches(table):
        writer.writerows([_cell(row[name]) for name in names] for row in rows)
        fh.write(buf.getvalue().encode("utf-8"))
        buf.seek(0)
        buf.truncate()
    fh.write(buf.getvalue().encode("utf-8"))


def _write_single(
    sel: Selection, fmt: str, output: Where, target: Path | None, existing: str
) -> ExportResult:
    table = sel.table
    if fmt == "parquet":
        meta = {"caption.job": json.dumps(sel.job, ensure_ascii=False)} if sel.job else None
        table = table.replace_schema_metadata(meta)
    else:
        columns = [*RECORD_COLUMNS, *_own_columns(table), "flags"]
        table = table.select([c for c in columns if c in table.column_names])
    result = ExportResult(fmt, "-" if target is None else str(target))
    if target is None:
        stdout = sys.stdout.buffer
        (write_jsonl if fmt == "jsonl" else write_csv)(table, stdout)
        stdout.flush()
        result.written = table.num_rows
        return result
    if target.exists():
        if existing == "fail":
            raise ConfigError(f"{target} exists; nothing was written (--existing overwrite)")
        if existing == "skip":
            result.skipped = table.num_rows
            result.warnings.append(f"{target} exists: kept (--existing overwrite replaces it)")
            return result
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as fh:
        if fmt == "parquet":
            pq.write_table(table, fh, compression="zstd")
        elif fmt == "jsonl":
            write_jsonl(table, fh)
        else:
            write_csv(table, fh)
    result.written = table.num_rows
    return result


# --- the export --------------------------------------------------------------------------------


def export(
    output: Path | str | Where,
    fmt: str,
    *,
    to: str | Path | None = None,
    prompt: str | None = None,
    status: str = "ok",
    exclude_flags: Sequence[str] = (),
    existing: str = "skip",
) -> ExportResult:
    """Export the dataset in ``output`` as ``fmt`` (``FORMATS``); see the module docstring.

    ``to``: the file or folder to write (None: the format's default; ``"-"``: standard output
    for jsonl and csv). ``prompt``: only that prompt's rows. ``status``: which rows (``ok``, the
    default; ``failed``, ``invalid``, or ``any`` = each item's latest row whatever it is; txt and
    imagefolder take ``ok`` only). ``exclude_flags``: drop rows with any of these quality flags.
    ``existing``: a file that is there is kept (``skip``), replaced (``overwrite``), or stops the
    export before anything is written (``fail``). Raises ``ConfigError`` for a usage problem,
    ``OutputError`` when ``output`` is not a readable dataset or a file cannot be written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    output = place(output)
    if existing not in EXISTING:
        raise ConfigError(f"--existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    if fmt in ("txt", "imagefolder") and status != "ok":
        raise ConfigError(
            f"{fmt} exports captions: --status ok only (jsonl, csv, parquet take any)"
        )
    if fmt == "imagefolder" and to is None:
        raise ConfigError(
            "imagefolder needs --to DIR: the folder to hold metadata.jsonl and images"
        )
    if fmt in ("txt", "imagefolder") and str(to) == "-":
        raise ConfigError(f"--to -: {fmt} writes files, not a stream; give a folder")
    target = _single_target(output, fmt, to) if fmt in SUFFIX else None
    folder = Path(to) if to is not None and fmt not in SUFFIX else None
    for path in (target, folder):
        if path is not None and _inside(path, output):
            raise ConfigError(
                f"{path} is inside the dataset folder {output}: its readers would take it for a "
                "part; write it elsewhere"
            )
    sel = select(output, status=status, prompt=prompt, exclude_flags=exclude_flags)
    try:
        if fmt in SUFFIX:
            result = _write_single(sel, fmt, output, target, existing)
        else:
            result = _write_files(sel, fmt, output, folder, prompt, existing)
    except OSError as exc:  # a folder that is a file, no permission, a full disk
        where = exc.filename or target or folder
        raise OutputError(f"cannot write {where}: {exc.strerror or exc}") from None
    result.rows, result.excluded, result.flags = sel.rows, sel.excluded, sel.flags
    if sel.rows == 0:
        result.warnings.insert(0, f"no {status} rows to export in {output}")
    return result


def _write_files(
    sel: Selection,
    fmt: str,
    output: Where,
    folder: Path | None,
    prompt: str | None,
    existing: str,
) -> ExportResult:
    images = Images(sel.job, output)
    counts: FileCounts
    if fmt == "txt":
        several = prompt is None and len(sel.prompts) > 1
        try:
            counts = export_txt(sel.table, images, to=folder, several=several, existing=existing)
        except ConfigError as exc:
            if folder is None and "--to" not in str(exc):
                raise ConfigError(
                    f"{exc}; pass --to DIR to write the caption files under DIR instead"
                ) from None
            raise
        beside = f"beside the images {images.describe()}"
        target = str(folder) if folder is not None else beside
    else:
        assert folder is not None
        if prompt is None and len(sel.prompts) > 1:
            raise ConfigError(
                f"imagefolder holds one text per image and {output} has prompts "
                f"{', '.join(sel.prompts)}: choose one with --prompt NAME"
            )
        name = prompt or (sel.prompts[0] if sel.prompts else "")
        fields = _prompt_fields(sel.job, name, sel.table)
        clash = sorted({"file_name", "text"} & set(fields))
        if clash:
            raise ConfigError(
                f"the dataset has a column named {' and '.join(clash)}, which imagefolder's "
                "metadata.jsonl uses itself; export it as jsonl or parquet instead"
            )
        counts = export_imagefolder(sel.table, images, to=folder, fields=fields, existing=existing)
        target = str(folder)
    result = ExportResult(fmt, target)
    result.written, result.skipped = counts.written, counts.skipped
    result.missing, result.clashes = counts.missing, counts.clashes
    result.warnings = list(dict.fromkeys([*images.warnings, *counts.warnings]))
    return result


# --- command line ------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """``caption export``'s arguments, on the subcommand's parser."""
    parser.add_argument(
        "output",
        metavar="OUTPUT",
        type=path_or_uri,
        help="the output folder (or URI) of caption run",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="txt: a caption file per image (kohya, OneTrainer); jsonl, csv: a record per image x "
        "prompt; parquet: one file; imagefolder: metadata.jsonl + images (Hugging Face datasets)",
    )
    parser.add_argument(
        "--to",
        metavar="PATH",
        help="where to write: txt: a folder mirroring the images' (default: beside the images); "
        "jsonl, csv, parquet: a file or folder (default: OUTPUT.jsonl etc. beside OUTPUT; '-' = "
        "standard output for jsonl and csv); imagefolder: a folder (required)",
    )
    parser.add_argument("--prompt", metavar="NAME", help="only this prompt's answers")
    parser.add_argument(
        "--status",
        choices=STATUSES,
        default="ok",
        help="which rows: each image x prompt's latest row of this status (any: its latest row); "
        "default ok",
    )
    parser.add_argument(
        "--exclude-flag",
        dest="exclude_flags",
        action="append",
        default=[],
        metavar="FLAG",
        help=f"leave out rows with this quality flag (repeatable): {', '.join(FLAGS)}",
    )
    parser.add_argument(
        "--existing",
        choices=EXISTING,
        default="skip",
        help="a file to write is already there: skip keeps it (default), overwrite replaces it, "
        "fail stops before writing anything",
    )


def format_result(result: ExportResult) -> str:
    """The lines ``run_export`` prints (to standard error: standard output may be the data)."""
    flagged = ", ".join(f"{name} {n}" for name, n in result.flags.items() if n) or "none"
    unit = "records" if result.format in SUFFIX else "files"
    left = [
        f"{n} {what}"
        for n, what in (
            (result.excluded, "excluded by flag"),
            (result.skipped, "already there (kept)"),
            (result.missing, "image(s) not found"),
            (result.clashes, "sharing a file name"),
        )
        if n
    ]
    lines = [
        f"caption export: {result.rows} rows -> {result.format} {result.target}",
        f"  written    {result.written} {unit}",
    ]
    if left:
        lines.append(f"  not        {', '.join(left)}")
    lines.append(f"  flags      {flagged}")
    lines += [f"  warning    {w}" for w in result.warnings]
    return "\n".join(lines)


def run_export(args: argparse.Namespace) -> int:
    """Run ``caption export`` from parsed arguments; print the summary to standard error.
    Returns 0, or 1 when rows could not be written (images not found, file name clashes).
    Raises ``ConfigError`` / ``OutputError`` (exit 2) as ``export`` does."""
    result = export(
        args.output,
        args.format,
        to=args.to,
        prompt=args.prompt,
        status=args.status,
        exclude_flags=args.exclude_flags,
        existing=args.existing,
    )
    print(format_result(result), file=sys.stderr)
    return EXIT_OK if result.complete else EXIT_FAILED

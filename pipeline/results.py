"""Reading an output dataset back: all rows as one table, the current row per item, the job
that wrote it, and its runs. The read side of ``export``, ``status`` and ``report``.

An *item* is one image x one prompt: ``(image_path, prompt_name)``. A dataset can hold several
rows of one item (a ``failed`` row and, after a rerun, an ``ok`` one; or rows for an image whose
bytes changed); the *current* row is the one that finished last.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import OutputError
from .schema import SCHEMA
from .sink import PART_GLOB
from .storage import RemotePath, Where, is_uri, open_parquet, output_place, resolve, state_dir_for

RUNS_NAME = "_caption_runs.jsonl"
ITEM = ("image_path", "prompt_name")


def place(output: Where | str) -> Where:
    """An output as given (a folder, or a URI such as ``s3://bucket/prefix``) as a folder."""
    return output_place(output) if isinstance(output, str) else output


def state_of(output: Where | str) -> Path:
    """Where ``output``'s run log and lock are: the folder itself, or for a URI the local state
    folder ``caption run`` derives from it (the default ``--state-dir``)."""
    if isinstance(output, RemotePath):
        return state_dir_for(output.loc)
    if isinstance(output, str) and is_uri(output):
        return state_dir_for(resolve(output))
    return Path(output)


def part_files(output: Where | str) -> list[Where]:
    """The dataset's part files, oldest run first (names sort by run id, which sorts by time)."""
    output = place(output)
    if isinstance(output, RemotePath):
        parts: list[Where] = list(output.glob(PART_GLOB))
        if not parts and not output.exists():
            raise OutputError(f"{output}: nothing there (no caption output)")
        return parts
    if not output.is_dir():
        raise OutputError(f"{output} is not a folder (no caption output there)")
    return sorted(output.glob(PART_GLOB))


def read_rows(output: Where | str, columns: Sequence[str] | None = None) -> pa.Table:
    """Every row of every part file as one table (columns a part lacks are null there).

    ``columns``: only these (those no part has are left out). An output without part files
    gives an empty table of the built-in schema.
    """
    tables: list[pa.Table] = []
    for part in part_files(output):
        try:
            pf = open_parquet(part)
            names = pf.schema_arrow.names
            wanted = None if columns is None else [c for c in columns if c in names]
            tables.append(pf.read(columns=wanted))
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot read the part file {part} ({exc})") from None
    if not tables:
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    return table.replace_schema_metadata(None)


def current(table: pa.Table, *, status: str | None = None) -> pa.Table:
    """The latest row (by ``finished_at``) of each item; with ``status``, the latest row of that
    status (``status="ok"``: each item's latest answer, even if a later attempt failed).

    Sorted by image path, then prompt name.
    """
    if status is not None:
        table = table.filter(pc.equal(table["status"], status))
    if table.num_rows == 0:
        return table
    order = table.sort_by(
        [("image_path", "ascending"), ("prompt_name", "ascending"), ("finished_at", "ascending")]
    )
    n = order.num_rows
    paths, prompts = order["image_path"], order["prompt_name"]
    later_p, later_q = paths.slice(1), prompts.slice(1)
    differs = pc.or_(
        pc.not_equal(paths.slice(0, n - 1), later_p),
        pc.not_equal(prompts.slice(0, n - 1), later_q),
    )
    last = pa.concat_arrays([*differs.chunks, pa.array([True])]) if n > 1 else pa.array([True])
    return order.filter(last)


def job_of(output: Where | str) -> dict[str, Any] | None:
    """The resolved job (``caption.job`` metadata) of the newest part file, if any (newest by
    the run id's time, then by the file's mtime: two runs of one second sort by their random
    suffix)."""

    def age(part: Where) -> tuple[str, int]:
        try:
            st = part.stat()
            ns = st.st_mtime_ns
            return part.name[len("part-") : len("part-YYYYmmddTHHMMSSZ")], ns
        except OSError:
            return part.name, 0

    for part in sorted(part_files(output), key=age, reverse=True):
        try:
            meta = open_parquet(part).schema_arrow.metadata or {}
        except (OSError, ValueError):
            continue
        raw = meta.get(b"caption.job")
        if raw is not None:
            job: dict[str, Any] = json.loads(raw)
            return job
    return None


@dataclass
class RunRecord:
    """One run, from the start and end lines it appended to ``_caption_runs.jsonl``."""

    run_id: str
    started_at: str
    pid: int | None = None
    host: str | None = None
    command: str | None = None
    input: str | None = None  # the input root or manifest, absolute
    prompts: list[str] = field(default_factory=list)
    ended_at: str | None = None
    exit_code: int | None = None
    wall_s: float | None = None
    stop_reason: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float | None:
        """Images this run finished (its items over its prompts) per second of wall time."""
        items = self.counts.get("items")
        if self.wall_s is None or items is None or self.wall_s <= 0:
            return None
        return items / max(1, len(self.prompts)) / self.wall_s

    @property
    def finished(self) -> bool:
        return self.ended_at is not None


def read_runs(output: Where | str) -> list[RunRecord]:
    """The runs recorded in ``output``, oldest first (a line that does not parse is skipped:
    a run killed while writing it leaves half a line). A URI output's run log is in its local
    state folder: on another machine there is none."""
    path = state_of(output) / RUNS_NAME
    runs: dict[str, RunRecord] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {exc}") from None
    for line in lines:
        try:
            rec = json.loads(line)
            run_id = rec["run_id"]
        except (ValueError, KeyError, TypeError):
            continue
        if rec.get("event") == "start":
            runs[run_id] = RunRecord(
                run_id=run_id,
                started_at=rec.get("time", ""),
                pid=rec.get("pid"),
                host=rec.get("host"),
                command=rec.get("command"),
                input=rec.get("input"),
                prompts=list(rec.get("prompts") or []),
            )
        elif rec.get("event") == "end" and run_id in runs:
            run = runs[run_id]
            run.ended_at = rec.get("time")
            run.exit_code = rec.get("exit_code")
            run.wall_s = rec.get("wall_s")
            run.stop_reason = rec.get("stop_reason")
            run.counts = dict(rec.get("counts") or {})
    return list(runs.values())


def append_run_line(output: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (``event`` start or end, ``run_id``, ``time`` added) to the run log.

    One ``write`` of a whole line with O_APPEND: concurrent writers never interleave lines.
    """
    rec = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **record}
    line = (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode()
    fd = os.open(output / RUNS_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)

"""``caption status OUTPUT [--json] [--no-walk]``: where a dataset stands.

Per prompt, the current state of each item (image x prompt, its latest row): ok, failed,
invalid, and pending (items of the job's input that have no row yet: the input named in the
dataset's metadata is walked; ``--no-walk`` skips that). The last run (id, start, wall time,
images/s, exit code) from the run log, and whether runs hold the lock now (a run, or shard runs).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import ConfigError, OutputError
from .results import RunRecord, current, job_of, place, read_rows, read_runs, state_of
from .schema import STATUS_FAILED, STATUS_INVALID, STATUS_OK
from .state import LockHolder, lock_holders
from .storage import Where, path_or_uri

STATES = (STATUS_OK, STATUS_FAILED, STATUS_INVALID, "pending")


@dataclass
class PromptStatus:
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    pending: int | None = None  # None: not walked

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.invalid + (self.pending or 0)


@dataclass
class Status:
    output: str
    input: str | None
    rows: int  # every row in the dataset, superseded ones included
    prompts: dict[str, PromptStatus] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    running: list[LockHolder] = field(default_factory=list)  # runs holding a lock now
    walk_error: str | None = None

    @property
    def last_run(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None

    def to_json(self) -> dict[str, Any]:
        last = self.last_run
        return {
            "output": self.output,
            "input": self.input,
            "rows": self.rows,
            "prompts": {name: {**asdict(p), "total": p.total} for name, p in self.prompts.items()},
            "runs": len(self.runs),
            "last_run": None
            if last is None
            else {**asdict(last), "images_per_s": last.images_per_s},
            "running": [asdict(h) for h in self.running],
            "walk_error": self.walk_error,
        }


def dataset_status(output: Path | str, *, walk: bool = True) -> Status:
    """The status of the dataset in ``output`` (a folder or a URI; reads only, creates
    nothing)."""
    folder = place(output)
    if isinstance(folder, Path) and not folder.is_dir():
        raise OutputError(f"{output} is not a folder: no caption output there")
    return _status(folder, walk=walk)


def _status(output: Where, *, walk: bool) -> Status:
    table = read_rows(output, ["image_path", "prompt_name", "status", "finished_at"])
    job = job_of(output) or {}
    runs = read_runs(output)
    inp = job.get("input") or {}
    where = inp.get("manifest") or inp.get("root")
    if where is None and runs:
        where = runs[-1].input
    status = Status(
        str(output), where, table.num_rows, runs=runs, running=lock_holders(state_of(output))
    )
    names = [p.get("name", "default") for p in job.get("prompts") or []]
    for name in names:
        status.prompts[name] = PromptStatus()
    latest = current(table)
    counts = Counter(
        zip(latest["prompt_name"].to_pylist(), latest["status"].to_pylist(), strict=True)
    )
    for (name, state), n in counts.items():
        p = status.prompts.setdefault(name, PromptStatus())
        if state in (STATUS_OK, STATUS_FAILED, STATUS_INVALID):
            setattr(p, state, getattr(p, state) + n)
    if walk and names:
        try:
            _count_pending(status, inp, names, latest)
        except (OSError, ConfigError) as exc:
            status.walk_error = f"cannot walk the input {where}: {exc}"
    return status


def _count_pending(status: Status, inp: dict[str, Any], names: list[str], latest: pa.Table) -> None:
    """Items of the input (each image x each of the job's prompts) with no row yet."""
    from .walker import walk_input

    seen = set(
        zip(latest["image_path"].to_pylist(), latest["prompt_name"].to_pylist(), strict=True)
    )
    pending = dict.fromkeys(names, 0)
    identities: Any
    if inp.get("manifest"):
        from .manifest import open_manifest, read_entries

        identities = (
            e.identity for e in read_entries(open_manifest(path_or_uri(inp["manifest"]), ()))
        )
    else:
        given = inp.get("root") or "."
        root = path_or_uri(given)
        if isinstance(root, Path) and not root.is_dir():
            raise ConfigError(f"{root} is not a folder")
        patterns = tuple(inp.get("patterns") or ())
        identities = (f.relpath for f in walk_input(root, patterns))
    for identity in identities:
        for name in names:
            if (identity, name) not in seen:
                pending[name] += 1
    for name, n in pending.items():
        status.prompts[name].pending = n


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    h, rest = divmod(s, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def format_status(st: Status) -> str:
    """The human-readable status."""
    lines = [f"dataset {st.output}" + (f" (input {st.input})" if st.input else "")]
    width = max([len("prompt"), *(len(n) for n in st.prompts)])
    lines.append(f"  {'prompt':<{width}}  {'ok':>8} {'failed':>8} {'invalid':>8} {'pending':>8}")
    for name, p in st.prompts.items():
        pend = "-" if p.pending is None else f"{p.pending:,}"
        lines.append(f"  {name:<{width}}  {p.ok:>8,} {p.failed:>8,} {p.invalid:>8,} {pend:>8}")
    if not st.prompts:
        lines.append("  (no rows yet)")
    if st.walk_error:
        lines.append(f"  pending unknown: {st.walk_error}")
    lines.append(f"  {st.rows:,} rows in the part files (a rerun's rows supersede earlier ones)")
    last = st.last_run
    if last is None:
        lines.append("last run: none recorded")
    else:
        rate = last.images_per_s
        if last.finished:
            what = f"exit {last.exit_code}" + (f" ({last.stop_reason})" if last.stop_reason else "")
            lines.append(
                f"last run: {last.run_id}, started {last.started_at}, wall {_duration(last.wall_s)}"
                + (f", {rate:.2f} images/s" if rate is not None else "")
                + f", {what}"
            )
        else:
            lines.append(f"last run: {last.run_id}, started {last.started_at}, not ended")
    if not st.running:
        lines.append("running now: no")
    for h in st.running:
        lines.append(f"running now: pid {h.pid}, run {h.run_id}, since {h.started_at}")
    return "\n".join(lines)


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", type=path_or_uri, help="the run's --output folder (or URI)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument(
        "--no-walk", action="store_true", help="do not walk the input to count pending items"
    )


def run_status(args: argparse.Namespace) -> int:
    st = dataset_status(args.output, walk=not args.no_walk)
    if args.json:
        print(json.dumps(st.to_json(), ensure_ascii=False, indent=2))
    else:
        print(format_status(st))
    return 0

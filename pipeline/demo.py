"""``caption demo``: the demo job against the built-in simulator, then a look at the output."""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from .cli import run_job as run_and_report
from .config import Overrides, load_job
from .schema import own_columns
from .sim import SimConfig, SimServer

log = logging.getLogger("pipeline")


def fit_width(text: str, columns: int) -> str:
    """``text`` cut to ``columns`` terminal cells (CJK characters take two), whole characters,
    with "…" where it was cut."""
    text = " ".join(text.split())
    used = 0
    for i, ch in enumerate(text):
        used += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used > columns - 1 and i < len(text) - 1:
            return text[:i] + "…"
    return text


def run_demo(job_file: Path, *, no_progress: bool = False) -> int:
    with SimServer(SimConfig(latency=0.4, jitter=0.3, slots=8)) as sim:
        log.info("simulator listening on %s (simulated captions, no GPU)", sim.base_url)
        job = load_job(job_file, Overrides(endpoint=sim.base_url, no_progress=no_progress))
        code = run_and_report(job)
    dataset = ds.dataset(job.run.output, format="parquet")
    # a schema's fields and kept columns, the one-value ones first: they fit on a line
    fields = sorted(own_columns(dataset.schema), key=lambda f: pa.types.is_nested(f.type))
    own = [f.name for f in fields]
    table = dataset.to_table(columns=["image_path", "prompt_name", "status", "caption", *own])
    print(f"\n{table.num_rows} rows in {job.run.output} - a few of them:")
    width = shutil.get_terminal_size((100, 24)).columns
    for row in table.slice(0, 3).to_pylist():
        fields_text = " ".join(f"{name}={row[name]!r}" for name in own)
        text = fields_text or row["caption"] or ""  # typed fields say more than raw JSON
        print(f"  {row['image_path']}  ({row['prompt_name']}, {row['status']})")
        print("      " + fit_width(text, max(20, width - 7)))
    python = shlex.quote(sys.executable)
    if own:
        columns = ", ".join(repr(c) for c in ["image_path", *own[:4]])
        read = f"import pandas as pd; print(pd.read_parquet('{job.run.output}')[[{columns}]])"
    else:
        table_of = f"ds.dataset('{job.run.output}').to_table()"
        read = f"import pyarrow.dataset as ds; print({table_of}.slice(0, 5))"
    print(
        f'\nRead it with: {python} -c "{read}"'
        "\nRun `make demo` again: it finds nothing left to do and sends no request."
    )
    caption = shlex.quote(str(Path(sys.executable).with_name("caption")))
    out = shlex.quote(str(job.run.output))
    print(
        f"Where it stands: {caption} status {out}\n"
        f"A report to open in a browser: {caption} report {out} -o report.html\n"
        "(`caption` for daily use, on your PATH: pipx install . -- see the README's quick start)"
    )
    return code

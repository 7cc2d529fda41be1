"""``caption demo``: the demo job against the built-in simulator, then a look at the output."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import pyarrow.dataset as ds

from .cli import run_job as run_and_report
from .config import Overrides, load_job
from .sim import SimConfig, SimServer

log = logging.getLogger("pipeline")


def run_demo(job_file: Path, *, no_progress: bool = False) -> int:
    with SimServer(SimConfig(latency=0.4, jitter=0.3, slots=8)) as sim:
        log.info("simulator listening on %s (simulated captions, no GPU)", sim.base_url)
        job = load_job(job_file, Overrides(endpoint=sim.base_url, no_progress=no_progress))
        code = run_and_report(job)
    table = ds.dataset(job.run.output, format="parquet").to_table(
        columns=["image_path", "prompt_name", "status", "caption"]
    )
    print(f"\n{table.num_rows} rows in {job.run.output} - a few of them:")
    for row in table.slice(0, 3).to_pylist():
        caption = (row["caption"] or "")[:90]
        print(f"  {row['image_path']:<32} {row['prompt_name']:<12} {row['status']:<7} {caption}")
    print(
        f'\nRead it with: {shlex.quote(sys.executable)} -c "import pyarrow.dataset as ds; '
        f"print(ds.dataset('{job.run.output}').to_table().slice(0, 5))\""
        "\nRun `make demo` again: it finds nothing left to do and sends no request."
    )
    return code

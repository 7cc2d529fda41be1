"""Command line: ``caption run``, ``caption sim``, ``caption demo`` (= ``python -m pipeline``).

Exit codes: 0 no item failed in this run (invalid inputs do not count), 1 some items failed
permanently, 2 usage or configuration error, 75 (EX_TEMPFAIL) the output is in use by
another run or the server stayed unreachable longer than max_outage, 130/143 stopped by
SIGINT/SIGTERM, 70 internal error (a bug).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from .client import resolve_api_key
from .config import Job, Overrides, add_flags, load_job
from .errors import (
    EXIT_SOFTWARE,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    ConfigError,
    OutputBusyError,
    OutputError,
)
from .preflight import preflight
from .progress import format_summary, wants_bar
from .runner import Runner, RunResult
from .schema import skip_pandas_probe

log = logging.getLogger("pipeline")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The job file, one flag per job setting (derived from its declaration), and -v."""
    p.add_argument("job", nargs="?", type=Path, help="TOML job file (optional: flags suffice)")
    add_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="caption", description="Batch-caption images with a vLLM server.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="caption a folder (reruns do only what is not done yet)")
    _add_run_flags(run)
    from .sim import add_arguments

    sim = sub.add_parser("sim", help="start the built-in vLLM simulator")
    add_arguments(sim)
    demo = sub.add_parser("demo", help="caption data/ against the built-in simulator")
    demo.add_argument("--job", type=Path, default=Path(__file__).parents[1] / "jobs" / "demo.toml")
    demo.add_argument("--no-progress", action="store_true")
    return parser


def overrides_from(args: argparse.Namespace) -> Overrides:
    """The job-setting flags that were given (``--pattern`` fills ``patterns``)."""
    return Overrides.from_args(args)


async def execute(job: Job) -> RunResult:
    """Preflight, then the run."""
    api_key = resolve_api_key(job.endpoint)
    info = await preflight(job, api_key)
    log.info(
        "endpoint %s serves %s (max_model_len %s); input %s; output %s",
        ", ".join(job.endpoint.urls), job.endpoint.model, info.max_model_len,
        job.input.manifest or job.input.root, job.run.output,
    )  # fmt: skip
    return await Runner(job, api_key=api_key, handle_signals=True).run()


def _logs_around_the_bar(progress: bool) -> contextlib.AbstractContextManager[object]:
    """Log lines printed above the progress bar instead of through it (when there is one)."""
    if not wants_bar(progress):
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def run_job(job: Job) -> int:
    """Run ``job``, print the summary, return the exit code."""
    skip_pandas_probe()
    with _logs_around_the_bar(job.run.progress):
        result = anyio.run(execute, job)
    print(format_summary(result.tally, result.wall_s, f"{result.output} (run {result.run_id})"))
    if result.stop_reason is not None:
        again = shlex.join(["caption", *sys.argv[1:]]) if sys.argv[1:] else "the same command"
        print(
            f"caption: {result.stop_reason}; everything received is saved. To resume, run {again}",
            file=sys.stderr,
        )
    return result.exit_code


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # never log request lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        if args.command == "sim":
            from .sim import run_from_args

            return run_from_args(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args.job, no_progress=args.no_progress)
        job = load_job(args.job, overrides_from(args))
        return run_job(job)
    except OutputBusyError as exc:
        print(f"caption: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except (ConfigError, OutputError) as exc:
        print(f"caption: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a bug: say so loudly, with its own exit code
        log.exception("internal error")
        print(
            "caption: internal error (a bug; the traceback is above). Answers received so far "
            "are saved; rerun the same command to resume.",
            file=sys.stderr,
        )
        return EXIT_SOFTWARE

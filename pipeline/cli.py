"""Command line: ``caption run|status|export|report|sim|demo`` (= ``python -m pipeline``).

Exit codes: 0 no item failed in this run (invalid inputs do not count), 1 some items failed
permanently, 2 usage or configuration error, 74 (EX_IOERR) the output could not be written
(disk full, quota, read-only; what was written is kept), 75 (EX_TEMPFAIL) the output is in
use by another run or the server stayed unreachable longer than max_outage, 130/143 stopped
by SIGINT/SIGTERM, 70 internal error (a bug).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from . import __version__
from .client import resolve_api_key
from .config import Job, Overrides, add_flags, load_job
from .engines import DEFAULT_ENGINE, ENGINES, make_runner
from .errors import (
    EXIT_IOERR,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    ConfigError,
    OutputBusyError,
    OutputError,
    StorageError,
)
from .logs import fields, setup_logging
from .preflight import preflight
from .progress import format_summary, wants_bar
from .runner import RunResult
from .schema import skip_pandas_probe

log = logging.getLogger("pipeline")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


RUN_DESCRIPTION = """\
Caption every image of a folder (or manifest) with a vLLM server and write the answers to a
Parquet dataset. A rerun does only what is not done yet: it is safe to run from cron, and to
stop (Ctrl-C) and resume. Settings come from the job file, flags override them."""

RUN_EPILOG = """\
examples:
  caption run jobs/demo.toml
  caption run --input photos/ --prompt-file data/prompts/describe_zh.txt \\
      --endpoint http://127.0.0.1:8102/v1 --model gemma3-27b --output captions/
  caption run jobs/annotate.toml --dry-run          # what would be sent; sends nothing
  caption run jobs/annotate.toml --limit 20         # a first look at 20 items
  caption status captions/                          # where the dataset stands

exit codes:
  0    no item failed in this run (invalid input files do not count)
  1    some items failed after their retries (a rerun tries them again)
  2    usage or configuration error; nothing was sent
  74   the output could not be written (disk full, quota, read-only): free space, rerun
  75   try later: another run holds the output, or the server stayed away past --max-outage
  130  stopped by Ctrl-C (143: SIGTERM); everything received is saved, rerun to resume
  70   internal error (a bug)

The API key is read from the environment (VLLM_API_KEY, then OPENAI_API_KEY), never a flag."""


class _NoKeyFlag(argparse.Action):
    """``--api-key`` (vLLM's own flag name): point to the environment variable instead."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        parser.error(
            "caption takes no API key on the command line (it would show in `ps` and in the "
            "shell history): export VLLM_API_KEY=... (or name another variable with "
            "--api-key-env NAME, or use --api-key-file FILE)"
        )


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The job file, one flag per job setting (derived from its declaration), and -v."""
    p.add_argument("job", nargs="?", type=Path, help="TOML job file (optional: flags suffice)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the server, walk the input and print what would be sent (items, prompt "
        "tokens); send no chat request, write nothing",
    )
    p.add_argument("--api-key", nargs="?", action=_NoKeyFlag, help=argparse.SUPPRESS)
    engine = p.add_argument_group("engine (flags only: the same job runs, and resumes, on both)")
    engine.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help="local: this process; ray: a Ray Data pipeline on a Ray cluster "
        "(pip install 'caption[ray]') (default: local)",
    )
    engine.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray: the cluster to join (ray://head:10001, head:6379, auto); "
        "default RAY_ADDRESS, else a local Ray",
    )
    add_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="caption", description="Batch-caption images with a vLLM server.")
    parser.add_argument("--version", action="version", version=f"caption {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="caption a folder (reruns do only what is not done yet)",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_flags(run)
    from .status import add_status_arguments

    status = sub.add_parser(
        "status",
        help="where a dataset stands: per prompt ok/failed/invalid/pending, the last run",
        description="Per prompt: ok, failed, invalid and pending items (latest row per "
        "image x prompt; pending walks the job's input); the last run; whether a run holds "
        "the output now.",
    )
    add_status_arguments(status)
    from .export import add_export_arguments

    export = sub.add_parser(
        "export",
        help="the current answer per image x prompt as txt files, jsonl, csv, parquet or an "
        "imagefolder",
    )
    add_export_arguments(export)
    from .report import add_report_arguments

    report = sub.add_parser(
        "report",
        help="one self-contained HTML report of a dataset (summaries, plots, a gallery)",
    )
    add_report_arguments(report)
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


async def execute(
    job: Job, engine: str = DEFAULT_ENGINE, ray_address: str | None = None
) -> RunResult:
    """Preflight, then the run (on ``engine``)."""
    api_key = resolve_api_key(job.endpoint)
    info = await preflight(job, api_key)
    log.info(
        "endpoint %s serves %s (max_model_len %s); input %s; output %s",
        ", ".join(job.endpoint.urls), job.endpoint.model, info.max_model_len,
        job.input.manifest or job.input.root, job.run.output,
    )  # fmt: skip
    runner = make_runner(
        job, api_key=api_key, engine=engine, ray_address=ray_address, handle_signals=True
    )
    return await runner.run()


def _logs_around_the_bar(progress: bool) -> contextlib.AbstractContextManager[object]:
    """Log lines printed above the progress bar instead of through it (when there is one)."""
    if not wants_bar(progress):
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def run_job(job: Job, engine: str = DEFAULT_ENGINE, ray_address: str | None = None) -> int:
    """Run ``job``, print the summary, return the exit code."""
    skip_pandas_probe()
    with _logs_around_the_bar(job.run.progress):
        result = anyio.run(execute, job, engine, ray_address)
    t = result.tally
    print(format_summary(t, result.wall_s, f"{result.output} (run {result.run_id})"))
    level = logging.INFO if job.run.log_file or job.run.log_format == "json" else logging.DEBUG
    log.log(
        level, "run %s ended: exit %d", result.run_id, result.exit_code,
        extra=fields(
            "summary", run_id=result.run_id, exit_code=result.exit_code,
            wall_s=round(result.wall_s, 3), stop_reason=result.stop_reason,
            counts={
                "images": t.images, "ok": t.ok, "failed": t.failed, "invalid": t.invalid,
                "skipped": t.skipped, "requests": t.requests, "prompt_tokens": t.prompt_tokens,
                "completion_tokens": t.completion_tokens,
            },
        ),
    )  # fmt: skip
    again = shlex.join(["caption", *sys.argv[1:]]) if sys.argv[1:] else "the same command"
    if t.images == 0 and result.stop_reason is None:
        print(f"caption: warning: {nothing_found(job)}", file=sys.stderr)
    if result.limited:
        print(
            f"caption: stopped at --limit {job.run.limit}; run without --limit to do the rest",
            file=sys.stderr,
        )
    if result.stop_code == EXIT_IOERR:
        print(
            f"caption: {result.stop_reason}. Everything written before is kept; free space "
            f"(or fix the output folder), then run {again} to resume",
            file=sys.stderr,
        )
    elif result.stop_reason is not None:
        print(
            f"caption: {result.stop_reason}; everything received is saved. To resume, run {again}",
            file=sys.stderr,
        )
    return result.exit_code


def nothing_found(job: Job) -> str:
    """Why a run found no image: the folder, the patterns, what else is there."""
    if job.input.manifest is not None:
        return f"the manifest {job.input.manifest} has no rows"
    from collections import Counter

    others: Counter[str] = Counter()
    seen = 0
    for _dir, _dirs, files in os.walk(job.input.root):
        for name in files:
            seen += 1
            others[os.path.splitext(name)[1].lower() or "(no extension)"] += 1
        if seen >= 100_000:
            break
    patterns = " ".join(job.input.patterns)
    if not seen:
        return f"no image files: the input folder {job.input.root} has no files at all"
    common = ", ".join(f"{ext} {n:,}" for ext, n in others.most_common(5))
    return (
        f"no image files in {job.input.root}: {seen:,} file{'s' * (seen != 1)} there, none "
        f"matching {patterns} (found: {common}); pass --pattern GLOB (repeatable) to take others"
    )


def dry_run_job(job: Job) -> int:
    from .dryrun import dry_run, format_dry_run

    report = anyio.run(dry_run, job, resolve_api_key(job.endpoint))
    print(format_dry_run(report))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        if args.command == "sim":
            from .sim import run_from_args

            return run_from_args(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args.job, no_progress=args.no_progress)
        if args.command == "status":
            from .status import run_status

            return run_status(args)
        if args.command == "export":
            from .export import run_export

            return run_export(args)
        if args.command == "report":
            from .report import run_report

            return run_report(args)
        job = load_job(args.job, overrides_from(args))
        if job.run.log_file is not None or job.run.log_format != "text":
            try:
                setup_logging(args.verbose, job.run.log_file, job.run.log_format)
            except OSError as exc:
                raise ConfigError(f"cannot open the log file {job.run.log_file}: {exc}") from None
        if args.dry_run:
            return dry_run_job(job)
        return run_job(job, args.engine, args.ray_address)
    except OutputBusyError as exc:
        print(f"caption: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except StorageError as exc:
        log.error("%s", exc, extra=fields("stop", exit_code=EXIT_IOERR))
        print(
            f"caption: {exc}. Everything written before is kept; free space (or fix the "
            "output folder), then rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_IOERR
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

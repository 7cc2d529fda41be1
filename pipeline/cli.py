"""Command line: ``caption run``, ``caption sim``, ``caption demo`` (= ``python -m pipeline``).

Exit codes: 0 no item failed in this run (invalid inputs do not count), 1 some items failed
permanently, 2 usage or configuration error, 75 (EX_TEMPFAIL) the output is in use by
another run or the server stayed unreachable longer than max_outage, 130/143 stopped by
SIGINT/SIGTERM, 70 internal error (a bug).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from .client import resolve_api_key
from .config import Job, Overrides, load_job
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


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"top_k\": 40}'")
    return value


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", nargs="?", type=Path, help="TOML job file (optional: flags suffice)")
    g = p.add_argument_group("endpoint")
    g.add_argument(
        "--endpoint",
        metavar="URL",
        action="append",
        help="OpenAI base URL, e.g. http://127.0.0.1:8102/v1 (repeat for several servers)",
    )
    g.add_argument("--model", metavar="NAME", help="served model name, e.g. gemma3-27b")
    g.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key")
    g.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for one answer")
    g.add_argument("--connect-timeout", type=float, metavar="S", help="seconds to connect (10)")
    g.add_argument("--api-key-file", metavar="FILE", help="read the API key from this file")
    g.add_argument(
        "--stream", action="store_true", help="stream answers (records time to first token)"
    )
    g.add_argument(
        "--insecure", action="store_true", help="do not verify the server's TLS certificate"
    )
    g = p.add_argument_group("input and output")
    g.add_argument("--input", metavar="DIR", help="folder of images (walked recursively)")
    g.add_argument("--output", metavar="DIR", help="Parquet dataset folder (created)")
    g.add_argument("--pattern", action="append", metavar="GLOB", help="file-name glob (repeatable)")
    g.add_argument("--max-side", type=int, metavar="PX", help="longest image side sent (896)")
    g.add_argument("--jpeg-quality", type=int, metavar="Q", help="JPEG quality sent (90)")
    g.add_argument("--max-pixels", type=int, metavar="N", help="refuse larger images (179M)")
    g.add_argument(
        "--reencode",
        action="store_true",
        help="re-encode every image, even JPEGs already fit to send as they are",
    )
    g = p.add_argument_group("prompt (replaces the job's prompts / overrides their settings)")
    g.add_argument("--prompt-file", metavar="FILE", help="prompt text from a file")
    g.add_argument("--prompt", metavar="TEXT", help="prompt text")
    g.add_argument("--system", metavar="TEXT", help="system message ('' for none)")
    g.add_argument("--max-tokens", type=int, metavar="N")
    g.add_argument("--temperature", type=float, metavar="X")
    g.add_argument("--top-p", type=float, metavar="X")
    g.add_argument(
        "--extra",
        type=_json_object,
        metavar="JSON",
        help="more body fields, e.g. '{\"top_k\": 40}'",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--concurrency", metavar="N|auto", help="requests in flight (default auto: adapts)"
    )
    g.add_argument("--max-concurrency", type=int, metavar="N", help="upper bound for auto (256)")
    g.add_argument("--retries", type=int, metavar="N", help="retries per item after the first (5)")
    g.add_argument("--flush-interval", type=float, metavar="S", help="seconds between part files")
    g.add_argument("--backoff-initial", type=float, metavar="S", help="first retry wait cap (0.5)")
    g.add_argument("--backoff-max", type=float, metavar="S", help="longest retry wait (30)")
    g.add_argument("--retry-after-max", type=float, metavar="S", help="cap on Retry-After (60)")
    g.add_argument(
        "--max-outage", type=float, metavar="S", help="give up after the server is away S s (1800)"
    )
    g.add_argument(
        "--grace-period", type=float, metavar="S", help="after Ctrl-C, let requests finish (30)"
    )
    g.add_argument(
        "--retry-invalid", action="store_true", help="redo images that were invalid before"
    )
    g.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


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
    """Every flag is the ``Overrides`` field of the same name (``--pattern`` fills
    ``patterns``); a flag added to the parser without its field fails here at once."""
    values: dict[str, Any] = {
        f.name: getattr(args, f.name, None) for f in dataclasses.fields(Overrides)
    }
    values["endpoint"] = tuple(args.endpoint) if args.endpoint else None
    values["patterns"] = tuple(args.pattern) if args.pattern else None
    unknown = set(vars(args)) - set(values) - {"command", "job", "pattern", "verbose"}
    assert not unknown, f"flags without an Overrides field: {sorted(unknown)}"
    return Overrides(**values)


async def execute(job: Job) -> RunResult:
    """Preflight, then the run."""
    api_key = resolve_api_key(job.endpoint)
    info = await preflight(job, api_key)
    log.info(
        "endpoint %s serves %s (max_model_len %s); input %s; output %s",
        ", ".join(job.endpoint.urls), job.endpoint.model, info.max_model_len, job.input.root,
        job.run.output,
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

"""The `caption sim` command line: flags, startup line, port file and signal handling."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import METRICS_FLAVOURS, FaultConfig, SimConfig
from .runner import serve

API_KEY_ENV = "VLLM_API_KEY"  # vLLM's: `vllm serve` reads its --api-key from it when not given


def _window(text: str) -> tuple[float, float]:
    try:
        start, duration = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:DURATION seconds, got {text!r}") from None
    if start < 0 or duration <= 0:
        raise argparse.ArgumentTypeError(f"bad down window {text!r}")
    return start, duration


def _change(text: str) -> tuple[float, int | None, int | None]:
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        at = float(parts[0])
        slots = int(parts[1]) if parts[1] else None
        kv = int(parts[2]) if len(parts) == 3 and parts[2] else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected AT:SLOTS[:KV_TOKENS] (seconds, then numbers; leave one empty to keep it), "
            f"got {text!r}"
        ) from None
    return at, slots, kv


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


#: ``--fault-*`` flags: (flag suffix, FaultConfig field, what the fault does).
FAULT_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("429", "error_429", "answer 429 Too Many Requests at once (a rate limit; see --retry-after)"),
    ("500", "error_500", "answer 500 Internal Server Error after the service time"),
    ("503", "error_503", "answer 503 Service Unavailable at once (see --retry-after)"),
    ("reset", "reset", "drop the connection with a TCP reset, no answer"),
    ("hang", "hang", "never answer: hold the connection (the client's timeout ends it)"),
    ("malformed", "malformed", "answer 200 with the body cut in half (not valid JSON)"),
    ("empty", "empty_choices", "answer 200 with an empty choices list"),
)

DESCRIPTION = """\
A simulated vLLM server (vLLM 0.32's OpenAI API: /v1/models, /v1/chat/completions with
images, streaming and structured outputs, /health, /version, /metrics) with configurable
capacity, latency and injected faults, for tests, demos and rehearsals. Captions are marked
as simulated and name the sha256 of the image received."""

EPILOG = """\
examples:
  caption sim --latency 0.5 --slots 8                 a small, slow server on port 8102
  caption sim --fault-500 0.05 --fault-reset 0.02     5% of requests 500, 2% reset
  VLLM_API_KEY=secret caption sim                     requires 'Authorization: Bearer secret'"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to `parser` (and its description, if it has none)."""
    d = SimConfig()
    if parser.description is None:
        parser.description = DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    server = parser.add_argument_group("server")
    add = server.add_argument
    add("--host", default=d.host, help="address to bind (default: %(default)s)")
    add("--port", type=int, default=8102, help="port; 0 = pick a free one (default: %(default)s)")
    add("--port-file", type=Path, default=None, metavar="FILE",
        help="write the bound port to FILE once listening (default: none)")  # fmt: skip
    add("--model", default=d.model, metavar="NAME",
        help="served model name, as vLLM's --served-model-name (default: %(default)s)")  # fmt: skip
    add("--max-model-len", type=int, default=d.max_model_len, metavar="TOKENS",
        help="context length, as in /v1/models (default: %(default)s)")  # fmt: skip
    add("--api-key", action="append", default=None, dest="api_keys", metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* as 'vllm serve --api-key' does: "
        "other requests get 401 {\"error\": \"Unauthorized\"}; /health, /version, /metrics "
        "and /sim/* stay open. Repeat for several keys. Like vLLM, the key may come from the "
        "VLLM_API_KEY environment variable instead (which keeps it out of ps) "
        "(default: $VLLM_API_KEY if set, else no key)")  # fmt: skip
    add("--structured-outputs", type=_on_off, default=d.structured_outputs, metavar="on|off",
        help="on: a response_format json_schema is answered with JSON valid against the schema, "
        "derived from the image's sha256 (json_object: {\"answer\": ...}); off: such requests "
        "get 400 naming response_format, as from a server without structured outputs "
        "(default: on)")  # fmt: skip
    add("--caption-words", type=int, default=d.caption_words, metavar="N",
        help="caption length in words (default: %(default)s)")  # fmt: skip
    add(
        "--seed",
        type=int,
        default=d.seed,
        help="seed for faults, jitter and ids (default: %(default)s)",
    )

    load = parser.add_argument_group("capacity and latency")
    add = load.add_argument
    add("--slots", type=int, default=d.slots, metavar="N",
        help="requests running at once (vLLM's --max-num-seqs); more wait in a FIFO queue "
        "(default: %(default)s)")  # fmt: skip
    add("--latency", type=float, default=d.latency, metavar="S",
        help="service seconds per request (default: %(default)s)")  # fmt: skip
    add("--per-token", type=float, default=d.per_token, metavar="S",
        help="extra service seconds per output token (default: %(default)s)")  # fmt: skip
    add("--jitter", type=float, default=d.jitter, metavar="F",
        help="service time spread: 0.1 = +-10%% (default: %(default)s)")  # fmt: skip
    add("--kv-tokens", type=int, default=d.kv_capacity_tokens, dest="kv_capacity_tokens",
        metavar="TOKENS", help="KV cache size in tokens; a request holds prompt + generated "
        "tokens while it runs, and is admitted only while the cache has room (small = a "
        "KV-bound server) (default: %(default)s)")  # fmt: skip
    add("--capacity-change", type=_change, action="append", default=[], dest="capacity_changes",
        metavar="AT:SLOTS[:KV_TOKENS]", help="at AT seconds after start, change the slots "
        "and/or the KV cache (repeatable; e.g. 20:32 or 20::4000) (default: none)")  # fmt: skip
    add("--metrics", choices=METRICS_FLAVOURS, default=d.metrics,
        help="/metrics dialect; none = no /metrics (404) (default: %(default)s)")  # fmt: skip
    add("--metrics-delay", type=float, default=d.metrics_delay, metavar="S",
        help="answer /metrics S seconds late (a busy API server), with the gauges as they were "
        "when asked (default: %(default)s)")  # fmt: skip
    add("--gateway-rate", type=float, default=d.gateway_rate, metavar="R",
        help="a rate-limiting gateway in front: R requests/s (token bucket), beyond that 429 "
        "with Retry-After; 0 = no gateway (default: %(default)s)")  # fmt: skip
    add("--gateway-burst", type=int, default=d.gateway_burst, metavar="N",
        help="the gateway bucket size; 0 = 1 s worth (default: %(default)s)")  # fmt: skip

    faults = parser.add_argument_group(
        "faults",
        "Each P is a probability (0..1) per POST /v1/chat/completions; one fault at most\n"
        "is drawn per request, so keep their sum <= 1. All default to 0 (no faults).",
    )
    add = faults.add_argument
    for flag, kind, what in FAULT_FLAGS:
        add(f"--fault-{flag}", dest=kind, type=float, default=0.0, metavar="P", help=what)
    add("--fault-schema", dest="schema", type=float, default=0.0, metavar="P",
        help="a structured-output request gets a bad 200 answer, these in turn: prose around "
        "the JSON, a required property missing, JSON cut off (finish_reason stop), a value of "
        "the wrong type, a value outside its enum")  # fmt: skip
    add("--retry-after", type=float, default=None, metavar="S",
        help="send Retry-After: S with 429 and 503 answers (default: none)")  # fmt: skip
    add("--down", type=_window, action="append", default=[], metavar="START:DURATION",
        help="refuse connections for DURATION seconds from START seconds after start "
        "(repeatable) (default: none)")  # fmt: skip


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> SimConfig:
    """The flags as a SimConfig: each flag's dest is the name of the field it sets. Without
    ``--api-key``, the key is ``VLLM_API_KEY`` from ``environ`` (``os.environ``), as vLLM's."""
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()}
    if not given.get("api_keys"):
        env_key = (os.environ if environ is None else environ).get(API_KEY_ENV)
        given["api_keys"] = (env_key,) if env_key else ()

    def pick(cls: type[Any]) -> dict[str, Any]:
        return {f.name: given[f.name] for f in fields(cls) if f.name in given}

    return SimConfig(**pick(SimConfig), faults=FaultConfig(**pick(FaultConfig)))


def _write_port_file(path: Path, port: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{port}\n")
    os.replace(tmp, path)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the simulator until SIGINT/SIGTERM; returns the exit code."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"caption sim: {exc}", file=sys.stderr)
        return 2

    def ready(port: int) -> None:
        if args.port_file is not None:
            _write_port_file(args.port_file, port)
        url = f"http://{config.host}:{port}/v1"
        auth = ""
        if config.api_keys:
            source = "--api-key" if args.api_keys else f"${API_KEY_ENV}"
            auth = f", API key from {source} required on /v1"
        print(
            f"caption sim: serving {config.model} on {url} "
            f"(slots={config.slots}, latency={config.latency:g}s{auth})",
            flush=True,
        )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(config, ready=ready)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"caption sim: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caption sim", description="Simulated vLLM server.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))

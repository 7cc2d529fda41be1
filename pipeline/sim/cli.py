"""The `caption sim` command line: flags, startup line, port file and signal handling."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import METRICS_FLAVOURS, FaultConfig, SimConfig
from .runner import serve


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to `parser`."""
    d = SimConfig()
    add = parser.add_argument
    add("--host", default=d.host, help="address to bind (default %(default)s)")
    add("--port", type=int, default=8102, help="port, 0 = pick a free one (default %(default)s)")
    add("--model", default=d.model, help="served model name (default %(default)s)")
    add("--max-model-len", type=int, default=d.max_model_len, help="context length")
    add("--slots", type=int, default=d.slots, help="max concurrently running requests")
    add("--latency", type=float, default=d.latency, help="service seconds per request")
    add("--per-token", type=float, default=d.per_token, help="extra seconds per output token")
    add("--jitter", type=float, default=d.jitter, help="service time spread, 0.1 = +-10%%")
    add("--kv-tokens", type=int, default=d.kv_capacity_tokens, dest="kv_capacity_tokens",
        help="KV cache size in tokens; a request holds prompt + generated tokens while it runs, "
        "and is admitted only while the cache has room (small = a KV-bound server)")  # fmt: skip
    add("--metrics", choices=METRICS_FLAVOURS, default=d.metrics,
        help="/metrics dialect (none = no /metrics, 404; default %(default)s)")  # fmt: skip
    add("--metrics-delay", type=float, default=d.metrics_delay, metavar="S",
        help="answer /metrics S seconds late (a busy API server), with the gauges as they were "
        "when asked")  # fmt: skip
    add("--gateway-rate", type=float, default=d.gateway_rate, metavar="R",
        help="a rate-limiting gateway in front: R requests/s (token bucket), else 429 with "
        "Retry-After")  # fmt: skip
    add(
        "--gateway-burst",
        type=int,
        default=d.gateway_burst,
        metavar="N",
        help="the gateway's bucket size (default: one second's worth)",
    )
    add("--capacity-change", type=_change, action="append", default=[], dest="capacity_changes",
        metavar="AT:SLOTS[:KV_TOKENS]", help="at AT seconds after start, change the slots "
        "and/or the KV cache (repeatable; e.g. 20:32 or 20::4000)")  # fmt: skip
    add("--caption-words", type=int, default=d.caption_words, help="caption length in words")
    add("--structured-outputs", type=_on_off, default=d.structured_outputs, metavar="on|off",
        help="on (default): a response_format json_schema is answered with JSON valid against "
        "the schema, derived from the image's sha256 (json_object: {\"answer\": ...}); off: "
        "such requests get 400 naming response_format, as from a server without structured "
        "outputs")  # fmt: skip
    add("--seed", type=int, default=d.seed, help="seed for faults, jitter and ids")
    for kind, flag in (
        ("error_429", "429"),
        ("error_500", "500"),
        ("error_503", "503"),
        ("reset", "reset"),
        ("hang", "hang"),
        ("malformed", "malformed"),
        ("empty_choices", "empty"),
    ):
        add(
            f"--fault-{flag}",
            dest=kind,
            type=float,
            default=0.0,
            metavar="P",
            help=f"probability of a {kind} fault per chat request",
        )
    add("--fault-schema", dest="schema", type=float, default=0.0, metavar="P",
        help="probability that a structured-output request gets a bad 200 answer, these in "
        "turn: prose around the JSON, a required property missing, JSON cut off (finish_reason "
        "stop), a value of the wrong type, a value outside its enum")  # fmt: skip
    add("--retry-after", type=float, default=None, help="Retry-After seconds on 429/503")
    add(
        "--down",
        type=_window,
        action="append",
        default=[],
        metavar="START:DURATION",
        help="refuse connections for DURATION seconds from START (repeatable)",
    )
    add("--port-file", type=Path, default=None, help="write the bound port here once listening")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The flags as a SimConfig: each flag's dest is the name of the field it sets."""
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()}

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
        print(
            f"caption sim: serving {config.model} on {url} "
            f"(slots={config.slots}, latency={config.latency:g}s)",
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

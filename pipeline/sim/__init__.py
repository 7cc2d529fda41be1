"""A vLLM-compatible OpenAI server simulator for tests, demos and benchmarks.

It reproduces vLLM 0.32.0's response bodies, SSE stream, error bodies, /v1/models, /health
and /metrics names, with configurable latency, a FIFO slot queue, injected faults and down
windows. Captions are marked as simulated and name the sha256 prefix of the received image;
structured-output requests (``response_format``) get schema-valid JSON derived from it.

Modules: `config` (settings), `chat` (request validation and prompt tokens), `response_format`
(structured-output requests), `errors` (vLLM error bodies), `responses` (caption and bodies),
`structured` (schema-valid JSON answers), `structured_faults` (bad ones, ``--fault-schema``),
`imagesize` (header-only image size), `engine` (slots, stats), `gateway` (rate-limiting token
bucket), `metrics` (Prometheus text),
`routes` (endpoints, as aiohttp.web handlers), `app` (the aiohttp.web application, listening,
faults, down windows), `runner` (`serve`, `SimServer`), `cli` (`caption sim`).
"""

from __future__ import annotations

from .cli import add_arguments, run_from_args
from .config import FaultConfig, SimConfig
from .runner import SimServer, serve

__all__ = ["FaultConfig", "SimConfig", "SimServer", "add_arguments", "run_from_args", "serve"]

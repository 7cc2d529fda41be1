"""Render vLLM-named Prometheus metrics (text format 0.0.4) from the simulated engine."""

from __future__ import annotations

from .engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def render(engine: Engine, model: str) -> bytes:
    """The /metrics page: gauges for the scheduler state and counters for finished work."""
    labels = f'engine="0",model_name="{model}"'
    slots, metrics = engine.slots, engine.metrics
    kv = engine.kv_tokens / engine.config.kv_capacity_tokens
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{{{extra}{labels}}} {float(value)!r}" for extra, value in samples)

    family(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [("", slots.running)],
    )
    family(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [("", slots.waiting)],
    )
    family(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of requests waiting, by reason.",
        [('reason="capacity",', slots.waiting), ('reason="deferred",', 0)],
    )
    family(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        [("", kv)],
    )
    family(
        "vllm:num_preemptions_total",
        "counter",
        "Cumulative number of preemption from the engine.",
        [("", 0)],
    )
    family(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        [("", metrics.prompt_tokens)],
    )
    family(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        [("", metrics.generation_tokens)],
    )
    family(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        [(f'finished_reason="{r}",', metrics.success[r]) for r in FINISHED_REASONS],
    )
    return ("\n".join(lines) + "\n").encode()

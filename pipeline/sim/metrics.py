"""Render the simulated engine's state as Prometheus text (format 0.0.4), in the dialect of
vLLM 0.32 (the default), SGLang or llama.cpp's server.

vLLM: ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` (and ``_by_reason``:
``capacity`` is the ordinary queue, ``deferred`` requests waiting on something else),
``vllm:kv_cache_usage_perc`` (a fraction), ``vllm:num_preemptions_total`` and token and
success counters. SGLang: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``,
``sglang:token_usage``. llama.cpp (``--metrics``): ``llamacpp:requests_processing``,
``llamacpp:requests_deferred``, unlabelled.
"""

from __future__ import annotations

from collections.abc import Sequence

from .engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


class _Page:
    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Sequence[tuple[str, float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for extra, value in samples:
            labels = f"{extra}{self.labels}".rstrip(",")
            braces = f"{{{labels}}}" if labels else ""
            self.lines.append(f"{name}{braces} {float(value)!r}")

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def render(engine: Engine, model: str, flavour: str = "vllm") -> bytes:
    """The /metrics page: gauges for the scheduler state and counters for finished work."""
    running, waiting = len(engine.running), len(engine.waiting)
    kv = min(1.0, engine.kv_used() / engine.kv_capacity)
    metrics = engine.metrics
    if flavour == "sglang":
        page = _Page(f'model_name="{model}"')
        page.family("sglang:num_running_reqs", "gauge", "The number of running requests.",
                    [("", running)])  # fmt: skip
        page.family("sglang:num_queue_reqs", "gauge", "The number of requests in the waiting "
                    "queue.", [("", waiting)])  # fmt: skip
        page.family("sglang:token_usage", "gauge", "The token usage.", [("", kv)])
        page.family("sglang:generation_tokens_total", "counter", "Number of generation tokens "
                    "processed.", [("", metrics.generation_tokens)])  # fmt: skip
        return page.text()
    if flavour == "llamacpp":
        page = _Page("")
        page.family("llamacpp:requests_processing", "gauge", "Number of requests processing.",
                    [("", running)])  # fmt: skip
        page.family("llamacpp:requests_deferred", "gauge", "Number of requests deferred.",
                    [("", waiting)])  # fmt: skip
        page.family("llamacpp:tokens_predicted_total", "counter", "Number of generation tokens "
                    "processed.", [("", metrics.generation_tokens)])  # fmt: skip
        return page.text()
    page = _Page(f'engine="0",model_name="{model}",')
    page.family("vllm:num_requests_running", "gauge",
                "Number of requests in model execution batches.", [("", running)])  # fmt: skip
    page.family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be "
                "processed.", [("", waiting)])  # fmt: skip
    by_reason = [('reason="capacity",', waiting), ('reason="deferred",', 0)]
    page.family("vllm:num_requests_waiting_by_reason", "gauge", "Number of requests waiting, by "
                "reason.", by_reason)  # fmt: skip
    page.family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent "
                "usage.", [("", kv)])  # fmt: skip
    page.family("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from "
                "the engine.", [("", metrics.preemptions)])  # fmt: skip
    page.family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
                [("", metrics.prompt_tokens)])  # fmt: skip
    page.family("vllm:generation_tokens_total", "counter", "Number of generation tokens "
                "processed.", [("", metrics.generation_tokens)])  # fmt: skip
    page.family("vllm:request_success_total", "counter", "Count of successfully processed "
                "requests.", [(f'finished_reason="{r}",', metrics.success[r])
                              for r in FINISHED_REASONS])  # fmt: skip
    return page.text()

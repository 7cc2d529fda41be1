"""The /metrics parser: vLLM's Prometheus text -> running, waiting, KV-cache usage."""

from __future__ import annotations

import httpx

from pipeline.metrics import parse, server_load
from pipeline.sim import SimConfig, SimServer

TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="gemma3-27b"} 16.0
vllm:num_requests_waiting{engine="0",model_name="gemma3-27b"} 5.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="gemma3-27b",reason="capacity"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="gemma3-27b"} 0.0015
vllm:num_requests_running{engine="1",model_name="gemma3-27b"} 4.0
vllm:kv_cache_usage_perc{engine="1",model_name="gemma3-27b"} 0.5
vllm:num_requests_running{engine="0",model_name="other"} 99.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="gemma3-27b"} 7.0
garbage line without value
"""


def test_gauges_summed_over_engines_for_the_model() -> None:
    """Running/waiting add up across engines; KV usage is the fullest engine's."""
    load = server_load(TEXT, "gemma3-27b")
    assert load is not None
    assert (load.running, load.waiting, load.kv_cache) == (20.0, 5.0, 0.5)


def test_labels_parsed() -> None:
    """Label sets are parsed into dicts; comments and garbage skipped."""
    samples = parse(TEXT)
    assert samples[0].labels == {"engine": "0", "model_name": "gemma3-27b"}
    assert not any(s.name.startswith("#") or s.name == "garbage" for s in samples)


def test_not_vllm_is_none() -> None:
    """A /metrics without vLLM's gauges gives None."""
    assert server_load("# nothing\nprocess_cpu_seconds_total 3.0\n") is None


def test_simulator_metrics_parse() -> None:
    """The simulator's /metrics carries the same gauges."""
    with SimServer(SimConfig()) as sim:
        text = httpx.get(sim.url + "/metrics").text
    load = server_load(text, "gemma3-27b")
    assert load is not None and load.running == 0 and load.waiting == 0

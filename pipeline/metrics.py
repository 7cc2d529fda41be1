"""A server's Prometheus ``/metrics`` text -> the load gauges ``--concurrency auto`` steers by.
Pure, no IO.

Three dialects are read, whichever the server speaks:

- vLLM: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc`` (a fraction: 1 = full);
- SGLang: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``;
- llama.cpp's server (``--metrics``): ``llamacpp:requests_processing``,
  ``llamacpp:requests_deferred`` (no KV gauge).

vLLM also counts preemptions (``vllm:num_preemptions_total``): requests thrown out of a full
KV cache to be recomputed later, the one sign that a server has more running than it can hold.
Series with several label sets (several engines, data-parallel ranks) are summed, except the
KV-cache usage, of which the highest is taken; series labelled with another ``model_name`` are
left out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    server: str
    running: str
    waiting: str
    kv_cache: str | None
    preemptions: str | None


DIALECTS = (
    Dialect(
        "vLLM",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
    ),
    Dialect(
        "SGLang", "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", None
    ),
    Dialect("llama.cpp", "llamacpp:requests_processing", "llamacpp:requests_deferred", None, None),
)
_NAMES = tuple(
    name
    for d in DIALECTS
    for name in (d.running, d.waiting, d.kv_cache, d.preemptions)
    if name is not None
)

_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class ServerLoad:
    running: float
    waiting: float
    kv_cache: float | None = None  # 0..1; None when the server does not say
    preemptions: float | None = None  # a counter (total since the server started)
    server: str = "vLLM"


def parse(text: str, names: tuple[str, ...] | None = None) -> list[Sample]:
    """Every sample line of a Prometheus text exposition (comments and bad lines skipped);
    with ``names``, only lines starting with one of them are parsed at all."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if names is not None and not line.startswith(names):
            continue  # vLLM's histograms are most of the text; the steering needs 4 series
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m["labels"] or ""))
        out.append(Sample(m["name"], labels, value))
    return out


def server_load(text: str, model: str | None = None) -> ServerLoad | None:
    """The load gauges, for ``model`` if given; None when the text has none of them."""
    found: dict[str, list[float]] = {}
    for s in parse(text, names=_NAMES):
        if not math.isfinite(s.value) or s.name not in _NAMES:
            continue  # a prefix match of a longer name, e.g. ..._waiting_by_reason
        if model is not None and s.labels.get("model_name", model) != model:
            continue
        found.setdefault(s.name, []).append(s.value)
    for d in DIALECTS:
        if d.running in found or d.waiting in found:
            kv = found.get(d.kv_cache or "")
            preempted = found.get(d.preemptions or "")
            return ServerLoad(
                running=sum(found.get(d.running, ())),
                waiting=sum(found.get(d.waiting, ())),
                kv_cache=max(kv) if kv else None,
                preemptions=sum(preempted) if preempted else None,
                server=d.server,
            )
    return None


def combine(loads: list[ServerLoad]) -> ServerLoad:
    """Several servers as one: requests and preemptions summed, the fullest KV cache (the
    same rule as for several label sets of one server)."""
    known_kv = [x.kv_cache for x in loads if x.kv_cache is not None]
    known_pre = [x.preemptions for x in loads if x.preemptions is not None]
    return ServerLoad(
        running=sum(x.running for x in loads),
        waiting=sum(x.waiting for x in loads),
        kv_cache=max(known_kv) if known_kv else None,
        preemptions=sum(known_pre) if known_pre else None,
        server=loads[0].server if loads else "vLLM",
    )

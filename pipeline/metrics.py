"""vLLM's Prometheus ``/metrics`` text -> the gauges the pipeline watches. Pure, no IO.

Names as vLLM 0.32 exports them (a fraction for the KV cache, not a percentage):
``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``.
Series with several label sets (several engines or models) are summed, except the KV-cache
usage, of which the highest is taken.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"

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
    kv_cache: float  # 0..1


def parse(text: str, names: tuple[str, ...] | None = None) -> list[Sample]:
    """Every sample line of a Prometheus text exposition (comments and bad lines skipped);
    with ``names``, only lines starting with one of them are parsed at all."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if names is not None and not line.startswith(names):
            continue  # vLLM's histograms are most of the text; the steering needs 3 gauges
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
    """The load gauges, for ``model`` if given; None when the text has none of them (not vLLM)."""
    found: dict[str, list[float]] = {RUNNING: [], WAITING: [], KV_CACHE: []}
    for s in parse(text, names=(RUNNING, WAITING, KV_CACHE)):
        if s.name in found and math.isfinite(s.value):
            if model is not None and s.labels.get("model_name", model) != model:
                continue
            found[s.name].append(s.value)
    if not any(found.values()):
        return None
    return ServerLoad(
        running=sum(found[RUNNING]),
        waiting=sum(found[WAITING]),
        kv_cache=max(found[KV_CACHE], default=0.0),
    )


def combine(loads: list[ServerLoad]) -> ServerLoad:
    """Several servers as one: requests summed, the fullest KV cache (the same rule as for
    several label sets of one server)."""
    return ServerLoad(
        running=sum(x.running for x in loads),
        waiting=sum(x.waiting for x in loads),
        kv_cache=max((x.kv_cache for x in loads), default=0.0),
    )

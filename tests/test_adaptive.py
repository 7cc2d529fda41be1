"""--concurrency auto: the controller's reactions in each regime, and end-to-end runs."""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from pathlib import Path

import httpx
import pyarrow.dataset as ds
import pytest
from helpers import make_images

from pipeline.adaptive import AutoConcurrency
from pipeline.cli import main
from pipeline.metrics import ServerLoad
from pipeline.sim import SimConfig, SimServer


def settled(limit: int = 16, **kw: object) -> AutoConcurrency:
    """A controller whose last change has taken effect (at time 0)."""
    auto = AutoConcurrency(limit=limit, **kw)  # type: ignore[arg-type]
    auto.settled_at = 0.0
    return auto


@pytest.mark.parametrize(
    ("load", "in_flight", "saw_queue", "expected", "regime"),
    [
        (ServerLoad(16, 0, 0.1), 16, False, 32, "room"),  # busy, no queue yet: double
        (ServerLoad(16, 0, 0.1), 16, True, 17, "room"),  # after a queue was seen: ~10%
        (ServerLoad(10, 0, 0.1), 10, False, 16, "room"),  # limit not in use: hold
        (ServerLoad(14, 2, 0.1), 16, False, 16, "batch-bound"),  # small queue: hold
        (ServerLoad(14, 2, 0.97), 16, False, 16, "kv-bound"),  # full KV + queue: hold, no cut
        (ServerLoad(6, 10, 0.92), 16, True, 8, "kv-bound"),  # kv-bound wants 2: drop 10 - 2
        (ServerLoad(4, 12, 0.5), 16, True, 6, "batch-bound"),  # wants max(2, 4/2): drop 12 - 2
        (ServerLoad(10, 6, 0.5), 16, True, 16, "batch-bound"),  # wants 5: 6 <= 10, hold
        (ServerLoad(10, 6, 0.95), 16, True, 12, "kv-bound"),  # wants 2.5: 6 > 5, drop 6 - 2.5
        (ServerLoad(1, 40, 0.5), 16, True, 4, "batch-bound"),  # at most 75% a step
        (ServerLoad(16, 0, 0.97), 16, True, 17, "room"),  # a full cache alone is no reason
    ],
)
def test_metrics_mode_reactions(
    load: ServerLoad, in_flight: int, saw_queue: bool, expected: int, regime: str
) -> None:
    """With the server's gauges the limit grows, holds or shrinks as documented."""
    auto = settled(saw_queue=saw_queue)
    move = auto.on_load(load, in_flight, 1.0)
    assert (move.new, move.regime) == (expected, regime)
    assert auto.limit == expected


def test_requests_the_server_has_not_counted_yet_are_queued_too() -> None:
    """Ours in flight beyond running + waiting (on the wire, in vLLM's API server) count as
    queue: no doubling before the server has seen them, and they are part of the excess."""
    auto = settled(limit=64)
    hold = auto.on_load(ServerLoad(0, 0, 0.0), 64, 1.0)
    assert (hold.new, hold.regime) == (64, "room") and "not counted yet" in hold.why
    auto = settled(limit=100, saw_queue=True)
    cut = auto.on_load(ServerLoad(6, 20, 0.92), 100, 1.0)  # 74 unseen
    assert cut.new == 25  # toward 100 - (20 - 3 + 74) = 9, at most 75% a step
    auto.settle(25, 2.0)
    cut = auto.on_load(ServerLoad(6, 10, 0.92), 25, 2.5)  # 9 unseen
    assert cut.new == 8  # running 6 + the kv-bound queue (2)


def test_queue_cut_never_sinks_below_the_running_batch() -> None:
    """Whatever the queue, a cut on one fresh sample keeps every running request a slot."""
    for limit, running in itertools.product((8, 16, 64, 200), (1, 6, 32, 64, 128)):
        for waiting in range(1, 3 * limit):
            if running + waiting > limit:  # our own requests: limit >= running + waiting
                continue
            auto = settled(limit=limit, saw_queue=True)
            move = auto.on_load(ServerLoad(running, waiting, 0.95), limit, 1.0)
            assert move.new >= running, (limit, running, waiting, move)


def test_preemptions_mean_overload_only_when_frequent() -> None:
    """A preemption now and then is a full cache's normal life; one in four finished, judged
    over at least two batches, is too much."""
    auto = settled(limit=40, saw_queue=True)
    auto.on_load(ServerLoad(30, 10, 0.98, preemptions=100), 40, 1.0)  # the baseline
    for t, (preempted, regime, new) in enumerate(
        [(103, "kv-bound", 40),  # 3 of 20: too few answers to judge
         (110, "kv-bound", 40),  # 10 of 60 over two batches: normal
         (116, "kv-bound", 40),  # 6 of 20
         (126, "overloaded", 27)],  # 16 of 40 over two batches: cut to 0.9 x running
        start=2,
    ):  # fmt: skip
        for _ in range(20 if t != 3 else 40):
            auto.observe_latency(float(t), 0.3)
        move = auto.on_load(ServerLoad(30, 10, 0.98, preemptions=preempted), 40, t)
        assert (move.regime, move.new) == (regime, new), (t, move)
    assert "16 preempted / 40 finished" in move.seen and "preempt" in move.why


def test_after_overload_growth_waits_then_goes_one_at_a_time() -> None:
    """After an overload the limit holds for a few quiet samples, then grows by one."""
    auto = settled(limit=20, saw_queue=True)
    auto.on_load(ServerLoad(20, 0, 0.9, preemptions=0), 20, 1.0)
    auto.on_load(ServerLoad(20, 5, 1.0, preemptions=50), 20, 2.0)  # plainly thrashing
    assert auto.limit == 18
    news = []
    for t in range(3, 9):
        auto.settled_at = float(t)
        news.append(auto.on_load(ServerLoad(auto.limit, 0, 0.9, preemptions=50), auto.limit,
                                 float(t)).new)  # fmt: skip
    assert news == [18, 18, 18, 19, 20, 21]


def test_stale_evidence_is_not_fresh_until_the_change_took_effect() -> None:
    """After a raise, a sample counts once in-flight met the limit and it was taken after."""
    auto = settled(limit=16)
    auto.on_load(ServerLoad(16, 0, 0.1), 16, 1.0)  # doubles to 32 at t=1
    assert auto.limit == 32 and not auto.fresh(1.5)
    auto.settle(20, 1.2)  # not yet in use
    assert not auto.fresh(1.5)
    auto.settle(30, 1.3)  # 30 >= 0.9 x 32: in effect
    assert not auto.fresh(1.25)  # fetched before that
    assert auto.fresh(1.35)


def test_a_cut_settles_when_the_excess_has_drained() -> None:
    """After a cut, in-flight must fall to the new limit (or time out) before evidence counts."""
    auto = settled(limit=64, saw_queue=True)
    auto.on_load(ServerLoad(6, 58, 0.92), 64, 1.0)
    assert auto.limit == 16
    auto.settle(40, 1.5)
    assert not auto.fresh(1.6)
    auto.settle(16, 1.8)
    assert auto.fresh(1.9)
    auto = settled(limit=64, saw_queue=True)
    auto.on_load(ServerLoad(6, 58, 0.92), 64, 1.0)
    auto.settle(60, 2.5)  # a hang: never drains; after max(1 s, 2 x latency) it counts anyway
    assert auto.fresh(2.6)


def test_throttles_cut_to_what_got_through_and_pause_growth() -> None:
    """429s: more than one attempt in ten refused -> cut to what gets through (answers/s x
    latency + 10%); 429s to requests sent before the cut do not count; fewer refusals hold the
    limit (the bucket stays drained); growth waits a second without 429s, then adds one."""
    auto = settled(limit=20, saw_queue=True)
    for i in range(100):  # 50 answers/s over the last two seconds, 0.2 s each
        auto.observe_latency(1.0 + i * 0.02 - 0.2, 0.2)
    for _ in range(30):
        auto.on_throttle(2.5, 3.0)
    move = auto.on_throttles(3.0)
    assert move is not None and (move.new, move.regime) == (10, "throttled")  # 49.5 x 0.2 x 1.1
    assert "30 of 130 attempts answered 429" in move.seen
    for _ in range(30):
        auto.on_throttle(2.9, 3.01)  # sent before the cut took effect: not counted
    assert auto.on_throttles(3.02) is None
    auto.settle(10, 3.1)
    for _ in range(2):
        auto.on_throttle(3.2, 3.3)
    for _ in range(28):
        auto.observe_latency(3.2, 0.2)
    assert auto.on_throttles(3.4) is None  # 2 of 30: the price of a drained bucket
    hold = auto.on_load(ServerLoad(10, 0, 0.2), 10, 3.5)
    assert (hold.new, hold.regime) == (10, "throttled")  # a 429 within the last second
    assert auto.on_load(ServerLoad(10, 0, 0.2), 10, 4.5).new == 11  # careful: one more


def test_latency_mode() -> None:
    """Without metrics: grow while latency is near its best, cut 20% once it doubles; only
    requests started after the last change count."""
    auto = settled(limit=10)
    assert auto.on_latency(10, 1.0) is None  # nothing answered yet
    for _ in range(8):
        auto.observe_latency(0.5, 0.1)
    move = auto.on_latency(10, 1.0)
    assert move is not None and move.new == 20
    for _ in range(8):
        auto.observe_latency(0.9, 0.5)  # started before the change: ignored
    assert auto.on_latency(20, 1.2) is None
    auto.settle(20, 1.2)
    for _ in range(8):
        auto.observe_latency(1.3, 0.35)
    move = auto.on_latency(20, 2.0)
    assert move is not None and (move.new, move.regime) == (16, "queueing")


def test_bounds_are_respected() -> None:
    """The limit never leaves [minimum, maximum]."""
    auto = settled(limit=18, minimum=2, maximum=20)
    assert auto.on_load(ServerLoad(18, 0, 0.0), 18, 1.0).new == 20
    auto = settled(limit=2, minimum=2, maximum=20, saw_queue=True)
    assert auto.on_load(ServerLoad(1, 50, 0.0), 2, 1.0).new == 2


def test_a_move_explains_itself() -> None:
    """A move reads as old -> new, the regime, the evidence and the reason."""
    auto = settled(limit=64, saw_queue=True)
    text = str(auto.on_load(ServerLoad(6, 58, 0.92), 64, 1.0))
    assert text.startswith("concurrency 64 -> 16: kv-bound [running 6, waiting 58, KV 0.92]")
    assert "dropping the excess" in text


# --- end to end, against the simulator ------------------------------------------------------


def run(sim: SimServer, root: Path, out: Path, *extra: str) -> int:
    return main(["run", "--endpoint", sim.base_url, "--input", str(root), "--output", str(out),
                 "--prompt", "x", "--no-progress", *extra])  # fmt: skip


@pytest.mark.parametrize("metrics", ["vllm", "none"])
def test_auto_finds_the_slots(tmp_path: Path, metrics: str) -> None:
    """Against 96 slots, auto climbs from its start (64) to at least the slot count."""
    root = make_images(tmp_path / "img", 1000, size=(32, 24))[0].parent.parent
    with SimServer(SimConfig(slots=96, latency=0.25, metrics=metrics)) as sim:
        code = run(sim, root, tmp_path / "o")
        peak = sim.stats()["max_running"]
    assert code == 0
    rows = ds.dataset(tmp_path / "o").to_table(columns=["concurrency"]).to_pylist()
    assert max(int(r["concurrency"]) for r in rows) >= 96
    assert peak == 96


def test_kv_bound_server_gets_a_short_queue_and_a_full_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A KV-bound server (room for ~10 requests, 256 slots): auto sees kv-bound, every move
    keeps at least the running batch while requests wait, and the server's median queue wait
    stays under one service time."""
    root = make_images(tmp_path / "img", 600, size=(32, 24))[0].parent.parent
    latency = 0.2
    with SimServer(SimConfig(slots=256, latency=latency, kv_capacity_tokens=3000)) as sim:
        with caplog.at_level(logging.DEBUG, logger="pipeline.steer"):
            assert run(sim, root, tmp_path / "o") == 0
        stats = sim.stats()
    assert stats["max_running"] <= 11 and stats["completed"] == 600
    assert stats["queue_wait"]["p50"] <= latency
    summary = capsys.readouterr().out
    assert re.search(r"auto +by vLLM /metrics; kv-bound \d+%", summary), summary
    moves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto: conc")]
    assert moves
    for text in moves:
        m = re.search(r"-> (\d+): \S+ \[running (\d+), waiting (\d+)", text)
        assert m is not None, text
        new, running, waiting = map(int, m.groups())
        assert waiting == 0 or new >= running or "preempt" in text, text


@pytest.mark.parametrize(("dialect", "name"), [("sglang", "SGLang"), ("llamacpp", "llama.cpp")])
def test_other_servers_metrics_steer_too(
    tmp_path: Path, dialect: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SGLang's and llama.cpp's gauges are read like vLLM's."""
    root = make_images(tmp_path / "img", 200, size=(32, 24))[0].parent.parent
    with SimServer(SimConfig(slots=8, latency=0.1, metrics=dialect)) as sim:
        assert run(sim, root, tmp_path / "o") == 0
    assert f"by {name} /metrics" in capsys.readouterr().out


def test_gateway_429s_lower_the_limit_and_cost_no_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Behind a rate-limiting gateway (no /metrics) every item ends ok with no retries allowed:
    429s are waited out, not counted, and auto settles below where it started."""
    root = make_images(tmp_path / "img", 150, size=(32, 24))[0].parent.parent
    config = SimConfig(slots=64, latency=0.05, metrics="none", gateway_rate=60, gateway_burst=5)
    with SimServer(config) as sim:
        code = run(sim, root, tmp_path / "o", "--retries", "0", "--retry-after-max", "0.2")
        throttled = sim.stats()["errors"].get("429", 0)
    assert code == 0
    rows = ds.dataset(tmp_path / "o").to_table().to_pylist()
    assert len(rows) == 150 and all(r["status"] == "ok" for r in rows)
    assert throttled > 0 and sum(r["attempts"] for r in rows) == 150 + throttled
    out = capsys.readouterr().out
    assert f"{throttled} answers were 429" in out
    assert (
        re.search(r"at concurrency (\d+)", out)
        and int(re.findall(r"at concurrency (\d+)", out)[0]) < 64
    )


def test_only_429s_for_max_outage_stops_with_75(tmp_path: Path) -> None:
    """A gateway that answers nothing but 429 for max_outage seconds: exit 75, rows kept."""
    root = make_images(tmp_path / "img", 30, size=(32, 24))[0].parent.parent
    config = SimConfig(slots=8, latency=0.01, metrics="none", gateway_rate=0.001, gateway_burst=1)
    with SimServer(config) as sim:
        code = run(sim, root, tmp_path / "o", "--max-outage", "1", "--retry-after-max", "0.1")
    assert code == 75
    rows = ds.dataset(tmp_path / "o").to_table().to_pylist()
    assert [r["status"] for r in rows] == ["ok"]  # the burst's one request


def test_slow_metrics_never_double_on_a_stale_sample(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/metrics answered 0.5 s late by a KV-bound server: no run-away slow start (every
    raise acts on a sample fetched after the last change took effect), and auto still sees
    the server kv-bound."""
    root = make_images(tmp_path / "img", 400, size=(32, 24))[0].parent.parent
    config = SimConfig(slots=256, latency=0.2, kv_capacity_tokens=3000, metrics_delay=0.5)
    with SimServer(config) as sim, caplog.at_level(logging.DEBUG, logger="pipeline.steer"):
        assert run(sim, root, tmp_path / "o") == 0
        stats = sim.stats()
    moves = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto: conc")]
    assert not any("-> 256" in m for m in moves), moves  # 64 -> 128 -> 256 was the old fault
    assert any("kv-bound" in m for m in moves), moves
    assert stats["queue_wait"]["p50"] <= 0.2


def test_capacity_drop_mid_run_is_followed(tmp_path: Path) -> None:
    """The server's slots drop from 32 to 8 mid-run: auto's limit follows down to what the
    new batch needs (8 running + its queue), and every item still ends ok."""
    root = make_images(tmp_path / "img", 900, size=(32, 24))[0].parent.parent
    with SimServer(SimConfig(slots=32, latency=0.1)) as sim:

        def drop() -> None:
            while sim.stats()["completed"] < 300:
                time.sleep(0.02)
            httpx.post(sim.url + "/sim/capacity", json={"slots": 8})

        t = threading.Thread(target=drop)
        t.start()
        assert run(sim, root, tmp_path / "o") == 0
        t.join()
    rows = ds.dataset(tmp_path / "o").to_table(columns=["concurrency", "finished_at"]).to_pylist()
    rows.sort(key=lambda r: r["finished_at"])
    assert len(rows) == 900
    last = [int(r["concurrency"]) for r in rows[-100:]]
    assert max(last) <= 8 + 8, last  # 8 running + at most twice the queue it wants (4)

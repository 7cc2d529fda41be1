"""Benchmark (issue 11): does `--concurrency auto` hold in every regime a real server shows?

Each regime is a `caption sim` in its own process; `caption run` (default `--concurrency auto`)
captions small images against it, in its own process. Reported per regime: auto's items/s in
the run (the summary's figure) and from its first request to its last answer, as a ratio to
the server's capacity; the server's median queue wait (arrival to admission, from
/sim/stats) against one batch's service time; failed items; preemptions; what auto said.

Capacity: slots / latency for a batch-bound server; for a KV-bound one (a KV cache in tokens,
more slots than fit) the rate of the same pipeline with a fixed 256 in flight (a queue that
never empties) in the same run, and for the overloaded one the best of a fixed sweep; the
gateway's token rate; after a capacity change, the new slots / latency.

Peer: vLLM's own benchmark client (`vllm bench serve --backend openai-chat --dataset-name
random-mm`, from the real-vLLM rig's venv) against the batch-bound server at several
`--max-concurrency`, in the same run; its best rate against auto's (first request to last
answer on both sides, which is how `vllm bench` times itself).

Run: .venv/bin/python bench/auto_regimes.py [--only NAME ...] [--no-peer]   (in make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow.dataset as ds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_images
from saturation import command, sim

RIG = Path(os.environ.get("CAPTION_VLLM_HOME", Path.home() / ".cache" / "caption-vllm"))
LATENCY = 0.25


@dataclass
class Run:
    code: int
    summary: str
    rate: float  # items/s in the run (the summary's figure)
    busy_rate: float  # ok rows / (last answer - first request)
    failed: int
    rows: list[dict[str, object]] = field(repr=False)

    def line(self, prefix: str) -> str:
        return next(
            (ln.strip() for ln in self.summary.splitlines() if ln.strip().startswith(prefix)), ""
        )


def caption(urls: list[str], images: Path, out: Path, *flags: str) -> Run:
    p = subprocess.run(command(urls, images, out, *flags), capture_output=True, text=True)
    if p.returncode not in (0, 1):
        print(p.stderr[-3000:], file=sys.stderr)
    rows = ds.dataset(out).to_table(columns=["status", "started_at", "finished_at"]).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    first = min(r["started_at"] for r in ok)
    last = max(r["finished_at"] for r in ok)
    wall = p.stdout.split("wall time")[1].split("items/s")[0]
    return Run(p.returncode, p.stdout, float(wall.split(",")[1]), len(ok) / (last - first).total_seconds(),
               len(rows) - len(ok), rows)  # fmt: skip


def stats(url: str) -> dict[str, object]:
    return httpx.get(url.removesuffix("/v1") + "/sim/stats").json()  # type: ignore[no-any-return]


def reset(url: str) -> None:
    httpx.post(url.removesuffix("/v1") + "/sim/reset")


def rate_between(run: Run, t0: float, t1: float) -> float:
    """ok answers per second that arrived between wall times t0 and t1."""
    n = sum(1 for r in run.rows if r["status"] == "ok" and t0 <= r["finished_at"].timestamp() < t1)  # type: ignore[attr-defined]
    return n / (t1 - t0)


def first_window_at(
    run: Run, t0: float, end: float, target: float, width: float = 1.0
) -> float | None:
    """Seconds after t0 from which every `width`-second window to `end` reaches `target`/s."""
    starts = [t0 + i * 0.25 for i in range(int((end - t0 - width) / 0.25) + 1)]
    good = [rate_between(run, s, s + width) >= target for s in starts]
    for i in range(len(good)):
        if all(good[i:]):
            return starts[i] - t0
    return None


def peer(url: str, conc: int, n: int, tmp: Path) -> float | None:
    """`vllm bench serve` req/s at `--max-concurrency conc`, or None without the rig's venv."""
    vllm = RIG / "venv" / "bin" / "vllm"
    if not vllm.exists():
        return None
    result = tmp / f"peer-{conc}.json"
    cmd = [str(vllm), "bench", "serve", "--backend", "openai-chat", "--base-url", url.removesuffix("/v1"),
           "--endpoint", "/v1/chat/completions", "--model", "gemma3-27b", "--tokenizer", str(RIG / "tiny-gemma3"),
           "--dataset-name", "random-mm", "--num-prompts", str(n), "--max-concurrency", str(conc),
           "--random-input-len", "16", "--random-output-len", "24", "--random-mm-base-items-per-request", "1",
           "--random-mm-limit-mm-per-prompt", '{"image": 1, "video": 0}',
           "--random-mm-bucket-config", "{(64, 48, 1): 1.0}", "--request-rate", "inf",
           "--save-result", "--result-filename", str(result)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
    if p.returncode != 0 or not result.exists():
        print(p.stdout[-2000:], p.stderr[-2000:], file=sys.stderr)
        return None
    data = json.loads(result.read_text())
    if data.get("failed"):
        print(f"peer at {conc}: {data['failed']} failed", file=sys.stderr)
    return float(data["request_throughput"])


class Bench:
    def __init__(self, tmp: Path, items: int) -> None:
        self.tmp = tmp
        self.images = tmp / "images"
        make_images(self.images, items, size=(64, 48))
        self.rows: list[str] = []
        self.ok: list[bool] = []

    def server(self, name: str, slots: int, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
        folder = self.tmp / name.replace(" ", "_").replace("/", "")
        folder.mkdir(exist_ok=True)
        return sim(folder, slots, LATENCY, *flags)

    def report(self, regime: str, run: Run, capacity: float, target: float | None, url: str | None,
               note: str = "", ratio_of: str = "run") -> None:  # fmt: skip
        ratio = (run.rate if ratio_of == "run" else run.busy_rate) / capacity
        busy = run.busy_rate / capacity
        s = stats(url) if url else {}
        qw = s.get("queue_wait", {}) if s else {}
        p50 = qw.get("p50") if isinstance(qw, dict) else None
        met = target is None or (
            ratio >= target and run.failed == 0 and (p50 is None or p50 <= LATENCY)
        )
        self.ok.append(met)
        auto = run.line("auto").removeprefix("auto").strip()
        conc = run.line("wall time").split("concurrency")[-1].strip()
        p50_text = "n/a" if p50 is None else f"{p50:.3f} s"
        tgt = "—" if target is None else f"≥ {target}"
        self.rows.append(
            f"| {regime} | {capacity:.1f} | {run.rate:.1f} | **{ratio:.3f}** | {busy:.3f} | {tgt} | {p50_text} | "
            f"{run.failed} | {s.get('preemptions', 'n/a')} | {conc} | {note}{auto[:260]} |"
        )  # fmt: skip
        print(self.rows[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()

    def want(name: str) -> bool:
        return args.only is None or any(o in name for o in args.only)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        b = Bench(tmp, 7000)  # the capacity-change runs need ~20 s of work at 256 req/s
        img, out = b.images, tmp / "out"
        small = tmp / "small"
        make_images(small, args.items, size=(64, 48), seed=2)
        print(f"\n## Auto concurrency by regime, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores "
              f"(`bench/auto_regimes.py`): simulator in its own process, {LATENCY} s per request, "
              f"{args.items} images per run unless said\n")  # fmt: skip
        print("| regime | capacity req/s | auto items/s | ratio in the run | first request to last answer | target "
              "| server p50 queue wait (1 batch = 0.25 s) | failed | preemptions | concurrency at the end | what auto said |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        auto_busy_batch = None
        if want("batch-bound"):
            proc, url = b.server("batch", 64)
            try:
                r = caption([url], small, out)
                auto_busy_batch = r.busy_rate
                b.report("batch-bound (64 slots)", r, 64 / LATENCY, 0.97, url)
                if not args.no_peer:
                    best = None
                    for conc in (32, 64, 96, 128):
                        got = peer(url, conc, 1500, tmp)
                        if got is not None:
                            print(f"| peer: vllm bench serve --max-concurrency {conc} | {64 / LATENCY:.0f} | "
                                  f"{got:.1f} | — | {got / (64 / LATENCY):.3f} | — | | | | {conc} | |", flush=True)  # fmt: skip
                            best = got if best is None else max(best, got)
                    if best is None:
                        print(
                            "| peer | not run: no rig venv (bash tests/vllm/rig.sh install && bash tests/vllm/rig.sh model) |"
                        )
                    else:
                        beat = auto_busy_batch > best
                        b.ok.append(beat)
                        print(f"\npeer: vllm bench serve best {best:.1f} req/s; caption auto {auto_busy_batch:.1f} "
                              f"(first request to last answer) = {auto_busy_batch / best:.3f}x: "
                              f"{'auto beats it' if beat else 'AUTO DOES NOT BEAT IT'}\n", flush=True)  # fmt: skip
            finally:
                proc.terminate()
                proc.wait()
        kv = ("--kv-tokens", "8000")
        kv_capacity = None
        for name, flags, target in (
            ("kv-bound (256 slots, KV 8,000 tokens: ~26 fit)", kv, 0.97),
            ("kv-bound, /metrics 1 s late", (*kv, "--metrics-delay", "1"), 0.97),
            ("batch-bound, no /metrics", ("--metrics", "none"), 0.93),
            ("kv-bound, no /metrics", (*kv, "--metrics", "none"), 0.93),
        ):
            if not want(name):
                continue
            slots = 64 if name.startswith("batch") else 256
            proc, url = b.server(name, slots, *flags)
            try:
                capacity = 64 / LATENCY
                if "kv-bound" in name:
                    if kv_capacity is None:
                        ref = caption([url], small, out, "--concurrency", "256")
                        kv_capacity = ref.rate
                        print(f"| (reference: fixed 256 in flight, a queue that never empties) | | {ref.rate:.1f} | | | | | "
                              f"{ref.failed} | {stats(url).get('preemptions')} | 256 | |", flush=True)  # fmt: skip
                        reset(url)
                    capacity = kv_capacity
                b.report(name, caption([url], small, out), capacity, target, url)
            finally:
                proc.terminate()
                proc.wait()
        if want("overloaded"):
            proc, url = b.server("overloaded", 256, *kv, "--caption-words", "200")
            try:
                best = 0.0
                for conc in (12, 16, 20, 28, 64):
                    got = caption([url], small, out, "--concurrency", str(conc)).rate
                    best = max(best, got)
                    print(
                        f"| (overloaded: fixed {conc}) | | {got:.1f} | | | | | | | {conc} | |",
                        flush=True,
                    )
                reset(url)
                b.report("overloaded (200-token answers, KV 8,000)", caption([url], small, out), best, None, url,
                         "capacity = best fixed; ")  # fmt: skip
            finally:
                proc.terminate()
                proc.wait()
        if want("gateway"):
            proc, url = b.server("gateway", 64, "--gateway-rate", "100", "--metrics", "none")
            try:
                r = caption([url], small, out)
                b.report("429 gateway, 100 req/s token bucket, no /metrics", r, 100, 0.9, None,
                         f"{stats(url)['errors'].get('429', 0)} answers 429; ")  # fmt: skip
            finally:
                proc.terminate()
                proc.wait()
        if want("capacity change"):
            proc, url = b.server("change", 64)
            try:
                root = url.removesuffix("/v1")
                times: list[float] = []

                def change() -> None:
                    while stats(url)["requests"] == 0:
                        time.sleep(0.02)
                    for slots in (32, 64):
                        time.sleep(8)
                        times.append(time.time())
                        httpx.post(root + "/sim/capacity", json={"slots": slots})

                t = threading.Thread(target=change)
                t.start()
                r = caption([url], img, out)
                t.join()
                end = max(x["finished_at"].timestamp() for x in r.rows) - 0.5  # type: ignore[attr-defined]
                for (t0, t1), slots in (((times[0], times[1]), 32), ((times[1], end), 64)):
                    cap = slots / LATENCY
                    got = rate_between(r, t0 + 5, t1)
                    settle = first_window_at(r, t0, t1, 0.95 * cap)
                    ok = got >= 0.95 * cap
                    b.ok.append(ok)
                    b.rows.append(f"| capacity change to {slots} slots (at +8 s) | {cap:.0f} | {got:.1f} | **{got / cap:.3f}** "
                                  f"(5 s after the change to the next) | | ≥ 0.95 within 5 s | | {r.failed} | | | every 1-s window "
                                  f"≥ 0.95 from {settle if settle is None else f'{settle:.2f} s'} after the change |")  # fmt: skip
                    print(b.rows[-1], flush=True)
            finally:
                proc.terminate()
                proc.wait()
        if want("endpoint down"):
            pa, ua = b.server("ep_a", 32)
            pb, ub = b.server("ep_b", 32)
            try:
                times = []

                def down() -> None:
                    while stats(ua)["requests"] == 0:
                        time.sleep(0.02)
                    time.sleep(8)
                    times.append(time.time())
                    httpx.post(ub.removesuffix("/v1") + "/sim/down", json={"seconds": 600})

                t = threading.Thread(target=down)
                t.start()
                r = caption([ua, ub], img, out, "--max-outage", "3600")
                t.join()
                end = max(x["finished_at"].timestamp() for x in r.rows) - 0.5  # type: ignore[attr-defined]
                cap = 32 / LATENCY
                got = rate_between(r, times[0] + 5, end)
                settle = first_window_at(r, times[0], end, 0.95 * cap)
                b.ok.append(got >= 0.95 * cap and r.failed == 0)
                b.rows.append(f"| one of two endpoints (32 slots each) goes down at +8 s | {cap:.0f} | {got:.1f} | "
                              f"**{got / cap:.3f}** (5 s after to the end) | | ≥ 0.95 within 5 s | | {r.failed} | | | "
                              f"every 1-s window ≥ 0.95 from {settle if settle is None else f'{settle:.2f} s'} after |")  # fmt: skip
                print(b.rows[-1], flush=True)
            finally:
                for p in (pa, pb):
                    p.terminate()
                    p.wait()
        print(f"\nall targets met: {all(b.ok)} ({sum(b.ok)} of {len(b.ok)})")


if __name__ == "__main__":
    main()

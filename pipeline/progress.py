"""Progress and the end-of-run summary: result rows -> counts, a live bar or log lines, a report.

On a terminal a tqdm bar shows done/total, ok/failed/invalid and the rate; with
``--no-progress`` or when stderr is not a terminal, a log line is written every few seconds
instead. ``Tally`` is plain data; ``format_summary`` is a pure function.
"""

from __future__ import annotations

import logging
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

    from .steer import SteerReport

from .schema import STATUS_FAILED, STATUS_INVALID, STATUS_OK

log = logging.getLogger("pipeline")
LOG_EVERY_S = 5.0


@dataclass(slots=True)
class Tally:
    """What this run has done so far."""

    skipped: int = 0  # items already done by an earlier run
    images: int = 0  # image files found
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    requests: int = 0  # HTTP attempts
    prompt_tokens: int = 0
    completion_tokens: int = 0
    walk_done: bool = False
    outages: int = 0
    truncated: int = 0  # ok answers cut at max_tokens (finish_reason "length")
    latencies: array[float] = field(default_factory=lambda: array("d"))
    started: float = field(default_factory=time.monotonic)

    prompts: int = 1  # items per image
    concurrency: int = 0  # requests allowed in flight now
    concurrency_max: int = 0
    concurrency_bounds: str = ""  # "auto 1-256" when the pool steers itself, else ""
    steer: SteerReport | None = None  # what auto saw and did

    @property
    def expected(self) -> int | None:
        """Items this run will end with, once the walk has finished (else unknown)."""
        if not self.walk_done:
            return None
        return max(self.done, self.images * self.prompts - self.skipped)

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.invalid

    def record(self, row: dict[str, Any]) -> None:
        status = row["status"]
        if status == STATUS_OK:
            self.ok += 1
            if row.get("finish_reason") == "length":
                self.truncated += 1
            if row.get("latency_s") is not None:
                self.latencies.append(row["latency_s"])
        elif status == STATUS_FAILED:
            self.failed += 1
        elif status == STATUS_INVALID:
            self.invalid += 1
        attempts = row.get("attempts") or 0
        self.requests += attempts
        if attempts:  # an answer shared with an identical image costs no tokens again
            self.prompt_tokens += row.get("prompt_tokens") or 0
            self.completion_tokens += row.get("completion_tokens") or 0


def percentile(values: array[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks, or None."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _concurrency_note(t: Tally) -> str:
    notes = [t.concurrency_bounds] if t.concurrency_bounds else []
    if t.concurrency_max > t.concurrency:
        notes.append(f"peak {t.concurrency_max}")
    return f" ({', '.join(notes)})" if notes else ""


def format_summary(t: Tally, wall_s: float, output: str) -> str:
    """The report printed when a run ends."""
    rate = t.ok / wall_s if wall_s > 0 else 0.0
    p50, p95 = percentile(t.latencies, 50), percentile(t.latencies, 95)
    lat = "n/a" if p50 is None or p95 is None else f"p50 {p50:.2f}s, p95 {p95:.2f}s"
    lines = [
        "caption run summary",
        f"  items      {t.done} this run: {t.ok} ok, {t.failed} failed, {t.invalid} invalid"
        f"; {t.skipped} already done (skipped); {t.images} image files",
        f"  wall time  {wall_s:.1f}s, {rate:.2f} items/s at concurrency {t.concurrency}"
        + _concurrency_note(t),
        f"  latency    {lat} ({t.requests} requests sent)"
        + (f"; {t.outages} server outage(s) waited out" if t.outages else ""),
        *([f"  auto       {t.steer.line()}"] if t.steer is not None else []),
        f"  tokens     {t.prompt_tokens:,} prompt + {t.completion_tokens:,} completion"
        + (f"; {t.truncated} answers cut at max_tokens" if t.truncated else ""),
        f"  output     {output}",
    ]
    return "\n".join(lines)


def wants_bar(enabled: bool) -> bool:
    """A progress bar only when asked for and there is a terminal to draw it on."""
    return enabled and sys.stderr.isatty()


class Reporter:
    """Shows progress: a tqdm bar on a terminal, else a log line every few seconds."""

    def __init__(self, tally: Tally, *, enabled: bool) -> None:
        self.tally = tally
        self.bar: tqdm[Any] | None = None
        if wants_bar(enabled):
            from tqdm import tqdm  # only with a terminal to draw on (import: 70 ms)

            self.bar = tqdm(total=None, unit="item", dynamic_ncols=True, file=sys.stderr)
        self._last_log = time.monotonic()
        self._shown = 0

    def _postfix(self) -> str:
        t = self.tally
        bounds = f" ({t.concurrency_bounds})" if t.concurrency_bounds else ""
        return (
            f"ok={t.ok} failed={t.failed} invalid={t.invalid} skipped={t.skipped} "
            f"conc={t.concurrency}{bounds}"
        )

    def refresh(self) -> None:
        t = self.tally
        if self.bar is not None:
            if self.bar.total != t.expected:
                self.bar.total = t.expected  # unknown (no percentage) until the walk ends
            self.bar.update(t.done - self._shown)
            self._shown = t.done
            self.bar.set_postfix_str(self._postfix(), refresh=False)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            self.log_line()

    def log_line(self) -> None:
        t = self.tally
        elapsed = time.monotonic() - t.started
        total = "?" if t.expected is None else str(t.expected)
        rate = t.done / elapsed if elapsed > 0 else 0.0
        log.info("progress %d/%s items, %s, %.2f items/s", t.done, total, self._postfix(), rate)

    def close(self) -> None:
        if self.bar is not None:
            self.refresh()
            self.bar.close()

"""Progress and the end-of-run summary: result rows -> counts, a live bar or log lines, a report.

On a terminal a tqdm bar shows done/total, the percentage, an ETA, the counts and the rate,
laid out by ``status_line`` to fit the terminal's width (less important fields are left out
first; a number is never cut). With ``--no-progress``, or when stderr is not a terminal, a
log line with every figure is written every few seconds instead (``progress_text``).

What the total counts: the items *this run* will end with, i.e. image files (or manifest
rows) x prompts, less the items an earlier run already did. The runner learns the number of
images early from a counting walk (``Tally.expect``); the skipped part is final only when the
feed has looked at every file, so until then the total uses the best lower bound of the
skipped items known (the counting walk's, or what the feed has found so far): the total
shrinks as more skipped items are found, and is exact once the feed is done. With ``[run]
limit`` it is at most the limit (plus the invalid rows, which are never sent).

The ETA divides what is left by the rate over the last ``RATE_WINDOW_S`` seconds (not since
the start: auto-concurrency's ramp-up and a slow first answer would skew it).

Failed and invalid rows are grouped by ``error_kind`` as they arrive (a count and the first
example per kind, bounded); ``format_summary`` lists the top kinds. ``Tally`` is plain data;
``status_line``, ``progress_text``, ``error_kind`` and ``format_summary`` are pure functions.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

    from .steer import SteerReport

from .logs import fields
from .schema import STATUS_FAILED, STATUS_INVALID, STATUS_OK

log = logging.getLogger("pipeline")
LOG_EVERY_S = 5.0
RATE_WINDOW_S = 60.0  # the ETA's rate: items finished over the last minute...
RATE_MIN_SPAN_S = 3.0  # ...once there are at least this many seconds of it
RATE_STEP_S = 1.0  # one sample a second at most (the window holds ~60)
BAR_MIN = 10  # narrower than this, the bar is left out rather than drawn...
BAR_WANT = 20  # ...and fields less important than the bar go before it gets narrower than this
MAX_KINDS = 32  # error kinds counted apart per status; later new kinds count as "other"
SUMMARY_KINDS = 5  # kinds listed in the summary, most frequent first
EXAMPLE_CHARS = 200  # an example error is cut to this many characters


@dataclass(slots=True)
class ErrorKind:
    """Rows of one kind of error: how many, and the first one (``path: error``)."""

    count: int
    example: str


@dataclass(slots=True)
class Tally:
    """What this run has done so far."""

    skipped: int = 0  # items already done by an earlier run (found so far by the feed)
    images: int = 0  # image files found (so far) by the feed's walk
    ok: int = 0
    failed: int = 0
    invalid: int = 0
    requests: int = 0  # HTTP attempts
    prompt_tokens: int = 0
    completion_tokens: int = 0
    walk_done: bool = False  # the feed's walk has seen every file: ``images`` is final
    outages: int = 0
    truncated: int = 0  # ok answers cut at max_tokens (finish_reason "length")
    latencies: array[float] = field(default_factory=lambda: array("d"))
    started: float = field(default_factory=time.monotonic)

    prompts: int = 1  # items per image
    limit: int | None = None  # [run] limit: items sent to the server at most (invalid ones aside)
    concurrency: int = 0  # requests allowed in flight now
    concurrency_max: int = 0
    concurrency_bounds: str = ""  # "auto 1-256" when the pool steers itself, else ""
    steer: SteerReport | None = None  # what auto saw and did

    # From the runner's counting walk (``expect``), before the feed's walk is through:
    images_expected: int | None = None  # image files (manifest rows) the input holds
    skipped_expected: int | None = None  # items of them an earlier run did (None: not counted)
    failures: dict[str, ErrorKind] = field(default_factory=dict)  # failed rows by error_kind
    invalids: dict[str, ErrorKind] = field(default_factory=dict)  # invalid rows by error_kind

    def expect(self, images: int, skipped: int | None = None) -> None:
        """The input holds ``images`` image files (manifest rows), of whose items ``skipped``
        were done by an earlier run (None when not counted): the total is known from now on."""
        self.images_expected = images
        self.skipped_expected = skipped

    @property
    def expected(self) -> int | None:
        """Items this run will end with (see the module's docstring), or None while unknown:
        the feed's walk has not finished and no counting walk has said how many images."""
        if self.walk_done:
            images = self.images
        elif self.images_expected is not None:
            images = max(self.images, self.images_expected)
        else:
            return None
        skipped = max(self.skipped, self.skipped_expected or 0)
        total = images * self.prompts - skipped
        if self.limit is not None:  # invalid rows are never sent: they are not in the limit
            total = min(total, self.limit + self.invalid)
        return max(self.done, total)

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
            self._note(self.failures, row)
        elif status == STATUS_INVALID:
            self.invalid += 1
            self._note(self.invalids, row)
        attempts = row.get("attempts") or 0
        self.requests += attempts
        if attempts:  # an answer shared with an identical image costs no tokens again
            self.prompt_tokens += row.get("prompt_tokens") or 0
            self.completion_tokens += row.get("completion_tokens") or 0

    def _note(self, kinds: dict[str, ErrorKind], row: dict[str, Any]) -> None:
        """Count a failed or invalid row under its error's kind (the first is the example)."""
        error = str(row.get("error") or "(no error message)")
        kind = error_kind(error)
        if kind not in kinds and len(kinds) >= MAX_KINDS:
            kind = "other"
        entry = kinds.get(kind)
        if entry is not None:
            entry.count += 1
            return
        where = str(row.get("image_path") or "?")
        if self.prompts > 1 and row.get("prompt_name"):
            where += f" [{row['prompt_name']}]"
        kinds[kind] = ErrorKind(1, _shorten(f"{where}: {error}", EXAMPLE_CHARS))


# --- error kinds -------------------------------------------------------------------------

_GAVE_UP = re.compile(r" \(gave up after \d+ attempts?\)$")
# (pattern searched from the start of the message, kind), first match wins. The messages are
# the ones this pipeline writes: client.py / stream.py (HTTP and transport errors), requester
# ("schema: ..."), encode.py and feed.py (unreadable or undecodable images), manifests.
_KINDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), kind)
    for pattern, kind in (
        (r"schema: the answer was cut off at max_tokens", "schema: answer cut at max_tokens"),
        (r"schema: not JSON", "schema: answer is not JSON"),
        (r"schema: ", "schema: answer does not match"),
        (r"timeout: could not connect", "connect timeout"),
        (r"timeout", "timeout"),
        (r"cannot connect: .*(?:[Rr]efused|Errno 111|Connect call failed)", "connection refused"),
        (r"cannot connect", "cannot connect"),
        (r"connection error", "connection dropped"),
        (r"malformed answer", "malformed answer"),
        (r"malformed stream", "malformed stream"),
        (r"stream ended before \[DONE\]", "stream cut off"),
        (r"answer too large", "answer too large"),
        (r"bad response", "bad response"),
        (r"empty file", "empty file"),
        (r"image too large", "image too large"),
        (r"not an image", "not an image"),
        (r"cannot decode image", "cannot decode image"),
        (r"file too large", "file too large"),
        (r"file disappeared", "file disappeared"),
        (r"permission denied", "permission denied"),
        (r"is a folder", "is a folder"),
        (r"cannot read file", "cannot read file"),
        (r"the manifest row has no value for ", "manifest row lacks a prompt variable"),
        (r"file not found: ", "file not found"),
        (r"manifest (?:line|row) \d+: no image", "manifest row without an image"),
        (r"manifest line \d+: \d+ fields", "manifest line with a wrong number of fields"),
        (r"manifest line \d+: keep column", "manifest keep column of the wrong type"),
        (r"manifest line \d+: image is a", "manifest image is not a path"),
    )
)
_HTTP = re.compile(r"HTTP (\d{3})\b")


def error_kind(error: str) -> str:
    """The kind of a row's ``error`` message, to count like errors together: ``HTTP 500``,
    ``timeout``, ``connection refused``, ``schema: answer is not JSON``, ``cannot decode
    image``, ... (an unknown message: its start up to the first colon, digits as ``N``)."""
    text = " ".join(error.split())
    text = _GAVE_UP.sub("", text)
    http = _HTTP.match(text)
    if http is not None:
        return f"HTTP {http.group(1)}"
    for pattern, kind in _KINDS:
        if pattern.match(text):
            return kind
    head = re.sub(r"\d+", "N", text.split(":", 1)[0]).strip()
    if not head:
        return "other"
    return head if len(head) <= 40 else head[:40].rsplit(" ", 1)[0] + "..."


def _shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters (with "...")."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 attempt``, ``2 attempts`` (``plural_form`` for irregular nouns)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


# --- the summary -------------------------------------------------------------------------


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


def kind_lines(label: str, kinds: dict[str, ErrorKind], top: int = SUMMARY_KINDS) -> list[str]:
    """The summary's lines for one status: its most frequent error kinds, each with a count
    and its first example (``3x HTTP 500 (e.g. a.jpg: HTTP 500: ...)``), then what is left."""
    ranked = sorted(kinds.items(), key=lambda item: -item[1].count)  # stable: first seen first
    lines = []
    for i, (kind, entry) in enumerate(ranked[:top]):
        head = f"  {label:<10} " if i == 0 else " " * 13
        lines.append(f"{head}{entry.count}x {kind} (e.g. {entry.example})")
    rest = ranked[top:]
    if rest:
        count = sum(entry.count for _, entry in rest)
        kinds_left = plural(len(rest), "other kind")
        lines.append(
            f"{' ' * 13}and {count} more of {kinds_left}: " + ", ".join(k for k, _ in rest)
        )
    return lines


def format_summary(t: Tally, wall_s: float, output: str) -> str:
    """The report printed when a run ends."""
    rate = t.ok / wall_s if wall_s > 0 else 0.0
    p50, p95 = percentile(t.latencies, 50), percentile(t.latencies, 95)
    lat = "n/a" if p50 is None or p95 is None else f"p50 {p50:.2f}s, p95 {p95:.2f}s"
    lines = [
        "caption run summary",
        f"  items      {t.done} this run: {t.ok} ok, {t.failed} failed, {t.invalid} invalid"
        f"; {t.skipped} already done (skipped); {plural(t.images, 'image file')}",
        *kind_lines("failed", t.failures),
        *kind_lines("invalid", t.invalids),
        f"  wall time  {wall_s:.1f}s, {rate:.2f} items/s at concurrency {t.concurrency}"
        + _concurrency_note(t),
        f"  latency    {lat} ({plural(t.requests, 'request')} sent)"
        + (f"; {plural(t.outages, 'server outage')} waited out" if t.outages else ""),
        *([f"  auto       {t.steer.line()}"] if t.steer is not None else []),
        f"  tokens     {t.prompt_tokens:,} prompt + {t.completion_tokens:,} completion"
        + (f"; {plural(t.truncated, 'answer')} cut at max_tokens" if t.truncated else ""),
        f"  output     {output}",
    ]
    return "\n".join(lines)


# --- live progress: rate, ETA, the status line -------------------------------------------


class RecentRate:
    """Items finished per second over the last ``window`` seconds (None until ``min_span``
    seconds of samples are in): a sample a ``step`` at most, so memory stays small."""

    def __init__(
        self,
        window: float = RATE_WINDOW_S,
        min_span: float = RATE_MIN_SPAN_S,
        step: float = RATE_STEP_S,
    ) -> None:
        self.window, self.min_span, self.step = window, min_span, step
        self._samples: deque[tuple[float, int]] = deque()
        self._latest: tuple[float, int] | None = None

    def add(self, now: float, done: int) -> None:
        self._latest = (now, done)
        if not self._samples or now - self._samples[-1][0] >= self.step:
            self._samples.append((now, done))
        # keep one sample at or before the window's start, so the window is covered whole
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def per_second(self) -> float | None:
        if self._latest is None or not self._samples:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._latest
        span = t1 - t0
        return (n1 - n0) / span if span >= self.min_span else None


def eta_seconds(t: Tally, rate: float | None) -> float | None:
    """Seconds until the expected items are done at ``rate``; None when not known."""
    total = t.expected
    if total is None or rate is None:
        return None
    left = max(0, total - t.done)
    if left == 0:
        return 0.0
    return left / rate if rate > 0 else None


def format_duration(seconds: float) -> str:
    """``45s``, ``3m10s``, ``2h05m``, ``3d04h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def format_rate(rate: float) -> str:
    return f"{rate:.2f}" if rate < 10 else f"{rate:.1f}" if rate < 100 else f"{rate:,.0f}"


def _percent(t: Tally) -> int | None:
    total = t.expected
    if total is None:
        return None
    return 100 if total == 0 else min(100, t.done * 100 // total)


def progress_text(t: Tally, rate: float | None) -> str:
    """The ``--no-progress`` log line, every figure in full: ``1221/2000 items (61%), ETA
    3m10s, 9.10 items/s; ok=1218 failed=3 invalid=0 skipped=845 conc=64 (auto 1-256)``."""
    total = t.expected
    if total is None:
        head = f"{t.done}/? items (total not known yet)"
    else:
        eta = eta_seconds(t, rate)
        head = f"{t.done}/{total} items ({_percent(t)}%), ETA " + (
            "?" if eta is None else format_duration(eta)
        )
    speed = "?" if rate is None else format_rate(rate)
    bounds = f" ({t.concurrency_bounds})" if t.concurrency_bounds else ""
    return (
        f"{head}, {speed} items/s; ok={t.ok} failed={t.failed} invalid={t.invalid} "
        f"skipped={t.skipped} conc={t.concurrency}{bounds}"
    )


@dataclass(frozen=True, slots=True)
class StatusLine:
    """One bar line: ``left``, a bar ``bar_width`` columns wide (0: no bar), ``right``."""

    left: str
    bar_width: int
    right: str

    def render(self, fraction: float, fill: str = "#") -> str:
        """The line as text (for tests and plain output); tqdm draws the real bar."""
        if not self.bar_width:
            return self.left + self.right
        filled = int(self.bar_width * min(max(fraction, 0.0), 1.0))
        return self.left + fill * filled + " " * (self.bar_width - filled) + self.right


def status_line(t: Tally, width: int, rate: float | None) -> StatusLine:
    """The progress bar's line for a terminal ``width`` columns wide.

    Fields, most important first: done/total, the percentage, the ETA, nonzero failed and
    invalid counts, the bar, the rate, the skipped count, ok, the concurrency, zero counts,
    auto's bounds. While the line is too wide the least important left is dropped, whole:
    a number is never cut. The bar gets what is left: at least ``BAR_WANT`` columns while
    less important fields are shown, at least ``BAR_MIN`` (else it goes). done/total always
    stays (only a terminal narrower than it gets cut, by the terminal).
    """
    total = t.expected
    pct = _percent(t)
    eta = eta_seconds(t, rate)
    # (importance: lower is kept longer, text); the bar is its own entry, drawn between
    # the percentage and the rest
    fields: list[tuple[float, str]] = [(0, f"{t.done}/{'?' if total is None else total}")]
    if total is not None:
        fields.append((2, "ETA " + ("?" if eta is None else format_duration(eta))))
    if rate is not None:
        fields.append((5, f"{format_rate(rate)}/s"))
    fields.append((7, f"ok={t.ok}"))
    fields.append((3 if t.failed else 9, f"failed={t.failed}"))
    fields.append((3.5 if t.invalid else 9, f"invalid={t.invalid}"))
    fields.append((6 if t.skipped else 9, f"skipped={t.skipped}"))
    fields.append((8, f"conc={t.concurrency}"))
    if t.concurrency_bounds:
        fields.append((10, f"({t.concurrency_bounds})"))
    pct_rank, bar_rank = 1.0, 4.0
    keep = {rank for rank, _ in fields} | {pct_rank, bar_rank}
    for drop in sorted(keep, reverse=True):
        show_pct = pct is not None and pct_rank in keep
        show_bar = show_pct and total != 0 and bar_rank in keep
        right = " ".join(text for rank, text in fields if rank in keep)
        if show_bar:
            left, right = f"{pct:3d}%|", "| " + right
        else:
            left = f"{pct}% " if show_pct else ""
        used = len(left) + len(right)
        need = 0 if not show_bar else BAR_MIN if max(keep) < bar_rank else BAR_WANT
        if used + need <= width or drop == 0:
            return StatusLine(left, max(0, width - used) if show_bar else 0, right)
        keep.discard(drop)
    raise AssertionError("unreachable: rank 0 always fits or returns")


def terminal_width(default: int = 80) -> int:
    """The bar's width: ``$COLUMNS`` when set, else the width of the terminal stderr writes
    to, else ``default`` (a terminal that reports 0 columns, e.g. a fresh pty, too)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.stderr.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
    return columns if columns > 0 else default


def wants_bar(enabled: bool) -> bool:
    """A progress bar only when asked for and there is a terminal to draw it on."""
    return enabled and sys.stderr.isatty()


class Reporter:
    """Shows progress: a tqdm bar on a terminal, else a log line every few seconds.

    The bar's line comes from ``status_line`` at the terminal's width (read at each refresh,
    so a resized window is followed); tqdm draws the bar itself and keeps log lines above
    it (``logging_redirect_tqdm``). ``clock`` and ``width`` are for tests.
    """

    def __init__(
        self,
        tally: Tally,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] = terminal_width,
    ) -> None:
        self.tally = tally
        self.clock = clock
        self.width = width
        self.rate = RecentRate()
        now = clock()
        self.rate.add(now, tally.done)
        self.bar: tqdm[Any] | None = None
        if wants_bar(enabled):
            from tqdm import tqdm  # only with a terminal to draw on (import: 70 ms)

            columns, bar_format = self._layout()
            self.bar = tqdm(
                total=tally.expected, initial=tally.done, file=sys.stderr, ncols=columns,
                bar_format=bar_format,
            )  # fmt: skip
        self._last_log = now

    def _layout(self) -> tuple[int, str]:
        """The terminal's width now and the bar's line for it, as a tqdm ``bar_format``."""
        columns = self.width()
        line = status_line(self.tally, columns, self.rate.per_second())
        middle = "{bar}" if line.bar_width else ""
        return columns, _braces(line.left) + middle + _braces(line.right)

    def _draw(self, bar: tqdm[Any]) -> None:
        bar.ncols, bar.bar_format = self._layout()
        bar.total = self.tally.expected
        bar.n = self.tally.done
        bar.refresh()

    def refresh(self) -> None:
        now = self.clock()
        self.rate.add(now, self.tally.done)
        if self.bar is not None:
            self._draw(self.bar)
            return
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            self.log_line()

    def log_line(self) -> None:
        t = self.tally
        counts = {
            "done": t.done, "expected": t.expected, "ok": t.ok, "failed": t.failed,
            "invalid": t.invalid, "skipped": t.skipped, "images": t.images,
            "concurrency": t.concurrency,
        }  # fmt: skip
        rate = self.rate.per_second()
        log.info(
            "progress %s", progress_text(t, rate),
            extra=fields("progress", counts=counts, items_per_s=rate),
        )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.refresh()
            self.bar.close()


def _braces(text: str) -> str:
    """``text`` as literal text in a tqdm ``bar_format`` (a format string)."""
    return text.replace("{", "{{").replace("}", "}}")

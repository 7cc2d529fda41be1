"""Progress: the early total, the ETA over a recent window, the bar's line fitted to the
terminal, the log line, error kinds and the summary's failure report.

All pure: times come from an injected clock, widths are arguments; nothing sleeps.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from typing import Any

import pytest

from pipeline import progress
from pipeline.progress import (
    BAR_MIN,
    MAX_KINDS,
    RecentRate,
    Reporter,
    StatusLine,
    Tally,
    error_kind,
    eta_seconds,
    format_duration,
    format_summary,
    plural,
    progress_text,
    status_line,
)
from pipeline.schema import STATUS_FAILED, STATUS_INVALID, STATUS_OK


def row(
    status: str, error: str | None = None, path: str = "a/x.jpg", **extra: Any
) -> dict[str, Any]:
    return {"status": status, "error": error, "image_path": path, "prompt_name": "describe",
            "attempts": 1, **extra}  # fmt: skip


def busy_tally() -> Tally:
    """The issue's example: 1221 of 2000 items done, 845 skipped, auto concurrency."""
    t = Tally(ok=1218, failed=3, skipped=845, images=1500, concurrency=64)
    t.concurrency_bounds = "auto 1-256"
    t.expect(images=2845, skipped=845)
    return t


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the total ---------------------------------------------------------------------------


class TestExpected:
    def test_unknown_until_counted(self) -> None:
        """Before the counting walk or the feed's walk is through, there is no total."""
        t = Tally(images=300, ok=10)
        assert t.expected is None

    def test_counting_walk_gives_the_total_early(self) -> None:
        """expect() makes the total known while the feed's walk is still running."""
        t = Tally(images=256, ok=10, prompts=2)
        t.expect(images=1000)
        assert t.expected == 2000

    def test_skipped_items_of_the_counting_walk(self) -> None:
        """Items already done (counted by the walk from the hash cache) are not this run's."""
        t = Tally(images=256, prompts=2)
        t.expect(images=1000, skipped=600)
        assert t.expected == 1400
        t.skipped = 100  # the feed has found fewer so far: the count's lower bound holds
        assert t.expected == 1400
        t.skipped = 650  # ...and more later (files not in the cache): the total shrinks
        assert t.expected == 1350

    def test_without_a_skip_count_the_total_shrinks_as_skips_are_found(self) -> None:
        """Without a skip count the total starts as every item and loses each skip found."""
        t = Tally(images=10, prompts=1)
        t.expect(images=100)
        assert t.expected == 100
        t.skipped = 30
        assert t.expected == 70

    def test_the_feeds_walk_has_the_last_word(self) -> None:
        """Once the feed's walk is through, its own count of images is used."""
        t = Tally(images=1003, walk_done=True, skipped=3)
        t.expect(images=1000)
        assert t.expected == 1000
        t2 = Tally(images=1200)  # files appeared after the count: no total below what is seen
        t2.expect(images=1000)
        assert t2.expected == 1200

    def test_limit(self) -> None:
        """--limit caps the total at the items it lets through, invalid rows aside."""
        t = Tally(prompts=2, limit=50)
        t.expect(images=1000)
        assert t.expected == 50
        t.invalid = 3  # never sent: not in the limit
        assert t.expected == 53
        small = Tally(limit=50)
        small.expect(images=10)
        assert small.expected == 10

    def test_never_below_done(self) -> None:
        """A count that turns out low never makes the total less than the items done."""
        t = Tally(ok=50, failed=5)
        t.expect(images=40)
        assert t.expected == 55


# --- rate, ETA, durations ----------------------------------------------------------------


class TestRecentRate:
    def test_none_until_enough_time(self) -> None:
        rate = RecentRate(window=60, min_span=3, step=1)
        rate.add(0.0, 0)
        rate.add(2.0, 20)
        assert rate.per_second() is None
        rate.add(4.0, 40)
        assert rate.per_second() == pytest.approx(10.0)

    def test_the_ramp_leaves_the_window(self) -> None:
        """A slow start (auto's ramp) counts only while it is inside the window."""
        rate = RecentRate(window=60, min_span=3, step=1)
        done = 0
        for second in range(0, 121):
            done += 1 if second <= 30 else 10  # 1/s for 30 s, then 10/s
            rate.add(float(second), done)
            if second == 60:
                since_start = done / 60
                assert (rate.per_second() or 0) < 9.0  # the ramp still weighs
        assert since_start < 6.0
        assert rate.per_second() == pytest.approx(10.0)

    def test_memory_is_bounded(self) -> None:
        rate = RecentRate(window=60, min_span=3, step=1)
        for i in range(10_000):
            rate.add(i * 0.25, i)
        assert len(rate._samples) <= 62


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.4, "45s"), (59.6, "1m00s"), (190, "3m10s"), (3599, "59m59s"),
     (3600, "1h00m"), (7500, "2h05m"), (86400 * 3 + 3600 * 4, "3d04h")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_eta() -> None:
    t = busy_tally()
    assert t.expected == 2000 and t.done == 1221
    assert eta_seconds(t, None) is None
    assert eta_seconds(t, 0.0) is None  # nothing finishing (an outage): no guess
    assert eta_seconds(t, 779 / 190) == pytest.approx(190)
    assert eta_seconds(Tally(images=5), 3.0) is None  # no total yet


# --- the log line (--no-progress) --------------------------------------------------------


class TestLogLine:
    def test_every_figure(self) -> None:
        text = progress_text(busy_tally(), 779 / 190)
        assert text.startswith("1221/2000 items (61%), ETA 3m10s, 4.10 items/s; ")
        assert "ok=1218 failed=3 invalid=0 skipped=845 conc=64 (auto 1-256)" in text

    def test_total_not_known_yet(self) -> None:
        text = progress_text(Tally(ok=865, skipped=8), None)
        assert text.startswith("865/? items (total not known yet), ? items/s; ok=865")


# --- the bar's line ----------------------------------------------------------------------

WIDTHS = [60, 80, 120, 200]


def tokens(line: StatusLine) -> list[str]:
    """The fields of a line, without the percentage and the bar."""
    return line.right.removeprefix("| ").split()


FULL = "1221/2000 ETA 3m10s 4.10/s ok=1218 failed=3 invalid=0 skipped=845 conc=64 (auto 1-256)"


class TestStatusLine:
    @pytest.mark.parametrize("width", WIDTHS)
    def test_fits_and_cuts_no_number(self, width: int) -> None:
        """The line fits the width; every field shown is whole (a field of the full line);
        a bar is at least BAR_MIN wide; done/total, the percentage and the ETA stay."""
        t = busy_tally()
        line = status_line(t, width, 779 / 190)
        text = line.render(t.done / 2000)
        assert len(text) <= width
        full = FULL.split()
        shown = tokens(line)
        assert all(tok in full for tok in shown), shown
        assert shown[:3] == ["1221/2000", "ETA", "3m10s"]
        assert "failed=3" in shown  # failures are worth a place even at 60 columns
        assert line.left.strip().startswith("61%")
        assert line.bar_width == 0 or line.bar_width >= BAR_MIN
        if line.bar_width:
            assert len(text) == width  # the bar takes what is left

    def test_wide_shows_everything(self) -> None:
        line = status_line(busy_tally(), 200, 779 / 190)
        assert " ".join(tokens(line)) == FULL
        assert line.bar_width > 50

    def test_less_important_fields_go_first(self) -> None:
        """Auto's bounds go first, then zero counts, ...; the percentage and done/total last."""
        t = busy_tally()
        at = {w: tokens(status_line(t, w, 779 / 190)) for w in (40, 60, 80, 100, 120)}
        assert "(auto" in at[120] and "(auto" not in at[100]
        assert "invalid=0" not in at[80] and "conc=64" not in at[80]
        assert "skipped=845" in at[80] and "4.10/s" in at[80]
        assert at[40] == ["1221/2000", "ETA", "3m10s", "failed=3"]
        assert status_line(t, 40, 1.0).bar_width == 0  # no room for a bar worth drawing
        tiny = status_line(t, 12, 1.0)
        assert tokens(tiny) == ["1221/2000"] and tiny.left == ""

    def test_the_issues_terminal(self) -> None:
        """The issue's case: 80 columns, total unknown: counters whole, not cut mid-number."""
        t = Tally(ok=845, failed=12, invalid=8, skipped=845, concurrency=64)
        t.concurrency_bounds = "auto 1-256"
        line = status_line(t, 80, 57.3)
        text = line.render(0.0)
        assert len(text) <= 80 and line.bar_width == 0
        assert text.startswith("865/? 57.3/s ")
        assert "skipped=845" in text and "invalid=8" in text and "failed=12" in text

    def test_nothing_to_do(self) -> None:
        t = Tally(walk_done=True, images=5, skipped=5)
        line = status_line(t, 80, None)
        assert line.bar_width == 0 and line.left == "100% " and tokens(line)[0] == "0/0"


# --- the Reporter ------------------------------------------------------------------------


class TestReporter:
    def test_log_lines_every_few_seconds(self, caplog: pytest.LogCaptureFixture) -> None:
        clock = Clock()
        t = Tally(concurrency=4)
        reporter = Reporter(t, enabled=False, clock=clock)
        with caplog.at_level(logging.INFO, logger="pipeline"):
            for _ in range(12):
                clock.now += 1.0
                t.ok += 4
                reporter.refresh()
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2  # at 5 s and 10 s
        assert lines[0].startswith("progress 20/? items (total not known yet), 4.00 items/s;")
        t.expect(images=100)
        clock.now += 5.0
        with caplog.at_level(logging.INFO, logger="pipeline"):
            reporter.refresh()
        assert caplog.records[-1].getMessage().startswith("progress 48/100 items (48%), ETA ")

    def test_bar_gets_the_total_as_soon_as_it_is_known(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The bar starts without a total; after expect() it shows one, a percentage and
        an ETA; its line is laid out for the width given (80), never wider."""
        pytest.importorskip("tqdm")
        err = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setattr(progress, "wants_bar", lambda enabled: enabled)
        clock = Clock()
        t = Tally(concurrency=8, images=256)
        reporter = Reporter(t, enabled=True, clock=clock, width=lambda: 80)
        assert reporter.bar is not None and reporter.bar.total is None
        for _ in range(4):
            clock.now += 1.0
            t.ok += 10
            reporter.refresh()
        assert reporter.bar.total is None
        t.expect(images=1000)
        clock.now += 1.0
        t.ok += 10
        reporter.refresh()
        assert reporter.bar.total == 1000 and reporter.bar.n == 50
        reporter.close()
        shown = [s for s in err.getvalue().replace("\n", "\r").split("\r") if s.strip()]
        assert shown[0].startswith("0/? ")
        assert all(len(s) <= 80 for s in shown)
        last = shown[-1]
        assert last.startswith("  5%|") and "| 50/1000 ETA 1m35s 10.0/s ok=50" in last


# --- error kinds -------------------------------------------------------------------------

# Messages as the pipeline writes them (client.py, stream.py, requester, encode.py, feed.py,
# manifests), with the kind each belongs to.
KINDS = [
    ("HTTP 500: Internal Server Error (gave up after 6 attempts)", "HTTP 500"),
    ("HTTP 400: 1 validation error:\n  {'type': 'json_invalid'}", "HTTP 400"),
    ('HTTP 401: {"error":"Unauthorized"} (the server requires an API key ...)', "HTTP 401"),
    ("HTTP 503: Service Unavailable (gave up after 1 attempt)", "HTTP 503"),
    ("timeout: no complete answer within 610s (gave up after 6 attempts)", "timeout"),
    ("timeout: ReadTimeout (gave up after 6 attempts)", "timeout"),
    ("timeout: could not connect (gave up after 2 attempts)", "connect timeout"),
    ("cannot connect: Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed "
     "('127.0.0.1', 9)] (gave up after 6 attempts)", "connection refused"),
    ("cannot connect: [Errno -2] Name or service not known", "cannot connect"),
    ("connection error: ReadError: Server disconnected", "connection dropped"),
    ("malformed answer: body is not valid JSON (gave up after 6 attempts)", "malformed answer"),
    ("malformed answer: no choices", "malformed answer"),
    ("malformed stream: a chunk is not an object", "malformed stream"),
    ("stream ended before [DONE] (gave up after 6 attempts)", "stream cut off"),
    ("answer too large (40,000,000 bytes)", "answer too large"),
    ("bad response: DecodingError: gzip", "bad response"),
    ("schema: the answer was cut off at max_tokens (812 characters, not complete JSON); "
     "raise max_tokens", "schema: answer cut at max_tokens"),
    ("schema: not JSON: Expecting value: line 1 column 1 (char 0)", "schema: answer is not JSON"),
    ("schema: $.colour: 'teal' is not one of ['red', 'blue']", "schema: answer does not match"),
    ("empty file (0 bytes)", "empty file"),
    ("image too large: 20000x20000 pixels is over the limit of 178,956,970", "image too large"),
    ("not an image Pillow can identify", "not an image"),
    ("cannot decode image: Truncated File Read", "cannot decode image"),
    ("cannot decode image: broken data stream when reading image file", "cannot decode image"),
    ("file too large (2,000,000,000 bytes)", "file too large"),
    ("file disappeared before it could be read", "file disappeared"),
    ("permission denied reading the file", "permission denied"),
    ("is a folder, not a file", "is a folder"),
    ("cannot read file: Input/output error", "cannot read file"),
    ("the manifest row has no value for $title", "manifest row lacks a prompt variable"),
    ("file not found: /data/x.jpg (manifest line 12)", "file not found"),
    ("manifest line 7: no image", "manifest row without an image"),
    ("manifest row 7: no image", "manifest row without an image"),
    ("manifest line 9: 3 fields, the header has 4", "manifest line with a wrong number of fields"),
    ("manifest line 3: image is a int, not a path", "manifest image is not a path"),
    ("Something new happened 42 times: details", "Something new happened N times"),
    ("", "other"),
]  # fmt: skip


@pytest.mark.parametrize(("error", "kind"), KINDS)
def test_error_kind(error: str, kind: str) -> None:
    assert error_kind(error) == kind


def test_error_kind_of_an_unknown_long_message_is_short() -> None:
    kind = error_kind("word " * 40)
    assert len(kind) <= 43 and kind.endswith("...")


class TestTallyKinds:
    def test_counts_and_first_example(self) -> None:
        t = Tally()
        t.record(row(STATUS_FAILED, "HTTP 500: boom (gave up after 6 attempts)", "a/1.jpg"))
        t.record(row(STATUS_FAILED, "HTTP 500: bang (gave up after 6 attempts)", "a/2.jpg"))
        t.record(row(STATUS_FAILED, "timeout: ReadTimeout", "a/3.jpg"))
        t.record(row(STATUS_INVALID, "cannot decode image: Truncated File Read", "x.jpg"))
        t.record(row(STATUS_OK))
        assert {k: v.count for k, v in t.failures.items()} == {"HTTP 500": 2, "timeout": 1}
        assert (
            t.failures["HTTP 500"].example == "a/1.jpg: HTTP 500: boom (gave up after 6 attempts)"
        )
        assert t.invalids["cannot decode image"].count == 1

    def test_prompt_named_when_there_are_several(self) -> None:
        t = Tally(prompts=2)
        t.record(row(STATUS_FAILED, "HTTP 400: no\nmore lines", "a.jpg"))
        assert t.failures["HTTP 400"].example == "a.jpg [describe]: HTTP 400: no more lines"

    def test_bounded(self) -> None:
        """Past MAX_KINDS kinds, new ones are counted as 'other'; examples are cut short."""
        t = Tally()
        for i in range(MAX_KINDS + 20):
            t.record(row(STATUS_FAILED, f"HTTP {100 + i}: " + "x" * 1000))
        assert len(t.failures) == MAX_KINDS + 1
        assert t.failures["other"].count == 20
        assert all(len(k.example) <= progress.EXAMPLE_CHARS for k in t.failures.values())


# --- the summary -------------------------------------------------------------------------


class TestSummary:
    def test_top_kinds_with_examples(self) -> None:
        t = Tally(images=9)
        error = "HTTP 500: Internal Server Error (gave up after 6 attempts)"
        for i in range(3):
            t.record(row(STATUS_FAILED, error, f"b/{i}.jpg"))
        t.record(row(STATUS_FAILED, "timeout: no complete answer within 610s", "c/9.jpg"))
        t.record(row(STATUS_INVALID, "cannot decode image: broken data stream", "data/x.jpg"))
        t.record(row(STATUS_INVALID, "cannot decode image: Truncated File Read", "data/y.jpg"))
        lines = format_summary(t, 10.0, "out").splitlines()
        assert lines[2] == (
            "  failed     3x HTTP 500 (e.g. b/0.jpg: HTTP 500: Internal Server Error "
            "(gave up after 6 attempts))"
        )
        assert lines[3] == (
            "             1x timeout (e.g. c/9.jpg: timeout: no complete answer within 610s)"
        )
        assert lines[4] == (
            "  invalid    2x cannot decode image (e.g. data/x.jpg: cannot decode image: "
            "broken data stream)"
        )
        assert lines[5].startswith("  wall time")

    def test_more_kinds_than_listed(self) -> None:
        t = Tally()
        for i, n in enumerate([5, 4, 3, 3, 2, 2, 1]):
            for _ in range(n):
                t.record(row(STATUS_FAILED, f"HTTP {500 + i}: x"))
        text = format_summary(t, 1.0, "out")
        assert "5x HTTP 500" in text and "2x HTTP 504" in text and "HTTP 505 (" not in text
        assert "and 3 more of 2 other kinds: HTTP 505, HTTP 506" in text

    def test_no_failures_no_lines(self) -> None:
        text = format_summary(Tally(ok=3, images=3), 1.0, "out")
        assert "  failed " not in text and "  invalid " not in text

    def test_singular_and_plural(self) -> None:
        """Counts of one are singular: '1 image file', '1 request sent', '1 answer'..."""
        t = Tally(ok=1, images=1, requests=1, outages=1, truncated=1)
        text = format_summary(t, 1.0, "out")
        assert "; 1 image file\n" in text
        assert "(1 request sent); 1 server outage waited out" in text
        assert "; 1 answer cut at max_tokens" in text
        assert not re.search(r"\b1 (image files|requests|server outages|answers)\b", text)
        t2 = Tally(ok=2, images=2, requests=2, outages=2, truncated=2)
        text2 = format_summary(t2, 1.0, "out")
        assert "2 image files" in text2 and "(2 requests sent); 2 server outages" in text2
        assert "2 answers cut" in text2

    def test_plural(self) -> None:
        assert plural(1, "attempt") == "1 attempt"
        assert plural(0, "attempt") == "0 attempts"
        assert plural(2, "other kind") == "2 other kinds"

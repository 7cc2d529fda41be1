"""``caption report``: the numbers (pure), the file (self-contained, safe), and the page in a
real headless Chromium (Debian's ``chromium``, driven by playwright): the gallery shows the
rows, search and filters narrow it, hostile captions stay text, nothing is fetched.

The browser tests skip only when /usr/bin/chromium is missing (``apt-get install -y chromium``;
CI installs it). No timing bounds here: bench/report.py measures the 10,000-row load.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_images
from PIL import Image

from pipeline.cli import main
from pipeline.report import add_report_arguments, build_report, default_dest, run_report
from pipeline.report import data as d
from pipeline.report.html import ThumbnailOptions, collect, json_for_script
from pipeline.report.thumbs import EMBEDDED, NO_FILE, thumbnail
from pipeline.results import RUNS_NAME, current, read_rows, read_runs
from pipeline.schema import rows_to_table, schema_with_job
from pipeline.sim import FaultConfig, SimConfig, SimServer

CHROMIUM = os.environ.get("CAPTION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
if os.environ.get("CAPTION_REQUIRE_CHROMIUM") and not Path(CHROMIUM).exists():
    # CI (.ci/run) sets this: there the browser tests must run, never skip
    raise RuntimeError(f"CAPTION_REQUIRE_CHROMIUM is set but there is no Chromium at {CHROMIUM}")
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM}: `make chromium` (root) installs it; CI does",
)

# Each of these, were it parsed as markup or run as script, would set window.__pwned or change
# the title; in the report they must be plain visible text.
HOSTILE = [
    "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\">",
    "<script>window.__pwned=2</script>",
    "</script><script>window.__pwned=3</script><!--",
    '<!-- <script>window.__pwned=4</script> --> <svg onload="window.__pwned=5">',
    "]]></textarea><iframe srcdoc='<script>parent.__pwned=6</script>'></iframe>",
]
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


# --- datasets ------------------------------------------------------------------------------


def run(sim: SimServer, out: Path, *extra: str) -> int:
    return main(["run", "--endpoint", sim.base_url, "--model", "gemma3-27b", "--output", str(out),
                 "--no-progress", "--concurrency", "4", "--flush-interval", "0.2",
                 *extra])  # fmt: skip


def write_dataset(
    out: Path,
    rows: list[dict[str, Any]],
    *,
    job: dict[str, Any] | None = None,
    columns: list[tuple[str, pa.DataType]] | None = None,
    run_id: str = "20260102T030405Z-abcdef",
) -> Path:
    """A dataset of hand-made rows (only what a test sets; the rest has plain defaults)."""
    job = job or {"input": {"root": str(out.parent / "nowhere")}, "prompts": [{"name": "p"}]}
    schema = schema_with_job(job, columns or [])
    full = []
    for i, row in enumerate(rows):
        base: dict[str, Any] = {
            "key": f"k{i}", "image_path": f"img{i:04d}.jpg", "prompt_name": "p",
            "model": "m", "status": "ok", "caption": f"caption {i}", "attempts": 1,
            "started_at": T0 + dt.timedelta(seconds=i * 0.5),
            "finished_at": T0 + dt.timedelta(seconds=i * 0.5 + 0.4), "latency_s": 0.4,
            "prompt_tokens": 300, "completion_tokens": 20 + i % 7, "concurrency": 4,
            "run_id": run_id, "endpoint": "http://127.0.0.1:1/v1", "finish_reason": "stop",
        }  # fmt: skip
        full.append({**base, **row})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(full, schema), out / f"part-{run_id}-00001.parquet")
    return out


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset written by the pipeline against the simulator: 12 images x 2 prompts (one
    cut at max_tokens: truncated), 1 cut-off file (invalid), some 500s (failed), 2 runs."""
    root = tmp_path_factory.mktemp("real")
    images = make_images(root / "images", 12)
    broken = images[5]
    broken.write_bytes(broken.read_bytes()[:200])
    prompts = root / "job.toml"
    prompts.write_text(
        f"""
[input]
root = "{root / "images"}"
[[prompt]]
name = "describe"
text = "Describe this image."
max_tokens = 256
[[prompt]]
name = "short"
text = "Name it."
max_tokens = 4
[run]
output = "{root / "out"}"
retries = 0
""",
        encoding="utf-8",
    )
    faults = FaultConfig(error_500=0.15)
    with SimServer(SimConfig(slots=8, latency=0.01, faults=faults, seed=5)) as sim:
        run(sim, root / "out", str(prompts), "--limit", "10")
    with SimServer(SimConfig(slots=8, latency=0.01, faults=faults, seed=6)) as sim:
        run(sim, root / "out", str(prompts))
    return root / "out"


# --- the numbers ---------------------------------------------------------------------------


class TestData:
    def test_error_kind_is_the_summarys(self) -> None:
        """The report groups errors as the run's summary does (progress.error_kind)."""
        a = d.error_kind(500, "HTTP 500: boom at /srv/x/y.jpg (gave up after 6 attempts)")
        b = d.error_kind(500, "HTTP 500: boom at /tmp/other.png (gave up after 2 attempts)")
        assert a == b == "HTTP 500"
        assert d.error_kind(None, "cannot decode image: 57 bytes not processed") == (
            "cannot decode image"
        )
        assert d.error_kind(400, "model not found").startswith("HTTP 400: ")
        assert d.error_kind(None, None) == "(no message)"

    def test_histogram_integer_bins_and_clipping(self) -> None:
        values = pa.array([10, 11, 11, 12, 12, 12, 13, 5000], pa.int64())
        h = d.histogram(values, integer=True, bins=4, clip_q=0.8)
        assert h.x[0] == 10 and all(float(x).is_integer() for x in h.x) and h.step >= 1
        assert sum(v or 0 for v in h.ys["all"]) == 8  # the outlier counts, in the last bin
        assert (h.ys["all"][-1] or 0) >= 1
        one = d.histogram(pa.array([24, 24, 25]), integer=True)
        assert one.x == [24.0, 25.0] and one.ys["all"] == [2.0, 1.0]
        grouped = d.histogram(pa.array([0.1, 0.2, None, 0.3]), pa.array(["a", "b", "a", "a"]))
        assert set(grouped.ys) == {"a", "b"}
        assert sum(v or 0 for v in grouped.ys["a"]) == 2
        assert d.histogram(pa.array([], pa.float64())).x == []

    def test_nice_step(self) -> None:
        assert d.nice_step(5) == 0.1
        assert d.nice_step(600) == 10
        assert d.nice_step(8 * 3600) == 300
        assert d.nice_step(400 * 86400) == 4 * 86400  # whole days beyond the steps

    def test_throughput_and_runs_from_rows_alone(self, tmp_path: Path) -> None:
        """No run log: the runs come from the rows' run_id and times; a rerun's ok row
        supersedes the failed one in the counts but both count as cost."""
        rows = [{"image_path": f"i{i}.jpg"} for i in range(20)]
        failed = {"image_path": "i19.jpg", "status": "failed", "error": "HTTP 500: x",
                  "http_status": 500}  # fmt: skip
        out = write_dataset(tmp_path / "a", [*rows[:19], failed])
        write_dataset(
            tmp_path / "b",
            [{"image_path": "i19.jpg", "started_at": T0 + dt.timedelta(hours=1),
              "finished_at": T0 + dt.timedelta(hours=1, seconds=1)}],
            run_id="20260102T040405Z-bbbbbb",
        )  # fmt: skip
        shutil.copy(next((tmp_path / "b").glob("*.parquet")), out)
        table = read_rows(out)
        runs = d.run_summaries(table, read_runs(out))
        assert [r.run_id for r in runs] == ["20260102T030405Z-abcdef", "20260102T040405Z-bbbbbb"]
        first = runs[0]
        assert first.rows == 20 and first.counts == {"ok": 19, "failed": 1, "invalid": 0}
        assert first.wall_s == pytest.approx(9.9) and not first.logged
        assert first.images_per_s == pytest.approx(20 / 9.9)
        cur = current(table)
        job = d.job_summary(str(out), None, table, cur, runs)
        assert job.counts == {"ok": 20, "failed": 0, "invalid": 0}
        assert job.rows == 21 and job.items == 20 and job.runs == 2
        assert job.prompt_tokens == 21 * 300
        tp = d.throughput(table)
        assert sum(tp.ys["ok"]) * tp.step == pytest.approx(20)
        assert sum(tp.ys["failed"]) * tp.step == pytest.approx(1)
        assert len(tp.x) <= d.MAX_BINS + 1

    def test_runs_merge_the_run_log(self, tmp_path: Path) -> None:
        out = write_dataset(tmp_path / "o", [{} for _ in range(4)])
        lines = [
            {"event": "start", "run_id": "20260102T030405Z-abcdef", "time": "2026-01-02T03:04:05",
             "host": "h", "command": "caption run x"},
            {"event": "end", "run_id": "20260102T030405Z-abcdef", "time": "2026-01-02T03:04:09",
             "exit_code": 0, "wall_s": 4.0, "counts": {"images": 4, "ok": 4}},
            {"event": "start", "run_id": "20260102T050000Z-cccccc", "time": "2026-01-02T05:00:00"},
        ]  # fmt: skip
        (out / RUNS_NAME).write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"half')
        runs = d.run_summaries(read_rows(out), read_runs(out))
        assert [(r.run_id, r.logged, r.rows) for r in runs] == [
            ("20260102T030405Z-abcdef", True, 4),
            ("20260102T050000Z-cccccc", True, 0),  # killed before any row: still listed
        ]
        assert runs[0].wall_s == 4.0 and runs[0].images_per_s == 1.0 and runs[0].exit_code == 0

    def test_error_groups(self, tmp_path: Path) -> None:
        rows = [
            {"status": "failed", "error": f"HTTP 500: boom {i} (gave up after 3 attempts)",
             "http_status": 500, "prompt_name": "ab"[i % 2]}
            for i in range(5)
        ]  # fmt: skip
        rows += [{"status": "invalid", "error": f"file not found: /x/{i}.jpg"} for i in range(2)]
        out = write_dataset(tmp_path / "o", [*rows, {}])
        groups = d.error_groups(current(read_rows(out)))
        assert [(g.status, g.count) for g in groups] == [("failed", 5), ("invalid", 2)]
        assert groups[0].prompts == {"a": 3, "b": 2}
        assert len(groups[0].examples) == d.EXAMPLES
        assert groups[0].examples[0].error == "HTTP 500: boom 0 (gave up after 3 attempts)"


# --- the file ------------------------------------------------------------------------------


class TestFile:
    def test_json_for_script_cannot_end_the_element(self) -> None:
        value = {"a": HOSTILE, "b": "x\u2028y&<>"}
        text = json_for_script(value)
        assert "<" not in text and ">" not in text and "&" not in text
        assert json.loads(text) == value
        assert json_for_script({"x": [float("nan"), 1.5], "t": dt.time(1, 2)}) == (
            '{"x":[null,1.5],"t":"01:02:00"}'
        )

    def test_self_contained_and_placed_beside_the_dataset(self, real: Path) -> None:
        dest = build_report(real)
        assert dest == default_dest(real) == real.with_name("out-report.html")
        text = dest.read_text("utf-8")
        # nothing to fetch: no URL in any src/href, a CSP that allows none
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)""", text)
        assert "<link" not in text and "@import" not in text
        csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)
        assert csp is not None and "default-src &#x27;none&#x27;" in csp.group(1)
        # every inline script that runs is allowed by its hash, and only those
        runs = re.findall(r"<script>(.*?)</script>", text, re.S)
        assert len(runs) == 2
        for script in runs:
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"sha256-{digest}" in csp.group(1)
        sinks = (
            r"\.(?:inner|outer)HTML\s*=|insertAdjacentHTML\(|document\.write\(|\beval\(|Function\("
        )
        assert not re.search(sinks, runs[1])  # the page's own script; uPlot uses none either
        assert not re.search(sinks, runs[0])
        assert not list(real.glob("*.html"))  # the dataset folder holds only its own files

    def test_page_data(self, real: Path) -> None:
        page, thumbs = collect(real)
        job, rows = page["job"], page["gallery"]["rows"]
        cols = page["gallery"]["columns"]
        assert job["items"] == len(rows) == 24 and job["images"] == 12
        assert job["counts"]["invalid"] == 2 and job["counts"]["failed"] >= 1
        assert len(page["runs"]) == 2 and all(r["logged"] for r in page["runs"])
        assert len(thumbs) == 11  # the cut-off file has none
        by = [dict(zip(cols, r, strict=True)) for r in rows]
        assert {r["thumb"] for r in by if r["status"] == "invalid"} == {"unreadable"}
        assert all(isinstance(r["thumb"], int) for r in by if r["status"] == "ok")
        assert all("truncated" in r["flags"] for r in by if r["prompt_name"] == "short"
                   and r["status"] == "ok")  # fmt: skip
        assert page["flags"]["counts"]["truncated"] >= 1
        for raw in thumbs[:3]:
            with Image.open(io.BytesIO(base64.b64decode(raw))) as im:
                assert im.format == "JPEG" and max(im.size) <= 160

    def test_run_report_command(self, real: Path, tmp_path: Path, capsys: Any) -> None:
        parser = argparse.ArgumentParser()
        add_report_arguments(parser)
        dest = tmp_path / "sub" / "r.html"
        args = parser.parse_args([str(real), "-o", str(dest), "--no-thumbnails"])
        assert run_report(args) == 0
        assert dest.is_file() and str(dest) in capsys.readouterr().out
        page, thumbs = collect(real, ThumbnailOptions(enabled=False))
        assert thumbs == [] and page["thumbs"]["made"] == 0
        missing = parser.parse_args([str(tmp_path / "nothing")])
        assert run_report(missing) == 2
        assert "not a folder" in capsys.readouterr().err

    def test_relative_report_path(
        self, real: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
    ) -> None:
        """`-o r.html` (relative) is written and its file:// address printed."""
        parser = argparse.ArgumentParser()
        add_report_arguments(parser)
        monkeypatch.chdir(tmp_path)
        assert run_report(parser.parse_args([str(real), "-o", "r.html", "--no-thumbnails"])) == 0
        assert (tmp_path / "r.html").is_file()
        assert (tmp_path / "r.html").as_uri() in capsys.readouterr().out

    def test_images_moved(self, real: Path, tmp_path: Path) -> None:
        """--images points at the images' new folder."""
        moved = tmp_path / "moved"
        shutil.copytree(real.parent / "images", moved)
        page, thumbs = collect(real, ThumbnailOptions(images=moved, limit=4))
        assert len(thumbs) == 4 and page["thumbs"]["missing"]["over --max-thumbnails"] >= 1
        page, thumbs = collect(real, ThumbnailOptions(images=tmp_path / "nowhere"))
        assert thumbs == [] and page["thumbs"]["missing"] == {NO_FILE: 12}

    def test_empty_dataset(self, tmp_path: Path) -> None:
        (tmp_path / "o").mkdir()
        page, thumbs = collect(tmp_path / "o")
        assert page["job"]["items"] == 0 and page["gallery"]["rows"] == [] and thumbs == []
        assert build_report(tmp_path / "o", tmp_path / "r.html").is_file()


class TestThumbnails:
    def test_modes_orientation_and_bad_files(self, tmp_path: Path) -> None:
        rgba = tmp_path / "a.png"
        Image.new("RGBA", (400, 200), (255, 0, 0, 0)).save(rgba)
        with Image.open(io.BytesIO(thumbnail(rgba) or b"")) as im:
            assert im.size == (160, 80) and im.getpixel((5, 5)) >= (250, 250, 250)  # on white
        rotated = tmp_path / "r.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90: stored 400x200, shown 200x400
        Image.new("RGB", (400, 200), "blue").save(rotated, exif=exif)
        with Image.open(io.BytesIO(thumbnail(rotated) or b"")) as im:
            assert im.size == (80, 160)
        big = tmp_path / "big.jpg"
        Image.new("RGB", (3000, 2000), "green").save(big)
        with Image.open(io.BytesIO(thumbnail(big, size=100) or b"")) as im:
            assert im.size == (100, 67)
        assert thumbnail(big, max_pixels=1000) is None
        (tmp_path / "bad.jpg").write_bytes(b"not an image")
        assert thumbnail(tmp_path / "bad.jpg") is None
        assert thumbnail(tmp_path / "missing.jpg") is None

    def test_manifest_paths_and_embedded_bytes(self, tmp_path: Path, sim: SimServer) -> None:
        pics = make_images(tmp_path / "images", 3)
        csv = tmp_path / "list.csv"
        csv.write_text("id,image\n" + "".join(f"n{i},{p}\n" for i, p in enumerate(pics)))
        assert run(sim, tmp_path / "o1", "--manifest", str(csv), "--prompt", "Describe.") == 0
        page, thumbs = collect(tmp_path / "o1")
        assert len(thumbs) == 3
        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({"image": pa.array([{"bytes": p.read_bytes(), "path": p.name}
                                             for p in pics], type=image)})  # fmt: skip
        pq.write_table(table, tmp_path / "emb.parquet")
        assert run(sim, tmp_path / "o2", "--manifest", str(tmp_path / "emb.parquet"),
                   "--prompt", "Describe.") == 0  # fmt: skip
        page, thumbs = collect(tmp_path / "o2")
        assert thumbs == [] and page["thumbs"]["missing"] == {EMBEDDED: 3}


# --- the page in Chromium ------------------------------------------------------------------


class Browser:
    """One headless Chromium (fresh profile) for the module; ``open`` loads a report from
    file:// with every other request blocked and recorded, and console errors collected."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self.profile = tempfile.mkdtemp(prefix="caption-chromium-")
        self.pw = sync_playwright().start()
        self.context = self.pw.chromium.launch_persistent_context(
            self.profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        self.requests.append(url)
        if url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    def open(self, report: Path) -> Any:
        page = self.context.new_page()
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.goto(report.as_uri())
        page.wait_for_selector("body[data-painted]", state="attached")
        return page

    def close(self) -> None:
        self.context.close()
        self.pw.stop()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


def texts(page: Any, selector: str) -> list[str]:
    return [str(t) for t in page.locator(selector).all_inner_texts()]


def search(page: Any, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")


@needs_chromium
class TestBrowser:
    def test_gallery_filters_and_plots(self, browser: Browser, real: Path, tmp_path: Path) -> None:
        page = browser.open(build_report(real, tmp_path / "r.html"))
        assert page.title() == "caption report: out"
        assert page.locator("#grid .item").count() == 24
        assert page.locator("#grid .item img").count() == 22  # 2 rows of the cut-off file
        assert page.locator(".uplot").count() == 4
        assert "24" in page.inner_text("#cards")
        # search: words, any order, case-insensitive, over paths and captions
        search(page, "IMG0003")
        assert set(texts(page, "#grid .path")) == {"d/img0003.jpg"}  # make_images: a-d/
        assert page.locator("#grid .item").count() == 2  # its two prompts
        search(page, "img0003 short")
        assert texts(page, "#grid .b-prompt") == ["short"]
        search(page, "no such words anywhere")
        assert page.locator("#grid .item").count() == 0 and "No row matches" in page.inner_text(
            "#grid"
        )
        page.click("#f-clear")
        assert page.locator("#grid .item").count() == 24
        page.select_option("#f-status", "invalid")
        assert page.locator("#grid .item").count() == 2
        assert all("cannot decode" in t or "truncated" in t for t in texts(page, "#grid .error"))
        page.select_option("#f-status", "")
        page.select_option("#f-prompt", "describe")
        assert set(texts(page, "#grid .b-prompt")) == {"describe"}
        page.select_option("#f-prompt", "")
        page.select_option("#f-flag", "truncated")
        flagged = page.locator("#grid .item").count()
        assert 0 < flagged <= 12
        assert set(texts(page, "#grid .b-prompt")) == {"short"}
        page.click("#f-clear")
        # an error group's "show" narrows the gallery to its rows
        page.locator("#errors-table button", has_text="show").first.click()
        shown = texts(page, "#grid .b-failed, #grid .b-invalid")
        assert shown and page.locator("#grid .item").count() == len(shown)
        assert browser.errors == []
        assert [u for u in browser.requests if not u.startswith("file://")] == []
        page.close()

    def test_hostile_text_stays_text(self, browser: Browser, tmp_path: Path) -> None:
        job = {"input": {"root": str(tmp_path)}, "prompts": [{"name": "p", "text": HOSTILE[0]}]}
        rows = [
            {"caption": h, "image_path": f"{h}/{i}.jpg", "error": h if i % 2 else None,
             "status": "ok" if i % 2 == 0 else "failed", "note": h}
            for i, h in enumerate(HOSTILE)
        ]  # fmt: skip
        out = write_dataset(tmp_path / "o", rows, job=job, columns=[("note", pa.string())])
        report = build_report(out, tmp_path / "r.html")
        page = browser.open(report)
        assert page.evaluate("window.__pwned") is None
        assert page.title() == "caption report: o"
        assert page.locator("#grid img[src=x], #grid script, #grid iframe, #grid svg").count() == 0
        captions = texts(page, "#grid .caption")
        for h in HOSTILE:
            assert h in captions  # shown as the characters themselves
        assert HOSTILE[1] in texts(page, "#grid .error") or HOSTILE[1] in captions
        assert any(HOSTILE[2] in t for t in texts(page, "#grid .fields dd"))
        assert page.evaluate("window.__pwned") is None and page.title() == "caption report: o"
        assert browser.errors == []
        page.close()

    def test_hostile_probe_fires_as_markup(self, browser: Browser) -> None:
        """The control for the test above: put in as markup (no CSP), the first probe does
        run, so its silence in the report means something."""
        page = browser.context.new_page()
        page.set_content("<div id=x></div>")
        page.evaluate("h => { document.getElementById('x').innerHTML = h; }", HOSTILE[0])
        page.wait_for_function("() => window.__pwned === 1")
        assert page.title() == "pwned"
        page.close()

    def test_pages_and_10k_like_paging(self, browser: Browser, tmp_path: Path) -> None:
        out = write_dataset(tmp_path / "o", [{"caption": f"word{i:03d}"} for i in range(130)])
        page = browser.open(build_report(out, tmp_path / "r.html"))
        assert page.locator("#grid .item").count() == 60
        assert "page 1 of 3" in page.inner_text("#pager-top")
        page.locator("#pager-top button[aria-label='next page']").click()
        assert texts(page, "#grid .caption")[0] == "word060"
        page.locator("#pager-top button[title='last page']").click()
        assert page.locator("#grid .item").count() == 10
        search(page, "word12")
        assert texts(page, "#grid .caption") == [f"word{i}" for i in range(120, 130)]
        assert "page 1 of 1" in page.inner_text("#pager-top")
        page.select_option("#f-size", "120")
        page.click("#f-clear")
        assert page.locator("#grid .item").count() == 120
        assert browser.errors == []
        page.close()

"""Benchmark (issue 13): ``caption report`` of a 10,000-row dataset, and the plotting library.

1. Dataset: 10,000 photo-like JPEGs (random crops of data/images, 320-800 px, every 997th file
   cut off: invalid rows), captioned by ``caption run`` against the simulator with 3% HTTP 500,
   2% malformed and 1% empty answers and --retries 1 (failed rows). Cached in --work.
2. Generation: ``build_report`` wall time by phase (read, summarise, thumbnails, render+write)
   and the file's size; thumbnails alone on 1 thread and on one per core.
3. Load: the report opened from file:// in headless Chromium (Debian's ``chromium`` driven by
   playwright, every non-file request aborted): --cold times as the first page of a browser
   just started, then --loads times in one browser, a fresh page each: time from
   navigation start to the first frame after the gallery, tables and plots are drawn
   (``window.__reportTimes.painted``); then a search and a status filter over the 10,000 rows
   (handler to next frame).
4. ``--libs``: the plotting-library comparison that chose uPlot. The same three plots
   (throughput over time, latency and completion-token histograms, pre-binned by
   pipeline.report.data) drawn by plotly, matplotlib (inline SVG), altair + vl-convert
   (inline vega bundle), bokeh (inline resources) and uPlot (vendored): install footprint
   (``pip install --target`` into an empty folder, dependencies included), generation time in
   a fresh process (imports included), page size, and load time until drawn (median of
   --loads).

Run: .venv/bin/python bench/report.py [--rows 10000] [--loads 7] [--libs]
Needs /usr/bin/chromium (apt-get install -y chromium) and playwright (the test extra).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.report import build_report  # noqa: E402
from pipeline.report import data as d  # noqa: E402
from pipeline.report.html import Timings  # noqa: E402
from pipeline.report.thumbs import thumbnails  # noqa: E402
from pipeline.results import read_rows  # noqa: E402

CHROMIUM = os.environ.get("CAPTION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
STATIC = ROOT / "pipeline" / "report" / "static"
LIBS: dict[str, list[str]] = {
    "plotly": ["plotly"],
    "matplotlib": ["matplotlib"],
    "altair": ["altair", "vl-convert-python"],
    "bokeh": ["bokeh"],
    "uplot": [],  # vendored in pipeline/report/static
}
DRAWN = {  # each page's plots are drawn when this is true
    "plotly": "(() => { const d = [...document.querySelectorAll('.js-plotly-plot')];"
    " return d.length >= 3 && d.every(e => e.querySelector('.trace')); })()",
    "matplotlib": "document.querySelectorAll('svg').length >= 3",
    "altair": "document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= 1",
    "bokeh": "!!(window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].is_idle)",
    "uplot": "document.querySelectorAll('.uplot canvas').length >= 3",
}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f} on {os.cpu_count()} cores"


# --- 1. the dataset ------------------------------------------------------------------------


def photos(folder: Path, n: int, seed: int = 7) -> Path:
    """``n`` distinct JPEGs: random crops (45-100% a side), 320-800 px, half mirrored, of the
    photos in data/images; every 997th file cut to a third (an invalid row). Made once."""
    done = folder / f".done-{n}"
    if done.exists():
        return folder
    sources = sorted(
        p for p in (ROOT / "data" / "images").rglob("*") if p.suffix in {".jpg", ".png"}
    )
    bases = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in sources]

    def one(i: int) -> None:
        rng = random.Random(seed * 1_000_003 + i)
        im = bases[i % len(bases)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.45, 1)), int(h * rng.uniform(0.45, 1))
        x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
        crop = im.crop((x, y, x + cw, y + ch))
        side = rng.randrange(320, 800)
        crop.thumbnail((side, side))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        sub = folder / f"{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"photo{i:05d}.jpg"
        crop.save(path, quality=85)
        if i % 997 == 13:
            raw = path.read_bytes()
            path.write_bytes(raw[: len(raw) // 3])

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, range(n)))
    done.touch()
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dataset(work: Path, n: int) -> Path:
    """The captioned dataset of ``n`` images (made once per --work)."""
    out = work / f"out-{n}"
    if any(out.glob("part-*.parquet")):
        return out
    images = photos(work / f"images-{n}", n)
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sim", "--port", str(port), "--slots", "64",
         "--latency", "0.05", "--jitter", "0.5", "--fault-500", "0.03", "--fault-malformed",
         "0.02", "--fault-empty", "0.01", "--seed", "3"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--endpoint", f"http://127.0.0.1:{port}/v1",
             "--input", str(images), "--output", str(out), "--prompt", "Describe this image.",
             "--max-tokens", "128", "--retries", "1", "--backoff-initial", "0.01",
             "--backoff-max", "0.05", "--no-progress", "--concurrency", "64"],
            cwd=ROOT, check=False, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        sim.terminate()
        sim.wait(10)
    return out


# --- 2. generation -------------------------------------------------------------------------


def generation(out: Path, dest: Path, reps: int) -> list[tuple[float, Timings]]:
    runs = []
    for _ in range(reps):
        t = Timings()
        t0 = time.perf_counter()
        build_report(out, dest, timings=t)
        runs.append((time.perf_counter() - t0, t))
    return runs


def thumb_rates(images: Path, count: int) -> dict[int, float]:
    paths = sorted(images.rglob("*.jpg"))[:count]
    rates = {}
    for workers in sorted({1, os.cpu_count() or 1}):
        t0 = time.perf_counter()
        thumbnails(paths, workers=workers)
        rates[workers] = len(paths) / (time.perf_counter() - t0)
    return rates


# --- 3. the browser ------------------------------------------------------------------------


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="caption-bench-chromium-")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1320, "height": 900},
        )  # fmt: skip
        blocked: list[str] = []

        def route(r: Any) -> None:
            if r.request.url.startswith("file://"):
                r.continue_()
            else:
                blocked.append(r.request.url)
                r.abort()

        ctx.route("**/*", route)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)
            if blocked:
                print(f"WARNING: the page asked for {len(blocked)} URLs: {blocked[:3]}")


NEXT_FRAME = "new Promise(r => requestAnimationFrame(() => setTimeout(() => r(performance.now()))))"
ACT = """async ([sel, value]) => {
  const e = document.querySelector(sel); const t = performance.now();
  if (sel === '#q') { e.value = value; e.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); }
  else { e.value = value; e.dispatchEvent(new Event('change')); }
  const handled = performance.now() - t;
  await new Promise(r => requestAnimationFrame(() => setTimeout(r)));
  return [handled, performance.now() - t, document.querySelectorAll('#grid .item').length,
          document.getElementById('gallery-count').textContent];
}"""


def page_loads(ctx: Any, report: Path, loads: int) -> list[dict[str, Any]]:
    results = []
    for _ in range(loads):
        page = ctx.new_page()
        errors: list[str] = []
        page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda x, e=errors: e.append(str(x)))
        page.goto(report.as_uri(), wait_until="commit")
        page.wait_for_selector("body[data-painted]", state="attached", timeout=120_000)
        nav = "performance.getEntriesByType('navigation')[0]"
        times = page.evaluate(f"({{...window.__reportTimes, response_end: {nav}.responseEnd}})")
        times["search_first"] = page.evaluate(ACT, ["#q", "photo0123"])
        times["search_again"] = page.evaluate(ACT, ["#q", "photo01"])
        page.evaluate(ACT, ["#q", ""])
        times["status_filter"] = page.evaluate(ACT, ["#f-status", "failed"])
        times["errors"] = errors
        results.append(times)
        page.close()
    return results


# --- 4. the plotting libraries -------------------------------------------------------------


def series_file(out: Path, dest: Path) -> Path:
    rows = read_rows(out)
    series = {
        "throughput": asdict(d.throughput(rows)),
        "latency": asdict(d.histogram(rows["latency_s"], rows["prompt_name"])),
        "tokens": asdict(d.histogram(rows["completion_tokens"], rows["prompt_name"], integer=True)),
    }
    dest.write_text(json.dumps(series), encoding="utf-8")
    return dest


def draw(lib: str, src: Path, dest: Path) -> None:
    """Draw the three plots with ``lib`` into the page ``dest`` (run in a fresh process)."""
    s = json.loads(src.read_text())
    tp, lat, tok = s["throughput"], s["latency"], s["tokens"]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>{head}</head><body>{body}</body></html>"
    )
    if lib == "plotly":
        import plotly.graph_objects as go

        figs = []
        f = go.Figure()
        for k in ("ok", "failed", "invalid"):
            f.add_trace(go.Scatter(x=tp["x"], y=tp["ys"][k], name=k, mode="lines", line_shape="hv"))
        f.add_trace(
            go.Scatter(x=tp["x"], y=tp["ys"]["concurrency"], name="concurrency", yaxis="y2")
        )
        f.update_layout(title="Throughput", yaxis2={"overlaying": "y", "side": "right"}, height=300)
        figs.append(f)
        for title, h in (("Latency", lat), ("Completion tokens", tok)):
            f = go.Figure([go.Bar(x=h["x"], y=v, name=k) for k, v in h["ys"].items()])
            f.update_layout(title=title, height=300, barmode="overlay")
            figs.append(f)
        body = "".join(
            f.to_html(full_html=False, include_plotlyjs=i == 0) for i, f in enumerate(figs)
        )
        dest.write_text(page.format(head="", body=body), encoding="utf-8")
    elif lib == "matplotlib":
        import matplotlib

        matplotlib.use("svg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3))
        for k in ("ok", "failed", "invalid"):
            ax.step(tp["x"], tp["ys"][k], where="post", label=k)
        conc = [c if c is not None else float("nan") for c in tp["ys"]["concurrency"]]
        ax.twinx().plot(tp["x"], conc, "k--")
        ax.legend()
        ax.set_title("Throughput")
        figs = [fig]
        for title, h in (("Latency", lat), ("Completion tokens", tok)):
            fig, ax = plt.subplots(figsize=(8, 3))
            for k, v in h["ys"].items():
                ax.bar(h["x"], v, width=h["step"], align="edge", label=k, alpha=0.7)
            ax.set_title(title)
            figs.append(fig)
        parts = []
        for fig in figs:
            buf = io.StringIO()
            fig.savefig(buf, format="svg")
            plt.close(fig)
            svg = buf.getvalue()
            parts.append(svg[svg.index("<svg") :])
        dest.write_text(page.format(head="", body="".join(parts)), encoding="utf-8")
    elif lib == "altair":
        import altair as alt

        rows = [{"t": x * 1000, "rate": y, "status": k} for k in ("ok", "failed", "invalid")
                for x, y in zip(tp["x"], tp["ys"][k], strict=True)]  # fmt: skip
        charts = [
            alt.Chart(alt.Data(values=rows)).mark_line(interpolate="step-after")
            .encode(x="t:T", y="rate:Q", color="status:N")
            .properties(width=700, height=220, title="Throughput")
        ]  # fmt: skip
        for title, h in (("Latency", lat), ("Completion tokens", tok)):
            vals = [{"x": x, "n": n, "g": k} for k, v in h["ys"].items()
                    for x, n in zip(h["x"], v, strict=True)]  # fmt: skip
            charts.append(
                alt.Chart(alt.Data(values=vals)).mark_bar().encode(x="x:Q", y="n:Q", color="g:N")
                .properties(width=700, height=220, title=title)
            )  # fmt: skip
        dest.write_text(alt.vconcat(*charts).to_html(inline=True), encoding="utf-8")
    elif lib == "bokeh":
        from bokeh.embed import file_html
        from bokeh.layouts import column
        from bokeh.plotting import figure
        from bokeh.resources import INLINE

        p = figure(height=250, width=800, x_axis_type="datetime", title="Throughput")
        xs = [x * 1000 for x in tp["x"]]
        for k, c in zip(("ok", "failed", "invalid"), ("green", "red", "orange"), strict=True):
            p.step(xs, tp["ys"][k], legend_label=k, color=c, mode="after")
        figs = [p]
        for title, h in (("Latency", lat), ("Completion tokens", tok)):
            q = figure(height=250, width=800, title=title)
            for k, v in h["ys"].items():
                q.vbar(x=[x + h["step"] / 2 for x in h["x"]], top=v, width=h["step"],
                       legend_label=k, alpha=0.7)  # fmt: skip
            figs.append(q)
        dest.write_text(file_html(column(*figs), INLINE, "bokeh"), encoding="utf-8")
    elif lib == "uplot":
        js = (STATIC / "uPlot.iife.min.js").read_text()
        css = (STATIC / "uPlot.min.css").read_text()
        data = json.dumps(s).replace("<", "\\u003c")
        app = """
const S = JSON.parse(document.getElementById('d').textContent);
function mk(title, s, time) {
  const names = Object.keys(s.ys);
  const series = [{}].concat(names.map((n, i) => ({label: n, stroke: ['#2a9d8f','#d62839','#e9a23b','#888'][i % 4],
    paths: uPlot.paths.stepped({align: 1}), scale: n === 'concurrency' ? 'c' : 'y'})));
  new uPlot({title, width: 800, height: 250, scales: {x: {time}}, series},
            [s.x].concat(names.map(n => s.ys[n])), document.body);
}
mk('Throughput', S.throughput, true); mk('Latency', S.latency, false); mk('Completion tokens', S.tokens, false);
"""
        head = f"<style>{css}</style>"
        body = (f"<script type='application/json' id='d'>{data}</script>"
                f"<script>{js}</script><script>{app}</script>")  # fmt: skip
        dest.write_text(page.format(head=head, body=body), encoding="utf-8")
    else:
        raise SystemExit(f"unknown library {lib}")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def compare_libraries(out: Path, work: Path, loads: int) -> list[dict[str, Any]]:
    libs = work / "libs"
    series = series_file(out, work / "series.json")
    rows = []
    with chromium() as ctx:
        for lib, packages in LIBS.items():
            target = libs / lib
            if packages and not (target / ".done").exists():
                shutil.rmtree(target, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                                str(target), *packages], check=True)  # fmt: skip
                (target / ".done").touch()
            if packages:
                size = du(target)
                pil = sum(du(target / n) for n in ("PIL", "pillow.libs") if (target / n).exists())
            else:
                size = sum(
                    (STATIC / n).stat().st_size for n in ("uPlot.iife.min.js", "uPlot.min.css")
                )
                pil = 0
            env = {**os.environ, "PYTHONPATH": str(target) if packages else ""}
            page = work / f"plots-{lib}.html"
            gen = []
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--draw", lib, str(series), str(page)],
                               check=True, env=env)  # fmt: skip
                gen.append(time.perf_counter() - t0)
            drawn = []
            for _ in range(loads):
                p = ctx.new_page()
                p.goto(page.as_uri(), wait_until="commit")
                p.wait_for_function(DRAWN[lib], polling="raf", timeout=60_000)
                drawn.append(p.evaluate("performance.now()"))
                p.close()
            rows.append({"lib": lib, "install_mb": size / 1e6, "install_no_pillow_mb": (size - pil) / 1e6,
                         "gen_s": statistics.median(gen), "page_kb": page.stat().st_size / 1e3,
                         "load_ms": statistics.median(drawn), "load_min": min(drawn),
                         "load_max": max(drawn)})  # fmt: skip
    return rows


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--loads", type=int, default=7)
    ap.add_argument("--cold", type=int, default=3, help="loads in a freshly started browser")
    ap.add_argument("--builds", type=int, default=2)
    ap.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "caption-report-bench"
    )
    ap.add_argument("--libs", action="store_true", help="also compare plotting libraries")
    ap.add_argument("--draw", nargs=3, metavar=("LIB", "SERIES", "DEST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.draw:
        draw(args.draw[0], Path(args.draw[1]), Path(args.draw[2]))
        return 0
    if not Path(CHROMIUM).exists():
        print(f"bench/report.py: no Chromium at {CHROMIUM} (apt-get install -y chromium)")
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    print(f"## caption report, {args.rows:,} rows ({started:%Y-%m-%d %H:%M} UTC; {load()})\n")
    t0 = time.perf_counter()
    out = dataset(args.work, args.rows)
    rows = read_rows(out)
    print(
        f"dataset: {out} ({rows.num_rows:,} rows; made or found in {time.perf_counter() - t0:.1f}s)\n"
    )
    report = args.work / f"report-{args.rows}.html"
    builds = generation(out, report, args.builds)
    print(
        "| build | total s | read | summarise | thumbnails | render + write | thumbnails made | file MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, (total, t) in enumerate(builds, 1):
        print(f"| {i} | {total:.2f} | {t.read_s:.2f} | {t.summarise_s:.2f} | {t.thumbnails_s:.2f} | "
              f"{t.render_s:.2f} | {t.thumbnails:,} | {t.bytes / 1e6:.1f} |")  # fmt: skip
    rates = thumb_rates(args.work / f"images-{args.rows}", 2000)
    print("\nthumbnails (160 px, q70), 2,000 images: " + ", ".join(
        f"{w} thread{'s' if w > 1 else ''} {r:,.0f}/s" for w, r in rates.items()))  # fmt: skip
    loads = []
    for _ in range(args.cold):  # each in a browser just started: the first page it opens
        with chromium() as ctx:
            loads += [{**x, "kind": "cold"} for x in page_loads(ctx, report, 1)]
    with chromium() as ctx:
        loads += [{**x, "kind": "warm"} for x in page_loads(ctx, report, args.loads)]
    print(f"\n{load()}\n")
    print(
        "| load | browser | response end ms | script start | gallery drawn | all drawn | painted | "
        "first search (handler / painted ms) | next search | status filter | console errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, x in enumerate(loads, 1):
        sf, sa, st = x["search_first"], x["search_again"], x["status_filter"]
        print(f"| {i} | {x['kind']} | {x['response_end']:.0f} | {x['start']:.0f} | {x['gallery']:.0f} | "
              f"{x['all']:.0f} | {x['painted']:.0f} | {sf[0]:.0f} / {sf[1]:.0f} ({sf[2]} shown) | "
              f"{sa[0]:.0f} / {sa[1]:.0f} | {st[0]:.0f} / {st[1]:.0f} ({st[3]}) | {len(x['errors'])} |")  # fmt: skip
    for kind in ("cold", "warm"):
        painted = [x["painted"] for x in loads if x["kind"] == kind]
        if painted:
            print(f"\npainted, {kind}: median {statistics.median(painted):.0f} ms, min {min(painted):.0f}, "
                  f"max {max(painted):.0f} over {len(painted)} loads ({'under' if max(painted) < 2000 else 'OVER'} 2 s)")  # fmt: skip
    if args.libs:
        libs = compare_libraries(out, args.work, args.loads)
        print(f"\n{load()}\n")
        print(
            "| library | install MB (deps incl.) | without Pillow | generation s (fresh process) | "
            "page KB | load until drawn ms (median, min-max) |"
        )
        print("|---|---|---|---|---|---|")
        for r in libs:
            print(f"| {r['lib']} | {r['install_mb']:.1f} | {r['install_no_pillow_mb']:.1f} | {r['gen_s']:.2f} | "
                  f"{r['page_kb']:,.0f} | {r['load_ms']:.0f} ({r['load_min']:.0f}-{r['load_max']:.0f}) |")  # fmt: skip
    print(f"\nfinished {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

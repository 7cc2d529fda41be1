"""`caption sim --api-key`: the simulator requires a key as `vllm serve --api-key` does, and
`caption run` says what to do when it has none or the wrong one.

vLLM 0.32's AuthenticationMiddleware (vllm/entrypoints/serve/middleware/authenticate.py):
paths starting with /v1, /v2, /inference or /cohere need ``Authorization: Bearer <key>``
(scheme in any case, one of the keys), else 401 with Starlette's JSON ``{"error":
"Unauthorized"}``; OPTIONS and every other path (/health, /metrics, /version) pass. The key
comes from --api-key, else the VLLM_API_KEY environment variable.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.dataset as ds
import pytest

from pipeline.cli import build_parser, main
from pipeline.client import error_for
from pipeline.config import EndpointConfig
from pipeline.preflight import key_source
from pipeline.sim import SimConfig, SimServer
from pipeline.sim.cli import add_arguments, config_from_args

KEY = "sk-sim-4f1c"
BODY = {
    "model": "gemma3-27b",
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 4,
}


@pytest.fixture
def locked() -> Iterator[SimServer]:
    with SimServer(SimConfig(slots=8, api_keys=(KEY,))) as server:
        yield server


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VLLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the server ---------------------------------------------------------------------------


class TestServer:
    def test_v1_needs_the_key(self, locked: SimServer) -> None:
        """Without the key, /v1/models and chat answer vLLM's exact 401; the chat request
        never reaches the engine (counted apart, as 'unauthorized')."""
        with httpx.Client(base_url=locked.url) as client:
            r = client.get("/v1/models")
            assert r.status_code == 401
            assert r.content == b'{"error":"Unauthorized"}'
            assert r.headers["content-type"].startswith("application/json")
            assert client.post("/v1/chat/completions", json=BODY).status_code == 401
        stats = locked.stats()
        assert stats["requests"] == 0 and stats["unauthorized"] == 2

    @pytest.mark.parametrize(
        "header",
        [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer  {KEY}", KEY, "Bearer"],
    )
    def test_wrong_or_missing_key(self, locked: SimServer, header: str | None) -> None:
        headers = {} if header is None else {"Authorization": header}
        r = httpx.get(locked.base_url + "/models", headers=headers)
        assert r.status_code == 401

    @pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
    def test_the_key_opens_v1(self, locked: SimServer, scheme: str) -> None:
        headers = {"Authorization": f"{scheme} {KEY}"}
        with httpx.Client(base_url=locked.base_url, headers=headers) as client:
            assert client.get("/models").json()["data"][0]["id"] == "gemma3-27b"
            r = client.post("/chat/completions", json=BODY)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]

    def test_open_paths(self, locked: SimServer) -> None:
        """/health, /version, /metrics (vLLM's) and /sim/* (the simulator's) need no key."""
        with httpx.Client(base_url=locked.url) as client:
            for path in ("/health", "/version", "/metrics", "/sim/stats"):
                assert client.get(path).status_code == 200, path

    def test_guard_comes_before_routing(self, locked: SimServer) -> None:
        """As vLLM's middleware: an unknown /v1 path is 401 without the key, 404 with it;
        other guarded prefixes too; OPTIONS passes the guard."""
        with httpx.Client(base_url=locked.url) as client:
            assert client.get("/v1/nothing-here").status_code == 401
            assert client.get("/v2/models").status_code == 401
            assert client.get("/v1/nothing-here", headers=bearer(KEY)).status_code == 404
            assert client.get("/nothing-here").status_code == 404
            assert client.options("/v1/models").status_code == 405

    def test_several_keys(self) -> None:
        with SimServer(SimConfig(api_keys=("one", "two"))) as sim:
            for key, status in (("one", 200), ("two", 200), ("three", 401)):
                assert (
                    httpx.get(sim.base_url + "/models", headers=bearer(key)).status_code == status
                )

    def test_no_key_configured_is_open(self, sim: SimServer) -> None:
        assert httpx.get(sim.base_url + "/models").status_code == 200
        assert httpx.get(sim.base_url + "/models", headers=bearer("any")).status_code == 200

    def test_empty_key_is_refused(self) -> None:
        with pytest.raises(ValueError, match="must not be empty"):
            SimConfig(api_keys=("",))

    def test_key_not_in_repr(self) -> None:
        assert KEY not in repr(SimConfig(api_keys=(KEY,)))


# --- the command line ----------------------------------------------------------------------


def sim_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caption sim")
    add_arguments(parser)
    return parser


class TestCommandLine:
    def test_flag_repeatable(self) -> None:
        args = sim_parser().parse_args(["--api-key", "a", "--api-key", "b"])
        assert config_from_args(args, environ={}).api_keys == ("a", "b")

    def test_env_as_vllm(self) -> None:
        """Without --api-key the key is VLLM_API_KEY's, as for `vllm serve`; the flag wins."""
        args = sim_parser().parse_args([])
        assert config_from_args(args, environ={"VLLM_API_KEY": "e"}).api_keys == ("e",)
        assert config_from_args(args, environ={"VLLM_API_KEY": ""}).api_keys == ()
        assert config_from_args(args, environ={"OPENAI_API_KEY": "o"}).api_keys == ()
        flagged = sim_parser().parse_args(["--api-key", "f"])
        assert config_from_args(flagged, environ={"VLLM_API_KEY": "e"}).api_keys == ("f",)

    def test_help_shows_defaults_and_readable_faults(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`caption sim --help`: defaults, what each fault does, --api-key; no field names."""
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["sim", "--help"])
        assert exc.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # unwrapped
        for shown in (
            "--port PORT port; 0 = pick a free one (default: 8102)",
            "(default: gemma3-27b)",
            "--slots N requests running at once",
            "(default: 64)",
            "--fault-500 P answer 500 Internal Server Error after the service time",
            "--fault-reset P drop the connection with a TCP reset",
            "--fault-empty P answer 200 with an empty choices list",
            "keep their sum <= 1",
            "--api-key KEY require 'Authorization: Bearer KEY' on /v1/*",
            "(default: $VLLM_API_KEY if set, else no key)",
        ):
            assert shown in text, shown
        for internal in ("error_429", "empty_choices", "a error", "fault per chat request"):
            assert internal not in text, internal


@pytest.mark.slow
def test_caption_sim_takes_the_key_from_vllm_api_key() -> None:
    """`VLLM_API_KEY=K caption sim`: its start line says a key is required (never which),
    and /v1 answers 401 without it, 200 with it."""
    env = {**os.environ, "VLLM_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sim", "--port", "0"],
        cwd=Path(__file__).parents[1], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once listening
        assert "API key from $VLLM_API_KEY required on /v1" in line, line
        assert KEY not in line
        url = line.split(" on ", 1)[1].split()[0]
        assert httpx.get(url + "/models").status_code == 401
        assert httpx.get(url + "/models", headers=bearer(KEY)).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


# --- caption run against it ----------------------------------------------------------------


def run_args(sim: SimServer, root: Path, out: Path) -> list[str]:
    return [
        "run", "--endpoint", sim.base_url, "--input", str(root), "--output", str(out),
        "--prompt", "Describe", "--no-progress", "--flush-interval", "0.5",
    ]  # fmt: skip


class TestCaptionRun:
    @pytest.mark.usefixtures("no_env_key")
    def test_without_a_key_stops_at_preflight(
        self,
        locked: SimServer,
        images: list[Path],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """No key: exit 2 before any image is sent, saying a key is needed and where it goes."""
        code = main(run_args(locked, images[0].parent.parent, tmp_path / "out"))
        err = capsys.readouterr().err
        assert code == 2
        assert "/models answered 401" in err
        assert "the server requires an API key and none was sent: set VLLM_API_KEY" in err
        assert "[endpoint] api_key_env" in err
        assert "refused" not in err
        assert locked.stats()["requests"] == 0

    @pytest.mark.usefixtures("no_env_key")
    def test_wrong_key_is_refused(
        self,
        locked: SimServer,
        images: list[Path],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("VLLM_API_KEY", "not-the-key")
        code = main(run_args(locked, images[0].parent.parent, tmp_path / "out"))
        err = capsys.readouterr().err
        assert code == 2
        assert "the API key was refused; check the key in VLLM_API_KEY" in err
        assert "not-the-key" not in err  # the key itself is never printed
        assert locked.stats()["requests"] == 0

    @pytest.mark.usefixtures("no_env_key")
    def test_with_vllm_api_key_every_image_is_captioned(
        self,
        locked: SimServer,
        images: list[Path],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("VLLM_API_KEY", KEY)
        out = tmp_path / "out"
        assert main(run_args(locked, images[0].parent.parent, out)) == 0
        rows = ds.dataset(out, format="parquet").to_table().to_pylist()
        assert len(rows) == len(images) and all(r["status"] == "ok" for r in rows)
        stats = locked.stats()
        assert stats["requests"] == len(images) and stats["unauthorized"] == 0


# --- the messages, pure ------------------------------------------------------------------------


class TestMessages:
    def test_error_for_a_chat_answer(self) -> None:
        """A 401 during the run (e.g. the server restarted with a key) says the same."""
        unauthorized = httpx.Response(401, json={"error": "Unauthorized"})
        none_sent = str(error_for(unauthorized, key_sent=False))
        assert none_sent.startswith('HTTP 401: {"error":"Unauthorized"} (the server requires')
        assert "none was sent: set VLLM_API_KEY (or [endpoint] api_key_env)" in none_sent
        assert "was refused" in str(error_for(unauthorized, key_sent=True))
        assert str(error_for(unauthorized)) == 'HTTP 401: {"error":"Unauthorized"}'
        forbidden = str(error_for(httpx.Response(403, text="no"), key_sent=False))
        assert "no API key was sent: if the server needs one, set VLLM_API_KEY" in forbidden
        assert str(error_for(httpx.Response(400, text="bad"), key_sent=False)) == "HTTP 400: bad"

    def test_key_source(self, tmp_path: Path) -> None:
        """The refused message names where the key came from (never the key)."""
        assert key_source(EndpointConfig(), environ={"OPENAI_API_KEY": "o"}) == "OPENAI_API_KEY"
        both = {"VLLM_API_KEY": "v", "OPENAI_API_KEY": "o"}
        assert key_source(EndpointConfig(), environ=both) == "VLLM_API_KEY"
        named = EndpointConfig(api_key_env="MY_KEY")
        assert key_source(named, environ=both) == "MY_KEY ([endpoint] api_key_env)"
        filed = EndpointConfig(api_key_file=tmp_path / "key")
        assert key_source(filed) == f"[endpoint] api_key_file ({tmp_path / 'key'})"

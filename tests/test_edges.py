"""Edge cases of answers, configuration and secrets, end to end through the runner."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import anyio
import httpx
import pyarrow.dataset as ds
import pytest
from helpers import make_images

from pipeline.cli import main
from pipeline.config import Overrides, load_job
from pipeline.runner import Runner
from pipeline.sim import SimConfig, SimServer

SECRET = "sk-test-0123456789abcdef"


def answer(
    content: object, *, model: str = "gemma3-27b", reason: str = "stop"
) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": reason,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }


def run_args(url: str, root: Path, out: Path, *extra: str) -> list[str]:
    """``caption run`` arguments with the prompt "x"."""
    return ["run", "--endpoint", url, "--input", str(root), "--output", str(out), "--prompt", "x",
            *extra]  # fmt: skip


def run_with(handler: httpx.MockTransport, root: Path, out: Path) -> list[dict[str, object]]:
    job = load_job(
        None,
        Overrides(
            endpoint="http://server.test/v1",
            input=str(root),
            output=str(out),
            prompt="Describe.",
            retries=3,
            backoff_initial=0.01,
            no_progress=True,
        ),
    )
    anyio.run(Runner(job, api_key=None, transport=handler).run)
    return ds.dataset(out, format="parquet").to_table().to_pylist()


class TestAnswers:
    def test_content_null_then_good_is_retried(self, tmp_path: Path) -> None:
        """A 200 with content null is retried; the next good answer is kept."""
        calls: list[int] = []

        def handle(request: httpx.Request) -> httpx.Response:
            calls.append(1)
            return httpx.Response(200, json=answer(None if len(calls) == 1 else "a cat"))

        rows = run_with(
            httpx.MockTransport(handle), make_images(tmp_path / "i", 1)[0].parent, tmp_path / "o"
        )
        assert [(r["status"], r["caption"], r["attempts"]) for r in rows] == [("ok", "a cat", 2)]

    def test_length_is_kept_and_flagged_other_model_recorded(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """finish_reason=length stays ok and is counted; an answer from another model is noted."""

        def handle(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json=answer("cut", model="other-model", reason="length"))

        with caplog.at_level(logging.WARNING):
            rows = run_with(
                httpx.MockTransport(handle),
                make_images(tmp_path / "i", 2)[0].parent.parent,
                tmp_path / "o",
            )
        assert {(r["status"], r["finish_reason"], r["response_model"]) for r in rows} == {
            ("ok", "length", "other-model")
        }
        assert any("other-model" in r.getMessage() for r in caplog.records)

    def test_malformed_forever_fails_with_clear_error(self, tmp_path: Path) -> None:
        """Truncated JSON on every attempt ends as a failed row saying why, not a crash."""

        def handle(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=b'{"choices": [{"mess')

        rows = run_with(
            httpx.MockTransport(handle), make_images(tmp_path / "i", 1)[0].parent, tmp_path / "o"
        )
        assert rows[0]["status"] == "failed" and rows[0]["attempts"] == 4
        assert "not valid JSON" in str(rows[0]["error"])


class TestPreflight:
    def test_unreachable_endpoint_is_exit_2_before_reading_images(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Nothing listening: exit 2 with a hint, and no output written."""
        root = make_images(tmp_path / "i", 2)[0].parent
        code = main(
            run_args(
                "http://127.0.0.1:9/v1", str(root), str(tmp_path / "o"), "--connect-timeout", "2"
            )
        )
        assert code == 2
        assert "cannot reach" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()

    def test_max_tokens_over_max_model_len_is_exit_2(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """max_tokens above the server's max_model_len is found before any request."""
        root = make_images(tmp_path / "i", 2)[0].parent
        with SimServer(SimConfig(max_model_len=2048)) as sim:
            code = main(
                run_args(sim.base_url, str(root), str(tmp_path / "o"), "--max-tokens", "4096")
            )
            assert sim.stats()["requests"] == 0
        assert code == 2
        assert "max_model_len=2048" in capsys.readouterr().err

    def test_unknown_model_lists_served_names(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A model the server does not serve: exit 2 naming the served models."""
        root = make_images(tmp_path / "i", 1)[0].parent
        with SimServer(SimConfig(model="gemma3-27b")) as sim:
            code = main(
                [
                    "run",
                    "--endpoint",
                    sim.base_url,
                    "--model",
                    "gpt-4o",
                    "--input",
                    str(root),
                    "--output",
                    str(tmp_path / "o"),
                    "--prompt",
                    "x",
                ]
            )
        assert code == 2
        assert "it serves: gemma3-27b" in capsys.readouterr().err


class TestSecrets:
    def test_key_never_stored_or_logged_and_files_not_world_writable(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """The API key (from a file) reaches the server but no output file, log or metadata."""
        seen: list[str] = []

        def handle(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers.get("authorization", ""))
            if request.url.path.endswith("/models"):
                return httpx.Response(
                    200, json={"data": [{"id": "gemma3-27b", "max_model_len": 4096}]}
                )
            return httpx.Response(200, json=answer("ok"))

        key_file = tmp_path / "key"
        key_file.write_text(SECRET + "\n")
        root = make_images(tmp_path / "i", 3)[0].parent
        job = load_job(
            None,
            Overrides(
                endpoint="http://server.test/v1",
                input=str(root),
                output=str(tmp_path / "o"),
                prompt="x",
                api_key_file=str(key_file),
                no_progress=True,
            ),
        )
        from pipeline.client import resolve_api_key

        with caplog.at_level(logging.DEBUG):
            anyio.run(
                Runner(
                    job,
                    api_key=resolve_api_key(job.endpoint),
                    transport=httpx.MockTransport(handle),
                ).run
            )
        assert seen and all(h == f"Bearer {SECRET}" for h in seen)
        for f in (tmp_path / "o").iterdir():
            assert SECRET.encode() not in f.read_bytes(), f.name
            assert not f.stat().st_mode & stat.S_IWOTH, f.name
        assert SECRET not in caplog.text + json.dumps(job.public_dict())

    def test_server_error_with_base64_is_scrubbed(self) -> None:
        """A server message echoing a data URI is stored without the base64 payload."""
        from pipeline.client import server_message

        body = {"error": {"message": "bad image data:image/jpeg;base64," + "QUJD" * 100}}
        msg = server_message(httpx.Response(400, json=body))
        assert "QUJDQUJD" not in msg and "<removed>" in msg


class TestReviewFindings:
    def test_absurd_token_counts_and_lone_surrogates_do_not_break_the_output(
        self, tmp_path: Path
    ) -> None:
        """A count beyond int32 is dropped, a lone surrogate replaced; run and rerun work."""

        def handle(request: httpx.Request) -> httpx.Response:
            body = answer("caf\\ud800 ok")
            body["usage"] = {"prompt_tokens": 2**40, "completion_tokens": -3}
            raw = json.dumps(body).replace("caf\\\\ud800", "caf\\ud800")
            return httpx.Response(200, content=raw.encode())

        root = make_images(tmp_path / "i", 2)[0].parent
        rows = run_with(httpx.MockTransport(handle), root, tmp_path / "o")
        assert {(r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in rows} == {
            ("ok", None, None)
        }
        assert all(str(r["caption"]).startswith("caf") for r in rows)
        assert run_with(httpx.MockTransport(handle), root, tmp_path / "o") == rows  # rerun: no-op

    def test_edit_that_restores_size_and_mtime_is_captioned_again(self, tmp_path: Path) -> None:
        """Flipping a byte and restoring mtime still changes the key (ctime/inode in the cache)."""
        import os

        root = make_images(tmp_path / "i", 3)[0].parent
        target = sorted(root.glob("*.jpg"))[0]
        with SimServer(SimConfig()) as sim:
            args = run_args(sim.base_url, str(root), str(tmp_path / "o"), "--no-progress")
            assert main(args) == 0
            st = target.stat()
            data = bytearray(target.read_bytes())
            data[-3] ^= 0x01  # inside the JPEG entropy data: still decodable
            target.write_bytes(bytes(data))
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
            sim.reset_stats()
            assert main(args) == 0
            assert sim.stats()["requests"] == 1

    def test_stream_in_extra_is_a_config_error(self, tmp_path: Path) -> None:
        """extra may not switch on streaming (one non-streamed answer per request is read)."""
        from pipeline.errors import ConfigError

        root = make_images(tmp_path / "i", 1)[0].parent
        with pytest.raises(ConfigError, match="stream"):
            load_job(
                None,
                Overrides(
                    input=str(root), output=str(tmp_path / "o"), prompt="x", extra={"stream": True}
                ),
            )

    def test_unrecoverable_journal_segment_is_moved_aside(self, tmp_path: Path) -> None:
        """A journal segment that cannot become a part is kept aside; the run still starts."""
        from pipeline.journal import recover
        from pipeline.schema import SCHEMA

        seg = tmp_path / "_caption_journal-r1-00001.jsonl"
        seg.write_text(json.dumps({"key": "k", "status": "ok", "prompt_tokens": 2**40}) + "\n")
        assert recover(tmp_path, SCHEMA) == 0
        assert not seg.exists()
        assert (tmp_path / (seg.name + ".unreadable")).exists()
        assert not list(tmp_path.glob("part-*"))


class TestSlowDrip:
    @pytest.mark.anyio
    async def test_slow_drip_answer_hits_the_whole_request_deadline(self) -> None:
        """A server that drips one byte every 0.2 s is cut off at timeout + connect timeout."""
        from pipeline.client import ChatClient
        from pipeline.config import EndpointConfig
        from pipeline.errors import RetryableError

        async def drip(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await stream.receive()
                await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                with anyio.move_on_after(10):
                    while True:
                        await stream.send(b" ")
                        await anyio.sleep(0.2)

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        endpoint = EndpointConfig(
            url=f"http://127.0.0.1:{port}/v1", timeout=1.0, connect_timeout=0.5
        )
        client = ChatClient(endpoint, concurrency=1, api_key=None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, drip)
            t0 = anyio.current_time()
            with pytest.raises(RetryableError, match="no complete answer within"):
                await client.complete({"model": "m", "messages": []})
            assert anyio.current_time() - t0 < 3.0
            await client.aclose()
            tg.cancel_scope.cancel()
        await listener.aclose()

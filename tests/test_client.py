"""The HTTP client: answer parsing, error classification and the API key."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from pipeline.client import (
    MAX_ANSWER_BYTES,
    ChatClient,
    Completion,
    parse_completion,
    resolve_api_key,
    server_message,
)
from pipeline.config import EndpointConfig
from pipeline.errors import ConfigError, PermanentError, RetryableError

URL = "http://vllm.test:8102/v1"

# The shape of a real vLLM 0.32.0 answer (see /work/shared/vllm-cpu/README.md, "HTTP facts").
VLLM_OK: dict[str, Any] = {
    "id": "chatcmpl-aa36edff4e8e588f",
    "object": "chat.completion",
    "created": 1795531866,
    "model": "gemma3-27b",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "A cat on a windowsill.",
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            },
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }
    ],
    "service_tier": None,
    "system_fingerprint": "vllm-0.32.0-db2e256e",
    "usage": {
        "prompt_tokens": 293,
        "total_tokens": 309,
        "completion_tokens": 16,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    },
    "prompt_logprobs": None,
    "prompt_token_ids": None,
    "prompt_text": None,
    "kv_transfer_params": None,
    "ec_transfer_params": None,
    "metrics": None,
}
VLLM_400_MESSAGE = (
    "max_tokens=4096 cannot be greater than max_model_len=2048. Please request fewer output "
    "tokens. (parameter=max_tokens, value=4096)"
)
VLLM_400 = {
    "error": {
        "message": VLLM_400_MESSAGE,
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }
}
BODY: dict[str, Any] = {
    "model": "gemma3-27b",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe"}]}],
    "max_tokens": 16,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def with_choices(choices: Any) -> dict[str, Any]:
    return {**VLLM_OK, "choices": choices}


class TestParseCompletion:
    def test_vllm_answer(self) -> None:
        """A real-shaped vLLM answer yields caption, finish reason, token counts and model."""
        completion = parse_completion(httpx.Response(200, json=VLLM_OK))
        assert completion == Completion(
            caption="A cat on a windowsill.",
            finish_reason="length",
            prompt_tokens=293,
            completion_tokens=16,
            model="gemma3-27b",
        )

    def test_missing_usage_and_model_are_none(self) -> None:
        """Optional fields that are absent or of the wrong type become None."""
        data = {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "9"}}
        completion = parse_completion(httpx.Response(200, json=data))
        assert completion.caption == "x"
        assert completion.finish_reason is None
        assert completion.prompt_tokens is None
        assert completion.completion_tokens is None
        assert completion.model is None

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            (b"<html>Bad gateway</html>", "not valid JSON"),
            (b"", "not valid JSON"),
            (b"[1, 2]", "not an object"),
            (b'"text"', "not an object"),
            (json.dumps(with_choices([])).encode(), "no choices"),
            (json.dumps(with_choices(None)).encode(), "no choices"),
            (json.dumps(with_choices({"0": {}})).encode(), "no choices"),
            (json.dumps({"id": "x"}).encode(), "no choices"),
            (
                json.dumps(with_choices([{"message": {"role": "assistant", "content": None}}])),
                "content is missing",
            ),
            (json.dumps(with_choices([{"message": {"role": "assistant"}}])), "content"),
            (json.dumps(with_choices([{"finish_reason": "stop"}])), "content"),
            (json.dumps(with_choices([None])), "content"),
            (json.dumps(with_choices([{"message": {"content": ["a", "b"]}}])), "content"),
        ],
    )
    def test_malformed_200_is_retryable(self, content: bytes | str, reason: str) -> None:
        """A 200 whose body is not a usable completion raises RetryableError (status 200)."""
        raw = content.encode() if isinstance(content, str) else content
        with pytest.raises(RetryableError, match=reason) as info:
            parse_completion(httpx.Response(200, content=raw))
        assert info.value.status == 200
        assert info.value.retry_after is None

    def test_oversized_answer_is_retryable(self) -> None:
        """An answer larger than MAX_ANSWER_BYTES is rejected before JSON parsing."""
        big = json.dumps(with_choices([{"message": {"content": "x" * MAX_ANSWER_BYTES}}]))
        with pytest.raises(RetryableError, match="too large"):
            parse_completion(httpx.Response(200, content=big.encode()))


class TestServerMessage:
    @pytest.mark.parametrize(
        ("response", "expected"),
        [
            (httpx.Response(400, json=VLLM_400), VLLM_400_MESSAGE),
            (httpx.Response(502, text="  upstream down \n"), "upstream down"),
            (httpx.Response(400, json={"error": "just a string"}), '{"error":"just a string"}'),
            (httpx.Response(422, json={"detail": "bad"}), '{"detail":"bad"}'),
            (httpx.Response(503, content=b""), "Service Unavailable"),
            (httpx.Response(500, json={"error": {"message": 42}}), '{"error":{"message":42}}'),
        ],
    )
    def test_table(self, response: httpx.Response, expected: str) -> None:
        """The error message is taken from error.message, else the body, else the reason."""
        assert server_message(response) == expected

    def test_long_body_is_cut(self) -> None:
        """A long non-JSON body is cut to 500 characters."""
        assert server_message(httpx.Response(500, text="e" * 5000)) == "e" * 500


Handler = Callable[[httpx.Request], httpx.Response]


async def complete(handler: Handler, *, api_key: str | None = None) -> Completion:
    """Send BODY once through a ChatClient backed by ``handler``."""
    client = ChatClient(
        EndpointConfig(url=URL),
        concurrency=4,
        api_key=api_key,
        transport=httpx.MockTransport(handler),
    )
    try:
        return await client.complete(BODY)
    finally:
        await client.aclose()


class TestChatClient:
    @pytest.mark.anyio
    async def test_200_returns_completion(self) -> None:
        """A 200 answer is parsed; the request is a JSON POST to <url>/chat/completions."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json=VLLM_OK)

        completion = await complete(handler)
        assert completion.caption == "A cat on a windowsill."
        assert completion.completion_tokens == 16
        [request] = seen
        assert request.method == "POST"
        assert str(request.url) == URL + "/chat/completions"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("caption/")
        assert request.headers["host"] == httpx.URL(URL).netloc.decode()
        assert int(request.headers["content-length"]) == len(request.content)
        assert json.loads(request.content) == BODY

    @pytest.mark.anyio
    async def test_400_is_permanent_with_server_message(self) -> None:
        """A 400 with a vLLM error body raises PermanentError carrying the server's message."""
        with pytest.raises(PermanentError) as info:
            await complete(lambda request: httpx.Response(400, json=VLLM_400))
        assert VLLM_400_MESSAGE in str(info.value)
        assert "400" in str(info.value)
        assert info.value.status == 400
        assert not isinstance(info.value, RetryableError)

    @pytest.mark.anyio
    @pytest.mark.parametrize("status", [401, 403, 404, 422, 301])
    async def test_other_non_retryable_statuses_are_permanent(self, status: int) -> None:
        """Other 4xx (and an unfollowed redirect) raise PermanentError with that status."""
        with pytest.raises(PermanentError) as info:
            await complete(lambda request: httpx.Response(status, text="nope"))
        assert info.value.status == status

    @pytest.mark.anyio
    async def test_429_with_retry_after(self) -> None:
        """A 429 with Retry-After: 2 raises RetryableError with retry_after == 2."""
        with pytest.raises(RetryableError) as info:
            await complete(
                lambda request: httpx.Response(
                    429, headers={"Retry-After": "2"}, json={"error": {"message": "slow down"}}
                )
            )
        assert info.value.retry_after == 2
        assert info.value.status == 429
        assert "slow down" in str(info.value)

    @pytest.mark.anyio
    @pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
    async def test_retryable_statuses(self, status: int) -> None:
        """408 and 5xx raise RetryableError without a retry_after when none is sent."""
        with pytest.raises(RetryableError) as info:
            await complete(lambda request: httpx.Response(status, text="busy"))
        assert info.value.status == status
        assert info.value.retry_after is None

    @pytest.mark.anyio
    async def test_malformed_200_is_retryable(self) -> None:
        """A 200 with a broken body raises RetryableError, not a crash."""
        with pytest.raises(RetryableError, match="no choices"):
            await complete(lambda request: httpx.Response(200, json=with_choices([])))

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("exc_type", "match"),
        [
            (httpx.ConnectError, "cannot connect: boom"),
            (httpx.ReadError, "connection error: ReadError"),
            (httpx.RemoteProtocolError, "connection error: RemoteProtocolError"),
            (httpx.ReadTimeout, "timeout: ReadTimeout"),
            (httpx.ConnectTimeout, "timeout: could not connect"),
            (httpx.WriteTimeout, "timeout: WriteTimeout"),
        ],
    )
    async def test_transport_errors_are_retryable(
        self, exc_type: type[httpx.TransportError], match: str
    ) -> None:
        """Connection errors and timeouts raise RetryableError with no status."""

        def handler(request: httpx.Request) -> httpx.Response:
            raise exc_type("boom", request=request)

        with pytest.raises(RetryableError, match=match) as info:
            await complete(handler)
        assert info.value.status is None

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("api_key", "expected"), [("sk-test-123", "Bearer sk-test-123"), (None, None), ("", None)]
    )
    async def test_authorization_header(self, api_key: str | None, expected: str | None) -> None:
        """Authorization: Bearer <key> is sent only when an API key is given."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json=VLLM_OK)

        await complete(handler, api_key=api_key)
        assert seen[0].headers.get("authorization") == expected

    @pytest.mark.anyio
    async def test_concurrent_requests_go_to_the_least_busy_shard(self) -> None:
        """Concurrency above one shard's size makes several pools; load spreads evenly."""
        in_flight = [0, 0, 0]
        peak = [0, 0, 0]
        release = anyio.Event()

        class Counting(httpx.AsyncBaseTransport):
            def __init__(self, index: int) -> None:
                self.index = index

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                in_flight[self.index] += 1
                peak[self.index] = max(peak[self.index], in_flight[self.index])
                await release.wait()
                in_flight[self.index] -= 1
                return httpx.Response(200, json=VLLM_OK)

        client = ChatClient(EndpointConfig(url=URL), concurrency=80, api_key=None)
        try:
            assert len(client.shards()) == 3  # ceil(80 / 32)
            for shard in client.shards():
                assert isinstance(shard, AiohttpTransport)
                await shard.aclose()
            client._shards = [Counting(i) for i in range(3)]
            async with anyio.create_task_group() as tg:
                for _ in range(18):
                    tg.start_soon(client.complete, BODY)
                await anyio.wait_all_tasks_blocked()
                assert in_flight == [6, 6, 6]
                release.set()
        finally:
            await client.aclose()
        assert peak == [6, 6, 6]


class TestResolveApiKey:
    @pytest.fixture(autouse=True)
    def _clean_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("VLLM_API_KEY", "OPENAI_API_KEY", "MY_KEY"):
            monkeypatch.delenv(name, raising=False)

    @pytest.mark.parametrize(
        ("env", "api_key_env", "expected"),
        [
            ({}, None, None),
            ({"VLLM_API_KEY": "v"}, None, "v"),
            ({"OPENAI_API_KEY": "o"}, None, "o"),
            ({"VLLM_API_KEY": "v", "OPENAI_API_KEY": "o"}, None, "v"),
            ({"VLLM_API_KEY": "", "OPENAI_API_KEY": "o"}, None, "o"),
            ({"MY_KEY": "m", "VLLM_API_KEY": "v"}, "MY_KEY", "m"),
            ({"MY_KEY": "m"}, None, None),
        ],
    )
    def test_table(
        self,
        monkeypatch: pytest.MonkeyPatch,
        env: dict[str, str],
        api_key_env: str | None,
        expected: str | None,
    ) -> None:
        """The named variable wins; otherwise VLLM_API_KEY, then OPENAI_API_KEY, else None."""
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert resolve_api_key(EndpointConfig(api_key_env=api_key_env)) == expected

    @pytest.mark.parametrize("value", [None, ""])
    def test_named_but_missing_is_config_error(
        self, monkeypatch: pytest.MonkeyPatch, value: str | None
    ) -> None:
        """A named variable that is unset or empty is a ConfigError naming it."""
        monkeypatch.setenv("VLLM_API_KEY", "fallback-not-used")
        if value is not None:
            monkeypatch.setenv("MY_KEY", value)
        with pytest.raises(ConfigError, match="MY_KEY"):
            resolve_api_key(EndpointConfig(api_key_env="MY_KEY"))

"""Preflight: judging the server's /models answer against the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.config import (
    EndpointConfig,
    ImageConfig,
    InputConfig,
    Job,
    PromptConfig,
    RunConfig,
)
from pipeline.errors import ConfigError
from pipeline.preflight import ServerInfo, check_models, preflight

URL = "http://vllm.test:8102/v1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_job(*max_tokens: int, model: str = "gemma3-27b") -> Job:
    prompts = tuple(
        PromptConfig(name=f"p{i}", text="Describe", max_tokens=n)
        for i, n in enumerate(max_tokens or (256,))
    )
    return Job(
        EndpointConfig(url=URL, model=model),
        InputConfig(root=Path("/nonexistent-input")),
        ImageConfig(),
        prompts,
        RunConfig(output=Path("/nonexistent-output")),
    )


def models(*entries: tuple[str, int | None]) -> dict[str, Any]:
    """A vLLM-shaped /v1/models answer."""
    data = []
    for name, max_len in entries:
        entry: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": 1795531866,
            "owned_by": "vllm",
            "root": "/models/x",
            "parent": None,
            "permission": [{}],
        }
        if max_len is not None:
            entry["max_model_len"] = max_len
        data.append(entry)
    return {"object": "list", "data": data}


class TestCheckModels:
    def test_ok_returns_server_info(self) -> None:
        """A served model with room for max_tokens gives the served names and max_model_len."""
        payload = models(("gemma3-27b", 2048), ("other", 4096))
        info = check_models(make_job(256, 2048), 200, payload, "OK")
        assert info == ServerInfo(models=("gemma3-27b", "other"), max_model_len=2048)

    def test_ok_without_max_model_len(self) -> None:
        """A server that reports no max_model_len skips the max_tokens check."""
        info = check_models(make_job(100_000), 200, models(("gemma3-27b", None)), "OK")
        assert info == ServerInfo(models=("gemma3-27b",), max_model_len=None)

    def test_model_missing_lists_served_names(self) -> None:
        """A model that is not served is a ConfigError listing what is served."""
        payload = models(("gemma3-4b", 2048), ("qwen2-vl", 8192))
        with pytest.raises(ConfigError) as info:
            check_models(make_job(), 200, payload, "OK")
        message = str(info.value)
        assert "'gemma3-27b'" in message
        assert "gemma3-4b, qwen2-vl" in message

    def test_no_models_served(self) -> None:
        """An empty model list says so."""
        with pytest.raises(ConfigError, match=r"\(none\)"):
            check_models(make_job(), 200, {"object": "list", "data": []}, "OK")

    def test_max_tokens_over_max_model_len(self) -> None:
        """A prompt whose max_tokens exceeds max_model_len is a ConfigError naming both."""
        with pytest.raises(ConfigError) as info:
            check_models(make_job(256, 4096), 200, models(("gemma3-27b", 2048)), "OK")
        message = str(info.value)
        assert "'p1'" in message
        assert "max_tokens=4096" in message
        assert "max_model_len=2048" in message

    def test_max_tokens_equal_to_max_model_len_is_allowed(self) -> None:
        """max_tokens == max_model_len passes the check (vLLM accepts it)."""
        info = check_models(make_job(2048), 200, models(("gemma3-27b", 2048)), "OK")
        assert info.max_model_len == 2048

    def test_max_model_len_of_the_matching_model_is_used(self) -> None:
        """The limit comes from the job's model entry, not another served model."""
        payload = models(("small", 512), ("gemma3-27b", 8192))
        assert check_models(make_job(4096), 200, payload, "OK").max_model_len == 8192

    @pytest.mark.parametrize("status", [401, 403])
    def test_auth_failure_mentions_api_key(self, status: int) -> None:
        """401/403 is a ConfigError that points at the API key."""
        with pytest.raises(ConfigError) as info:
            check_models(make_job(), status, {"error": {"message": "bad key"}}, "Unauthorized")
        message = str(info.value)
        assert "API key" in message
        assert str(status) in message
        assert "api_key_env" in message

    @pytest.mark.parametrize(
        ("status", "payload"),
        [
            (404, {"detail": "Not Found"}),
            (500, None),
            (200, None),
            (200, [1, 2]),
            (200, {"object": "list"}),
            (200, {"data": "gemma3-27b"}),
        ],
    )
    def test_not_a_models_answer(self, status: int, payload: object) -> None:
        """A non-200 or a body without a data list asks whether the URL is the /v1 base."""
        with pytest.raises(ConfigError, match="/v1"):
            check_models(make_job(), status, payload, "whatever")

    def test_entries_without_id_are_ignored(self) -> None:
        """Malformed entries in data are skipped, not a crash."""
        payload = {"data": [None, {"object": "model"}, {"id": 3}, {"id": "gemma3-27b"}]}
        assert check_models(make_job(), 200, payload, "OK").models == ("gemma3-27b",)


class TestPreflightHttp:
    @pytest.mark.anyio
    async def test_queries_models_with_key(self) -> None:
        """preflight GETs <url>/models with the bearer key and checks the answer."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json=models(("gemma3-27b", 2048)))

        info = await preflight(make_job(), "sk-1", transport=httpx.MockTransport(handler))
        assert info.models == ("gemma3-27b",)
        assert str(seen[0].url) == URL + "/models"
        assert seen[0].headers["authorization"] == "Bearer sk-1"

    @pytest.mark.anyio
    async def test_401_reports_server_message(self) -> None:
        """A 401 answer becomes a ConfigError with the server's message."""
        transport = httpx.MockTransport(
            lambda request: httpx.Response(401, json={"error": {"message": "Unauthorized key"}})
        )
        with pytest.raises(ConfigError, match="Unauthorized key"):
            await preflight(make_job(), None, transport=transport)

    @pytest.mark.anyio
    async def test_unreachable_server(self) -> None:
        """A connection error is a ConfigError asking whether the server runs."""

        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        with pytest.raises(ConfigError, match="cannot reach"):
            await preflight(make_job(), None, transport=httpx.MockTransport(handler))

"""The HTTP client: one chat-completion request body -> ``Completion`` or a classified error.

One attempt per call; the runner owns retries. Requests go straight to a few aiohttp-backed
httpx transports (``httpx-aiohttp``, the route openai-python took) of at most 32 connections
each, the least busy first. Measured on this project's 2-core machine (``make bench``): one
httpx client with one big pool falls from ~300 req/s at 16 concurrent requests to ~95 at 256;
small native httpx pools hold ~600-800; aiohttp-backed shards ~1,000-1,350. The shards are
called through httpx's transport API (``handle_async_request``), not through
``AsyncClient``: the client layer (URL merging, cookie jar, auth and redirect hooks), none of
which a POST to one fixed URL needs, cost more CPU per request than aiohttp itself (py-spy).
"""

from __future__ import annotations

import functools
import json
import os
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from . import __version__
from .breaker import OUTAGE_STATUS
from .config import DEFAULT_API_KEY_ENVS, EndpointConfig
from .errors import ConfigError, PermanentError, RetryableError
from .payload import encode_body
from .retry import is_retryable_status, parse_retry_after
from .stream import MAX_ANSWER_BYTES, StreamState

CONNECTIONS_PER_SHARD = 32
USER_AGENT = f"caption/{__version__}"


@dataclass(frozen=True, slots=True)
class Completion:
    caption: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str | None
    ttft_s: float | None = None  # time to first token, when streamed


def resolve_api_key(endpoint: EndpointConfig) -> str | None:
    """The API key: from ``api_key_file``, the named env var, else VLLM_API_KEY/OPENAI_API_KEY.

    Never from a flag (it would show in ``ps``); never logged or stored.
    """
    if endpoint.api_key_file is not None:
        try:
            key = endpoint.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read api_key_file {endpoint.api_key_file}: {exc}") from None
        if not key:
            raise ConfigError(f"api_key_file {endpoint.api_key_file} is empty")
        return key
    if endpoint.api_key_env:
        value = os.environ.get(endpoint.api_key_env)
        if not value:
            raise ConfigError(
                f"api_key_env is {endpoint.api_key_env!r} but that environment variable is "
                "not set (or empty); export it, or remove api_key_env for a server without a key"
            )
        return value
    for name in DEFAULT_API_KEY_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return None


_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]{16,}")


def scrub(text: str) -> str:
    """Remove base64 image data from a message before it is logged or stored."""
    return _DATA_URI.sub("data:...;base64,<removed>", text)


def server_message(response: httpx.Response) -> str:
    """The ``error.message`` of an OpenAI/vLLM error body, else the start of the body text."""
    try:
        data = response.json()
        message = data["error"]["message"]
        if isinstance(message, str):
            return scrub(message)[:2000]
    except (ValueError, KeyError, TypeError):
        pass
    text = response.text.strip()
    return scrub(text)[:500] if text else response.reason_phrase


def _valid_utf8(text: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``); Parquet needs valid UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _count(usage: dict[str, Any], name: str) -> int | None:
    value = usage.get(name)
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31
    return value if ok else None  # a nonsense count is dropped, never stored


def auth_advice(status: int, key_sent: bool) -> str:
    """What to do about a 401/403 answer, by whether an API key was sent."""
    if key_sent:
        return (
            "the API key was refused; check the key (VLLM_API_KEY or OPENAI_API_KEY, or the "
            "variable named by [endpoint] api_key_env, or [endpoint] api_key_file)"
        )
    if status == 401:
        return (
            "the server requires an API key and none was sent: set VLLM_API_KEY "
            "(or [endpoint] api_key_env)"
        )
    return (
        "no API key was sent: if the server needs one, set VLLM_API_KEY (or [endpoint] api_key_env)"
    )


def error_for(
    response: httpx.Response, key_sent: bool | None = None
) -> RetryableError | PermanentError:
    """The error for a non-200 answer: retryable (408/429/5xx) or permanent, with its message
    (a 401/403 also says what to do about the API key, when ``key_sent`` is known)."""
    message = f"HTTP {response.status_code}: {server_message(response)}"
    if response.status_code in (401, 403) and key_sent is not None:
        message += f" ({auth_advice(response.status_code, key_sent)})"
    if is_retryable_status(response.status_code):
        return RetryableError(
            message,
            status=response.status_code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            outage=response.status_code in OUTAGE_STATUS,
        )
    return PermanentError(message, status=response.status_code)


def parse_completion(response: httpx.Response) -> Completion:
    """Read a 200 answer; a malformed one (bad JSON, no choices, no text) is retryable."""
    if len(response.content) > MAX_ANSWER_BYTES:
        raise RetryableError(f"answer too large ({len(response.content):,} bytes)", status=200)
    try:
        data = json.loads(response.content)
    except ValueError:
        raise RetryableError("malformed answer: body is not valid JSON", status=200) from None
    if not isinstance(data, dict):
        raise RetryableError("malformed answer: JSON is not an object", status=200)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise RetryableError("malformed answer: no choices", status=200)
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise RetryableError("malformed answer: choices[0].message.content is missing", status=200)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    assert isinstance(usage, dict)

    return _completion(content, first.get("finish_reason"), usage, data.get("model"))


def _completion(
    text: str, reason: object, usage: dict[str, Any], model: object, ttft: float | None = None
) -> Completion:
    """A ``Completion`` from an answer's parts, streamed or not: strings made valid UTF-8,
    nonsense counts dropped."""
    return Completion(
        caption=_valid_utf8(text),
        finish_reason=_valid_utf8(reason) if isinstance(reason, str) else None,
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        model=_valid_utf8(model) if isinstance(model, str) else None,
        ttft_s=ttft,
    )


@functools.cache
def tls_context(insecure: bool) -> ssl.SSLContext:
    """One TLS context for every client of the run: building one costs ~30 ms (CA loading)."""
    return httpx.create_ssl_context(verify=not insecure)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The ``authorization`` header for ``api_key`` (none without a key)."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def tls_for(endpoint: EndpointConfig) -> ssl.SSLContext | bool:
    """The ``verify`` of an endpoint's clients: the shared context when a URL is https, else
    ``False``: plain http has no certificate to check, so the CA bundle is never loaded."""
    if any(url.startswith("https:") for url in endpoint.urls):
        return tls_context(endpoint.insecure)
    return False


def make_timeout(endpoint: EndpointConfig) -> httpx.Timeout:
    return httpx.Timeout(
        connect=endpoint.connect_timeout,
        read=endpoint.timeout,
        write=endpoint.timeout,
        pool=None,  # waiting for a free connection is bounded by our own concurrency
    )


class ChatClient:
    """Posts chat-completion bodies to one endpoint over sharded connection pools."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        concurrency: int,
        api_key: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
        url: str | None = None,
    ) -> None:
        self.base_url = url or endpoint.url
        self.url = httpx.URL(self.base_url + "/chat/completions")
        self.deadline = endpoint.timeout + endpoint.connect_timeout
        self.stream = endpoint.stream
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": USER_AGENT,
            **auth_headers(api_key),
        }
        self._headers = httpx.Headers(headers)
        self._key_sent = bool(api_key)
        self._extensions = {"timeout": make_timeout(endpoint).as_dict()}
        shards = max(1, -(-concurrency // CONNECTIONS_PER_SHARD))
        per_shard = -(-concurrency // shards)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        self._tls = tls_for(endpoint)
        self._limits = limits
        self._transport = transport
        # Made on the first request: a rerun with nothing to do never imports aiohttp (0.3 s).
        self._shards: list[httpx.AsyncBaseTransport] = []
        self._busy = [0] * shards

    def shards(self) -> list[httpx.AsyncBaseTransport]:
        """The connection pools, made on first use."""
        if not self._shards:
            from httpx_aiohttp import AiohttpTransport

            self._shards = [
                self._transport
                or AiohttpTransport(limits=self._limits, verify=self._tls, trust_env=False)
                for _ in self._busy
            ]
        return self._shards

    @property
    def in_flight(self) -> int:
        return sum(self._busy)

    async def complete(self, body: dict[str, Any]) -> Completion:
        """Send one request body; return the completion or raise Retryable/PermanentError."""
        return await self.send(encode_body(body, stream=self.stream))

    async def send(self, content: bytes) -> Completion:
        """``complete`` for a body already encoded with ``encode_body`` (retries reuse it)."""
        # The least busy shard, so no pool queues while another has free connections.
        shard = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[shard] += 1
        try:
            return await self._send(self.shards()[shard], content)
        finally:
            self._busy[shard] -= 1

    async def _send(self, transport: httpx.AsyncBaseTransport, content: bytes) -> Completion:
        request = httpx.Request(
            "POST", self.url, headers=self._headers, content=content, extensions=self._extensions
        )
        try:
            # httpx's read timeout restarts with every chunk; a slow drip must not hold a
            # worker for ever, so the whole exchange also has a deadline.
            with anyio.fail_after(self.deadline):
                response = await transport.handle_async_request(request)
                try:
                    if self.stream and response.status_code == 200:
                        return await self._streamed(response)
                    await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            raise RetryableError(
                f"timeout: no complete answer within {self.deadline:.0f}s"
            ) from None
        except httpx.ConnectTimeout:
            raise RetryableError("timeout: could not connect", outage=True) from None
        except httpx.TimeoutException as exc:
            raise RetryableError(f"timeout: {type(exc).__name__}") from None
        except httpx.ConnectError as exc:
            raise RetryableError(f"cannot connect: {exc}", certain=True) from None
        except httpx.TransportError as exc:
            raise RetryableError(
                f"connection error: {type(exc).__name__}: {exc}", outage=True
            ) from None
        except httpx.HTTPError as exc:  # e.g. a body that fails to decode
            raise RetryableError(f"bad response: {type(exc).__name__}: {exc}") from None
        if response.status_code == 200:
            return parse_completion(response)
        raise error_for(response, self._key_sent)

    async def _streamed(self, response: httpx.Response) -> Completion:
        t0 = time.perf_counter()
        ttft: float | None = None
        state = StreamState()
        async for line in response.aiter_lines():
            if state.feed(line):  # True once: the first piece of text
                ttft = time.perf_counter() - t0
        return _completion(state.text(), state.finish_reason, state.usage, state.model, ttft)

    async def aclose(self) -> None:
        for transport in self._shards:
            await transport.aclose()

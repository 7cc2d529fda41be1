"""Preflight: before any image is read, ask the server what it serves.

``GET <url>/models`` must answer, list the job's model, and (on vLLM) report a
``max_model_len`` that every prompt's ``max_tokens`` fits in. A prompt with a JSON Schema is
tried once per server with a text-only, one-token request carrying its ``response_format``: a
server without structured outputs (or one that cannot use that schema) refuses it with a 4xx,
and the run stops here rather than failing every image. Each problem is a ``ConfigError``
that says what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from .client import auth_advice, auth_headers, server_message, tls_for
from .config import DEFAULT_API_KEY_ENVS, EndpointConfig, Job, PromptConfig
from .errors import ConfigError
from .payload import encode_body
from .structured import response_format


@dataclass(frozen=True, slots=True)
class ServerInfo:
    models: tuple[str, ...]
    max_model_len: int | None


def key_source(endpoint: EndpointConfig, environ: Mapping[str, str] | None = None) -> str:
    """Where the API key sent came from, as ``resolve_api_key`` found it (never the key)."""
    if endpoint.api_key_file is not None:
        return f"[endpoint] api_key_file ({endpoint.api_key_file})"
    if endpoint.api_key_env:
        return f"{endpoint.api_key_env} ([endpoint] api_key_env)"
    env = os.environ if environ is None else environ
    return next((name for name in DEFAULT_API_KEY_ENVS if env.get(name)), "VLLM_API_KEY")


def check_models(
    job: Job,
    status: int,
    payload: object,
    reason: str,
    url: str | None = None,
    *,
    key_sent: bool = True,
) -> ServerInfo:
    """Pure part of the preflight: judge the ``/models`` answer against the job (``key_sent``:
    whether the request carried an API key, for what a 401/403 answer asks to fix)."""
    url = url or job.endpoint.url
    if status in (401, 403):
        if key_sent:
            advice = (
                f"the API key was refused; check the key in {key_source(job.endpoint)} (or "
                "name another variable with [endpoint] api_key_env / --api-key-env)"
            )
        else:
            advice = auth_advice(status, key_sent=False)
        raise ConfigError(f"{url}/models answered {status} ({reason}): {advice}")
    if status != 200 or not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ConfigError(
            f"{url}/models answered {status} ({reason}); is {url} the OpenAI base URL "
            "of a vLLM server (it usually ends in /v1)?"
        )
    entries = [e for e in payload["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)]
    models = tuple(e["id"] for e in entries)
    model = job.endpoint.model
    match = next((e for e in entries if e["id"] == model), None)
    if match is None:
        raise ConfigError(
            f"model {model!r} is not served at {url}; it serves: {', '.join(models) or '(none)'}."
            " Set [endpoint] model or --model to one of those names (vLLM's --served-model-name)"
        )
    max_len = match.get("max_model_len")
    max_len = max_len if isinstance(max_len, int) else None
    if max_len is not None:
        for prompt in job.prompts:
            if prompt.max_tokens > max_len:
                raise ConfigError(
                    f"prompt {prompt.name!r}: max_tokens={prompt.max_tokens} is more than the "
                    f"server's max_model_len={max_len}; lower max_tokens (or restart vLLM "
                    "with a larger --max-model-len)"
                )
    return ServerInfo(models, max_len)


async def preflight(
    job: Job,
    api_key: str | None,
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    probe_schemas: bool = True,
) -> ServerInfo:
    """Query every endpoint's ``/models`` and check the job against each; with
    ``probe_schemas`` also try each schema'd prompt (a chat request: ``--dry-run`` sends
    none)."""
    infos = [
        await _preflight_one(job, url, api_key, transport, probe_schemas)
        for url in job.endpoint.urls
    ]
    lens = [i.max_model_len for i in infos if i.max_model_len is not None]
    return ServerInfo(infos[0].models, min(lens) if lens else None)


async def _preflight_one(
    job: Job,
    base: str,
    api_key: str | None,
    transport: httpx.AsyncBaseTransport | None,
    probe_schemas: bool,
) -> ServerInfo:
    headers = auth_headers(api_key)
    url = base + "/models"
    timeout = httpx.Timeout(min(job.endpoint.timeout, 30.0), connect=job.endpoint.connect_timeout)
    async with httpx.AsyncClient(
        timeout=timeout,
        headers=headers,
        transport=transport,
        verify=tls_for(job.endpoint),
    ) as client:
        try:
            response = await client.get(url)
        except httpx.TransportError as exc:
            raise ConfigError(
                f"cannot reach the endpoint {base} ({type(exc).__name__}: {exc}); "
                "is the vLLM server running and is the URL right?"
            ) from None
        try:
            payload: object = response.json()
        except ValueError:
            payload = None
        reason = server_message(response) if response.status_code != 200 else "OK"
        info = check_models(
            job, response.status_code, payload, reason, base, key_sent=bool(api_key)
        )
        for prompt in job.prompts:
            if probe_schemas and prompt.schema is not None:
                await _probe_schema(client, base, job.endpoint.model, prompt)
    return info


def probe_body(model: str, prompt: PromptConfig) -> dict[str, object]:
    """A text-only request for one token carrying ``prompt``'s response_format (and extra)."""
    assert prompt.schema is not None
    messages: list[dict[str, object]] = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    messages.append({"role": "user", "content": "Answer with JSON."})
    return {
        "model": model,
        "messages": messages,
        **prompt.extra,
        "max_tokens": 1,
        "response_format": response_format(prompt.name, prompt.schema),
    }


def judge_probe(status: int, message: str, prompt: str, url: str) -> None:
    """Pure part of the schema probe: a 4xx (other than 408/429) stops the run."""
    if 400 <= status < 500 and status not in (408, 429):
        raise ConfigError(
            f"{url} refused prompt {prompt!r}'s structured output request (HTTP {status}: "
            f"{message}). The server must support response_format json_schema (vLLM does) "
            "and accept this schema; fix the schema or use such a server"
        )


async def _probe_schema(
    client: httpx.AsyncClient, base: str, model: str, prompt: PromptConfig
) -> None:
    content = encode_body(probe_body(model, prompt))
    try:
        response = await client.post(
            base + "/chat/completions",
            content=content,
            headers={"content-type": "application/json"},
        )
    except httpx.TransportError:
        return  # the run's own retries and breaker deal with a flaky server
    message = server_message(response) if response.status_code != 200 else "OK"
    judge_probe(response.status_code, message, prompt.name, base)

"""vLLM 0.32.0's error bodies, reproduced byte for byte as `ApiError` values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# vLLM's validation handler reports at most 10 errors, each up to 1000 characters, and
# describes containers (and cuts long strings) instead of echoing them in `input`.
_MAX_REPORTED = 10
_MAX_ERROR_CHARS = 1000
_MAX_INPUT_CHARS = 200


class ApiError(Exception):
    """An error answer: HTTP status plus vLLM's `{"error": {...}}` body fields."""

    def __init__(self, status: int, message: str, type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return json.dumps({"error": {**error, "code": self.status}}, separators=(",", ":")).encode()


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "BadRequestError", param)


def json_invalid(position: int, reason: str) -> ApiError:
    """Body is not valid JSON (FastAPI/pydantic wording, as vLLM returns it)."""
    detail = {
        "type": "json_invalid",
        "loc": f"body.{position}",
        "msg": "JSON decode error",
        "input": "<dict of 0 items>",
        "ctx": {"error": reason},
    }
    return ApiError(400, f"1 validation error:\n  {detail}", "Bad Request", f"body.{position}")


def validation(kind: str, field: str, msg: str, body: dict[str, Any]) -> ApiError:
    """A pydantic validation error on one field of the request body."""
    detail = {
        "type": kind,
        "loc": f"body.{field}",
        "msg": msg,
        "input": f"<dict of {len(body)} items>",
    }
    return ApiError(400, f"1 validation error:\n  {detail}", "Bad Request", f"body.{field}")


def error_input(value: Any) -> str:
    """A validation error's `input`, as vLLM summarises it (``<dict of 2 items>``, ``'xml'``)."""
    if isinstance(value, dict | list | tuple):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = value if isinstance(value, str) else str(value)
    if len(text) > _MAX_INPUT_CHARS:
        return text[:_MAX_INPUT_CHARS] + "...[truncated]"
    return text


def validation_errors(details: Sequence[Mapping[str, Any]]) -> ApiError:
    """Several pydantic validation errors (each ``{"type", "loc", "msg", "input"[, "ctx"]}``,
    `loc` dotted); `param` is the first one's `loc`."""
    label = "error" if len(details) == 1 else "errors"
    lines = []
    for detail in details[:_MAX_REPORTED]:
        text = str(dict(detail))
        if len(text) > _MAX_ERROR_CHARS:
            text = text[:_MAX_ERROR_CHARS] + "...[truncated]"
        lines.append(f"\n  {text}")
    if len(details) > _MAX_REPORTED:
        lines.append(f"\n  ...and {len(details) - _MAX_REPORTED} more {label}")
    message = f"{len(details)} validation {label}:" + "".join(lines)
    return ApiError(400, message, "Bad Request", str(details[0]["loc"]))


def missing_field(field: str, body: dict[str, Any]) -> ApiError:
    return validation("missing", field, "Field required", body)


def unknown_model(model: str, served: str) -> ApiError:
    message = f"The model `{model}` does not exist. Valid aliases: {served}."
    return ApiError(404, message, "NotFoundError", "model")


def too_many_output_tokens(param: str, value: int, max_model_len: int) -> ApiError:
    message = (
        f"{param}={value} cannot be greater than max_model_len={max_model_len}. "
        f"Please request fewer output tokens. (parameter={param}, value={value})"
    )
    return bad_request(message, param)


def too_few_output_tokens(value: int) -> ApiError:
    message = f"max_tokens must be at least 1, got {value}. (parameter=max_tokens, value={value})"
    return bad_request(message, "max_tokens")


def negative_temperature(value: float) -> ApiError:
    message = (
        f"temperature must be non-negative, got {value}. (parameter=temperature, value={value})"
    )
    return bad_request(message, "temperature")


def prompt_too_long(tokens: int, max_model_len: int) -> ApiError:
    message = (
        f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
        f"contains at least {tokens} input tokens, which exceeds this limit even without any "
        f"output tokens. Please reduce the length of the input prompt. "
        f"(parameter=input_tokens, value={tokens})"
    )
    return bad_request(message, "input_tokens")


def roles_not_alternating() -> ApiError:
    return bad_request("Conversation roles must alternate user/assistant/user/assistant/...")


def json_schema_missing() -> ApiError:
    """``response_format`` of type json_schema without its ``json_schema`` object."""
    message = (
        "When response_format type is 'json_schema', the 'json_schema' field must be provided."
        " (parameter=response_format)"
    )
    return bad_request(message, "response_format")


def no_structured_constraint() -> ApiError:
    """A ``json_schema`` whose ``schema`` is missing or null: vLLM's StructuredOutputsParams
    then holds no constraint (its ``__dict__`` is part of the message)."""
    fields = (
        "{'json': None, 'regex': None, 'choice': None, 'grammar': None, 'json_object': None, "
        "'disable_any_whitespace': False, 'disable_additional_properties': False, "
        "'whitespace_pattern': None, 'structural_tag': None, '_backend': None, "
        "'_backend_was_auto': False}"
    )
    message = "You must use one kind of structured outputs constraint but none are specified: "
    return bad_request(message + fields)


def structured_outputs_off() -> ApiError:
    """A server without structured outputs (not vLLM: it always has them)."""
    return bad_request("response_format is not supported by this server", "response_format")


def not_an_image() -> ApiError:
    return bad_request("Failed to load image: cannot identify image file <_io.BytesIO object>")


def injected(status: int) -> ApiError:
    """Body of a simulated fault answer (429/500/503); vLLM itself never sends 429/503."""
    kinds = {
        429: ("Too Many Requests (simulated fault)", "RateLimitError"),
        500: ("Internal Server Error (simulated fault)", "InternalServerError"),
        503: ("Service Unavailable (simulated fault)", "ServiceUnavailableError"),
    }
    message, kind = kinds[status]
    return ApiError(status, message, kind)

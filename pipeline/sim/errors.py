"""vLLM 0.32.0's error bodies, reproduced byte for byte as `ApiError` values."""

from __future__ import annotations

import json
from typing import Any


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

"""Parse a chat request's ``response_format`` the way vLLM 0.32.0 does. Pure.

In: the request body (a dict). Out: a `ResponseFormat` (``json_object``, or ``json_schema``
with its schema) or None for none / ``{"type": "text"}``; or an `ApiError` with vLLM's answer.
vLLM checks in three places, and so does the simulator:

1. A model validator that runs before the fields: type json_schema without a ``json_schema``
   object → 400 BadRequestError naming ``response_format``.
2. The field itself, a pydantic union of ResponseFormat | StructuralTagResponseFormat |
   LegacyStructuralTagResponseFormat: when no branch fits, every branch's errors are listed
   (an unknown type, a missing ``name``, ...: "6 validation errors: ...").
3. When sampling parameters are built (after the prompt checks, see `check_constraint`): a
   ``json_schema`` without ``schema`` holds no constraint → 400.

The bodies were taken from vLLM 0.32.0's own code (``validate_response_format``, its
validation handler, ``StructuredOutputsParams``). Not simulated: structural tags (a 400 from
the simulator) and the ``structured_outputs`` extension field (ignored). With structured outputs
off (``--structured-outputs off``) json_schema and json_object get a plain 400 that names
``response_format``, as from a server without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import errors

TYPES = ("text", "json_object", "json_schema")
_LOC = "body.response_format"
_TYPES_TEXT = "'text', 'json_object' or 'json_schema'"
_TAG_TEXT = "'structural_tag'"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """A structured-output request: ``json_object`` (schema None) or ``json_schema``."""

    type: str
    name: str | None = None
    schema: Mapping[str, Any] | None = None


def parse_response_format(body: dict[str, Any], *, enabled: bool = True) -> ResponseFormat | None:
    """The request's structured-output format, or None; raises `ApiError` like vLLM."""
    raw = body.get("response_format")
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if not enabled and kind in ("json_object", "json_schema"):
        raise errors.structured_outputs_off()
    if kind == "json_schema" and raw.get("json_schema") is None:
        raise errors.json_schema_missing()
    if not isinstance(raw, dict):
        raise errors.validation_errors([_not_a_dict(raw, cls) for cls in _CLASSES])
    branches = [_own_errors(raw), _tag_errors(raw), _legacy_tag_errors(raw)]
    if all(branches):
        raise errors.validation_errors([detail for branch in branches for detail in branch])
    if kind == "structural_tag":
        raise errors.bad_request("vllm-sim: structural_tag response_format is not supported")
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    spec = raw["json_schema"]
    return ResponseFormat("json_schema", spec["name"], spec.get("schema"))


def check_constraint(response_format: ResponseFormat | None) -> None:
    """vLLM's check when it builds the sampling parameters: a json_schema needs a schema."""
    rf = response_format
    if rf is not None and rf.type == "json_schema" and rf.schema is None:
        raise errors.no_structured_constraint()


_CLASSES = ("ResponseFormat", "StructuralTagResponseFormat", "LegacyStructuralTagResponseFormat")


def _detail(kind: str, field: str, msg: str, value: Any, **ctx: str) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "type": kind,
        "loc": f"{_LOC}{field}",
        "msg": msg,
        "input": errors.error_input(value),
    }
    if ctx:
        detail["ctx"] = ctx
    return detail


def _not_a_dict(raw: Any, cls: str) -> dict[str, Any]:
    msg = f"Input should be a valid dictionary or instance of {cls}"
    return _detail("model_type", "", msg, raw, class_name=cls)


def _missing(field: str, container: Any) -> dict[str, Any]:
    return _detail("missing", field, "Field required", container)


def _own_errors(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The ResponseFormat branch: type in TYPES, json_schema a JsonSchemaResponseFormat."""
    out: list[dict[str, Any]] = []
    kind = raw.get("type")
    if "type" not in raw:
        out.append(_missing(".type", raw))
    elif not (isinstance(kind, str) and kind in TYPES):
        msg = f"Input should be {_TYPES_TEXT}"
        out.append(_detail("literal_error", ".type", msg, kind, expected=_TYPES_TEXT))
    spec = raw.get("json_schema")
    if spec is None:
        return out
    if not isinstance(spec, dict):
        cls = "JsonSchemaResponseFormat"
        msg = f"Input should be a valid dictionary or instance of {cls}"
        out.append(_detail("model_type", ".json_schema", msg, spec, class_name=cls))
        return out
    if "name" not in spec:
        out.append(_missing(".json_schema.name", spec))
    elif not isinstance(spec["name"], str):
        msg = "Input should be a valid string"
        out.append(_detail("string_type", ".json_schema.name", msg, spec["name"]))
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        msg = "Input should be a valid dictionary"
        out.append(_detail("dict_type", ".json_schema.schema", msg, schema))
    return out


def _tag_type_errors(raw: dict[str, Any]) -> list[dict[str, Any]]:
    if "type" not in raw:
        return [_missing(".type", raw)]
    if raw["type"] == "structural_tag":
        return []
    msg = f"Input should be {_TAG_TEXT}"
    return [_detail("literal_error", ".type", msg, raw["type"], expected=_TAG_TEXT)]


def _tag_errors(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The StructuralTagResponseFormat branch: type "structural_tag", a format."""
    missing = [] if "format" in raw else [_missing(".format", raw)]
    return _tag_type_errors(raw) + missing


def _legacy_tag_errors(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The LegacyStructuralTagResponseFormat branch: type, structures and triggers."""
    missing = [_missing(f".{key}", raw) for key in ("structures", "triggers") if key not in raw]
    return _tag_type_errors(raw) + missing

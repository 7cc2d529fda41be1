"""Command-line flags: one per declared setting, given ones held in ``Overrides``.

``add_flags`` adds a flag for every setting that has one to an argparse parser, one group per
section; ``Overrides`` holds the flags that were given, by the flag's name
(``Overrides(max_tokens=16, no_progress=True)`` is ``--max-tokens 16 --no-progress``), and
``apply_overrides`` lays them over a job file's raw tables (flags win), so flags and job file
go through the same checks in ``build``. Relative paths given as flags resolve against the
working directory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..storage import is_uri, local_path
from .settings import SECTIONS, SETTINGS, Setting, settings_of

FLAGS: dict[str, Setting] = {s.dest: s for s in SETTINGS if s.flag is not None}

_GROUPS = {
    "prompt": "--prompt-file/--prompt replace the job's prompts with one (named after the file's "
    "stem / 'prompt') that keeps the first job prompt's other settings; the other flags override "
    "every prompt (--extra is merged into each prompt's extra)",
}


_INSTEAD = {"manifest": "root", "root": "manifest"}  # [input] keys that replace each other


def json_object(text: str) -> dict[str, Any]:
    """``--extra``'s value: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"top_k\": 40}'")
    return value


def _help(s: Setting) -> str:
    """The declared help, with the default when it is a number."""
    if isinstance(s.default, float):
        return f"{s.help} ({s.default:g})"
    if isinstance(s.default, int) and not isinstance(s.default, bool):
        return f"{s.help} ({s.default})"
    return s.help


def _parse(s: Setting) -> Any:
    """How the flag's text is read: a number, a JSON object, or kept as text."""
    if s.path:
        return str
    if s.kind is dict:
        return json_object
    numbers: dict[tuple[type, ...], Any] = {(int,): int, (int, float): float}
    return numbers.get(s.accepts, str)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting that has one, grouped by section."""
    for section in SECTIONS:
        group = parser.add_argument_group(section, _GROUPS.get(section))
        for s in settings_of(section):
            if s.flag is None:
                continue
            if s.switch:
                group.add_argument(s.flag, dest=s.dest, action="store_true", help=s.help)
            else:
                group.add_argument(
                    s.flag,
                    dest=s.dest,
                    metavar=s.metavar,
                    type=_parse(s),
                    action="append" if s.repeat else "store",
                    help=_help(s),
                )


class Overrides:
    """Settings given as flags, by the flag's name (``--pattern``: ``patterns``); ``None``, and
    ``False`` for a switch, mean not given. Immutable, compared by value."""

    __slots__ = ("_given",)
    _given: dict[str, Any]

    def __init__(self, **flags: Any) -> None:
        unknown = sorted(set(flags) - set(FLAGS))
        if unknown:
            raise TypeError(
                f"Overrides() got unknown flag name(s) {unknown}; known: {sorted(FLAGS)}"
            )
        given = {
            k: v for k, v in flags.items() if v is not None and not (FLAGS[k].switch and v is False)
        }
        object.__setattr__(self, "_given", given)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Overrides:
        """The flags parsed by a parser that ``add_flags`` built (repeated ones as tuples)."""
        values = {dest: getattr(args, dest) for dest in FLAGS}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def given(self) -> Mapping[str, Any]:
        return dict(self._given)

    def __getattr__(self, name: str) -> Any:
        if name not in FLAGS:
            raise AttributeError(f"'Overrides' object has no attribute {name!r}")
        return self._given.get(name, False if FLAGS[name].switch else None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Overrides is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Overrides) and self._given == other._given

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._given.items())))

    def __repr__(self) -> str:
        return f"Overrides({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"


def _value(s: Setting, value: Any) -> Any:
    """A given flag's value as the job file would hold it."""
    if s.switch:
        return not s.default
    if s.repeat:
        return [value] if isinstance(value, str) else list(value)
    if s.path:
        return value if is_uri(value) else str(Path(local_path(value)).expanduser().resolve())
    return value


def apply_overrides(raw: Mapping[str, Any], ov: Overrides) -> dict[str, Any]:
    """Flags win over the job file. ``--prompt``/``--prompt-file`` replace all prompts."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    out["prompt"] = [dict(p) for p in raw.get("prompt", [])]
    prompt: dict[str, tuple[Setting, Any]] = {}  # [[prompt]] key -> (setting, flag value)
    for dest, value in ov.given().items():
        s = FLAGS[dest]
        if s.section == "prompt":
            prompt[s.key] = (s, value)
        else:
            table = out.setdefault(s.section, {})
            table[s.key] = _value(s, value)
            other = _INSTEAD.get(s.key) if s.section == "input" else None
            if other is not None:  # --manifest replaces the job's folder, --input its manifest
                table.pop(other, None)
    file, text = prompt.pop("file", None), prompt.pop("text", None)
    replace = file or text  # --prompt-file wins over --prompt
    if replace is not None:  # one prompt, keeping the first job prompt's other settings
        s, value = replace
        keep = out["prompt"][0] if out["prompt"] else {}
        new = {k: v for k, v in keep.items() if k not in ("text", "file", "name")}
        new[s.key] = _value(s, value)
        new["name"] = Path(value).stem if replace is file else "prompt"
        out["prompt"] = [new]
    if not out["prompt"]:
        out["prompt"] = [{}]
    for table in out["prompt"]:  # the other prompt flags act on every prompt
        for s, value in prompt.values():
            if s.kind is dict and not s.path:  # --extra is merged into each prompt's extra
                table[s.key] = {**table.get(s.key, {}), **value}
            else:
                table[s.key] = _value(s, value)
    return out

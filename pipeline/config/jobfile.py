"""Reading a job file: TOML -> checked raw tables, paths made absolute.

Takes the path of a job file and hands on its tables as plain data (``{"endpoint": {...},
"prompt": [{...}, ...], ..., "_source": path}``) in which every key is a declared setting
holding a value of an accepted TOML type, and every path setting is absolute: relative paths
resolve against the job file's folder. Unknown keys are an error that names the key and the
nearest valid one. The key table is derived from the declarations in ``settings``.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..storage import is_uri, local_path
from .settings import ARRAYS, SECTIONS, SETTINGS

# section -> key -> accepted TOML types
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    section: {s.key: s.accepts for s in SETTINGS if s.section == section} for section in SECTIONS
}


def tables(raw: Mapping[str, Any], section: str) -> Iterator[dict[str, Any]]:
    """The tables of ``section`` in raw job data: one, or each of an array's."""
    value = raw.get(section)
    if value is None:
        return
    yield from value if section in ARRAYS else [value]


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return ConfigError(
        f"unknown key {key!r} in {where}.{hint} Valid keys: {', '.join(sorted(valid))}."
    )


def _check_table(table: Mapping[str, Any], section: str, where: str) -> None:
    schema = SCHEMA[section]
    for key, value in table.items():
        if key not in schema:
            raise _unknown(key, list(schema), where)
        types = schema[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{where}.{key} must be {names}, got {value!r}")


def read_job_file(path: Path) -> dict[str, Any]:
    """Parse and check a job file; paths in it become absolute (relative to its folder)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read job file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file {path} is not valid TOML: {exc}") from None
    for key, value in raw.items():
        if key not in SCHEMA:
            raise _unknown(key, [*SCHEMA], f"job file {path}")
        if key in ARRAYS:
            if not isinstance(value, list):
                raise ConfigError(f"{key!r} must be an array of tables: write [[{key}]]")
            for i, table in enumerate(value):
                if not isinstance(table, dict):
                    raise ConfigError(
                        f'{key} #{i + 1} must be a table: write [[{key}]] with text = "..."'
                    )
                _check_table(table, key, f"[[{key}]] #{i + 1}")
        elif not isinstance(value, dict):
            raise ConfigError(f"{key!r} must be a table: write [{key}]")
        else:
            _check_table(value, key, f"[{key}]")
    base = path.resolve().parent
    for s in SETTINGS:
        if s.path:
            for table in tables(raw, s.section):
                if isinstance(table.get(s.key), str) and not is_uri(table[s.key]):
                    local = os.path.expanduser(local_path(table[s.key]))
                    table[s.key] = str((base / local).resolve())
    raw["_source"] = str(path.resolve())
    return raw

"""Job configuration: TOML job file + command-line flags -> one frozen ``Job``.

Takes a job file path (optional) and the flags that were given (``Overrides``) and hands on a
validated, fully resolved ``Job``. Each setting is declared once, as a field of a section
dataclass; the rest is derived from those declarations, one module per step::

    settings   the declarations: EndpointConfig, InputConfig, ImageConfig, PromptConfig,
               RunConfig (one field per setting: type, default, flag, help), Job, SETTINGS
    jobfile    job file -> checked raw tables (unknown keys name the nearest valid one;
               relative paths resolve against the job file's folder)
    flags      the ``caption run`` flags, ``Overrides``, and laying them over the job file
               (flags win; relative paths resolve against the working directory)
    build      raw tables -> a validated ``Job``
"""

from __future__ import annotations

from pathlib import Path

from .build import build_job
from .flags import Overrides, add_flags, apply_overrides
from .jobfile import read_job_file
from .settings import (
    DEFAULT_API_KEY_ENVS,
    DEFAULT_PATTERNS,
    DEFAULT_SYSTEM,
    SETTINGS,
    EndpointConfig,
    ImageConfig,
    InputConfig,
    Job,
    PromptConfig,
    RunConfig,
    Setting,
    setting,
)

__all__ = [
    "DEFAULT_API_KEY_ENVS",
    "DEFAULT_PATTERNS",
    "DEFAULT_SYSTEM",
    "SETTINGS",
    "EndpointConfig",
    "ImageConfig",
    "InputConfig",
    "Job",
    "Overrides",
    "PromptConfig",
    "RunConfig",
    "Setting",
    "add_flags",
    "apply_overrides",
    "build_job",
    "load_job",
    "read_job_file",
    "setting",
]


def load_job(path: Path | None, overrides: Overrides) -> Job:
    """Read the job file (if any), apply the flags, validate."""
    raw = read_job_file(path) if path is not None else {}
    return build_job(apply_overrides(raw, overrides))

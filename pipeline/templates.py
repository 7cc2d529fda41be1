"""Prompt templates: a prompt text + one image's path -> the text sent for that image.

Variables: ``$filename`` (``cat.jpg``), ``$stem`` (``cat``), ``$relpath`` (``animals/cat.jpg``,
relative to the input root) and ``$parent`` (``animals``; empty at the root). ``$$`` is a
literal dollar sign. Any other ``$name`` is a configuration error, found before the run starts.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from string import Template

from .errors import ConfigError

VARIABLES = ("filename", "stem", "relpath", "parent")


def check_template(text: str, where: str) -> None:
    """Raise ``ConfigError`` if ``text`` uses an unknown or malformed ``$variable``."""
    template = Template(text)
    if not template.is_valid():
        raise ConfigError(f"{where}: malformed $-placeholder in prompt text (write $$ for '$')")
    unknown = sorted(set(template.get_identifiers()) - set(VARIABLES))
    if unknown:
        raise ConfigError(
            f"{where}: unknown template variable(s) {', '.join('$' + u for u in unknown)}; "
            f"known: {', '.join('$' + v for v in VARIABLES)} (write $$ for a literal '$')"
        )


def uses_variables(text: str) -> bool:
    """True when rendering depends on the image path."""
    return bool(Template(text).get_identifiers())


def render(text: str, relpath: str) -> str:
    """Substitute the image variables of ``relpath`` into ``text``."""
    path = PurePosixPath(relpath)
    parent = str(path.parent)
    return Template(text).substitute(
        filename=path.name,
        stem=path.stem,
        relpath=relpath,
        parent="" if parent == "." else parent,
    )

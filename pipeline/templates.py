"""Prompt templates: a prompt text + one image's path (+ its manifest row) -> the text sent.

Variables: ``$filename`` (``cat.jpg``), ``$stem`` (``cat``), ``$relpath`` (``animals/cat.jpg``,
relative to the input root, or the manifest's identity of the image) and ``$parent``
(``animals``; empty at the root); with a manifest, also every column of its row (``$title``,
``${sku}``), which wins over a built-in of the same name. ``$$`` is a literal dollar sign. Any
other ``$name`` is a configuration error, found before the run starts; a manifest row without a
value for a variable its prompt uses is an ``invalid`` row (``MissingVariable``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import PurePosixPath
from string import Template

from .errors import ConfigError

VARIABLES = ("filename", "stem", "relpath", "parent")


class MissingVariable(KeyError):
    """A manifest row has no value for a variable the prompt uses (its args: the name)."""


def check_template(text: str, where: str, columns: Collection[str] | None = ()) -> None:
    """Raise ``ConfigError`` if ``text`` uses an unknown or malformed ``$variable``.

    ``columns`` are the manifest's columns, known too; None: a manifest whose columns are
    only known row by row (JSONL), so any name is accepted here and checked per row.
    """
    template = Template(text)
    if not template.is_valid():
        raise ConfigError(f"{where}: malformed $-placeholder in prompt text (write $$ for '$')")
    if columns is None:
        return
    known = [*VARIABLES, *(c for c in columns if c not in VARIABLES)]
    unknown = sorted(set(template.get_identifiers()) - set(known))
    if unknown:
        what = "known" if not columns else "known (built-in, then the manifest's columns)"
        raise ConfigError(
            f"{where}: unknown template variable(s) {', '.join('$' + u for u in unknown)}; "
            f"{what}: {', '.join('$' + v for v in known)} (write $$ for a literal '$')"
        )


def names(text: str) -> set[str]:
    """The variables ``text`` uses."""
    return set(Template(text).get_identifiers())


def uses_variables(text: str) -> bool:
    """True when rendering depends on the image path."""
    return bool(Template(text).get_identifiers())


def render(text: str, relpath: str, variables: Mapping[str, str] | None = None) -> str:
    """Substitute the image variables of ``relpath`` (and a manifest row's ``variables``, which
    win) into ``text``; ``MissingVariable`` when a name has no value."""
    path = PurePosixPath(relpath)
    parent = str(path.parent)
    values = {
        "filename": path.name,
        "stem": path.stem,
        "relpath": relpath,
        "parent": "" if parent == "." else parent,
    }
    if variables:
        values.update(variables)
    try:
        return Template(text).substitute(values)
    except KeyError as exc:
        raise MissingVariable(exc.args[0]) from None

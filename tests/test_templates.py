"""Prompt templates: rendering of the image variables and the up-front check of a template."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.templates import VARIABLES, check_template, render, uses_variables


class TestRender:
    @pytest.mark.parametrize(
        ("template", "relpath", "expected"),
        [
            ("$filename", "animals/cat.jpg", "cat.jpg"),
            ("$stem", "animals/cat.jpg", "cat"),
            ("$relpath", "animals/cat.jpg", "animals/cat.jpg"),
            ("$parent", "animals/cat.jpg", "animals"),
            ("$parent", "a/b/c/dog.png", "a/b/c"),
            ("$parent", "cat.jpg", ""),
            ("[$parent]", "cat.jpg", "[]"),
            ("$filename", "cat.jpg", "cat.jpg"),
            ("$relpath", "cat.jpg", "cat.jpg"),
            ("$stem", "a/archive.tar.gz", "archive.tar"),
            ("$stem", "a/noext", "noext"),
            ("${stem}_caption", "x/photo.jpg", "photo_caption"),
            ("costs $$5", "cat.jpg", "costs $5"),
            ("$$filename", "cat.jpg", "$filename"),
            ("$$$filename", "cat.jpg", "$cat.jpg"),
            ("Describe $filename in $parent.", "zoo/lion.webp", "Describe lion.webp in zoo."),
            ("no variables at all", "a/b.jpg", "no variables at all"),
            ("$filename", "dir with space/my photo.JPG", "my photo.JPG"),
        ],
    )
    def test_render_table(self, template: str, relpath: str, expected: str) -> None:
        """Each variable renders the documented part of the relative path."""
        assert render(template, relpath) == expected


class TestCheckTemplate:
    @pytest.mark.parametrize(
        "text",
        [
            "Describe the image.",
            "$filename $stem $relpath $parent",
            "${filename}",
            "price: $$10",
            "",
        ],
    )
    def test_valid_templates_pass(self, text: str) -> None:
        """Known variables, braces and ``$$`` are accepted without error."""
        check_template(text, "prompt #1")

    @pytest.mark.parametrize(
        ("text", "named"),
        [
            ("Describe $foo", "$foo"),
            ("${file_name}", "$file_name"),
            ("$FILENAME", "$FILENAME"),
            ("$filename and $bar and $baz", "$bar, $baz"),
        ],
    )
    def test_unknown_variable_is_rejected(self, text: str, named: str) -> None:
        """An unknown ``$name`` raises ConfigError naming it and listing the known ones."""
        with pytest.raises(ConfigError) as info:
            check_template(text, "prompt #2 (p)")
        message = str(info.value)
        assert named in message
        assert "prompt #2 (p)" in message
        for var in VARIABLES:
            assert f"${var}" in message

    @pytest.mark.parametrize("text", ["costs $5", "ends with $", "${unclosed", "$ space"])
    def test_malformed_placeholder_is_rejected(self, text: str) -> None:
        """A ``$`` not followed by an identifier is a ConfigError suggesting ``$$``."""
        with pytest.raises(ConfigError, match=r"\$\$"):
            check_template(text, "prompt #1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("plain", False), ("$$ only", False), ("$stem", True), ("${relpath}!", True)],
)
def test_uses_variables(text: str, expected: bool) -> None:
    """``uses_variables`` is true only when rendering depends on the path."""
    assert uses_variables(text) is expected

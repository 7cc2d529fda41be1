"""Each setting declared once: every declaration has a flag (or is job-file only), a README row,
and reaches its ``Job`` field from a job file and from its flag."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import build_parser, main, overrides_from
from pipeline.config import SETTINGS, Job, Overrides, Setting, load_job

README = Path(__file__).parents[1] / "README.md"
URL = "http://flag.test:1/v1"  # a URL is a valid value for every text setting
FLAGGED = [s for s in SETTINGS if s.flag is not None]


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    return text[start : text.find("\n## ", start + 1)]


def job_file_rows() -> dict[str, list[str]]:
    """README's job file table: ``[run] output`` -> its other cells (flag, default, meaning)."""
    rows = {}
    for line in readme_section("Job file reference").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith("`["):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def field_of(job: Job, s: Setting) -> Any:
    part = job.prompts[0] if s.section == "prompt" else getattr(job, s.section)
    return getattr(part, s.key)


def sample(s: Setting, project: Path) -> tuple[Any, Any]:
    """A value other than the setting's default, and what its ``Job`` field then holds."""
    if s.kind is bool:
        return not s.default, not s.default
    if s.key == "schema":  # a file naming a JSON Schema -> the schema
        return str(project / "schema.json"), SCHEMA
    if s.key == "keep":  # a column of the manifest
        return ["sku"], ("sku",)
    if s.key == "log_format":  # one of two words
        return "json", "json"
    if s.key == "shard":  # "I/N"
        return "1/3", "1/3"
    if s.kind is Path:  # the input root must be a folder, a prompt file a readable file
        where = {"root": "images", "file": "ask.txt", "manifest": "list.csv"}
        path = project / where.get(s.key, "elsewhere")
        return str(path), path.resolve()
    if s.kind is int:
        return (s.default or 6) + 1, (s.default or 6) + 1
    if s.kind is float:
        return s.default / 2, s.default / 2
    if s.kind is dict:
        return {"top_k": 40}, {"top_k": 40}
    if s.kind is tuple:
        return ["*.flag"], ("*.flag",)
    return URL, URL


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers and lists of strings are alike in TOML


SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "ask.txt").write_text("Describe $stem")
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "list.csv").write_text("image,sku\nimages/a.jpg,A1\n")
    return tmp_path


class TestDocumented:
    def test_every_setting_has_a_flag_or_is_job_file_only(self) -> None:
        """A setting without a flag says "job file only" in README's flag column."""
        rows = job_file_rows()
        for s in SETTINGS:
            flag = rows.get(s.where, ["(no README row)"])[0]
            if s.flag is None:
                assert flag == "job file only", f"{s.where}: give it a flag, or document why not"
            else:
                assert flag.startswith(f"`{s.flag}`"), f"{s.where}: README's flag column"

    def test_every_setting_has_a_readme_row(self) -> None:
        """README's job file table has one row per declared setting, and none for anything else."""
        rows = job_file_rows()
        missing = [s.where for s in SETTINGS if s.where not in rows]
        assert not missing, f"add these to README's '## Job file reference' table: {missing}"
        stale = set(rows) - {s.where for s in SETTINGS}
        assert not stale, f"README documents settings that are not declared: {sorted(stale)}"

    def test_readme_defaults_are_the_declared_ones(self) -> None:
        """The README's default of every number and on/off setting is the declared default."""
        rows = job_file_rows()
        for s in SETTINGS:
            if s.where in rows and isinstance(s.default, bool | int | float):
                text = toml(s.default) if not isinstance(s.default, float) else f"{s.default:g}"
                assert rows[s.where][1] == f"`{text}`", s.where

    def test_synopsis_lists_every_flag(self) -> None:
        """README's 'caption run' synopsis names every flag."""
        synopsis = readme_section("Command line").split("```")[1]
        for s in FLAGGED:
            assert re.search(rf"(?<![\w-]){s.flag}(?![\w-])", synopsis), s.flag

    def test_help_lists_every_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`caption run --help` shows every flag."""
        with pytest.raises(SystemExit):
            main(["run", "--help"])
        text = capsys.readouterr().out
        for s in FLAGGED:
            assert re.search(rf"(?<![\w-]){s.flag}(?![\w-])", text), s.flag


class TestReachesTheJob:
    @pytest.mark.parametrize("s", SETTINGS, ids=lambda s: s.where)
    def test_job_file_key_sets_its_field(self, project: Path, s: Setting) -> None:
        """Every declared key, written in a job file, sets its Job field."""
        value, expected = sample(s, project)
        tables: dict[str, dict[str, Any]] = {
            "input": {"root": str(project / "images")},
            "prompt": {"text": "Describe $stem"},
            "run": {"output": str(project / "out")},
        }
        table = tables.setdefault(s.section, {})
        if s.key == "file":
            del table["text"]  # text or file, not both
        if s.key == "keep":
            table["manifest"] = str(project / "list.csv")
        if s.key in ("manifest", "keep"):
            del table["root"]  # a folder or a manifest, not both
        table[s.key] = value
        lines = []
        for section, keys in tables.items():
            lines.append(f"[[{section}]]" if section == "prompt" else f"[{section}]")
            lines += [f"{k} = {toml(v)}" for k, v in keys.items()]
        path = project / "job.toml"
        path.write_text("\n".join(lines) + "\n")
        assert field_of(load_job(path, Overrides()), s) == expected

    @pytest.mark.parametrize("s", FLAGGED, ids=lambda s: s.flag)
    def test_flag_sets_its_field(self, project: Path, s: Setting) -> None:
        """Every flag, given on the command line, sets its setting's Job field."""
        value, expected = sample(s, project)
        base = ["run", "--input", str(project / "images"), "--output", str(project / "o")]
        if s.switch:
            words = [s.flag]
        elif isinstance(value, list):  # a repeatable flag, given once
            words = [s.flag, *value]
        else:
            words = [s.flag, json.dumps(value) if isinstance(value, dict) else str(value)]
        if s.key == "keep":
            words += ["--manifest", str(project / "list.csv")]
        args = build_parser().parse_args([*base, "--prompt", "x", *words])
        assert field_of(load_job(None, overrides_from(args)), s) == expected

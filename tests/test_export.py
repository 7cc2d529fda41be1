"""``caption export`` end to end: a real job against the simulator, then every format read back.

The shared dataset (one module-wide run): 6 images in nested folders x 2 prompts (describe_zh,
which the simulator answers in English: wrong_language; tags, cut at max_tokens: truncated).
A first run against a faulty server leaves failed rows; the rerun answers them, so each of those
items has a failed row and a later ok row, and only the ok one may be exported.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_images

from pipeline.cli import main
from pipeline.errors import EXIT_FAILED, ConfigError, OutputError
from pipeline.export import RECORD_COLUMNS, add_export_arguments, export, run_export
from pipeline.results import current, read_rows
from pipeline.schema import COLUMNS
from pipeline.sim import FaultConfig, SimConfig, SimServer

ANNOTATE = Path(__file__).resolve().parents[1] / "data" / "schemas" / "annotate.json"
PROMPTS = ("describe_zh", "tags")


def run(url: str, *args: str) -> int:
    return main(["run", "--endpoint", url, "--no-progress", "--concurrency", "4",
                 "--flush-interval", "0.2", *args])  # fmt: skip


def write_job(folder: Path, images: Path, out: Path) -> Path:
    job = folder / "job.toml"
    job.write_text(
        f"""
[input]
root = "{images}"

[[prompt]]
name = "describe_zh"
text = "使用中文描述这张图像"

[[prompt]]
name = "tags"
text = "List tags for $filename."
max_tokens = 8

[run]
output = "{out}"
""",
        encoding="utf-8",
    )
    return job


@dataclass(frozen=True)
class Made:
    images: Path
    out: Path
    rows: pa.Table  # every row of the dataset

    def ok(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The latest ok row of each (image_path, prompt_name)."""
        latest = current(self.rows, status="ok").to_pylist()
        return {(r["image_path"], r["prompt_name"]): r for r in latest}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    base = tmp_path_factory.mktemp("export")
    images = base / "images"
    make_images(images, 6)
    out = base / "out"
    job = write_job(base, images, out)
    faulty = SimConfig(slots=8, latency=0.01, seed=3, faults=FaultConfig(error_500=0.4))
    with SimServer(faulty) as sim:
        assert run(sim.base_url, str(job), "--retries", "0") == EXIT_FAILED
    with SimServer(SimConfig(slots=8, latency=0.01)) as sim:
        assert run(sim.base_url, str(job)) == 0
    yield Made(images, out, read_rows(out))


def small_run(tmp_path: Path, n: int) -> tuple[Path, list[Path], Path]:
    """A dataset of its own (one prompt) for a test that changes the images."""
    images = tmp_path / "images"
    pics = make_images(images, n)
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=8, latency=0.01)) as sim:
        assert run(sim.base_url, "--input", str(images), "--output", str(out),
                   "--prompt", "Describe $filename") == 0  # fmt: skip
    return images, pics, out


def items(made: Made) -> int:
    return len(list(made.images.rglob("*.jpg"))) * len(PROMPTS)


def test_the_dataset_has_superseded_failed_rows(made: Made) -> None:
    """The premise of the 'latest ok' tests below."""
    statuses = made.rows["status"].to_pylist()
    assert "failed" in statuses
    assert len(made.ok()) == items(made)


class TestRecords:
    def test_jsonl_one_record_per_image_and_prompt(self, made: Made, tmp_path: Path) -> None:
        """One record per image x prompt, each the item's latest ok row (never a superseded
        failed one), with the contract columns and the quality flags."""
        result = export(made.out, "jsonl", to=tmp_path / "x.jsonl")
        assert (result.rows, result.written, result.excluded) == (items(made), items(made), 0)
        lines = (tmp_path / "x.jsonl").read_text("utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == items(made)
        ok = made.ok()
        for rec in records:
            assert list(rec) == [*RECORD_COLUMNS, "flags"]
            row = ok[rec["image_path"], rec["prompt_name"]]
            assert rec["status"] == "ok" and rec["error"] is None
            assert rec["key"] == row["key"] and rec["caption"] == row["caption"]
            assert rec["finished_at"] == row["finished_at"].isoformat()
            expected = ["wrong_language"] if rec["prompt_name"] == "describe_zh" else ["truncated"]
            assert rec["flags"] == expected
        assert result.flags["wrong_language"] == result.flags["truncated"] == items(made) // 2

    def test_csv_parses_back_to_the_same_records(self, made: Made, tmp_path: Path) -> None:
        export(made.out, "jsonl", to=tmp_path / "x.jsonl")
        export(made.out, "csv", to=tmp_path / "x.csv")
        records = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text("utf-8").splitlines()]
        with open(tmp_path / "x.csv", encoding="utf-8", newline="") as fh:
            cells = list(csv.DictReader(fh))
        assert len(cells) == len(records)
        for rec, cell in zip(records, cells, strict=True):
            assert list(cell) == list(rec)
            assert cell["caption"] == rec["caption"]
            assert cell["error"] == ""  # null
            assert int(cell["width"]) == rec["width"]
            assert json.loads(cell["flags"]) == rec["flags"]  # a list: JSON text

    def test_parquet_one_row_per_key_with_every_column(self, made: Made, tmp_path: Path) -> None:
        result = export(made.out, "parquet", to=tmp_path)  # a folder: OUTPUT's name in it
        path = tmp_path / "out.parquet"
        assert result.target == str(path)
        table = pq.read_table(path)
        assert table.num_rows == items(made)
        keys = table["key"].to_pylist()
        assert len(set(keys)) == len(keys)
        assert {row["key"] for row in made.ok().values()} == set(keys)
        assert table.column_names == [*COLUMNS, "flags"]
        assert set(table["status"].to_pylist()) == {"ok"}
        assert b"caption.job" in (table.schema.metadata or {})

    def test_status_failed_and_any(self, made: Made, tmp_path: Path) -> None:
        """--status failed: each item's latest failed row; any: each item's latest row (all ok
        after the rerun)."""
        export(made.out, "jsonl", to=tmp_path / "f.jsonl", status="failed")
        failed = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text("utf-8").splitlines()]
        assert failed and all(r["status"] == "failed" and r["error"] for r in failed)
        export(made.out, "jsonl", to=tmp_path / "a.jsonl", status="any")
        latest = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text("utf-8").splitlines()]
        assert len(latest) == items(made) and {r["status"] for r in latest} == {"ok"}

    def test_default_path_beside_the_dataset_and_existing(self, made: Made) -> None:
        """Without --to the file is OUTPUT.jsonl beside the folder (never inside it); a second
        export keeps it (skip), replaces it (overwrite) or stops (fail)."""
        path = made.out.with_name("out.jsonl")
        try:
            first = export(made.out, "jsonl")
            assert first.target == str(path) and first.written == items(made)
            path.write_text("edited\n", encoding="utf-8")
            kept = export(made.out, "jsonl")
            assert (kept.written, kept.skipped) == (0, items(made))
            assert path.read_text("utf-8") == "edited\n" and "kept" in kept.warnings[0]
            with pytest.raises(ConfigError, match="exists"):
                export(made.out, "jsonl", existing="fail")
            assert path.read_text("utf-8") == "edited\n"
            export(made.out, "jsonl", existing="overwrite")
            assert len(path.read_text("utf-8").splitlines()) == items(made)
        finally:
            path.unlink(missing_ok=True)

    def test_several_prompts_one_prompt(self, made: Made, tmp_path: Path) -> None:
        result = export(made.out, "jsonl", to=tmp_path / "t.jsonl", prompt="tags")
        records = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text("utf-8").splitlines()]
        assert result.rows == len(records) == items(made) // 2
        assert {r["prompt_name"] for r in records} == {"tags"}
        with pytest.raises(ConfigError, match=r"no prompt 'nope'.*describe_zh, tags"):
            export(made.out, "jsonl", to=tmp_path / "n.jsonl", prompt="nope")


class TestExcludeFlag:
    def test_rows_with_the_flag_are_left_out(self, made: Made, tmp_path: Path) -> None:
        result = export(made.out, "jsonl", to=tmp_path / "x.jsonl", exclude_flags=["truncated"])
        records = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text("utf-8").splitlines()]
        assert {r["prompt_name"] for r in records} == {"describe_zh"}
        assert (result.rows, result.excluded, result.written) == (
            items(made), items(made) // 2, items(made) // 2,
        )  # fmt: skip
        both = export(made.out, "jsonl", to=tmp_path / "y.jsonl",
                      exclude_flags=["truncated,wrong_language"])  # fmt: skip
        assert both.written == 0 and (tmp_path / "y.jsonl").read_text("utf-8") == ""

    def test_unknown_flag_names_the_valid_ones(self, made: Made, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"'truncate'.*truncated, empty, refusal"):
            export(made.out, "jsonl", to=tmp_path / "x.jsonl", exclude_flags=["truncate"])
        assert not (tmp_path / "x.jsonl").exists()


class TestTxt:
    def test_mirrored_under_to_one_file_per_prompt(self, made: Made, tmp_path: Path) -> None:
        """Several prompts: <stem>.<prompt>.txt at the image's relative path; each file holds
        its caption (on one line)."""
        result = export(made.out, "txt", to=tmp_path / "caps")
        assert result.written == items(made)
        for (image_path, prompt), row in made.ok().items():
            stem = Path(image_path).with_suffix("")
            text = (tmp_path / "caps" / f"{stem}.{prompt}.txt").read_text("utf-8")
            assert text == " ".join(row["caption"].split()) == row["caption"]
        one = export(made.out, "txt", to=tmp_path / "tags", prompt="tags")
        assert one.written == items(made) // 2
        for (image_path, prompt), row in made.ok().items():
            if prompt == "tags":
                txt = tmp_path / "tags" / Path(image_path).with_suffix(".txt")
                assert txt.read_text("utf-8") == row["caption"]

    def test_beside_the_images_and_existing_modes(self, tmp_path: Path) -> None:
        """Without --to the caption files go beside the images (the input root from the
        dataset's own job); existing ones are kept, replaced, or stop the export untouched."""
        images, pics, out = small_run(tmp_path, 4)
        captions = {r["image_path"]: r["caption"] for r in read_rows(out).to_pylist()}
        first = export(out, "txt")
        assert first.written == 4 and first.target == f"beside the images under {images}"
        for pic in pics:
            rel = pic.relative_to(images).as_posix()
            assert pic.with_suffix(".txt").read_text("utf-8") == captions[rel]
        edited = pics[0].with_suffix(".txt")
        edited.write_text("my own caption", encoding="utf-8")
        gone = pics[1].with_suffix(".txt")
        gone.unlink()
        kept = export(out, "txt")
        assert (kept.written, kept.skipped) == (1, 3)
        assert edited.read_text("utf-8") == "my own caption" and gone.exists()
        gone.unlink()
        with pytest.raises(ConfigError, match="already exist"):
            export(out, "txt", existing="fail")
        assert not gone.exists()  # nothing written
        again = export(out, "txt", existing="overwrite")
        assert again.written == 4
        assert edited.read_text("utf-8") == captions[pics[0].relative_to(images).as_posix()]

    def test_images_moved_away(self, tmp_path: Path) -> None:
        """The input root is gone: the export says where it looked and suggests --to."""
        images, _, out = small_run(tmp_path, 2)
        shutil.move(images, tmp_path / "elsewhere")
        with pytest.raises(ConfigError, match=re.escape(str(images)) + ".*--to DIR"):
            export(out, "txt")
        assert export(out, "txt", to=tmp_path / "caps").written == 2

    def test_multi_line_captions_become_one_line(self, made: Made, tmp_path: Path) -> None:
        from pipeline.export_files import one_line

        assert one_line(" Line one.\n\n* item\ttwo \n") == "Line one. * item two"


class TestImagefolder:
    def test_loads_with_datasets(self, made: Made, tmp_path: Path) -> None:
        """metadata.jsonl + the images (hard links): datasets loads it as it is, each image with
        its caption."""
        datasets = pytest.importorskip("datasets")
        folder = tmp_path / "hf"
        result = export(made.out, "imagefolder", to=folder, prompt="describe_zh")
        n = items(made) // 2
        assert (result.written, result.missing) == (n, 0)
        ok = made.ok()
        first = next(iter(ok))[0]
        assert (folder / first).stat().st_ino == (made.images / first).stat().st_ino
        ds = datasets.load_dataset(
            "imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "cache")
        )
        assert ds.num_rows == n
        for example in ds:
            row = ok[example["image_path"], "describe_zh"]
            assert example["text"] == row["caption"]
            assert example["image"].size == (row["width"], row["height"])
        again = export(made.out, "imagefolder", to=folder, prompt="describe_zh")
        assert (again.written, again.skipped) == (0, n)

    def test_needs_to_and_one_prompt(self, made: Made, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="--to"):
            export(made.out, "imagefolder")
        with pytest.raises(ConfigError, match=r"describe_zh, tags.*--prompt"):
            export(made.out, "imagefolder", to=tmp_path / "hf")

    def test_missing_images_are_left_out(self, tmp_path: Path) -> None:
        """An image deleted since the run is skipped with a count and a warning."""
        images, pics, out = small_run(tmp_path, 3)
        pics[1].unlink()
        result = export(out, "imagefolder", to=tmp_path / "hf")
        assert (result.written, result.missing, result.complete) == (2, 1, False)
        assert pics[1].relative_to(images).as_posix() in result.warnings[0]
        lines = (tmp_path / "hf" / "metadata.jsonl").read_text("utf-8").splitlines()
        assert len(lines) == 2


class TestManifest:
    @pytest.fixture
    def embedded(self, tmp_path: Path) -> Path:
        """A dataset from a Parquet manifest holding the images' bytes (Hugging Face's Image
        struct), with ids, a kept column and a schema'd prompt; the image files are gone."""
        pics = make_images(tmp_path / "pics", 3)
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({
            "id": [f"item-{i}" for i in range(3)],
            "image": pa.array([{"bytes": p.read_bytes(), "path": None} for p in pics], image_type),
            "label": [f"L{i}" for i in range(3)],
        })  # fmt: skip
        manifest = tmp_path / "train.parquet"
        pq.write_table(table, manifest)
        shutil.rmtree(tmp_path / "pics")
        out = tmp_path / "out"
        with SimServer(SimConfig(slots=8, latency=0.01)) as sim:
            assert run(sim.base_url, "--manifest", str(manifest), "--output", str(out),
                       "--keep", "label", "--prompt", "Annotate $label",
                       "--schema", str(ANNOTATE), "--max-tokens", "512") == 0  # fmt: skip
        return out

    def test_txt_needs_to_and_names_files_by_id(self, embedded: Path, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"embedded in the manifest.*--to DIR"):
            export(embedded, "txt")
        result = export(embedded, "txt", to=tmp_path / "caps")
        assert result.written == 3
        assert sorted(p.name for p in (tmp_path / "caps").iterdir()) == [
            "item-0.txt", "item-1.txt", "item-2.txt",
        ]  # fmt: skip

    def test_imagefolder_writes_the_embedded_images(self, embedded: Path, tmp_path: Path) -> None:
        """The images come out of the manifest's bytes, named after the id with their format's
        extension; the schema's fields and the kept column are metadata columns."""
        datasets = pytest.importorskip("datasets")
        folder = tmp_path / "hf"
        result = export(embedded, "imagefolder", to=folder)
        assert result.written == 3
        assert sorted(p.name for p in folder.iterdir()) == [
            "item-0.jpg", "item-1.jpg", "item-2.jpg", "metadata.jsonl",
        ]  # fmt: skip
        ds = datasets.load_dataset(
            "imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "cache")
        )
        assert ds.num_rows == 3
        assert {"text", "tags", "objects", "short_caption", "label", "image_path"} <= set(
            ds.column_names
        )
        rows = {r["image_path"]: r for r in read_rows(embedded).to_pylist()}
        for example in ds:
            row = rows[example["image_path"]]
            assert example["tags"] == row["tags"] and example["label"] == row["label"]
            assert example["objects"] == row["objects"]

    def test_jsonl_and_csv_keep_structured_fields(self, embedded: Path, tmp_path: Path) -> None:
        """Struct and list fields: native in JSONL, JSON text in CSV."""
        export(embedded, "jsonl", to=tmp_path / "x.jsonl")
        export(embedded, "csv", to=tmp_path / "x.csv")
        records = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text("utf-8").splitlines()]
        with open(tmp_path / "x.csv", encoding="utf-8", newline="") as fh:
            cells = list(csv.DictReader(fh))
        for rec, cell in zip(records, cells, strict=True):
            assert isinstance(rec["objects"], list) and isinstance(rec["tags"], list)
            assert json.loads(cell["objects"]) == rec["objects"]
            assert cell["contains_text"] == str(rec["contains_text"]).lower()
            assert rec["label"] == cell["label"] and rec["flags"] == []


class TestManifestPaths:
    def test_beside_the_files_it_names_and_ids_in_imagefolder(self, tmp_path: Path) -> None:
        """A manifest naming files by path, with ids: caption files go beside those files
        (named after the file, found by reading the manifest again); imagefolder names each
        image after its id, with the file's extension."""
        pics = make_images(tmp_path / "pics", 3)
        manifest = tmp_path / "list.csv"
        lines = [f"photo-{i},{p.relative_to(tmp_path).as_posix()}" for i, p in enumerate(pics)]
        manifest.write_text("id,image\n" + "\n".join(lines) + "\n", encoding="utf-8")
        out = tmp_path / "out"
        with SimServer(SimConfig(slots=8, latency=0.01)) as sim:
            assert run(sim.base_url, "--manifest", str(manifest), "--output", str(out),
                       "--prompt", "Describe $id") == 0  # fmt: skip
        captions = {r["image_path"]: r["caption"] for r in read_rows(out).to_pylist()}
        assert export(out, "txt").written == 3
        for i, pic in enumerate(pics):
            assert pic.with_suffix(".txt").read_text("utf-8") == captions[f"photo-{i}"]
        folder = tmp_path / "hf"
        assert export(out, "imagefolder", to=folder).written == 3
        assert sorted(p.name for p in folder.iterdir()) == [
            "metadata.jsonl", "photo-0.jpg", "photo-1.jpg", "photo-2.jpg",
        ]  # fmt: skip
        with pytest.raises(ConfigError, match="already exist"):
            export(out, "imagefolder", to=folder, existing="fail")
        assert export(out, "imagefolder", to=folder, existing="overwrite").written == 3


def test_prompts_of_earlier_runs_keep_their_flags(tmp_path: Path) -> None:
    """A prompt that only an earlier run had is still judged by what it asked: the rows of both
    runs' prompts (each asks for Chinese; the simulator answers in English) keep
    wrong_language, whichever run's job is taken as the dataset's."""
    images = tmp_path / "images"
    make_images(images, 2)
    (tmp_path / "zh.txt").write_text("使用中文描述这张图像", encoding="utf-8")
    (tmp_path / "zh2.txt").write_text("请用中文回答图中有什么", encoding="utf-8")
    out = tmp_path / "out"
    with SimServer(SimConfig(slots=8, latency=0.01)) as sim:
        for prompt in ("zh.txt", "zh2.txt"):
            assert run(sim.base_url, "--input", str(images), "--output", str(out),
                       "--prompt-file", str(tmp_path / prompt)) == 0  # fmt: skip
    export(out, "jsonl", to=tmp_path / "x.jsonl")
    records = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text("utf-8").splitlines()]
    flags = {(r["image_path"], r["prompt_name"]): tuple(r["flags"]) for r in records}
    assert len(flags) == 4
    assert set(flags.values()) == {("wrong_language",)}


def test_a_relative_input_root_is_looked_up(tmp_path: Path) -> None:
    """Jobs written by caption run hold absolute paths; a relative root (a job built in code)
    is found through the run log, beside the job file, or in the working directory, and a root
    that is nowhere is named in the error."""
    from pipeline.export_files import input_root
    from pipeline.results import append_run_line

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "jobs" / "imgs").mkdir(parents=True)
    job = {"input": {"root": "imgs"}, "source": str(tmp_path / "jobs" / "job.toml")}
    assert input_root(job, out) == tmp_path / "jobs" / "imgs"
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    append_run_line(out, {"event": "start", "run_id": "r1", "input": str(recorded)})
    assert input_root(job, out) == recorded
    with pytest.raises(ConfigError, match=r"no folder .*nowhere"):
        input_root({"input": {"root": str(tmp_path / "nowhere")}}, out)


class TestCommandLine:
    def parse(self, *argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser(prog="caption export")
        add_export_arguments(parser)
        return parser.parse_args(argv)

    def test_jsonl_to_standard_output(
        self, made: Made, capsysbinary: pytest.CaptureFixture[bytes]
    ) -> None:
        args = self.parse(str(made.out), "--format", "jsonl", "--to", "-", "--prompt", "tags",
                          "--exclude-flag", "wrong_language")  # fmt: skip
        assert args.status == "ok" and args.existing == "skip"
        assert run_export(args) == 0
        captured = capsysbinary.readouterr()
        records = [json.loads(x) for x in captured.out.decode("utf-8").splitlines()]
        assert len(records) == items(made) // 2
        summary = captured.err.decode("utf-8")
        assert "caption export:" in summary and "truncated 6" in summary

    def test_csv_to_standard_output_reads_back(
        self, made: Made, capsysbinary: pytest.CaptureFixture[bytes]
    ) -> None:
        assert run_export(self.parse(str(made.out), "--format", "csv", "--to", "-")) == 0
        text = capsysbinary.readouterr().out.decode("utf-8")
        assert len(list(csv.DictReader(io.StringIO(text, newline="")))) == items(made)

    def test_usage_problems(self, made: Made, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="inside the dataset folder"):
            export(made.out, "jsonl", to=made.out / "x.jsonl")
        with pytest.raises(ConfigError, match="inside the dataset folder"):
            export(made.out, "txt", to=made.out / "caps")
        with pytest.raises(ConfigError, match="standard output"):
            export(made.out, "parquet", to="-")
        with pytest.raises(ConfigError, match="--status ok only"):
            export(made.out, "txt", to=tmp_path, status="any")
        with pytest.raises(ConfigError, match="--format must be one of"):
            export(made.out, "yaml")
        with pytest.raises(OutputError, match="not a folder"):
            export(tmp_path / "nowhere", "jsonl")
        (tmp_path / "file").write_text("", encoding="utf-8")
        with pytest.raises(OutputError, match="cannot write"):
            export(made.out, "txt", to=tmp_path / "file")
        (tmp_path / "empty").mkdir()
        with pytest.raises(OutputError, match="no caption part files"):
            export(tmp_path / "empty", "jsonl")

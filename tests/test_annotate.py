"""Dataset annotation end to end against the simulator: manifests with per-image variables and
kept columns, JSON-schema answers as typed columns, read back by pyarrow, pandas, polars, duckdb."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from helpers import make_images, sent_marker

from pipeline.cli import main
from pipeline.sim import FaultConfig, SimConfig, SimServer
from pipeline.sim.structured import structured_answer

DATA = Path(__file__).resolve().parents[1] / "data"
ANNOTATE = DATA / "schemas" / "annotate.json"
SCHEMA = json.loads(ANNOTATE.read_text("utf-8"))
TYPES = {
    "tags": pa.list_(pa.string()),
    "objects": pa.list_(pa.struct([("name", pa.string()), ("count", pa.int64())])),
    "short_caption": pa.string(),
    "contains_text": pa.bool_(),
    "rating": pa.string(),
}


def run(sim: SimServer, out: Path, *extra: str) -> int:
    return main(["run", "--endpoint", sim.base_url, "--model", "gemma3-27b", "--output", str(out),
                 "--no-progress", "--concurrency", "4", "--flush-interval", "0.2",
                 *extra])  # fmt: skip


def rows(out: Path) -> list[dict[str, Any]]:
    return sorted(
        ds.dataset(out, format="parquet").to_table().to_pylist(),
        key=lambda r: (r["image_path"], r["prompt_name"]),
    )


def write_csv(path: Path, header: list[str], lines: list[list[str]]) -> Path:
    text = ",".join(header) + "\n" + "".join(",".join(line) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def pics(tmp_path: Path) -> list[Path]:
    return make_images(tmp_path / "images", 6)


class TestManifest:
    def test_variables_identity_and_kept_columns(
        self, sim: SimServer, pics: list[Path], tmp_path: Path
    ) -> None:
        """Each row's variables are rendered into exactly the prompt the server received; the
        id is the identity; kept columns are copied."""
        lines = [
            [f"item-{i}", str(p.relative_to(tmp_path)), f"Title {i}", f"S{i}"]
            for i, p in enumerate(pics)
        ]
        manifest = write_csv(tmp_path / "list.csv", ["id", "image", "title", "sku"], lines)
        out = tmp_path / "out"
        code = run(sim, out, "--manifest", str(manifest), "--keep", "sku",
                   "--prompt", "Describe ${title} for $id please")  # fmt: skip
        assert code == 0
        got = rows(out)
        assert [r["image_path"] for r in got] == [f"item-{i}" for i in range(len(pics))]
        for i, (row, pic) in enumerate(zip(got, pics, strict=True)):
            assert row["status"] == "ok"
            assert sent_marker(pic) in row["caption"]
            assert f"— prompt: Describe Title {i} for item-{i} please —" in row["caption"]
            assert row["sku"] == f"S{i}"
        assert pq.read_schema(next(out.glob("part-*.parquet"))).field("sku").type == pa.string()

    def test_missing_file_and_missing_variable_are_invalid_rows(
        self, sim: SimServer, pics: list[Path], tmp_path: Path
    ) -> None:
        """A row naming a missing file, or lacking a variable the prompt uses, is an invalid
        row with the reason; the others are captioned."""
        manifest = tmp_path / "list.jsonl"
        lines = [
            {"image": str(pics[0]), "title": "one"},
            {"image": "nowhere/gone.jpg", "title": "two"},
            {"image": str(pics[1])},  # no title
        ]
        manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
        out = tmp_path / "out"
        assert run(sim, out, "--manifest", str(manifest), "--prompt", "Describe $title") == 0
        by_path = {r["image_path"]: r for r in rows(out)}
        assert by_path[str(pics[0])]["status"] == "ok"
        gone = by_path["nowhere/gone.jpg"]
        assert gone["status"] == "invalid"
        assert (
            "file not found" in gone["error"]
            and str(tmp_path / "nowhere" / "gone.jpg") in gone["error"]
        )
        untitled = by_path[str(pics[1])]
        assert untitled["status"] == "invalid"
        assert "no value for $title" in untitled["error"]
        assert sim.stats()["requests"] == 1

    def test_parquet_with_embedded_image_bytes(
        self, sim: SimServer, pics: list[Path], tmp_path: Path
    ) -> None:
        """A Parquet manifest holding the images' bytes as Hugging Face's {bytes, path} struct is
        captioned from those bytes: the files themselves are gone."""
        markers = [sent_marker(p) for p in pics]
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table(
            {
                "image": pa.array(
                    [{"bytes": p.read_bytes(), "path": p.name} for p in pics], type=image_type
                ),
                "label": [f"L{i}" for i in range(len(pics))],
            }
        )
        pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
        for p in pics:
            p.unlink()
        out = tmp_path / "out"
        code = run(sim, out, "--manifest", str(tmp_path / "train-00000-of-00001.parquet"),
                   "--keep", "label", "--prompt", "Label $label")  # fmt: skip
        assert code == 0
        got = {r["image_path"]: r for r in rows(out)}
        assert sorted(got) == sorted(p.name for p in pics)
        for i, (pic, marker) in enumerate(zip(pics, markers, strict=True)):
            row = got[pic.name]
            assert row["status"] == "ok" and marker in row["caption"]
            assert row["label"] == f"L{i}"
            assert f"— prompt: Label L{i} —" in row["caption"]

    def test_unparseable_manifest_line_stops_with_exit_2(
        self, sim: SimServer, pics: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A manifest line that cannot be parsed stops the run with exit 2 naming the line."""
        manifest = tmp_path / "list.jsonl"
        good = [json.dumps({"image": str(p)}) for p in pics[:3]]
        manifest.write_text("\n".join([*good, "{not json", json.dumps({"image": str(pics[3])})]))
        assert run(sim, tmp_path / "out", "--manifest", str(manifest), "--prompt", "Hi") == 2
        assert "line 4" in capsys.readouterr().err


class TestStructured:
    def test_answers_land_in_typed_columns(
        self, sim: SimServer, pics: list[Path], tmp_path: Path
    ) -> None:
        """Each row gets its own image's schema-valid fields in typed columns; caption keeps the
        raw JSON; the request carried the prompt's response_format."""
        out = tmp_path / "out"
        assert run(sim, out, "--input", str(tmp_path / "images"), "--prompt", "Annotate",
                   "--schema", str(ANNOTATE), "--max-tokens", "512") == 0  # fmt: skip
        schema = pq.read_schema(next(out.glob("part-*.parquet")))
        for name, type_ in TYPES.items():
            assert schema.field(name).type == type_
        got = rows(out)
        assert len(got) == len(pics)
        by_marker = {sent_marker(p): p for p in pics}
        for row in got:
            assert row["status"] == "ok" and row["attempts"] == 1
            fields = {name: row[name] for name in TYPES}
            assert json.loads(row["caption"]) == fields
            (marker,) = [m for m in by_marker if m in row["short_caption"]]
            assert by_marker[marker].name == Path(row["image_path"]).name
            assert fields == structured_answer(SCHEMA, marker, "Annotate")

    def test_every_reader_sees_one_table_across_schema_changes(
        self, sim: SimServer, pics: list[Path], tmp_path: Path
    ) -> None:
        """Runs with different schemas (and a free-text prompt) leave a dataset that pyarrow,
        pandas, polars and duckdb each read as one table with every column."""
        import duckdb
        import pandas as pd
        import polars as pl

        out = tmp_path / "out"
        root = tmp_path / "images"
        first = tmp_path / "first.json"
        first.write_text(json.dumps({"type": "object", "properties": {"mood": {"type": "string"}},
                                     "required": ["mood"]}))  # fmt: skip
        assert run(sim, out, "--input", str(root), "--prompt", "First", "--schema", str(first)) == 0
        assert run(sim, out, "--input", str(root), "--prompt", "Second", "--schema", str(ANNOTATE),
                   "--max-tokens", "512") == 0  # fmt: skip
        assert run(sim, out, "--input", str(root), "--prompt", "Third") == 0
        n = 3 * len(pics)
        wanted = {"mood", *TYPES, "caption"}

        table = ds.dataset(out, format="parquet").to_table()
        assert table.num_rows == n and wanted <= set(table.column_names)
        assert table.schema.field("tags").type == TYPES["tags"]
        frame = pd.read_parquet(out)
        assert len(frame) == n and wanted <= set(frame.columns)
        assert frame["mood"].notna().sum() == len(pics)
        polars = pl.read_parquet(str(out / "*.parquet"))
        assert polars.height == n and wanted <= set(polars.columns)
        assert polars["rating"].drop_nulls().len() == len(pics)
        con = duckdb.connect()
        count, moods, ratings = con.execute(
            f"SELECT count(*), count(mood), count(rating) FROM read_parquet('{out}/*.parquet')"
        ).fetchone() or (0, 0, 0)
        assert (count, moods, ratings) == (n, len(pics), len(pics))

    def test_type_change_across_runs_is_refused(
        self, sim: SimServer, pics: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A property whose type changed since an earlier run into the same output: exit 2."""
        out = tmp_path / "out"
        root = str(tmp_path / "images")
        for i, kind in enumerate(["integer", "string"]):
            schema = tmp_path / f"s{i}.json"
            schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": kind}}}))
            code = run(sim, out, "--input", root, "--prompt", f"P{i}", "--schema", str(schema))
            assert code == (0 if i == 0 else 2)
        err = capsys.readouterr().err
        assert "'n' is string in this job but int64 in" in err

    def test_invalid_answers_are_retried_then_failed_with_the_message(
        self, pics: list[Path], tmp_path: Path
    ) -> None:
        """Answers that break the schema are retried (counted in attempts); after the retries
        the row is failed with 'schema: ...' and the raw answer in caption."""
        out = tmp_path / "out"
        with SimServer(
            SimConfig(slots=8, latency=0.01, faults=FaultConfig(schema=1.0), seed=3)
        ) as sim:
            code = run(sim, out, "--input", str(tmp_path / "images"), "--prompt", "Annotate",
                       "--schema", str(ANNOTATE), "--max-tokens", "512",
                       "--retries", "2")  # fmt: skip
            requests = sim.stats()["requests"]
        assert code == 1
        got = rows(out)
        assert requests == 3 * len(pics) + 1  # + the preflight's probe
        for row in got:
            assert row["status"] == "failed" and row["attempts"] == 3
            assert row["error"].startswith("schema: ")
            assert row["caption"] and row["http_status"] == 200
            assert row["rating"] is None

    def test_server_without_structured_outputs_stops_at_preflight(
        self, pics: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A server that refuses response_format stops the run before any image: exit 2."""
        with SimServer(SimConfig(structured_outputs=False)) as sim:
            code = run(sim, tmp_path / "out", "--input", str(tmp_path / "images"),
                       "--prompt", "Annotate", "--schema", str(ANNOTATE))  # fmt: skip
            requests = sim.stats()["requests"]
        assert code == 2
        assert requests <= 1  # the probe only
        assert "response_format" in capsys.readouterr().err


def test_example_annotation_job_runs(sim: SimServer, tmp_path: Path) -> None:
    """jobs/annotate.toml with its manifest and schema runs as shipped: typed fields, the
    manifest's title in each prompt, its source column kept."""
    out = tmp_path / "out"
    code = main(["run", str(DATA.parent / "jobs" / "annotate.toml"), "--endpoint", sim.base_url,
                 "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    got = rows(out)
    assert len(got) == 7 and all(r["status"] == "ok" for r in got)
    assert {r["source"] for r in got} == {"scikit-image", "NASA"}
    frame = pq.read_table(io.BytesIO(next(out.glob("part-*.parquet")).read_bytes()))
    assert frame.schema.field("contains_text").type == pa.bool_()


def test_prompts_of_an_image_share_one_encode_and_one_endpoint(
    pics: list[Path], tmp_path: Path
) -> None:
    """Several prompts of one image: the image is encoded once for all of them, and with two
    servers they all go to the same one (whose prefix and image caches hold it)."""
    prompts = "".join(f'[[prompt]]\nname = "p{i}"\ntext = "Prompt {i}"\n' for i in range(3))
    with (
        SimServer(SimConfig(slots=4, latency=0.02)) as a,
        SimServer(SimConfig(slots=4, latency=0.02)) as b,
    ):
        job = tmp_path / "job.toml"
        job.write_text(
            f'[endpoint]\nurl = ["{a.base_url}", "{b.base_url}"]\n'
            f'[input]\nroot = "{tmp_path / "images"}"\n{prompts}'
            f'[run]\noutput = "{tmp_path / "out"}"\nconcurrency = 4\nprogress = false\n'
        )
        assert main(["run", str(job)]) == 0
        served = (a.stats()["requests"], b.stats()["requests"])
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in rows(tmp_path / "out"):
        by_image.setdefault(row["image_path"], []).append(row)
    assert len(by_image) == len(pics)
    for image_rows in by_image.values():
        assert len(image_rows) == 3
        assert len({r["encode_s"] for r in image_rows}) == 1  # one Loaded, one encode
        assert len({r["endpoint"] for r in image_rows}) == 1
    assert min(served) > 0  # both servers took images

"""The manifest reader: CSV, JSONL and Parquet rows -> entries, streamed, with line numbers."""

from __future__ import annotations

import datetime as dt
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigError
from pipeline.manifest import (
    INFER_LINES,
    Entry,
    ManifestError,
    open_manifest,
    read_entries,
    text_of,
)

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def entries(path: Path, keep: tuple[str, ...] = (), **kwargs: Any) -> list[Entry]:
    return list(read_entries(open_manifest(path, keep, **kwargs)))


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def jsonl(path: Path, *records: dict[str, Any]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


def parquet(path: Path, columns: dict[str, Any], **kwargs: Any) -> Path:
    pq.write_table(pa.table(columns), path, **kwargs)
    return path


def read_until_error(path: Path, keep: tuple[str, ...] = ()) -> tuple[list[Entry], ManifestError]:
    """The entries read before the stream raised, and the error (which must come)."""
    seen: list[Entry] = []
    with pytest.raises(ManifestError) as info:
        seen.extend(read_entries(open_manifest(path, keep)))
    return seen, info.value


class TestFormat:
    @pytest.mark.parametrize("name", ["m.csv", "m.CSV", "m.jsonl", "m.ndjson"])
    def test_text_extensions_are_recognised(self, tmp_path: Path, name: str) -> None:
        """.csv, .jsonl and .ndjson (any case) pick their reader."""
        body = "image\na.jpg\n" if name.lower().endswith(".csv") else '{"image": "a.jpg"}\n'
        assert [e.identity for e in entries(write(tmp_path / name, body))] == ["a.jpg"]

    @pytest.mark.parametrize("name", ["m.parquet", "m.pq"])
    def test_parquet_extensions_are_recognised(self, tmp_path: Path, name: str) -> None:
        """.parquet and .pq read as Parquet."""
        path = parquet(tmp_path / name, {"image": ["a.jpg"]})
        assert open_manifest(path).format == "parquet"

    @pytest.mark.parametrize("name", ["m.tsv", "m.json", "m.csv.gz", "manifest"])
    def test_unsupported_extension_is_a_config_error(self, tmp_path: Path, name: str) -> None:
        """Another extension stops the run and lists the supported ones."""
        path = write(tmp_path / name, "image\na.jpg\n")
        with pytest.raises(ConfigError, match=r"unsupported.*\.csv, \.jsonl, \.ndjson, \.parquet"):
            open_manifest(path)

    @pytest.mark.parametrize(("name", "body"), [("m.csv", "image,title\r\n"), ("m.jsonl", "\n")])
    def test_manifest_without_rows(self, tmp_path: Path, name: str, body: str) -> None:
        """A CSV with only its header, or an empty JSONL file, gives no entries."""
        assert entries(write(tmp_path / name, body)) == []

    def test_manifest_error_is_a_config_error(self) -> None:
        """A manifest that cannot be parsed stops the run like any configuration error."""
        assert issubclass(ManifestError, ConfigError)


class TestPaths:
    def test_relative_path_resolves_against_the_manifest_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative path is relative to the manifest's folder, not the working directory."""
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        (tmp_path / "jobs").mkdir()
        [e] = entries(write(tmp_path / "jobs" / "m.csv", "image\n./img/../img/a.jpg\n"))
        assert e.path == str(tmp_path / "jobs" / "img" / "a.jpg")
        assert e.data is None and e.error is None

    def test_absolute_path_stays(self, tmp_path: Path) -> None:
        """An absolute path is used as is, and is the identity as is."""
        [e] = entries(jsonl(tmp_path / "m.jsonl", {"image": "/data/x//y.png"}))
        assert (e.path, e.identity) == ("/data/x/y.png", "/data/x/y.png")

    def test_home_is_expanded(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """``~`` means the home folder in the path; the identity keeps the ``~``."""
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        [e] = entries(write(tmp_path / "m.csv", "image\n~/pics/a.jpg\n"))
        assert e.path == str(tmp_path / "home" / "pics" / "a.jpg")
        assert e.identity == "~/pics/a.jpg"

    @pytest.mark.parametrize(
        ("written", "identity"),
        [
            ("a/b.jpg", "a/b.jpg"),
            ("./a/b.jpg", "a/b.jpg"),
            ("a//b.jpg", "a/b.jpg"),
            ("a/./c/../b.jpg", "a/b.jpg"),
            ("../up/b.jpg", "../up/b.jpg"),
            ("/abs/b.jpg", "/abs/b.jpg"),
        ],
    )
    def test_identity_is_the_normalised_path(
        self, tmp_path: Path, written: str, identity: str
    ) -> None:
        """Without an id, the path as written (normalised, POSIX) names the item."""
        [e] = entries(write(tmp_path / "m.csv", f"image\n{written}\n"))
        assert e.identity == identity


class TestIdentity:
    def test_id_column_names_the_item(self, tmp_path: Path) -> None:
        """A non-empty id wins over the path; an empty one falls back to the path."""
        path = write(tmp_path / "m.csv", "id,image\nsku-1,a.jpg\n,b.jpg\n")
        assert [e.identity for e in entries(path)] == ["sku-1", "b.jpg"]

    def test_jsonl_id_is_stringified(self, tmp_path: Path) -> None:
        """A numeric JSON id becomes its text; null and "" fall back to the path."""
        path = jsonl(
            tmp_path / "m.jsonl",
            {"image": "a.jpg", "id": 12},
            {"image": "b.jpg", "id": None},
            {"image": "c.jpg", "id": ""},
            {"image": "d.jpg", "id": True},
        )
        assert [e.identity for e in entries(path)] == ["12", "b.jpg", "c.jpg", "true"]
        assert open_manifest(path).has_id

    def test_parquet_integer_id(self, tmp_path: Path) -> None:
        """A Parquet integer id column names items by its text."""
        path = parquet(tmp_path / "m.parquet", {"id": [7, None], "image": ["a.jpg", "b.jpg"]})
        assert [e.identity for e in entries(path)] == ["7", "b.jpg"]

    def test_row_without_image_or_id_is_named_by_line(self, tmp_path: Path) -> None:
        """With nothing else to go by, ``<manifest file name>#<line>`` names the row."""
        [_, e] = entries(write(tmp_path / "m.csv", "image,title\na.jpg,x\n,y\n"))
        assert e.identity == "m.csv#3"


class TestVariables:
    @pytest.mark.parametrize(
        ("value", "text"),
        [
            ("plain", "plain"),
            ("", ""),
            ("Zoë ☃", "Zoë ☃"),
            (12, "12"),
            (-3, "-3"),
            (1.5, "1.5"),
            (2.0, "2.0"),
            (1e20, "1e+20"),
            (True, "true"),
            (False, "false"),
            ([1, "a", None], '[1,"a",null]'),
            ({"k": [1, 2], "é": {"x": True}}, '{"k":[1,2],"é":{"x":true}}'),
            (None, None),
        ],
    )
    def test_text_of(self, value: Any, text: str | None) -> None:
        """Values become prompt text: str as is, numbers str(), bools lower-case, JSON compact."""
        assert text_of(value) == text

    def test_jsonl_row_variables(self, tmp_path: Path) -> None:
        """Every key but image becomes a variable (id too); null and missing keys are absent."""
        path = jsonl(
            tmp_path / "m.jsonl",
            {"image": "a.jpg", "id": 5, "title": "Cat", "n": 3, "tags": ["x"], "gone": None},
            {"image": "b.jpg", "title": ""},
        )
        first, second = entries(path)
        assert first.variables == {"id": "5", "title": "Cat", "n": "3", "tags": '["x"]'}
        assert second.variables == {"title": ""}

    def test_csv_empty_cell_is_absent(self, tmp_path: Path) -> None:
        """An empty CSV cell is not a variable (CSV cannot tell null from empty)."""
        path = write(tmp_path / "m.csv", "image,id,title,sku\na.jpg,,,S1\nb.jpg,B,T,\n")
        first, second = entries(path)
        assert first.variables == {"sku": "S1"}
        assert second.variables == {"id": "B", "title": "T"}

    def test_parquet_values_are_stringified(self, tmp_path: Path) -> None:
        """Parquet values follow the same rules; float32 prints in its own precision."""
        columns = {
            "image": ["a.jpg", "b.jpg"],
            "n": pa.array([3, None], pa.int32()),
            "score": pa.array([0.1, 2.0], pa.float32()),
            "ok": [True, False],
            "tags": [["a", "b"], []],
            "meta": [{"w": 1}, None],
        }
        first, second = entries(parquet(tmp_path / "m.parquet", columns))
        assert first.variables == {
            "n": "3",
            "score": "0.1",
            "ok": "true",
            "tags": '["a","b"]',
            "meta": '{"w":1}',
        }
        assert second.variables == {"score": "2.0", "ok": "false", "tags": "[]"}

    def test_variables_limits_the_columns(self, tmp_path: Path) -> None:
        """``variables=`` keeps only the named columns (the ones the prompts use)."""
        path = write(tmp_path / "m.csv", "image,a,b,c\nx.jpg,1,2,3\n")
        [e] = entries(path, variables={"b", "zzz"})
        assert e.variables == {"b": "2"}

    def test_parquet_reads_only_the_needed_columns(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Only image, id, the wanted variables and keep columns are read from Parquet."""
        path = parquet(
            tmp_path / "m.parquet",
            {"big": [[0.0] * 100], "image": ["a.jpg"], "id": ["i"], "t": ["x"], "k": [1]},
        )
        asked: list[list[str]] = []
        real = pq.ParquetFile.iter_batches

        def spy(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
            asked.append(kwargs["columns"])
            return real(self, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
        [e] = entries(path, ("k",), variables={"t"})
        assert asked == [["image", "id", "t", "k"]]
        assert (e.variables, e.keep) == ({"t": "x"}, {"k": 1})


class TestKeep:
    def test_csv_keep_is_text(self, tmp_path: Path) -> None:
        """CSV keep columns are strings; an empty cell is None; image and id may be kept."""
        path = write(tmp_path / "m.csv", "image,id,n\na.jpg,A,3\nb.jpg,,\n")
        m = open_manifest(path, ("n", "image", "id"))
        assert m.keep_types == {"n": pa.string(), "image": pa.string(), "id": pa.string()}
        first, second = read_entries(m)
        assert first.keep == {"n": "3", "image": "a.jpg", "id": "A"}
        assert second.keep == {"n": None, "image": "b.jpg", "id": None}

    @pytest.mark.parametrize("suffix", [".csv", ".parquet"])
    def test_keep_column_not_in_header(self, tmp_path: Path, suffix: str) -> None:
        """A keep column the file lacks stops the run, naming it and the columns there are."""
        path = tmp_path / f"m{suffix}"
        if suffix == ".csv":
            write(path, "image,title\na.jpg,x\n")
        else:
            parquet(path, {"image": ["a.jpg"], "title": ["x"]})
        with pytest.raises(ConfigError) as info:
            open_manifest(path, ("titel",))
        message = str(info.value)
        assert "'titel'" in message and "did you mean 'title'" in message
        assert "columns: 'image', 'title'" in message
        assert not isinstance(info.value, ManifestError)  # the job is wrong, not the file

    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            ([True, False], pa.bool_()),
            ([1, 2, -3], pa.int64()),
            ([1, 2.5], pa.float64()),
            ([0.5, 1.5], pa.float64()),
            (["a", "b"], pa.string()),
            ([1, "a"], pa.string()),
            ([True, 1], pa.string()),
            ([[1, 2]], pa.string()),
            ([{"a": 1}], pa.string()),
            ([2**70], pa.string()),
            ([None, None], pa.string()),
        ],
    )
    def test_jsonl_type_is_inferred(
        self, tmp_path: Path, values: list[Any], expected: pa.DataType
    ) -> None:
        """A JSONL keep column's type comes from its non-null values in the first lines."""
        path = jsonl(tmp_path / "m.jsonl", *({"image": "a.jpg", "v": v} for v in values))
        assert open_manifest(path, ("v",)).keep_types == {"v": expected}

    def test_jsonl_values_take_the_type(self, tmp_path: Path) -> None:
        """Values are converted to the inferred type; strings hold compact JSON for others."""
        rows = [
            {"image": "a.jpg", "n": 1, "f": 1, "s": "x", "mixed": "x"},
            {"image": "b.jpg", "n": 3.0, "f": 2.5, "s": None, "mixed": [1, {"a": None}]},
        ]
        first, second = entries(jsonl(tmp_path / "m.jsonl", *rows), ("n", "f", "s", "mixed"))
        assert first.keep == {"n": 1, "f": 1.0, "s": "x", "mixed": "x"}
        assert isinstance(first.keep["f"], float)
        assert second.keep == {"n": 3, "f": 2.5, "s": None, "mixed": '[1,{"a":null}]'}
        assert second.error is None

    @pytest.mark.parametrize(
        ("first", "later", "fits"),
        [
            (1, "seven", False),
            (1, 2.5, False),
            (1, True, False),
            (1, 2**64, False),
            (1, 4.0, True),
            (True, 1, False),
            (0.5, "x", False),
            (0.5, 7, True),
            ("s", 7, True),
            ("s", [1], True),
        ],
    )
    def test_later_misfit_is_a_row_error(
        self, tmp_path: Path, first: Any, later: Any, fits: bool
    ) -> None:
        """A kept value past the inference window that does not fit is a row error, no crash."""
        head = ({"image": f"{i}.jpg", "v": first} for i in range(INFER_LINES))
        path = jsonl(tmp_path / "m.jsonl", *head, {"image": "late.jpg", "v": later})
        last = entries(path, ("v",))[-1]
        assert last.identity == "late.jpg"
        if fits:
            assert last.error is None
        else:
            line = INFER_LINES + 1
            assert last.error is not None
            assert last.error.startswith(f"manifest line {line}: keep column 'v' holds ")
            assert "does not fit its type" in last.error
            assert last.keep == {"v": None}

    def test_parquet_keeps_json_types_and_stringifies_the_rest(self, tmp_path: Path) -> None:
        """Parquet keep columns keep their Arrow type when JSON can hold it, else string."""
        when = dt.datetime(2024, 5, 6, 7, 8, 9)
        columns = {
            "image": ["a.jpg"],
            "i32": pa.array([7], pa.int32()),
            "f32": pa.array([0.5], pa.float32()),
            "flag": [True],
            "tags": pa.array([[1, 2]], pa.list_(pa.int64())),
            "meta": pa.array([{"a": "x", "b": 1.5}]),
            "cat": pa.array(["red"]).dictionary_encode(),
            "when": pa.array([when], pa.timestamp("s")),
            "raw": pa.array([b"\x00"], pa.binary()),
        }
        path = parquet(tmp_path / "m.parquet", columns)
        keep = tuple(c for c in columns if c != "image")
        m = open_manifest(path, keep)
        assert m.keep_types == {
            "i32": pa.int32(),
            "f32": pa.float32(),
            "flag": pa.bool_(),
            "tags": pa.list_(pa.int64()),
            "meta": pa.struct([("a", pa.string()), ("b", pa.float64())]),
            "cat": pa.string(),
            "when": pa.string(),
            "raw": pa.string(),
        }
        [e] = read_entries(m)
        assert e.keep == {
            "i32": 7,
            "f32": 0.5,
            "flag": True,
            "tags": [1, 2],
            "meta": {"a": "x", "b": 1.5},
            "cat": "red",
            "when": str(when),
            "raw": str(b"\x00"),
        }
        assert "raw" not in e.variables  # bytes are never prompt text

    def test_parquet_embedded_image_cannot_be_kept(self, tmp_path: Path) -> None:
        """Keeping an image column of bytes would copy every image into the output: refused."""
        path = parquet(tmp_path / "m.parquet", {"image": pa.array([b"x"], pa.binary())})
        with pytest.raises(ConfigError, match="keep 'image'"):
            open_manifest(path, ("image",))


class TestParquetImages:
    def test_binary_column(self, tmp_path: Path) -> None:
        """A binary image column gives the bytes; ``<file>#<row>`` names rows without an id."""
        path = parquet(
            tmp_path / "shard.parquet",
            {"image": pa.array([b"JPEG1", b"JPEG2"], pa.large_binary()), "id": [None, "two"]},
        )
        first, second = entries(path)
        assert (first.identity, first.line, first.data, first.path) == (
            "shard.parquet#1",
            1,
            b"JPEG1",
            None,
        )
        assert (second.identity, second.data) == ("two", b"JPEG2")
        assert open_manifest(path).image_kind == "binary"

    def test_hugging_face_image_struct(self, tmp_path: Path) -> None:
        """The ``{bytes, path}`` struct: bytes win; a path alone names a file; neither: error."""
        images = pa.array(
            [
                {"bytes": b"PNG", "path": "cats/01.png"},
                {"bytes": b"PNG2", "path": None},
                {"bytes": None, "path": "files/x.jpg"},
                {"bytes": None, "path": None},
                None,
            ],
            HF_IMAGE,
        )
        path = parquet(tmp_path / "train.parquet", {"image": images, "label": [1, 2, 3, 4, 5]})
        rows = entries(path)
        assert [e.identity for e in rows] == [
            "cats/01.png",
            "train.parquet#2",
            "files/x.jpg",
            "train.parquet#4",
            "train.parquet#5",
        ]
        assert [e.data for e in rows] == [b"PNG", b"PNG2", None, None, None]
        assert rows[2].path == str(tmp_path / "files" / "x.jpg")
        assert [e.error for e in rows] == [None] * 3 + [
            "manifest row 4: no image",
            "manifest row 5: no image",
        ]
        assert rows[0].variables == {"label": "1"}

    def test_written_by_hugging_face_datasets(self, tmp_path: Path) -> None:
        """A shard written by ``datasets`` itself reads as embedded images (needs datasets)."""
        datasets = pytest.importorskip("datasets")
        features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
        data = {"image": [{"bytes": b"\x89PNG", "path": "a.png"}], "text": ["hi"]}
        path = tmp_path / "hf.parquet"
        datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
        [e] = entries(path)
        assert (e.data, e.identity, e.variables) == (b"\x89PNG", "a.png", {"text": "hi"})

    def test_image_column_of_another_type(self, tmp_path: Path) -> None:
        """An image column that is neither path, bytes nor struct is a manifest error."""
        path = parquet(tmp_path / "m.parquet", {"image": [1, 2]})
        with pytest.raises(ManifestError, match=r"column 'image' is int64"):
            open_manifest(path)

    def test_batches_keep_row_numbers(self, tmp_path: Path) -> None:
        """Rows are numbered from 1 across row groups and batches."""
        path = parquet(
            tmp_path / "m.parquet",
            {"image": [f"{i}.jpg" for i in range(2500)]},
            row_group_size=700,
        )
        rows = entries(path)
        assert [e.line for e in rows] == list(range(1, 2501))
        assert rows[-1].identity == "2499.jpg"


class TestRowErrors:
    def test_empty_image_cell(self, tmp_path: Path) -> None:
        """An empty image cell is a row error, not an exception; later rows still come."""
        path = write(tmp_path / "m.csv", "image,id\na.jpg,\n,B\nc.jpg,\n")
        rows = entries(path)
        assert [e.error for e in rows] == [None, "manifest line 3: no image", None]
        assert (rows[1].identity, rows[1].path) == ("B", None)

    def test_jsonl_image_missing_null_or_not_text(self, tmp_path: Path) -> None:
        """A JSONL image key that is absent, null, empty or not a string is a row error."""
        path = jsonl(
            tmp_path / "m.jsonl",
            {"image": "a.jpg"},
            {"title": "no image key"},
            {"image": None},
            {"image": ""},
            {"image": 5},
        )
        assert [e.error for e in entries(path)] == [
            None,
            "manifest line 2: no image",
            "manifest line 3: no image",
            "manifest line 4: no image",
            "manifest line 5: image is a int, not a path",
        ]

    def test_wrong_number_of_csv_fields(self, tmp_path: Path) -> None:
        """A record with more or fewer fields than the header is a row error."""
        path = write(tmp_path / "m.csv", "image,title\na.jpg,x,extra\nb.jpg\nc.jpg,z\n")
        rows = entries(path, ("title",))
        assert [e.error for e in rows] == [
            "manifest line 2: 3 fields, the header has 2",
            "manifest line 3: 1 fields, the header has 2",
            None,
        ]
        assert rows[0].keep == {"title": None}

    def test_missing_files_are_not_checked(self, tmp_path: Path) -> None:
        """The reader gives the absolute path; whether the file exists is the pipeline's job."""
        [e] = entries(write(tmp_path / "m.csv", "image\nnot-there.jpg\n"))
        assert (e.path, e.error) == (str(tmp_path / "not-there.jpg"), None)


class TestCsvDialect:
    def test_bom_and_crlf(self, tmp_path: Path) -> None:
        """A UTF-8 BOM does not stick to the first column name; CRLF endings are stripped."""
        path = tmp_path / "m.csv"
        path.write_bytes(b"\xef\xbb\xbfimage,title\r\na.jpg,Cat\r\nb.jpg,Dog\r\n")
        assert open_manifest(path).columns == ("image", "title")
        rows = entries(path)
        assert [(e.identity, e.variables, e.line) for e in rows] == [
            ("a.jpg", {"title": "Cat"}, 2),
            ("b.jpg", {"title": "Dog"}, 3),
        ]

    def test_quoted_newlines_keep_line_numbers(self, tmp_path: Path) -> None:
        """A cell spanning lines keeps its newlines; each record reports its first line."""
        text = 'image,note\r\na.jpg,"one\r\ntwo\r\nthree"\r\n\r\nb.jpg,"x\ny"\nc.jpg,plain\n'
        rows = entries(write(tmp_path / "m.csv", text))
        assert [e.line for e in rows] == [2, 6, 8]
        assert rows[0].variables == {"note": "one\r\ntwo\r\nthree"}
        assert rows[1].variables == {"note": "x\ny"}

    def test_duplicate_column_names(self, tmp_path: Path) -> None:
        """A header naming a column twice is a manifest error."""
        with pytest.raises(ManifestError, match="named twice: title"):
            open_manifest(write(tmp_path / "m.csv", "image,title,title\na,b,c\n"))


class TestManifestErrors:
    @pytest.mark.parametrize(
        ("name", "make"),
        [
            ("m.csv", lambda p: write(p, "path,title\na.jpg,x\n")),
            ("m.jsonl", lambda p: jsonl(p, {"Image": "a.jpg"})),
            ("m.parquet", lambda p: parquet(p, {"path": ["a.jpg"]})),
        ],
    )
    def test_no_image_column(self, tmp_path: Path, name: str, make: Callable[[Path], Path]) -> None:
        """A manifest without an image column is refused up front, naming the file."""
        path = make(tmp_path / name)
        with pytest.raises(ManifestError, match=r"no 'image' (column|key)") as info:
            open_manifest(path)
        assert str(path) in str(info.value)

    def test_bad_csv_quoting_mid_stream(self, tmp_path: Path) -> None:
        """Bad quoting deep in the file raises from the iterator with its line."""
        body = "".join(f"{i}.jpg,t\n" for i in range(3000))
        path = write(tmp_path / "m.csv", f'image,title\n{body}x.jpg,"quoted"junk\nz.jpg,t\n')
        seen, error = read_until_error(path)
        assert len(seen) == 3000
        assert error.line == 3002
        assert str(error).startswith(f"manifest {path}, line 3002: bad CSV: ")

    def test_unterminated_quote_names_start_and_end(self, tmp_path: Path) -> None:
        """A quote never closed reports the last line and the line its record started."""
        path = write(tmp_path / "m.csv", 'image,title\na.jpg,ok\nb.jpg,"open\nmore\nlast\n')
        seen, error = read_until_error(path)
        assert [e.identity for e in seen] == ["a.jpg"]
        assert error.line == 5
        assert "(in the record that starts at line 3)" in str(error)

    def test_bad_jsonl_line_mid_stream(self, tmp_path: Path) -> None:
        """A line that is not JSON after the inference window raises with its line number."""
        good = "".join(json.dumps({"image": f"{i}.jpg"}) + "\n" for i in range(1500))
        path = write(tmp_path / "m.jsonl", good + '{"image": "x.jpg",\n' + good)
        seen, error = read_until_error(path)
        assert len(seen) == 1500
        assert error.line == 1501
        assert str(error).startswith(f"manifest {path}, line 1501: not JSON: ")

    def test_jsonl_line_not_an_object(self, tmp_path: Path) -> None:
        """A JSON value that is not an object is a manifest error; in the first lines, up front."""
        path = write(tmp_path / "m.jsonl", '{"image": "a.jpg"}\n\n["b.jpg"]\n')
        with pytest.raises(ManifestError, match=r"line 3: not a JSON object but an array"):
            open_manifest(path)

    @pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
    def test_not_utf8_mid_stream(self, tmp_path: Path, suffix: str) -> None:
        """Bytes that are not UTF-8 raise with the exact line, even deep in the file."""
        line = "a.jpg\n" if suffix == ".csv" else '{"image": "a.jpg"}\n'
        head = "image\n" if suffix == ".csv" else ""
        path = tmp_path / f"m{suffix}"
        path.write_bytes((head + line * 2000).encode() + b"\xff\xfe\n" + line.encode())
        seen, error = read_until_error(path)
        assert len(seen) == 2000
        assert error.line == 2001 + len(head.splitlines())
        assert "not UTF-8" in str(error)

    def test_unreadable_file(self, tmp_path: Path) -> None:
        """A manifest that does not exist is a manifest error naming it."""
        with pytest.raises(ManifestError, match=r"m\.csv: cannot read: No such file"):
            open_manifest(tmp_path / "m.csv")

    def test_empty_csv(self, tmp_path: Path) -> None:
        """A CSV without a header line is a manifest error."""
        with pytest.raises(ManifestError, match="empty file"):
            open_manifest(write(tmp_path / "m.csv", ""))

    def test_truncated_parquet(self, tmp_path: Path) -> None:
        """A Parquet file cut short (no footer) is refused up front, naming the file."""
        path = parquet(tmp_path / "m.parquet", {"image": [f"{i}.jpg" for i in range(100)]})
        path.write_bytes(path.read_bytes()[:-100])
        with pytest.raises(ManifestError, match="not a readable Parquet file") as info:
            open_manifest(path)
        assert info.value.line is None
        assert str(info.value).startswith(f"manifest {path}: ")

    def test_corrupt_parquet_row_group_mid_stream(self, tmp_path: Path) -> None:
        """A damaged row group raises when it is reached, naming its first unread row."""
        path = parquet(
            tmp_path / "m.parquet",
            {"image": [f"img/{i:05d}.jpg" for i in range(5000)]},
            row_group_size=1000,
            compression="snappy",
        )
        chunk = pq.ParquetFile(path).metadata.row_group(3).column(0)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        raw = bytearray(path.read_bytes())
        raw[start + 20 : start + chunk.total_compressed_size - 5] = b"\xab" * (
            chunk.total_compressed_size - 25
        )
        path.write_bytes(bytes(raw))
        seen, error = read_until_error(path)
        assert len(seen) == 3000
        assert error.line == 3001
        assert str(error).startswith(f"manifest {path}, row 3001: cannot read row group 3 ")


class TestStreaming:
    """Memory stays flat whatever the row count: one line (or batch) at a time.

    tracemalloc slows every allocation (here ~20 us a row instead of ~5), so the run is
    150,000 rows per format, with the peak also read at 25,000: holding the entries would
    cost ~30 MB at the end against ~5 MB at the checkpoint.
    """

    ROWS = 150_000
    CHECKPOINT = 25_000

    @staticmethod
    def peaks(path: Path, keep: tuple[str, ...]) -> tuple[int, int, int]:
        """(rows, traced peak after CHECKPOINT rows, traced peak at the end)."""
        m = open_manifest(path, keep)
        count = early = 0
        tracemalloc.start()
        try:
            for count, _ in enumerate(read_entries(m), 1):
                if count == TestStreaming.CHECKPOINT:
                    early = tracemalloc.get_traced_memory()[1]
            late = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return count, early, late

    @pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
    def test_memory_is_flat(self, tmp_path: Path, suffix: str) -> None:
        """Streaming 150,000 rows peaks under 1 MB traced, no higher than after 25,000 rows."""
        path = tmp_path / f"big{suffix}"
        if suffix == ".csv":
            rows = (f"img/{i}.jpg,,title {i},{i}\n" for i in range(self.ROWS))
            path.write_text("image,id,title,n\n" + "".join(rows))
        else:
            rows = (
                f'{{"image": "img/{i}.jpg", "title": "title {i}", "n": {i}}}\n'
                for i in range(self.ROWS)
            )
            path.write_text("".join(rows))
        started, cpu = time.perf_counter(), time.process_time()
        count, early, late = self.peaks(path, ("n",))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(
            f"{suffix}: {count:,} rows in {elapsed:.1f} s ({cpu:.1f} s CPU), "
            f"traced peak {early:,} B after {self.CHECKPOINT:,} rows, {late:,} B at the end"
        )
        assert count == self.ROWS
        assert late < 1 << 20
        assert late < early + (64 << 10)

"""pipeline/storage.py against a real S3-compatible server on loopback (moto_server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from helpers import make_images
from s3server import S3Server, moto_server

from pipeline import storage
from pipeline.config import Overrides, load_job
from pipeline.errors import ConfigError
from pipeline.sim import SimConfig, SimServer


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server, with the standard AWS variables pointing at it."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def _put(s3: S3Server, bucket: str, keys: dict[str, bytes]) -> None:
    fs = s3.fs()
    for key, data in keys.items():
        with fs.open_output_stream(f"{bucket}/{key}") as fh:
            fh.write(data)


def test_is_uri() -> None:
    assert storage.is_uri("s3://b/p")
    assert storage.is_uri("gs://b/p")
    assert not storage.is_uri("/data/images")
    assert not storage.is_uri("images")
    assert not storage.is_uri("file:///data/images")
    assert not storage.is_uri(Path("s3:/x"))
    assert storage.local_path("file:///data/my%20images") == "/data/my images"


def test_resolve_from_env(s3: S3Server) -> None:
    loc = storage.resolve("s3://bucket/some/prefix/")
    assert loc.path == "bucket/some/prefix"
    assert loc.s3 is not None and loc.s3.endpoint_url == s3.endpoint
    assert loc.uri == f"s3://bucket/some/prefix@{s3.endpoint}"
    assert "testing-secret" not in repr(loc.s3)


def test_resolve_query_overrides_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    bucket = s3.new_bucket()
    _put(s3, bucket, {"a.jpg": b"x"})
    loc = storage.resolve(f"s3://{bucket}?endpoint_override=127.0.0.1:{s3.port}&scheme=http")
    assert [o.relpath for o in storage.iter_objects(loc)] == ["a.jpg"]


def test_resolve_refuses_secrets_and_unknown_options() -> None:
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        storage.resolve("s3://b/p?secret_key=hunter2")
    with pytest.raises(ConfigError, match="unknown S3 option 'endpoint'"):
        storage.resolve("s3://b/p?endpoint=x")
    with pytest.raises(ConfigError, match="no bucket"):
        storage.resolve("s3:///p")


TREE = {
    "b/2.jpg": b"22",
    "a/1.JPG": b"1",
    "a/deep/3.png": b"333",
    "a/notes.txt": b"no",
    ".hidden/4.jpg": b"h",
    "a/.5.jpg": b"h",
    "top.webp": b"top",
}


@pytest.mark.parametrize("botocore", [True, False], ids=["paged", "levels"])
def test_iter_objects(s3: S3Server, monkeypatch: pytest.MonkeyPatch, botocore: bool) -> None:
    """Both listings (botocore's paged ListObjectsV2 and pyarrow level by level) find the same
    objects: hidden names and folder markers skipped, the name filter applied, sizes and
    mtimes set."""
    monkeypatch.setattr(storage, "botocore_available", lambda: botocore)
    bucket = s3.new_bucket()
    _put(s3, bucket, {f"in/{k}": v for k, v in TREE.items()} | {"other.jpg": b"o"})
    client = storage.s3_client(storage.resolve(f"s3://{bucket}").s3)  # type: ignore[arg-type]
    client.put_object(Bucket=bucket, Key="in/a/", Body=b"")  # a "folder" marker key
    loc = storage.resolve(f"s3://{bucket}/in")
    found = list(storage.iter_objects(loc, lambda n: n.lower().endswith((".jpg", ".png", ".webp"))))
    assert sorted(o.relpath for o in found) == ["a/1.JPG", "a/deep/3.png", "b/2.jpg", "top.webp"]
    assert [o.relpath for o in found] == sorted(o.relpath for o in found)  # a fixed order
    for o in found:
        assert o.path == f"{bucket}/in/{o.relpath}"
        assert o.size == len(TREE[o.relpath])
        assert o.mtime_ns > 0
        assert storage.read_bytes(loc.fs, o.path) == TREE[o.relpath]
    if botocore:
        assert all(o.etag for o in found)


def test_listing_pages(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """More objects than a page: every one comes back once, in key order."""
    monkeypatch.setattr(storage, "LIST_PAGE", 7)
    bucket = s3.new_bucket()
    keys = {f"p/{i:03d}.jpg": b"x" for i in range(50)}
    _put(s3, bucket, keys)
    got = [o.relpath for o in storage.iter_objects(storage.resolve(f"s3://{bucket}/p"))]
    assert got == [k[2:] for k in sorted(keys)]


def test_listing_is_lazy(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first object arrives after one page request, not after the whole listing."""
    monkeypatch.setattr(storage, "LIST_PAGE", 5)
    bucket = s3.new_bucket()
    _put(s3, bucket, {f"{i:03d}.jpg": b"x" for i in range(30)})
    calls: list[dict[str, object]] = []
    real = storage.s3_client

    def counting(opts: storage.S3Options) -> object:
        client = real(opts)
        inner = client.list_objects_v2

        def list_objects_v2(**kw: object) -> object:
            calls.append(kw)
            return inner(**kw)

        client.list_objects_v2 = list_objects_v2
        return client

    monkeypatch.setattr(storage, "s3_client", counting)
    it = storage.iter_objects(storage.resolve(f"s3://{bucket}"))
    assert next(it).relpath == "000.jpg"
    assert len(calls) == 1
    assert len(list(it)) == 29
    assert len(calls) == 6


def test_missing_bucket_is_an_error(s3: S3Server) -> None:
    with pytest.raises(Exception, match="cannot list"):
        list(storage.iter_objects(storage.resolve("s3://no-such-bucket-here/x")))


def test_write_read_list_delete(s3: S3Server) -> None:
    bucket = s3.new_bucket()
    out = storage.resolve(f"s3://{bucket}/out")
    assert not storage.exists(out)
    table = pa.table({"key": ["a", "b"], "n": [1, 2]})
    storage.write_table(out.fs, out.child("part-r1-00001.parquet"), table)
    storage.write_table(out.fs, out.child("part-r1-00002.parquet"), table.slice(1))
    storage.write_bytes(out.fs, out.child("_caption_compact.json"), b"{}")
    storage.write_bytes(out.fs, out.child("sub/part-x.parquet"), b"not listed: not direct")
    assert storage.exists(out)
    names = storage.list_names(out, "part-*.parquet")
    assert names == ["part-r1-00001.parquet", "part-r1-00002.parquet"]
    pf = storage.parquet_file(out.fs, out.child(names[0]))
    assert pf.read(columns=["key"]).column(0).to_pylist() == ["a", "b"]
    storage.write_table(out.fs, out.child(names[0]), table.slice(0, 1))  # replaced whole
    assert storage.parquet_file(out.fs, out.child(names[0])).metadata.num_rows == 1
    storage.delete(out.fs, out.child(names[1]))
    storage.delete(out.fs, out.child(names[1]))  # already gone: fine
    assert storage.list_names(out, "part-*.parquet") == [names[0]]
    assert storage.list_names(storage.resolve(f"s3://{bucket}/none"), "*") == []


def test_killed_upload_leaves_no_object(s3: S3Server, tmp_path: Path) -> None:
    """A process killed in the middle of uploading an object leaves no object at all (S3
    writes an object whole or not at all): the reader never sees half a part file."""
    bucket = s3.new_bucket()
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from s3server import S3Server
        fs = S3Server({s3.port}, 0).fs()
        fh = fs.open_output_stream("{bucket}/part-half.parquet")
        fh.write(b"x" * (12 << 20))  # past pyarrow's 5 MB part size: upload under way
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert proc.returncode == -9
    assert storage.list_names(storage.resolve(f"s3://{bucket}"), "*") == []


def test_state_dir_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3: S3Server) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = storage.state_dir_for(storage.resolve("s3://bucket/out/photos"))
    assert a.parent == tmp_path / "caption" / "state"
    assert a.name.startswith("bucket_out_photos_http_127.0.0.1_")
    assert a == storage.state_dir_for(storage.resolve("s3://bucket/out/photos/"))
    assert a != storage.state_dir_for(storage.resolve("s3://bucket/out/photos2"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert a != storage.state_dir_for(storage.resolve("s3://bucket/out/photos"))  # other server
    assert storage.state_dir_for(storage.resolve("s3://b/x"), tmp_path).parent == tmp_path


# --- caption run / status with the input and the output in the bucket ------------------------


def _upload(s3: S3Server, folder: Path, bucket: str, prefix: str) -> int:
    fs = s3.fs()
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    for p in files:
        with fs.open_output_stream(f"{bucket}/{prefix}/{p.relative_to(folder).as_posix()}") as fh:
            fh.write(p.read_bytes())
    return len(files)


def _caption(
    s3: S3Server, tmp: Path, *args: str, wait: bool = True
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    env = {**os.environ, **s3.env(), "XDG_CACHE_HOME": str(tmp / "cache")}
    cmd = [sys.executable, "-m", "pipeline", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _run_args(sim: SimServer, bucket: str, *more: str) -> list[str]:
    return [
        "run", "--endpoint", sim.base_url, "--input", f"s3://{bucket}/in", "--prompt",
        "describe", "--output", f"s3://{bucket}/out", "--no-progress", "--flush-interval",
        "0.2", *more,
    ]  # fmt: skip


def _rows(s3: S3Server, bucket: str) -> pa.Table:
    return ds.dataset(f"{bucket}/out", filesystem=s3.fs(), format="parquet").to_table()


@pytest.mark.slow
def test_run_on_s3_then_rerun_skips(s3: S3Server, sim: SimServer, tmp_path: Path) -> None:
    """Images listed from the bucket, parts written to it; the lock, journal and hash cache in
    the derived local state folder; a rerun sends nothing; status reads the URI output."""
    bucket = s3.new_bucket()
    make_images(tmp_path / "imgs", 30)
    assert _upload(s3, tmp_path / "imgs", bucket, "in") == 30
    s3.fs().open_output_stream(f"{bucket}/in/notes.txt").close()  # not an image: not listed
    first = _caption(s3, tmp_path, *_run_args(sim, bucket))
    assert isinstance(first, subprocess.CompletedProcess)
    assert first.returncode == 0, first.stderr
    assert "30 this run: 30 ok" in first.stdout
    table = _rows(s3, bucket)
    assert table.num_rows == 30
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert sorted(table.column("image_path").to_pylist())[:2] == ["a/img0000.jpg", "a/img0004.jpg"]
    names = storage.list_names(storage.resolve(f"s3://{bucket}/out"), "*")
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in names), names
    (state,) = (tmp_path / "cache" / "caption" / "state").iterdir()
    assert state.name.startswith(f"{bucket}_out_")
    assert {"_caption.lock", "_caption_hashes.sqlite", "_caption_runs.jsonl"} <= {
        p.name for p in state.iterdir()
    }
    requests = sim.stats()["requests"]

    again = _caption(s3, tmp_path, *_run_args(sim, bucket))
    assert isinstance(again, subprocess.CompletedProcess)
    assert again.returncode == 0, again.stderr
    assert "0 this run" in again.stdout and "30 already done" in again.stdout
    assert _rows(s3, bucket).num_rows == 30
    assert sim.stats()["requests"] == requests  # nothing sent

    status = _caption(s3, tmp_path, "status", f"s3://{bucket}/out", "--json")
    assert isinstance(status, subprocess.CompletedProcess)
    assert status.returncode == 0, status.stderr
    got = json.loads(status.stdout)
    assert got["output"] == f"s3://{bucket}/out"
    assert got["prompts"]["prompt"]["ok"] == 30
    assert got["prompts"]["prompt"]["pending"] == 0
    assert got["runs"] == 2

    dry = _caption(s3, tmp_path, *_run_args(sim, bucket), "--dry-run")
    assert isinstance(dry, subprocess.CompletedProcess)
    assert dry.returncode == 0, dry.stderr
    assert "30 already done, 0 invalid, 0 to send" in dry.stdout

    uri = f"s3://{bucket}/out"
    export = _caption(s3, tmp_path, "export", uri, "--format", "jsonl", "--to", str(tmp_path))
    assert isinstance(export, subprocess.CompletedProcess)
    assert export.returncode == 0, export.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 30 and json.loads(lines[0])["status"] == "ok"
    for args, why in (
        (["--format", "csv"], "give --to FILE"),
        (["--format", "txt"], "images are in object storage"),  # not into the input bucket
    ):
        refused = _caption(s3, tmp_path, "export", uri, *args)
        assert isinstance(refused, subprocess.CompletedProcess)
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr

    # caption files mirrored under --to; an imagefolder with the objects downloaded
    txt = _caption(s3, tmp_path, "export", uri, "--format", "txt", "--to", str(tmp_path / "t"))
    assert isinstance(txt, subprocess.CompletedProcess)
    assert txt.returncode == 0, txt.stderr
    assert len(list((tmp_path / "t").rglob("*.txt"))) == 30
    assert (tmp_path / "t" / "a" / "img0000.txt").read_text().strip()
    folder = tmp_path / "hf"
    made = _caption(s3, tmp_path, "export", uri, "--format", "imagefolder", "--to", str(folder))
    assert isinstance(made, subprocess.CompletedProcess)
    assert made.returncode == 0, made.stderr
    meta = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 30
    first_image = folder / meta[0]["file_name"]
    assert first_image.read_bytes() == (tmp_path / "imgs" / meta[0]["image_path"]).read_bytes()

    # the report of the URI output, with thumbnails made from the input's objects
    page = tmp_path / "r.html"
    report = _caption(s3, tmp_path, "report", uri, "-o", str(page))
    assert isinstance(report, subprocess.CompletedProcess)
    assert report.returncode == 0, report.stderr
    assert "30 thumbnails" in report.stdout, report.stdout
    assert page.stat().st_size > 30 * 1000


@pytest.mark.slow
def test_sigkill_mid_run_resumes(s3: S3Server, tmp_path: Path) -> None:
    """A run SIGKILLed mid-way: the rerun turns its journal (local) into a part (in the
    bucket), sends only what is missing, and every image ends with exactly one ok row."""
    bucket = s3.new_bucket()
    make_images(tmp_path / "imgs", 120)
    _upload(s3, tmp_path / "imgs", bucket, "in")
    state = tmp_path / "state"
    with SimServer(SimConfig(slots=4, latency=0.05)) as sim:
        args = [*_run_args(sim, bucket, "--state-dir", str(state)), "--concurrency", "4"]
        proc = _caption(s3, tmp_path, *args, "--flush-interval", "30", wait=False)
        assert isinstance(proc, subprocess.Popen)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = sum(p.read_text().count("\n") for p in state.glob("_caption_journal-*.jsonl"))
            if lines >= 20:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert lines >= 20
        assert storage.list_names(storage.resolve(f"s3://{bucket}/out"), "*") == []

        rerun = _caption(s3, tmp_path, *args)
        assert isinstance(rerun, subprocess.CompletedProcess)
        assert rerun.returncode == 0, rerun.stderr
    table = _rows(s3, bucket)
    keys = table.column("image_path").to_pylist()
    assert len(keys) == len(set(keys)) == 120
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert len(set(table.column("run_id").to_pylist())) == 2  # the killed run's rows were kept
    assert not list(state.glob("_caption_journal-*"))


def test_uris_stay_uris_in_job_files_and_flags(s3: S3Server, tmp_path: Path) -> None:
    """A URI is not resolved against the job file's folder (or the working folder) as a
    relative path would be; local paths still are; ``state_dir`` is a path setting."""
    bucket = s3.new_bucket()
    _put(s3, bucket, {"in/x.jpg": b"x"})
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        f'[input]\nroot = "s3://{bucket}/in"\n[[prompt]]\ntext = "hi"\n'
        f'[run]\noutput = "s3://{bucket}/out"\nstate_dir = "state"\n'
    )
    job = load_job(job_file, Overrides())
    assert job.input.root == f"s3://{bucket}/in"
    assert job.run.output == f"s3://{bucket}/out"
    assert job.run.state_dir == tmp_path / "state"
    job = load_job(job_file, Overrides(output=f"s3://{bucket}/other", input=str(tmp_path)))
    assert job.run.output == f"s3://{bucket}/other"
    assert job.input.root == tmp_path


def test_unusable_input_uri_is_a_config_error(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    for uri, why in (
        ("s3://no-such-bucket-xyz/in", "no such bucket, or no objects under it"),
        (f"s3://{bucket}/empty", "no such bucket, or no objects under it"),
        (f"s3://{bucket}/in?secret_key=x", "do not put secret_key in the URI"),
    ):
        with pytest.raises(ConfigError, match=why):
            load_job(None, Overrides(input=uri, output=str(tmp_path / "o"), prompt="hi"))


# --- manifests in the bucket (and local manifests naming objects) ------------------------------


def _rows_at(folder: Path) -> dict[str, tuple[str, str | None]]:
    table = ds.dataset(folder, format="parquet").to_table()
    return {
        r["image_path"]: (r["status"], r["error"])
        for r in table.select(["image_path", "status", "error"]).to_pylist()
    }


@pytest.mark.slow
def test_csv_manifest_in_the_bucket(s3: S3Server, sim: SimServer, tmp_path: Path) -> None:
    """A CSV manifest read from the bucket: relative paths are objects beside it, ``s3://`` URIs
    are read as written, a missing object and a local path are invalid rows; the rerun stats
    the objects (HEAD), reads none and sends nothing; status and the dry run read it too."""
    bucket = s3.new_bucket()
    paths = make_images(tmp_path / "imgs", 6)
    _upload(s3, tmp_path / "imgs", bucket, "data/imgs")
    other = f"s3://{bucket}/elsewhere/z.jpg"
    _put(s3, bucket, {"elsewhere/z.jpg": paths[0].read_bytes(),
                      "data/imgs/odd #1.jpg": paths[1].read_bytes()})  # fmt: skip
    lines = ["image,topic"]
    lines += [
        f"imgs/{p.relative_to(tmp_path / 'imgs').as_posix()},t{i}" for i, p in enumerate(paths)
    ]
    lines += [
        f"{other},z",
        "imgs/odd #1.jpg,o",
        "imgs/missing.jpg,m",
        "/etc/local.jpg,l",
        "../data/imgs/a/img0000.jpg,u",
    ]
    _put(s3, bucket, {"data/list.csv": ("\n".join(lines) + "\n").encode()})
    out = tmp_path / "out"
    args = [
        "run", "--endpoint", sim.base_url, "--manifest", f"s3://{bucket}/data/list.csv",
        "--prompt", "about $topic", "--output", str(out), "--no-progress",
    ]  # fmt: skip
    first = _caption(s3, tmp_path, *args)
    assert isinstance(first, subprocess.CompletedProcess)
    assert first.returncode == 0, first.stderr  # invalid rows do not fail the run
    got = _rows_at(out)
    assert len(got) == 11
    assert {k for k, v in got.items() if v[0] == "ok"} == {
        *(f"imgs/{p.relative_to(tmp_path / 'imgs').as_posix()}" for p in paths),
        other,
        "imgs/odd #1.jpg",  # '#' and a space: part of the name, not of the URI
        "../data/imgs/a/img0000.jpg",  # identity as written (normalised), object beside it
    }
    assert got["imgs/missing.jpg"][0] == "invalid"
    assert "object not found" in str(got["imgs/missing.jpg"][1])
    assert got["/etc/local.jpg"][0] == "invalid"
    assert "is a local path" in str(got["/etc/local.jpg"][1])
    requests = sim.stats()["requests"]

    again = _caption(s3, tmp_path, *args)
    assert isinstance(again, subprocess.CompletedProcess)
    assert "9 already done" in again.stdout, again.stdout
    assert sim.stats()["requests"] == requests  # nothing sent again

    status = _caption(s3, tmp_path, "status", str(out), "--json")
    assert isinstance(status, subprocess.CompletedProcess)
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["prompts"]["prompt"]
    assert (counts["ok"], counts["pending"]) == (9, 0), counts

    dry = _caption(s3, tmp_path, *args, "--dry-run")
    assert isinstance(dry, subprocess.CompletedProcess)
    assert dry.returncode == 0, dry.stderr
    assert "9 already done" in dry.stdout, dry.stdout

    # thumbnails from the objects the manifest names (two rows name one object: one thumbnail)
    report = _caption(s3, tmp_path, "report", str(out), "-o", str(tmp_path / "r.html"))
    assert isinstance(report, subprocess.CompletedProcess)
    assert report.returncode == 0, report.stderr
    assert "8 thumbnails" in report.stdout, report.stdout
    folder = tmp_path / "hf"
    made = _caption(s3, tmp_path, "export", str(out), "--format", "imagefolder", "--to",
                    str(folder))  # fmt: skip
    assert isinstance(made, subprocess.CompletedProcess)
    assert made.returncode == 0, made.stderr
    meta = (folder / "metadata.jsonl").read_text().splitlines()
    assert len(meta) == 9 and len([p for p in folder.rglob("*.jpg")]) == 9


@pytest.mark.slow
def test_parquet_manifest_in_the_bucket_with_embedded_images(
    s3: S3Server, sim: SimServer, tmp_path: Path
) -> None:
    """A Hugging Face style Parquet file ({bytes, path} images) read from the bucket with
    ranged reads; its rows are captioned into an output in the same bucket."""
    import pyarrow.parquet as pq

    bucket = s3.new_bucket()
    paths = make_images(tmp_path / "imgs", 5)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(5)],
            "image": pa.array(
                [{"bytes": p.read_bytes(), "path": p.name} for p in paths], type=image
            ),
        }
    )
    with s3.fs().open_output_stream(f"{bucket}/hf/train.parquet") as fh:
        pq.write_table(table, fh)
    args = [
        "run", "--endpoint", sim.base_url, "--manifest", f"s3://{bucket}/hf/train.parquet",
        "--prompt", "describe $id", "--output", f"s3://{bucket}/out", "--no-progress",
    ]  # fmt: skip
    done = _caption(s3, tmp_path, *args)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0, done.stderr
    rows = _rows(s3, bucket)
    assert sorted(rows.column("image_path").to_pylist()) == [f"r{i}" for i in range(5)]
    assert set(rows.column("status").to_pylist()) == {"ok"}
    again = _caption(s3, tmp_path, *args)
    assert isinstance(again, subprocess.CompletedProcess)
    assert "5 already done" in again.stdout, again.stdout


def test_local_manifest_naming_objects(s3: S3Server, sim: SimServer, tmp_path: Path) -> None:
    """A local JSONL manifest whose images are ``s3://`` URIs: they are read from the bucket."""
    bucket = s3.new_bucket()
    paths = make_images(tmp_path / "imgs", 3)
    _put(s3, bucket, {f"p/{p.name}": p.read_bytes() for p in paths})
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(
        "".join(json.dumps({"image": f"s3://{bucket}/p/{p.name}"}) + "\n" for p in paths)
        + json.dumps({"image": f"s3://{bucket}/p/gone.jpg"})
        + "\n"
    )
    out = tmp_path / "out"
    args = [
        "run", "--endpoint", sim.base_url, "--manifest", str(manifest), "--prompt", "hi",
        "--output", str(out), "--no-progress",
    ]  # fmt: skip
    done = _caption(s3, tmp_path, *args)
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 0, done.stderr
    got = _rows_at(out)
    assert [got[f"s3://{bucket}/p/{p.name}"][0] for p in paths] == ["ok"] * 3
    assert got[f"s3://{bucket}/p/gone.jpg"][0] == "invalid"


def test_missing_manifest_uri_is_a_config_error(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    done = _caption(s3, tmp_path, "run", "--manifest", f"s3://{bucket}/nope.csv", "--prompt",
                    "hi", "--output", str(tmp_path / "o"), "--no-progress")  # fmt: skip
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 2
    assert f"manifest s3://{bucket}/nope.csv" in done.stderr and "no such object" in done.stderr


@pytest.mark.parametrize("botocore", [True, False])
def test_listing_in_parts_equals_the_listing(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch, botocore: bool
) -> None:
    """The Ray engine's parallel listing (top level here, each folder in its own task) yields
    what the one listing yields: same paths, sizes, times and ETag numbers."""
    from pipeline.config.settings import DEFAULT_PATTERNS
    from pipeline.engines.listing import list_folder, split_input
    from pipeline.walker import walk_input

    monkeypatch.setattr(storage, "botocore_available", lambda: botocore)
    bucket = s3.new_bucket()
    keys = {f"in/{d}/{i}.jpg": bytes([i]) * (i + 1) for d in ("a", "b/c", "d") for i in range(3)}
    keys |= {"in/top.jpg": b"t", "in/notes.txt": b"n", "in/.h/x.jpg": b"h", "out/x.jpg": b"o"}
    # names a URI would read otherwise: '#', '?', '%20', a space (a prefix "a" beside "a#b")
    keys |= {"in/a#b/x y.jpg": b"1", "in/a?q/%20.jpg": b"2"}
    _put(s3, bucket, keys)
    uri = f"s3://{bucket}/in"
    split = split_input(uri, DEFAULT_PATTERNS)
    assert sorted(split.folders) == ["a", "a#b", "a?q", "b", "d"]
    assert [f.relpath for f in split.files] == ["top.jpg"]
    parts = list(split.files)
    for name in split.folders:
        parts += list_folder(uri, name, DEFAULT_PATTERNS)
    assert sorted(parts) == sorted(walk_input(uri, DEFAULT_PATTERNS))
    assert len(parts) == 12

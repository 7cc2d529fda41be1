"""Object storage: ``--input``, ``--manifest`` and ``--output`` given as URIs.

A URI (``s3://bucket/prefix``, or any other scheme ``pyarrow.fs`` resolves: ``gs://``,
``hdfs://``, ...; else fsspec's, when fsspec is installed) becomes a ``Location``: a
``pyarrow.fs.FileSystem`` and the path in it. Local paths never come here: they keep the fast
local code (``os.scandir``, ``flock``, fsync and rename).

- **Endpoint and credentials** (S3): the URI's query (``?endpoint_override=host:port&scheme=
  http&region=...``), else the standard variables ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``
  (``http://host:port``), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``
  and ``AWS_REGION``/``AWS_DEFAULT_REGION``; without keys, the SDK's usual chain (profile
  files, instance role). A key in the URI is refused: it would end up in logs and ``ps``.
- **Listing streams**: ``iter_objects`` yields one object at a time. ``pyarrow.fs`` can only
  return a whole listing as one list (``get_file_info(FileSelector(recursive=True))``); for
  S3 the listing is paged with botocore's ``list_objects_v2`` paginator (1,000 keys a page, one
  page held at a time), so memory stays flat at a million objects (``bench/storage.py``). Other
  schemes, or S3 without botocore, walk one "folder" level at a time through ``pyarrow.fs``:
  memory is then bounded by the largest folder, not the whole tree.
- **Objects are written whole**: ``write_bytes`` uploads a complete buffer. An S3 PUT (and a
  multipart upload, which appears only at its CompleteMultipartUpload) is atomic per object: a
  reader sees the whole new object or none, never a part of one; there is no rename and no
  temp key. A crash mid-upload leaves no object (an unfinished multipart upload is invisible
  and is removed by the bucket's lifecycle rule for incomplete uploads, if it has one).
- **Local state**: the lock, the journal and the hash cache need a POSIX file system (flock,
  append, fsync, SQLite), so for a URI output they live in a local state folder:
  ``state_dir_for`` derives one under the user's cache folder from the output URI.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import ConfigError, OutputError

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# query options passed on to pyarrow's S3FileSystem (the others are refused by name)
_S3_QUERY = {"endpoint_override", "scheme", "region", "allow_bucket_creation"}
_SECRET_QUERY = {"access_key", "secret_key", "session_token"}
_ARROW_SCHEMES = {"gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "mock"}  # pyarrow's own
LIST_PAGE = 1000  # S3's own page size: one page is what a listing holds at a time


def is_uri(text: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` other than ``file://`` (which is a local path)."""
    if not isinstance(text, str):
        return False
    m = _SCHEME.match(text)
    return m is not None and m["scheme"].lower() != "file"


def path_or_uri(text: str) -> Path | str:
    """A command-line argument naming an output: a ``Path``, or a URI kept as text."""
    return text if is_uri(text) else Path(local_path(text))


def local_path(text: str) -> str:
    """``file:///x`` -> ``/x``; anything else unchanged."""
    if text.lower().startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlsplit(text).path)
    return text


@dataclass(frozen=True)
class S3Options:
    """What both pyarrow and botocore need to reach one S3 endpoint."""

    endpoint_url: str | None  # http(s)://host:port, or None for AWS itself
    region: str | None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    allow_bucket_creation: bool = False


@dataclass(frozen=True)
class Location:
    """A place in a ``pyarrow.fs`` file system: ``fs`` and ``path`` (for S3 ``bucket/prefix``,
    no trailing slash). ``uri`` is the canonical name (scheme, endpoint, path; no secrets)."""

    fs: pafs.FileSystem
    path: str
    uri: str
    s3: S3Options | None = None

    def child(self, name: str) -> str:
        """The file-system path of ``name`` (relative, ``/``-separated) inside this location."""
        return f"{self.path}/{name}" if self.path else name

    def __str__(self) -> str:
        return self.uri


def _s3_options(query: dict[str, str]) -> S3Options:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    if "endpoint_override" in query:
        host = query["endpoint_override"]
        scheme = query.get("scheme", "https")
        endpoint = host if "://" in host else f"{scheme}://{host}"
    elif endpoint is not None and "scheme" in query:
        endpoint = f"{query['scheme']}://{endpoint.split('://', 1)[-1]}"
    region = query.get("region") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    return S3Options(
        endpoint_url=endpoint.rstrip("/") if endpoint else None,
        region=region or None,
        access_key=env.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        allow_bucket_creation=query.get("allow_bucket_creation", "").lower() in ("1", "true"),
    )


@functools.lru_cache(maxsize=16)
def _s3_filesystem(opts: S3Options) -> pafs.S3FileSystem:
    """One file system per endpoint and keys (a manifest naming a million objects resolves each
    of them: making the file system is the costly part of ``resolve``)."""
    kwargs: dict[str, Any] = {"allow_bucket_creation": opts.allow_bucket_creation}
    if opts.endpoint_url is not None:
        parts = urllib.parse.urlsplit(opts.endpoint_url)
        kwargs["endpoint_override"] = parts.netloc or parts.path
        kwargs["scheme"] = parts.scheme or "https"
    if opts.region is not None:
        kwargs["region"] = opts.region
    if opts.access_key is not None and opts.secret_key is not None:
        kwargs.update(access_key=opts.access_key, secret_key=opts.secret_key)
        if opts.session_token is not None:
            kwargs["session_token"] = opts.session_token
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> Location:
    """``uri`` -> ``Location``; a URI that cannot be used is a ``ConfigError`` saying why."""
    m = _SCHEME.match(uri)
    if m is None:
        raise ConfigError(f"{uri!r} is not a URI (scheme://...)")
    scheme = m["scheme"].lower()
    parts = urllib.parse.urlsplit(uri)
    query = dict(urllib.parse.parse_qsl(parts.query))
    secrets = sorted(_SECRET_QUERY & query.keys())
    if secrets:
        raise ConfigError(
            f"{parts.scheme}://{parts.netloc}{parts.path}: do not put {', '.join(secrets)} in the "
            "URI (it would show in logs and ps); use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        )
    if scheme in ("s3", "s3a"):
        unknown = sorted(query.keys() - _S3_QUERY)
        if unknown:
            raise ConfigError(
                f"{uri}: unknown S3 option {unknown[0]!r} (known: {', '.join(sorted(_S3_QUERY))})"
            )
        if not parts.netloc:
            raise ConfigError(f"{uri}: no bucket (s3://bucket/prefix)")
        opts = _s3_options(query)
        try:
            fs = _s3_filesystem(opts)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise ConfigError(f"{uri}: {exc}") from None
        path = f"{parts.netloc}/{urllib.parse.unquote(parts.path).strip('/')}".rstrip("/")
        where = f"@{opts.endpoint_url}" if opts.endpoint_url else ""
        return Location(fs, path, f"s3://{path}{where}", opts)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, pa.ArrowException) as exc:
        found = None if scheme in _ARROW_SCHEMES else _fsspec(uri)
        if found is None:
            raise ConfigError(f"cannot open {uri}: {exc}") from None
        fs, path = found
    return Location(fs, path.rstrip("/"), uri.split("?", 1)[0].rstrip("/"))


def _fsspec(uri: str) -> tuple[pafs.FileSystem, str] | None:
    """A scheme ``pyarrow.fs`` does not know, through fsspec when it is installed and knows
    it (``memory://``, ``az://`` with adlfs, ``ssh://``...), wrapped as a ``pyarrow.fs``
    file system; None otherwise."""
    try:
        import fsspec  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError, OSError):  # unknown scheme, or its package is missing
        return None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), str(path)


def state_dir_for(loc: Location, base: Path | None = None) -> Path:
    """The local folder for a URI output's lock, journal and hash cache:
    ``<cache>/caption/state/<sanitised uri>-<8 hex of its sha256>`` (``<cache>`` is
    ``$XDG_CACHE_HOME`` or ``~/.cache``). The hash keeps two URIs that sanitise alike apart."""
    if base is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        base = Path(cache) / "caption" / "state"
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", loc.uri.split("://", 1)[-1]).strip("_.")[:80]
    digest = hashlib.sha256(loc.uri.encode()).hexdigest()[:8]
    return base / f"{clean}-{digest}"


class ObjectInfo(NamedTuple):
    """One object found by ``iter_objects``."""

    path: str  # in the file system (for S3 ``bucket/key``)
    relpath: str  # below the listed location, ``/``-separated
    size: int
    mtime_ns: int
    etag: str = ""  # S3's ETag (changes with the content), "" elsewhere


def _hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def iter_objects(
    loc: Location, match: Callable[[str], object] | None = None
) -> Iterator[ObjectInfo]:
    """The objects below ``loc``, one at a time, never the whole listing at once.

    ``match(name)`` filters by file name (the last path component). Names with a component
    starting with ``.`` are skipped, as the local walk skips hidden entries, and so are
    S3 "folder" marker keys (ending in ``/``). S3: in key order (one paged listing); elsewhere
    depth-first, names sorted within each folder. A listing that fails: ``OSError``.
    """
    if loc.s3 is not None and botocore_available():
        yield from _iter_s3(loc, loc.s3, match)
    else:
        yield from _iter_levels(loc, match)


def botocore_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("botocore") is not None


@functools.lru_cache(maxsize=16)
def s3_client(opts: S3Options) -> Any:
    """A botocore S3 client for ``opts`` (same endpoint, region and keys as pyarrow's); one per
    ``opts``, shared by threads (botocore clients are thread-safe)."""
    import botocore.config  # type: ignore[import-untyped,import-not-found,unused-ignore]
    import botocore.session  # type: ignore[import-untyped,import-not-found,unused-ignore]

    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=opts.endpoint_url,
        region_name=opts.region or "us-east-1",
        aws_access_key_id=opts.access_key,
        aws_secret_access_key=opts.secret_key,
        aws_session_token=opts.session_token,
        config=botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=32,  # threads share the client: 16 HEADs or reads at once
        ),
    )


def _iter_s3(
    loc: Location, opts: S3Options, match: Callable[[str], object] | None
) -> Iterator[ObjectInfo]:
    bucket, _, prefix = loc.path.partition("/")
    prefix = f"{prefix}/" if prefix else ""
    client = s3_client(opts)
    token: str | None = None
    while True:  # the paginator, by hand: it would keep every page's response object alive
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE}
        if token is not None:
            kwargs["ContinuationToken"] = token
        try:
            page = client.list_objects_v2(**kwargs)
        except Exception as exc:  # botocore's errors share no base class with OSError
            raise OSError(f"cannot list {loc.uri}: {exc}") from None
        for obj in page.get("Contents", ()):
            key: str = obj["Key"]
            rel = key[len(prefix) :]
            if not rel or key.endswith("/") or _hidden(rel):
                continue
            if match is not None and not match(rel.rsplit("/", 1)[-1]):
                continue
            mtime = obj.get("LastModified")
            yield ObjectInfo(
                f"{bucket}/{key}",
                rel,
                int(obj.get("Size", 0)),
                datetime_ns(mtime),
                str(obj.get("ETag", "")).strip('"'),
            )
        if not page.get("IsTruncated"):
            return
        token = page.get("NextContinuationToken")
        del page


def datetime_ns(when: Any) -> int:
    """A datetime -> integer nanoseconds since the epoch (exact, no float rounding)."""
    if when is None:
        return 0
    seconds: int = int(when.timestamp())
    return seconds * 1_000_000_000 + int(when.microsecond) * 1000


def _iter_levels(loc: Location, match: Callable[[str], object] | None) -> Iterator[ObjectInfo]:
    """Depth-first through ``pyarrow.fs``, one folder's listing held per level."""
    base = loc.path
    stack: list[list[pafs.FileInfo]] = [_level(loc.fs, base)]
    while stack:
        if not stack[-1]:
            stack.pop()
            continue
        info = stack[-1].pop()
        rel = info.path[len(base) + 1 :] if base else info.path
        if rel.rsplit("/", 1)[-1].startswith("."):
            continue
        if info.type == pafs.FileType.Directory:
            stack.append(_level(loc.fs, info.path))
        elif info.type == pafs.FileType.File:
            if match is not None and not match(info.base_name):
                continue
            mtime = info.mtime_ns or 0
            yield ObjectInfo(info.path, rel, info.size or 0, mtime)


def _level(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=False))
    except (OSError, pa.ArrowException) as exc:
        raise OSError(f"cannot list {path}: {exc}") from None
    return sorted(infos, key=lambda i: i.path, reverse=True)  # pop() yields them in order


def exists(loc: Location) -> bool:
    """Whether anything is at ``loc`` (an object, or a prefix with objects below it)."""
    try:
        info = loc.fs.get_file_info(loc.path)
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"cannot reach {loc.uri}: {exc}") from None
    return bool(info.type != pafs.FileType.NotFound)


def uri_beside(uri: str, relative: str) -> str:
    """The URI of ``relative`` (a ``/``-separated path) in the folder of the object ``uri``,
    with ``uri``'s query (its endpoint options): how a manifest in object storage names the
    images it lists relative to itself."""
    parts = urllib.parse.urlsplit(uri)
    return _with_path(parts, f"{parts.path.rsplit('/', 1)[0]}\0{relative}")


def uri_child(folder: str, relative: str) -> str:
    """The URI of ``relative`` inside the "folder" URI ``folder`` (its query kept)."""
    parts = urllib.parse.urlsplit(folder)
    return _with_path(parts, f"{parts.path.rstrip('/')}\0{relative}")


def _with_path(parts: urllib.parse.SplitResult, path: str) -> str:
    """``parts`` with another path: ``parts.path`` is as written in a URI (percent-encoded),
    the path added to it is a name (``#``, ``?``, ``%``, spaces are part of it), so the name is
    encoded here and ``resolve`` decodes it back."""
    base, _, name = path.partition("\0")
    joined = posixpath.normpath(f"{base}/{urllib.parse.quote(name, safe='/')}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, joined, parts.query, ""))


class ObjectStat(NamedTuple):
    """What the hash cache keys an object by: size, modification time, and a number that
    changes with the content (the ETag's, for S3 through botocore; else 0)."""

    size: int
    mtime_ns: int
    version: int


def stat_uri(uri: str) -> ObjectStat:
    """Size and times of the object ``uri`` (one HEAD request). ``FileNotFoundError`` when it
    does not exist, ``OSError`` when it cannot be reached, ``ConfigError`` for a bad URI."""
    loc = resolve(uri)
    if loc.s3 is not None and botocore_available():
        bucket, _, key = loc.path.partition("/")
        try:
            head = s3_client(loc.s3).head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # botocore's errors share no base class with OSError
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from None
            raise OSError(f"cannot reach {loc.uri}: {exc}") from None
        etag = str(head.get("ETag", "")).strip('"')
        return ObjectStat(int(head.get("ContentLength", 0)), datetime_ns(head.get("LastModified")),
                          etag_number(etag))  # fmt: skip
    try:
        info = loc.fs.get_file_info(loc.path)
    except (OSError, pa.ArrowException) as exc:
        raise OSError(f"cannot reach {loc.uri}: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    if info.type != pafs.FileType.File:
        raise OSError(f"{loc.uri} is not an object")
    return ObjectStat(info.size or 0, info.mtime_ns or 0, 0)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole object at ``path`` (``OSError`` when it cannot be read)."""
    try:
        with fs.open_input_stream(path, compression=None) as fh:
            data: bytes = fh.readall()
    except pa.ArrowException as exc:
        raise OSError(str(exc)) from None
    return data


def read_uri(uri: str) -> bytes:
    """The whole object ``uri`` (``FileNotFoundError`` when there is none, ``OSError`` when it
    cannot be read, ``ConfigError`` for a URI that cannot be used)."""
    loc = resolve(uri)
    return read_bytes(loc.fs, loc.path)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Upload ``data`` as the whole object ``path``, atomically (see the module doc): readers
    see the old object or the new one. A failure is an ``OSError`` (the run: exit 74)."""
    try:
        with fs.open_output_stream(path, compression=None) as fh:
            fh.write(data)
    except pa.ArrowException as exc:  # OSError passes as it is (the runner: exit 74)
        raise OSError(f"cannot write {path}: {exc}") from None


def table_bytes(table: pa.Table) -> bytes:
    """``table`` as a zstd Parquet file in memory (as the local sink writes it)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data: bytes = sink.getvalue().to_pybytes()
    return data


def write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write ``table`` as the Parquet object ``path``, whole (one upload of a complete file)."""
    write_bytes(fs, path, table_bytes(table))


def list_names(loc: Location, pattern: str) -> list[str]:
    """Names of the objects directly in ``loc`` matching the glob ``pattern``, sorted (the
    output's part files: a few hundred at most, compaction merges each run's parts)."""
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(f"cannot list {loc.uri}: {exc}") from None
    return sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.base_name, pattern)
    )


def delete(fs: pafs.FileSystem, path: str) -> None:
    """Delete the object ``path``; one already gone is fine."""
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except pa.ArrowException as exc:
        raise OSError(f"cannot delete {path}: {exc}") from None


def parquet_file(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    """A ``ParquetFile`` reading ``path`` with ranged reads (footer first, only the columns
    asked for)."""
    return pq.ParquetFile(fs.open_input_file(path))


class RemotePath:
    """An object (or the output "folder") in a ``Location``'s file system, with the few
    ``pathlib.Path`` methods the output's part-file code uses, so that code serves local
    folders and object stores alike. Deliberately no ``__fspath__``: ``open()`` and ``os``
    functions refuse it instead of treating ``s3://...`` as a local name."""

    __slots__ = ("loc", "path")

    def __init__(self, loc: Location, path: str) -> None:
        self.loc = loc
        self.path = path

    @classmethod
    def root(cls, loc: Location) -> RemotePath:
        return cls(loc, loc.path)

    @property
    def fs(self) -> pafs.FileSystem:
        return self.loc.fs

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.loc, self.path.rsplit("/", 1)[0])

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(self.loc, f"{self.path}/{name}")

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def __str__(self) -> str:
        scheme = self.loc.uri.split("://", 1)[0]
        return f"{scheme}://{self.path}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and (self.loc.uri, self.path) == (
            other.loc.uri,
            other.path,
        )

    def __hash__(self) -> int:
        return hash((self.loc.uri, self.path))

    def __lt__(self, other: RemotePath) -> bool:
        return self.path < other.path

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise OutputError(f"cannot reach {self}: {exc}") from None

    def exists(self) -> bool:
        return bool(self._info().type != pafs.FileType.NotFound)

    def is_dir(self) -> bool:
        """The output location itself counts as a folder (object stores have no empty ones)."""
        return self.path == self.loc.path or self._info().type == pafs.FileType.Directory

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores need no folders; the bucket must exist (checked here)."""
        bucket = self.path.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket)
        except (OSError, pa.ArrowException) as exc:
            raise OutputError(f"cannot reach {self}: {exc}") from None
        if info.type == pafs.FileType.NotFound:
            raise OutputError(f"{self}: the bucket {bucket!r} does not exist (create it first)")

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        """Objects directly in this "folder" whose name matches ``pattern``, sorted."""
        for name in list_names(Location(self.fs, self.path, str(self), self.loc.s3), pattern):
            yield self / name

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.exists():
            raise FileNotFoundError(str(self))
        delete(self.fs, self.path)

    def stat(self) -> os.stat_result:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        mtime = info.mtime_ns or 0
        size = info.size or 0
        seconds = mtime // 10**9
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, size, seconds, seconds, seconds),
                              {"st_mtime_ns": mtime})  # fmt: skip

    def read_bytes(self) -> bytes:
        return read_bytes(self.fs, self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        write_bytes(self.fs, self.path, data)


Where = Path | RemotePath  # an output folder, or a part file in one


def open_parquet(path: Where) -> pq.ParquetFile:
    """A ``ParquetFile`` for a local part or an object (ranged reads: footer first)."""
    if isinstance(path, RemotePath):
        try:
            return pq.ParquetFile(path.fs.open_input_file(path.path))
        except pa.ArrowException as exc:
            raise OSError(f"{path}: {exc}") from None
    return pq.ParquetFile(path)


def output_place(output: Path | str) -> Where:
    """The job's ``output`` as a folder: a ``Path``, or the ``RemotePath`` of a URI."""
    if isinstance(output, str) and is_uri(output):
        return RemotePath.root(resolve(output))
    return Path(output)


def state_folder(output: Path | str, state_dir: Path | None) -> Path:
    """Where the lock, journal, hash cache and run log of ``output`` live: the output folder
    itself when it is local (always: a lock kept elsewhere would not stop a second run that
    keeps it in the folder), else ``state_dir`` or the folder ``state_dir_for`` derives."""
    if not (isinstance(output, str) and is_uri(output)):
        return Path(output)
    if state_dir is not None:
        return Path(state_dir)
    return state_dir_for(resolve(output))


def etag_number(etag: str) -> int:
    """An S3 ETag as a 60-bit number, for the hash cache's inode column: the ETag changes
    whenever the object's bytes do, as an inode and ctime do for a local file."""
    digits = "".join(c for c in etag if c in "0123456789abcdefABCDEF")[:15]
    return int(digits, 16) if digits else 0

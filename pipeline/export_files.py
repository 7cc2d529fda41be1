"""The file-per-image exports of ``caption export``: caption ``.txt`` files and a Hugging Face
``imagefolder``; and where a dataset's images are.

``export`` selects the rows (one per image x prompt, with their quality flags) and hands them
here. Finding an image: a walked folder's ``image_path`` is relative to the job's input root
(absolute in the job; a relative one is looked up through the run log, the job file's folder
and the working directory; a URI root: the object at root/image_path); a manifest's is its
``id`` or the path as written, so the manifest (local or a URI) is read again (streaming, only
``image`` and ``id``) for each row's file, object or embedded bytes. Images in object storage
are downloaded into an imagefolder; their caption files need ``--to`` (nothing is written into
the input's bucket).

Every file is written to a hidden temp name and renamed into place: an interrupted export never
leaves half a caption. ``--existing``: ``skip`` keeps a file that is there, ``overwrite``
replaces it, ``fail`` stops before anything is written if one is there.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from .errors import ConfigError
from .manifest import ManifestError, open_manifest, read_entries
from .results import read_runs
from .sink import atomic_file
from .storage import Where, is_uri, read_uri, uri_child

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif", ".avif"}
)
METADATA = "metadata.jsonl"
SHOWN = 3  # names listed in a warning


@dataclass
class FileCounts:
    """What a file-per-image export did with its rows."""

    written: int = 0
    skipped: int = 0  # the file was there (--existing skip)
    missing: int = 0  # the image was not found (or not readable)
    clashes: int = 0  # rows left out: another row needs the same file name
    warnings: list[str] = field(default_factory=list)


# --- names -------------------------------------------------------------------------------------


def relative_name(image_path: str) -> PurePosixPath:
    """``image_path`` as a path to mirror under another folder: POSIX, with no root, ``.`` or
    ``..`` (a manifest's ``../images/a.jpg`` -> ``images/a.jpg``, ``/data/a.jpg`` ->
    ``data/a.jpg``; a URI ``s3://bucket/k/a.jpg?endpoint_override=...`` -> ``bucket/k/a.jpg``)."""
    if is_uri(image_path):
        parts_of = urllib.parse.urlsplit(image_path)
        image_path = f"{parts_of.netloc}/{urllib.parse.unquote(parts_of.path)}"
    parts = [p for p in image_path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return PurePosixPath(*parts) if parts else PurePosixPath("_")


def _stem(name: PurePosixPath) -> str:
    """The name without its image extension (an id such as ``sku.v2`` keeps its dot)."""
    return name.stem if name.suffix.lower() in IMAGE_SUFFIXES else name.name


def _safe(part: str) -> str:
    return re.sub(r"[\x00-\x1f#?*:|<>\"]", "_", part)


def caption_name(stem: str, prompt: str | None) -> str:
    """``<stem>.txt``, or ``<stem>.<prompt>.txt`` when the export holds several prompts."""
    return f"{stem}.{prompt.replace('/', '_')}.txt" if prompt else f"{stem}.txt"


def one_line(caption: str) -> str:
    """The caption on one line: kohya's trainers read only the first line of a caption file,
    and OneTrainer takes each line as a separate caption, so every run of whitespace (line
    breaks included) becomes one space."""
    return " ".join(caption.split())


# --- where the images are ----------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One image: its file, an object in object storage (its URI), or its bytes embedded in
    the manifest."""

    path: Path | None = None
    data: bytes | None = None
    uri: str | None = None


def _unprintable(path: str) -> str:
    """Undo ``walker.printable``: ``\\xNN`` back to the raw bytes of a non-UTF-8 file name."""
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), path.encode())
    return os.fsdecode(raw)


def _candidates(path: Path, recorded: Path | None, job: Mapping[str, Any]) -> list[Path]:
    """Where a path of the job may be: as it is if absolute, else (relative to a working
    directory unknown now) what the run log recorded, beside the job file, or here."""
    if path.is_absolute():
        return [path]
    out = [] if recorded is None else [recorded]
    if job.get("source"):
        out.append(Path(job["source"]).parent / path)
    out.append(Path.cwd() / path)
    return list(dict.fromkeys(out))


def _recorded_input(output: Where) -> Path | None:
    """The absolute local input (root or manifest) the newest run recorded in the run log."""
    for run in reversed(read_runs(output)):
        if run.input:
            return None if is_uri(run.input) else Path(run.input)
    return None


def input_root(job: Mapping[str, Any], output: Where) -> Path:
    """The folder the dataset's ``image_path`` values are relative to: the job's input root
    (for a manifest, its folder). Absolute in every job ``caption run`` writes; a relative one
    is looked up (``_candidates``). Raises ``ConfigError`` saying where it looked."""
    inp = job.get("input") or {}
    if inp.get("manifest"):
        manifest = job_manifest(job, output)
        if isinstance(manifest, Path):
            return manifest.parent
    root = Path(inp.get("root") or ".")
    recorded = None if inp.get("manifest") else _recorded_input(output)
    tried = _candidates(root, recorded, job)
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    where = " or ".join(str(t) for t in tried)
    raise ConfigError(f"the images of {output} are not where its run found them: no folder {where}")


def job_manifest(job: Mapping[str, Any], output: Where) -> Path | str | None:
    """The job's manifest file, if it has one and it is still there (``_candidates``); a URI
    as it is (read when its rows are)."""
    name = (job.get("input") or {}).get("manifest")
    if not name:
        return None
    if is_uri(name):
        return str(name)
    for candidate in _candidates(Path(name), _recorded_input(output), job):
        if candidate.is_file():
            return candidate
    return None


def manifest_sources(
    manifest: Path | str, wanted: set[str], *, with_bytes: bool
) -> Iterator[tuple[str, Source]]:
    """The manifest's rows whose identity is in ``wanted``, streamed: (identity, its file, or
    its embedded bytes when ``with_bytes``, else an empty ``Source(data=b"")`` marking that it
    has bytes). The first row of an identity wins. Raises ``ManifestError``."""
    seen: set[str] = set()
    for entry in read_entries(open_manifest(manifest, (), variables=())):
        ident = entry.identity
        if ident not in wanted or ident in seen:
            continue
        seen.add(ident)
        if entry.data is not None:
            yield ident, Source(data=entry.data if with_bytes else b"")
        elif entry.path is not None and is_uri(entry.path):
            yield ident, Source(uri=entry.path)
        elif entry.path is not None:
            yield ident, Source(path=Path(entry.path))


class Images:
    """Finds the images of a dataset's rows (by ``image_path``) from its job."""

    def __init__(self, job: Mapping[str, Any] | None, output: Where) -> None:
        self.job = job or {}
        self.output = output
        inp = self.job.get("input") or {}
        self.is_manifest = bool(inp.get("manifest"))
        self.manifest = job_manifest(self.job, output) if self.is_manifest else None
        root = inp.get("root")
        # a folder in object storage: each image is the object at root/image_path
        self.remote_root = str(root) if not self.is_manifest and is_uri(root or "") else None
        self._root: Path | None = None
        self.warnings: list[str] = []

    @property
    def root(self) -> Path:
        if self._root is None:
            if not self.job:
                raise ConfigError(
                    f"{self.output} does not say which job wrote it (no caption.job metadata in "
                    "its part files): its images cannot be found"
                )
            self._root = input_root(self.job, self.output)
        return self._root

    def describe(self) -> str:
        """Where the images are looked for, for a message (never raises)."""
        if self.remote_root is not None:
            return f"under {self.remote_root}"
        if self.is_manifest:
            name = self.manifest or (self.job.get("input") or {}).get("manifest")
            return f"listed in the manifest {name}"
        try:
            return f"under {self.root}"
        except ConfigError:
            return f"under {(self.job.get('input') or {}).get('root')}"

    def _file(self, image_path: str) -> Path | None:
        names = (image_path, _unprintable(image_path)) if "\\x" in image_path else (image_path,)
        for name in names:
            path = Path(name) if os.path.isabs(name) else self.root / name
            if path.is_file():
                return path
        return None

    def sources(
        self, image_paths: Sequence[str], *, with_bytes: bool
    ) -> Iterator[tuple[str, Source | None]]:
        """(image_path, its ``Source`` or None if not found) for each of ``image_paths``, in
        the manifest's order for a manifest dataset (streamed), else in the given order."""
        if self.remote_root is not None:
            for image_path in image_paths:
                yield image_path, Source(uri=uri_child(self.remote_root, image_path))
            return
        if not self.is_manifest:
            for image_path in image_paths:
                path = self._file(image_path)
                yield image_path, None if path is None else Source(path=path)
            return
        wanted = set(image_paths)
        found: set[str] = set()
        if self.manifest is None:
            name = (self.job.get("input") or {}).get("manifest")
            self.warnings.append(f"the manifest {name} is gone: its paths are looked up as files")
        else:
            try:
                for ident, source in manifest_sources(self.manifest, wanted, with_bytes=with_bytes):
                    found.add(ident)
                    yield ident, source
            except ManifestError as exc:
                self.warnings.append(f"{exc}: the rest of its paths are looked up as files")
        for image_path in image_paths:  # not in the manifest (any more): the path as written
            if image_path not in found:
                found.add(image_path)
                path = self._file(image_path) if self._root_known() else None
                yield image_path, None if path is None else Source(path=path)

    def _root_known(self) -> bool:
        try:
            self.root  # noqa: B018 - resolves and caches it
        except ConfigError:
            return False
        return True


# --- writing files -----------------------------------------------------------------------------


def _tmp(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp")


def write_text(final: Path, text: str, made: set[Path] | None = None) -> None:
    """``text`` (UTF-8) to ``final`` through a hidden temp file and a rename (no fsync: an
    export is redone, not recovered). ``made``: folders known to exist (filled in)."""
    if made is None or final.parent not in made:
        final.parent.mkdir(parents=True, exist_ok=True)
        if made is not None:
            made.add(final.parent)
    tmp = _tmp(final)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def place_image(source: Source, final: Path) -> None:
    """The image at ``final``: a hard link to its file where the file system allows, else a
    copy; embedded bytes written out (an object's, fetched by the caller). Through a temp name
    and a rename."""
    data = source.data
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(final)
    tmp.unlink(missing_ok=True)
    try:
        if data is not None:
            tmp.write_bytes(data)
        else:
            assert source.path is not None
            try:
                os.link(source.path, tmp)
            except OSError:  # another device, a file system without hard links, no permission
                shutil.copyfile(source.path, tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_existing(targets: Sequence[Path], existing: str, hint: str) -> None:
    """With ``--existing fail``: raise ``ConfigError`` naming the targets already there."""
    if existing != "fail":
        return
    there = [t for t in targets if t.exists()]
    if there:
        names = ", ".join(str(t) for t in there[:SHOWN])
        more = f" and {len(there) - SHOWN} more" if len(there) > SHOWN else ""
        raise ConfigError(
            f"{len(there)} file(s) to write already exist ({names}{more}); nothing was written. "
            f"{hint}"
        )


def _listed(what: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{len(names)} {what}: {shown}{more}"


def _clashes(targets: Mapping[Path, list[int]]) -> tuple[dict[int, Path], list[str]]:
    """Rows whose target no other row shares, and the names of the shared targets."""
    unique = {rows[0]: t for t, rows in targets.items() if len(rows) == 1}
    shared = [str(t) for t, rows in targets.items() if len(rows) > 1]
    return unique, shared


# --- txt ---------------------------------------------------------------------------------------


def export_txt(
    table: pa.Table,
    images: Images,
    *,
    to: Path | None,
    several: bool,
    existing: str,
) -> FileCounts:
    """One UTF-8 caption file per row: ``<stem>.txt`` (``<stem>.<prompt>.txt`` when
    ``several`` prompts are exported) beside the image, or under ``to`` at the image's
    relative path (a manifest's id for an embedded image)."""
    counts = FileCounts()
    paths: list[str] = table["image_path"].to_pylist()
    prompts: list[str] = table["prompt_name"].to_pylist()
    captions: list[str | None] = table["caption"].to_pylist()
    targets: dict[Path, list[int]] = {}
    missing: list[str] = []
    if to is not None:
        for i, image_path in enumerate(paths):
            rel = relative_name(image_path)
            name = caption_name(_stem(rel), prompts[i] if several else None)
            targets.setdefault(to / rel.parent / name, []).append(i)
    else:
        where: dict[str, Path] = {}
        embedded: list[str] = []
        remote: list[str] = []
        for image_path, source in images.sources(sorted(set(paths)), with_bytes=False):
            if source is None:
                missing.append(image_path)
            elif source.uri is not None:
                remote.append(image_path)
            elif source.path is None:
                embedded.append(image_path)
            else:
                where[image_path] = source.path
        if remote:
            raise ConfigError(
                f"{_listed('images are in object storage', remote)}: caption files are not "
                "written into the input's bucket. Pass --to DIR: they are then written under DIR "
                "at each image's relative path"
            )
        if embedded:
            raise ConfigError(
                f"{_listed('images are embedded in the manifest', embedded)}: there is no file "
                "beside which to write their captions. Pass --to DIR: the caption files are "
                "then named after each image's id"
            )
        if missing and not where:
            raise ConfigError(
                f"none of the images of the dataset were found ({images.describe()}; "
                f"{_listed('missing', missing)}); pass --to DIR to write the caption files "
                "under DIR instead"
            )
        for i, image_path in enumerate(paths):
            src = where.get(image_path)
            if src is not None:
                name = caption_name(src.stem, prompts[i] if several else None)
                targets.setdefault(src.parent / name, []).append(i)
    gone = set(missing)
    counts.missing = sum(1 for p in paths if p in gone)
    if missing:
        counts.warnings.append(
            f"{_listed('images not found (no caption file written for them)', missing)}"
        )
    unique, shared = _clashes(targets)
    if shared:
        counts.clashes = sum(len(targets[Path(t)]) for t in shared)
        counts.warnings.append(
            _listed("caption files that several rows would write (none written)", shared)
            + " (two images with one stem, e.g. a.jpg and a.png)"
        )
    check_existing(list(unique.values()), existing, "Use --existing skip or overwrite.")
    made: set[Path] = set()
    for i, final in unique.items():
        if existing == "skip" and final.exists():
            counts.skipped += 1
            continue
        write_text(final, one_line(captions[i] or ""), made)
        counts.written += 1
    return counts


# --- imagefolder -------------------------------------------------------------------------------

_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
                  "TIFF": ".tif", "AVIF": ".avif"}  # fmt: skip


def image_suffix(source: Source) -> str:
    """The file extension of an image: its file's own, an object's from its name (else
    ``.jpg``: its bytes are not fetched twice), else its format read from its bytes."""
    if source.path is not None and source.path.suffix.lower() in IMAGE_SUFFIXES:
        return source.path.suffix.lower()
    if source.uri is not None:
        suffix = PurePosixPath(source.uri.split("?", 1)[0]).suffix.lower()
        return suffix if suffix in IMAGE_SUFFIXES else ".jpg"  # most are: it is only a name
    head = source.data if source.data is not None else b""
    if source.data is None and source.path is not None:
        with open(source.path, "rb") as fh:
            head = fh.read(64 << 10)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(head)) as im:
            fmt = im.format or ""
    except Exception:  # not an image PIL knows from its first bytes
        return ".jpg" if head[:3] == b"\xff\xd8\xff" else ""
    return _FORMAT_SUFFIX.get(fmt, "." + fmt.lower() if fmt else "")


def _image_name(image_path: str, source: Source) -> PurePosixPath:
    """Where an image goes in the imagefolder: its relative path, with its image extension
    (an id gets its image's), and characters that fsspec or Windows read specially as ``_``."""
    rel = relative_name(image_path)
    parts = [_safe(p) for p in rel.parts]
    name = PurePosixPath(*parts)
    if name.suffix.lower() not in IMAGE_SUFFIXES:
        name = name.with_name(name.name + image_suffix(source))
    return name


def _json_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def export_imagefolder(
    table: pa.Table,
    images: Images,
    *,
    to: Path,
    fields: Sequence[str],
    existing: str,
) -> FileCounts:
    """``to/metadata.jsonl`` (``file_name``, ``text``, then ``fields`` and ``image_path``) and
    the images beside it, so ``datasets.load_dataset("imagefolder", data_dir=to)`` loads it as
    it is. ``table`` has one row per image (one prompt)."""
    counts = FileCounts()
    paths: list[str] = table["image_path"].to_pylist()
    if len(set(paths)) != len(paths):  # the caller passes one prompt's rows
        raise ConfigError("imagefolder holds one text per image: choose a prompt with --prompt")
    row_of = {p: i for i, p in enumerate(paths)}
    records = table.select([c for c in ("caption", *fields) if c in table.column_names])
    rows = records.to_pylist()
    metadata = to / METADATA
    hint = "Use --existing skip or overwrite."
    if existing == "fail":  # first make sure nothing is there (names only: bytes not held)
        check_existing([metadata], existing, hint)
        sources = images.sources(paths, with_bytes=True)
        names = [to / str(_image_name(p, s)) for p, s in sources if s is not None]
        check_existing(names, existing, hint)
    missing: list[str] = []
    clashed: list[str] = []
    taken: set[PurePosixPath] = set()
    entries: list[tuple[int, PurePosixPath]] = []
    # Streamed: each image is placed as it comes (a manifest's embedded bytes are not held).
    for image_path, source in images.sources(paths, with_bytes=True):
        if source is None:
            missing.append(image_path)
            continue
        name = _image_name(image_path, source)
        if name in taken:  # the first image of a name keeps it
            clashed.append(image_path)
            continue
        taken.add(name)
        final = to / str(name)
        if existing == "skip" and final.exists():
            counts.skipped += 1
        else:
            if source.uri is not None:
                try:
                    source = Source(data=read_uri(source.uri))
                except (OSError, ConfigError) as exc:
                    taken.discard(name)
                    missing.append(image_path)  # the object is gone, or cannot be read
                    if not isinstance(exc, FileNotFoundError):
                        counts.warnings.append(f"cannot read {image_path}: {exc}")
                    continue
            place_image(source, final)
            counts.written += 1
        entries.append((row_of[image_path], name))
    counts.missing, counts.clashes = len(missing), len(clashed)
    if missing:
        counts.warnings.append(_listed("images not found (left out)", missing))
    if clashed:
        counts.warnings.append(
            _listed("images left out: their file name is taken by another image", clashed)
        )
    entries.sort(key=lambda e: str(e[1]))
    lines = []
    for i, name in entries:
        row = rows[i]
        record = {"file_name": str(name), "text": row.pop("caption")}
        record.update(row)
        record["image_path"] = paths[i]
        lines.append(json.dumps(record, ensure_ascii=False, default=_json_value) + "\n")
    to.mkdir(parents=True, exist_ok=True)
    with atomic_file(metadata) as fh:
        fh.write("".join(lines).encode("utf-8"))
    return counts

"""Small JPEG thumbnails of a dataset's images, for the report's gallery.

Where the images are: a folder job's ``input.root`` (a folder or a URI) joined with each row's
``image_path``; a manifest job's rows name the manifest's identities, so the manifest (local or
a URI) is read again to map each identity to its file or object (rows whose image was embedded
in the manifest as bytes get none). When the images have moved since the run, ``root`` points
at their folder now.

Thumbnails are made in a thread pool (Pillow releases the GIL while decoding, resizing and
encoding); big JPEGs are decoded in draft mode at 1/2-1/8 scale, which is most of the speed.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ..errors import CaptionError
from ..manifest import open_manifest, read_entries
from ..storage import is_uri, path_or_uri, read_uri, uri_child

log = logging.getLogger("pipeline")

SIZE = 160  # longest side, pixels
QUALITY = 70
MAX_PIXELS = 178_956_970  # the pipeline's default guard; a job's own value wins
REMOTE_WORKERS = 16  # threads reading objects for thumbnails

# Why a row has no thumbnail (shown on its placeholder).
NO_FILE = "no file"
EMBEDDED = "embedded in the manifest"
UNREADABLE = "unreadable"
OFF = "thumbnails off"


@dataclass(frozen=True)
class Source:
    """Where one image is: a file (a ``Path``) or an object (a URI), or the reason there is
    none. An object is not checked before its thumbnail is made (one request, not two)."""

    path: Path | str | None
    reason: str | None = None


def image_sources(
    job: dict[str, Any] | None, image_paths: Iterable[str], root: Path | None = None
) -> dict[str, Source]:
    """Each distinct ``image_path`` -> its file (checked to exist) or why there is none.

    ``root`` overrides the job's input folder (folder jobs: the images' folder now; manifest
    jobs: the folder the manifest's relative paths are relative to is the manifest's own, so
    ``root`` replaces that).
    """
    wanted = list(dict.fromkeys(image_paths))
    inp = (job or {}).get("input") or {}
    manifest = inp.get("manifest")
    out: dict[str, Source] = {}
    if manifest:
        found = _manifest_files(path_or_uri(manifest), set(wanted), root)
        for path in wanted:
            out[path] = found.get(path, Source(None, NO_FILE))
        return out
    given = inp.get("root")
    if root is None and isinstance(given, str) and is_uri(given):  # images in object storage
        return {path: Source(uri_child(given, path)) for path in wanted}
    base = root or (Path(given) if given else None)
    for path in wanted:
        if base is None:
            out[path] = Source(None, NO_FILE)
            continue
        file = base / path
        out[path] = Source(file) if file.is_file() else Source(None, NO_FILE)
    return out


def _manifest_files(manifest: Path | str, wanted: set[str], root: Path | None) -> dict[str, Source]:
    """identity -> Source, from one pass over the manifest (only its identity and image)."""
    found: dict[str, Source] = {}
    try:
        m = open_manifest(manifest, variables=())
        for entry in read_entries(m):
            if entry.identity not in wanted or entry.identity in found:
                continue
            if entry.data is not None or m.image_kind == "binary":
                found[entry.identity] = Source(None, EMBEDDED)
            elif entry.path is not None and is_uri(entry.path):  # an object: as it is
                found[entry.identity] = Source(entry.path)
            elif entry.path is not None and isinstance(manifest, Path):
                file = Path(entry.path)
                if root is not None and not file.is_file():
                    try:
                        file = root / file.relative_to(manifest.parent)
                    except ValueError:
                        file = root / file.name
                found[entry.identity] = Source(file) if file.is_file() else Source(None, NO_FILE)
    except (CaptionError, OSError) as exc:
        log.warning("cannot read the manifest %s for thumbnails: %s", manifest, exc)
    return found


def thumbnail(
    path: Path | str, size: int = SIZE, quality: int = QUALITY, max_pixels: int = MAX_PIXELS
) -> bytes | None:
    """A JPEG of ``path`` (a file, or an object's URI) at most ``size`` px on its longest
    side, upright, RGB (alpha on white); None if it cannot be read as an image (or is over
    ``max_pixels``)."""
    try:
        source: Path | io.BytesIO = path if isinstance(path, Path) else io.BytesIO(read_uri(path))
        with Image.open(source) as opened:
            if opened.width * opened.height > max_pixels:
                return None
            if opened.format == "JPEG":
                opened.draft("RGB", (size, size))  # decode at 1/2..1/8 scale, still >= size
            opened.load()
            im = ImageOps.exif_transpose(opened)
            im = _to_rgb(im)
            im.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=quality)
            return out.getvalue()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, CaptionError):
        return None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return im.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    return im.convert("RGB")


def thumbnails(
    paths: Sequence[Path | str],
    *,
    size: int = SIZE,
    quality: int = QUALITY,
    max_pixels: int = MAX_PIXELS,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[bytes | None]:
    """``thumbnail`` of each path, in order, made by ``workers`` threads (default: one per
    core; objects: at least ``REMOTE_WORKERS``, their reads wait on the network). ``progress``
    is called with the number done so far, now and then."""
    workers = workers or os.cpu_count() or 1
    if any(isinstance(p, str) for p in paths):
        workers = max(workers, REMOTE_WORKERS)

    def one(path: Path | str) -> bytes | None:
        return thumbnail(path, size, quality, max_pixels)

    if workers == 1 or len(paths) < 8:
        return [one(p) for p in paths]
    out: list[bytes | None] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="thumb") as pool:
        for i, thumb in enumerate(pool.map(one, paths, chunksize=16), 1):
            out.append(thumb)
            if progress is not None and i % 500 == 0:
                progress(i)
    return out

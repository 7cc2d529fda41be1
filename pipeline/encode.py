"""Image encoding: the bytes of one input file -> a JPEG data URI ready for ``image_url``.

EXIF orientation is applied (the model sees the picture upright), every mode becomes RGB
(alpha is composited on white, 16-bit is scaled to 8-bit), the longest side is reduced to
``max_side`` (big JPEGs are decoded in draft mode at a reduced scale first, which is several
times faster than a full decode), and the result is re-encoded as JPEG.

A JPEG that already is what that would produce -- RGB, upright (no EXIF rotation), within
``max_side``, and complete (its headers parse and it ends with the end-of-image marker) -- is
sent as it is (``[image] passthrough``, on by default): a second lossy generation would only
cost CPU (~9 ms for 896x672) and quality. A cut-off file has no end marker and takes the full
decode, which rejects it. Not caught without decoding: damaged Huffman tables inside an
otherwise complete file; the server refuses those and the row is ``failed`` with its message.

Pure CPU work: the runner calls it in a worker thread, never on the event loop.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from .config import ImageConfig
from .errors import InvalidImageError

# We refuse images above ``ImageConfig.max_pixels`` ourselves, after reading only the header,
# so Pillow's own global bomb check (a warning at ~89 MP, an error at ~179 MP) is switched off.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True, slots=True)
class EncodedImage:
    data_uri: str
    width: int  # as sent
    height: int
    source_width: int  # as stored in the file (before EXIF rotation)
    source_height: int
    jpeg_bytes: int


def _target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif im.mode == "F":
        im = im.convert("L")
    has_alpha = im.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


_EXIF_ORIENTATION = 0x0112


def _fit_to_send(raw: bytes, im: Image.Image, max_side: int) -> bool:
    """True if ``im`` (just opened from ``raw``) is a whole JPEG that re-encoding would not
    change but degrade."""
    return (
        im.format == "JPEG"
        and im.mode == "RGB"
        and max(im.size) <= max_side
        and raw.endswith(b"\xff\xd9")  # end of image: not cut off
        and im.getexif().get(_EXIF_ORIENTATION, 1) == 1
    )


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def encode_image(raw: bytes, cfg: ImageConfig) -> EncodedImage:
    """Decode ``raw``, normalise it and return the JPEG data URI; ``InvalidImageError`` if bad."""
    if not raw:
        raise InvalidImageError("empty file (0 bytes)")
    try:
        opened = Image.open(io.BytesIO(raw))
        src_w, src_h = opened.size
        if src_w * src_h > cfg.max_pixels:
            raise InvalidImageError(
                f"image too large: {src_w}x{src_h} pixels is over the limit of "
                f"{cfg.max_pixels:,} ([image] max_pixels, a decompression-bomb guard)"
            )
        if cfg.passthrough and _fit_to_send(raw, opened, cfg.max_side):
            return EncodedImage(_data_uri(raw), src_w, src_h, src_w, src_h, len(raw))
        if opened.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale while staying >= the final size.
            opened.draft("RGB", _target_size(src_w, src_h, cfg.max_side))
        # The whole file to the decoder in one call. Pillow otherwise feeds it 64 KB at a time
        # (~60 calls for a 4 MB photo), dropping and retaking the GIL each time, and each
        # retake can wait a 5 ms switch interval while the event loop runs Python: measured
        # 440-512 -> 110 ms per 12-MP photo next to a busy Python thread, output unchanged.
        opened.decodermaxblock = max(len(raw), 65536)
        opened.load()
        ImageOps.exif_transpose(opened, in_place=True)  # no copy when there is nothing to do
        im = _to_rgb(opened)
        if max(im.size) > cfg.max_side:
            im = im.resize(_target_size(*im.size, cfg.max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=cfg.jpeg_quality)
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError("not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"cannot decode image: {exc}") from None
    data = out.getvalue()
    return EncodedImage(_data_uri(data), im.width, im.height, src_w, src_h, len(data))

"""Image encoding: file bytes -> upright, RGB, size-capped JPEG data URI."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from pipeline.config import ImageConfig
from pipeline.encode import EncodedImage, encode_image
from pipeline.errors import InvalidImageError

PREFIX = "data:image/jpeg;base64,"
WHITE = (255, 255, 255)


def save(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kwargs)
    return out.getvalue()


def decode(enc: EncodedImage) -> Image.Image:
    """The JPEG inside the data URI, checked to be a real JPEG matching the record."""
    assert enc.data_uri.startswith(PREFIX)
    raw = base64.b64decode(enc.data_uri[len(PREFIX) :], validate=True)
    assert len(raw) == enc.jpeg_bytes
    im = Image.open(io.BytesIO(raw))
    assert im.format == "JPEG"
    im.load()
    assert im.size == (enc.width, enc.height)
    return im


def close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    """Colours equal within JPEG error."""
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


class TestResize:
    @pytest.mark.parametrize(
        ("size", "max_side", "expected"),
        [
            ((800, 400), 100, (100, 50)),
            ((400, 800), 100, (50, 100)),
            ((1000, 333), 300, (300, 100)),
            ((333, 1000), 300, (100, 300)),
            ((1001, 501), 500, (500, 250)),
            ((1800, 100), 896, (896, 50)),
            ((640, 640), 64, (64, 64)),
        ],
    )
    def test_big_jpeg_downscaled_to_max_side(
        self, size: tuple[int, int], max_side: int, expected: tuple[int, int]
    ) -> None:
        """A JPEG over max_side comes out with its longest side == max_side, aspect kept."""
        raw = save(Image.new("RGB", size, (200, 30, 30)), "JPEG")
        enc = encode_image(raw, ImageConfig(max_side=max_side))
        im = decode(enc)
        assert im.mode == "RGB"
        assert im.size == expected
        assert max(im.size) == max_side
        assert (enc.source_width, enc.source_height) == size

    def test_big_png_downscaled(self) -> None:
        """The non-JPEG path downscales too."""
        enc = encode_image(save(Image.new("RGB", (300, 120), (0, 0, 255)), "PNG"), ImageConfig(60))
        assert decode(enc).size == (60, 24)

    @pytest.mark.parametrize(
        ("fmt", "size"), [("JPEG", (50, 30)), ("PNG", (30, 50)), ("JPEG", (896, 600))]
    )
    def test_small_image_not_upscaled(self, fmt: str, size: tuple[int, int]) -> None:
        """An image within max_side keeps its size."""
        enc = encode_image(save(Image.new("RGB", size, (9, 99, 199)), fmt), ImageConfig())
        assert decode(enc).size == size
        assert (enc.width, enc.height) == size

    def test_downscaled_content_is_preserved(self) -> None:
        """Downscaling keeps the picture: left half red, right half blue stays that way."""
        im = Image.new("RGB", (800, 400), (255, 0, 0))
        im.paste((0, 0, 255), (400, 0, 800, 400))
        out = decode(encode_image(save(im, "JPEG", quality=95), ImageConfig(max_side=100)))
        assert close(out.getpixel((10, 25)), (255, 0, 0), tol=30)
        assert close(out.getpixel((90, 25)), (0, 0, 255), tol=30)

    def test_jpeg_quality_is_applied(self) -> None:
        """A lower jpeg_quality gives fewer bytes for the same picture."""
        raw = save(noise((128, 128)), "PNG")
        low = encode_image(raw, ImageConfig(jpeg_quality=20))
        high = encode_image(raw, ImageConfig(jpeg_quality=95))
        assert low.jpeg_bytes < high.jpeg_bytes


class TestModes:
    def test_rgba_png_composited_on_white(self) -> None:
        """Fully transparent pixels become white; opaque ones keep their colour."""
        im = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
        im.paste((0, 0, 255, 255), (20, 0, 40, 20))
        out = decode(encode_image(save(im, "PNG"), ImageConfig()))
        assert out.mode == "RGB"
        assert out.size == (40, 20)
        assert close(out.getpixel((5, 10)), WHITE)
        assert close(out.getpixel((35, 10)), (0, 0, 255))

    def test_half_transparent_pixel_is_blended_with_white(self) -> None:
        """50% alpha black over white comes out mid grey."""
        im = Image.new("RGBA", (16, 16), (0, 0, 0, 128))
        out = decode(encode_image(save(im, "PNG"), ImageConfig()))
        assert close(out.getpixel((8, 8)), (127, 127, 127), tol=6)

    def test_la_png_composited_on_white(self) -> None:
        """Grey + alpha (LA) is composited on white too."""
        im = Image.new("LA", (16, 16), (0, 0))
        out = decode(encode_image(save(im, "PNG"), ImageConfig()))
        assert out.mode == "RGB"
        assert close(out.getpixel((8, 8)), WHITE)

    @pytest.mark.parametrize("transparency", ["index", "bytes"])
    def test_palette_png_with_transparency(self, transparency: str) -> None:
        """A palette PNG's transparent entry becomes white, other entries keep their colour."""
        im = Image.new("P", (40, 20), 0)
        im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
        im.paste(1, (20, 0, 40, 20))
        trns: int | bytes = 0 if transparency == "index" else bytes([0, 255, 128])
        raw = save(im, "PNG", transparency=trns)
        assert "transparency" in Image.open(io.BytesIO(raw)).info
        out = decode(encode_image(raw, ImageConfig()))
        assert out.mode == "RGB"
        assert close(out.getpixel((5, 10)), WHITE)
        assert close(out.getpixel((35, 10)), (255, 0, 0))

    def test_palette_png_without_transparency(self) -> None:
        """A plain palette PNG converts to its palette colours."""
        im = Image.new("P", (16, 16), 1)
        im.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)
        out = decode(encode_image(save(im, "PNG"), ImageConfig()))
        assert close(out.getpixel((8, 8)), (0, 200, 0))

    @pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
    def test_grayscale_l(self, fmt: str) -> None:
        """A greyscale image becomes RGB with equal channels."""
        out = decode(encode_image(save(Image.new("L", (30, 20), 100), fmt), ImageConfig()))
        assert out.mode == "RGB"
        assert out.size == (30, 20)
        assert close(out.getpixel((15, 10)), (100, 100, 100), tol=4)

    def test_bilevel_mode_1(self) -> None:
        """A 1-bit image becomes RGB black/white."""
        out = decode(encode_image(save(Image.new("1", (16, 16), 1), "PNG"), ImageConfig()))
        assert close(out.getpixel((8, 8)), WHITE)

    def test_cmyk_jpeg(self) -> None:
        """A CMYK JPEG becomes an RGB JPEG with the right colour."""
        raw = save(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG")
        assert Image.open(io.BytesIO(raw)).mode == "CMYK"
        out = decode(encode_image(raw, ImageConfig()))
        assert out.mode == "RGB"
        assert out.size == (64, 48)
        assert close(out.getpixel((32, 24)), (255, 0, 0))

    @pytest.mark.parametrize(("value16", "value8"), [(0, 0), (32768, 128), (65535, 255)])
    def test_16bit_png_scaled_to_8bit(self, value16: int, value8: int) -> None:
        """A 16-bit greyscale PNG (mode I;16) is scaled down to 8 bits, not clipped."""
        raw = save(Image.new("I;16", (24, 12), value16), "PNG")
        assert Image.open(io.BytesIO(raw)).mode == "I;16"
        out = decode(encode_image(raw, ImageConfig()))
        assert out.mode == "RGB"
        assert out.size == (24, 12)
        assert close(out.getpixel((12, 6)), (value8,) * 3, tol=3)

    @pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF"])
    def test_other_formats_reencoded_as_jpeg(self, fmt: str) -> None:
        """WebP, BMP and TIFF inputs are re-encoded as JPEG with their colours."""
        raw = save(Image.new("RGB", (20, 10), (0, 128, 0)), fmt)
        out = decode(encode_image(raw, ImageConfig()))
        assert out.size == (20, 10)
        assert close(out.getpixel((10, 5)), (0, 128, 0))


class TestPassthrough:
    """JPEGs that are already RGB, upright and within max_side are sent byte for byte."""

    def test_fit_jpeg_sent_as_is(self) -> None:
        raw = save(noise((320, 240)), "JPEG", quality=97)
        enc = encode_image(raw, ImageConfig(max_side=320))
        assert enc.data_uri == PREFIX + base64.b64encode(raw).decode()
        assert (enc.width, enc.height, enc.jpeg_bytes) == (320, 240, len(raw))
        assert (enc.source_width, enc.source_height) == (320, 240)

    def test_progressive_jpeg_sent_as_is(self) -> None:
        raw = save(noise((100, 60)), "JPEG", progressive=True)
        assert encode_image(raw, ImageConfig()).jpeg_bytes == len(raw)

    def test_off_reencodes(self) -> None:
        """passthrough = false (--reencode): the JPEG is decoded and encoded again."""
        raw = save(noise((320, 240)), "JPEG", quality=97)
        enc = encode_image(raw, ImageConfig(passthrough=False, jpeg_quality=50))
        assert enc.jpeg_bytes < len(raw)
        assert decode(enc).size == (320, 240)

    @pytest.mark.parametrize(
        ("im", "why"),
        [
            (Image.new("RGB", (900, 10), (1, 2, 3)), "larger than max_side"),
            (Image.new("L", (30, 20), 100), "greyscale"),
            (Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "CMYK"),
        ],
        ids=["too-big", "greyscale", "cmyk"],
    )
    def test_unfit_jpeg_reencoded(self, im: Image.Image, why: str) -> None:
        raw = save(im, "JPEG")
        enc = encode_image(raw, ImageConfig())
        assert enc.data_uri != PREFIX + base64.b64encode(raw).decode(), why
        assert decode(enc).mode == "RGB"

    def test_rotated_jpeg_reencoded_upright(self) -> None:
        exif = Image.Exif()
        exif[0x0112] = 6
        raw = save(Image.new("RGB", (200, 100), (5, 5, 5)), "JPEG", exif=exif)
        assert decode(encode_image(raw, ImageConfig())).size == (100, 200)

    def test_trailing_bytes_after_end_marker_reencoded(self) -> None:
        """Data after the end-of-image marker (some phones add it): decoded, not refused."""
        raw = save(noise((64, 48)), "JPEG") + b"\x00" * 10 + b"extra"
        enc = encode_image(raw, ImageConfig())
        assert decode(enc).size == (64, 48)
        assert enc.jpeg_bytes != len(raw)

    @pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.999])
    def test_truncated_fit_jpeg_is_invalid(self, keep: float) -> None:
        """A cut-off file has no end marker, takes the full decode and is refused there."""
        raw = save(noise((256, 192)), "JPEG")
        with pytest.raises(InvalidImageError, match="decode"):
            encode_image(raw[: int(len(raw) * keep)], ImageConfig())

    @pytest.mark.parametrize("seed", range(12))
    def test_damaged_fit_jpeg_judged_like_a_full_decode(self, seed: int) -> None:
        """Cut or overwritten scan bytes: passing through accepts what re-encoding accepts."""
        raw = bytearray(save(noise((256, 192), seed), "JPEG"))
        rng = random.Random(seed)
        scan = raw.index(b"\xff\xda")
        if seed % 2:
            del raw[rng.randrange(scan, len(raw)) :]
        else:
            at = rng.randrange(scan, len(raw) - 8)
            raw[at : at + 8] = rng.randbytes(8)

        def verdict(cfg: ImageConfig) -> str:
            try:
                encode_image(bytes(raw), cfg)
            except InvalidImageError:
                return "invalid"
            return "ok"

        assert verdict(ImageConfig()) == verdict(ImageConfig(passthrough=False))


class TestOrientation:
    @pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
    def test_exif_orientation_6_rotates(self, fmt: str) -> None:
        """Orientation 6: a stored 200x100 picture is sent 100x200, rotated clockwise."""
        im = Image.new("RGB", (200, 100), (0, 0, 255))
        im.paste((255, 0, 0), (0, 0, 40, 100))  # red band on the stored left edge
        exif = Image.Exif()
        exif[0x0112] = 6
        raw = save(im, fmt, exif=exif)
        enc = encode_image(raw, ImageConfig())
        out = decode(enc)
        assert out.size == (100, 200)
        assert (enc.width, enc.height) == (100, 200)
        assert (enc.source_width, enc.source_height) == (200, 100)
        # Rotating 90 degrees clockwise moves the left edge to the top.
        assert close(out.getpixel((50, 5)), (255, 0, 0), tol=30)
        assert close(out.getpixel((50, 195)), (0, 0, 255), tol=30)

    def test_orientation_applied_before_downscale(self) -> None:
        """With rotation and downscaling, the upright picture's longest side is max_side."""
        exif = Image.Exif()
        exif[0x0112] = 8
        raw = save(Image.new("RGB", (400, 200), (5, 5, 5)), "JPEG", exif=exif)
        assert decode(encode_image(raw, ImageConfig(max_side=100))).size == (50, 100)

    def test_orientation_1_unchanged(self) -> None:
        """Orientation 1 (normal) leaves the size as stored."""
        exif = Image.Exif()
        exif[0x0112] = 1
        raw = save(Image.new("RGB", (200, 100), (5, 5, 5)), "JPEG", exif=exif)
        assert decode(encode_image(raw, ImageConfig())).size == (200, 100)


def test_animated_gif_encodes_first_frame() -> None:
    """An animated GIF is encoded from its first frame only."""
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    raw = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(raw)), "n_frames", 1) == 3
    out = decode(encode_image(raw, ImageConfig()))
    assert out.mode == "RGB"
    assert out.size == (32, 32)
    assert close(out.getpixel((16, 16)), (255, 0, 0))


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` whose pixel data is junk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"junk")


def _truncated(fmt: str) -> bytes:
    raw = save(noise((64, 64)), fmt)
    return raw[: len(raw) // 2]


class TestInvalid:
    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (b"", "empty"),
            (b"hello, this is a text file\n", "identify"),
            (b"\x00" * 100, "identify"),
            (_truncated("JPEG"), "decode"),
            (_truncated("PNG"), "decode"),
            (b"\x89PNG\r\n\x1a\n", "identify"),
            (_png_header_only(64, 64), "decode"),
            (_png_header_only(20_000, 20_000), "too large"),
        ],
        ids=[
            "zero-bytes",
            "text",
            "nul-bytes",
            "truncated-jpeg",
            "truncated-png",
            "png-signature-only",
            "png-junk-pixels",
            "png-bomb-header",
        ],
    )
    def test_bad_bytes_raise_invalid_image(self, raw: bytes, message: str) -> None:
        """Undecodable input raises InvalidImageError (never another exception)."""
        with pytest.raises(InvalidImageError, match=message):
            encode_image(raw, ImageConfig())

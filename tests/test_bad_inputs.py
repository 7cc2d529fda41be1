"""The bad-image catalogue end to end: every awkward input file becomes the right row.

One input folder holds empty, non-image, truncated, bomb, odd-mode, animated, EXIF-rotated,
non-UTF-8-named, looping-symlink and dangling-symlink files; ``caption run`` goes over it once
against the simulator and once more as a rerun, and each case is checked on its own row. Files
deleted mid-run and unreadable files have their own tests (the latter in a subprocess that has
dropped root's permission-bypassing capabilities).
"""

from __future__ import annotations

import base64
import io
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from helpers import sent_marker
from PIL import Image

import pipeline.feed as feed
from pipeline.cli import main
from pipeline.config import ImageConfig
from pipeline.encode import encode_image
from pipeline.sim import SimConfig, SimServer
from pipeline.walker import ImageFile, walk_images

PROMPT = "Describe this image."
PROJECT = Path(__file__).resolve().parent.parent
RGB = tuple[int, int, int]
TOLERANCE = 24  # per channel: two JPEG generations of flat colour blocks


def cli_args(sim: SimServer, root: Path, out: Path) -> list[str]:
    return [
        "run", "--endpoint", sim.base_url, "--model", "gemma3-27b", "--input", str(root),
        "--output", str(out), "--prompt", PROMPT, "--no-progress", "--flush-interval", "0.5",
    ]  # fmt: skip


def read_rows(out: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = ds.dataset(out, format="parquet").to_table().to_pylist()
    return rows


# --- building the files ------------------------------------------------------------------------


def halves(size: tuple[int, int], mode: str, left: object, right: object) -> Image.Image:
    """An image whose left half is ``left`` and right half is ``right``."""
    im = Image.new(mode, size, left)  # type: ignore[arg-type]
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))  # type: ignore[arg-type]
    return im


def encoded(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    """Random RGB pixels: big, incompressible image data, so half of the file is half the data."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def cmyk_jpeg() -> bytes:
    """CMYK JPEG: left red (C0 M255 Y255 K0), right cyan."""
    return encoded(halves((120, 80), "CMYK", (0, 255, 255, 0), (255, 0, 0, 0)), "JPEG", quality=95)


def png_16bit() -> bytes:
    """16-bit greyscale PNG (opens as mode I;16): left 0x4000, right 0xC000."""
    w, h = 120, 80
    row = struct.pack(f"<{w}H", *([0x4000] * (w // 2) + [0xC000] * (w // 2)))
    return encoded(Image.frombytes("I;16", (w, h), row * h), "PNG")


def palette_png() -> bytes:
    """Palette PNG, index 0 transparent (left half), index 1 opaque green (right half)."""
    im = halves((120, 80), "P", 0, 1)
    im.putpalette([255, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)
    return encoded(im, "PNG", transparency=0)


def rgba_png() -> bytes:
    """RGBA PNG: left fully transparent red (must become white), right opaque blue."""
    return encoded(halves((120, 80), "RGBA", (255, 0, 0, 0), (0, 0, 255, 255)), "PNG")


def animated_gif() -> bytes:
    """Three-frame GIF: blue, then red, then green."""
    frames = [Image.new("RGB", (64, 48), c) for c in ((0, 0, 255), (255, 0, 0), (0, 255, 0))]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def animated_webp() -> bytes:
    """Two-frame lossless WebP: green, then red."""
    frames = [Image.new("RGB", (64, 48), c) for c in ((0, 200, 0), (255, 0, 0))]
    return encoded(
        frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True
    )


def exif_rotated_jpeg() -> bytes:
    """Stored 200x100, left half red, right half blue, EXIF Orientation=6 (rotate 90 CW)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    im = halves((200, 100), "RGB", (255, 0, 0), (0, 0, 255))
    return encoded(im, "JPEG", quality=95, exif=exif.tobytes())


def plain_jpeg(colour: RGB = (90, 140, 200)) -> bytes:
    return encoded(Image.new("RGB", (64, 64), colour), "JPEG", quality=90)


def truncated_jpeg() -> bytes:
    """The first half of a real 256x192 JPEG."""
    whole = encoded(noise((256, 192), 1), "JPEG", quality=90)
    return whole[: len(whole) // 2]


def truncated_png() -> bytes:
    """The first half of a real 256x192 PNG."""
    whole = encoded(noise((256, 192), 2), "PNG")
    return whole[: len(whole) // 2]


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A real 1x1 PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed)."""
    raw = bytearray(encoded(Image.new("RGB", (1, 1)), "PNG"))
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


@dataclass(frozen=True)
class Good:
    """A file that must be captioned: its size as sent and colours probed at (x, y) fractions."""

    name: str
    build: Callable[[], bytes]
    size: tuple[int, int]
    probes: tuple[tuple[float, float, RGB], ...]


WHITE, RED, BLUE, CYAN = (255, 255, 255), (255, 0, 0), (0, 0, 255), (0, 255, 255)
GOOD = [
    Good("cmyk.jpg", cmyk_jpeg, (120, 80), ((0.25, 0.5, RED), (0.75, 0.5, CYAN))),
    Good("deep16.png", png_16bit, (120, 80), ((0.25, 0.5, (64, 64, 64)), (0.75, 0.5, (192,) * 3))),
    Good("palette.png", palette_png, (120, 80), ((0.25, 0.5, WHITE), (0.75, 0.5, (0, 200, 0)))),
    Good("rgba.png", rgba_png, (120, 80), ((0.25, 0.5, WHITE), (0.75, 0.5, BLUE))),
    Good("anim.gif", animated_gif, (64, 48), ((0.5, 0.5, BLUE),)),
    Good("anim.webp", animated_webp, (64, 48), ((0.5, 0.5, (0, 200, 0)),)),
    Good("rotated.jpg", exif_rotated_jpeg, (100, 200), ((0.5, 0.25, RED), (0.5, 0.75, BLUE))),
]
# name -> words the error must contain; image_sha256 is null when the file could not be read.
BAD = {
    "empty.jpg": ("empty",),
    "notes.jpg": ("not an image",),
    "truncated.jpg": ("truncated",),
    "truncated.png": ("truncated",),
    "bomb.png": ("too large", "30000x30000"),
    "gone.jpg": ("disappeared",),
}
UNREAD = {"gone.jpg"}
NON_UTF8 = b"caf\xe9.jpg"
NON_UTF8_REL = "caf\\xe9.jpg"
LOOP_REAL = ("loop/inside.jpg", "outside.jpg")  # loop/up -> .. makes a cycle
DECODABLE = [g.name for g in GOOD] + [NON_UTF8_REL, *LOOP_REAL]


def build_catalogue(root: Path) -> None:
    root.mkdir(parents=True)
    for good in GOOD:
        (root / good.name).write_bytes(good.build())
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("shopping list: milk, eggs\n", encoding="utf-8")
    (root / "truncated.jpg").write_bytes(truncated_jpeg())
    (root / "truncated.png").write_bytes(truncated_png())
    (root / "bomb.png").write_bytes(bomb_png())
    (root / "gone.jpg").symlink_to(root / "never-existed.jpg")
    with open(os.path.join(os.fsencode(root), NON_UTF8), "wb") as fh:
        fh.write(plain_jpeg((200, 120, 40)))
    (root / "loop").mkdir()
    (root / "loop" / "inside.jpg").write_bytes(plain_jpeg((20, 160, 90)))
    (root / "outside.jpg").write_bytes(plain_jpeg((160, 20, 90)))
    (root / "loop" / "up").symlink_to("..", target_is_directory=True)


@dataclass
class Outcome:
    root: Path
    first_code: int
    first_requests: int
    first: dict[str, dict[str, object]]  # image_path -> row of the first run
    rerun_code: int
    rerun_requests: int
    rerun_new: list[dict[str, object]]  # rows the rerun added


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    base = tmp_path_factory.mktemp("catalogue")
    root, out = base / "images", base / "out"
    build_catalogue(root)
    with SimServer(SimConfig(slots=8, latency=0.01)) as sim:
        first_code = main(cli_args(sim, root, out))
        first_requests = sim.stats()["requests"]
        rows = read_rows(out)
        sim.reset_stats()
        rerun_code = main(cli_args(sim, root, out))
        rerun_requests = sim.stats()["requests"]
    first = {str(r["image_path"]): r for r in rows}
    assert len(first) == len(rows), "one row per file in the first run"
    before = {(r["key"], r["run_id"]) for r in rows}
    new = [r for r in read_rows(out) if (r["key"], r["run_id"]) not in before]
    yield Outcome(root, first_code, first_requests, first, rerun_code, rerun_requests, new)


def sent_image(path: Path) -> Image.Image:
    """The image the pipeline sends for ``path``, decoded from its data URI."""
    uri = encode_image(path.read_bytes(), ImageConfig()).data_uri
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def assert_captioned(row: dict[str, object], path: Path, size: tuple[int, int]) -> None:
    """``row`` is ok, sized ``size``, and its caption proves the simulator got that exact JPEG."""
    assert row["status"] == "ok", row["error"]
    assert (row["width"], row["height"]) == size
    marker = f"image {sent_marker(path)} {size[0]}x{size[1]}"
    assert marker in str(row["caption"]), (marker, row["caption"])


# --- the catalogue -----------------------------------------------------------------------------


class TestRun:
    def test_exit_code_is_zero(self, outcome: Outcome) -> None:
        """Invalid inputs are not failures: both runs exit 0."""
        assert (outcome.first_code, outcome.rerun_code) == (0, 0)

    def test_every_file_has_exactly_one_row(self, outcome: Outcome) -> None:
        """The first run writes one row per file, invalid ones included, and nothing else."""
        assert sorted(outcome.first) == sorted([*DECODABLE, *BAD])

    def test_one_request_per_decodable_image(self, outcome: Outcome) -> None:
        """Only decodable images reach the server, each exactly once."""
        assert outcome.first_requests == len(DECODABLE)
        ok = sorted(p for p, r in outcome.first.items() if r["status"] == "ok")
        assert ok == sorted(DECODABLE)

    def test_rerun_sends_nothing_and_retries_only_unreadable_files(self, outcome: Outcome) -> None:
        """A rerun skips files whose bytes were invalid; only unreadable ones are tried again."""
        assert outcome.rerun_requests == 0
        assert {r["status"] for r in outcome.rerun_new} == {"invalid"}
        unread = sorted(p for p, r in outcome.first.items() if r["status"] == "invalid"
                        and r["image_sha256"] is None and p != "vanish.jpg")  # fmt: skip
        assert unread == ["gone.jpg"]
        assert sorted(str(r["image_path"]) for r in outcome.rerun_new) == unread
        for row in outcome.rerun_new:
            assert row["key"] == outcome.first[str(row["image_path"])]["key"]
            assert row["run_id"] != outcome.first[str(row["image_path"])]["run_id"]


class TestInvalid:
    @pytest.mark.parametrize("name", sorted(BAD))
    def test_invalid_row_says_why(self, outcome: Outcome, name: str) -> None:
        """Each bad file is an 'invalid' row, never sent, with an error that says what is wrong."""
        row = outcome.first[name]
        assert row["status"] == "invalid"
        error = str(row["error"])
        for words in BAD[name]:
            assert words in error, error
        assert row["attempts"] == 0 and row["caption"] is None
        assert (row["image_sha256"] is None) is (name in UNREAD)

    def test_bomb_fixture_is_small_and_claims_900_megapixels(self, outcome: Outcome) -> None:
        """The bomb is a few dozen bytes whose header claims 30000x30000 (a valid PNG header)."""
        path = outcome.root / "bomb.png"
        assert path.stat().st_size < 100
        with Image.open(path) as im:
            assert im.size == (30_000, 30_000)


class TestConverted:
    @pytest.mark.parametrize("good", GOOD, ids=[g.name for g in GOOD])
    def test_sent_as_rgb_with_the_right_pixels(self, outcome: Outcome, good: Good) -> None:
        """Odd modes, animations and EXIF rotation: ok row, RGB sent, upright, alpha on white."""
        path = outcome.root / good.name
        assert_captioned(outcome.first[good.name], path, good.size)
        sent = sent_image(path)
        assert sent.format == "JPEG" and sent.mode == "RGB" and sent.size == good.size
        for fx, fy, want in good.probes:
            got = sent.getpixel((int(fx * good.size[0]), int(fy * good.size[1])))
            assert isinstance(got, tuple)
            assert all(abs(g - w) <= TOLERANCE for g, w in zip(got, want, strict=True)), (
                fx,
                fy,
                got,
                want,
            )

    @pytest.mark.parametrize(
        ("name", "mode", "frames"),
        [
            ("cmyk.jpg", "CMYK", 1),
            ("deep16.png", "I;16", 1),
            ("palette.png", "P", 1),
            ("rgba.png", "RGBA", 1),
            ("anim.gif", "P", 3),
            ("anim.webp", "RGB", 2),
            ("rotated.jpg", "RGB", 1),
        ],
    )
    def test_inputs_are_what_they_claim(
        self, outcome: Outcome, name: str, mode: str, frames: int
    ) -> None:
        """The generated inputs really have the awkward mode / frame count under test."""
        with Image.open(outcome.root / name) as im:
            assert im.mode == mode
            assert getattr(im, "n_frames", 1) == frames
            if name == "palette.png":
                assert im.info.get("transparency") == 0
            if name == "rotated.jpg":
                assert im.size == (200, 100) and im.getexif()[0x0112] == 6


class TestPaths:
    def test_non_utf8_name_is_captioned_with_an_escaped_path(self, outcome: Outcome) -> None:
        """A Latin-1 file name gives an ok row whose image_path spells the byte as \\xe9."""
        row = outcome.first[NON_UTF8_REL]
        path = Path(os.fsdecode(os.path.join(os.fsencode(outcome.root), NON_UTF8)))
        assert_captioned(row, path, (64, 64))
        assert str(row["image_path"]).encode("utf-8") == b"caf\\xe9.jpg"

    def test_symlink_loop_ends_and_each_image_is_captioned_once(self, outcome: Outcome) -> None:
        """loop/up -> .. is not walked again: each real image has one row, no path via 'up/'."""
        assert not any("up/" in p for p in outcome.first)
        for rel in LOOP_REAL:
            assert_captioned(outcome.first[rel], outcome.root / rel, (64, 64))


# --- files that change under the run ----------------------------------------------------------


def test_file_deleted_after_the_walk_is_invalid(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file listed by the walk but deleted before it is read: 'invalid', 'disappeared'."""
    root = tmp_path / "images"
    root.mkdir()
    (root / "keep.jpg").write_bytes(plain_jpeg())
    (root / "vanish.jpg").write_bytes(plain_jpeg((1, 2, 3)))
    deleted: list[str] = []

    def walk_then_delete(top: Path, patterns: tuple[str, ...]) -> Iterator[ImageFile]:
        for f in walk_images(top, patterns):
            if f.relpath == "vanish.jpg":
                assert f.size > 0  # stat'ed while it still existed
                f.path.unlink()
                deleted.append(f.relpath)
            yield f

    monkeypatch.setattr(feed, "walk_input", walk_then_delete)  # the name feed.walk calls
    # the counting walk (progress total) lists the tree too: keep it out of this race
    monkeypatch.setattr(feed.Feed, "count", lambda _self, _stopped: None)
    assert main(cli_args(sim, root, tmp_path / "out")) == 0
    assert deleted == ["vanish.jpg"]
    rows = {str(r["image_path"]): r for r in read_rows(tmp_path / "out")}
    assert rows["keep.jpg"]["status"] == "ok"
    gone = rows["vanish.jpg"]
    assert gone["status"] == "invalid" and "disappeared" in str(gone["error"])
    assert gone["image_sha256"] is None
    assert sim.stats()["requests"] == 1


DROP = "-dac_override,-dac_read_search"


def unprivileged_prefix(probe: Path) -> list[str]:
    """A command prefix under which a mode-000 file cannot be read, or skip the test."""
    if os.geteuid() != 0:
        if os.access(probe, os.R_OK):
            pytest.skip("not root, yet a chmod 000 file is readable (odd filesystem)")
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux setpriv is absent: chmod 000 cannot bite")
    prefix = [setpriv, f"--bounding-set={DROP}", f"--inh-caps={DROP}"]
    check = subprocess.run([*prefix, "cat", str(probe)], capture_output=True, timeout=10)
    if check.returncode == 0:
        pytest.skip("setpriv did not drop CAP_DAC_OVERRIDE: a root process still reads 000 files")
    return prefix


@pytest.mark.slow
def test_unreadable_file_is_invalid_permission_denied(sim: SimServer, tmp_path: Path) -> None:
    """A chmod 000 file read by a process without DAC override: 'invalid', 'permission denied'."""
    root, out = tmp_path / "images", tmp_path / "out"
    root.mkdir()
    (root / "fine.jpg").write_bytes(plain_jpeg())
    secret = root / "secret.jpg"
    secret.write_bytes(plain_jpeg((9, 9, 9)))
    secret.chmod(0)
    try:
        prefix = unprivileged_prefix(secret)
        cmd = [*prefix, sys.executable, "-m", "pipeline", *cli_args(sim, root, out)]
        done = subprocess.run(cmd, capture_output=True, timeout=60, cwd=PROJECT)
    finally:
        secret.chmod(0o644)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    rows = {str(r["image_path"]): r for r in read_rows(out)}
    assert rows["fine.jpg"]["status"] == "ok"
    denied = rows["secret.jpg"]
    assert denied["status"] == "invalid"
    assert "permission denied" in str(denied["error"]).lower()
    assert denied["image_sha256"] is None
    assert sim.stats()["requests"] == 1

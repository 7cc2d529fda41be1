"""Test helpers: generated images and the caption marker the simulator puts in its answers."""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from pathlib import Path

from PIL import Image

from pipeline.config import ImageConfig
from pipeline.encode import encode_image
from pipeline.sim import SimServer


def make_images(
    folder: Path, count: int, *, size: tuple[int, int] = (96, 64), seed: int = 1
) -> list[Path]:
    """``count`` distinct small JPEGs in nested folders (a/, b/, ...), each a different colour."""
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        sub = folder / "abcd"[i % 4]
        sub.mkdir(parents=True, exist_ok=True)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        im = Image.new("RGB", size, colour)
        im.putpixel((i % size[0], 0), (255 - colour[0], 0, 0))
        path = sub / f"img{i:04d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def sent_marker(path: Path, cfg: ImageConfig | None = None) -> str:
    """The simulator's caption marker for ``path``: sha256 of the JPEG the pipeline sends."""
    uri = encode_image(path.read_bytes(), cfg or ImageConfig()).data_uri
    raw = base64.b64decode(uri.split(",", 1)[1])
    return hashlib.sha256(raw).hexdigest()[:12]


def down_after(sim: SimServer, completed: int, seconds: float) -> threading.Thread:
    """Take ``sim`` down for ``seconds`` once it has answered ``completed`` requests."""

    def watch() -> None:
        while sim.stats()["completed"] < completed:
            time.sleep(0.01)
        sim.go_down(seconds)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread

"""Several endpoints: load spread over them, a failing one ejected and probed back in."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
from helpers import down_after, make_images

from pipeline.cli import main
from pipeline.sim import SimConfig, SimServer


def run(urls: list[str], root: Path, out: Path, *extra: str) -> int:
    args = ["run", "--input", str(root), "--output", str(out), "--prompt", "x", "--no-progress"]
    for url in urls:
        args += ["--endpoint", url]
    return main([*args, *extra])


def test_requests_are_spread_and_rows_name_their_endpoint(tmp_path: Path) -> None:
    """Two equal servers each take a fair share; every row says which one answered."""
    root = make_images(tmp_path / "img", 120, size=(32, 24))[0].parent.parent
    with (
        SimServer(SimConfig(slots=4, latency=0.05)) as a,
        SimServer(SimConfig(slots=4, latency=0.05)) as b,
    ):
        assert run([a.base_url, b.base_url], root, tmp_path / "o", "--concurrency", "8") == 0
        sa, sb = a.stats()["completed"], b.stats()["completed"]
    assert sa + sb == 120 and min(sa, sb) >= 40
    used = Counter(r["endpoint"] for r in ds.dataset(tmp_path / "o").to_table().to_pylist())
    assert used == {a.base_url: sa, b.base_url: sb}


def test_a_dead_endpoint_is_ejected_and_probed_back(tmp_path: Path) -> None:
    """One server goes down mid-run: the other carries on, nothing fails, it rejoins after."""
    root = make_images(tmp_path / "img", 400, size=(32, 24))[0].parent.parent
    with (
        SimServer(SimConfig(slots=4, latency=0.05)) as a,
        SimServer(SimConfig(slots=4, latency=0.05)) as b,
    ):
        down_after(b, 20, 1.5)
        code = run(
            [a.base_url, b.base_url], root, tmp_path / "o", "--concurrency", "8", "--retries", "1"
        )
        after = b.stats()["completed"]
    assert code == 0
    rows = ds.dataset(tmp_path / "o").to_table().to_pylist()
    assert sorted(r["status"] for r in rows) == ["ok"] * 400
    assert after > 20  # b came back and took work again


def test_unknown_model_on_one_endpoint_is_a_config_error(tmp_path: Path) -> None:
    """The preflight checks every endpoint."""
    root = make_images(tmp_path / "img", 2)[0].parent
    with SimServer(SimConfig()) as a, SimServer(SimConfig(model="other")) as b:
        assert run([a.base_url, b.base_url], root, tmp_path / "o") == 2

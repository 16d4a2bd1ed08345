"""One rule for choosing the torch device, shared by the student and the teacher."""
from __future__ import annotations

from semisam.utils.errors import SemisamError


def available_device_type(mps: bool = True) -> str:
    """The best accelerator here: ``"cuda"`` if CUDA is available, else ``"mps"`` (when ``mps``) if Apple's
    MPS is, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    backend = getattr(torch.backends, "mps", None)
    if mps and backend is not None and backend.is_available():
        return "mps"
    return "cpu"


def resolve_device(device: "str | object | None" = "auto"):
    """``"auto"``/None → CUDA if available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a
    ``torch.device`` → that device, if present.

    Raises:
        SemisamError: an unknown device name, or one this machine does not have.
    """
    import torch

    if device is None or device == "auto":
        return torch.device(available_device_type(mps=False))
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SemisamError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SemisamError(f"device '{device}' was asked for but CUDA is not available; use device=cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SemisamError(f"device '{device}' was asked for but MPS is not available; use device=cpu or auto")
    return dev

"""One rule for choosing the torch device, shared by the student and the teacher."""
from __future__ import annotations

from semisam.utils.errors import SemisamError


def resolve_device(device: "str | object | None" = "auto"):
    """``"auto"``/None → CUDA if available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a
    ``torch.device`` → that device, if present.

    Raises:
        SemisamError: an unknown device name, or one this machine does not have.
    """
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SemisamError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SemisamError(f"device '{device}' was asked for but CUDA is not available; use device=cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SemisamError(f"device '{device}' was asked for but MPS is not available; use device=cpu or auto")
    return dev

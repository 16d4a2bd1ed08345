"""nnU-Net checkpoints (``checkpoint_final.pth``, ``checkpoint_best.pth``): the one reader, safe by default."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch


def read_checkpoint(checkpoint_file: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """An nnU-Net checkpoint dict, loaded with ``weights_only=True``.

    Besides tensors and plain containers, nnU-Net's checkpoints hold numpy scalars and arrays from its
    logger; exactly those numpy types are allowed.
    """
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 / numpy 1
    safe = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    with torch.serialization.safe_globals(safe):
        return torch.load(checkpoint_file, map_location=map_location, weights_only=True)


def read_checkpoint_weights(checkpoint_file: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The ``network_weights`` state dict of an nnU-Net checkpoint (``module.`` prefixes removed)."""
    checkpoint = read_checkpoint(checkpoint_file, map_location)
    state = checkpoint["network_weights"] if "network_weights" in checkpoint else checkpoint
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}

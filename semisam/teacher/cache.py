"""Image-embedding cache: the image encoder runs once per image (per slice in 3D) per run.

Key: ``sha256(image bytes + shape + dtype)`` of the intensity-mapped ``(H, W)`` image, combined with the
teacher's ``spec.model_id`` (a hash of its **image encoder** weights) and its input size. Decoder and
prompt-encoder changes (teacher adaptation) therefore keep embeddings valid; a different encoder, image,
intensity rule or input size gives a different key.

Two layers: an in-memory LRU bounded by ``max_memory_items`` (a LiteMedSAM embedding is 4 MiB in float32),
and, when ``cache_dir`` is given, one ``.pt`` file per embedding under ``cache_dir/<model_id>/`` written
atomically and read with ``weights_only=True``, so it is shared by rounds, refreshes, adaptation and later
runs. An unreadable cache file counts as a miss and is rewritten.

``store_dtype=torch.float16`` halves memory and disk; embeddings are then rounded on a miss too, so a hit
and a miss return the same values.
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from semisam.teacher.preprocess import TransformInfo
from semisam.utils.io import atomic_write_path

if TYPE_CHECKING:
    from semisam.teacher.models import SamModel

log = logging.getLogger(__name__)

ComputeFn = Callable[[np.ndarray], tuple[torch.Tensor, TransformInfo]]


def image_digest(image_2d: np.ndarray) -> str:
    """sha256 hex of an array's bytes, shape and dtype (C order)."""
    a = np.ascontiguousarray(image_2d)
    h = hashlib.sha256(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def default_compute(model: "SamModel") -> ComputeFn:
    """``image01 (H, W) -> (embedding (1, C, h_e, w_e) on CPU, TransformInfo)`` with ``model``'s own rule."""

    def compute(image01: np.ndarray) -> tuple[torch.Tensor, TransformInfo]:
        x, info = model.preprocess(image01)
        return model.encode(x).to("cpu"), info

    return compute


class EmbeddingCache:
    """On-disk + in-memory LRU cache of image embeddings (see the module docstring).

    Args:
        cache_dir: folder for ``.pt`` files, or None for memory only.
        max_memory_items: how many embeddings the in-memory LRU keeps (0: none).
        store_dtype: dtype embeddings are kept and stored in (float32 or float16).
    """

    def __init__(self, cache_dir: str | Path | None = None, max_memory_items: int = 64,
                 store_dtype: torch.dtype = torch.float32):
        if max_memory_items < 0:
            raise ValueError("max_memory_items must be >= 0")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.max_memory_items = int(max_memory_items)
        self.store_dtype = store_dtype
        self._memory: OrderedDict[str, tuple[torch.Tensor, TransformInfo]] = OrderedDict()
        self.hits_memory = 0
        self.hits_disk = 0
        self.misses = 0

    @staticmethod
    def key(image_2d: np.ndarray, model: "SamModel") -> str:
        """Cache key of an intensity-mapped image for ``model`` (image encoder + input size)."""
        spec = model.spec
        return hashlib.sha256(f"{image_digest(image_2d)}|{spec.model_id}|{spec.input_size}".encode()).hexdigest()

    def path_for(self, key: str, model: "SamModel") -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / model.spec.model_id / f"{key}.pt"

    def get_or_compute(self, image_2d: np.ndarray, model: "SamModel",
                       compute_fn: ComputeFn | None = None) -> tuple[torch.Tensor, TransformInfo]:
        """Return ``(embedding (1, C, h_e, w_e) CPU tensor, TransformInfo)``, computing it at most once.

        Args:
            image_2d: the intensity-mapped ``(H, W)`` float image, exactly as it will be encoded.
            model: the teacher (its ``spec`` keys the entry).
            compute_fn: ``image_2d -> (embedding, info)``; default: ``model.preprocess`` + ``model.encode``.
        """
        key = self.key(image_2d, model)
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits_memory += 1
            return self._memory[key]
        path = self.path_for(key, model)
        if path is not None and path.is_file():
            entry = self._read(path)
            if entry is not None:
                self.hits_disk += 1
                self._remember(key, entry)
                return entry
        self.misses += 1
        embedding, info = (compute_fn or default_compute(model))(image_2d)
        entry = (embedding.detach().to("cpu", self.store_dtype).contiguous(), info)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write_path(path) as tmp:
                torch.save({"embedding": entry[0], "info": info.to_dict(), "model_id": model.spec.model_id}, tmp)
        self._remember(key, entry)
        return entry

    def _read(self, path: Path) -> tuple[torch.Tensor, TransformInfo] | None:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            embedding = blob["embedding"].to(self.store_dtype)
            info = TransformInfo.from_dict(blob["info"])
        except Exception as e:  # noqa: BLE001  a damaged cache file is a miss, never an error
            log.warning("ignoring unreadable embedding cache file %s (%s)", path, type(e).__name__)
            return None
        return embedding, info

    def _remember(self, key: str, entry: tuple[torch.Tensor, TransformInfo]) -> None:
        if self.max_memory_items == 0:
            return
        self._memory[key] = entry
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_memory_items:
            self._memory.popitem(last=False)

    def __len__(self) -> int:
        """Number of embeddings held in memory."""
        return len(self._memory)

    def clear_memory(self) -> None:
        self._memory.clear()

    def stats(self) -> dict[str, int | float]:
        """Counters: ``hits_memory``, ``hits_disk``, ``misses``, ``in_memory``, ``hit_rate``."""
        total = self.hits_memory + self.hits_disk + self.misses
        return {
            "hits_memory": self.hits_memory,
            "hits_disk": self.hits_disk,
            "misses": self.misses,
            "in_memory": len(self._memory),
            "hit_rate": (self.hits_memory + self.hits_disk) / total if total else 0.0,
        }

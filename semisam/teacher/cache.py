"""Image-embedding cache: the image encoder runs once per image (per slice in 3D) per run.

Key: ``sha256(image bytes + shape + dtype)`` of the intensity-mapped ``(H, W)`` (or RGB ``(3, H, W)``) image,
combined with the teacher's ``spec.model_id`` (a hash of its **image encoder** weights) and its input size.
Decoder and prompt-encoder changes (teacher adaptation) therefore keep embeddings valid; a different encoder,
image, channel choice, intensity rule or input size gives a different key.

Two layers: an in-memory LRU bounded by ``max_memory_items`` (a LiteMedSAM embedding is 4 MiB in float32),
and, when ``cache_dir`` is given, one ``.pt`` file per embedding under ``cache_dir/<model_id>/`` written
atomically and read with ``weights_only=True``, so it is shared by rounds, refreshes, adaptation and later
runs. A read checks what it loads (an embedding tensor of the stored dtype, the model id, and the key the
file was written under); an unreadable, truncated or mismatched file counts as a miss and is rewritten.

**Precision** (``store_dtype``, the recipe's ``teacher.cache_dtype``): float16 halves memory and disk
(a LiteMedSAM embedding file: 4.2 MB in float32, 2.1 MB in float16); embeddings are then rounded on a miss
too, so a hit and a miss return the same values, and the decoder upcasts them to float32. Measured with the
embedded LiteMedSAM on the 64 DSB nuclei tiles (64×64), box prompts around every nucleus, the same prompts
decoded from float32 and from float16 embeddings (196 prompts, CPU): max |Δ logit| 0.0053 on the image grid
(0.0060 on the 256² low-res logits), max |Δ predicted IoU| 1.0e-4, 3 of 802,816 mask pixels flipped (pooled
mask IoU 0.99993; the worst single mask, a small nucleus, IoU 0.977 from one pixel). So float16 is the
recipes' default; it is a result key of the run (``semisam.loop.state``), float32 reproduces older runs.
float32 entries are ``<key>.pt``, float16 entries ``<key>.f16.pt``: a float16 cache also reads a float32
file (rounded: the same values as its own miss), a float32 cache never reads a float16 one, so runs of both
precisions can share one folder.

**Size cap** (``max_disk_gb``, ``teacher.cache_max_gb``; None: unbounded): when the files under ``cache_dir``
exceed the cap (1 GB = 1e9 bytes), the least recently used ones are deleted until the folder is at 90 % of it
(so that the folder is not rescanned on every write). Recency is the file's modification time, touched on
every hit while a cap is set, so it is shared by the processes that use one folder; each process counts the
others' files when it rescans (on its first write and when its own writes pass the cap), so the folder can
exceed the cap by what other processes wrote since. An evicted embedding is computed again when needed (the
same values: the cap changes disk use, not results). :meth:`EmbeddingCache.stats` reports the folder's size on
disk and the evictions.
"""
from __future__ import annotations

import hashlib
import logging
import os
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


#: File suffix of an entry per stored dtype (float32 keeps the original ``<key>.pt`` layout).
SUFFIXES = {torch.float32: ".pt", torch.float16: ".f16.pt"}
DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Eviction frees the folder down to this fraction of the cap.
LOW_WATER = 0.9


class EmbeddingCache:
    """On-disk + in-memory LRU cache of image embeddings (see the module docstring).

    Args:
        cache_dir: folder for ``.pt`` files, or None for memory only.
        max_memory_items: how many embeddings the in-memory LRU keeps (0: none).
        store_dtype: dtype embeddings are kept and stored in: float32 or float16 (a ``torch.dtype`` or its name).
        max_disk_gb: cap on the size of the files under ``cache_dir`` in GB (1e9 bytes), least recently used
            files evicted beyond it; None: unbounded.
    """

    def __init__(self, cache_dir: str | Path | None = None, max_memory_items: int = 64,
                 store_dtype: torch.dtype | str = torch.float32, max_disk_gb: float | None = None):
        if max_memory_items < 0:
            raise ValueError("max_memory_items must be >= 0")
        store_dtype = DTYPES.get(store_dtype, store_dtype) if isinstance(store_dtype, str) else store_dtype
        if store_dtype not in SUFFIXES:
            raise ValueError(f"store_dtype must be one of {', '.join(DTYPES)}, got {store_dtype}")
        if max_disk_gb is not None and max_disk_gb < 0:
            raise ValueError("max_disk_gb must be >= 0 or None")
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.max_memory_items = int(max_memory_items)
        self.store_dtype = store_dtype
        self.max_disk_bytes = None if max_disk_gb is None else int(max_disk_gb * 1e9)
        self._memory: OrderedDict[str, tuple[torch.Tensor, TransformInfo]] = OrderedDict()
        self._disk_bytes: int | None = None  # this process's count of the folder's size (capped caches only)
        self.hits_memory = 0
        self.hits_disk = 0
        self.misses = 0
        self.evictions = 0
        self.write_errors = 0

    @staticmethod
    def key(image_2d: np.ndarray, model: "SamModel") -> str:
        """Cache key of an intensity-mapped image for ``model`` (image encoder + input size)."""
        spec = model.spec
        return hashlib.sha256(f"{image_digest(image_2d)}|{spec.model_id}|{spec.input_size}".encode()).hexdigest()

    def path_for(self, key: str, model: "SamModel", dtype: torch.dtype | None = None) -> Path | None:
        """The file of ``key`` stored in ``dtype`` (default: this cache's), or None for a memory-only cache."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / model.spec.model_id / f"{key}{SUFFIXES[dtype or self.store_dtype]}"

    def get_or_compute(self, image_2d: np.ndarray, model: "SamModel",
                       compute_fn: ComputeFn | None = None) -> tuple[torch.Tensor, TransformInfo]:
        """Return ``(embedding (1, C, h_e, w_e) CPU tensor, TransformInfo)``, computing it at most once.

        Args:
            image_2d: the intensity-mapped ``(H, W)`` float image, exactly as it will be encoded.
            model: the teacher (its ``spec`` keys the entry).
            compute_fn: ``image_2d -> (embedding, info)``; default: ``model.preprocess`` + ``model.encode``.
        """
        key = self.key(image_2d, model)
        path = self.path_for(key, model)
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits_memory += 1
            self._touch(path)
            return self._memory[key]
        # a float16 cache also reads a float32 entry (rounded: the values of its own miss), never the reverse
        candidates = [path] + ([self.path_for(key, model, torch.float32)] if self.store_dtype != torch.float32 else [])
        for candidate in candidates:
            if candidate is not None and candidate.is_file():
                entry = self._read(candidate, key, model)
                if entry is not None:
                    self.hits_disk += 1
                    self._touch(candidate)
                    self._remember(key, entry)
                    return entry
        self.misses += 1
        embedding, info = (compute_fn or default_compute(model))(image_2d)
        entry = (embedding.detach().to("cpu", self.store_dtype).contiguous(), info)
        if path is not None:
            self._write(path, key, entry, model)
        self._remember(key, entry)
        return entry

    def _write(self, path: Path, key: str, entry: tuple[torch.Tensor, TransformInfo], model: "SamModel") -> None:
        """Store an entry; a failed write (a full disk, a file-size limit) leaves no file and is counted in
        ``write_errors``, never an error: the entry stays in memory and the run goes on without the file."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write_path(path) as tmp:
                torch.save({"embedding": entry[0], "info": entry[1].to_dict(), "model_id": model.spec.model_id,
                            "key": key}, tmp)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
            if not self.write_errors:
                log.warning("cannot write embedding cache files in %s (%s: %s); going on without them "
                            "(is the disk full?)", self.cache_dir, type(e).__name__, str(e).strip()[:120])
            self.write_errors += 1
            return
        if self.max_disk_bytes is not None:
            if self._disk_bytes is None:
                self._disk_bytes = sum(size for *_, size in self._files())
            else:
                self._disk_bytes += path.stat().st_size
            if self._disk_bytes > self.max_disk_bytes:
                self._evict()

    def _read(self, path: Path, key: str, model: "SamModel") -> tuple[torch.Tensor, TransformInfo] | None:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            embedding, info = blob["embedding"], TransformInfo.from_dict(blob["info"])
            stored = embedding.dtype if isinstance(embedding, torch.Tensor) else None
            # a file holds what its name says: an embedding (1, C, h, w) of this model and key (files written
            # before the key was stored carry the model id only), in this dtype or, for float16, float32
            if stored not in (self.store_dtype, torch.float32) or embedding.ndim != 4 \
                    or path.name.endswith(SUFFIXES[torch.float16]) != (stored == torch.float16) \
                    or blob["model_id"] != model.spec.model_id or blob.get("key", key) != key:
                raise ValueError("entry does not match its file name")
            embedding = embedding.to(self.store_dtype)
        except Exception as e:  # noqa: BLE001  a damaged cache file is a miss, never an error
            log.warning("ignoring unreadable embedding cache file %s (%s)", path, type(e).__name__)
            return None
        return embedding, info

    def _touch(self, path: Path | None) -> None:
        """Mark a file as just used (its modification time: the eviction order), when a cap is set."""
        if path is not None and self.max_disk_bytes is not None:
            try:
                os.utime(path)
            except OSError:  # evicted by another process, or never written: nothing to mark
                pass

    def _files(self) -> list[tuple[int, str, Path, int]]:
        """``(mtime_ns, name, path, size)`` of every entry under ``cache_dir``, least recently used first."""
        out = []
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return out
        for sub in os.scandir(self.cache_dir):
            if not sub.is_dir():
                continue
            for f in os.scandir(sub.path):
                if f.name.endswith(".pt") and not f.name.startswith("."):  # not a temporary being written
                    try:
                        st = f.stat()
                    except FileNotFoundError:  # evicted meanwhile
                        continue
                    out.append((st.st_mtime_ns, f.name, Path(f.path), st.st_size))
        return sorted(out)

    def _evict(self) -> None:
        """Delete the least recently used files until the folder is at :data:`LOW_WATER` of the cap."""
        assert self.max_disk_bytes is not None
        files = self._files()
        total = sum(size for *_, size in files)
        target = int(self.max_disk_bytes * LOW_WATER)
        for *_, path, size in files:
            if total <= target:
                break
            try:
                path.unlink()
                self.evictions += 1
            except FileNotFoundError:  # another process evicted it first
                pass
            total -= size
        self._disk_bytes = total

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
        """Counters of this process: ``hits`` (``hits_memory`` + ``hits_disk``), ``misses``, ``in_memory``,
        ``hit_rate``, ``evictions``, ``write_errors`` (entries not stored on disk); and the folder as it is now: ``disk_files`` and ``disk_bytes`` (every
        entry under ``cache_dir``, also other processes'; 0 for a memory-only cache)."""
        total = self.hits_memory + self.hits_disk + self.misses
        files = self._files()
        return {
            "hits": self.hits_memory + self.hits_disk,
            "hits_memory": self.hits_memory,
            "hits_disk": self.hits_disk,
            "misses": self.misses,
            "in_memory": len(self._memory),
            "hit_rate": (self.hits_memory + self.hits_disk) / total if total else 0.0,
            "disk_files": len(files),
            "disk_bytes": sum(size for *_, size in files),
            "evictions": self.evictions,
            "write_errors": self.write_errors,
        }


#: :meth:`EmbeddingCache.stats` counters that add up over processes (the rest describe the folder, or derive)
ADDITIVE_STATS = ("hits", "hits_memory", "hits_disk", "misses", "in_memory", "evictions", "write_errors")


def merge_cache_stats(parts: list[dict], now: dict) -> dict:
    """One :meth:`EmbeddingCache.stats` for several processes sharing a cache folder (torchrun ranks): the
    counters of ``parts`` summed (``in_memory``: entries held by all of them), ``hit_rate`` from the sums, and
    the folder's ``disk_files``/``disk_bytes`` from ``now`` (stats taken after every process finished). For
    one part and ``now`` taken right after it, the part itself. Empty dicts (no teacher) give ``{}``."""
    if not any(parts):
        return {}
    merged = {k: sum(int(p.get(k, 0)) for p in parts) for k in ADDITIVE_STATS}
    total = merged["hits"] + merged["misses"]
    out = dict(now)
    out.update(merged)
    out["hit_rate"] = merged["hits"] / total if total else 0.0
    return out

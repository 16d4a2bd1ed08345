"""Adapt the teacher to the task: fine-tune its mask decoder (and prompt encoder) on labeled cases.

The image encoder stays frozen, so every training view costs one cached embedding (the same
:class:`~semisam.teacher.cache.EmbeddingCache` the teacher uses at prediction time, keyed by the image
encoder only: embeddings stay valid after adaptation). Prompts come from the cases' own labels: one box per
connected component (``scipy.ndimage.label``) of each class, jittered by up to ``box_jitter`` pixels per
side at every step. With ``augment`` every case is seen in its 8 flips/rotations (each view's embedding is
cached too).

Loss: ``BCE + soft Dice`` on the logits **upsampled to the original image grid** (exactly the logits the
teacher thresholds at prediction time; small structures keep their pixels). Adam, ``lr`` 1e-4.

Legitimate inputs are labels of **labeled** cases, or pseudo-labels the loop has already accepted
(pixels equal to ``ignore_label`` then carry no loss). Labels of unlabeled cases never are.

Adapted weights (prompt encoder + mask decoder, with the base model's ``model_id``) are saved with
:func:`save_adapted` and loaded with :func:`load_adapted`, which refuses a different base model;
:func:`adapt_or_load` reuses a saved adaptation made from the same data and settings.
"""
from __future__ import annotations

import contextlib

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm.auto import tqdm

from semisam.teacher.cache import EmbeddingCache, image_digest
from semisam.teacher.models import SamModel
from semisam.teacher.predictor import decode_prompts
from semisam.teacher.preprocess import (
    IntensityRule,
    TransformInfo,
    boxes_to_input,
    is_teacher_image,
    postprocess_logits,
)
from semisam.utils.errors import SemisamError
from semisam.utils.io import atomic_write_path, write_failure

ADAPTED_FORMAT = "semisam.adapted_teacher.v1"


def dihedral(array_2d: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips/rotations of a ``(H, W)`` array (or ``(3, H, W)``, channels kept): ``rot90`` by
    ``k % 4``, then a left-right flip if ``k >= 4``."""
    out = np.rot90(array_2d, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


def component_boxes(label_2d: np.ndarray, classes: Sequence[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """One prompt target per connected component of each class.

    Args:
        label_2d: ``(H, W)`` integer label map.
        classes: label values to use (background and ignore excluded by the caller).

    Returns:
        list of ``(class, box_xyxy (4,) float32 (inclusive pixel extents), mask (H, W) bool)``.
    """
    out = []
    for c in classes:
        comps, n = ndimage.label(label_2d == c)
        for i, sl in enumerate(ndimage.find_objects(comps), start=1):
            if sl is None:
                continue
            ys, xs = sl
            box = np.array([xs.start, ys.start, xs.stop - 1, ys.stop - 1], dtype=np.float32)
            out.append((int(c), box, comps == i))
    return out


def jitter_boxes(boxes_xyxy: np.ndarray, jitter: float, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Move each box side by an integer in ``[-jitter, jitter]``, keep it inside the image and non-inverted.

    Args:
        boxes_xyxy: ``(n, 4)`` boxes. hw: ``(H, W)`` of the image.

    Returns:
        ``(n, 4)`` float32 boxes.
    """
    b = np.asarray(boxes_xyxy, dtype=np.float32).copy()
    if jitter > 0:
        b += rng.integers(-int(jitter), int(jitter) + 1, size=b.shape)
    H, W = hw
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, W - 1)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, H - 1)
    b[:, 2] = np.maximum(b[:, 2], b[:, 0])
    b[:, 3] = np.maximum(b[:, 3], b[:, 1])
    return b


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                  eps: float = 1.0) -> torch.Tensor:
    """Mean binary cross-entropy plus mean soft Dice loss over n masks.

    Args:
        logits: ``(n, H, W)`` pre-sigmoid logits.
        targets: ``(n, H, W)`` float in {0, 1}.
        weights: ``(n, H, W)`` per-pixel weight in {0, 1} (0: ignored pixel), or None.
        eps: smoothing of the Dice ratio (in pixels).

    Returns:
        scalar tensor ``BCE + (1 - Dice)``, each averaged over the n masks.
    """
    w = torch.ones_like(targets) if weights is None else weights
    bce = F.binary_cross_entropy_with_logits(logits, targets, weight=w, reduction="none")
    bce = bce.flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1.0)
    p = torch.sigmoid(logits) * w
    t = targets * w
    dice = (2 * (p * t).flatten(1).sum(1) + eps) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + eps)
    return bce.mean() + (1 - dice).mean()


@dataclass
class _View:
    """One (augmented) training view: cached embedding, its transform, prompt targets."""

    embedding: torch.Tensor  # (1, C, h_e, w_e)
    info: TransformInfo
    boxes_xyxy: np.ndarray  # (m, 4)
    masks: np.ndarray  # (m, H, W) bool
    valid: np.ndarray | None  # (H, W) bool, False on ignore pixels


def _prepare_views(model: SamModel, cache: EmbeddingCache, labeled, classes, augment: bool, intensity,
                   ignore_label: int | None) -> list[_View]:
    views = []
    for idx, (image, label) in enumerate(labeled):
        image, label = np.asarray(image), np.asarray(label)
        if not is_teacher_image(image) or label.ndim != 2 or label.shape != image.shape[-2:]:
            raise SemisamError(f"labeled case {idx}: image {image.shape} and label {label.shape} must be on the same 2D "
                               "(H, W) grid (a grey (H, W) or RGB (3, H, W) image, an (H, W) label)")
        if not np.issubdtype(label.dtype, np.integer) and not np.array_equal(label, np.round(label)):
            raise SemisamError(f"labeled case {idx}: label map must hold integer class values")
        mapped = intensity.apply(image) if intensity is not None else image.astype(np.float32)
        label = label.astype(np.int64)
        for k in range(8 if augment else 1):
            img_k, lab_k = dihedral(mapped, k), dihedral(label, k)
            targets = component_boxes(lab_k, classes)
            if not targets:
                continue
            embedding, info = cache.get_or_compute(img_k, model)
            valid = None if ignore_label is None else lab_k != ignore_label
            views.append(_View(embedding, info, np.stack([t[1] for t in targets]), np.stack([t[2] for t in targets]),
                               valid))
    return views


def adapt_teacher(
    model: SamModel,
    cache: EmbeddingCache,
    labeled: Sequence[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[int],
    *,
    steps: int = 200,
    lr: float = 1e-4,
    batch_size: int = 8,
    train_prompt_encoder: bool = True,
    augment: bool = True,
    box_jitter: float = 3,
    seed: int = 0,
    progress: bool = True,
    intensity: IntensityRule | None = IntensityRule(),
    ignore_label: int | None = None,
) -> dict:
    """Fine-tune ``model``'s mask decoder (+ prompt encoder) in place on labeled 2D cases.

    Args:
        model: the teacher; its image encoder stays frozen.
        cache: embedding cache (shared with the teacher's predictor, so views are encoded once per run).
        labeled: ``(image_2d (H, W) raw float, label_2d (H, W) int)`` pairs of labeled cases (or accepted
            pseudo-labels). 3D cases are passed as their slices.
        classes: foreground label values to prompt (each connected component is one box prompt).
        steps: optimiser steps; batch_size: box prompts per step (drawn at random over all views).
        lr: Adam learning rate. train_prompt_encoder: also train the prompt encoder.
        augment: use the 8 flips/rotations of each case. box_jitter: max pixels each box side moves.
        seed: seeds prompt sampling and jitter. progress: show a tqdm bar.
        intensity: the same rule the teacher's predictor uses (None: images already in ``[0, 1]``).
        ignore_label: pixels with this label carry no loss (pseudo-labels with rejected pixels).

    Returns:
        stats dict: ``steps, seconds, steps_per_s, embed_seconds, n_cases, n_views, n_prompts,
        loss_first, loss_last`` (means over the first/last 10 steps), ``losses`` (per step), ``cache``.

    Raises:
        SemisamError: bad shapes, no foreground component of ``classes`` in any case, bad settings.
    """
    if steps < 0 or batch_size < 1 or not lr > 0:
        raise SemisamError(f"adaptation needs steps >= 0, batch_size >= 1, lr > 0; got {steps}, {batch_size}, {lr}")
    classes = [int(c) for c in classes]
    if not classes:
        raise SemisamError("adaptation needs at least one foreground class")
    t0 = time.perf_counter()
    views = _prepare_views(model, cache, labeled, classes, augment, intensity, ignore_label)
    embed_seconds = time.perf_counter() - t0
    if not views:
        raise SemisamError(f"the labeled cases contain no foreground of classes {classes}: nothing to adapt on")
    pool = [(v, j) for v, view in enumerate(views) for j in range(len(view.boxes_xyxy))]

    params = list(model.mask_decoder.parameters())
    pe_flags = [p.requires_grad for p in model.prompt_encoder.parameters()]
    for p in model.prompt_encoder.parameters():
        p.requires_grad_(train_prompt_encoder)
    if train_prompt_encoder:
        params += list(model.prompt_encoder.parameters())
    for p in model.mask_decoder.parameters():
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    dev = model.device
    losses: list[float] = []
    model.mask_decoder.train()
    model.prompt_encoder.train(train_prompt_encoder)
    t1 = time.perf_counter()
    try:
        for _ in tqdm(range(steps), disable=not progress, desc="adapting teacher", leave=False):
            picks = rng.choice(len(pool), size=batch_size, replace=len(pool) < batch_size)
            by_view: dict[int, list[int]] = {}
            for i in picks:
                v, j = pool[i]
                by_view.setdefault(v, []).append(j)
            optimiser.zero_grad(set_to_none=True)
            total = 0.0
            for v, js in by_view.items():
                view = views[v]
                boxes = jitter_boxes(view.boxes_xyxy[js], box_jitter, view.info.original_hw, rng)
                lowres, _ = decode_prompts(model, view.embedding.to(dev, torch.float32),
                                           boxes_in=boxes_to_input(boxes, view.info).to(dev))
                logits = postprocess_logits(lowres, view.info)[:, 0]
                targets = torch.from_numpy(view.masks[js]).to(dev, torch.float32)
                weights = None
                if view.valid is not None:
                    weights = torch.from_numpy(view.valid).to(dev, torch.float32).expand_as(targets)
                loss = bce_dice_loss(logits, targets, weights) * (len(js) / len(picks))
                loss.backward()
                total += float(loss.detach())
            optimiser.step()
            losses.append(total)
    finally:
        model.eval()
        for p, flag in zip(model.prompt_encoder.parameters(), pe_flags):
            p.requires_grad_(flag)
    train_seconds = time.perf_counter() - t1
    k = min(10, len(losses))
    return {
        "steps": steps,
        "seconds": round(embed_seconds + train_seconds, 3),
        "embed_seconds": round(embed_seconds, 3),
        "steps_per_s": round(steps / train_seconds, 3) if train_seconds > 0 else 0.0,
        "n_cases": len(labeled),
        "n_views": len(views),
        "n_prompts": len(pool),
        "loss_first": float(np.mean(losses[:k])) if k else float("nan"),
        "loss_last": float(np.mean(losses[-k:])) if k else float("nan"),
        "losses": losses,
        "cache": cache.stats(),
    }


# ----------------------------------------------------------------------------------------------------
# saving and reusing adapted weights


def adapted_state(model: SamModel) -> dict:
    """The adapted part of ``model``: prompt encoder + mask decoder state, with the base ``model_id``."""
    return {
        "format": ADAPTED_FORMAT,
        "base_model_id": model.spec.model_id,
        "teacher": model.spec.name,
        "prompt_encoder": {k: v.detach().cpu() for k, v in model.prompt_encoder.state_dict().items()},
        "mask_decoder": {k: v.detach().cpu() for k, v in model.mask_decoder.state_dict().items()},
    }


def save_adapted(model: SamModel, path: str | Path, fingerprint: str = "") -> Path:
    """Write the adapted prompt encoder + mask decoder to ``path`` atomically; return the path.

    Raises:
        SemisamError: the file cannot be written (a full disk: one line; nothing is left at ``path``).
    """
    path = Path(path)
    blob = adapted_state(model)
    blob["fingerprint"] = fingerprint
    failure = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(path) as tmp:
            torch.save(blob, tmp)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write (a full disk) as a RuntimeError
        failure = (f"{type(e).__name__}: {str(e).strip()[:120]}", getattr(e, "errno", None))
    if failure is not None:
        raise SemisamError(write_failure(path, *failure))
    return path


def read_adapted(path: str | Path) -> dict:
    """Read a file written by :func:`save_adapted` (``weights_only=True``).

    Raises:
        SemisamError: missing, unreadable, or not an adapted-teacher file.
    """
    path = Path(path)
    if not path.is_file():
        raise SemisamError(f"adapted teacher weights not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  any unreadable file is one user-facing line
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise SemisamError(f"cannot read adapted teacher weights {path} (truncated or not a PyTorch file?): {msg}") from None
    if not isinstance(blob, dict) or blob.get("format") != ADAPTED_FORMAT:
        raise SemisamError(f"{path} is not an adapted-teacher file written by semisam (format {ADAPTED_FORMAT})")
    return blob


def load_adapted(model: SamModel, path: str | Path) -> SamModel:
    """Load adapted prompt encoder + mask decoder weights into ``model`` (in place; returned).

    Raises:
        SemisamError: unreadable file, or weights adapted from a different base model (``model_id``).
    """
    blob = read_adapted(path)
    if blob["base_model_id"] != model.spec.model_id:
        raise SemisamError(
            f"{path} was adapted from teacher {blob['base_model_id']} but this teacher is {model.spec.model_id}; "
            "adapt again for this teacher"
        )
    try:
        model.prompt_encoder.load_state_dict(blob["prompt_encoder"], strict=True)
        model.mask_decoder.load_state_dict(blob["mask_decoder"], strict=True)
    except RuntimeError as e:
        raise SemisamError(f"{path} does not fit teacher '{model.spec.name}': {str(e).splitlines()[0][:160]}") from None
    return model.eval()


def adaptation_fingerprint(model: SamModel, labeled: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[int],
                           settings: dict) -> str:
    """sha256 over the base model, the cases' image and label bytes, the classes and the settings."""
    h = hashlib.sha256(f"{model.spec.model_id}|{sorted(int(c) for c in classes)}|".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for image, label in labeled:
        h.update(image_digest(np.asarray(image)).encode())
        h.update(image_digest(np.asarray(label)).encode())
    return h.hexdigest()


def adapt_or_load(model: SamModel, cache: EmbeddingCache, labeled: Sequence[tuple[np.ndarray, np.ndarray]],
                  classes: Sequence[int], path: str | Path, shared_dir: str | Path | None = None, **settings) -> dict:
    """Load ``path`` if it holds an adaptation of this model on the same data and settings; otherwise run
    :func:`adapt_teacher` (with ``settings``) and save it there. Returns the stats (``{"reused": True, ...}``
    when loaded).

    With ``shared_dir`` (a store shared by runs, e.g. beside a comparison's embedding cache), adaptations are
    also kept there under their fingerprint (``<shared_dir>/<fingerprint>.pt``): a run whose labeled cases,
    classes, settings, seed and base model match another run's copies its adaptation instead of adapting
    again. The fingerprint covers everything the adaptation depends on, so a copy is exactly what adapting
    would give (on the same device and threads)."""
    path = Path(path)
    fingerprint = adaptation_fingerprint(model, labeled, classes,
                                         {k: v for k, v in settings.items() if k != "progress"})
    shared = None if shared_dir is None else Path(shared_dir) / f"{fingerprint}.pt"
    # runs started together (a comparison's seeds of one draw) adapt once: the others wait, then copy
    with _exclusive(None if shared is None else shared.with_suffix(".lock")):
        return _adapt_or_load(model, cache, labeled, classes, path, shared, fingerprint, settings)


@contextlib.contextmanager
def _exclusive(lock_file: Path | None):
    """Hold an exclusive lock on ``lock_file`` (POSIX ``flock``) for the block; nothing where it cannot."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, at worst two runs adapt the same
        fcntl = None
    if lock_file is None or fcntl is None:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _adapt_or_load(model: SamModel, cache: EmbeddingCache, labeled, classes, path: Path, shared: Path | None,
                   fingerprint: str, settings: dict) -> dict:
    for candidate in (path, shared):
        if candidate is None or not candidate.is_file():
            continue
        try:
            blob = read_adapted(candidate)
        except SemisamError:
            blob = None
        if blob is not None and blob.get("fingerprint") == fingerprint and blob["base_model_id"] == model.spec.model_id:
            load_adapted(model, candidate)
            if candidate != path:
                save_adapted(model, path, fingerprint)
            return {"reused": True, "path": str(path), **({"shared": str(candidate)} if candidate != path else {})}
    stats = adapt_teacher(model, cache, labeled, classes, **settings)
    save_adapted(model, path, fingerprint)
    if shared is not None:
        save_adapted(model, shared, fingerprint)
    return {"reused": False, "path": str(path), **stats}

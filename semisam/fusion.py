"""Fusion: the student's labels + the teacher's per-object masks → one pseudo-label with an ignore label.

All modes share these rules (``accepted`` / ``rejected`` objects come from the filters):

- **Teacher label map** ``T``: each pixel covered by accepted teacher masks of exactly one class gets that
  class, pixels covered by none get 0 (background).
- **Class conflicts**: pixels covered by accepted teacher masks of two or more *different* classes get the
  ignore label (modes ``sam``, ``agree``, ``weighted``; ``student`` does not use the teacher's classes).
- **Rejected objects**: every pixel of a rejected object — its teacher mask and, when given, the student's
  object mask the prompt came from — gets the ignore label, in every mode. Rejection wins over acceptance
  where a rejected and an accepted object overlap.
- **Per-pixel filter**: pixels where ``pixel_reliable`` is False get the ignore label.
- **Gray zone**: with ``gray_zone`` g > 0, background pixels where the student's largest foreground
  probability is at least g get the ignore label (background the student is unsure of is not taught as
  background). Needs ``student_probs``.

Modes:

- ``sam``: ``T``; background wherever no accepted teacher mask is (including student foreground that had
  no object, e.g. below ``min_size``).
- ``student``: the student's labels; SAM only filters (rejected objects → ignore).
- ``agree``: the student's label where the student and ``T`` agree (same foreground class, or both
  background), ignore where they disagree. Pixels where neither sees foreground are background; student
  foreground that no accepted teacher mask covers is ignore. This mode never labels a pixel foreground
  where the student said background, nor gives it a class other than the student's.
- ``union``: the student's labels, with every accepted teacher mask added in its object's class (the
  teacher can grow an outline the student drew too tight, and add an object the student nearly missed, a
  candidate). Rejected objects are ignored.
- ``choose``: per object, the teacher's mask replaces the student's object where the object is accepted
  (SAM trusted); where it is rejected, the student's object is kept if ``keep_student`` says so for that
  object (the student is confident about it), else the object is ignored.
- ``weighted``: per class, ``p = w * q + (1 - w) * student_probs`` with ``w = fusion_weight`` and the
  teacher's class probabilities ``q``: ``q_k`` = max of the accepted class-k objects' teacher
  probabilities (``teacher_probs``, or their hard masks when not given), ``q_0 = 1 - max_k q_k``,
  then ``q`` normalised to sum to one. The label is ``argmax_k p`` (ties to the lower class) where
  ``max_k p >= min_confidence``, ignore elsewhere.

The accepted-pixel mask returned with the label is simply ``pseudo_label != ignore_label``. The function
works on any spatial shape (a 2D slice ``(Y, X)`` or a volume), as long as all inputs share it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from semisam.utils.errors import SemisamError
from semisam.utils.registry import suggest

FUSION_MODES = ("sam", "student", "agree", "union", "choose", "weighted")


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def teacher_label_map(
    teacher_masks: np.ndarray, object_class_ids: np.ndarray, object_accept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Accepted teacher masks → class map and class-conflict mask.

    Args:
        teacher_masks: ``(N, *S)`` bool.
        object_class_ids: ``(N,)`` int classes (>= 1).
        object_accept: ``(N,)`` bool.

    Returns:
        ``(T (*S) int64, conflict (*S) bool)``: ``T`` is the class where exactly one class covers the
        pixel, else 0; ``conflict`` marks pixels covered by two or more classes.
    """
    spatial = teacher_masks.shape[1:]
    label_map = np.zeros(spatial, dtype=np.int64)
    n_classes = np.zeros(spatial, dtype=np.int32)
    for c in np.unique(object_class_ids[object_accept]):
        cover = teacher_masks[object_accept & (object_class_ids == c)].any(axis=0)
        label_map[cover] = c
        n_classes += cover
    conflict = n_classes >= 2
    label_map[conflict] = 0
    return label_map, conflict


def fuse(
    student_labels: Any,
    teacher_masks: Any,
    object_class_ids: Any,
    object_accept: Any,
    *,
    mode: str = "agree",
    ignore_label: int,
    fusion_weight: float = 0.5,
    student_probs: Any = None,
    teacher_probs: Any = None,
    student_object_masks: Any = None,
    pixel_reliable: Any = None,
    min_confidence: float = 0.5,
    keep_student: Any = None,
    gray_zone: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make the pseudo-label of one slice (or volume) by the rules in the module docstring.

    Args:
        student_labels: ``(*S)`` int, the student's hard labels (:func:`semisam.prompts.student_hard_labels`).
        teacher_masks: ``(N, *S)`` bool, the teacher's mask per object (N may be 0).
        object_class_ids: ``(N,)`` int, each object's class (>= 1).
        object_accept: ``(N,)`` bool, from :func:`semisam.filters.object_accept`.
        mode: ``"sam"``, ``"student"``, ``"agree"`` or ``"weighted"``.
        ignore_label: the dataset's ignore label (greater than every class).
        fusion_weight: teacher weight ``w`` in ``[0, 1]`` for ``weighted``.
        student_probs: ``(K, *S)`` probabilities; required for ``weighted``.
        teacher_probs: ``(N, *S)`` teacher foreground probabilities (sigmoid of the logits), for
            ``weighted``; the hard masks are used when ``None``.
        student_object_masks: ``(N, *S)`` bool, the student's object behind each prompt
            (``PromptBatch.object_masks``); its pixels are ignored too when the object is rejected.
        pixel_reliable: ``(*S)`` bool per-pixel filter (:func:`semisam.filters.pixel_accept`).
        min_confidence: minimum fused probability for ``weighted``.
        keep_student: ``(N,)`` bool, for ``choose``: keep the student's object where the object is rejected
            (default: never, the object is ignored).
        gray_zone: background pixels with student foreground probability >= this are ignored (0: off).

    Returns:
        ``(pseudo_label (*S), accept_pixel_mask (*S) bool)``; the label is uint8 when
        ``ignore_label <= 255``, else int32.

    Raises:
        SemisamError: unknown mode, shape mismatch, missing probabilities for ``weighted`` or the gray zone,
            an ignore
            label that collides with a class, ``fusion_weight`` outside ``[0, 1]``.
    """
    if mode not in FUSION_MODES:
        raise SemisamError(
            f"unknown fusion mode '{mode}'{suggest(mode, FUSION_MODES)}; choose one of: {', '.join(FUSION_MODES)}"
        )
    s_lab = _np(student_labels).astype(np.int64)
    spatial = s_lab.shape
    t_masks = _np(teacher_masks).astype(bool)
    if t_masks.ndim == len(spatial) and t_masks.size == 0:
        t_masks = t_masks.reshape((0, *spatial))
    class_ids = _np(object_class_ids).astype(np.int64).reshape(-1)
    accept = _np(object_accept).astype(bool).reshape(-1)
    n = class_ids.shape[0]
    if t_masks.shape != (n, *spatial) or accept.shape != (n,):
        raise SemisamError(
            f"fusion inputs disagree: student labels {spatial}, teacher masks {t_masks.shape}, "
            f"{n} class ids, {accept.shape[0]} accept flags"
        )
    max_class = max(int(s_lab.max(initial=0)), int(class_ids.max(initial=0)))
    if student_probs is not None:
        max_class = max(max_class, _np(student_probs).shape[0] - 1)
    if ignore_label <= max_class:
        raise SemisamError(f"ignore label {ignore_label} collides with class {max_class}; use max class + 1")

    keep = np.zeros(n, dtype=bool)
    if mode == "choose" and keep_student is not None:
        keep = _np(keep_student).astype(bool).reshape(-1)
        if keep.shape != (n,):
            raise SemisamError(f"keep_student has {keep.shape[0]} flags for {n} objects")
    dropped = ~accept & ~keep  # rejected objects whose pixels are ignored
    rejected = t_masks[dropped].any(axis=0) if n else np.zeros(spatial, dtype=bool)
    s_obj = None
    if student_object_masks is not None:
        s_obj = _np(student_object_masks).astype(bool)
        if s_obj.shape != t_masks.shape:
            raise SemisamError(f"student object masks {s_obj.shape} do not match teacher masks {t_masks.shape}")
        if n:
            rejected |= s_obj[dropped].any(axis=0)
    elif mode == "choose":
        raise SemisamError("fusion 'choose' needs the student's object masks behind the prompts")
    t_map, conflict = teacher_label_map(t_masks, class_ids, accept)

    if mode == "sam":
        out = t_map
    elif mode == "student":
        out = s_lab.copy()
        conflict = np.zeros(spatial, dtype=bool)
    elif mode == "agree":
        out = np.where(s_lab == t_map, s_lab, ignore_label)
    elif mode == "union":
        out = np.where(t_map > 0, t_map, s_lab)
    elif mode == "choose":
        replaced = s_obj[accept].any(axis=0) if n else np.zeros(spatial, dtype=bool)
        out = np.where(t_map > 0, t_map, np.where(replaced, 0, s_lab))
        if n and keep.any():  # the student's confident objects whose teacher mask was rejected: theirs
            for c in np.unique(class_ids[keep & ~accept]):
                out = np.where(s_obj[keep & ~accept & (class_ids == c)].any(axis=0), c, out)
    else:
        out = _weighted(s_lab, t_masks, class_ids, accept, student_probs, teacher_probs,
                        fusion_weight, min_confidence, ignore_label)

    out = np.where(conflict | rejected, ignore_label, out)
    if gray_zone > 0:
        if student_probs is None:
            raise SemisamError("the gray zone (filters.gray_zone > 0) needs the student's probabilities")
        p_s = _np(student_probs)
        if p_s.shape[1:] != spatial:
            raise SemisamError(f"student probabilities {p_s.shape} do not match the labels {spatial}")
        unsure = p_s[1:].max(axis=0) >= gray_zone
        out = np.where((out == 0) & unsure, ignore_label, out)
    if pixel_reliable is not None:
        reliable = _np(pixel_reliable).astype(bool)
        if reliable.shape != spatial:
            raise SemisamError(f"pixel_reliable {reliable.shape} does not match the labels {spatial}")
        out = np.where(reliable, out, ignore_label)
    out = out.astype(np.uint8 if ignore_label <= 255 else np.int32)
    return out, out != ignore_label


def _weighted(
    s_lab: np.ndarray,
    t_masks: np.ndarray,
    class_ids: np.ndarray,
    accept: np.ndarray,
    student_probs: Any,
    teacher_probs: Any,
    w: float,
    min_confidence: float,
    ignore_label: int,
) -> np.ndarray:
    if student_probs is None:
        raise SemisamError("fusion 'weighted' needs the student's probabilities")
    if not 0.0 <= w <= 1.0:
        raise SemisamError(f"fusion_weight must lie in [0, 1], got {w}")
    p_s = _np(student_probs).astype(np.float32)
    if p_s.shape[1:] != s_lab.shape:
        raise SemisamError(f"student probabilities {p_s.shape} do not match the labels {s_lab.shape}")
    t_probs = t_masks.astype(np.float32) if teacher_probs is None else _np(teacher_probs).astype(np.float32)
    if t_probs.shape != t_masks.shape:
        raise SemisamError(f"teacher probabilities {t_probs.shape} do not match teacher masks {t_masks.shape}")
    q = np.zeros_like(p_s)
    for c in range(1, p_s.shape[0]):
        sel = accept & (class_ids == c)
        if sel.any():
            q[c] = t_probs[sel].max(axis=0)
    q[0] = 1.0 - q[1:].max(axis=0) if p_s.shape[0] > 1 else 1.0
    q /= np.maximum(q.sum(axis=0, keepdims=True), 1e-12)
    p = w * q + (1.0 - w) * p_s
    label = np.argmax(p, axis=0)
    return np.where(p.max(axis=0) >= min_confidence, label, ignore_label)

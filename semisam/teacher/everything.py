"""SamDSK's own prompting: SAM's automatic "everything" masks, matched one-to-one to the student's objects.

SAM is prompted with a regular grid of single positive points (``segment_anything``'s
``build_point_grid``) on the cached embedding; each point keeps the best of SAM's three candidate masks by
predicted IoU, and masks below ``min_iou`` predicted IoU or ``min_stability`` stability are dropped (the
automatic mask generator's filters; no box NMS: the one-to-one matching below already keeps at most one
segment per object). The student's objects and SAM's segments are then matched by the Hungarian algorithm
on their IoU (``scipy.optimize.linear_sum_assignment``); a matched segment with IoU >= ``match_iou``
becomes the teacher's mask of its object, an object without one gets an empty mask (zero predicted IoU and
stability, so the filters reject it). The grid prompts come from the image alone, never from a label.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from semisam.teacher.predictor import SamTeacher, TeacherPrediction
from semisam.utils.errors import SemisamError


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask of ``a`` ``(N, ...)`` with every mask of ``b`` ``(M, ...)``: ``(N, M)`` float64."""
    a = np.asarray(a, dtype=bool).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b, dtype=bool).reshape(len(b), -1).astype(np.float32)
    if a.shape[1] != b.shape[1] and len(a) and len(b):
        raise SemisamError(f"masks of different shapes cannot be matched: {a.shape[1]} vs {b.shape[1]} pixels")
    inter = a @ b.T
    union = a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


def match_segments(objects: np.ndarray, segments: np.ndarray, min_iou: float) -> np.ndarray:
    """One-to-one matching of objects to segments maximising the total IoU (Hungarian).

    Args:
        objects: ``(N, Y, X)`` bool, the student's objects.
        segments: ``(M, Y, X)`` bool, SAM's segments.
        min_iou: a pair with a lower IoU is not a match.

    Returns:
        ``(N,)`` int64: the matched segment index per object, -1 where none.
    """
    out = np.full(len(objects), -1, dtype=np.int64)
    if len(objects) == 0 or len(segments) == 0:
        return out
    iou = mask_iou_matrix(objects, segments)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    ok = iou[rows, cols] >= min_iou
    out[rows[ok]] = cols[ok]
    return out


def everything_segments(teacher: SamTeacher, image_2d: np.ndarray, *, points_per_side: int = 16,
                        min_iou: float = 0.5, min_stability: float = 0.8) -> TeacherPrediction:
    """SAM's automatic masks of one image: a ``points_per_side``² grid of positive points, best of three
    masks per point, filtered by predicted IoU and stability."""
    if points_per_side < 1:
        raise SemisamError(f"everything mode needs points_per_side >= 1, got {points_per_side}")
    from segment_anything.utils.amg import build_point_grid  # compat is active once a teacher is built

    h, w = np.asarray(image_2d).shape[-2:]
    grid = build_point_grid(int(points_per_side)) * np.array([w, h], dtype=np.float64)  # (x, y) pixel centres
    grid = np.clip(grid - 0.5, 0, [w - 1, h - 1]).astype(np.float32)
    pred = teacher.predict(image_2d, points_xy=grid[:, None, :], point_labels=np.ones((len(grid), 1), np.int64),
                           multimask=True)
    keep = (pred.iou_pred >= min_iou) & (pred.stability >= min_stability) & pred.masks.reshape(len(pred), -1).any(1)
    return TeacherPrediction(pred.masks[keep], pred.logits[keep], pred.iou_pred[keep], pred.stability[keep],
                             pred.lowres_logits[keep])


def everything_for_objects(teacher: SamTeacher, image_2d: np.ndarray, object_masks: np.ndarray, *,
                           points_per_side: int = 16, min_iou: float = 0.5, min_stability: float = 0.8,
                           match_iou: float = 0.3) -> TeacherPrediction:
    """The teacher's answer per student object from SAM's everything masks (see the module docstring):
    ``N`` entries aligned with ``object_masks``; unmatched objects get an empty mask, logits of -20 and
    zero predicted IoU and stability."""
    n = len(object_masks)
    segs = everything_segments(teacher, image_2d, points_per_side=points_per_side, min_iou=min_iou,
                               min_stability=min_stability)
    match = match_segments(object_masks, segs.masks, match_iou)
    shape = np.asarray(object_masks).shape[1:]
    lowres_shape = segs.lowres_logits.shape[1:] if len(segs) else (1, teacher.model.spec.lowres_size,
                                                                    teacher.model.spec.lowres_size)
    masks = np.zeros((n, *shape), bool)
    logits = np.full((n, *shape), -20.0, np.float32)
    lowres = np.full((n, *lowres_shape), -20.0, np.float32)
    iou = np.zeros(n, np.float32)
    stab = np.zeros(n, np.float32)
    hit = match >= 0
    if hit.any():
        j = match[hit]
        masks[hit], logits[hit], lowres[hit] = segs.masks[j], segs.logits[j], segs.lowres_logits[j]
        iou[hit], stab[hit] = segs.iou_pred[j], segs.stability[j]
    return TeacherPrediction(masks, logits, iou, stab, lowres)

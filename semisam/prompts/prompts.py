"""Objects of the student's prediction → SAM prompts (boxes, points, low-res mask), pure numpy.

Conventions (SAM's): points are ``(x, y)`` pixel coordinates (x = column, y = row) in the ORIGINAL image
frame of the slice; boxes are ``(x0, y0, x1, y1)`` in the same frame with inclusive pixel indices (the
convention of ``segment_anything.utils.amg.batched_mask_to_box``); the predictor rescales both to its
input size. Point labels: 1 positive, 0 negative, -1 padding (SAM's "not a point", ignored by the prompt
encoder) when an object has fewer candidate pixels than points asked for.

Mask prompts are produced in SAM's LOW-RES INPUT FRAME, not in the image frame: the slice is resized so
that its longest side is ``mask_size`` (256, rounded as ``ResizeLongestSide.get_preprocess_shape``), and
padded at the bottom/right to ``mask_size x mask_size`` — the frame in which both Meta SAM (1024 input /
4) and LiteMedSAM (256 input, 256 low-res) read ``mask_input``, the same frame as the teacher's
``lowres_logits`` (``semisam.teacher.preprocess.resized_shape`` / ``postprocess_logits``). Values are logits: ``log(p / (1 - p))``
with ``p`` clipped to ``[eps, 1 - eps]`` (``eps=1e-4``, so logits lie in about ``[-9.2, 9.2]``; 0 is
``p = 0.5``, SAM's mask threshold); the padding is ``logit(eps)``. The predictor must NOT resize them again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from semisam.prompts.objects import ObjectMask, bounding_box
from semisam.utils.errors import SemisamError

POSITIVE, NEGATIVE, PADDING = 1, 0, -1


@dataclass
class PromptBatch:
    """Prompts for the N objects of one 2D slice (inputs of ``SamTeacher.predict``).

    Attributes:
        class_ids: ``(N,)`` int64, the student's class of each object.
        boxes_xyxy: ``(N, 4)`` float32 or ``None`` (no box prompts).
        points_xy: ``(N, P, 2)`` float32 or ``None`` (no point prompts); positives first, then negatives.
        point_labels: ``(N, P)`` int64 (1 positive, 0 negative, -1 padding) or ``None``.
        mask_inputs: ``(N, 1, 256, 256)`` float32 logits in SAM's low-res input frame, or ``None``.
        object_masks: ``(N, Y, X)`` bool, the student's object each prompt came from.
    """

    class_ids: np.ndarray
    boxes_xyxy: np.ndarray | None
    points_xy: np.ndarray | None
    point_labels: np.ndarray | None
    mask_inputs: np.ndarray | None
    object_masks: np.ndarray

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """The caller's generator, or one seeded with the caller's int; None is refused: every random draw
    derives from the run's seed (no generator seeded from the OS)."""
    if rng is None:
        raise SemisamError("box jitter is random: pass rng= (a numpy Generator or an int seed)")
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _window(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The mask's bounding box enlarged by ``pad`` pixels, clipped to the image (distance transforms on
    this crop equal those on the whole image, up to distance ``pad``)."""
    x0, y0, x1, y1 = bounding_box(mask)
    h, w = mask.shape
    return slice(max(y0 - pad, 0), min(y1 + pad + 1, h)), slice(max(x0 - pad, 0), min(x1 + pad + 1, w))


def box_from_mask(
    mask: np.ndarray,
    *,
    margin: int = 0,
    jitter: int = 0,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Box around a mask, enlarged by ``margin``, optionally jittered, clipped to the image.

    Args:
        mask: ``(Y, X)`` bool, non-empty.
        margin: pixels added on every side.
        jitter: each coordinate moves by an integer drawn uniformly from ``[-jitter, jitter]``
            (after the margin); the box is re-ordered so that ``x0 <= x1`` and ``y0 <= y1``.
        rng: numpy Generator or seed; required when ``jitter > 0`` (unseeded jitter is refused).

    Returns:
        ``(4,)`` float32 ``(x0, y0, x1, y1)``, inclusive pixel indices within ``[0, X-1] x [0, Y-1]``.
    """
    mask = np.asarray(mask, dtype=bool)
    x0, y0, x1, y1 = bounding_box(mask)
    box = np.array([x0 - margin, y0 - margin, x1 + margin, y1 + margin], dtype=np.int64)
    if jitter > 0:
        box += _rng(rng).integers(-int(jitter), int(jitter) + 1, size=4)
    h, w = mask.shape
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h - 1)
    x0, x1 = sorted(box[[0, 2]])
    y0, y1 = sorted(box[[1, 3]])
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def deep_points(mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` points deep inside a mask, spread out.

    The first point is the maximum of the Euclidean distance transform (distance to the nearest
    non-object pixel; the image edge counts as outside): the pixel farthest from the object's border.
    Each next point maximises ``min(depth, distance to the points already chosen)`` — deep, and away from
    the others. Ties go to the pixel farthest from the points already chosen, then to the one nearest the
    object's centroid (so an elongated object's first point sits mid-ridge); the result is deterministic.

    Args:
        mask: ``(Y, X)`` bool.
        n: number of points.

    Returns:
        ``(m, 2)`` float32 ``(x, y)`` with ``m = min(n, mask.sum())``.
    """
    mask = np.asarray(mask, dtype=bool)
    if n <= 0 or not mask.any():
        return np.zeros((0, 2), dtype=np.float32)
    win = _window(mask, 0)
    depth = ndimage.distance_transform_edt(np.pad(mask[win], 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(mask[win])
    d = depth[ys, xs]
    ys, xs = ys + win[0].start, xs + win[1].start
    nearest = np.full(d.shape, np.inf)
    to_centre = np.hypot(xs - xs.mean(), ys - ys.mean())
    chosen = []
    for _ in range(min(n, ys.size)):
        score = np.minimum(d, nearest)
        # best score; ties: farthest from the chosen points, then nearest the centroid, then raster order
        i = int(np.lexsort((to_centre, -nearest, -score))[0])
        chosen.append((xs[i], ys[i]))
        nearest = np.minimum(nearest, np.hypot(xs - xs[i], ys - ys[i]))
    return np.asarray(chosen, dtype=np.float32)


def ring_points(mask: np.ndarray, n: int, *, ring: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``n`` points in a ring just outside a mask, spread around it.

    Candidates are pixels at Euclidean distance ``(0, ring]`` from the mask, inside the image and not in
    ``exclude`` (the other objects). The i-th point is the candidate whose direction from the mask's
    centroid is closest to the angle ``2*pi*i/n`` (0 = +x), ties to the candidate nearest the mask;
    each candidate is used once.

    Args:
        mask: ``(Y, X)`` bool.
        n: number of points.
        ring: ring width in pixels (>= 1).
        exclude: ``(Y, X)`` bool pixels never used (e.g. the union of all objects).

    Returns:
        ``(m, 2)`` float32 ``(x, y)``, ``m <= n`` (fewer if the ring has fewer free pixels).
    """
    mask = np.asarray(mask, dtype=bool)
    if n <= 0 or not mask.any():
        return np.zeros((0, 2), dtype=np.float32)
    ring = max(int(ring), 1)
    win = _window(mask, ring + 1)
    dist_out = ndimage.distance_transform_edt(~mask[win])
    cand = (dist_out > 0) & (dist_out <= ring)
    if exclude is not None:
        cand &= ~np.asarray(exclude, dtype=bool)[win]
    ys, xs = np.nonzero(cand)
    if ys.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    dist = dist_out[ys, xs]
    ys, xs = ys + win[0].start, xs + win[1].start
    my, mx = (c.mean() for c in np.nonzero(mask))
    angles = np.arctan2(ys - my, xs - mx)
    free = np.ones(ys.size, dtype=bool)
    chosen = []
    for i in range(min(n, ys.size)):
        target = 2 * np.pi * i / n
        diff = np.abs(np.angle(np.exp(1j * (angles - target))))
        diff = np.where(free, diff, np.inf)
        order = np.lexsort((dist, diff))  # primary: angle difference, then distance to the mask
        j = int(order[0])
        free[j] = False
        chosen.append((xs[j], ys[j]))
    return np.asarray(chosen, dtype=np.float32)


def lowres_mask_logits(prob: np.ndarray, *, mask_size: int = 256, eps: float = 1e-4) -> np.ndarray:
    """A probability map in the image frame → SAM low-res mask-input logits (see module docstring).

    Args:
        prob: ``(Y, X)`` probabilities in ``[0, 1]``.
        mask_size: SAM's low-res mask side (256).
        eps: probabilities are clipped to ``[eps, 1 - eps]`` before the logit.

    Returns:
        ``(mask_size, mask_size)`` float32 logits; the image occupies the top-left
        ``(round(Y*s), round(X*s))`` block with ``s = mask_size / max(Y, X)``; the rest is ``logit(eps)``.
    """
    prob = np.asarray(prob, dtype=np.float32)
    h, w = prob.shape
    scale = mask_size / max(h, w)
    new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    resized = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(prob))[None, None], size=(new_h, new_w),
        mode="bilinear", align_corners=False,
    )[0, 0].numpy()
    out = np.full((mask_size, mask_size), eps, dtype=np.float32)
    out[:new_h, :new_w] = resized
    out = np.clip(out, eps, 1 - eps)
    return np.log(out / (1 - out)).astype(np.float32)


def make_prompts(
    objects: Sequence[ObjectMask],
    image_shape: Sequence[int],
    *,
    box: bool = True,
    box_margin: int = 2,
    box_jitter: int = 0,
    positive_points: int = 0,
    negative_points: int = 0,
    mask_prompt: bool = False,
    student_probs_slice: np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
    mask_size: int = 256,
) -> PromptBatch:
    """Build one prompt per object of one slice.

    Args:
        objects: from :func:`semisam.prompts.extract_objects` on the same slice.
        image_shape: ``(Y, X)`` of the slice.
        box: give a box prompt (:func:`box_from_mask` with ``box_margin`` / ``box_jitter``).
        box_margin: pixels added around the tight box; also the width of the negative-point ring and of
            the neighbourhood kept in the mask prompt (at least 1).
        box_jitter: random shift of each box coordinate, in pixels (0 = none).
        positive_points: points per object deep inside it (:func:`deep_points`).
        negative_points: points per object just outside it and outside every object
            (:func:`ring_points`).
        mask_prompt: give the student's probability of the object as a low-res logit mask
            (:func:`lowres_mask_logits`): the probability of the object's class, kept within
            ``box_margin`` pixels of the object and zeroed on the other objects.
        student_probs_slice: ``(K, Y, X)`` probabilities; required when ``mask_prompt``.
        rng: numpy Generator or seed, for the jitter; required when ``box_jitter > 0``.
        mask_size: SAM's low-res mask side.

    Returns:
        :class:`PromptBatch` with N = ``len(objects)`` (possibly 0).

    Raises:
        SemisamError: no prompt type selected; ``mask_prompt`` without probabilities; shape mismatch.
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 2:
        raise SemisamError(f"make_prompts takes the (Y, X) shape of one slice, got {shape}")
    n_points = max(int(positive_points), 0) + max(int(negative_points), 0)
    if not box and n_points == 0 and not mask_prompt:
        raise SemisamError("no prompt selected: enable box, positive/negative points or mask_prompt")
    if mask_prompt:
        if student_probs_slice is None:
            raise SemisamError("mask_prompt needs the student's probabilities of the slice")
        if tuple(np.shape(student_probs_slice)[1:]) != shape:
            raise SemisamError(
                f"student probabilities {np.shape(student_probs_slice)} do not match the slice shape {shape}"
            )
    for o in objects:
        if o.mask.shape != shape:
            raise SemisamError(f"object mask {o.mask.shape} does not match the slice shape {shape}")
    gen = _rng(rng) if box_jitter > 0 else None
    n = len(objects)
    masks = np.stack([o.mask for o in objects]) if n else np.zeros((0, *shape), dtype=bool)
    union = masks.any(axis=0)
    ring = max(int(box_margin), 1)

    boxes = np.stack([box_from_mask(o.mask, margin=box_margin, jitter=box_jitter, rng=gen) for o in objects]) \
        if box and n else (np.zeros((0, 4), np.float32) if box else None)

    points = labels = None
    if n_points:
        points = np.zeros((n, n_points, 2), dtype=np.float32)
        labels = np.full((n, n_points), PADDING, dtype=np.int64)
        for i, o in enumerate(objects):
            pos = deep_points(o.mask, int(positive_points))
            neg = ring_points(o.mask, int(negative_points), ring=ring, exclude=union)
            pts = np.concatenate([pos, neg])
            points[i, : len(pts)] = pts
            labels[i, : len(pos)] = POSITIVE
            labels[i, len(pos) : len(pts)] = NEGATIVE

    mask_inputs = None
    if mask_prompt:
        mask_inputs = np.zeros((n, 1, mask_size, mask_size), dtype=np.float32)
        probs = np.asarray(student_probs_slice, dtype=np.float32)
        for i, o in enumerate(objects):
            win = _window(o.mask, ring + 1)
            keep = np.zeros(shape, dtype=bool)
            keep[win] = (ndimage.distance_transform_edt(~o.mask[win]) <= ring) & ~(union[win] & ~o.mask[win])
            mask_inputs[i, 0] = lowres_mask_logits(np.where(keep, probs[o.class_id], 0.0), mask_size=mask_size)

    return PromptBatch(
        class_ids=np.array([o.class_id for o in objects], dtype=np.int64),
        boxes_xyxy=boxes,
        points_xy=points,
        point_labels=labels,
        mask_inputs=mask_inputs,
        object_masks=masks,
    )


def second_pass_prompts(
    first: PromptBatch,
    first_masks: np.ndarray,
    *,
    positive_points: int = 1,
    negative_points: int = 1,
    lowres_logits: np.ndarray | None = None,
) -> PromptBatch:
    """Prompts of a second teacher pass per object (box, then points, then the first pass's logits).

    Object i keeps its first-pass box and gets ``positive_points`` points deep inside its first-pass mask
    (:func:`deep_points`; the student's object when that mask is empty) and up to ``negative_points``
    negative points on its *neighbours*: the deepest point of every other object's first-pass mask that
    reaches into object i's box, nearest first. Missing points are padding (-1). With ``lowres_logits`` the
    first pass's low-res decoder logits are passed back as ``mask_inputs`` (SAM's own iterative refinement;
    they are already in the low-res input frame, see the module docstring).

    Args:
        first: the first pass's prompts (boxes required).
        first_masks: ``(N, Y, X)`` bool, the first pass's masks.
        positive_points, negative_points: per object, >= 0; at least one of them > 0.
        lowres_logits: ``(N, 1, L, L)`` first-pass low-res logits, or None.

    Returns:
        :class:`PromptBatch` with the same N, class ids and object masks as ``first``.

    Raises:
        SemisamError: no box in ``first``, no point asked for, shapes that disagree.
    """
    n = len(first)
    if first.boxes_xyxy is None:
        raise SemisamError("the second teacher pass refines box prompts: enable prompts.box")
    if positive_points + negative_points <= 0:
        raise SemisamError("the second teacher pass needs positive_points or negative_points > 0")
    first_masks = np.asarray(first_masks, dtype=bool)
    if first_masks.shape != first.object_masks.shape:
        raise SemisamError(f"first-pass masks {first_masks.shape} do not match the objects {first.object_masks.shape}")
    p = int(positive_points) + int(negative_points)
    points = np.zeros((n, p, 2), dtype=np.float32)
    labels = np.full((n, p), PADDING, dtype=np.int64)
    sources = [m if m.any() else o for m, o in zip(first_masks, first.object_masks)]
    centres = [deep_points(s, 1) for s in sources]
    for i in range(n):
        pos = deep_points(sources[i], int(positive_points))
        x0, y0, x1, y1 = (int(v) for v in first.boxes_xyxy[i])
        neigh = []
        for j in range(n):
            if j == i or not len(centres[j]) or not sources[j][y0:y1 + 1, x0:x1 + 1].any():
                continue
            cx, cy = centres[j][0]
            if sources[i][int(cy), int(cx)]:
                continue  # the neighbour's centre lies inside this object: not a background point
            neigh.append((float(np.hypot(*(centres[j][0] - pos[0]))) if len(pos) else 0.0, centres[j][0]))
        neg = [pt for _, pt in sorted(neigh, key=lambda t: t[0])][: int(negative_points)]
        pts = np.concatenate([pos, np.asarray(neg, dtype=np.float32).reshape(-1, 2)])
        points[i, : len(pts)] = pts
        labels[i, : len(pos)] = POSITIVE
        labels[i, len(pos) : len(pts)] = NEGATIVE
    mask_inputs = None
    if lowres_logits is not None:
        mask_inputs = np.asarray(lowres_logits, dtype=np.float32)
        if mask_inputs.shape[0] != n or mask_inputs.ndim != 4:
            raise SemisamError(f"first-pass logits {mask_inputs.shape} do not match {n} objects")
    return PromptBatch(class_ids=first.class_ids, boxes_xyxy=first.boxes_xyxy, points_xy=points, point_labels=labels,
                       mask_inputs=mask_inputs, object_masks=first.object_masks)

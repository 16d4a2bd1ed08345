"""Student probabilities → validated arrays, hard labels and per-object masks (pure functions).

Inputs are the student's probabilities only (never a label). Arrays follow nnU-Net's order:
``student_probs`` is ``(K, Z, Y, X)`` with K classes *including* background (class 0); 2D cases have
``Z == 1``. Object extraction works on one 2D slice ``(K, Y, X)``; :func:`iter_slices` /
:func:`stack_slices` cut a volume into slices along a configurable axis and put per-slice results back.

Multi-class overlap rule (``overlap="argmax"``, the only rule so far): every pixel gets the class with the
highest probability, background included; ties go to the lower class index (so a tie with background is
background). A foreground class then keeps the pixel only if its probability is also ``>= threshold``;
otherwise the pixel is background. Hence each pixel belongs to at most one class, and objects of
different classes never overlap. With two classes and ``threshold=0.5`` this is the usual ``p >= 0.5``
(except exact ties, which are background).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from semisam.utils.errors import SemisamError
from semisam.utils.registry import suggest

OVERLAP_RULES = ("argmax",)

# 8-connectivity in 2D: diagonal neighbours belong to the same object.
_FULL_CONNECTIVITY_2D = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class ObjectMask:
    """One object found in the student's prediction of one 2D slice.

    Attributes:
        class_id: foreground class (>= 1) in the student's label space.
        mask: ``(Y, X)`` bool, the object's pixels.
        prob_mean: mean student probability of ``class_id`` over the object's pixels.
        area: number of pixels in ``mask``.
        bbox_xyxy: tight box ``(x0, y0, x1, y1)``, inclusive pixel indices (x = column, y = row).
        candidate: True for an object the student *nearly* found (a component above a lower threshold with
            no pixel above the student's threshold, :func:`extract_candidates`); its pixels are background in
            the student's hard labels.
    """

    class_id: int
    mask: np.ndarray
    prob_mean: float
    area: int
    bbox_xyxy: tuple[int, int, int, int]
    candidate: bool = False


def validate_probs(
    student_probs: np.ndarray,
    image_shape: Sequence[int] | None = None,
    *,
    atol: float = 1e-3,
) -> np.ndarray:
    """Check the student's probabilities and return them as a float32 array.

    Args:
        student_probs: ``(K, Z, Y, X)`` (or ``(K, Y, X)`` for one slice) class probabilities, K >= 2,
            background first.
        image_shape: the image's spatial shape ``(Z, Y, X)`` (resp. ``(Y, X)``); a shape with a leading
            channel axis ``(C, Z, Y, X)`` is accepted too, only its trailing spatial dims are compared.
            ``None`` skips the comparison.
        atol: tolerance on ``|sum_k p_k - 1|`` per pixel.

    Returns:
        ``student_probs`` as a float32 numpy array (same shape).

    Raises:
        SemisamError: not 3D/4D, fewer than 2 classes, NaN/Inf values, values outside [0, 1], shape
            mismatch with the image, or classes that do not sum to one (e.g. logits were passed).
    """
    probs = np.asarray(student_probs)
    if probs.ndim not in (3, 4):
        raise SemisamError(
            f"student probabilities must be (K, Z, Y, X) or (K, Y, X), got shape {probs.shape}"
        )
    if probs.shape[0] < 2:
        raise SemisamError(
            f"student probabilities need >= 2 classes (background first), got K={probs.shape[0]}"
        )
    probs = probs.astype(np.float32, copy=False)
    if image_shape is not None:
        spatial = tuple(int(s) for s in image_shape)
        n = probs.ndim - 1
        if len(spatial) < n or tuple(spatial[-n:]) != probs.shape[1:]:
            raise SemisamError(
                f"student probabilities have spatial shape {probs.shape[1:]} but the image has shape "
                f"{tuple(spatial)}; predict probabilities on the same image grid"
            )
    finite = np.isfinite(probs)
    if not finite.all():
        raise SemisamError(
            f"student probabilities contain {int((~finite).sum())} NaN/Inf values; "
            "check the student's prediction"
        )
    if probs.min() < -atol or probs.max() > 1 + atol:
        raise SemisamError(
            f"student probabilities lie in [{probs.min():.3g}, {probs.max():.3g}], not [0, 1]; "
            "pass softmax probabilities, not logits"
        )
    err = np.abs(probs.sum(axis=0, dtype=np.float64) - 1.0)
    if err.max() > atol:
        raise SemisamError(
            f"student probabilities do not sum to one over classes (max error {err.max():.3g} > "
            f"{atol:g} at {int((err > atol).sum())} voxels); pass softmax probabilities incl. background"
        )
    return probs


def student_hard_labels(
    student_probs: np.ndarray, *, threshold: float = 0.5, overlap: str = "argmax"
) -> np.ndarray:
    """Hard labels from probabilities with the module's overlap rule (see module docstring).

    Args:
        student_probs: ``(K, ...)`` probabilities, background first (already validated).
        threshold: a foreground class keeps a pixel only if its probability is ``>= threshold``.
        overlap: the multi-class overlap rule; only ``"argmax"``.

    Returns:
        ``(...)`` int64 labels in ``[0, K-1]``; each pixel has exactly one label.

    Raises:
        SemisamError: unknown overlap rule.
    """
    if overlap not in OVERLAP_RULES:
        raise SemisamError(
            f"unknown overlap rule '{overlap}'{suggest(overlap, OVERLAP_RULES)}; "
            f"choose one of: {', '.join(OVERLAP_RULES)}"
        )
    probs = np.asarray(student_probs)
    labels = np.argmax(probs, axis=0)  # first maximum wins: ties go to the lower class (background)
    winner_prob = np.take_along_axis(probs, labels[None], axis=0)[0]
    labels[winner_prob < threshold] = 0
    return labels.astype(np.int64, copy=False)


def has_foreground(
    student_probs: np.ndarray, *, threshold: float = 0.5, overlap: str = "argmax"
) -> bool:
    """True if any pixel gets a foreground label (cases without are skipped as ``"no_foreground"``)."""
    return bool((student_hard_labels(student_probs, threshold=threshold, overlap=overlap) > 0).any())


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the inclusive pixel extents of a non-empty ``(Y, X)`` mask.

    Raises:
        SemisamError: the mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise SemisamError("cannot draw a box around an empty mask")
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def split_touching(component: np.ndarray, min_distance: int) -> np.ndarray:
    """Split one connected component into instances by a watershed on its distance transform.

    Markers are the regional maxima of the Euclidean distance transform whose dynamic is at least one
    pixel (``skimage.morphology.h_maxima`` with ``h=1``, so a flat ridge — an elongated object — stays one
    marker), kept only if they survive ``skimage.feature.peak_local_max``'s ``min_distance`` suppression
    (two centres closer than ``min_distance`` pixels are one object). The watershed of the negated
    distance from these markers, restricted to the component, gives the instances; touching round
    objects (nuclei) with a neck between them come apart.

    Args:
        component: ``(Y, X)`` bool, one connected component.
        min_distance: minimum distance in pixels between two instance centres.

    Returns:
        ``(Y, X)`` int32 instance labels, 0 outside ``component``, ``1..M`` inside (M >= 1).
    """
    from skimage.feature import peak_local_max
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    component = np.asarray(component, dtype=bool)
    dist = ndimage.distance_transform_edt(component)
    peaks = peak_local_max(
        dist, min_distance=max(int(min_distance), 1), labels=component.astype(np.int32),
        exclude_border=False,
    )
    plateaus, n_plateaus = ndimage.label(h_maxima(dist, 1.0).astype(bool), structure=_FULL_CONNECTIVITY_2D)
    if len(peaks) <= 1 or n_plateaus <= 1:
        return component.astype(np.int32)
    keep = np.unique(plateaus[peaks[:, 0], peaks[:, 1]])
    keep = keep[keep > 0]
    if len(keep) <= 1:
        return component.astype(np.int32)
    markers = np.zeros(component.shape, dtype=np.int32)
    for new_id, old_id in enumerate(keep, start=1):
        markers[plateaus == old_id] = new_id
    return watershed(-dist, markers, mask=component, connectivity=2).astype(np.int32)


def extract_objects(
    student_probs_slice: np.ndarray,
    *,
    threshold: float = 0.5,
    min_size: int = 10,
    split_instances: bool = False,
    split_min_distance: int = 3,
    split_max_pieces: int = 0,
    overlap: str = "argmax",
) -> list[ObjectMask]:
    """Objects of every foreground class in one slice of the student's prediction.

    Per class (1..K-1, after the overlap rule), connected components with 8-connectivity
    (``scipy.ndimage.label``); with ``split_instances`` each component is further split into touching
    instances by :func:`split_touching` (only components of at least ``2 * min_size`` pixels are tried,
    smaller ones cannot hold two objects of ``min_size``); a component the watershed cuts into more than
    ``split_max_pieces`` pieces stays whole (a ribbon of tissue is not a clump of touching objects, and each
    piece is a prompt SAM decodes). Objects smaller than ``min_size`` pixels are dropped (after the split).
    Order: by class, then by component label (raster order of first pixel), then instance.

    Args:
        student_probs_slice: ``(K, Y, X)`` probabilities of one slice, background first.
        threshold: foreground threshold (see :func:`student_hard_labels`).
        min_size: minimum object area in pixels.
        split_instances: split merged components by a distance-transform watershed.
        split_min_distance: minimum distance between instance centres, in pixels.
        split_max_pieces: most instances one component may split into (more: kept whole); 0: no limit.
        overlap: the multi-class overlap rule.

    Returns:
        list of :class:`ObjectMask`; empty if the slice has no foreground.

    Raises:
        SemisamError: not a ``(K, Y, X)`` array; unknown overlap rule.
    """
    probs = np.asarray(student_probs_slice)
    if probs.ndim != 3:
        raise SemisamError(f"extract_objects takes one slice (K, Y, X), got shape {probs.shape}")
    labels = student_hard_labels(probs, threshold=threshold, overlap=overlap)
    objects: list[ObjectMask] = []
    for class_id in range(1, probs.shape[0]):
        comps, n = ndimage.label(labels == class_id, structure=_FULL_CONNECTIVITY_2D)
        if n == 0:
            continue
        for comp_id, sl in enumerate(ndimage.find_objects(comps), start=1):
            comp = comps == comp_id
            if split_instances and int(comp[sl].sum()) >= 2 * max(min_size, 1):
                # split on a crop (1-pixel frame so the distance transform sees the border)
                crop = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
                inst_crop = split_touching(comp[crop], split_min_distance)
                if 0 < split_max_pieces < int(inst_crop.max()):
                    inst_crop = comp[crop].astype(np.int32)
                pieces = []
                for i in range(1, int(inst_crop.max()) + 1):
                    piece = np.zeros_like(comp)
                    piece[crop] = inst_crop == i
                    pieces.append(piece)
            else:
                pieces = [comp]
            for mask in pieces:
                area = int(mask.sum())
                if area < min_size or area == 0:
                    continue
                objects.append(
                    ObjectMask(
                        class_id=class_id,
                        mask=mask,
                        prob_mean=float(probs[class_id][mask].mean()),
                        area=area,
                        bbox_xyxy=bounding_box(mask),
                    )
                )
    return objects


def _check_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise SemisamError(f"slice axis must be 0 (Z), 1 (Y) or 2 (X), got {axis!r}")
    return int(axis)


def iter_slices(array: np.ndarray, axis: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, slice)`` of a volume along a spatial axis (views, no copies).

    Args:
        array: ``(Z, Y, X)`` volume or ``(K, Z, Y, X)`` per-class volume (channel axis kept).
        axis: spatial axis to cut along: 0 (Z → slices ``(Y, X)``), 1 (Y → ``(Z, X)``), 2 (X → ``(Z, Y)``).
            The slice's rows/columns are the remaining axes in order; SAM's x is the last one.

    Yields:
        ``(i, s)`` with ``s`` of shape ``(rows, cols)`` or ``(K, rows, cols)``.

    Raises:
        SemisamError: array not 3D/4D or axis not in {0, 1, 2}.
    """
    axis = _check_axis(axis)
    arr = np.asarray(array)
    if arr.ndim not in (3, 4):
        raise SemisamError(f"iter_slices takes (Z, Y, X) or (K, Z, Y, X), got shape {arr.shape}")
    a = arr.ndim - 3 + axis
    for i in range(arr.shape[a]):
        yield i, arr[(slice(None),) * a + (i,)]


def stack_slices(slices: Sequence[np.ndarray], axis: int = 0) -> np.ndarray:
    """Inverse of :func:`iter_slices`: stack per-slice results back into a volume.

    Args:
        slices: per-slice arrays in slice order, each ``(rows, cols)`` or ``(C, rows, cols)``.
        axis: the spatial axis they were cut along (0, 1 or 2).

    Returns:
        ``(Z, Y, X)`` or ``(C, Z, Y, X)`` such that ``iter_slices(result, axis)`` gives back ``slices``.
    """
    axis = _check_axis(axis)
    if len(slices) == 0:
        raise SemisamError("stack_slices needs at least one slice")
    first = np.asarray(slices[0])
    if first.ndim not in (2, 3):
        raise SemisamError(f"slices must be (rows, cols) or (C, rows, cols), got shape {first.shape}")
    return np.stack([np.asarray(s) for s in slices], axis=first.ndim - 2 + axis)


def extract_candidates(
    student_probs_slice: np.ndarray,
    *,
    low_threshold: float,
    threshold: float = 0.5,
    min_size: int = 10,
    overlap: str = "argmax",
) -> list[ObjectMask]:
    """Objects the student nearly missed: per class, the connected components (8-connectivity) of the pixels
    whose most likely foreground class is that class with probability >= ``low_threshold`` (background is
    left out of this argmax: below 0.5 it would always win), holding no pixel of that class at ``threshold``.

    A component that contains a pixel of an object found at ``threshold`` is that object's halo, not a new
    object, and is skipped; so candidates never overlap the student's objects of the same class. Components
    smaller than ``min_size`` pixels are dropped. SAM is prompted on candidates like on objects, so it can
    add objects the student was unsure of (the teacher as a corrector, not only a filter).

    Args:
        student_probs_slice: ``(K, Y, X)`` probabilities of one slice, background first.
        low_threshold: the candidate threshold, ``0 < low_threshold < threshold``.
        threshold, min_size, overlap: as in :func:`extract_objects`.

    Returns:
        list of :class:`ObjectMask` with ``candidate=True``, in the order of :func:`extract_objects`.

    Raises:
        SemisamError: ``low_threshold`` not in ``(0, threshold)``; not a ``(K, Y, X)`` array.
    """
    if not 0.0 < low_threshold < threshold:
        raise SemisamError(f"candidate threshold {low_threshold!r} must lie in (0, {threshold:g}), below the "
                           "student's threshold")
    probs = np.asarray(student_probs_slice)
    if probs.ndim != 3:
        raise SemisamError(f"extract_candidates takes one slice (K, Y, X), got shape {probs.shape}")
    high = student_hard_labels(probs, threshold=threshold, overlap=overlap)
    # below 0.5 background wins the argmax: candidates take the most likely foreground class instead
    fg_class = np.argmax(probs[1:], axis=0) + 1
    low = np.where(np.take_along_axis(probs, fg_class[None], axis=0)[0] >= low_threshold, fg_class, 0)
    out: list[ObjectMask] = []
    for class_id in range(1, probs.shape[0]):
        comps, n = ndimage.label(low == class_id, structure=_FULL_CONNECTIVITY_2D)
        if n == 0:
            continue
        found = np.unique(comps[high == class_id])
        for comp_id in range(1, n + 1):
            if comp_id in found:
                continue
            mask = comps == comp_id
            area = int(mask.sum())
            if area < max(min_size, 1):
                continue
            out.append(ObjectMask(class_id=class_id, mask=mask, prob_mean=float(probs[class_id][mask].mean()),
                                  area=area, bbox_xyxy=bounding_box(mask), candidate=True))
    return out

"""Dice and HD95 per case and per class (``monai.metrics``), with ignore-label and empty-mask rules.

Conventions (the same for files and arrays):

* Label maps are integer arrays ``(Z, Y, X)`` (2D: ``Z == 1``) or ``(1, Z, Y, X)`` as nnU-Net reads them.
* Pixels whose ground truth is ``ignore_label`` are excluded from both prediction and ground truth (set to
  background for every class) before anything is computed.
* Empty masks, per class and case: both empty → Dice and HD95 undefined, recorded as ``None`` (``null`` in
  JSON) and left out of that class's means, as nnU-Net's evaluation (NaN) and MONAI's ``ignore_empty`` do —
  a student that predicts nothing gets no credit for the classes a case lacks. Exactly one empty → Dice 0.0
  and HD95 undefined (``None``). ``n_dice`` / ``n_hd95`` count the cases each class mean is taken over; a
  class mean with no defined case is ``None``, and the mean over classes averages the defined class means
  only (``None`` when there is none).
* HD95 is the symmetric 95th-percentile Hausdorff distance between the masks' boundary pixels in physical
  units (``spacing_zyx``); for 2D images (``Z == 1``) the Z axis is dropped.
* Pooled Dice of a class: ``2 * sum(|P ∩ G|) / sum(|P| + |G|)`` over all cases (what ASSETS.md reports);
  ``None`` when prediction and truth are empty in every case (the sum is 0). When only pooled Dice is wanted,
  :class:`PooledDice` folds cases in one at a time and keeps nothing but those integer sums (no HD95, no
  label map held); :func:`pooled_dice` is its one-call form.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np

from semisam.utils.errors import SemisamError


def class_metrics(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float] | None = None) -> dict:
    """Dice and HD95 of one binary mask pair.

    Args:
        pred_mask, gt_mask: bool arrays of the same shape (2D ``(Y, X)`` or 3D ``(Z, Y, X)``).
        spacing: physical size of a pixel along each axis of the masks (default 1).

    Returns:
        ``{"dice", "hd95", "intersection", "n_pred", "n_gt"}``; ``dice`` is None when both masks are
        empty, ``hd95`` is None when either is.
    """
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    pred_mask = np.asarray(pred_mask, dtype=bool)
    gt_mask = np.asarray(gt_mask, dtype=bool)
    assert pred_mask.shape == gt_mask.shape, (pred_mask.shape, gt_mask.shape)
    n_pred, n_gt = int(pred_mask.sum()), int(gt_mask.sum())
    if n_pred == 0 and n_gt == 0:  # nothing to score: left out of the means (nnU-Net: NaN)
        return {"dice": None, "hd95": None, "intersection": 0, "n_pred": 0, "n_gt": 0}
    inter = int(np.logical_and(pred_mask, gt_mask).sum())
    p = torch.from_numpy(pred_mask)[None, None].float()
    g = torch.from_numpy(gt_mask)[None, None].float()
    # monai: with ignore_empty=False an empty ground truth and a non-empty prediction give 0.0
    dice = float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])
    hd95: float | None
    if n_pred == 0 or n_gt == 0:
        hd95 = None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # monai's own deprecation notices from get_mask_edges
            hd = compute_hausdorff_distance(
                p, g, include_background=True, percentile=95,
                spacing=None if spacing is None else [float(s) for s in spacing],
            )
        hd95 = float(hd[0, 0])
        hd95 = hd95 if math.isfinite(hd95) else None
    return {"dice": dice, "hd95": hd95, "intersection": inter, "n_pred": n_pred, "n_gt": n_gt}


def case_metrics(pred_zyx: np.ndarray, gt_zyx: np.ndarray, labels: Mapping[str, int],
                 ignore_label: int | None = None, spacing_zyx: Sequence[float] | None = None) -> dict:
    """Per-class metrics of one case.

    Args:
        pred_zyx, gt_zyx: integer label maps ``(Z, Y, X)`` or ``(1, Z, Y, X)``, same shape.
        labels: foreground classes, name → label value.
        ignore_label: ground-truth value whose pixels are excluded from both maps, or None.
        spacing_zyx: pixel spacing ``(z, y, x)``; None = 1 along every axis.

    Returns:
        ``{class name: class_metrics(...)}``.

    Raises:
        SemisamError: shapes differ.
    """
    pred_zyx, gt_zyx = _squeeze_channel(np.asarray(pred_zyx)), _squeeze_channel(np.asarray(gt_zyx))
    if pred_zyx.shape != gt_zyx.shape:
        raise SemisamError(f"prediction shape {pred_zyx.shape} differs from ground truth shape {gt_zyx.shape}")
    valid = np.ones(gt_zyx.shape, dtype=bool) if ignore_label is None else gt_zyx != ignore_label
    spacing = None if spacing_zyx is None else [float(s) for s in spacing_zyx]
    if spacing is not None and len(spacing) != gt_zyx.ndim:
        raise SemisamError(f"spacing {spacing} does not match the image's {gt_zyx.ndim} axes")
    if gt_zyx.ndim == 3 and gt_zyx.shape[0] == 1:  # 2D case: drop Z
        pred_zyx, gt_zyx, valid = pred_zyx[0], gt_zyx[0], valid[0]
        spacing = None if spacing is None else spacing[1:]
    return {name: class_metrics((pred_zyx == value) & valid, (gt_zyx == value) & valid, spacing)
            for name, value in labels.items()}


def evaluate_arrays(cases: Iterable[tuple[str, np.ndarray, np.ndarray, Sequence[float] | None]],
                    labels: Mapping[str, int], ignore_label: int | None = None) -> dict:
    """Metrics of label maps held in memory (e.g. pseudo-labels against ``labelsHidden``).

    Args:
        cases: ``(case_id, pred_zyx, gt_zyx, spacing_zyx or None)`` per case.
        labels: foreground classes, name → label value.
        ignore_label: ground-truth value excluded from both maps.

    Returns:
        ``{"cases": [{"case_id", "classes": {name: {...}}}], "classes": {name: summary}, "n_cases",
        "mean_dice", "mean_hd95", "pooled_dice", "labels", "ignore_label"}`` — see :func:`summarize`.
    """
    records = [{"case_id": str(cid), "classes": case_metrics(p, g, labels, ignore_label, sp)}
               for cid, p, g, sp in cases]
    return summarize(records, labels, ignore_label)


class PooledDice:
    """Pooled Dice accumulated case by case: accumulate (:meth:`add`) → aggregate (:meth:`value`), the shape
    of ``monai.metrics.Cumulative``.

    Only integers are kept: per class the sums of ``|P ∩ G|`` and of ``|P| + |G|`` over the cases added, so
    memory does not grow with the number or size of cases, and no HD95 is computed. The value equals the
    ``pooled_dice`` of :func:`evaluate_arrays` / :func:`summarize` over the same pairs, bit for bit (the same
    integer sums, the same division).

    Args:
        labels: foreground classes, name → label value.
        ignore_label: ground-truth value whose pixels are left out of both maps (see :func:`case_metrics`).
    """

    def __init__(self, labels: Mapping[str, int], ignore_label: int | None = None):
        self.labels = {str(k): int(v) for k, v in labels.items()}
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.intersection = dict.fromkeys(self.labels, 0)  # class name -> sum of |P ∩ G|
        self.size = dict.fromkeys(self.labels, 0)  # class name -> sum of |P| + |G|
        self.n_cases = 0

    def add(self, pred_zyx: np.ndarray, gt_zyx: np.ndarray, keep: np.ndarray | None = None) -> None:
        """Fold in one case.

        Args:
            pred_zyx, gt_zyx: integer label maps ``(Z, Y, X)`` or ``(1, Z, Y, X)`` (2D: ``(Y, X)``), same shape.
            keep: optional bool mask of the same shape; pixels outside it are left out, as if the ground
                truth were ``ignore_label`` there.

        Raises:
            SemisamError: shapes differ.
        """
        pred_zyx, gt_zyx = _squeeze_channel(np.asarray(pred_zyx)), _squeeze_channel(np.asarray(gt_zyx))
        if pred_zyx.shape != gt_zyx.shape:
            raise SemisamError(f"prediction shape {pred_zyx.shape} differs from ground truth shape {gt_zyx.shape}")
        valid = None if self.ignore_label is None else gt_zyx != self.ignore_label
        if keep is not None:
            keep = _squeeze_channel(np.asarray(keep, dtype=bool))
            if keep.shape != gt_zyx.shape:
                raise SemisamError(f"mask shape {keep.shape} differs from ground truth shape {gt_zyx.shape}")
            valid = keep if valid is None else valid & keep
        for name, value in self.labels.items():
            p, g = pred_zyx == value, gt_zyx == value
            if valid is not None:
                p &= valid
                g &= valid
            self.intersection[name] += int(np.count_nonzero(p & g))
            self.size[name] += int(np.count_nonzero(p)) + int(np.count_nonzero(g))
        self.n_cases += 1

    def merge(self, other: "PooledDice") -> None:
        """Fold in the sums of another accumulator of the same classes (e.g. another process's cases)."""
        if other.labels != self.labels or other.ignore_label != self.ignore_label:
            raise SemisamError("cannot merge pooled Dice sums of other classes or another ignore label")
        for name in self.labels:
            self.intersection[name] += other.intersection[name]
            self.size[name] += other.size[name]
        self.n_cases += other.n_cases

    def value(self) -> float | None:
        """Pooled Dice over the cases and classes added; None when nothing was added or no pixel of any class
        is in either map."""
        total = sum(self.size.values())
        return None if total == 0 else 2.0 * sum(self.intersection.values()) / total

    def class_value(self, name: str) -> float | None:
        """Pooled Dice of one class over the cases added (None when undefined)."""
        return None if self.size[name] == 0 else 2.0 * self.intersection[name] / self.size[name]


def pooled_dice(pairs: Iterable[tuple[np.ndarray, np.ndarray]], labels: Mapping[str, int],
                ignore_label: int | None = None) -> float | None:
    """Pooled Dice (over cases and classes) of ``(pred_zyx, gt_zyx)`` label-map pairs; None for no pairs
    or when no pair has a foreground pixel in either map.

    Pixels where the ground truth is ``ignore_label`` are left out (see :func:`case_metrics`). Counts only,
    through :class:`PooledDice` (no HD95).
    """
    acc = PooledDice(labels, ignore_label)
    for pred, gt in pairs:
        acc.add(pred, gt)
    return acc.value()


def summarize(records: list[dict], labels: Mapping[str, int], ignore_label: int | None = None) -> dict:
    """Per-class means over cases, pooled Dice, and means over classes.

    Per class: ``mean_dice`` (over the ``n_dice`` cases where Dice is defined, i.e. not both masks empty),
    ``mean_hd95`` (over the ``n_hd95`` cases where it is defined), each None if no case is; ``pooled_dice``
    (None if both masks are empty in every case). Over classes: ``mean_dice``, ``mean_hd95`` (of the
    defined class means; None if none) and ``pooled_dice`` (intersections and sizes summed over cases and
    classes).
    """
    classes = {}
    for name, value in labels.items():
        per = [r["classes"][name] for r in records]
        dices = [c["dice"] for c in per if c["dice"] is not None]
        hds = [c["hd95"] for c in per if c["hd95"] is not None]
        classes[name] = {
            "label": int(value),
            "n_cases": len(per),
            "mean_dice": _mean(dices),
            "n_dice": len(dices),
            "mean_hd95": _mean(hds),
            "n_hd95": len(hds),
            "pooled_dice": _pooled(per),
        }
    everything = [r["classes"][name] for r in records for name in labels]
    return {
        "n_cases": len(records),
        "labels": {k: int(v) for k, v in labels.items()},
        "ignore_label": None if ignore_label is None else int(ignore_label),
        "mean_dice": _mean([c["mean_dice"] for c in classes.values() if c["mean_dice"] is not None]),
        "mean_hd95": _mean([c["mean_hd95"] for c in classes.values() if c["mean_hd95"] is not None]),
        "pooled_dice": _pooled(everything),
        "classes": classes,
        "cases": records,
    }


def evaluate_segmentations(pairs: Iterable[tuple[str, str | os.PathLike, str | os.PathLike]],
                           labels: Mapping[str, int], ignore_label: int | None = None,
                           file_ending: str | None = None) -> dict:
    """Metrics of segmentation files, read with nnU-Net's image readers; spacing from the ground truth.

    Args:
        pairs: ``(case_id, pred_file, gt_file)`` per case.
        labels: foreground classes, name → label value (see :func:`labels_from_dataset_json`).
        ignore_label: ground-truth value excluded from both maps.
        file_ending: picks nnU-Net's reader (``.png``, ``.nii.gz``, ...); default from the first gt file.

    Returns:
        As :func:`evaluate_arrays`, with ``pred_file`` and ``gt_file`` in every case record.

    Raises:
        SemisamError: a file is missing or shapes differ.
    """
    pairs = [(str(c), str(p), str(g)) for c, p, g in pairs]
    if not pairs:
        raise SemisamError("no cases to evaluate")
    reader = _reader_for(file_ending or _file_ending(pairs[0][2]), pairs[0][2])
    records = []
    for case_id, pred_file, gt_file in pairs:
        for f in (pred_file, gt_file):
            if not os.path.isfile(f):
                raise SemisamError(f"segmentation file {f} (case {case_id}) does not exist")
        gt, gt_props = reader.read_seg(gt_file)
        pred, _ = reader.read_seg(pred_file)
        if np.asarray(pred).shape != np.asarray(gt).shape:
            raise SemisamError(f"case {case_id}: prediction shape {np.asarray(pred).shape} differs from "
                               f"ground truth shape {np.asarray(gt).shape}")
        classes = case_metrics(pred, gt, labels, ignore_label, gt_props.get("spacing"))
        records.append({"case_id": case_id, "pred_file": pred_file, "gt_file": gt_file, "classes": classes})
    return summarize(records, labels, ignore_label)


def labels_from_dataset_json(dataset_json: Mapping) -> tuple[dict[str, int], int | None]:
    """Foreground classes (name → value, background and ignore left out) and the ignore label, as
    :func:`semisam.data.parse_labels` reads and checks them.

    Raises:
        SemisamError: labels nnU-Net would refuse, or region-based labels (lists of values), not supported here.
    """
    from semisam.data.raw import parse_labels

    plain, ignore = parse_labels(dataset_json.get("labels"), "dataset.json labels")
    return {name: value for name, value in plain.items() if value != 0}, ignore


def _squeeze_channel(a: np.ndarray) -> np.ndarray:
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise SemisamError(f"expected a label map (1, Z, Y, X), got shape {a.shape}")
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise SemisamError(f"expected a label map (Z, Y, X), got shape {a.shape}")
    return a


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _pooled(per: list[dict]) -> float | None:
    inter = sum(c["intersection"] for c in per)
    total = sum(c["n_pred"] + c["n_gt"] for c in per)
    if not per:
        return None
    return None if total == 0 else 2.0 * inter / total


def _file_ending(path: str) -> str:
    name = os.path.basename(path)
    for ending in (".nii.gz", ".nrrd", ".nii", ".mha", ".png", ".tif", ".tiff", ".bmp", ".npy", ".npz"):
        if name.endswith(ending):
            return ending
    return os.path.splitext(name)[1]


def _reader_for(file_ending: str, example_file: str):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending

    return determine_reader_writer_from_file_ending(file_ending, example_file, allow_nonmatching_filename=True,
                                                    verbose=False)()

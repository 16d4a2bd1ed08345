"""Evaluation inside the loop: the student on test/validation cases, pseudo-labels against hidden labels.

This is the only module of the loop that reads ``labelsHidden/``. It runs after a round's pseudo-labels are
written and returns numbers for the report; nothing it returns is used for training, filtering or selection.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from semisam.data import LabeledCase, RawDataset
from semisam.eval.metrics import evaluate_segmentations, pooled_dice
from semisam.eval.report import write_report


def evaluate_students_cases(dataset: RawDataset, cases: Sequence[LabeledCase], pred_dir: Path,
                            foreground: Mapping[str, int], out_dir: Path, title: str) -> dict:
    """Dice/HD95 of predictions in ``pred_dir`` against the cases' labels; writes metrics.json/.md."""
    ending = dataset.file_ending
    pairs = [(c.case_id, pred_dir / f"{c.case_id}{ending}", c.label_file) for c in cases]
    metrics = evaluate_segmentations(pairs, foreground, dataset.ignore_label, file_ending=ending)
    write_report(metrics, out_dir, title=title)
    return {k: metrics[k] for k in ("n_cases", "mean_dice", "mean_hd95", "pooled_dice", "classes")}


def _masked(pred: np.ndarray, gt: np.ndarray, keep: np.ndarray, ignore_label: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels outside ``keep`` become ``ignore_label`` in both maps (so the metrics skip them)."""
    return np.where(keep, pred, ignore_label), np.where(keep, gt, ignore_label)


def pseudo_quality(dataset: RawDataset, arrays: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                   accepted: Sequence[str], foreground: Mapping[str, int], ignore_label: int) -> dict | None:
    """Pseudo-label quality against ``labelsHidden/`` (None when the dataset has no hidden labels).

    Args:
        arrays: case id -> ``(pseudo, student, teacher)`` label maps ``(Z, Y, X)``; ``pseudo`` carries
            ``ignore_label`` where rejected, ``teacher`` may be None (no SAM).
        accepted: the cases the filters accepted.

    Returns:
        Pooled Dice (over cases and classes) of: the fused pseudo-labels of accepted cases on the pixels they
        keep (``accepted_dice``) and the fraction they keep (``kept_fraction``); the same pixels' student
        labels (``student_dice_on_kept``); on every candidate case the student's raw prediction
        (``student_dice``), SAM's raw masks (``teacher_dice``) and what the rejected pixels would have
        scored as the student labelled them (``rejected_dice``); ``n_cases`` with hidden labels. A Dice is None
        when undefined: no case, or no foreground pixel in either map (see :mod:`semisam.eval.metrics`).
    """
    hidden = {}
    for cid in arrays:
        f = dataset.hidden_label_file(cid)
        if f is not None:
            hidden[cid] = dataset.read_seg(f)[0][0]
    if not hidden:
        return None

    def pooled(items: list[tuple[str, np.ndarray, np.ndarray]]) -> float | None:
        return pooled_dice([(p, g) for _, p, g in items], foreground, ignore_label)

    acc = [c for c in accepted if c in hidden]
    kept_items, student_kept, rejected_items = [], [], []
    kept_px = total_px = 0
    for c in hidden:
        pseudo, student, _ = arrays[c]
        keep = pseudo != ignore_label
        if c in acc:
            kept_items.append((c, *_masked(pseudo, hidden[c], keep, ignore_label)))
            student_kept.append((c, *_masked(student, hidden[c], keep, ignore_label)))
            kept_px += int(keep.sum())
            total_px += keep.size
        if (~keep).any() or c not in acc:
            rej = ~keep if c in acc else np.ones_like(keep)
            rejected_items.append((c, *_masked(student, hidden[c], rej, ignore_label)))
    teacher_items = [(c, arrays[c][2], hidden[c]) for c in hidden if arrays[c][2] is not None]
    return {
        "n_cases": len(hidden),
        "n_accepted": len(acc),
        "accepted_dice": pooled(kept_items),
        "student_dice_on_kept": pooled(student_kept),
        "kept_fraction": kept_px / total_px if total_px else None,
        "student_dice": pooled([(c, arrays[c][1], hidden[c]) for c in hidden]),
        "teacher_dice": pooled(teacher_items),
        "rejected_dice": pooled(rejected_items),
    }

"""Evaluation inside the loop: the student on test/validation cases, pseudo-labels against hidden labels.

This is the only module of the loop that reads ``labelsHidden/``. The teacher round hands it each case right
after that case's pseudo-label is made and written (:class:`PseudoQuality`, running sums only); it returns
numbers for the report, and nothing it returns is used for training, filtering, selection or the next case.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from semisam.data import LabeledCase, RawDataset
from semisam.eval.metrics import PooledDice, evaluate_segmentations
from semisam.eval.report import write_report


def evaluate_students_cases(dataset: RawDataset, cases: Sequence[LabeledCase], pred_dir: Path,
                            foreground: Mapping[str, int], out_dir: Path, title: str) -> dict:
    """Dice/HD95 of predictions in ``pred_dir`` against the cases' labels; writes metrics.json/.md."""
    ending = dataset.file_ending
    pairs = [(c.case_id, pred_dir / f"{c.case_id}{ending}", c.label_file) for c in cases]
    metrics = evaluate_segmentations(pairs, foreground, dataset.ignore_label, file_ending=ending)
    write_report(metrics, out_dir, title=title)
    return {k: metrics[k] for k in ("n_cases", "mean_dice", "mean_hd95", "pooled_dice", "classes")}


class PseudoQuality:
    """Pseudo-label quality against ``labelsHidden/``, folded in case by case (the teacher round streams).

    Call :meth:`add` for a case only **after its pseudo-label is made and written**: it reads that case's
    hidden label, scores the case, and keeps nothing but running sums (:class:`~semisam.eval.metrics.PooledDice`
    counts and pixel counts), so the round holds no case's label maps and memory does not grow with the number
    of cases. Nothing read from the hidden labels is returned before :meth:`result`, and the result goes to the
    round's report only: it never feeds the teacher, the filters, the next case or the training set.

    Args:
        dataset: the run's dataset (its ``labelsHidden/``).
        foreground: foreground classes, name → label value.
        ignore_label: the label of rejected pixels in a pseudo-label.
    """

    def __init__(self, dataset: RawDataset, foreground: Mapping[str, int], ignore_label: int):
        self.dataset = dataset
        self.ignore_label = int(ignore_label)
        fg = dict(foreground)
        self.kept = PooledDice(fg, ignore_label)  # accepted cases' pseudo-labels, kept pixels
        self.student_kept = PooledDice(fg, ignore_label)  # the student's labels on the same pixels
        self.student = PooledDice(fg, ignore_label)  # the student, every pixel of every case
        self.teacher = PooledDice(fg, ignore_label)  # SAM's raw masks (cases with a teacher map)
        self.rejected = PooledDice(fg, ignore_label)  # the student on the pixels (and cases) rejected
        self.n_cases = self.n_accepted = self.kept_px = self.total_px = 0

    def add(self, case_id: str, pseudo: np.ndarray, student: np.ndarray, teacher: np.ndarray | None,
            accepted: bool) -> None:
        """Score one case (a no-op when it has no hidden label).

        Args:
            pseudo, student, teacher: label maps ``(Z, Y, X)``; ``pseudo`` carries ``ignore_label`` where
                rejected, ``teacher`` may be None (no SAM).
            accepted: whether the filters accepted the case.
        """
        f = self.dataset.hidden_label_file(case_id)
        if f is None:
            return
        hidden = self.dataset.read_seg(f)[0][0]
        keep = pseudo != self.ignore_label
        self.n_cases += 1
        if accepted:
            self.n_accepted += 1
            self.kept.add(pseudo, hidden, keep)
            self.student_kept.add(student, hidden, keep)
            self.kept_px += int(np.count_nonzero(keep))
            self.total_px += keep.size
            if not keep.all():
                self.rejected.add(student, hidden, ~keep)
        else:
            self.rejected.add(student, hidden)
        self.student.add(student, hidden)
        if teacher is not None:
            self.teacher.add(teacher, hidden)

    def merge(self, other: "PseudoQuality") -> None:
        """Fold in another instance's sums (another rank's share of the cases): integer sums, so the result is
        the one of adding every case here, in any order."""
        for name in ("kept", "student_kept", "student", "teacher", "rejected"):
            getattr(self, name).merge(getattr(other, name))
        self.n_cases += other.n_cases
        self.n_accepted += other.n_accepted
        self.kept_px += other.kept_px
        self.total_px += other.total_px

    def __getstate__(self) -> dict:
        """Pickled (sent to rank 0) without the dataset: the sums travel, :meth:`add` needs it again."""
        return {k: v for k, v in self.__dict__.items() if k != "dataset"}

    def result(self) -> dict | None:
        """The numbers of :func:`pseudo_quality`; None when no case added had a hidden label."""
        if not self.n_cases:
            return None
        return {
            "n_cases": self.n_cases,
            "n_accepted": self.n_accepted,
            "accepted_dice": self.kept.value(),
            "student_dice_on_kept": self.student_kept.value(),
            "kept_fraction": self.kept_px / self.total_px if self.total_px else None,
            "student_dice": self.student.value(),
            "teacher_dice": self.teacher.value(),
            "rejected_dice": self.rejected.value(),
        }


def pseudo_quality(dataset: RawDataset, arrays: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                   accepted: Sequence[str], foreground: Mapping[str, int], ignore_label: int) -> dict | None:
    """Pseudo-label quality against ``labelsHidden/`` (None when the dataset has no hidden labels), for label
    maps already held in memory (``semisam bench``); the loop folds cases in one at a time with
    :class:`PseudoQuality`, which gives the same numbers.

    Args:
        arrays: case id -> ``(pseudo, student, teacher)`` label maps ``(Z, Y, X)``; ``pseudo`` carries
            ``ignore_label`` where rejected, ``teacher`` may be None (no SAM).
        accepted: the cases the filters accepted.

    Returns:
        Pooled Dice (over cases and classes) of: the fused pseudo-labels of accepted cases on the pixels they
        keep (``accepted_dice``) and the fraction they keep (``kept_fraction``); the same pixels' student
        labels (``student_dice_on_kept``); on every candidate case the student's raw prediction
        (``student_dice``), SAM's raw masks (``teacher_dice``) and what the rejected pixels would have
        scored as the student labelled them (``rejected_dice``); ``n_cases`` with hidden labels and
        ``n_accepted`` of them accepted. A Dice is None when undefined: no case, or no foreground pixel in
        either map (see :mod:`semisam.eval.metrics`).
    """
    quality = PseudoQuality(dataset, foreground, ignore_label)
    accepted = set(accepted)
    for cid, (pseudo, student, teacher) in arrays.items():
        quality.add(cid, pseudo, student, teacher, cid in accepted)
    return quality.result()

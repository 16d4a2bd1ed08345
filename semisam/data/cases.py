"""Typed cases of an nnU-Net raw dataset.

A :class:`LabeledCase` carries its label file; an :class:`UnlabeledCase` has no label attribute of any
name. The student/teacher path only ever receives :class:`UnlabeledCase` for unlabeled data, so no code
on that path can reach a hidden label by accident (the labels of unlabeled cases live in
``labelsHidden/`` and are read by evaluation alone, through :meth:`RawDataset.hidden_label_file`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LabeledCase:
    """A case with ground truth: ``image_files`` (one per channel, ``_0000`` first) and ``label_file``."""

    case_id: str
    image_files: tuple[Path, ...]
    label_file: Path


@dataclass(frozen=True, slots=True)
class UnlabeledCase:
    """A case without ground truth: its image files only (one per channel, ``_0000`` first)."""

    case_id: str
    image_files: tuple[Path, ...]

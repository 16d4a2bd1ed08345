"""The run's cases: labeled for training, held out for validation, unlabeled for the teacher, test."""
from __future__ import annotations

import random
from dataclasses import dataclass

from semisam.data import LabeledCase, RawDataset, UnlabeledCase
from semisam.utils.errors import SemisamError


@dataclass(frozen=True)
class Cases:
    """The run's cases: who trains, who is validated on, who the teacher sees, who is tested."""

    train: list[LabeledCase]
    val: list[LabeledCase]
    unlabeled: list[UnlabeledCase]
    test: list[LabeledCase]


def split_cases(dataset: RawDataset, num_val: int, seed: int) -> Cases:
    """Reserve ``num_val`` labeled cases for validation (never trained on, never shown to the teacher)."""
    labeled = dataset.labeled_cases()
    if not labeled:
        raise SemisamError(f"{dataset.root} has no labeled case; label at least one (labelsTr/) or run data_prep split")
    if num_val >= len(labeled):
        raise SemisamError(
            f"dataset.num_val={num_val} leaves no labeled case to train on ({len(labeled)} labeled); lower it"
        )
    order = list(range(len(labeled)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:num_val])
    return Cases(
        train=[c for i, c in enumerate(labeled) if i not in val_idx],
        val=[c for i, c in enumerate(labeled) if i in val_idx],
        unlabeled=dataset.unlabeled_cases(),
        test=dataset.test_cases(),
    )

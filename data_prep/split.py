"""Split a fully labeled nnU-Net raw dataset into labeled and unlabeled training cases.

A new dataset folder is written (the source is never edited): every training image is copied to
``imagesTr``; labels of the drawn labeled cases to ``labelsTr``, those of the other training cases to
``labelsHidden``; ``imagesTs`` / ``labelsTs`` are copied as they are. The source may itself be a semisam
dataset, in which case its hidden labels count as labels (re-splitting).

Grouped cases: when the source's dataset.json has ``"case_groups"`` (case id -> group id, e.g. ACDC's
``patient001_ED`` and ``patient001_ES`` -> ``patient001``, written by ``data_prep acdc``), whole groups are
drawn (:func:`make_group_split`): ``labeled`` / ``ratio`` count groups, and the cases of one group are all
labeled or all unlabeled. The key is kept in the new dataset.json, so re-splitting keeps the grouping.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from semisam.data import CaseData, RawDataset, Split, make_split, write_raw_dataset
from semisam.data.raw import _channel_files
from semisam.utils.errors import SemisamError

#: dataset.json keys that the writer sets itself; every other key of the source is kept.
_MANAGED = {"channel_names", "labels", "numTraining", "file_ending", "dataset", "name", "description", "modality"}
#: dataset.json key: case id -> group id; the cases of one group land on the same side of a split.
GROUPS_KEY = "case_groups"


def make_group_split(groups: Mapping[str, str], *, labeled: int | None = None, ratio: float | None = None,
                     seed: int = 0, test=(), source: str | None = None, noun: str = "group") -> Split:
    """Draw the labeled subset of the training cases by whole groups (e.g. both frames of one patient).

    The group ids are drawn with :func:`semisam.data.make_split`, so the draw depends only on the set of
    groups and ``seed``; ``labeled`` / ``ratio`` count groups, not cases.

    Args:
        groups: training case id -> its group id.
        labeled, ratio, seed, test, source: as for :func:`semisam.data.make_split`.
        noun: what a group is, for error messages (``"patient"``).

    Raises:
        SemisamError: ``labeled`` outside [1, number of groups], bad ``ratio``.
    """
    members: dict[str, list[str]] = {}
    for cid, group in groups.items():
        members.setdefault(str(group), []).append(str(cid))
    if ratio is None and isinstance(labeled, int) and not 1 <= labeled <= len(members):  # else make_split says
        raise SemisamError(f"--labeled counts {noun}s here: it must be between 1 and the number of training "
                           f"{noun}s ({len(members)}), got {labeled}")
    drawn = make_split(sorted(members), labeled=labeled, ratio=ratio, seed=seed)
    return Split(labeled=tuple(c for g in drawn.labeled for c in members[g]),
                 unlabeled=tuple(c for g in drawn.unlabeled for c in members[g]), test=tuple(test), seed=drawn.seed,
                 ratio=drawn.ratio, source=source)


def _training_cases(src: RawDataset) -> tuple[dict[str, tuple[Path, ...]], dict[str, Path]]:
    """Training case id -> image files, and -> label file (hidden labels count: re-splitting a semisam dataset).

    Raises:
        SemisamError: a training case without any label.
    """
    images = {c.case_id: c.image_files for c in src.unlabeled_cases()}
    labels = {}
    for case in src.labeled_cases():
        images[case.case_id] = case.image_files
        labels[case.case_id] = case.label_file
    for cid in images:
        if cid not in labels and src.hidden_label_file(cid) is not None:
            labels[cid] = src.hidden_label_file(cid)  # re-splitting a semisam dataset
    unlabeled = sorted(set(images) - set(labels))
    if unlabeled:
        raise SemisamError(f"{src.root} is not fully labeled: {len(unlabeled)} training case(s) without a label, "
                           f"e.g. '{unlabeled[0]}'")
    return images, labels


def draw_split(src: RawDataset, *, labeled: int | None = None, ratio: float | None = None, seed: int = 0) -> Split:
    """The split :func:`split_dataset` writes for these arguments (by whole groups where the dataset has
    ``case_groups``), drawn without writing anything.

    Raises:
        SemisamError: as :func:`split_dataset`, for the source and the draw.
    """
    images, _ = _training_cases(src)
    test = sorted(_channel_files(src.root / "imagesTs", src.file_ending))
    groups = src.dataset_json.get(GROUPS_KEY)
    if isinstance(groups, dict):
        return make_group_split({cid: groups.get(cid, cid) for cid in images}, labeled=labeled, ratio=ratio,
                                seed=seed, test=test, source=f"split of {src.name} by case_groups")
    return make_split(sorted(images), labeled=labeled, ratio=ratio, seed=seed, test=test,
                      source=f"split of {src.name}")


def split_dataset(raw_dir: str | os.PathLike, out_dir: str | os.PathLike, *, labeled: int | None = None,
                  ratio: float | None = None, seed: int = 0, overwrite: bool = False, verify: bool = False) -> Path:
    """Write a copy of ``raw_dir`` to ``out_dir`` with only ``labeled`` (or ``ratio`` of the) training cases
    labeled.

    Raises:
        SemisamError: missing folder or dataset.json, a training case without any label, ``ratio`` outside
            (0, 1], ``labeled`` outside [1, n], label values not declared, image/label shape mismatch,
            ``out_dir`` equal to ``raw_dir`` or existing without ``overwrite``.
    """
    src = RawDataset.open(raw_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == src.root.resolve():
        raise SemisamError("--out must differ from the source dataset (split never edits a dataset in place)")
    images, labels = _training_cases(src)
    split = draw_split(src, labeled=labeled, ratio=ratio, seed=seed)
    test_images = _channel_files(src.root / "imagesTs", src.file_ending)
    test_labels = {cid: src.root / "labelsTs" / f"{cid}{src.file_ending}" for cid in test_images}
    cases = [CaseData(cid, images[cid], labels[cid]) for cid in sorted(images)]
    tests = [CaseData(cid, test_images[cid], test_labels[cid] if test_labels[cid].is_file() else None)
             for cid in sorted(test_images)]
    extra = {k: v for k, v in src.dataset_json.items() if k not in _MANAGED}
    return write_raw_dataset(
        out_dir, name=src.name, cases=cases, test_cases=tests, labels=src.labels, file_ending=src.file_ending,
        channel_names=src.dataset_json["channel_names"], split=split, overwrite=overwrite, verify=verify,
        description=src.dataset_json.get("description"), extra_json=extra)

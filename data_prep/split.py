"""Split a fully labeled nnU-Net raw dataset into labeled and unlabeled training cases.

A new dataset folder is written (the source is never edited): every training image is copied to
``imagesTr``; labels of the drawn labeled cases to ``labelsTr``, those of the other training cases to
``labelsHidden``; ``imagesTs`` / ``labelsTs`` are copied as they are. The source may itself be a semisam
dataset, in which case its hidden labels count as labels (re-splitting).
"""
from __future__ import annotations

import os
from pathlib import Path

from semisam.data import CaseData, RawDataset, make_split, write_raw_dataset
from semisam.data.raw import _channel_files
from semisam.utils.errors import SemisamError

#: dataset.json keys that the writer sets itself; every other key of the source is kept.
_MANAGED = {"channel_names", "labels", "numTraining", "file_ending", "dataset", "name", "description", "modality"}


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
    test_images = _channel_files(src.root / "imagesTs", src.file_ending)
    test_labels = {cid: src.root / "labelsTs" / f"{cid}{src.file_ending}" for cid in test_images}
    split = make_split(sorted(images), labeled=labeled, ratio=ratio, seed=seed, test=sorted(test_images),
                       source=f"split of {src.name}")
    cases = [CaseData(cid, images[cid], labels[cid]) for cid in sorted(images)]
    tests = [CaseData(cid, test_images[cid], test_labels[cid] if test_labels[cid].is_file() else None)
             for cid in sorted(test_images)]
    extra = {k: v for k, v in src.dataset_json.items() if k not in _MANAGED}
    return write_raw_dataset(
        out_dir, name=src.name, cases=cases, test_cases=tests, labels=src.labels, file_ending=src.file_ending,
        channel_names=src.dataset_json["channel_names"], split=split, overwrite=overwrite, verify=verify,
        description=src.dataset_json.get("description"), extra_json=extra)

"""The unlabeled cases of online training: where they come from, how they are preprocessed and drawn, and the
store of SAM's pseudo-labels beside them.

* **Which cases**: the images in the raw dataset's ``imagesTr/`` that have no label — neither listed in
  ``dataset.json``'s ``dataset`` key nor present in ``labelsTr/``. Their labels are never read: there are none
  in the folders the trainer sees (semisam's round datasets hold no ``labelsHidden``), and the unlabeled cases
  are preprocessed from their images alone (nnU-Net's preprocessor with ``seg_file=None``).
* **Where**: ``<preprocessed dataset>/<data identifier>__unlabeled/``, in nnU-Net's own Blosc2 format:
  ``<case>.b2nd`` (the preprocessed image), ``<case>.pkl`` (its properties) and ``<case>_seg.b2nd``, which holds
  **the pseudo-label store**, not a label: class ``k`` is stored as ``k + 1`` and 0 means "no pseudo-label"
  (all of it until SAM's pseudo-labels are written there). nnU-Net's loader crops image and store with the
  same box and nnU-Net's transforms move them together, so a pseudo-label stays aligned with its pixels through
  augmentation; padding (nnU-Net fills it with -1, then maps -1 to 0) thus reads as "no pseudo-label", never
  as background.
* **How drawn**: :class:`UnlabeledDataLoader`, nnU-Net's ``nnUNetDataLoader`` without foreground oversampling,
  whose batches are ``{"data", "pseudo", "keys"}``; the trainer turns them into :class:`UnlabeledBatch`, a type
  with no target field.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from semisam.utils.errors import SemisamError

SUFFIX = "__unlabeled"
STORE_META = "semisam_store.json"


@dataclass(frozen=True)
class UnlabeledBatch:
    """A batch of unlabeled patches after nnU-Net's augmentation. There is no target: ``pseudo`` is the SAM
    pseudo-label store cropped and augmented with the patch (stored values: :func:`decode_store` turns them into
    targets), one tensor per deep-supervision scale."""

    data: torch.Tensor
    pseudo: list[torch.Tensor]
    keys: tuple[str, ...]

    @classmethod
    def from_loader(cls, batch: dict) -> "UnlabeledBatch":
        if "target" in batch:
            raise SemisamError("an unlabeled batch carries a target; unlabeled batches must come from "
                               "UnlabeledDataLoader")
        pseudo = batch["pseudo"]
        return cls(batch["data"], list(pseudo) if isinstance(pseudo, (list, tuple)) else [pseudo],
                   tuple(str(k) for k in batch["keys"]))


def unlabeled_images(raw_dataset_dir: str | os.PathLike, dataset_json: dict) -> dict[str, list[str]]:
    """``{case id: [channel files]}`` of the images in ``imagesTr/`` that have no label (see the module
    docstring). Labels are not opened."""
    from nnunetv2.utilities.utils import (create_lists_from_splitted_dataset_folder,
                                          get_identifiers_from_splitted_dataset_folder)

    raw = Path(raw_dataset_dir)
    images_dir = raw / "imagesTr"
    if not images_dir.is_dir():
        raise SemisamError(f"{raw} has no imagesTr/ folder; online training takes its unlabeled cases from there")
    ending = dataset_json["file_ending"]
    ids = get_identifiers_from_splitted_dataset_folder(str(images_dir), ending)
    labeled = set((dataset_json.get("dataset") or {}).keys())
    labels_dir = raw / "labelsTr"
    if labels_dir.is_dir():
        labeled |= {p.name[: -len(ending)] for p in labels_dir.iterdir() if p.name.endswith(ending)}
    ids = sorted(i for i in ids if i not in labeled)
    files = create_lists_from_splitted_dataset_folder(str(images_dir), ending, ids)
    return dict(zip(ids, files))


def unlabeled_folder(preprocessed_folder: str | os.PathLike) -> Path:
    """Where the unlabeled cases of a preprocessed configuration folder live."""
    p = Path(preprocessed_folder)
    return p.parent / (p.name + SUFFIX)


#: Confidence levels a stored pseudo-label can carry (``online.sam_confidence``), and the stride that packs the
#: level into the stored integer: ``class + 1 + CONFIDENCE_STRIDE * level``. The codes stay integer labels, so
#: nnU-Net's segmentation transforms (per-label interpolation) move them like any label map.
CONFIDENCE_LEVELS = 5
CONFIDENCE_STRIDE = 256


def encode_store(labels: np.ndarray, ignore_label: int, confidence: np.ndarray | None = None) -> np.ndarray:
    """A pseudo-label map (classes, ``ignore_label`` where there is none) as stored: class + 1, 0 for none; with
    ``confidence`` (same shape, in [0, 1]) its level ``round(c · (CONFIDENCE_LEVELS − 1))`` is packed in too."""
    labels = np.asarray(labels)
    code = labels.astype(np.int16) + 1
    if confidence is not None:
        level = np.rint(np.clip(np.asarray(confidence, dtype=np.float32), 0, 1) * (CONFIDENCE_LEVELS - 1))
        code = code + (CONFIDENCE_STRIDE * level).astype(np.int16)
    return np.where(labels == ignore_label, 0, code).astype(np.int16)


def decode_store(stored: torch.Tensor, no_label: int) -> torch.Tensor:
    """Stored values (as cropped and augmented with the patch) as targets: class, ``no_label`` where none."""
    stored = stored.long()
    return torch.where(stored <= 0, torch.full_like(stored, no_label), (stored - 1) % CONFIDENCE_STRIDE)


def store_weights(stored: torch.Tensor) -> torch.Tensor:
    """The per-pixel weights packed in stored values: level / (CONFIDENCE_LEVELS − 1), 0 where there is no
    pseudo-label (a store written without confidence reads as level 0 everywhere)."""
    stored = stored.long()
    level = torch.div(stored - 1, CONFIDENCE_STRIDE, rounding_mode="floor").clamp(0, CONFIDENCE_LEVELS - 1)
    return torch.where(stored <= 0, 0.0, level.float() / (CONFIDENCE_LEVELS - 1))


def prepare_unlabeled(images: dict[str, list[str]], folder: Path, plans_manager, configuration_manager,
                      dataset_json: dict, log=print) -> list[str]:
    """Preprocess the unlabeled images into ``folder`` with nnU-Net's preprocessor (images only) and an empty
    pseudo-label store; written as a whole (a temporary folder renamed at the end). Returns the case ids.

    Raises:
        SemisamError: no unlabeled image.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    if not images:
        raise SemisamError("online training needs unlabeled cases, but every image in imagesTr/ has a label; "
                           "add images without labels to imagesTr/ or train supervised (online=none)")
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    patch = tuple(configuration_manager.patch_size)
    for k, (case, files) in enumerate(sorted(images.items())):
        data, _, props = preprocessor.run_case(list(files), None, plans_manager, configuration_manager, dataset_json)
        data = data.astype(np.float32, copy=False)
        if not np.isfinite(data).all():
            shutil.rmtree(tmp, ignore_errors=True)
            raise SemisamError(f"unlabeled image {files[0]} holds NaN or Inf values; fix or remove it")
        store = np.zeros((1, *data.shape[1:]), dtype=np.int16)  # no pseudo-label yet
        props["class_locations"] = {}
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_s, chunks_s = comp_blosc2_params(store.shape, patch, store.itemsize)
        nnUNetDatasetBlosc2.save_case(data, store, props, str(tmp / case), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_s, blocks_seg=blocks_s)
        if (k + 1) % 50 == 0:
            log(f"semisam: preprocessed {k + 1}/{len(images)} unlabeled cases")
    (tmp / STORE_META).write_text(json.dumps({"refreshed_at_epoch": None, "cases": sorted(images)}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return sorted(images)


def store_epoch(folder: Path) -> int | None:
    """The epoch at which the store was last refreshed (None: never)."""
    meta = folder / STORE_META
    return json.loads(meta.read_text()).get("refreshed_at_epoch") if meta.is_file() else None


def store_cases(folder: Path) -> list[str] | None:
    meta = folder / STORE_META
    return json.loads(meta.read_text()).get("cases") if meta.is_file() else None


def write_store(folder: Path, pseudo: dict[str, np.ndarray], epoch: int, patch_size: Sequence[int]) -> None:
    """Replace the stored pseudo-labels of the given cases (each ``(1, *spatial)``, :func:`encode_store`d; each file swapped in
    atomically, so loader workers read the old or the new one) and stamp the store with ``epoch``."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    for case, arr in pseudo.items():
        arr = np.ascontiguousarray(arr, dtype=np.int16)
        blocks, chunks = comp_blosc2_params(arr.shape, tuple(patch_size), arr.itemsize)
        tmp = folder / f".{case}_seg.tmp.b2nd"
        if tmp.exists():
            tmp.unlink()
        blosc2.asarray(arr, urlpath=str(tmp), chunks=chunks, blocks=blocks)
        os.replace(tmp, folder / f"{case}_seg.b2nd")
    meta = json.loads((folder / STORE_META).read_text())
    meta["refreshed_at_epoch"] = int(epoch)
    tmp = folder / (STORE_META + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / STORE_META)


def read_image(folder: Path, case: str) -> np.ndarray:
    """The preprocessed image ``(C, *spatial)`` of an unlabeled case."""
    import blosc2

    return np.asarray(blosc2.open(urlpath=str(folder / f"{case}.b2nd"), mode="r")[:])


def read_store(folder: Path, case: str) -> np.ndarray:
    """The stored pseudo-label ``(1, *spatial)`` of an unlabeled case (:func:`encode_store`'s values)."""
    import blosc2

    return np.asarray(blosc2.open(urlpath=str(Path(folder) / f"{case}_seg.b2nd"), mode="r")[:])


def unlabeled_loader_class():
    """:class:`UnlabeledDataLoader`, defined on first use (nnU-Net imported lazily)."""
    global UnlabeledDataLoader
    if UnlabeledDataLoader is None:
        from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

        class _UnlabeledDataLoader(nnUNetDataLoader):
            """nnU-Net's loader for the unlabeled folder: random patches (no foreground oversampling: there is
            no label to find foreground in), and batches ``{"data", "pseudo", "keys"}`` — the cropped store is
            handed on as ``pseudo``, never as a target."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.has_ignore = False  # nnU-Net would centre patches on annotated pixels; there are none

            def generate_train_batch(self):
                batch = super().generate_train_batch()
                return {"data": batch["data"], "pseudo": batch.pop("target"), "keys": batch["keys"]}

        UnlabeledDataLoader = _UnlabeledDataLoader
    return UnlabeledDataLoader


UnlabeledDataLoader = None

"""ACDC, cardiac cine-MRI (Bernard et al., IEEE TMI 2018), from its standard download.

Expected under ``--src`` (``--src`` may be the ``database`` folder itself or hold ``database/``):
``database/training/patient001/`` ... and ``database/testing/patient101/`` ..., each patient folder with
``Info.cfg`` (``ED: 1``, ``ES: 12``, ...), the end-diastolic and end-systolic frames
``patient001_frame01.nii.gz``, ``patient001_frame12.nii.gz`` and their ground truths ``..._gt.nii.gz``
(the 4D ``patient001_4d.nii.gz`` is not used).

Conversion: two cases per patient, ``patient001_ED`` and ``patient001_ES``, written as ``.nii.gz`` with the
frames' spacing, origin and direction; labels as released: 1 right ventricle (RV), 2 myocardium (MYO),
3 left ventricle (LV); one channel ``"cineMRI"`` (nnU-Net z-scores it). ``training/`` patients are training
cases, ``testing/`` patients test cases.

Split by patient: ``labeled`` (default 10, i.e. 10 % of the 100 training patients) or ``ratio`` counts
*patients*, drawn with ``seed``; both frames of a patient are labeled or both unlabeled. dataset.json records
``"case_groups"`` (case id -> patient), so that ``data_prep split`` and ``semisam compare`` re-draw by
patient too (:func:`data_prep.split.make_group_split`).
"""
from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path

import numpy as np

from data_prep.sources import locate, write_staged
from data_prep.split import GROUPS_KEY, make_group_split
from semisam.data import Geometry
from semisam.utils.errors import SemisamError

PARTS = ("training", "testing")
FRAMES = ("ED", "ES")
LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
_PATIENT = re.compile(r"^patient\d+$")


def read_info(path: Path) -> dict[str, str]:
    """The ``key: value`` lines of an ACDC ``Info.cfg``.

    Raises:
        SemisamError: the file is missing or lacks an integer ``ED`` / ``ES``.
    """
    if not path.is_file():
        raise SemisamError(f"ACDC patient file {path} does not exist")
    info = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    for key in FRAMES:
        if not info.get(key, "").isdigit():
            raise SemisamError(f"{path} has no '{key}: <frame number>' line")
    return info


def find_acdc(src: str | os.PathLike) -> dict[str, dict[str, tuple[Path, Path]]]:
    """The ED and ES frames of every ACDC patient under ``src`` with their ground truths.

    Returns:
        ``{"training" | "testing": {case id (patient001_ED): (frame file, ground-truth file)}}``.

    Raises:
        SemisamError: the layout is missing (names the expected folder), a part without patients, a missing
            ``Info.cfg``, frame or ground-truth file (named).
    """
    src = Path(src)
    root = locate(src, ["database", "ACDC/database"], lambda p: (p / "training").is_dir(),
                  f"{src / 'database'}/training/patient001/Info.cfg (and database/testing/)")
    out: dict[str, dict[str, tuple[Path, Path]]] = {}
    for part in PARTS:
        folder = root / part
        if not folder.is_dir():
            raise SemisamError(f"ACDC folder {folder} does not exist "
                               f"(expected {root}/{{training,testing}}/patientNNN/)")
        patients = sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT.match(p.name))
        if not patients:
            raise SemisamError(f"{folder} holds no patient folder such as patient001/")
        cases = {}
        for p in patients:
            info = read_info(p / "Info.cfg")
            for key in FRAMES:
                stem = f"{p.name}_frame{int(info[key]):02d}"
                files = (p / f"{stem}.nii.gz", p / f"{stem}_gt.nii.gz")
                for f in files:
                    if not f.is_file():
                        raise SemisamError(f"ACDC file {f} does not exist ({key} is frame {info[key]} in Info.cfg)")
                cases[f"{p.name}_{key}"] = files
        out[part] = cases
    return out


def load_frame(frame: Path, gt: Path) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read one frame and its ground truth.

    Returns:
        ``(image (1, Z, Y, X), label (Z, Y, X) uint8, the frame's geometry)``.

    Raises:
        SemisamError: an unreadable file, or a ground truth whose shape differs from the frame's.
    """
    import SimpleITK as sitk

    try:
        img, lab = sitk.ReadImage(str(frame)), sitk.ReadImage(str(gt))
    except RuntimeError as e:
        raise SemisamError(f"cannot read {frame.name} / {gt.name}: {str(e).strip().splitlines()[-1]}") from None
    image, label = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
    if image.shape != label.shape:
        raise SemisamError(f"{gt} has shape {label.shape} but its frame {frame.name} has {image.shape}")
    if label.size and (label.min() < 0 or label.max() > max(LABELS.values())):
        raise SemisamError(f"{gt} holds values outside 0..3 ({label.min()}..{label.max()})")
    geometry = Geometry(spacing_zyx=tuple(img.GetSpacing()[::-1]), origin_xyz=tuple(img.GetOrigin()),
                        direction=tuple(img.GetDirection()))
    return image[None], label.astype(np.uint8), geometry


def make_acdc(src: str | os.PathLike, out_dir: str | os.PathLike, *, labeled: int | None = 10,
              ratio: float | None = None, seed: int = 0, overwrite: bool = False, verify: bool = False) -> Path:
    """Convert ACDC under ``src`` into a 3D raw dataset with labels RV / MYO / LV at ``out_dir`` (e.g.
    ``Dataset508_ACDC``). ``labeled`` / ``ratio`` count patients; ``ratio`` wins when both are given.

    Raises:
        SemisamError: see :func:`find_acdc` and :func:`load_frame`; bad split arguments; ``out_dir`` exists
            without ``overwrite``.
    """
    found = find_acdc(src)
    train, test = found["training"], found["testing"]
    patient = {cid: cid.rsplit("_", 1)[0] for cid in [*train, *test]}
    split = make_group_split({cid: patient[cid] for cid in train}, labeled=labeled if ratio is None else None,
                             ratio=ratio, seed=seed, test=sorted(test), noun="patient",
                             source="acdc (ED + ES frames; split by patient)")
    loaders = {cid: partial(load_frame, *files) for cid, files in {**train, **test}.items()}
    return write_staged(
        out_dir, loaders=loaders, split=split, file_ending=".nii.gz", overwrite=overwrite, verify=verify,
        name="Dataset508_ACDC", labels=LABELS, channel_names={0: "cineMRI"},
        description="ACDC cardiac cine-MRI, end-diastolic (ED) and end-systolic (ES) frames; "
                    "labels 1 RV, 2 myocardium, 3 LV",
        extra_json={GROUPS_KEY: patient, "license": "the ACDC release's terms (not redistributed by semisam)",
                    "reference": "Bernard et al., IEEE Trans. Med. Imaging 37(11) (2018)"})

"""Left Atrium 2018: LGE-MRI of the 2018 Atrial Segmentation Challenge (Xiong et al., Med. Image Anal. 2021),
in the two layouts that semi-supervised papers use.

Expected under ``--src``, in ``2018LA_Seg_Training Set/`` or ``Training Set/`` (or ``--src`` being that folder),
one folder per case (``<case>/``), either

- **h5** (the preprocessed copy of UA-MT, Yu et al. MICCAI 2019, reused by SSL4MIS and most later papers):
  ``<case>/mri_norm2.h5`` with datasets ``"image"`` (float, z-scored, cropped around the atrium) and
  ``"label"`` (0/1), both in (x, y, z) axis order. The h5 files carry no voxel size: they are written with
  the challenge's published isotropic spacing of 0.625 mm (:data:`H5_SPACING_MM`). Reading them needs
  ``h5py`` (``pip install 'semisam[datasets]'``).
- **nrrd** (the challenge release): ``<case>/lgemri.nrrd`` (the image) and ``<case>/laendo.nrrd`` (the
  atrium, 0/255); spacing, origin and direction are kept from the image's header.

``layout="auto"`` takes h5 when every case folder has ``mri_norm2.h5``, else nrrd. Labels become 0/1
(atrium = label > 0); one channel ``"MRI"`` (nnU-Net z-scores it); written as ``.nii.gz`` in (z, y, x).

Split: the widely used ``train.list`` / ``test.list`` (one case folder name per line: 80 / 20 cases), looked
for in ``--src`` and in the folder of cases; without them the last ``n_test`` (default 20) case folders in
sorted order are the test cases. ``labeled`` (default 8, i.e. 10 %) or ``ratio`` of the training cases are
drawn with ``seed``.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from data_prep.sources import case_id_from_stem, locate, write_staged
from semisam.data import Geometry, make_split
from semisam.utils.errors import SemisamError

FOLDERS = ("2018LA_Seg_Training Set", "Training Set")
H5 = "mri_norm2.h5"
NRRD_IMAGE, NRRD_LABEL = "lgemri.nrrd", "laendo.nrrd"
#: voxel size of the challenge's LGE-MRI (0.625 x 0.625 x 0.625 mm), used for the h5 layout (no header)
H5_SPACING_MM = 0.625
LAYOUTS = ("auto", "h5", "nrrd")


def _case_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _has_case(folder: Path) -> bool:
    return any((d / H5).is_file() or (d / NRRD_IMAGE).is_file() for d in _case_dirs(folder))


def _read_list(path: Path) -> list[str]:
    """Case folder names of a ``train.list`` / ``test.list``: one per line; a line like
    ``<case>/mri_norm2.h5`` names ``<case>``."""
    names = [line.strip().replace("\\", "/").strip("/").split("/")[0] for line in path.read_text().splitlines()]
    return [n for n in names if n]


def find_lists(src: Path, root: Path) -> tuple[list[str], list[str]] | None:
    """``(train names, test names)`` from ``train.list`` and ``test.list`` in ``src`` or ``root``, or None.

    Raises:
        SemisamError: only one of the two files, or a case in both.
    """
    for folder in dict.fromkeys([src, root]):
        train, test = folder / "train.list", folder / "test.list"
        if train.is_file() != test.is_file():
            raise SemisamError(f"found {train if train.is_file() else test} but not "
                               f"{test if train.is_file() else train}; give both or neither")
        if train.is_file():
            names = _read_list(train), _read_list(test)
            both = sorted(set(names[0]) & set(names[1]))
            if both:
                raise SemisamError(f"case '{both[0]}' is in both {train} and {test}")
            return names
    return None


def find_la2018(src: str | os.PathLike, *, layout: str = "auto", n_test: int = 20
                ) -> tuple[str, dict[str, Path], list[str], list[str], str]:
    """Find the LA 2018 cases under ``src`` and their train / test split.

    Returns:
        ``(layout "h5" or "nrrd", {case id: case folder}, training ids, test ids, how the split was made)``.

    Raises:
        SemisamError: unknown ``layout``, the layout is missing (names the expected files), a case folder
            without its files, a listed case without a folder, ``n_test`` leaving no training case.
    """
    if layout not in LAYOUTS:
        raise SemisamError(f"--layout must be one of {', '.join(LAYOUTS)}, got '{layout}'")
    src = Path(src)
    root = locate(src, FOLDERS, _has_case,
                  f"{src / FOLDERS[0]}/<case>/{H5} (h5 layout) or {src / FOLDERS[1]}/<case>/{NRRD_IMAGE} + "
                  f"{NRRD_LABEL} (original layout)")
    lists = find_lists(src, root)
    if lists is not None:
        folders = {}
        for name in lists[0] + lists[1]:
            if not (root / name).is_dir():
                raise SemisamError(f"case '{name}' of train.list / test.list has no folder {root / name}")
            folders[name] = root / name
        train_names, test_names = lists
        how = "train.list / test.list"
    else:
        folders = {d.name: d for d in _case_dirs(root)}
        names = sorted(folders)
        if not 0 <= n_test < len(names):
            raise SemisamError(f"--n-test must be in [0, {len(names) - 1}] for {len(names)} cases, got {n_test}")
        train_names, test_names = names[:len(names) - n_test], names[len(names) - n_test:]
        how = f"no train.list / test.list: the last {n_test} sorted cases are test cases"
    if layout == "auto":
        layout = "h5" if all((d / H5).is_file() for d in folders.values()) else "nrrd"
    needed = (H5,) if layout == "h5" else (NRRD_IMAGE, NRRD_LABEL)
    for d in folders.values():
        for f in needed:
            if not (d / f).is_file():
                other = f" (or {d / H5} for the h5 layout)" if layout == "nrrd" else ""
                raise SemisamError(f"LA 2018 case file {d / f} does not exist{other}")
    ids = {name: case_id_from_stem(name) for name in folders}
    if len(set(ids.values())) != len(ids):
        raise SemisamError("two LA 2018 case folders map to the same case id")
    return (layout, {ids[n]: folders[n] for n in folders}, [ids[n] for n in train_names],
            [ids[n] for n in test_names], how)


def load_h5_case(case_dir: Path) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read ``<case_dir>/mri_norm2.h5``.

    Returns:
        ``(image (1, Z, Y, X) float32, label (Z, Y, X) uint8 in {0, 1}, geometry with 0.625 mm spacing)``.
    """
    try:
        import h5py
    except ImportError:
        raise SemisamError("reading the LA 2018 h5 layout needs h5py: pip install 'semisam[datasets]' "
                           "(or pip install h5py)") from None
    path = case_dir / H5
    try:
        with h5py.File(path, "r") as h5:
            missing = [k for k in ("image", "label") if k not in h5]
            if missing:
                raise SemisamError(f"{path} lacks dataset(s) {missing}; expected 'image' and 'label'")
            image, label = np.asarray(h5["image"], np.float32), np.asarray(h5["label"])
    except OSError as e:
        raise SemisamError(f"cannot read {path}: {e}") from None
    if image.ndim != 3 or image.shape != label.shape:
        raise SemisamError(f"{path}: 'image' {image.shape} and 'label' {label.shape} must be 3D of one shape")
    xyz_to_zyx = (2, 1, 0)
    return (np.ascontiguousarray(image.transpose(xyz_to_zyx))[None],
            np.ascontiguousarray((label > 0).astype(np.uint8).transpose(xyz_to_zyx)),
            Geometry(spacing_zyx=(H5_SPACING_MM,) * 3))


def load_nrrd_case(case_dir: Path) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read ``<case_dir>/lgemri.nrrd`` and ``laendo.nrrd`` with SimpleITK.

    Returns:
        ``(image (1, Z, Y, X), label (Z, Y, X) uint8 in {0, 1}, the image's geometry)``.
    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(case_dir / NRRD_IMAGE))
        lab = sitk.ReadImage(str(case_dir / NRRD_LABEL))
    except RuntimeError as e:
        raise SemisamError(f"cannot read the nrrd files of {case_dir}: {str(e).strip().splitlines()[-1]}") from None
    geometry = Geometry(spacing_zyx=tuple(img.GetSpacing()[::-1]), origin_xyz=tuple(img.GetOrigin()),
                        direction=tuple(img.GetDirection()))
    return sitk.GetArrayFromImage(img)[None], (sitk.GetArrayFromImage(lab) > 0).astype(np.uint8), geometry


def make_la2018(src: str | os.PathLike, out_dir: str | os.PathLike, *, layout: str = "auto", n_test: int = 20,
                labeled: int | None = 8, ratio: float | None = None, seed: int = 0, overwrite: bool = False,
                verify: bool = False) -> Path:
    """Convert LA 2018 under ``src`` into a 3D binary raw dataset at ``out_dir`` (e.g. ``Dataset507_LA2018``).
    ``ratio`` wins over ``labeled`` when both are given.

    Raises:
        SemisamError: see :func:`find_la2018`; an unreadable file; bad split arguments; ``out_dir`` exists
            without ``overwrite``.
    """
    layout, folders, train, test, how = find_la2018(src, layout=layout, n_test=n_test)
    split = make_split(train, labeled=labeled if ratio is None else None, ratio=ratio, seed=seed, test=test,
                       source=f"la2018 ({layout} layout; {how})")
    load = load_h5_case if layout == "h5" else load_nrrd_case
    spacing = (f"; h5 has no voxel size: written at the published {H5_SPACING_MM} mm isotropic"
               if layout == "h5" else "")
    return write_staged(
        out_dir, loaders={cid: partial(load, d) for cid, d in folders.items()}, split=split,
        file_ending=".nii.gz", overwrite=overwrite, verify=verify, name="Dataset507_LA2018",
        labels={"background": 0, "left_atrium": 1}, channel_names={0: "MRI"},
        description=f"Left atrium LGE-MRI, 2018 Atrial Segmentation Challenge ({layout} layout{spacing})",
        extra_json={"license": "the challenge data's terms (not redistributed by semisam)",
                    "reference": "Xiong et al., Med. Image Anal. 67 (2021); h5 layout: Yu et al., UA-MT, MICCAI 2019"})

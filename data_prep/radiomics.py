"""Real 3D data: the five cases in the ``pyradiomics`` 3.0.1 source distribution.

``data/{brain1,brain2,breast1,lung1,lung2}_{image,label}.nrrd``: brain tumour (T1 post-contrast MRI),
breast lesion (MRI) and lung nodule (CT) volumes with binary lesion masks. The sdist is fetched with pip
(``--no-binary :all: --no-build-isolation``; its metadata step needs numpy, setuptools, wheel and
versioneer — versioneer, if missing here, is installed into the cache, not into the environment).

Written as ``.nii.gz`` keeping each volume's spacing, origin and direction; one channel named "MRI" so that
nnU-Net z-scores each image (the set mixes MRI and CT, so CT's global normalisation would be wrong for it).
Labels are binarised (lesion = label > 0). Default split: test = brain2, lung2; training = brain1,
breast1, lung1, of which ``labeled`` (default 1) are drawn with ``seed``.
"""
from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from data_prep.fetch import fetch_package
from semisam.data import CaseData, Geometry, make_split, write_raw_dataset
from semisam.utils.errors import SemisamError
from semisam.utils.registry import suggest

PYRADIOMICS_VERSION = "3.0.1"
ALL_CASES = ("brain1", "brain2", "breast1", "lung1", "lung2")
DEFAULT_TEST = ("brain2", "lung2")


def fetch_sdist() -> Path:
    """The cached pyradiomics 3.0.1 source tarball (downloaded once)."""
    return fetch_package("pyradiomics", PYRADIOMICS_VERSION, sdist=True,
                         build_modules=("numpy", "setuptools", "wheel", "versioneer"))


def load_case(tar: tarfile.TarFile, name: str) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read ``<name>_image.nrrd`` and ``<name>_label.nrrd`` from the sdist.

    Returns:
        ``(image (Z, Y, X) int16, label (Z, Y, X) uint8 in {0, 1}, geometry)``.
    """
    import SimpleITK as sitk

    members = {Path(m.name).name: m for m in tar.getmembers() if "/data/" in m.name and m.name.endswith(".nrrd")}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("image", "label"):
            member = members.get(f"{name}_{kind}.nrrd")
            if member is None:
                raise SemisamError(f"the pyradiomics sdist has no data/{name}_{kind}.nrrd")
            path = Path(tmp) / f"{name}_{kind}.nrrd"
            path.write_bytes(tar.extractfile(member).read())
            out.append(sitk.ReadImage(str(path)))
    img, lab = out
    geometry = Geometry(spacing_zyx=tuple(img.GetSpacing()[::-1]), origin_xyz=tuple(img.GetOrigin()),
                        direction=tuple(img.GetDirection()))
    image = sitk.GetArrayFromImage(img)
    label = (sitk.GetArrayFromImage(lab) > 0).astype(np.uint8)
    return image, label, geometry


def make_radiomics(out_dir: str | os.PathLike, *, cases: tuple[str, ...] = ALL_CASES,
                   test: tuple[str, ...] = DEFAULT_TEST, labeled: int | None = 1, ratio: float | None = None,
                   seed: int = 0, overwrite: bool = False, verify: bool = False, sdist: Path | None = None) -> Path:
    """Write the pyradiomics cases as a 3D binary raw dataset to ``out_dir`` (e.g. ``Dataset502_Radiomics``).

    Raises:
        SemisamError: unknown case names, a test case not among ``cases``, no training case, bad split
            arguments, fetch failure.
    """
    cases = tuple(dict.fromkeys(cases))
    for c in cases + tuple(test):
        if c not in ALL_CASES:
            raise SemisamError(f"unknown radiomics case '{c}'{suggest(c, ALL_CASES)}; choose from {', '.join(ALL_CASES)}")
    missing = [t for t in test if t not in cases]
    if missing:
        raise SemisamError(f"test case(s) {missing} are not among --cases {list(cases)}")
    train = [c for c in cases if c not in test]
    if not train:
        raise SemisamError("no training case left: choose fewer --test cases")
    split = make_split(train, labeled=labeled if ratio is None else None, ratio=ratio, seed=seed, test=test,
                       source=f"radiomics (pyradiomics=={PYRADIOMICS_VERSION} sdist data/)")
    sdist = sdist or fetch_sdist()
    with tarfile.open(sdist) as tar:
        data = {c: load_case(tar, c) for c in cases}
    built = {c: CaseData(c, image[None], label, geometry) for c, (image, label, geometry) in data.items()}
    return write_raw_dataset(
        out_dir, name="Dataset502_Radiomics", cases=[built[c] for c in train], test_cases=[built[c] for c in test],
        labels={"background": 0, "lesion": 1}, file_ending=".nii.gz", channel_names={0: "MRI"}, split=split,
        overwrite=overwrite, verify=verify,
        description="pyradiomics 3.0.1 example data: brain tumour MRI, breast lesion MRI, lung nodule CT",
        extra_json={"license": "BSD-3-Clause (pyradiomics)", "reference": "pyradiomics data/README.md"})

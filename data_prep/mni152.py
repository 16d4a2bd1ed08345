"""Real multi-class MRI: 2D brain-tissue slices of the MNI ICBM152 2009a symmetric template.

The ``nilearn`` 0.14.1 wheel (BSD) ships, in ``nilearn/datasets/data/``, the T1 template
``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` and its grey- and white-matter probability maps
(``..._gm_...``, ``..._wm_...``): 197x233x189 voxels at 1 mm, uint8 0..255. The wheel is fetched with pip by
package name (:mod:`data_prep.fetch`) and the three files are read from it with nibabel; nilearn itself is
never installed or imported.

Steps:

1. **Resample** the three volumes to an isotropic ``spacing`` (mm, default 2) by linear interpolation on a
   grid that starts at the first voxel centre: ``n_out = floor((n - 1) * voxel / spacing) + 1`` per axis
   (197x233x189 at 1 mm -> 99x117x95 at 2 mm).
2. **Label** from the *resampled* probabilities: where the larger of GM and WM exceeds 127 (uint8 scale) the
   voxel is grey matter (1) or white matter (2), whichever is larger (a tie counts as grey matter);
   everything else is background (0). semisam's ignore label (3) is declared by ``write_raw_dataset``.
3. **Slice** along ``axis`` (voxel axis of the template: 0 sagittal, 1 coronal, 2 axial = default) and keep
   the slices with at least ``min_tissue`` GM+WM pixels. The kept slices form one contiguous range.
4. **Split by slabs** (neighbouring slices are nearly identical, so alternating slices would leak): the kept
   range is cut into ``n_test_slabs`` equal segments and a contiguous test slab of
   ``round(test_fraction * kept)`` slices in total (shared out evenly) is centred in each segment. Training
   slices are the kept slices outside the test slabs that are more than ``gap`` slices away from every
   test slice, i.e. ``gap`` slices (``gap * spacing`` mm) on each side of a slab are dropped. The test
   slabs do not depend on ``seed``; ``labeled`` of the training slices are drawn with ``seed`` and the
   others' labels go to ``labelsHidden/``. The template is left-right symmetric, so sagittal slice ``x`` is
   the mirror image of slice ``n - 1 - x`` (and nnU-Net trains with mirroring): along axis 0 a slice is also
   dropped from training when its mirror lies within ``gap`` of a test slice.

Format: ``.nii.gz`` 2D cases of shape (1, Y, X) with the spacing kept (nnU-Net's SimpleITK reader; the 2d
configuration ignores the one-slice Z axis), float32 intensities on the template's 0..255 scale, one channel
named "T1" (nnU-Net z-scores it). In-plane orientation: rows follow the higher remaining voxel axis reversed
(anterior / superior at the top), columns the lower one. Case ids carry the slice index on the resampled
grid and the axis: ``mni152_z040`` (x = sagittal, y = coronal, z = axial).

Defaults (2 mm, axial, min_tissue 50, test_fraction 0.35, 2 test slabs, gap 2): 74 kept slices, 26 test
(two slabs of 13), 40 training (4 labeled, 36 unlabeled) of 117x99 pixels.
"""
from __future__ import annotations

import gzip
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.fetch import fetch_package
from semisam.data import CaseData, Geometry, make_split, write_raw_dataset
from semisam.utils.errors import SemisamError

NILEARN_VERSION = "0.14.1"
MEMBER = "nilearn/datasets/data/mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
KINDS = ("t1", "gm", "wm")
AXIS_LETTERS = ("x", "y", "z")
AXIS_NAMES = ("sagittal", "coronal", "axial")
THRESHOLD = 127
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}


def load_mni152(wheel: Path | None = None) -> tuple[dict[str, np.ndarray], tuple[float, float, float]]:
    """Read the T1 template and the GM / WM probability maps from the nilearn wheel (fetched if not given).

    Returns:
        ``({"t1", "gm", "wm"}: volume (X, Y, Z) float32 on the 0..255 scale, voxel size (mm) per axis)``.
    """
    import nibabel as nib

    wheel = wheel or fetch_package("nilearn", NILEARN_VERSION)
    volumes, zooms = {}, None
    try:
        with zipfile.ZipFile(wheel) as z:
            for kind in KINDS:
                img = nib.Nifti1Image.from_bytes(gzip.decompress(z.read(MEMBER.format(kind=kind))))
                volumes[kind] = np.asarray(img.dataobj, dtype=np.float32)
                zooms = tuple(float(v) for v in img.header.get_zooms()[:3])
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise SemisamError(f"{wheel} does not hold the MNI152 template files ({e})") from None
    shapes = {v.shape for v in volumes.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise SemisamError(f"{wheel}: the MNI152 volumes have different or non-3D shapes {sorted(shapes)}")
    assert zooms is not None
    return volumes, zooms


def resample(volume: np.ndarray, voxel: tuple[float, float, float], spacing: float) -> np.ndarray:
    """Linear resampling of ``volume`` (voxel size ``voxel`` mm) to isotropic ``spacing`` mm.

    The output grid starts at the first voxel centre and has ``floor((n - 1) * voxel / spacing) + 1``
    points per axis, so it never samples outside the volume.
    """
    from scipy import ndimage

    step = [spacing / v for v in voxel]
    shape = tuple(int(math.floor((n - 1) / s + 1e-9)) + 1 for n, s in zip(volume.shape, step))
    return ndimage.affine_transform(volume, step, output_shape=shape, order=1, mode="nearest")


def tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """0 background, 1 grey matter, 2 white matter: the larger probability wins where it exceeds 127."""
    label = np.where(wm > gm, 2, 1).astype(np.uint8)
    label[np.maximum(gm, wm) <= THRESHOLD] = 0
    return label


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` as ``(Y, X)``: rows = the higher remaining axis reversed, columns =
    the lower one (anterior or superior at the top)."""
    return np.take(volume, index, axis=axis).T[::-1]


@dataclass(frozen=True)
class SlabSplit:
    """Slice indices (on the resampled grid) of the training slices and the test slabs."""

    kept: tuple[int, ...]
    train: tuple[int, ...]
    test_slabs: tuple[tuple[int, int], ...]  # inclusive (first, last)

    @property
    def test(self) -> tuple[int, ...]:
        return tuple(i for a, b in self.test_slabs for i in range(a, b + 1))


def slab_split(kept: list[int] | tuple[int, ...], *, test_fraction: float, n_test_slabs: int, gap: int,
               mirror_sum: int | None = None) -> SlabSplit:
    """Place ``n_test_slabs`` contiguous test slabs in the contiguous range ``kept`` (see the module doc).

    With ``mirror_sum`` (slice ``i`` mirrors slice ``mirror_sum - i``), a slice whose mirror lies within
    ``gap`` of a test slice is not used for training either.

    Raises:
        SemisamError: bad fraction / slab count / gap, ``kept`` not contiguous, a slab of 0 slices, or no
            training slice left.
    """
    kept = tuple(sorted(kept))
    if not kept:
        raise SemisamError("no slice holds enough tissue: lower --min-tissue")
    if kept != tuple(range(kept[0], kept[-1] + 1)):
        raise SemisamError(f"the kept slices are not contiguous ({kept[0]}..{kept[-1]}, {len(kept)} slices)")
    if not (isinstance(test_fraction, (int, float)) and 0 <= test_fraction < 1):
        raise SemisamError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if n_test_slabs < 1:
        raise SemisamError(f"--n-test-slabs must be at least 1, got {n_test_slabs}")
    if gap < 0:
        raise SemisamError(f"--gap must be at least 0, got {gap}")
    n, lo = len(kept), kept[0]
    n_test = int(round(test_fraction * n))
    slabs: list[tuple[int, int]] = []
    if n_test:
        if n_test < n_test_slabs:
            raise SemisamError(f"{n_test} test slices (--test-fraction {test_fraction} of {n} kept slices) cannot "
                               f"fill {n_test_slabs} test slabs: use fewer --n-test-slabs or a larger --test-fraction")
        sizes = [n_test // n_test_slabs + (k < n_test % n_test_slabs) for k in range(n_test_slabs)]
        for k, size in enumerate(sizes):
            first = lo + int(math.floor((k + 0.5) * n / n_test_slabs - size / 2))
            first = min(max(first, lo), kept[-1] - size + 1)
            if slabs and first <= slabs[-1][1] + 1:  # touches the previous slab: one longer slab
                slabs[-1] = (slabs[-1][0], max(slabs[-1][1], first + size - 1))
            else:
                slabs.append((first, first + size - 1))
    test = {i for a, b in slabs for i in range(a, b + 1)}
    near = [i for i in kept if all(abs(i - t) > gap for t in test)]
    train = tuple(i for i in near if mirror_sum is None or all(abs(mirror_sum - i - t) > gap for t in test))
    if not train:
        raise SemisamError(f"no training slice left between the test slabs and their {gap}-slice gaps: "
                           "lower --test-fraction, --n-test-slabs or --gap")
    return SlabSplit(kept=kept, train=train, test_slabs=tuple(slabs))


def case_id(axis: int, index: int) -> str:
    return f"mni152_{AXIS_LETTERS[axis]}{index:03d}"


def make_mni152(out_dir: str | os.PathLike, *, axis: int = 2, spacing: float = 2.0, labeled: int | None = 4,
                ratio: float | None = None, seed: int = 0, test_fraction: float = 0.35, n_test_slabs: int = 2,
                gap: int = 2, min_tissue: int = 50, overwrite: bool = False, verify: bool = False,
                wheel: Path | None = None) -> Path:
    """Write MNI152 brain-tissue slices as a 2D 3-label raw dataset to ``out_dir`` (e.g. ``Dataset503_MNI152``).

    Raises:
        SemisamError: bad axis / spacing / min_tissue / slab arguments, bad ``labeled`` / ``ratio``, fetch
            failure.
    """
    if axis not in (0, 1, 2):
        raise SemisamError(f"--axis must be 0, 1 or 2, got {axis}")
    if not (isinstance(spacing, (int, float)) and 1 <= spacing <= 8):
        raise SemisamError(f"--spacing must be between 1 and 8 mm (the template has 1 mm voxels), got {spacing}")
    if min_tissue < 0:
        raise SemisamError(f"--min-tissue must be at least 0, got {min_tissue}")
    if not (isinstance(test_fraction, (int, float)) and 0 <= test_fraction < 1):
        raise SemisamError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    volumes, voxel = load_mni152(wheel)
    res = {k: resample(v, voxel, spacing) for k, v in volumes.items()}
    label = tissue_labels(res["gm"], res["wm"])
    tissue = (label > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    kept = [int(i) for i in np.flatnonzero(tissue >= max(min_tissue, 1))]
    slabs = slab_split(kept, test_fraction=test_fraction, n_test_slabs=n_test_slabs, gap=gap,
                       mirror_sum=label.shape[0] - 1 if axis == 0 else None)
    train_ids = [case_id(axis, i) for i in slabs.train]
    test_ids = [case_id(axis, i) for i in slabs.test]
    where = f"{AXIS_NAMES[axis]}, {spacing:g} mm"
    split = make_split(train_ids, labeled=labeled if ratio is None else None, ratio=ratio, seed=seed, test=test_ids,
                       source=f"mni152 (nilearn=={NILEARN_VERSION} ICBM152 2009a sym, {where}, "
                              f"test slabs {list(slabs.test_slabs)}, gap {gap})")
    geometry = Geometry(spacing_zyx=(float(spacing),) * 3)

    def case(i: int) -> CaseData:
        image = plane(res["t1"], axis, i).astype(np.float32)
        return CaseData(case_id(axis, i), image[None, None], plane(label, axis, i)[None], geometry)

    return write_raw_dataset(
        out_dir, name="Dataset503_MNI152", cases=[case(i) for i in slabs.train],
        test_cases=[case(i) for i in slabs.test], labels=LABELS, file_ending=".nii.gz", channel_names={0: "T1"},
        split=split, overwrite=overwrite, verify=verify,
        description=(f"MNI ICBM152 2009a symmetric T1 template, {where} slices; labels: argmax of the GM/WM "
                     f"probability maps where the larger exceeds {THRESHOLD}/255 (from nilearn {NILEARN_VERSION})"),
        extra_json={"license": "nilearn BSD-3-Clause; MNI ICBM152 2009 template, see its copyright "
                               "(McConnell Brain Imaging Centre, Montreal Neurological Institute)",
                    "reference": "Fonov et al., NeuroImage 54(1):313-327, 2011; Fonov et al., NeuroImage 47:S102, 2009",
                    "slices": {"axis": axis, "spacing_mm": float(spacing), "min_tissue": int(min_tissue),
                               "kept": [slabs.kept[0], slabs.kept[-1]], "gap": int(gap),
                               "test_slabs": [list(s) for s in slabs.test_slabs]}})

"""Small 3D data: the 3D nuclei volume and instance mask that ship in the ``stardist`` 0.9.2 wheel (BSD-3).

``stardist/data/images/img3d.tif`` (31 x 61 x 57 voxels, uint16 104..375) and ``mask3d.tif`` (51 labelled
nuclei) are read from the wheel as :mod:`data_prep.nuclei` reads the 2D pair (stardist's own loader,
``stardist.data.test_image_nuclei_3d``, calls them *synthetic* nuclei: a stand-in for 3D fluorescence, not a
patient scan). The label is binary (nucleus = instance > 0).

The volume is cut into a grid of non-overlapping blocks, ``grid = (nz, ny, nx)`` blocks along z, y, x
(default 2, 3, 3: 18 blocks of 15 x 20 x 19 voxels; a ragged border is dropped), so that there are enough
cases for labeled, unlabeled and test. A nucleus cut by a block border appears in both blocks, as in the 2D
tiles. Case ids are ``nuclei3d_z<k>_y<i>_x<j>``.

Format: ``.nii.gz`` with 1 mm isotropic spacing (the TIFFs carry no voxel size: resolution 1, no unit),
intensities kept as uint16, one channel ``"fluorescence"`` (nnU-Net z-scores it). ``n_test`` blocks (default
6) are held out with ``test_seed``; ``labeled`` (default 2) of the others are drawn with ``seed``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data_prep.nuclei import STARDIST_VERSION, read_wheel_tiffs
from semisam.data import CaseData, Geometry, make_split, write_raw_dataset
from semisam.utils.errors import SemisamError

IMAGE_MEMBER = "stardist/data/images/img3d.tif"
MASK_MEMBER = "stardist/data/images/mask3d.tif"
DEFAULT_GRID = (2, 3, 3)
MIN_BLOCK = 4
SPACING_MM = 1.0


def load_nuclei3d(wheel: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the 3D image and instance mask from the stardist wheel (fetched if not given).

    Returns:
        ``(image (Z, Y, X) uint16, instances (Z, Y, X) int)``.
    """
    image, mask = read_wheel_tiffs((IMAGE_MEMBER, MASK_MEMBER), wheel)
    if image.ndim != 3 or image.shape != mask.shape:
        raise SemisamError(f"stardist's 3D image {image.shape} and mask {mask.shape} are not one 3D shape")
    return image, mask


def block_grid(volume_zyx: np.ndarray, grid: tuple[int, int, int]) -> dict[tuple[int, int, int], np.ndarray]:
    """Cut ``volume_zyx`` into ``grid`` non-overlapping blocks of equal size (a ragged border is dropped).

    Returns:
        ``{(k, i, j): block}`` in z, y, x order.

    Raises:
        SemisamError: a grid entry below 1, or blocks smaller than 4 voxels along an axis.
    """
    if len(grid) != 3 or any(int(n) < 1 for n in grid):
        raise SemisamError(f"--grid needs three block counts >= 1 (z,y,x), got {','.join(map(str, grid))}")
    side = [s // n for s, n in zip(volume_zyx.shape, grid)]
    if min(side) < MIN_BLOCK:
        limit = ",".join(str(s // MIN_BLOCK) for s in volume_zyx.shape)
        raise SemisamError(f"--grid {','.join(map(str, grid))} makes blocks of {'x'.join(map(str, side))} voxels; "
                           f"each side needs at least {MIN_BLOCK} (at most {limit} blocks for a "
                           f"{'x'.join(map(str, volume_zyx.shape))} volume)")
    return {(k, i, j): volume_zyx[k * side[0]:(k + 1) * side[0], i * side[1]:(i + 1) * side[1],
                                  j * side[2]:(j + 1) * side[2]]
            for k in range(grid[0]) for i in range(grid[1]) for j in range(grid[2])}


def make_nuclei3d(out_dir: str | os.PathLike, *, grid: tuple[int, int, int] = DEFAULT_GRID, labeled: int | None = 2,
                  ratio: float | None = None, n_test: int = 6, seed: int = 0, test_seed: int = 0,
                  overwrite: bool = False, verify: bool = False, wheel: Path | None = None) -> Path:
    """Write the 3D nuclei blocks as a 3D binary raw dataset to ``out_dir`` (e.g. ``Dataset509_Nuclei3D``).

    With the defaults: 18 blocks → 12 training (2 labeled, 10 unlabeled with hidden labels) and 6 test.
    ``ratio`` wins over ``labeled`` when both are given.

    Raises:
        SemisamError: a bad ``grid`` (see :func:`block_grid`), ``n_test`` leaving no training block, bad
            ``labeled`` / ``ratio``, fetch failure.
    """
    image, mask = load_nuclei3d(wheel)
    grid = tuple(int(n) for n in grid)
    images, masks = block_grid(image, grid), block_grid(mask, grid)
    ids = {kij: f"nuclei3d_z{kij[0]}_y{kij[1]}_x{kij[2]}" for kij in images}
    if not 0 <= n_test < len(ids):
        raise SemisamError(f"--n-test must be in [0, {len(ids) - 1}] for {len(ids)} blocks (--grid "
                           f"{','.join(map(str, grid))}), got {n_test}")
    all_ids = list(ids.values())
    order = np.random.default_rng(test_seed).permutation(len(all_ids))
    test_ids = sorted(all_ids[i] for i in order[:n_test])
    train_ids = sorted(set(all_ids) - set(test_ids))
    split = make_split(train_ids, labeled=labeled if ratio is None else None, ratio=ratio, seed=seed, test=test_ids,
                       source=f"nuclei3d (stardist=={STARDIST_VERSION} img3d.tif, grid {','.join(map(str, grid))})")
    geometry = Geometry(spacing_zyx=(SPACING_MM,) * 3)
    cases = {cid: CaseData(cid, images[kij][None], (masks[kij] > 0).astype(np.uint8), geometry)
             for kij, cid in ids.items()}
    return write_raw_dataset(
        out_dir, name="Dataset509_Nuclei3D", cases=[cases[c] for c in train_ids],
        test_cases=[cases[c] for c in test_ids], labels={"background": 0, "nucleus": 1}, file_ending=".nii.gz",
        channel_names={0: "fluorescence"}, split=split, overwrite=overwrite, verify=verify,
        description=f"stardist {STARDIST_VERSION} synthetic 3D nuclei (img3d.tif), blocks of a "
                    f"{','.join(map(str, grid))} grid; no voxel size in the source: written at {SPACING_MM} mm",
        extra_json={"license": "BSD-3-Clause (stardist)",
                    "reference": "stardist.data.test_image_nuclei_3d (Weigert et al., WACV 2020)"})

"""Real 2D data: the DSB 2018 nuclei image and mask that ship in the ``stardist`` 0.9.2 wheel (BSD-3).

The wheel is fetched with pip by package name and cached (:mod:`data_prep.fetch`); the 512x512 image
``stardist/data/images/img2d.tif`` and its instance mask ``mask2d.tif`` are read from the wheel with
tifffile and cut into non-overlapping square tiles. The label is binary (nucleus = instance > 0).

Format: 2D PNG (nnU-Net's NaturalImage2DIO). The source is uint16 with values 0..235, so the PNG keeps the
intensities exactly (8-bit when they fit, 16-bit otherwise). Tile ids are ``nuclei_r<row>_c<col>``.
``n_test`` tiles are held out by a draw with ``test_seed`` (fixed by default, so every labeled split is
scored on the same test tiles); ``labeled`` of the remaining tiles are drawn with ``seed``.

More test tiles: ``n_test`` may be anything up to all tiles but one (64 tiles at ``tile=64``; ``tile=32``
gives 256 tiles of 32x32, e.g. ``n_test=128`` leaves 128 training tiles). The test tiles are the first
``n_test`` of one fixed permutation, so a larger ``n_test`` keeps the smaller one's tiles.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from data_prep.fetch import fetch_package
from semisam.data import CaseData, make_split, write_raw_dataset
from semisam.utils.errors import SemisamError

STARDIST_VERSION = "0.9.2"
IMAGE_MEMBER = "stardist/data/images/img2d.tif"
MASK_MEMBER = "stardist/data/images/mask2d.tif"


def load_nuclei(wheel: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the DSB 2018 image and instance mask from the stardist wheel (fetched if not given).

    Returns:
        ``(image (Y, X) uint16, instances (Y, X) int)``.
    """
    image, mask = read_wheel_tiffs((IMAGE_MEMBER, MASK_MEMBER), wheel)
    return image, mask


def read_wheel_tiffs(members: tuple[str, ...], wheel: Path | None = None) -> list[np.ndarray]:
    """Read TIFF files ``members`` from the stardist wheel (fetched if not given), in order.

    Raises:
        SemisamError: the wheel is not a zip file or lacks a member; fetch failure.
    """
    import tifffile

    wheel = wheel or fetch_package("stardist", STARDIST_VERSION)
    try:
        with zipfile.ZipFile(wheel) as z:
            return [tifffile.imread(io.BytesIO(z.read(m))) for m in members]
    except (KeyError, zipfile.BadZipFile) as e:
        raise SemisamError(f"{wheel} does not hold the stardist nuclei files ({e})") from None


def tile_grid(image_yx: np.ndarray, tile: int) -> dict[tuple[int, int], np.ndarray]:
    """Cut ``image_yx`` into non-overlapping ``tile`` x ``tile`` pieces (a ragged border is dropped).

    Returns:
        ``{(row, col): piece (tile, tile)}`` in row-major order.
    """
    rows, cols = image_yx.shape[0] // tile, image_yx.shape[1] // tile
    return {(r, c): image_yx[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
            for r in range(rows) for c in range(cols)}


def make_nuclei(out_dir: str | os.PathLike, *, tile: int = 64, labeled: int | None = 4, ratio: float | None = None,
                n_test: int = 16, seed: int = 0, test_seed: int = 0, overwrite: bool = False, verify: bool = False,
                wheel: Path | None = None) -> Path:
    """Write the nuclei tiles as a 2D binary raw dataset to ``out_dir`` (e.g. ``Dataset501_Nuclei``).

    With the defaults: 64 tiles of 64x64 → 48 training (4 labeled, 44 unlabeled with hidden labels) and
    16 test tiles.

    Raises:
        SemisamError: the tile size leaves too few tiles, bad ``labeled`` / ``ratio``, fetch failure.
    """
    if not 16 <= tile <= 256:
        raise SemisamError(f"--tile must be between 16 and 256 (the image is 512x512), got {tile}")
    image, mask = load_nuclei(wheel)
    images, masks = tile_grid(image, tile), tile_grid(mask, tile)
    ids = {rc: f"nuclei_r{rc[0]}_c{rc[1]}" for rc in images}
    if not 0 <= n_test < len(ids):
        raise SemisamError(f"--n-test must be in [0, {len(ids) - 1}] for {len(ids)} tiles of {tile}x{tile}, "
                           f"got {n_test} (a smaller --tile gives more tiles)")
    order = np.random.default_rng(test_seed).permutation(len(ids))
    all_ids = list(ids.values())
    test_ids = sorted(all_ids[i] for i in order[:n_test])
    train_ids = sorted(set(all_ids) - set(test_ids))
    split = make_split(train_ids, labeled=labeled if ratio is None else None, ratio=ratio, seed=seed,
                       test=test_ids, source=f"nuclei (stardist=={STARDIST_VERSION} img2d.tif, tile {tile})")
    cases = {cid: CaseData(cid, images[rc][None, None], (masks[rc] > 0).astype(np.uint8)[None])
             for rc, cid in ids.items()}
    return write_raw_dataset(
        out_dir, name="Dataset501_Nuclei", cases=[cases[c] for c in train_ids], test_cases=[cases[c] for c in test_ids],
        labels={"background": 0, "nucleus": 1}, file_ending=".png", channel_names={0: "fluorescence"},
        split=split, overwrite=overwrite, verify=verify,
        description=f"DSB 2018 nuclei (fluorescence), tiles {tile}x{tile} of the image shipped in stardist {STARDIST_VERSION}",
        extra_json={"license": "BSD-3-Clause (stardist); DSB 2018 data CC0",
                    "reference": "Caicedo et al., Nature Methods 2019 (Data Science Bowl 2018)"})

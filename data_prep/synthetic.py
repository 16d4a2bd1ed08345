"""Synthetic nnU-Net raw datasets for tests: blobs on a smooth background, deterministic by seed.

Each case is a smooth background (a random low-frequency gradient) with one to three randomly rotated
ellipses (2D) or ellipsoids (3D) per foreground class; class ``k`` is brighter than class ``k - 1`` by
``contrast / n_classes``; Gaussian noise of standard deviation ``noise`` is added (intensities in [0, 1]
before noise). ``shape_variability`` in [0, 1] scales how much radii and elongation vary between objects.

2D datasets are written as 8-bit PNG (nnU-Net's NaturalImage2DIO), 3D as float32 ``.nii.gz`` with 1 mm
spacing (SimpleITKIO). 3D volumes are ``size`` cubed (use ``size=32`` for fast tests).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from semisam.data import CaseData, Geometry, make_split, write_raw_dataset
from semisam.utils.errors import SemisamError


def _random_rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A uniformly random rotation matrix ``(dim, dim)``."""
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def synthetic_case(rng: np.random.Generator, *, shape: tuple[int, ...], n_classes: int, noise: float,
                   contrast: float, shape_variability: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw one case.

    Args:
        rng: the generator (the case is a pure function of its state).
        shape: spatial shape ``(Y, X)`` or ``(Z, Y, X)``.
        n_classes: number of foreground classes.
        noise: standard deviation of the additive Gaussian noise.
        contrast: intensity step between background and the brightest class.
        shape_variability: 0 = all objects round and equal-sized; 1 = radii vary by ±60 %, strongly elongated.

    Returns:
        ``(image float32 of shape, label uint8 of shape)`` with label values in ``0..n_classes``.
    """
    dim = len(shape)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    coords = np.stack(grids, axis=-1)  # (*shape, dim)
    tilt = rng.uniform(-1, 1, size=dim) / np.asarray(shape, dtype=np.float32)
    image = 0.15 + 0.1 * (coords @ tilt.astype(np.float32))  # smooth background in ~[0.05, 0.25]
    label = np.zeros(shape, dtype=np.uint8)
    base_radius = 0.12 * min(shape)
    for k in range(1, n_classes + 1):
        intensity = 0.2 + contrast * 0.7 * k / n_classes
        for _ in range(int(rng.integers(1, 4))):
            radii = base_radius * (1 + shape_variability * rng.uniform(-0.6, 0.6, size=dim))
            radii = np.maximum(radii, 1.5)
            margin = radii.max() + 1
            centre = np.array([rng.uniform(margin, s - 1 - margin) if s - 1 > 2 * margin else (s - 1) / 2
                               for s in shape])
            rot = _random_rotation(rng, dim) if shape_variability > 0 else np.eye(dim)
            local = (coords - centre) @ rot.astype(np.float32)
            inside = np.sum((local / radii.astype(np.float32)) ** 2, axis=-1) <= 1.0
            label[inside] = k
            image[inside] = intensity
    image = image + rng.normal(0.0, noise, size=shape).astype(np.float32)
    return image.astype(np.float32), label


def make_synthetic(out_dir: str | os.PathLike, *, dim: int = 2, n_classes: int = 1, n_train: int = 8,
                   n_test: int = 4, n_labeled: int = 2, size: int = 64, noise: float = 0.1,
                   contrast: float = 1.0, shape_variability: float = 0.3, seed: int = 0, dataset_id: int = 900,
                   name: str = "Synthetic", overwrite: bool = False, verify: bool = False) -> Path:
    """Write a synthetic raw dataset to ``out_dir`` (the dataset folder itself, conventionally
    ``DatasetNNN_Name``; ``dataset_id`` and ``name`` only name it in dataset.json).

    Training cases are ``case_000 ...``, test cases ``test_000 ...``; ``n_labeled`` training cases drawn
    with ``seed`` are labeled, the others' labels go to labelsHidden. The same arguments give the same
    files.

    Returns:
        ``out_dir``.

    Raises:
        SemisamError: invalid arguments, ``out_dir`` exists without ``overwrite``.
    """
    if dim not in (2, 3):
        raise SemisamError(f"--dim must be 2 or 3, got {dim}")
    if n_classes < 1 or n_train < 1 or n_test < 0 or size < 8:
        raise SemisamError("need n_classes >= 1, n_train >= 1, n_test >= 0 and size >= 8")
    if noise < 0 or not 0 <= shape_variability <= 1 or contrast <= 0:
        raise SemisamError("need noise >= 0, shape_variability in [0, 1] and contrast > 0")
    shape = (size,) * dim
    train_ids = [f"case_{i:03d}" for i in range(n_train)]
    test_ids = [f"test_{i:03d}" for i in range(n_test)]
    split = make_split(train_ids, labeled=n_labeled, seed=seed, test=test_ids, source="synthetic")
    file_ending = ".png" if dim == 2 else ".nii.gz"

    def build(index: int, cid: str) -> CaseData:
        rng = np.random.default_rng([seed, index])
        image, label = synthetic_case(rng, shape=shape, n_classes=n_classes, noise=noise, contrast=contrast,
                                      shape_variability=shape_variability)
        if dim == 2:
            image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)[None, None]
            return CaseData(cid, image, label[None])
        return CaseData(cid, image[None], label, Geometry(spacing_zyx=(1.0, 1.0, 1.0)))

    cases = [build(i, cid) for i, cid in enumerate(train_ids)]
    tests = [build(n_train + i, cid) for i, cid in enumerate(test_ids)]
    labels = {"background": 0, **{f"class{k}" if n_classes > 1 else "foreground": k for k in range(1, n_classes + 1)}}
    return write_raw_dataset(
        out_dir, name=f"Dataset{dataset_id:03d}_{name}", cases=cases, test_cases=tests, labels=labels,
        file_ending=file_ending, channel_names={0: "synthetic"}, split=split, overwrite=overwrite, verify=verify,
        description=f"synthetic {dim}D blobs: n_classes={n_classes} size={size} noise={noise} "
                    f"contrast={contrast} shape_variability={shape_variability} seed={seed}",
        extra_json={"license": "CC0 (generated)"})

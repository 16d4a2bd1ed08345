"""Overlay gallery: a PNG with one row per case, columns image / student / SAM / fused-accepted.

Labels are drawn as translucent colour fills with contours over the image, grey or, for an RGB case, in colour
(class k gets colour k of matplotlib's ``tab10``); in the fused column, pixels set to the ignore label
(rejected) are shown as a grey hatched area.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from semisam.tracking.plots import save_figure

IGNORE_RGBA = (0.5, 0.5, 0.5, 0.55)
COLUMNS = ("image", "student", "SAM", "fused / accepted")


def normalize_image(image_yx: np.ndarray) -> np.ndarray:
    """Scale an image to [0, 1] between its 1st and 99th percentile.

    Args:
        image_yx: (Y, X) float or int array.

    Returns:
        (Y, X) float32 in [0, 1] (all zeros for a constant image).
    """
    image = np.asarray(image_yx, dtype=np.float32)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image)
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo), 0, 1)


def label_rgba(labels_yx: np.ndarray, ignore_label: int | None, alpha: float = 0.4) -> np.ndarray:
    """Colour a label map: background transparent, class k -> ``tab10`` colour k, ignore -> grey.

    Args:
        labels_yx: (Y, X) int labels (0 = background).
        ignore_label: the ignore label value, or None.
        alpha: opacity of the class colours.

    Returns:
        (Y, X, 4) float RGBA in [0, 1].
    """
    labels = np.asarray(labels_yx)
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    cmap = colormaps["tab10"]
    for k in np.unique(labels):
        if k == 0:
            continue
        if ignore_label is not None and k == ignore_label:
            rgba[labels == k] = IGNORE_RGBA
        else:
            r, g, b, _ = cmap((int(k) - 1) % 10)
            rgba[labels == k] = (r, g, b, alpha)
    return rgba


def _to_2d(item: Mapping[str, Any]) -> dict[str, np.ndarray | None]:
    """Squeeze leading singleton axes; for a 3D case keep the slice with the most student foreground. An RGB
    item (``rgb`` true: ``image`` is ``(3, [Z,] Y, X)``) comes back as a ``(Y, X, 3)`` colour image."""
    arrays = {k: None if item.get(k) is None else np.asarray(item[k]) for k in ("image", "student", "teacher", "pseudo")}
    if arrays["image"] is None:
        raise ValueError(f"gallery item {item.get('case_id')!r} has no image")
    rgb = bool(item.get("rgb"))
    if rgb:  # each colour channel goes through the same squeezing and slicing as a grey image
        if arrays["image"].ndim not in (3, 4) or arrays["image"].shape[0] != 3:
            raise ValueError(f"gallery item {item.get('case_id')!r}: an RGB image is (3, [Z,] Y, X), "
                             f"got {arrays['image'].shape}")
        arrays.update({f"image{c}": arrays["image"][c] for c in range(3)}, image=arrays["image"][0])
    for key, arr in arrays.items():
        while arr is not None and arr.ndim > 2 and arr.shape[0] == 1:
            arr = arr[0]
        arrays[key] = arr
    image = arrays["image"]
    if image.ndim == 3:  # (Z, Y, X): pick one slice for all arrays
        ref = next((arrays[k] for k in ("student", "pseudo", "teacher") if arrays[k] is not None), None)
        z = int(np.argmax((ref > 0).sum(axis=(1, 2)))) if ref is not None and ref.ndim == 3 else image.shape[0] // 2
        arrays = {k: None if a is None else (a[z] if a.ndim == 3 else a) for k, a in arrays.items()}
    for key, arr in arrays.items():
        if arr is not None and arr.shape != arrays["image"].shape:
            raise ValueError(f"gallery item {item.get('case_id')!r}: {key} has shape {arr.shape}, "
                             f"image has {arrays['image'].shape}")
    if rgb:
        arrays["image"] = np.stack([arrays.pop(f"image{c}") for c in range(3)], axis=-1)
    return arrays


def _draw_labels(ax: Any, image01: np.ndarray, labels: np.ndarray | None, ignore_label: int | None) -> None:
    ax.imshow(image01, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if labels is None:
        ax.text(0.5, 0.5, "n/a", transform=ax.transAxes, ha="center", va="center", color="white",
                bbox={"facecolor": "black", "alpha": 0.7})
        return
    ax.imshow(label_rgba(labels, ignore_label), interpolation="nearest")
    cmap = colormaps["tab10"]
    for k in np.unique(labels):
        if k == 0:
            continue
        mask = (labels == k).astype(np.float32)
        if ignore_label is not None and k == ignore_label:
            ax.contourf(mask, levels=[0.5, 1.5], colors="none", hatches=["////"])
            continue
        if mask.min() < 1:  # a contour needs both sides
            ax.contour(mask, levels=[0.5], colors=[cmap((int(k) - 1) % 10)], linewidths=1.0)


def overlay_gallery(
    items: Sequence[Mapping[str, Any]],
    ignore_label: int | None,
    out_file: str | os.PathLike,
    max_cases: int = 4,
    title: str | None = None,
) -> Path:
    """Draw up to ``max_cases`` cases, one row each, and write one PNG atomically.

    Args:
        items: dicts with ``case_id`` (str), ``image`` (Y, X) float (``(3, Y, X)`` with ``rgb`` true: drawn in
            colour, the three channels scaled together), ``student`` (Y, X) int labels,
            ``teacher`` (Y, X) int labels from SAM (or None: drawn as "n/a"), ``pseudo`` (Y, X) int fused
            pseudo-label where rejected pixels carry ``ignore_label``. Leading singleton axes are squeezed;
            (Z, Y, X) arrays are shown at the slice with the most foreground.
        ignore_label: the ignore label value (drawn grey and hatched), or None.
        out_file: the PNG path.
        max_cases: rows drawn at most (the first ``max_cases`` items).
        title: optional figure title.

    Returns:
        ``out_file`` as a Path.

    Raises:
        ValueError: no items, or an item's arrays disagree in shape.
    """
    items = list(items)[: max(1, int(max_cases))]
    if not items:
        raise ValueError("overlay_gallery needs at least one item")
    cell = 2.6
    fig = Figure(figsize=(cell * len(COLUMNS), cell * len(items)))
    axes = fig.subplots(len(items), len(COLUMNS), squeeze=False)
    for row, item in enumerate(items):
        arrays = _to_2d(item)
        image01 = normalize_image(arrays["image"])
        columns = (None, arrays["student"], arrays["teacher"], arrays["pseudo"])
        for col, labels in enumerate(columns):
            ax = axes[row, col]
            if col == 0:
                ax.imshow(image01, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                _draw_labels(ax, image01, labels, ignore_label if col == 3 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(COLUMNS[col], fontsize=10)
        axes[row, 0].set_ylabel(str(item.get("case_id", row)), fontsize=9)
        pseudo = arrays["pseudo"]
        if pseudo is not None and ignore_label is not None:
            kept = float(np.mean(pseudo != ignore_label))
            axes[row, 3].set_xlabel(f"kept {100 * kept:.0f} %", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_file)

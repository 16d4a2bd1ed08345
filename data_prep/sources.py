"""Shared steps of the converters for public datasets that users download themselves.

``busi``, ``kvasir``, ``isic2018``, ``la2018`` and ``acdc`` read a release from ``--src`` in its standard layout.
Each converter finds its files (:func:`locate`: a clear error naming the expected file or folder otherwise),
draws the split, and hands one loader per case to :func:`write_staged`. That loads one case at a time, writes
its files into a temporary sibling folder ``.<out>.stage-*`` and passes them to
:func:`semisam.data.write_raw_dataset`, which copies them into the dataset (checking shapes and label values),
runs nnU-Net's integrity check and renames the finished folder to ``--out``. A large release (ISIC 2018:
2,594 images, several thousand pixels wide) therefore never has to fit in memory, and on any error nothing
is left behind: the staging folder is removed in every case.

2D images are read with Pillow: grayscale sources are converted to one channel (``"L"``, exact for RGB files
whose three channels are equal), colour ones to three (R, G, B; written as ``_0000``, ``_0001``, ``_0002``).
Masks are binarised at ``> 127`` (JPEG masks carry intermediate values near edges); an optional
``max_size`` shrinks the longest side (image: antialiased bilinear, label: nearest neighbour).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from semisam.data import CaseData, Geometry, Split, write_array, write_raw_dataset
from semisam.utils.errors import SemisamError

#: a case loader: ``() -> (image (C, Z, Y, X), label (Z, Y, X) integers, geometry or None)``
CaseLoader = Callable[[], tuple[np.ndarray, np.ndarray, Geometry | None]]

MASK_THRESHOLD = 127
#: channel names of an RGB image written as three channels
RGB_CHANNELS = {0: "R", 1: "G", 2: "B"}


def locate(src: str | os.PathLike, subfolders: Sequence[str], is_root: Callable[[Path], bool],
           expected: str) -> Path:
    """The folder of a release under ``src``: the first of ``src / s`` for ``s`` in ``subfolders``, then
    ``src`` itself, for which ``is_root`` holds.

    Raises:
        SemisamError: ``src`` does not exist, or no candidate holds the layout (the message names
            ``expected``, e.g. ``"<src>/Kvasir-SEG/images/*.jpg"``).
    """
    src = Path(src)
    if not src.is_dir():
        raise SemisamError(f"--src {src} does not exist or is not a folder")
    for folder in [src / s for s in subfolders] + [src]:
        if folder.is_dir() and is_root(folder):
            return folder
    raise SemisamError(f"--src {src} does not have the expected layout: expected {expected}")


def check_out(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Fail before any conversion work when ``out_dir`` exists and ``overwrite`` is off (the message of
    :func:`semisam.utils.io.atomic_dir`, which checks again at the end)."""
    if Path(out_dir).exists() and not overwrite:
        raise SemisamError(f"{out_dir} already exists; remove it or pass the overwrite option")


def case_id_from_stem(stem: str) -> str:
    """A valid nnU-Net / semisam case id from a file stem: characters other than letters, digits, ``_``,
    ``.`` and ``-`` become ``_`` (Kvasir's and ISIC's stems are kept as they are)."""
    cid = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.-")
    if not cid:
        raise SemisamError(f"cannot make a case id from the file name '{stem}'")
    return cid


def holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``round(fraction * n)`` of ``ids`` as test cases, drawn with ``seed``.

    The test cases are the first ones of one permutation of the sorted ids, so a larger ``fraction`` keeps a
    smaller one's test cases.

    Returns:
        ``(training ids, test ids)``, each sorted.

    Raises:
        SemisamError: ``fraction`` outside [0, 1) or no training case left.
    """
    if not 0.0 <= fraction < 1.0:
        raise SemisamError(f"--test-fraction must be in [0, 1), got {fraction}")
    ids = sorted(ids)
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    n_test = int(round(fraction * len(ids)))
    test = sorted(ids[i] for i in order[:n_test])
    train = sorted(set(ids) - set(test))
    if not train:
        raise SemisamError(f"--test-fraction {fraction} leaves no training case of {len(ids)}")
    return train, test


# --------------------------------------------------------------------------------------------- 2D images
def paired_files(image_dir: Path, mask_dir: Path, *, mask_suffix: str = "", mask_ending: str | None = None,
                 image_ending: str = ".jpg") -> dict[str, tuple[Path, Path]]:
    """Pair every ``<stem><image_ending>`` of ``image_dir`` with ``<stem><mask_suffix><mask_ending>`` in
    ``mask_dir`` (``mask_ending`` defaults to ``image_ending``).

    Returns:
        ``{case id: (image file, mask file)}`` sorted by id.

    Raises:
        SemisamError: a folder without images, an image without its mask (named), two stems mapping to one
            case id.
    """
    mask_ending = mask_ending or image_ending
    images = sorted(f for f in image_dir.iterdir() if f.name.lower().endswith(image_ending) and f.is_file())
    if not images:
        raise SemisamError(f"{image_dir} holds no {image_ending} image")
    out: dict[str, tuple[Path, Path]] = {}
    for f in images:
        stem = f.name[: -len(image_ending)]
        mask = mask_dir / f"{stem}{mask_suffix}{mask_ending}"
        if not mask.is_file():
            raise SemisamError(f"image {f} has no mask: expected {mask}")
        cid = case_id_from_stem(stem)
        if cid in out:
            raise SemisamError(f"images {out[cid][0].name} and {f.name} both become case id '{cid}'")
        out[cid] = (f, mask)
    return out


def check_max_size(max_size: int | None) -> None:
    """Refuse a ``--max-size`` below 16 pixels."""
    if max_size is not None and max_size < 16:
        raise SemisamError(f"--max-size must be at least 16 pixels, got {max_size}")


def _open(path: Path, mode: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, UnidentifiedImageError) as e:
        raise SemisamError(f"cannot read image {path}: {e}") from None


def _shrunk_size(size_xy: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    w, h = size_xy
    if max_size is None or max(w, h) <= max_size:
        return w, h
    scale = max_size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def load_2d_case(image_file: Path, mask_files: Sequence[Path], *, rgb: bool,
                 max_size: int | None = None) -> tuple[np.ndarray, np.ndarray, None]:
    """Read one 2D image and the union of its binary masks.

    Args:
        image_file: the image (any format Pillow reads; RGB or grayscale on disk).
        mask_files: one or more masks of the same size; a pixel is foreground where any mask is ``> 127``
            (after conversion to grayscale).
        rgb: three channels (R, G, B) when True, else one grayscale channel.
        max_size: shrink so that the longest side is at most this many pixels (None: keep the size).

    Returns:
        ``(image (C, 1, Y, X) uint8, label (1, Y, X) uint8 in {0, 1}, None)``.

    Raises:
        SemisamError: an unreadable file, or a mask whose size differs from the image's.
    """
    from PIL import Image

    img = _open(image_file, "RGB" if rgb else "L")
    fg = np.zeros((img.height, img.width), bool)
    for f in mask_files:
        mask = _open(f, "L")
        if mask.size != img.size:
            raise SemisamError(f"mask {f} is {mask.width}x{mask.height} pixels but its image {image_file.name} "
                               f"is {img.width}x{img.height}")
        fg |= np.asarray(mask) > MASK_THRESHOLD
    size = _shrunk_size(img.size, max_size)
    label = Image.fromarray(fg.astype(np.uint8))
    if size != img.size:
        resampling = getattr(Image, "Resampling", Image)  # Pillow >= 9.1, else the old constants
        img = img.resize(size, resampling.BILINEAR)
        label = label.resize(size, resampling.NEAREST)
    image = np.asarray(img)
    image_cyx = image.transpose(2, 0, 1) if rgb else image[None]
    return np.ascontiguousarray(image_cyx[:, None]), np.asarray(label)[None], None


# --------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary folder next to ``out_dir`` (same filesystem), removed on exit whatever happens."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stage-", dir=out_dir.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _stage_case(stage: Path, case_id: str, loader: CaseLoader, file_ending: str) -> CaseData:
    image, label, geometry = loader()
    (stage / "images").mkdir(exist_ok=True)
    (stage / "labels").mkdir(exist_ok=True)
    files = tuple(stage / "images" / f"{case_id}_{c:04d}{file_ending}" for c in range(image.shape[0]))
    for c, f in enumerate(files):
        write_array(image[c], f, geometry, seg=False)
    label_file = stage / "labels" / f"{case_id}{file_ending}"
    write_array(label, label_file, geometry, seg=True)
    return CaseData(case_id, files, label_file)


def write_staged(out_dir: str | os.PathLike, *, loaders: Mapping[str, CaseLoader], split: Split,
                 file_ending: str, overwrite: bool = False, verify: bool = False, **dataset: object) -> Path:
    """Load, stage and write every case of ``split`` (training and test) with its loader, then write the
    dataset with :func:`semisam.data.write_raw_dataset` (``dataset``: its ``name``, ``labels``,
    ``channel_names``, ``description``, ``extra_json``).

    Raises:
        SemisamError: ``out_dir`` exists without ``overwrite``, a loader's error, or anything
            ``write_raw_dataset`` refuses. Nothing is left behind.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    check_out(out_dir, overwrite)
    with staging_dir(out_dir) as stage:
        staged = {cid: _stage_case(stage, cid, loaders[cid], file_ending)
                  for cid in tqdm(split.training + split.test, desc=f"converting to {out_dir.name}", unit="case",
                                  disable=None, leave=False)}
        return write_raw_dataset(out_dir, cases=[staged[c] for c in split.training],
                                 test_cases=[staged[c] for c in split.test], file_ending=file_ending, split=split,
                                 overwrite=overwrite, verify=verify, **dataset)  # type: ignore[arg-type]


def write_rgb_2d(out_dir: str | os.PathLike, pairs: Mapping[str, tuple[Path, Path]], train: Sequence[str],
                 test: Sequence[str], *, labeled: int | None, ratio: float | None, seed: int, source: str,
                 max_size: int | None, description: str, overwrite: bool = False, verify: bool = False,
                 **dataset: object) -> Path:
    """An RGB 2D binary dataset from ``{case id: (image, mask)}`` pairs (Kvasir-SEG, ISIC 2018): the split
    (``labeled`` wins over ``ratio``; its ``source`` says how test cases were chosen), each case read by
    :func:`load_2d_case` (longest side shrunk to ``max_size``, said in the ``description``), written by
    :func:`write_staged` as PNG (``dataset``: its ``name``, ``labels``, ``extra_json``).
    """
    from functools import partial

    from semisam.data import make_split

    split = make_split(list(train), labeled=labeled, ratio=None if labeled is not None else ratio, seed=seed,
                       test=list(test), source=source)
    loaders = {cid: partial(load_2d_case, image, [mask], rgb=True, max_size=max_size)
               for cid, (image, mask) in pairs.items()}
    if max_size:
        description += f"; longest side shrunk to at most {max_size} px"
    return write_staged(out_dir, loaders=loaders, split=split, file_ending=".png", overwrite=overwrite, verify=verify,
                        channel_names=RGB_CHANNELS, description=description, **dataset)

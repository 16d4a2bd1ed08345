"""BUSI, Breast Ultrasound Images (Al-Dhabyani et al., Data in Brief 2020), from its standard download.

Expected under ``--src``: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/`` (``--src`` may also be that
folder itself) holding ``benign (1).png`` with its mask ``benign (1)_mask.png`` and, for images with more
than one lesion, ``benign (1)_mask_1.png``, ``..._mask_2.png``. Other files are ignored.

Conversion: every mask of an image is merged into one binary label (lesion = any mask > 127); the
grayscale images, some of them saved as RGB, become one channel (``"ultrasound"``, z-scored by nnU-Net).
``--classes`` picks the class folders (default ``benign,malignant``: ``normal`` images have empty masks;
add ``normal`` to keep them). Case ids are ``<class>_<number>`` (``benign_001``). Written as 2D PNG.

Split: ``test_fraction`` of the images (default 0.2) are held out with ``test_seed`` (BUSI has no
official split); ``labeled`` (or ``ratio`` of the) remaining images are drawn with ``seed``.
"""
from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path

from data_prep.sources import holdout, load_2d_case, locate, write_staged
from semisam.data import make_split
from semisam.utils.errors import SemisamError
from semisam.utils.registry import suggest

FOLDER = "Dataset_BUSI_with_GT"
CLASSES = ("benign", "malignant", "normal")
DEFAULT_CLASSES = ("benign", "malignant")
_FILE = re.compile(r"^(benign|malignant|normal) \((\d+)\)(_mask(?:_\d+)?)?\.png$")


def find_busi(src: str | os.PathLike, classes: tuple[str, ...] = DEFAULT_CLASSES) -> dict[str, tuple[Path, list[Path]]]:
    """The BUSI images of ``classes`` under ``src`` with their masks.

    Returns:
        ``{case id: (image file, [mask files])}`` sorted by id.

    Raises:
        SemisamError: an unknown class, the layout is missing (names the expected folder), a class folder
            without images, an image without a mask or a mask without its image.
    """
    for c in classes:
        if c not in CLASSES:
            raise SemisamError(f"unknown BUSI class '{c}'{suggest(c, CLASSES)}; choose from {', '.join(CLASSES)}")
    if not classes:
        raise SemisamError(f"--classes is empty; choose from {', '.join(CLASSES)}")
    root = locate(src, [FOLDER], lambda p: any((p / c).is_dir() for c in CLASSES),
                  f"{Path(src) / FOLDER}/{{{','.join(CLASSES)}}}/ with 'benign (1).png' and 'benign (1)_mask.png'")
    cases: dict[str, tuple[Path, list[Path]]] = {}
    for cls in classes:
        folder = root / cls
        if not folder.is_dir():
            raise SemisamError(f"BUSI class folder {folder} does not exist (expected {root}/{{{','.join(CLASSES)}}}/)")
        images, masks = {}, {}
        for f in sorted(folder.iterdir()):
            m = _FILE.match(f.name)
            if not m or m.group(1) != cls:
                continue
            if m.group(3):
                masks.setdefault(int(m.group(2)), []).append(f)
            else:
                images[int(m.group(2))] = f
        if not images:
            raise SemisamError(f"{folder} holds no BUSI image such as '{cls} (1).png'")
        for n in sorted(images):
            if n not in masks:
                raise SemisamError(f"BUSI image {images[n]} has no mask '{cls} ({n})_mask.png'")
        for n in sorted(set(masks) - set(images)):
            raise SemisamError(f"BUSI mask {masks[n][0]} has no image '{cls} ({n}).png'")
        cases.update({f"{cls}_{n:03d}": (images[n], masks[n]) for n in sorted(images)})
    return dict(sorted(cases.items()))


def make_busi(src: str | os.PathLike, out_dir: str | os.PathLike, *, classes: tuple[str, ...] = DEFAULT_CLASSES,
              labeled: int | None = None, ratio: float | None = 0.1, test_fraction: float = 0.2, seed: int = 0,
              test_seed: int = 0, overwrite: bool = False, verify: bool = False) -> Path:
    """Convert BUSI under ``src`` into a 2D binary raw dataset at ``out_dir`` (e.g. ``Dataset504_BUSI``).

    ``labeled`` wins over ``ratio`` when both are given (the default draws ``ratio=0.1``).

    Raises:
        SemisamError: see :func:`find_busi`; bad split arguments; an unreadable image or a mask of another
            size than its image; ``out_dir`` exists without ``overwrite``.
    """
    cases = find_busi(src, tuple(dict.fromkeys(classes)))
    train, test = holdout(list(cases), test_fraction, test_seed)
    split = make_split(train, labeled=labeled, ratio=None if labeled is not None else ratio, seed=seed, test=test,
                       source=f"busi ({','.join(dict.fromkeys(classes))}; test fraction {test_fraction}, "
                              f"test seed {test_seed})")
    loaders = {cid: partial(load_2d_case, image, masks, rgb=False) for cid, (image, masks) in cases.items()}
    return write_staged(
        out_dir, loaders=loaders, split=split, file_ending=".png", overwrite=overwrite, verify=verify,
        name="Dataset504_BUSI", labels={"background": 0, "lesion": 1}, channel_names={0: "ultrasound"},
        description=f"BUSI breast ultrasound, classes {', '.join(dict.fromkeys(classes))}; all masks of an image "
                    "merged into one binary lesion label",
        extra_json={"license": "the BUSI release's terms (not redistributed by semisam)",
                    "reference": "Al-Dhabyani et al., Dataset of breast ultrasound images, Data in Brief 28 (2020)"})

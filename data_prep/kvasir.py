"""Kvasir-SEG, colonoscopy polyps (Jha et al., MMM 2020), from its standard download ``kvasir-seg.zip``.

Expected under ``--src``: ``Kvasir-SEG/images/<name>.jpg`` and ``Kvasir-SEG/masks/<name>.jpg`` with the same
names (``--src`` may also be the ``Kvasir-SEG`` folder itself); other files (``kavsir_bboxes.json``) are
ignored.

Conversion: the masks are JPEGs, so compression leaves intermediate values along the edges: a pixel is a
polyp where the mask (as grayscale) is ``> 127``. The RGB image becomes three channels ``_0000``, ``_0001``,
``_0002`` (R, G, B; nnU-Net z-scores each). ``max_size`` optionally shrinks the longest side (the images are
332 to 1,920 px wide). Case ids are the file names without ``.jpg``. Written as 2D PNG.

Split: ``test_fraction`` of the images (default 0.2) are held out with ``test_seed`` (Kvasir-SEG has no
official split); ``labeled`` (or ``ratio`` of the) remaining images are drawn with ``seed``.
"""
from __future__ import annotations

import os
from pathlib import Path

from data_prep.sources import check_max_size, holdout, locate, paired_files, write_rgb_2d

FOLDER = "Kvasir-SEG"


def find_kvasir(src: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """The Kvasir-SEG images under ``src`` with their masks: ``{case id: (image, mask)}``.

    Raises:
        SemisamError: the layout is missing (names the expected folders) or an image has no mask.
    """
    root = locate(src, [FOLDER], lambda p: (p / "images").is_dir() and (p / "masks").is_dir(),
                  f"{Path(src) / FOLDER}/images/*.jpg and {Path(src) / FOLDER}/masks/*.jpg")
    return paired_files(root / "images", root / "masks")


def make_kvasir(src: str | os.PathLike, out_dir: str | os.PathLike, *, labeled: int | None = None,
                ratio: float | None = 0.1, test_fraction: float = 0.2, max_size: int | None = None, seed: int = 0,
                test_seed: int = 0, overwrite: bool = False, verify: bool = False) -> Path:
    """Convert Kvasir-SEG under ``src`` into a 2D RGB binary raw dataset at ``out_dir`` (e.g.
    ``Dataset505_KvasirSEG``). ``labeled`` wins over ``ratio`` when both are given.

    Raises:
        SemisamError: see :func:`find_kvasir`; bad split arguments or ``max_size``; an unreadable image or a
            mask of another size than its image; ``out_dir`` exists without ``overwrite``.
    """
    check_max_size(max_size)
    cases = find_kvasir(src)
    train, test = holdout(list(cases), test_fraction, test_seed)
    return write_rgb_2d(
        out_dir, cases, train, test, labeled=labeled, ratio=ratio, seed=seed, max_size=max_size,
        source=f"kvasir (test fraction {test_fraction}, test seed {test_seed}, max size {max_size})",
        overwrite=overwrite, verify=verify, name="Dataset505_KvasirSEG", labels={"background": 0, "polyp": 1},
        description="Kvasir-SEG colonoscopy polyps; JPEG masks thresholded at > 127",
        extra_json={"license": "the Kvasir-SEG release's terms (not redistributed by semisam)",
                    "reference": "Jha et al., Kvasir-SEG: a segmented polyp dataset, MMM 2020"})


"""ISIC 2018 task 1, skin lesion segmentation (Codella et al. 2019; Tschandl et al. 2018), from its downloads.

Expected under ``--src`` (the folders of the challenge's zip files, side by side):

- ``ISIC2018_Task1-2_Training_Input/ISIC_<7 digits>.jpg`` (2,594 images) and
  ``ISIC2018_Task1_Training_GroundTruth/ISIC_<7 digits>_segmentation.png`` (0 = background, 255 = lesion);
- optionally ``ISIC2018_Task1-2_Validation_Input/`` + ``ISIC2018_Task1_Validation_GroundTruth/`` (100) and
  ``ISIC2018_Task1-2_Test_Input/`` + ``ISIC2018_Task1_Test_GroundTruth/`` (1,000), same naming.

Other files (``ATTRIBUTION.txt``, ``LICENSE.txt``) are ignored.

Test cases: the official Validation and Test images whose input *and* ground-truth folders are both present;
when neither pair is present (or ``test_fraction`` is given), ``test_fraction`` of the training images
(default 0.2) are held out with ``test_seed`` instead. ``labeled`` (or ``ratio`` of the) training images are
drawn with ``seed``.

Conversion: the RGB image becomes three channels ``_0000``, ``_0001``, ``_0002`` (R, G, B); the mask is
binarised at ``> 127``. The images are large (several thousand pixels wide): ``max_size`` (e.g. 1024)
shrinks the longest side, the image antialiased-bilinear, the label nearest-neighbour. Written as 2D PNG; case ids are
the file names (``ISIC_0000000``).
"""
from __future__ import annotations

import os
from pathlib import Path

from data_prep.sources import check_max_size, holdout, locate, paired_files, write_rgb_2d
from semisam.utils.errors import SemisamError

INPUT = "ISIC2018_Task1-2_{part}_Input"
GROUND_TRUTH = "ISIC2018_Task1_{part}_GroundTruth"
TEST_PARTS = ("Validation", "Test")


def _pairs(root: Path, part: str) -> dict[str, tuple[Path, Path]]:
    return paired_files(root / INPUT.format(part=part), root / GROUND_TRUTH.format(part=part),
                        mask_suffix="_segmentation", mask_ending=".png")


def find_isic2018(src: str | os.PathLike) -> tuple[dict[str, tuple[Path, Path]], dict[str, tuple[Path, Path]]]:
    """The ISIC 2018 task 1 images under ``src`` with their masks.

    Returns:
        ``(training {case id: (image, mask)}, official test {case id: (image, mask)})``; the second is empty
        when no Validation / Test input + ground-truth pair of folders is present.

    Raises:
        SemisamError: the training folders are missing (named), an image without its mask, a case id in both
            training and the official test folders.
    """
    train_in, train_gt = INPUT.format(part="Training"), GROUND_TRUTH.format(part="Training")
    root = locate(src, [], lambda p: (p / train_in).is_dir() and (p / train_gt).is_dir(),
                  f"{Path(src) / train_in}/ISIC_*.jpg and {Path(src) / train_gt}/ISIC_*_segmentation.png")
    train = _pairs(root, "Training")
    test: dict[str, tuple[Path, Path]] = {}
    for part in TEST_PARTS:
        if (root / INPUT.format(part=part)).is_dir() and (root / GROUND_TRUTH.format(part=part)).is_dir():
            test.update(_pairs(root, part))
    both = sorted(set(train) & set(test))
    if both:
        raise SemisamError(f"case '{both[0]}' is both a training image and an official validation/test image")
    return train, test


def make_isic2018(src: str | os.PathLike, out_dir: str | os.PathLike, *, labeled: int | None = None,
                  ratio: float | None = 0.1, test_fraction: float | None = None, max_size: int | None = None,
                  seed: int = 0, test_seed: int = 0, overwrite: bool = False, verify: bool = False) -> Path:
    """Convert ISIC 2018 task 1 under ``src`` into a 2D RGB binary raw dataset at ``out_dir`` (e.g.
    ``Dataset506_ISIC2018``). ``labeled`` wins over ``ratio`` when both are given.

    Args:
        test_fraction: None uses the official Validation / Test folders when present, else holds out 0.2 of
            the training images; a number always holds out that fraction of the training images (the
            official folders are then not used).

    Raises:
        SemisamError: see :func:`find_isic2018`; bad split arguments or ``max_size``; an unreadable image or a
            mask of another size than its image; ``out_dir`` exists without ``overwrite``.
    """
    check_max_size(max_size)
    train_pairs, official = find_isic2018(src)
    if official and test_fraction is None:
        cases, train, test = {**train_pairs, **official}, sorted(train_pairs), sorted(official)
        how = "official validation/test folders"
    else:
        fraction = 0.2 if test_fraction is None else test_fraction
        cases = train_pairs
        train, test = holdout(list(train_pairs), fraction, test_seed)
        how = f"test fraction {fraction} of the training images, test seed {test_seed}"
    return write_rgb_2d(
        out_dir, cases, train, test, labeled=labeled, ratio=ratio, seed=seed, max_size=max_size,
        source=f"isic2018 ({how}; max size {max_size})", overwrite=overwrite, verify=verify,
        name="Dataset506_ISIC2018", labels={"background": 0, "lesion": 1},
        description=f"ISIC 2018 task 1 skin lesions; test cases: {how}",
        extra_json={"license": "the ISIC 2018 release's terms (not redistributed by semisam)",
                    "reference": "Codella et al., arXiv:1902.03368 (2019); Tschandl et al., Sci. Data 5 (2018)"})

"""data_prep isic2018 on a small fake copy of the ISIC 2018 task 1 download folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.isic2018 import make_isic2018
from prep_helpers import expect_main_error, fake_download
from semisam.data import RawDataset, load_split

SHAPE = (30, 40)  # (Y, X)


def _write_part(src: Path, part: str, numbers: range, with_gt: bool = True) -> None:
    """``ISIC2018_Task1-2_<part>_Input/ISIC_<7 digits>.jpg`` and, with ``with_gt``,
    ``ISIC2018_Task1_<part>_GroundTruth/ISIC_<7 digits>_segmentation.png`` (0 / 255), plus the text files the
    release puts next to them."""
    rng = np.random.default_rng(len(part))
    inp = src / f"ISIC2018_Task1-2_{part}_Input"
    inp.mkdir(parents=True)
    (inp / "ATTRIBUTION.txt").write_text("fake")
    gt = src / f"ISIC2018_Task1_{part}_GroundTruth"
    if with_gt:
        gt.mkdir()
        (gt / "LICENSE.txt").write_text("fake")
    for n in numbers:
        lesion = np.zeros(SHAPE, bool)
        lesion[5 + n % 7:20 + n % 7, 8:30] = True
        rgb = rng.integers(150, 220, (*SHAPE, 3)).astype(np.uint8)
        rgb[lesion] = (110, 60, 40)
        Image.fromarray(rgb).save(inp / f"ISIC_{n:07d}.jpg", quality=90)
        if with_gt:
            Image.fromarray(lesion.astype(np.uint8) * 255).save(gt / f"ISIC_{n:07d}_segmentation.png")


def make_fake_isic(src: Path, validation: bool = True) -> Path:
    _write_part(src, "Training", range(0, 6))
    if validation:
        _write_part(src, "Validation", range(12, 14))
    _write_part(src, "Test", range(20, 22), with_gt=False)  # inputs only: not usable as test cases
    return src


isic_src = fake_download(make_fake_isic)


def test_isic_official_validation_as_test_and_passes_nnunet(tmp_path, isic_src):
    out = make_isic2018(isic_src, tmp_path / "Dataset506_ISIC2018", labeled=2, max_size=20, verify=True)
    split = load_split(out / "semisam_split.json")
    assert split.test == ("ISIC_0000012", "ISIC_0000013")
    assert split.training == tuple(f"ISIC_{n:07d}" for n in range(6)) and len(split.labeled) == 2
    ds = RawDataset.open(out)
    test = ds.test_cases()[0]
    image, _ = ds.read_image(test.image_files)
    seg, _ = ds.read_seg(test.label_file)
    assert image.shape == (3, 1, 15, 20) and seg.shape == (1, 1, 15, 20)  # 40x30 shrunk to 20x15
    full = np.zeros(SHAPE, bool)
    full[10:25, 8:30] = True  # ISIC_0000012's lesion at full size
    np.testing.assert_array_equal(seg[0, 0], full[1::2, 1::2].astype(np.float32))  # nearest: pixel centres


def test_isic_holdout_without_official_ground_truth(tmp_path):
    src = make_fake_isic(tmp_path / "download", validation=False)
    split = load_split(make_isic2018(src, tmp_path / "a", labeled=1) / "semisam_split.json")
    assert len(split.test) == 1 and len(split.training) == 5  # round(0.2 * 6)
    assert all(c.startswith("ISIC_00000") for c in split.test)  # never the Test inputs without ground truth
    ds = RawDataset.open(tmp_path / "a")
    image, _ = ds.read_image(ds.labeled_cases()[0].image_files)
    assert image.shape == (3, 1, *SHAPE)


def test_isic_explicit_fraction_ignores_official_folders(tmp_path, isic_src):
    split = load_split(make_isic2018(isic_src, tmp_path / "b", labeled=1, test_fraction=0.5) / "semisam_split.json")
    assert len(split.test) == 3 and set(split.training + split.test) == {f"ISIC_{n:07d}" for n in range(6)}


def test_isic_bad_sources(tmp_path, isic_src, capsys):
    out = tmp_path / "out"
    expect_main_error(capsys, ["isic2018", "--src", isic_src / "ISIC2018_Task1-2_Training_Input", "--out", out],
                      out, "ISIC2018_Task1_Training_GroundTruth/ISIC_*_segmentation.png")
    (isic_src / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000004_segmentation.png").unlink()
    expect_main_error(capsys, ["isic2018", "--src", isic_src, "--out", out], out,
                      "ISIC_0000004.jpg has no mask: expected")


def test_isic_cli(tmp_path, isic_src, capsys):
    from data_prep.cli import main

    out = tmp_path / "Dataset506_ISIC2018"
    argv = ["isic2018", "--src", isic_src, "--out", out, "--test-fraction", "0.34", "--test-seed", "2", "--no-verify"]
    assert main([str(a) for a in argv]) == 0  # default --ratio 0.1 of 4 training images: 1 labeled
    assert capsys.readouterr().out.strip() == f"wrote {out}: 1 labeled, 3 unlabeled, 2 test cases"

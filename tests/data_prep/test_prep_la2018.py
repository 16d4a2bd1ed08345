"""data_prep la2018 on small fake copies of both Left Atrium 2018 layouts: UA-MT's h5 files with
train.list / test.list, and the challenge's nrrd files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.la2018 import make_la2018
from prep_helpers import expect_main_error
from semisam.data import RawDataset, load_split

CASES = ("0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "1GU15S0GJJLGWT2ILBBX", "2DB4NDNBLBV3XIZ6KIB4",
         "4URSJYI2QUH1T5S5PP47", "5BHTH9RHH3PQT913I59W")
SHAPE_XYZ = (12, 10, 8)  # distinct sizes, so that a wrong axis order shows
NO_H5PY = "h5py is needed for the LA 2018 h5 layout: pip install 'semisam[datasets]'"


def _volume(i: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label 0/1)`` in (x, y, z) order, as UA-MT stores them."""
    rng = np.random.default_rng(i)
    label = np.zeros(SHAPE_XYZ, np.uint8)
    label[2 + i % 3:8, 3:7, 2:6] = 1
    image = rng.normal(size=SHAPE_XYZ).astype(np.float32) + 2 * label
    return image, label


def make_fake_la_h5(src: Path, lists: bool = True) -> Path:
    import h5py

    root = src / "2018LA_Seg_Training Set"
    for i, case in enumerate(CASES):
        (root / case).mkdir(parents=True)
        image, label = _volume(i)
        with h5py.File(root / case / "mri_norm2.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
    if lists:  # as in UA-MT: next to the case folder, one case name per line
        (src / "train.list").write_text("\n".join(CASES[2:]) + "\n")
        (src / "test.list").write_text("\n".join(CASES[:2]) + "\n")
    return src


def make_fake_la_nrrd(src: Path, n: int = 5) -> Path:
    root = src / "Training Set"
    for i, case in enumerate(CASES[:n]):
        (root / case).mkdir(parents=True)
        image, label = _volume(i)
        for arr, name in ((image * 40 + 100).astype(np.uint8), "lgemri.nrrd"), (label * 255, "laendo.nrrd"):
            img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))  # SimpleITK arrays are (z, y, x)
            img.SetSpacing((0.625, 0.625, 2.5))
            img.SetOrigin((10.0, -5.0, 3.0))
            sitk.WriteImage(img, str(root / case / name))
    return src


def test_la_h5_layout_with_lists_passes_nnunet(tmp_path):
    pytest.importorskip("h5py", reason=NO_H5PY)
    src = make_fake_la_h5(tmp_path / "LA")
    out = make_la2018(src, tmp_path / "Dataset507_LA2018", labeled=2, verify=True)
    split = load_split(out / "semisam_split.json")
    assert split.test == CASES[:2] and split.training == CASES[2:] and len(split.labeled) == 2
    assert "train.list / test.list" in split.source and "h5 layout" in split.source
    ds = RawDataset.open(out)
    case = next(c for c in ds.test_cases() if c.case_id == CASES[1])
    written = sitk.ReadImage(str(case.image_files[0]))
    assert written.GetSize() == SHAPE_XYZ and written.GetSpacing() == (0.625, 0.625, 0.625)
    image, label = _volume(1)
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), image.transpose(2, 1, 0))
    seg, _ = ds.read_seg(case.label_file)
    np.testing.assert_array_equal(seg[0], label.transpose(2, 1, 0))


def test_la_nrrd_layout_without_lists(tmp_path):
    src = make_fake_la_nrrd(tmp_path / "LA")
    out = make_la2018(src, tmp_path / "out", n_test=2, ratio=0.5)
    split = load_split(out / "semisam_split.json")
    assert split.test == CASES[3:5] and len(split.labeled) == 2 and len(split.unlabeled) == 1  # last 2 sorted
    ds = RawDataset.open(out)
    case = ds.labeled_cases()[0]
    written = sitk.ReadImage(str(case.image_files[0]))
    assert written.GetSpacing() == (0.625, 0.625, 2.5) and written.GetOrigin() == (10.0, -5.0, 3.0)
    seg, _ = ds.read_seg(case.label_file)
    assert set(np.unique(seg).tolist()) == {0, 1}  # 0/255 -> 0/1
    np.testing.assert_array_equal(seg[0], _volume(CASES.index(case.case_id))[1].transpose(2, 1, 0))


def test_la_bad_sources(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    expect_main_error(capsys, ["la2018", "--src", tmp_path / "empty", "--out", out], out,
                      "2018LA_Seg_Training Set/<case>/mri_norm2.h5 (h5 layout) or")
    src = make_fake_la_nrrd(tmp_path / "LA", n=3)
    expect_main_error(capsys, ["la2018", "--src", src, "--out", out], out, "--n-test must be in [0, 2] for 3 cases")
    (src / "train.list").write_text(CASES[0])
    expect_main_error(capsys, ["la2018", "--src", src, "--out", out], out, "but not " + str(src / "test.list"))
    (src / "test.list").write_text("NOSUCHCASE/mri_norm2.h5\n")
    expect_main_error(capsys, ["la2018", "--src", src, "--out", out], out, "case 'NOSUCHCASE' of train.list")
    (src / "test.list").write_text(CASES[1])
    (src / "Training Set" / CASES[1] / "laendo.nrrd").unlink()
    expect_main_error(capsys, ["la2018", "--src", src, "--out", out], out,
                      f"{src / 'Training Set' / CASES[1] / 'laendo.nrrd'} does not exist")


def test_la_h5_without_label_dataset(tmp_path, capsys):
    h5py = pytest.importorskip("h5py", reason=NO_H5PY)
    src = make_fake_la_h5(tmp_path / "LA")
    with h5py.File(src / "2018LA_Seg_Training Set" / CASES[5] / "mri_norm2.h5", "w") as f:
        f.create_dataset("image", data=np.zeros(SHAPE_XYZ, np.float32))
    out = tmp_path / "out"
    expect_main_error(capsys, ["la2018", "--src", src, "--out", out, "--labeled", "1", "--no-verify"], out,
                      "mri_norm2.h5 lacks dataset(s) ['label']")


def test_la_cli_layout_choice(tmp_path, capsys):
    from data_prep.cli import main

    src = make_fake_la_nrrd(tmp_path / "LA")
    out = tmp_path / "Dataset507_LA2018"
    argv = ["la2018", "--src", src / "Training Set", "--out", out, "--layout", "nrrd", "--n-test", "1",
            "--labeled", "1", "--no-verify"]
    assert main([str(a) for a in argv]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 1 labeled, 3 unlabeled, 1 test cases"
    expect_main_error(capsys, ["la2018", "--src", src, "--out", tmp_path / "h5", "--layout", "h5", "--n-test", "1"],
                      tmp_path / "h5", "mri_norm2.h5 does not exist")

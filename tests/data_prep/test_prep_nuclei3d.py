"""data_prep nuclei3d on the real 3D nuclei files of the stardist wheel."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from data_prep.nuclei3d import block_grid, load_nuclei3d, make_nuclei3d
from prep_helpers import expect_main_error
from semisam.data import RawDataset, load_split


def test_nuclei3d_blocks_pass_nnunet(tmp_path, stardist_wheel):
    image, mask = load_nuclei3d(stardist_wheel)
    assert image.shape == mask.shape == (31, 61, 57) and len(np.unique(mask)) - 1 == 51
    out = make_nuclei3d(tmp_path / "Dataset509_Nuclei3D", wheel=stardist_wheel, verify=True)
    split = load_split(out / "semisam_split.json")
    assert (len(split.labeled), len(split.unlabeled), len(split.test)) == (2, 10, 6)
    ds = RawDataset.open(out)
    case = ds.labeled_cases()[0]
    k, i, j = (int(p[1:]) for p in case.case_id.split("_")[1:])
    written = sitk.ReadImage(str(case.image_files[0]))
    assert written.GetSize() == (19, 20, 15) and written.GetSpacing() == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), block_grid(image, (2, 3, 3))[(k, i, j)])
    seg, _ = ds.read_seg(case.label_file)
    np.testing.assert_array_equal(seg[0], block_grid(mask, (2, 3, 3))[(k, i, j)] > 0)
    # the test blocks do not depend on the labeled draw
    other = make_nuclei3d(tmp_path / "other", wheel=stardist_wheel, labeled=None, ratio=0.5, seed=3)
    assert load_split(other / "semisam_split.json").test == split.test


def test_nuclei3d_grid(tmp_path, stardist_wheel, capsys):
    out = make_nuclei3d(tmp_path / "one", wheel=stardist_wheel, grid=(1, 2, 2), n_test=1, labeled=1)
    assert len(load_split(out / "semisam_split.json").training) == 3
    bad = tmp_path / "bad"
    expect_main_error(capsys, ["nuclei3d", "--out", bad, "--grid", "8,3,3"], bad,
                      "--grid 8,3,3 makes blocks of 3x20x19 voxels; each side needs at least 4 (at most 7,15,14")
    expect_main_error(capsys, ["nuclei3d", "--out", bad, "--grid", "2,x,3"], bad, "expected three integers z,y,x")
    expect_main_error(capsys, ["nuclei3d", "--out", bad, "--grid", "1,1,2"], bad,
                      "--n-test must be in [0, 1] for 2 blocks")


def test_nuclei3d_cli(tmp_path, stardist_wheel, capsys):
    from data_prep.cli import main

    out = tmp_path / "Dataset509_Nuclei3D"
    argv = ["nuclei3d", "--out", str(out), "--grid", "1,2,3", "--n-test", "2", "--ratio", "0.5", "--no-verify"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 2 labeled, 2 unlabeled, 2 test cases"

"""data_prep nuclei on the real DSB 2018 files from the stardist wheel."""
from __future__ import annotations

import numpy as np

from data_prep.nuclei import load_nuclei, make_nuclei, tile_grid
from semisam.data import RawDataset, check_raw_dataset


def test_nuclei_real_tiles(tmp_path, stardist_wheel):
    image, mask = load_nuclei(stardist_wheel)
    assert image.shape == (512, 512) and mask.shape == (512, 512)
    assert len(np.unique(mask)) - 1 >= 100  # ~125 labelled nuclei
    out = make_nuclei(tmp_path / "Dataset501_Nuclei", wheel=stardist_wheel)
    ds = check_raw_dataset(out)
    labeled, unlabeled, test = ds.labeled_cases(), ds.unlabeled_cases(), ds.test_cases()
    assert (len(labeled), len(unlabeled), len(test)) == (4, 44, 16)
    assert ds.labels == {"background": 0, "nucleus": 1} and ds.ignore_label == 2
    # a tile on disk equals the source pixels (intensities kept) and its binary mask
    tiles, masks = tile_grid(image, 64), tile_grid(mask, 64)
    case = labeled[0]
    r, c = (int(p[1:]) for p in case.case_id.split("_")[1:])
    img, _ = ds.read_image(case.image_files)
    seg, _ = ds.read_seg(case.label_file)
    assert img.shape == (1, 1, 64, 64)
    np.testing.assert_array_equal(img[0, 0], tiles[(r, c)].astype(np.float32))
    np.testing.assert_array_equal(seg[0, 0], (masks[(r, c)] > 0).astype(np.float32))
    # the test tiles do not depend on the labeled draw
    other = make_nuclei(tmp_path / "other", wheel=stardist_wheel, seed=5, labeled=None, ratio=0.25, verify=False)
    ds2 = RawDataset.open(other)
    assert [c.case_id for c in ds2.test_cases()] == [c.case_id for c in test]
    assert len(ds2.labeled_cases()) == 12
    assert {c.case_id for c in ds2.labeled_cases()} != {c.case_id for c in labeled}


def test_nuclei_many_test_tiles(tmp_path, stardist_wheel):
    # 32x32 tiles: 256 of them; half held out. A larger --n-test keeps the smaller one's test tiles.
    big = RawDataset.open(make_nuclei(tmp_path / "big", wheel=stardist_wheel, tile=32, n_test=128))
    small = RawDataset.open(make_nuclei(tmp_path / "small", wheel=stardist_wheel, tile=32, n_test=16))
    assert (len(big.labeled_cases()), len(big.unlabeled_cases()), len(big.test_cases())) == (4, 124, 128)
    assert {c.case_id for c in small.test_cases()} < {c.case_id for c in big.test_cases()}
    img, _ = big.read_image(big.test_cases()[0].image_files)
    assert img.shape == (1, 1, 32, 32)

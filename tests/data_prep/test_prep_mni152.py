"""data_prep mni152 on the real MNI ICBM152 2009a files from the nilearn wheel."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.mni152 import load_mni152, make_mni152, resample, slab_split
from prep_helpers import file_bytes, leftovers, run_cli
from semisam.data import RawDataset, check_raw_dataset
from semisam.utils.errors import SemisamError


def _index(case_id: str) -> int:
    return int(case_id.rsplit("_", 1)[1][1:])


def _assert_slabs_separated(train: list[int], test: list[int], gap: int) -> None:
    assert train and test
    assert min(abs(i - t) for i in train for t in test) > gap


@pytest.fixture(scope="module")
def source(nilearn_wheel):
    return load_mni152(nilearn_wheel)


def test_source_files(source):
    volumes, voxel = source
    assert voxel == (1.0, 1.0, 1.0)
    assert all(v.shape == (197, 233, 189) for v in volumes.values())
    assert all(0 <= v.min() and v.max() == 255 for v in volumes.values())
    # the 2 mm grid starts at the first voxel centre: linear interpolation hits every other source voxel
    t1 = volumes["t1"]
    np.testing.assert_array_equal(resample(t1, voxel, 2.0), t1[::2, ::2, ::2])
    assert resample(t1[:20, :20, :20], voxel, 3.0).shape == (7, 7, 7)


def test_default_dataset(tmp_path, nilearn_wheel, source):
    volumes, _ = source
    out = make_mni152(tmp_path / "Dataset503_MNI152", wheel=nilearn_wheel, verify=True)  # nnU-Net's check too
    ds = check_raw_dataset(out, nnunet=False)
    labeled, unlabeled, test = ds.labeled_cases(), ds.unlabeled_cases(), ds.test_cases()
    assert (len(labeled), len(unlabeled), len(test)) == (4, 36, 26)
    assert ds.labels == {"background": 0, "grey_matter": 1, "white_matter": 2} and ds.ignore_label == 3
    assert ds.dataset_json["channel_names"] == {"0": "T1"} and ds.file_ending == ".nii.gz"

    train_idx = sorted(_index(c.case_id) for c in labeled + unlabeled)
    test_idx = sorted(_index(c.case_id) for c in test)
    assert all(c.case_id.startswith("mni152_z") for c in labeled + unlabeled + test)
    _assert_slabs_separated(train_idx, test_idx, gap=2)
    slabs = ds.dataset_json["slices"]["test_slabs"]
    assert len(slabs) == 2 and test_idx == [i for a, b in slabs for i in range(a, b + 1)]

    # a slice on disk is the source at (2i, 2j, 2k), labelled from the source's own GM/WM maps
    values = set()
    for case, label_file in [(c, c.label_file) for c in labeled + test] + \
                            [(c, ds.hidden_label_file(c.case_id)) for c in unlabeled[:3]]:
        img, props = ds.read_image(case.image_files)
        seg, _ = ds.read_seg(label_file)
        assert img.shape == (1, 1, 117, 99) and seg.shape == (1, 1, 117, 99)
        assert tuple(props["spacing"]) == (2.0, 2.0, 2.0)
        k = 2 * _index(case.case_id)
        np.testing.assert_array_equal(img[0, 0], volumes["t1"][::2, ::2, k].T[::-1])
        gm, wm = volumes["gm"][::2, ::2, k].T[::-1], volumes["wm"][::2, ::2, k].T[::-1]
        expect = np.where(np.maximum(gm, wm) > 127, np.where(wm > gm, 2, 1), 0)
        np.testing.assert_array_equal(seg[0, 0], expect)
        assert (seg > 0).sum() >= 50
        values |= set(np.unique(seg).tolist())
    assert values == {0, 1, 2}

    # deterministic for a seed; another seed draws other labeled slices from the same training / test slabs
    again = make_mni152(tmp_path / "again", wheel=nilearn_wheel)
    assert file_bytes(again) == file_bytes(out)
    other = RawDataset.open(make_mni152(tmp_path / "other", wheel=nilearn_wheel, seed=3, labeled=None, ratio=0.25))
    assert [c.case_id for c in other.test_cases()] == [c.case_id for c in test]
    assert len(other.labeled_cases()) == 10 and len(other.unlabeled_cases()) == 30
    assert {c.case_id for c in other.labeled_cases()} != {c.case_id for c in labeled}


def test_coronal_three_slabs(tmp_path, nilearn_wheel):
    out = make_mni152(tmp_path / "cor", wheel=nilearn_wheel, axis=1, spacing=3, n_test_slabs=3, gap=1,
                      test_fraction=0.3, labeled=2)
    ds = RawDataset.open(out)
    train = [_index(c.case_id) for c in ds.labeled_cases() + ds.unlabeled_cases()]
    test = [_index(c.case_id) for c in ds.test_cases()]
    assert all(c.case_id.startswith("mni152_y") for c in ds.test_cases())
    _assert_slabs_separated(train, test, gap=1)
    assert len(json.loads((out / "dataset.json").read_text())["slices"]["test_slabs"]) == 3
    img, _ = ds.read_image(ds.test_cases()[0].image_files)
    assert img.shape == (1, 1, 63, 66)  # (z, x) of the 3 mm grid 66x78x63


def test_sagittal_mirror_gap(tmp_path, nilearn_wheel):
    out = make_mni152(tmp_path / "sag", wheel=nilearn_wheel, axis=0, n_test_slabs=3, labeled=2)
    ds = RawDataset.open(out)
    train = [_index(c.case_id) for c in ds.labeled_cases() + ds.unlabeled_cases()]
    test = [_index(c.case_id) for c in ds.test_cases()]
    assert all(c.case_id.startswith("mni152_x") for c in ds.test_cases())
    _assert_slabs_separated(train, test, gap=2)
    _assert_slabs_separated([98 - i for i in train], test, gap=2)  # 99 sagittal slices at 2 mm


def test_slab_split_rules():
    s = slab_split(range(10, 30), test_fraction=0.2, n_test_slabs=2, gap=1)
    assert s.test_slabs == ((14, 15), (24, 25)) and s.test == (14, 15, 24, 25)
    assert s.train == (10, 11, 12, 17, 18, 19, 20, 21, 22, 27, 28, 29)
    assert slab_split(range(5), test_fraction=0, n_test_slabs=2, gap=3).train == (0, 1, 2, 3, 4)
    one = slab_split(range(0, 9), test_fraction=0.34, n_test_slabs=1, gap=0)
    assert one.test_slabs == ((3, 5),)  # a central slab
    for kwargs, needle in [(dict(test_fraction=1.0), "--test-fraction"), (dict(n_test_slabs=0), "--n-test-slabs"),
                           (dict(gap=-1), "--gap"), (dict(test_fraction=0.05, n_test_slabs=3), "cannot fill"),
                           (dict(test_fraction=0.9, gap=5), "no training slice")]:
        args = dict(test_fraction=0.2, n_test_slabs=2, gap=1) | kwargs
        with pytest.raises(SemisamError, match=needle):
            slab_split(range(10, 30), **args)
    # a mirrored layout (sagittal slices of the symmetric template): train slices never mirror test slices
    m = slab_split(range(10, 30), test_fraction=0.2, n_test_slabs=2, gap=1, mirror_sum=36)
    assert m.test == s.test and m.train == (17, 18, 19, 27, 28, 29)  # mirrors of the test: 11, 12, 21, 22
    with pytest.raises(SemisamError, match="not contiguous"):
        slab_split([1, 2, 4], test_fraction=0.3, n_test_slabs=1, gap=0)


@pytest.mark.parametrize("args, needle", [
    (("--axis", "3"), "invalid choice"),
    (("--labeled", "41"), "between 1 and the number of training cases (40)"),
    (("--spacing", "0.5"), "--spacing must be between 1 and 8"),
    (("--min-tissue", "100000"), "no slice holds enough tissue"),
])
def test_bad_input_cli(tmp_path, nilearn_wheel, args, needle):
    out = tmp_path / "out"
    r = run_cli("mni152", "--out", out, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert not out.exists() and leftovers(tmp_path, "out") == []

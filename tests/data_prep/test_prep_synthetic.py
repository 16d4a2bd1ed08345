"""data_prep synthetic: deterministic by seed, 2D/3D, binary/multi-class, valid for nnU-Net."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.synthetic import make_synthetic
from prep_helpers import file_bytes, run_cli
from semisam.data import RawDataset, check_raw_dataset


@pytest.mark.parametrize("dim,n_classes,nnunet", [(2, 1, True), (2, 3, True), (3, 1, False), (3, 2, True)])
def test_synthetic_valid_for_nnunet(tmp_path, dim, n_classes, nnunet):
    out = make_synthetic(tmp_path / "Dataset900_Syn", dim=dim, n_classes=n_classes, n_train=5, n_test=2,
                         n_labeled=2, size=32, seed=3)
    ds = check_raw_dataset(out, nnunet=nnunet)  # nnU-Net's verify_dataset_integrity + semisam's rules
    assert ds.labels == {"background": 0, **({"foreground": 1} if n_classes == 1 else
                                             {f"class{k}": k for k in range(1, n_classes + 1)})}
    assert ds.ignore_label == n_classes + 1
    assert len(ds.labeled_cases()) == 2 and len(ds.unlabeled_cases()) == 3 and len(ds.test_cases()) == 2
    case = ds.labeled_cases()[0]
    image, _ = ds.read_image(case.image_files)
    seg, _ = ds.read_seg(case.label_file)
    assert image.shape == ((1, 1, 32, 32) if dim == 2 else (1, 32, 32, 32))
    assert seg.shape == image.shape
    # every class is drawn, with a brighter mean intensity than the background
    assert set(np.unique(seg).tolist()) == set(range(n_classes + 1))
    means = [image[seg == k].mean() for k in range(n_classes + 1)]
    assert all(a < b for a, b in zip(means, means[1:]))
    for c in ds.unlabeled_cases():
        assert ds.hidden_label_file(c.case_id) is not None


def test_synthetic_deterministic_by_seed(tmp_path):
    a = make_synthetic(tmp_path / "a", seed=7, n_train=4, n_test=1, size=32)
    b = make_synthetic(tmp_path / "b", seed=7, n_train=4, n_test=1, size=32)
    c = make_synthetic(tmp_path / "c", seed=8, n_train=4, n_test=1, size=32)
    assert file_bytes(a) == file_bytes(b)
    assert file_bytes(a) != file_bytes(c)


def test_synthetic_knobs_change_the_images(tmp_path):
    quiet = make_synthetic(tmp_path / "q", noise=0.0, n_train=2, n_test=0, n_labeled=2, size=32)
    noisy = make_synthetic(tmp_path / "n", noise=0.3, n_train=2, n_test=0, n_labeled=2, size=32)
    ds_q, ds_n = RawDataset.open(quiet), RawDataset.open(noisy)
    case_q, case_n = ds_q.labeled_cases()[0], ds_n.labeled_cases()[0]
    img_q, _ = ds_q.read_image(case_q.image_files)
    img_n, _ = ds_n.read_image(case_n.image_files)
    seg, _ = ds_q.read_seg(case_q.label_file)
    # the same objects (noise is drawn last), but noise raises the spread inside the background
    assert np.array_equal(seg, ds_n.read_seg(case_n.label_file)[0])
    assert img_n[seg == 0].std() > 3 * img_q[seg == 0].std()
    low = make_synthetic(tmp_path / "lc", contrast=0.3, noise=0.0, n_train=2, n_test=0, n_labeled=2, size=32)
    ds_l = RawDataset.open(low)
    img_l, _ = ds_l.read_image(ds_l.labeled_cases()[0].image_files)
    assert img_l[seg == 1].mean() < img_q[seg == 1].mean()


def test_synthetic_cli(tmp_path):
    out = tmp_path / "Dataset901_Cli"
    r = run_cli("synthetic", "--out", out, "--n-train", "4", "--n-test", "1", "--labeled", "1", "--size", "32",
                "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert "1 labeled, 3 unlabeled, 1 test" in r.stdout
    split = json.loads((out / "semisam_split.json").read_text())
    assert split["seed"] == 2 and split["source"] == "synthetic" and len(split["labeled"]) == 1

"""semisam.data raw datasets: typed cases, reading/writing through nnU-Net, atomic writes, checks."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from data_prep.synthetic import make_synthetic
from semisam.data import (
    CaseData, Geometry, LabeledCase, RawDataset, UnlabeledCase, check_raw_dataset, make_split, write_raw_dataset,
)
from semisam.data.split import Split
from semisam.utils.errors import SemisamError


@pytest.fixture(scope="module")
def syn2d(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "Dataset900_S", n_train=5, n_test=2, n_labeled=2, size=32)


def test_unlabeled_case_has_no_label_field(tmp_path):
    assert [f.name for f in dataclasses.fields(UnlabeledCase)] == ["case_id", "image_files"]
    case = UnlabeledCase("a", (tmp_path / "a_0000.png",))
    with pytest.raises((AttributeError, TypeError)):
        case.label_file = tmp_path / "a.png"  # frozen, with slots: no attribute can be added
    assert not hasattr(case, "__dict__")
    assert [f.name for f in dataclasses.fields(LabeledCase)] == ["case_id", "image_files", "label_file"]


def test_open_errors(tmp_path):
    with pytest.raises(SemisamError, match="does not exist"):
        RawDataset.open(tmp_path / "nope")
    with pytest.raises(SemisamError, match="no dataset.json"):
        RawDataset.open(tmp_path)
    (tmp_path / "dataset.json").write_text("[1]")
    with pytest.raises(SemisamError, match="JSON object"):
        RawDataset.open(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "x": 2}, "channel_names": {"0": "a"},
                                                       "file_ending": ".png"}))
    with pytest.raises(SemisamError, match="without gaps"):
        RawDataset.open(tmp_path)


def test_cases_and_properties(syn2d):
    ds = RawDataset.open(syn2d)
    assert ds.file_ending == ".png" and ds.num_channels == 1
    assert ds.foreground_labels == [1] and ds.ignore_label == 2 and "ignore" not in ds.labels
    assert ds.pseudo_ignore_label == 2  # the dataset's own ignore label
    labeled, unlabeled = ds.labeled_cases(), ds.unlabeled_cases()
    assert [c.case_id for c in labeled] == list(ds.split.labeled)
    assert all(isinstance(c, UnlabeledCase) for c in unlabeled) and len(unlabeled) == 3
    assert all(c.image_files[0].name == f"{c.case_id}_0000.png" for c in labeled + unlabeled)
    assert ds.hidden_label_file(labeled[0].case_id) is None
    assert ds.hidden_label_file(unlabeled[0].case_id).parent.name == "labelsHidden"


def test_pseudo_labels_ignore_one_past_the_labels_without_an_ignore_label(tmp_path, syn2d):
    root = shutil.copytree(syn2d, tmp_path / "copy")
    dj = json.loads((root / "dataset.json").read_text())
    dj["labels"] = {"background": 0, "a": 1, "b": 2}
    (root / "dataset.json").write_text(json.dumps(dj))
    ds = RawDataset.open(root)
    assert ds.ignore_label is None and ds.pseudo_ignore_label == 3


def test_without_split_file_labels_decide(tmp_path, syn2d):
    root = shutil.copytree(syn2d, tmp_path / "copy")
    (root / "semisam_split.json").unlink()
    ds = RawDataset.open(root)
    assert ds.split is None
    assert {c.case_id for c in ds.labeled_cases()} == set(json.loads((root / "dataset.json").read_text())["dataset"])
    dj = json.loads((root / "dataset.json").read_text())
    del dj["dataset"]
    (root / "dataset.json").write_text(json.dumps(dj))
    ds = RawDataset.open(root)  # plain nnU-Net: images with a labelsTr label are labeled
    assert {c.case_id for c in ds.labeled_cases()} == {p.name[:-4] for p in (root / "labelsTr").iterdir()}
    assert len(ds.unlabeled_cases()) == 3 and len(ds.test_cases()) == 2


def test_write_seg_round_trip_2d_and_3d(tmp_path, syn2d):
    ds = RawDataset.open(syn2d)
    case = ds.labeled_cases()[0]
    img, props = ds.read_image(case.image_files)
    seg, _ = ds.read_seg(case.label_file)
    assert img.shape == (1, 1, 32, 32) and img.dtype == np.float32
    out = ds.write_seg(seg[0].astype(np.uint8), props, tmp_path / "p.png")
    np.testing.assert_array_equal(ds.read_seg(out)[0], seg)
    ds3 = RawDataset.open(make_synthetic(tmp_path / "s3", dim=3, size=16, n_train=2, n_test=0, n_labeled=1))
    c3 = ds3.labeled_cases()[0]
    img3, props3 = ds3.read_image(c3.image_files)
    seg3 = (img3[0] > 0.5).astype(np.uint8)
    out3 = ds3.write_seg(seg3, props3, tmp_path / "p.nii.gz")
    back, back_props = ds3.read_seg(out3)
    np.testing.assert_array_equal(back[0], seg3)
    assert back_props["sitk_stuff"] == props3["sitk_stuff"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _case(cid, label_value=1, shape=(1, 8, 8)):
    img = np.zeros((1, *shape), np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[0, 2:4, 2:4] = label_value
    return CaseData(cid, img, lab, Geometry(spacing_zyx=(2.0, 0.5, 0.5)))


def test_writer_validates_before_anything_is_visible(tmp_path):
    split = make_split(["a", "b", "c"], labeled=1, seed=0)
    common = dict(name="T", labels={"background": 0, "x": 1}, file_ending=".nii.gz", channel_names={0: "CT"})
    out = tmp_path / "ds"
    with pytest.raises(SemisamError, match=r"value\(s\) \[5\] are not declared"):
        write_raw_dataset(out, cases=[_case("a"), _case("b"), _case("c", 5)], split=split, **common)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SemisamError, match="shape"):
        bad = CaseData("c", np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 8, 7), np.uint8))
        write_raw_dataset(out, cases=[_case("a"), _case("b"), bad], split=split, **common)
    with pytest.raises(SemisamError, match="does not list exactly"):
        write_raw_dataset(out, cases=[_case("a"), _case("b")], split=split, **common)
    with pytest.raises(SemisamError, match="channels"):
        write_raw_dataset(out, cases=[_case("a"), _case("b"), _case("c")], split=split,
                          **{**common, "channel_names": {0: "CT", 1: "PET"}})
    assert list(tmp_path.iterdir()) == []
    write_raw_dataset(out, cases=[_case("a"), _case("b"), _case("c")], split=split, **common)
    ds = check_raw_dataset(out)
    img, props = ds.read_image(ds.labeled_cases()[0].image_files)
    assert props["spacing"] == [2.0, 0.5, 0.5]
    with pytest.raises(SemisamError, match="already exists"):
        write_raw_dataset(out, cases=[_case("a"), _case("b"), _case("c")], split=split, **common)


def test_check_catches_label_leaks(tmp_path, syn2d):
    root = shutil.copytree(syn2d, tmp_path / "leak")
    ds = RawDataset.open(root)
    u, lab = ds.unlabeled_cases()[0].case_id, ds.labeled_cases()[0].case_id
    shutil.copy(root / "labelsHidden" / f"{u}.png", root / "labelsTr" / f"{u}.png")
    with pytest.raises(SemisamError, match="labelsTr holds label"):
        check_raw_dataset(root, nnunet=False)
    (root / "labelsTr" / f"{u}.png").unlink()
    shutil.copy(root / "labelsTr" / f"{lab}.png", root / "labelsHidden" / f"{lab}.png")
    with pytest.raises(SemisamError, match="labelsHidden holds label"):
        check_raw_dataset(root, nnunet=False)
    (root / "labelsHidden" / f"{lab}.png").unlink()
    check_raw_dataset(root, nnunet=False)


def test_check_reports_nnunet_failures_in_one_line(tmp_path, syn2d):
    from skimage import io

    root = shutil.copytree(syn2d, tmp_path / "bad")
    f = root / "labelsTr" / f"{RawDataset.open(root).labeled_cases()[0].case_id}.png"
    seg = io.imread(f)
    seg[0, 0] = 9
    io.imsave(f, seg, check_contrast=False)
    with pytest.raises(SemisamError, match="verify_dataset_integrity") as e:
        check_raw_dataset(root)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("unavailable,placed", [((), "hardlink"), (("link",), "symlink"), (("link", "symlink"), "copy")])
def test_link_files_links_where_the_filesystem_allows_and_nnunet_reads_the_links(tmp_path, syn2d, monkeypatch,
                                                                                unavailable, placed):
    """link_files: hard links, else symbolic links, else copies (a filesystem without either is simulated);
    nnU-Net's own integrity check reads the labeled cases' images and labels through them."""
    import os

    src = RawDataset.open(syn2d)
    cases = [CaseData(c.case_id, c.image_files, c.label_file) for c in src.labeled_cases()]
    cases += [CaseData(c.case_id, c.image_files) for c in src.unlabeled_cases()]
    split = Split(labeled=tuple(c.case_id for c in src.labeled_cases()),
                  unlabeled=tuple(c.case_id for c in src.unlabeled_cases()), test=(), seed=0, ratio=None)

    def unsupported(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    for name in unavailable:
        monkeypatch.setattr(os, name, unsupported)
    out = write_raw_dataset(tmp_path / "Dataset901_L", name="L", cases=cases, labels=src.labels,
                            file_ending=".png", channel_names={0: "x"}, split=split, link_files=True)
    monkeypatch.undo()
    sources = {f"{c.case_id}_0000.png": c.image[0] for c in cases}
    sources.update({f"{c.case_id}.png": c.label for c in cases if c.label is not None})
    written = sorted([*(out / "imagesTr").iterdir(), *(out / "labelsTr").iterdir()])
    assert len(written) == len(sources) == 5 + 2
    for f in written:
        source = sources[f.name]
        assert f.read_bytes() == source.read_bytes()
        kind = "symlink" if f.is_symlink() else "hardlink" if os.path.samefile(f, source) else "copy"
        assert kind == placed, (f, kind)
        if placed == "symlink":
            assert os.readlink(f) == str(source.resolve())
    ds = check_raw_dataset(out, nnunet=True)  # nnU-Net's verify_dataset_integrity reads them
    img, _ = ds.read_image(ds.labeled_cases()[0].image_files)
    assert np.array_equal(img, src.read_image(src.labeled_cases()[0].image_files)[0])


def test_copies_stay_the_default(tmp_path, syn2d):
    import os

    src = RawDataset.open(syn2d)
    case = src.labeled_cases()[0]
    out = write_raw_dataset(tmp_path / "Dataset902_C", name="C", cases=[CaseData(case.case_id, case.image_files,
                                                                                 case.label_file)],
                            labels=src.labels, file_ending=".png", channel_names={0: "x"},
                            split=make_split([case.case_id], labeled=1, seed=0))
    f = out / "imagesTr" / f"{case.case_id}_0000.png"
    assert not f.is_symlink() and not os.path.samefile(f, case.image_files[0])

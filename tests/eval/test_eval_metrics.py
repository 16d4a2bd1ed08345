"""Dice / HD95 against hand-computed values, ignore label, empty masks, pooling, files and reports.

Empty-mask convention (nnU-Net / MONAI ignore_empty): a class empty in both prediction and truth has no Dice
(None) and is left out of that class's mean; it never counts as a perfect 1.0.
"""
import json
import math

import numpy as np
import pytest

from semisam.eval import (
    case_metrics,
    class_metrics,
    evaluate_arrays,
    evaluate_segmentations,
    labels_from_dataset_json,
    write_report,
)
from semisam.utils.errors import SemisamError


def square_and_rect():
    """gt: 2x2 square (4 px); pred: 2x4 rectangle containing it (8 px). Dice = 2*4/12."""
    gt = np.zeros((1, 8, 8), np.uint8)
    pred = np.zeros((1, 8, 8), np.uint8)
    gt[0, 2:4, 2:4] = 1
    pred[0, 2:4, 2:6] = 1
    return pred, gt


def test_dice_and_hd95_hand_computed():
    pred, gt = square_and_rect()
    m = case_metrics(pred, gt, {"fg": 1})["fg"]
    assert m["dice"] == pytest.approx(2 * 4 / 12)
    assert (m["intersection"], m["n_pred"], m["n_gt"]) == (4, 8, 4)
    # pred boundary pixels lie 0,0,1,2 columns (x2 rows) from gt; the 95th percentile of
    # [0,0,0,0,1,1,2,2] is 2; gt -> pred distances are all 0; symmetric HD95 = 2
    assert m["hd95"] == pytest.approx(2.0)


def test_hd95_uses_spacing_and_drops_z_for_2d():
    pred, gt = square_and_rect()
    m = case_metrics(pred, gt, {"fg": 1}, spacing_zyx=(999.0, 1.0, 0.5))["fg"]
    assert m["hd95"] == pytest.approx(1.0)  # 2 columns of 0.5; the Z spacing 999 plays no role


def test_hd95_3d_single_voxels():
    gt = np.zeros((4, 5, 5), np.uint8)
    pred = np.zeros((4, 5, 5), np.uint8)
    gt[0, 2, 2] = 1
    pred[2, 2, 3] = 1
    m = case_metrics(pred, gt, {"fg": 1}, spacing_zyx=(2.0, 1.0, 1.0))["fg"]
    assert m["dice"] == 0.0
    assert m["hd95"] == pytest.approx(math.sqrt(4.0**2 + 1.0))


def test_ignore_label_pixels_excluded_from_both():
    pred, gt = square_and_rect()
    gt[0, 2:4, 4:6] = 2  # the extra prediction lies on ignored pixels
    gt[0, 0, 0] = 2
    m = case_metrics(pred, gt, {"fg": 1}, ignore_label=2)["fg"]
    assert m["dice"] == pytest.approx(1.0)
    assert m["hd95"] == pytest.approx(0.0)
    assert m["n_pred"] == 4
    # without the ignore label the same maps are an ordinary mismatch
    assert case_metrics(pred, gt, {"fg": 1})["fg"]["dice"] == pytest.approx(2 * 4 / 12)


def test_empty_masks():
    empty = np.zeros((6, 6), bool)
    one = empty.copy()
    one[2, 2] = True
    assert class_metrics(empty, empty) == {"dice": None, "hd95": None, "intersection": 0, "n_pred": 0, "n_gt": 0}
    for pred, gt in ((empty, one), (one, empty)):
        m = class_metrics(pred, gt)
        assert m["dice"] == 0.0 and m["hd95"] is None


def test_summary_means_pooled_and_multiclass():
    pred_a, gt_a = square_and_rect()  # class 1: dice 2/3, hd95 2
    pred_b = np.zeros((1, 8, 8), np.uint8)
    gt_b = np.zeros((1, 8, 8), np.uint8)
    pred_b[0, 0, 0] = 1  # class 1: disjoint single pixels -> dice 0, hd95 = 7
    gt_b[0, 0, 7] = 1
    gt_b[0, 5:7, 5:7] = 2  # class 2: missed entirely in case b -> hd95 undefined
    pred_a[0, 6, 6] = 2
    gt_a[0, 6, 6] = 2  # class 2 perfect in case a
    m = evaluate_arrays([("a", pred_a, gt_a, None), ("b", pred_b, gt_b, None)], {"one": 1, "two": 2})
    one, two = m["classes"]["one"], m["classes"]["two"]
    assert one["mean_dice"] == pytest.approx((2 / 3 + 0) / 2)
    assert one["pooled_dice"] == pytest.approx(2 * 4 / (12 + 2))
    assert one["mean_hd95"] == pytest.approx((2.0 + 7.0) / 2) and one["n_hd95"] == 2
    assert one["n_dice"] == 2 and two["n_dice"] == 2  # no case has a class empty in both maps
    assert two["mean_dice"] == pytest.approx(0.5)
    assert two["mean_hd95"] == pytest.approx(0.0) and two["n_hd95"] == 1
    assert two["pooled_dice"] == pytest.approx(2 * 1 / (1 + 5))
    assert m["mean_dice"] == pytest.approx((one["mean_dice"] + two["mean_dice"]) / 2)
    assert m["pooled_dice"] == pytest.approx(2 * 5 / (14 + 6))
    assert m["n_cases"] == 2 and [c["case_id"] for c in m["cases"]] == ["a", "b"]
    from semisam.eval.metrics import pooled_dice

    assert pooled_dice([(pred_a, gt_a), (pred_b, gt_b)], {"one": 1, "two": 2}) == pytest.approx(2 * 5 / (14 + 6))
    assert pooled_dice([], {"one": 1}) is None


def test_both_empty_case_is_left_out_of_the_class_mean():
    pred_a, gt_a = square_and_rect()  # class "fg": Dice 2/3
    empty = np.zeros((1, 8, 8), np.uint8)  # case b: no fg in prediction or truth
    m = evaluate_arrays([("a", pred_a, gt_a, None), ("b", empty, empty, None)], {"fg": 1})
    b = m["cases"][1]["classes"]["fg"]
    assert b["dice"] is None and b["hd95"] is None
    fg = m["classes"]["fg"]
    assert fg["mean_dice"] == pytest.approx(2 / 3)  # not (2/3 + 1) / 2
    assert (fg["n_dice"], fg["n_hd95"], fg["n_cases"]) == (1, 1, 2)
    assert fg["mean_hd95"] == pytest.approx(2.0)  # the both-empty case adds no 0.0 either
    assert m["mean_dice"] == pytest.approx(2 / 3) and fg["pooled_dice"] == pytest.approx(2 * 4 / 12)
    # the JSON written for it carries nulls
    assert json.loads(json.dumps(m))["cases"][1]["classes"]["fg"]["dice"] is None


def test_class_without_any_defined_case_and_empty_pool():
    pred, gt = square_and_rect()
    m = evaluate_arrays([("a", pred, gt, None)], {"fg": 1, "absent": 2})
    absent = m["classes"]["absent"]
    assert absent["mean_dice"] is None and absent["mean_hd95"] is None and absent["n_dice"] == 0
    assert absent["pooled_dice"] is None  # 0 / 0 is undefined, not 1.0
    assert m["mean_dice"] == pytest.approx(2 / 3)  # the mean over classes skips the undefined class
    empty = np.zeros((1, 8, 8), np.uint8)
    nothing = evaluate_arrays([("e", empty, empty, None)], {"fg": 1})
    assert nothing["mean_dice"] is None and nothing["pooled_dice"] is None and nothing["mean_hd95"] is None
    from semisam.eval.metrics import pooled_dice

    assert pooled_dice([(empty, empty)], {"fg": 1}) is None


def test_pooled_dice_accumulates_counts_only_and_computes_no_hd95(monkeypatch):
    """PooledDice folds cases in one at a time and equals evaluate_arrays' pooled Dice bit for bit (overall and
    per class, 2D and 3D, with an ignore label and a keep mask); pooled_dice never computes HD95."""
    from semisam.eval.metrics import PooledDice, pooled_dice

    labels, ignore = {"a": 1, "b": 2}, 3
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 4, shape), rng.integers(0, 4, shape)) for shape in ((1, 9, 7), (3, 6, 5), (1, 4, 4))]
    cases.append((np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int)))  # nothing in either map
    keep = rng.random((3, 6, 5)) < 0.6
    expected = evaluate_arrays([(str(i), p, g, None) for i, (p, g) in enumerate(cases)], labels, ignore)
    kept = evaluate_arrays([("k", np.where(keep, cases[1][0], ignore), np.where(keep, cases[1][1], ignore), None)],
                           labels, ignore)

    def no_hd95(*args, **kwargs):
        raise AssertionError("HD95 computed for a pooled Dice")

    monkeypatch.setattr("monai.metrics.compute_hausdorff_distance", no_hd95)
    acc = PooledDice(labels, ignore)
    for pred, gt in cases:
        acc.add(pred, gt)
    assert acc.n_cases == 4 and acc.value() == expected["pooled_dice"]
    assert all(acc.class_value(k) == expected["classes"][k]["pooled_dice"] for k in labels)
    assert all(type(v) is int for v in (*acc.intersection.values(), *acc.size.values()))
    assert pooled_dice(cases, labels, ignore) == expected["pooled_dice"]
    masked = PooledDice(labels, ignore)
    masked.add(*cases[1], keep=keep)  # a keep mask: pixels outside it are left out
    assert masked.value() == kept["pooled_dice"]
    assert PooledDice(labels).value() is None
    with pytest.raises(SemisamError, match="differs from ground truth shape"):
        acc.add(cases[0][0], cases[1][1])


def test_student_predicting_nothing_scores_zero_on_a_three_class_set():
    """Each case lacks some of the 3 classes; a blank prediction used to collect 1.0 for every absent class."""
    labels = {"a": 1, "b": 2, "c": 3}
    present = [(1,), (2,), (3,), (1, 2)]  # classes in each case's truth
    cases = []
    for i, classes in enumerate(present):
        gt = np.zeros((1, 16, 16), np.uint8)
        for k in classes:
            gt[0, 4 * k - 4:4 * k - 1, 2:6] = k
        cases.append((f"c{i}", np.zeros_like(gt), gt, None))
    m = evaluate_arrays(cases, labels)
    assert m["mean_dice"] == 0.0 and m["pooled_dice"] == 0.0
    for name, value in labels.items():
        c = m["classes"][name]
        assert c["mean_dice"] == 0.0 and c["n_dice"] == sum(value in p for p in present)
        assert c["mean_hd95"] is None and c["n_hd95"] == 0  # one mask empty everywhere: HD95 undefined
    # the old convention (both empty = 1.0) would have reported (2/4 + 2/4 + 3/4) / 3 ≈ 0.583 here
    old = np.mean([np.mean([0.0 if v in p else 1.0 for p in present]) for v in labels.values()])
    assert old == pytest.approx(0.5833, abs=1e-3)


def test_shape_mismatch_is_a_user_error():
    with pytest.raises(SemisamError, match="shape"):
        case_metrics(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), {"fg": 1})


def test_labels_from_dataset_json():
    labels, ignore = labels_from_dataset_json({"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}})
    assert labels == {"a": 1, "b": 2} and ignore == 3
    with pytest.raises(SemisamError, match="region"):
        labels_from_dataset_json({"labels": {"background": 0, "r": [1, 2]}})


def test_files_png_and_report(tmp_path):
    from PIL import Image

    pred, gt = square_and_rect()
    gt[0, 7, 7] = 2
    Image.fromarray(pred[0]).save(tmp_path / "p.png")
    Image.fromarray(gt[0]).save(tmp_path / "g.png")
    empty = np.zeros((8, 8), np.uint8)
    Image.fromarray(empty).save(tmp_path / "p2.png")
    Image.fromarray(gt[0]).save(tmp_path / "g2.png")
    m = evaluate_segmentations([("c1", tmp_path / "p.png", tmp_path / "g.png"),
                                ("c2", tmp_path / "p2.png", tmp_path / "g2.png")], {"fg": 1}, ignore_label=2)
    assert m["cases"][0]["classes"]["fg"]["dice"] == pytest.approx(2 / 3)
    assert m["cases"][0]["classes"]["fg"]["hd95"] == pytest.approx(2.0)  # PNG spacing (999, 1, 1): Z dropped
    assert m["cases"][1]["classes"]["fg"]["hd95"] is None
    json_path, md_path = write_report(m, tmp_path / "report", title="test")
    loaded = json.loads(json_path.read_text())
    assert loaded["cases"][1]["classes"]["fg"]["hd95"] is None  # null in JSON
    assert loaded["classes"]["fg"]["n_hd95"] == 1
    md = md_path.read_text()
    assert "| fg | 1 | 2 | 0.3333 | 2/2 | 2.00 | 1/2 | 0.5000 |" in md
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["metrics.json", "metrics.md"]
    with pytest.raises(SemisamError, match="does not exist"):
        evaluate_segmentations([("x", tmp_path / "missing.png", tmp_path / "g.png")], {"fg": 1})


def test_files_nifti_spacing_from_image(tmp_path):
    SimpleITK = pytest.importorskip("SimpleITK")
    gt = np.zeros((4, 5, 5), np.uint8)
    pred = np.zeros((4, 5, 5), np.uint8)
    gt[0, 2, 2] = 1
    pred[2, 2, 2] = 1
    for arr, name in ((gt, "g.nii.gz"), (pred, "p.nii.gz")):
        img = SimpleITK.GetImageFromArray(arr)
        img.SetSpacing((0.5, 0.5, 3.0))  # x, y, z
        SimpleITK.WriteImage(img, str(tmp_path / name))
    m = evaluate_segmentations([("c", tmp_path / "p.nii.gz", tmp_path / "g.nii.gz")], {"fg": 1})
    assert m["cases"][0]["classes"]["fg"]["hd95"] == pytest.approx(6.0)  # 2 slices of 3 mm

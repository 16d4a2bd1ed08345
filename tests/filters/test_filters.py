"""Each filter alone on hand-made arrays, the case filter, and the per-case stats accumulator."""
import json

import numpy as np
import pytest
import torch

from semisam.filters import (CaseStats, PseudoLabelStats, agreement, case_accept, foreground_region, object_accept,
                             perturbation_uncertainty, pixel_accept, stability_score)
from semisam.utils.errors import SemisamError


def test_stability_sharp_vs_soft_logits():
    sharp = np.full((10, 10), -10.0)
    sharp[2:8, 2:8] = 10.0
    # soft: a ramp from -5 to 4 along x -> 10 columns, one per logit value
    soft = np.tile(np.arange(-5.0, 5.0), (10, 1))
    empty = np.full((10, 10), -10.0)
    s = stability_score(np.stack([sharp, soft, empty]), offset=1.0)
    assert s[0] == 1.0
    # > 1: columns with value 2,3,4 (3); > -1: columns 0..4 (5) -> 3/5
    assert s[1] == pytest.approx(3 / 5)
    assert np.isnan(s[2])  # segment-anything's 0/0: an empty mask fails every stability threshold
    # torch input, larger offset lowers the soft score
    t = stability_score(torch.tensor(np.stack([sharp, soft])), offset=2.0)
    assert t[0] == 1.0 and t[1] == pytest.approx(2 / 6)


def test_agreement_is_iou():
    t = np.zeros((3, 4, 4), bool)
    s = np.zeros((3, 4, 4), bool)
    t[0, :2] = True  # 8 px
    s[0, 1:3] = True  # 8 px, 4 shared -> 4 / 12
    t[1] = s[1] = True
    a = agreement(t, s)
    np.testing.assert_allclose(a, [1 / 3, 1.0, 1.0])  # third: both empty -> 1
    with pytest.raises(SemisamError, match="differ in shape"):
        agreement(t, s[:2])


def test_perturbation_uncertainty():
    m = np.zeros((4, 2, 3, 3), bool)
    m[:, 0, 1, 1] = True  # object 0: identical masks -> zero uncertainty
    m[:2, 1, 0, 0] = True  # object 1: pixel (0,0) in 2 of 4 masks -> 1
    m[:, 1, 2, 2] = True  # pixel (2,2) in all -> 0
    m[:1, 1, 0, 1] = True  # pixel (0,1) in 1 of 4 -> 2 * 0.25 = 0.5
    pix, obj = perturbation_uncertainty(m)
    assert pix.shape == (2, 3, 3)
    assert (pix[0] == 0).all() and obj[0] == 0
    assert pix[1, 0, 0] == 1.0 and pix[1, 2, 2] == 0.0 and pix[1, 0, 1] == 0.5
    assert obj[1] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    _, one = perturbation_uncertainty(m[:1])
    assert (one == 0).all()
    reliable = pixel_accept(pix, uncertainty_thresh=0.6)
    assert not reliable[0, 0] and reliable[0, 1] and reliable[2, 2]
    assert pixel_accept(pix, 1.0).all()


def test_object_accept_thresholds_and_reasons():
    iou = np.array([0.9, 0.4, 0.9, 0.9, np.nan])
    stab = np.array([0.95, 0.95, 0.5, 0.95, 0.95])
    agr = np.array([0.8, 0.8, 0.8, 0.2, 0.8])
    unc = np.array([0.1, 0.1, 0.1, 0.9, 0.1])
    accept, reasons = object_accept(
        iou, stab, agr, unc, iou_thresh=0.5, stability_thresh=0.9, agreement_thresh=0.5, uncertainty_thresh=0.3
    )
    assert accept.tolist() == [True, False, False, False, False]
    assert reasons == [(), ("iou_pred",), ("stability",), ("agreement", "uncertainty"), ("iou_pred",)]
    # neutral thresholds accept everything finite; unused scores are skipped
    accept, _ = object_accept(iou[:4], stab[:4], agr[:4], unc[:4])
    assert accept.all()
    accept, reasons = object_accept(agreement=agr, agreement_thresh=0.5)
    assert accept.tolist() == [True, True, True, False, True]
    with pytest.raises(SemisamError, match="at least one score"):
        object_accept()
    with pytest.raises(SemisamError, match="differ in length"):
        object_accept(iou, stab[:2])


def test_case_accept_fraction_of_foreground():
    student = np.zeros((4, 4), int)
    student[0, :] = 1  # 4 px
    teacher = np.zeros((1, 4, 4), bool)
    teacher[0, 1, :] = True  # 4 more px
    fg = foreground_region(student, teacher)
    assert fg.sum() == 8
    accept = np.ones((4, 4), bool)
    accept[1, :3] = False  # 5 of 8 foreground pixels reliable
    assert case_accept(accept, fg, 0.5) == (True, 5 / 8)
    assert case_accept(accept, fg, 0.7) == (False, 5 / 8)
    assert case_accept(accept, np.zeros((4, 4), bool), 0.0) == (False, 0.0)
    student[3, 3] = 9
    assert foreground_region(student, teacher[:0], ignore_label=9).sum() == 4


def test_case_stats_and_accumulator(tmp_path):
    fg = np.zeros((4, 4), bool)
    fg[:2] = True
    acc_px = np.ones((4, 4), bool)
    acc_px[0, :2] = False
    accept, reasons = object_accept([0.9, 0.2, 0.1], agreement=[0.9, 0.9, 0.1], iou_thresh=0.5, agreement_thresh=0.5)
    a = CaseStats.from_arrays(
        "case_a", accept=accept, reasons=reasons, accept_pixel_mask=acc_px, foreground=fg, case_min_accept=0.5,
        iou_pred=[0.9, 0.2, 0.1], agreement=[0.9, 0.9, 0.1],
    )
    assert (a.n_objects, a.n_accepted, a.accepted) == (3, 1, True)
    assert a.reject_reasons == {"iou_pred": 2, "agreement": 1}
    assert a.foreground_accept_fraction == 6 / 8 and a.pixel_accept_fraction == 14 / 16
    assert a.mean_iou_pred == pytest.approx(0.4) and a.mean_stability is None
    acc = PseudoLabelStats()
    acc.append(a)
    acc.append(CaseStats.skipped_case("case_b", "no_foreground"))
    summary = acc.aggregate()
    assert summary["n_cases"] == 2 and summary["n_skipped"] == 1
    assert summary["skip_reasons"] == {"no_foreground": 1}
    assert summary["n_accepted_cases"] == 1 and summary["case_accept_rate"] == 1.0
    assert summary["object_accept_rate"] == pytest.approx(1 / 3)
    assert summary["reject_reasons"] == {"iou_pred": 2, "agreement": 1}
    path = acc.save(tmp_path / "stats.json")
    loaded = json.loads(path.read_text())
    assert loaded["summary"] == json.loads(json.dumps(summary))
    assert [c["case_id"] for c in loaded["cases"]] == ["case_a", "case_b"]
    acc.reset()
    assert len(acc) == 0 and acc.aggregate()["case_accept_rate"] is None


def test_boundary_band_ignores_background_next_to_foreground_only():
    from semisam.filters import boundary_band

    lab = np.zeros((1, 7, 7), np.uint8)
    lab[0, 3, 3] = 1
    lab[0, 0, 0] = 2  # already ignored
    out = boundary_band(lab, ignore_label=2, width=1)
    expected = np.zeros((7, 7), np.uint8)
    expected[3, 3] = 1
    expected[0, 0] = expected[2, 3] = expected[4, 3] = expected[3, 2] = expected[3, 4] = 2  # 4-neighbours
    np.testing.assert_array_equal(out[0], expected)
    assert lab[0, 2, 3] == 0  # input untouched
    np.testing.assert_array_equal(boundary_band(lab, 2, 0), lab)
    # volumes: the band grows within slices, never across them
    vol = np.zeros((3, 5, 5), np.uint8)
    vol[1, 2, 2] = 1
    band = boundary_band(vol, 2, 2)
    assert (band[0] == 0).all() and (band[2] == 0).all() and (band[1] == 2).sum() == 12

"""Plots, overlay gallery and report.md from round records: real PNG / Markdown files on disk."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from semisam.tracking import overlay_gallery, plot_rounds, write_report
from semisam.tracking.gallery import label_rgba
from semisam.tracking.report import selected_entry


def records(with_hidden: bool = True) -> list[dict]:
    out = []
    for r, (dice, hd) in enumerate([(0.70, 5.0), (0.78, 4.0), (0.76, 4.5)]):
        rec = {
            "round": r, "n_labeled": 4, "n_pseudo": 3 * r, "n_added": None if r == 0 else 3,
            "accept_rate": None if r == 0 else 0.5 + 0.1 * r,
            "test": {"dice_mean": dice, "hd95_mean": hd,
                     "dice_per_class": {"tumour": dice - 0.05, "oedema": dice + 0.05}},
            "val": {"dice_mean": dice + 0.02},
            "timings": {"train_s": 100.0, "predict_s": 5.0, "teacher_s": 10.0 * r},
            "cache": {"hits": 4 * r, "misses": 4 if r <= 1 else 0},
        }
        if with_hidden and r > 0:
            rec["pseudo_quality"] = {"accepted_dice": 0.9, "rejected_dice": 0.6, "student_dice": 0.85}
        out.append(rec)
    return out


def test_plot_rounds_writes_pngs_and_skips_missing(tmp_path):
    paths = plot_rounds(list(reversed(records())), tmp_path / "plots")
    assert [p.name for p in paths] == ["test_dice.png", "test_hd95.png", "accept_rate.png", "pseudo_quality.png"]
    for p in paths:
        image = imread(p)
        assert p.stat().st_size > 1000 and image.shape[0] > 100 and image.shape[1] > 100
    assert not list((tmp_path / "plots").glob(".*tmp*"))  # atomic writes leave no temporaries

    bare = [{"round": r["round"], "test": {"dice_mean": r["test"]["dice_mean"]}} for r in records(False)]
    assert [p.name for p in plot_rounds(bare, tmp_path / "bare")] == ["test_dice.png"]
    assert plot_rounds([], tmp_path / "none") == []


def test_overlay_gallery_rows_and_ignore_colour(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < 100).astype(np.int64)
    pseudo = disc.copy()
    pseudo[20:28, 30:36] = 2  # ignore label on the rim
    item = {"case_id": "c0", "image": rng.random((48, 48)) + disc, "student": disc,
            "teacher": np.roll(disc, 2, axis=1), "pseudo": pseudo}
    items = [dict(item, case_id=f"c{i}") for i in range(3)]
    items.append({"case_id": "3d", "image": rng.random((1, 5, 48, 48)),  # (C, Z, Y, X) with Z > 1
                  "student": np.stack([disc * 0] * 4 + [disc])[None], "teacher": None,
                  "pseudo": np.stack([pseudo] * 5)[None]})
    one = imread(overlay_gallery(items[:1], ignore_label=2, out_file=tmp_path / "one.png"))
    two = imread(overlay_gallery(items, ignore_label=2, out_file=tmp_path / "g.png", max_cases=2))
    four = imread(overlay_gallery(items, ignore_label=2, out_file=tmp_path / "g4.png", max_cases=4))
    # bbox_inches="tight" trims to the text extents, which vary by a few pixels with the captions and fonts
    # (929 vs 943 px seen in a fresh environment): same column count means widths within 3 %.
    assert abs(one.shape[1] - two.shape[1]) <= 0.03 * one.shape[1] and one.shape[1] > 3 * one.shape[0]  # 4 cols
    assert two.shape[0] > 1.6 * one.shape[0] and four.shape[0] > 1.6 * two.shape[0]

    rgba = label_rgba(pseudo, ignore_label=2)
    assert rgba[0, 0, 3] == 0  # background transparent
    assert np.allclose(rgba[24, 32], (0.5, 0.5, 0.5, 0.55))  # ignore: grey
    assert rgba[24, 24, 3] > 0 and not np.allclose(rgba[24, 24, :3], 0.5)  # class 1 coloured
    with pytest.raises(ValueError, match="shape"):
        overlay_gallery([dict(item, student=disc[:40])], 2, tmp_path / "bad.png")


def test_overlay_gallery_draws_an_rgb_case_in_colour(tmp_path):
    """An RGB case (what the teacher sees of an RGB dataset) is drawn in colour, its channels scaled together: a
    red disc on a green field stays red on green in the image column; a grey case of the same layout has no
    colour there."""
    yy, xx = np.mgrid[:48, :48]
    disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < 100).astype(np.int64)
    rgb = np.stack([200.0 * disc, 120.0 * (1 - disc), np.zeros((48, 48))])[:, None]  # (3, Z=1, Y, X), 0..255 scale
    item = {"case_id": "rgb", "image": rgb, "rgb": True, "student": disc[None], "teacher": disc[None],
            "pseudo": disc[None]}
    png = imread(overlay_gallery([item], ignore_label=None, out_file=tmp_path / "rgb.png"))[..., :3]
    grey = imread(overlay_gallery([dict(item, image=rgb[0], rgb=False)], None, tmp_path / "grey.png"))[..., :3]
    first_column = png[:, : png.shape[1] // 4]
    red = (first_column[..., 0] > 0.8) & (first_column[..., 1] < 0.2)
    green = (first_column[..., 1] > 0.4) & (first_column[..., 0] < 0.2)
    assert red.sum() > 100 and green.sum() > 100, (red.sum(), green.sum())
    spread = grey[:, : grey.shape[1] // 4].max(-1) - grey[:, : grey.shape[1] // 4].min(-1)
    assert spread.max() < 0.05  # the grey image column has no colour
    with pytest.raises(ValueError, match="RGB image"):
        overlay_gallery([dict(item, image=rgb[:2])], None, tmp_path / "bad.png")


def test_report_has_a_row_per_round_and_the_delta(tmp_path):
    plots = plot_rounds(records(), tmp_path / "plots")
    path = write_report(tmp_path, records(), "loop:\n  rounds: 2\n", plots, selected=2, selection="last")
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| round")]
    assert len(rows) == 3
    assert rows[0].startswith("| 0 | 4 | 0 | – | 0.700 | 0.650 | 0.750 | 5.00 |")
    assert rows[1].startswith("| 1 | 4 | 3 (+3) | 60.0 % | 0.780 |") and "0.900 | 0.850" in rows[1]
    assert "| 4/4 | 115.0 |" in rows[1]
    assert "Dice tumour" in text and "PL Dice accepted" in text and "val Dice" in text
    # the selected (last) round, not round 1 whose test Dice 0.78 is the highest
    assert ("**Selected round: 2** (last round), test Dice 0.760, delta vs round 0 (supervised): +0.060."
            in text)
    assert "Best round" not in text and "+0.080" not in text
    assert "![test_dice](plots/test_dice.png)" in text and "rounds: 2" in text
    text = write_report(tmp_path / "v", records(), None, None, selected=1, selection="val").read_text()
    assert "**Selected round: 1** (best validation Dice), test Dice 0.780, delta vs round 0 (supervised): +0.080." in text

    bare = [{"round": 1, "test": {"dice_mean": 0.5}}]
    text = write_report(tmp_path / "b", bare, None, [], selected=1).read_text()
    assert "no round 0 baseline" in text and "PL Dice" not in text and "HD95" not in text
    text = write_report(tmp_path / "n", [{"round": 0, "test": {"dice_mean": None}}], None, [], selected=0).read_text()
    assert "**Selected round: 0** (last round); no test Dice recorded." in text and "| 0 | – |" in text
    assert "No round has finished yet" in write_report(tmp_path / "c", [], None, None).read_text()


def test_selected_entry_reports_the_given_round_and_its_delta():
    recs = records()
    recs[2]["test"]["pooled_dice"] = 0.8
    recs[0]["test"]["pooled_dice"] = None  # undefined on one side: no delta for it
    entry = selected_entry(recs, 2, "last")
    assert entry["round"] == 2 and entry["selection"] == "last" and (entry["n_labeled"], entry["n_pseudo"]) == (4, 6)
    assert entry["test"] == recs[2]["test"] and entry["val"] == {"dice_mean": pytest.approx(0.78)}
    assert entry["pseudo_quality"]["accepted_dice"] == 0.9 and entry["round0_test"] == recs[0]["test"]
    delta = entry["delta_vs_round0"]
    assert delta["dice_mean"] == pytest.approx(0.06) and delta["hd95_mean"] == pytest.approx(-0.5)
    assert delta["pooled_dice"] is None
    assert delta["dice_per_class"] == {"tumour": pytest.approx(0.06), "oedema": pytest.approx(0.06)}
    assert selected_entry(recs, 0, "last")["pseudo_quality"] is None
    assert selected_entry(recs[1:], 2, "val")["delta_vs_round0"] is None  # no round 0
    assert selected_entry(recs, None, "last") is None
    with pytest.raises(ValueError, match="selection"):
        selected_entry(recs, 2, "test")
    with pytest.raises(ValueError, match="no record"):
        selected_entry(recs, 7, "last")

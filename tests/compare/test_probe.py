"""`semisam probe` on a compare-shaped folder: a run's round-0 probabilities (here made by eroding the hidden
labels: a student whose outlines are too tight), a tiny random SAM, rules scored with every pixel counted."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from data_prep.synthetic import make_synthetic
from semisam.config import compose, to_yaml
from semisam.data import RawDataset


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    data = make_synthetic(root / "Dataset900_Synthetic", n_train=5, n_labeled=1, n_test=1, size=32, seed=4)
    run = root / "cmp" / "runs" / "samdsk" / "draw0_seed0"
    cfg = compose([f"dataset.raw_dir={data}", "experiment=samdsk", "teacher=tiny_random", "teacher.adapt.enabled=false",
                   f"run_dir={run}", "device=cpu"])
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    ds = RawDataset.open(data)
    probs_dir = run / "round_00" / "pred_unlabeled"
    probs_dir.mkdir(parents=True)
    for case in ds.unlabeled_cases():  # a fixture standing in for a trained student: too tight by one pixel
        hidden = ds.read_seg(ds.hidden_label_file(case.case_id))[0][0]
        fg = ndimage.binary_erosion(hidden > 0, np.ones((1, 3, 3))).astype(np.float32) * 0.8 + 0.1
        np.savez(probs_dir / f"{case.case_id}.npz", probabilities=np.stack([1 - fg, fg]))
    return root / "cmp"


def probe(compare_dir: Path, out: Path, *rules: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "semisam", "probe", str(compare_dir), "--out", str(out), "--rules", *rules]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_probe_scores_rules_against_the_student_and_resumes(compare_dir, tmp_path):
    out = tmp_path / "probe"
    rules = ["samdsk filters.fusion=student", "samdsk", "samdsk filters.fusion=sam filters.case_min_accept=0 filters.agreement_thresh=0"]
    proc = probe(compare_dir, out, *rules)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "probe.json").read_text())["tables"]["cmp"]
    student = table[rules[0]]["student"]["mean"]
    assert 0 < student < 1
    # the student's own labels, and agreement fusion (which keeps only the student's labels), cannot change
    # the every-pixel Dice: ignored pixels and rejected cases count as the student's label
    for rule in rules[:2]:
        assert table[rule]["dice_all"]["mean"] == pytest.approx(student)
        assert table[rule]["delta"]["mean"] == pytest.approx(0.0)
    # SAM's masks replace the student's: a random teacher changes the score
    assert table[rules[2]]["dice_all"]["mean"] != pytest.approx(student)
    assert table[rules[2]]["accept"]["mean"] == pytest.approx(1.0)
    assert "| `samdsk` | 1 |" in (out / "probe.md").read_text()

    per_run = out / "runs" / "cmp" / "draw0_seed0.json"
    stamp = per_run.stat().st_mtime_ns
    again = probe(compare_dir, out, *rules)
    assert again.returncode == 0 and per_run.stat().st_mtime_ns == stamp  # finished rules are not recomputed


def test_probe_adapts_its_own_teacher_and_keeps_one_adaptation_per_folder(compare_dir, tmp_path):
    import torch

    from semisam.teacher.models import build_teacher_model

    out = tmp_path / "probe"
    proc = subprocess.run([sys.executable, "-m", "semisam", "probe", str(compare_dir), "--out", str(out), "--rules",
                           "samdsk", "--adapt-steps", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "probe.json").read_text())["adapt_steps"] == 3
    assert "adapted for 3 steps" in (out / "probe.md").read_text()
    # the run was composed with adaptation off: the probe adapted a teacher of its own, under its out folder
    blob = torch.load(out / "adapted" / "cmp" / "draw0_seed0.pt", map_location="cpu", weights_only=True)
    base = build_teacher_model("tiny_random", None, device=torch.device("cpu")).mask_decoder.state_dict()
    assert any(not torch.equal(blob["mask_decoder"][k], v) for k, v in base.items())
    assert not (compare_dir / "runs" / "samdsk" / "draw0_seed0" / "teacher").exists()  # the run is left as it was
    again = probe(compare_dir, out, "samdsk")  # the runs' own adaptation into the same folder: refused
    assert again.returncode == 2 and "was probed with the teacher adapted for 3 steps" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_probe_finds_a_method_by_its_compare_word_or_its_folder(compare_dir):
    from semisam.compare.probe import find_runs

    word = "samdsk filters.fusion=union"  # as given to `semisam compare --methods`, and its folder name
    folder = compare_dir / "runs" / "samdsk__filters.fusion-union" / "draw0_seed0"
    (folder / "round_00" / "pred_unlabeled").mkdir(parents=True)
    (folder / "config.yaml").write_text("{}")
    assert find_runs(compare_dir, word) == find_runs(compare_dir, "samdsk__filters.fusion-union") == [folder]
    assert find_runs(compare_dir, "samdsk") == [compare_dir / "runs" / "samdsk" / "draw0_seed0"]
    shutil.rmtree(folder.parent)  # the module's compare folder as the other tests expect it


def test_probe_bad_input_is_one_line(compare_dir, tmp_path):
    for args, needle in (([str(tmp_path)], "holds no run"),
                         ([str(compare_dir), "--rules", "samdks"], "did you mean 'samdsk'"),
                         ([str(compare_dir), "--rules", "samdsk teacher=none filters=student"], "has no teacher"),
                         ([str(compare_dir), "--rules", "samdsk", "--adapt-steps", "-1"], "is negative")):
        if "--rules" not in args:
            args += ["--rules", "samdsk"]
        proc = subprocess.run([sys.executable, "-m", "semisam", "probe", *args, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()

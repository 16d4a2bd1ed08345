"""The corrector recipe through `semisam run` with the real embedded LiteMedSAM on real nuclei tiles (one labeled
tile, a tiny student; the teacher is not adapted here, adaptation has its own tests): the teacher changes the
student's labels — it adds foreground the student missed and never teaches background where the student saw a
nucleus — and the next student trains on them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep.nuclei import make_nuclei
from semisam.data import RawDataset

pytestmark = pytest.mark.slow


def test_corrector_round_with_litemedsam_on_nuclei(tmp_path):
    data = make_nuclei(tmp_path / "Dataset501_Nuclei", tile=128, labeled=1, n_test=8, seed=0)  # 7 unlabeled
    run_dir = tmp_path / "run"
    env = {**os.environ, "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "semisam", "run", "experiment=corrector", f"dataset.raw_dir={data}",
           f"run_dir={run_dir}", "student=tiny", "student.epochs=4", "student.iterations_per_epoch=10", "loop.max_rounds=1",
           "teacher.adapt.enabled=false", "logger=disabled", "device=cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]

    steps = json.loads((run_dir / "manifest.json").read_text())["steps"]
    teach = steps["r1/teacher"]["result"]
    assert teach["accepted"], "the corrector accepted no case"
    assert "r1/train" in steps and steps["r1/dataset"]["result"]["n_pseudo"] == len(teach["accepted"])
    ds = RawDataset.open(data)
    added = 0
    for case in teach["accepted"]:
        pseudo = ds.read_seg(teach["files"][case])[0][0]
        from semisam.data.probabilities import load_probabilities

        probs, _ = load_probabilities(run_dir / "round_00" / "pred_unlabeled" / f"{case}.npz")
        student = probs.argmax(0)
        assert not ((student == 1) & (pseudo == 0)).any()  # union: a student nucleus is never background
        added += int(((student == 0) & (pseudo == 1)).sum())
    assert added > 0  # SAM changed labels: foreground where the student said background
    quality = teach["pseudo_quality"]
    assert quality["n_accepted"] == len(teach["accepted"]) and quality["teacher_dice"] is not None
    assert np.isfinite(json.loads((run_dir / "summary.json").read_text())["selected"]["test"]["dice_mean"])

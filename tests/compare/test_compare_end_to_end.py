"""`semisam compare` end to end: real nnU-Net students on tiny synthetic data, 2 methods × 2 seeds, offline W&B.

The table's paired difference is checked against the per-run numbers each run wrote itself, the loop method
is shown to reuse the supervised run's round 0, and a second invocation with one more seed recomputes
nothing that was finished.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_files import wait_for_records

from data_prep.synthetic import make_synthetic

pytestmark = pytest.mark.slow


def compare(dataset: Path, out: Path, seeds: list[str], wandb_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_DIR": str(wandb_dir), "nnUNet_n_proc_DA": "0"}
    env.pop("WANDB_MODE", None)  # the recipe's logger decides (offline here)
    cmd = [sys.executable, "-m", "semisam", "compare", "--dataset", str(dataset), "--out", str(out),
           "--labeled", "2", "--labeled-draws", "0", "--methods", "supervised", "selftrain", "--seeds", *seeds,
           "--", "student=tiny", "loop.max_rounds=1", "device=cpu", "logger=offline"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def run_numbers(run_dir: Path) -> dict:
    """What the run itself reports for its selected round."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    record = next(r for r in rounds if r["round"] == summary["selected_round"])
    return {"selected": summary["selected_round"], "dice": record["test"]["dice_mean"]}


def test_compare_two_methods_two_seeds(tmp_path):
    dataset = make_synthetic(tmp_path / "Dataset900_Synthetic", n_train=6, n_labeled=2, n_test=2, size=32, seed=2)
    out, wandb_dir = tmp_path / "cmp", tmp_path / "wb"

    first = compare(dataset, out, ["0"], wandb_dir)
    assert "[2/2] finished" in first.stderr
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/summary.json")}
    assert len(stamps) == 2

    second = compare(dataset, out, ["0", "1"], wandb_dir)
    assert "2 of 4 runs to go" in second.stderr  # seed 0's runs are read, not recomputed
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    result = json.loads((out / "compare.json").read_text())
    runs = {(r["method"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {(m, s) for m in ("supervised", "selftrain") for s in (0, 1)}
    own = {k: run_numbers(Path(r["run_dir"])) for k, r in runs.items()}
    for k, r in runs.items():
        assert r["status"] == "done" and r["dice"] == pytest.approx(own[k]["dice"])
    assert {own[("selftrain", s)]["selected"] for s in (0, 1)} == {1}  # the last round, not a best-of-test
    diffs = [own[("selftrain", s)]["dice"] - own[("supervised", s)]["dice"] for s in (0, 1)]
    vs = result["methods"]["selftrain"]["vs_supervised"]
    assert vs["diffs"] == pytest.approx(diffs) and vs["mean"] == pytest.approx(sum(diffs) / 2)
    assert vs["lo"] <= vs["mean"] <= vs["hi"]
    assert f"{vs['mean']:+.3f} [{vs['lo']:+.3f}, {vs['hi']:+.3f}]" in second.stdout  # the printed table
    md = (out / "compare.md").read_text()
    assert md.count("`selftrain`") == 1 and f"semisam compare --dataset {dataset} --out {out}" in md
    assert (out / "compare.png").stat().st_size > 5000

    # the loop method's round 0 is the supervised run's student, used in place
    for s in (0, 1):
        steps = json.loads((Path(runs[("selftrain", s)]["run_dir"]) / "manifest.json").read_text())["steps"]
        assert steps["r0/train"]["shared_from"] == runs[("supervised", s)]["run_dir"]
        assert "shared_from" not in steps["r1/train"]
        assert runs[("selftrain", s)]["shared_round0"] is True

    # one W&B group for the comparison, runs tagged with method, draw and seed
    found = set()
    for folder in (wandb_dir / "wandb").glob("offline-run-*"):
        run = next(r.run for r in wait_for_records(folder) if r.WhichOneof("record_type") == "run")
        assert run.run_group == "compare-cmp"
        found.add(tuple(sorted(run.tags)))
    assert found == {tuple(sorted([m, "draw0", f"seed{s}", "compare"])) for m in ("supervised", "selftrain")
                     for s in (0, 1)}

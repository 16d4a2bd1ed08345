"""`semisam compare` end to end: real nnU-Net students on tiny synthetic data, 2 methods × 2 seeds, offline W&B.

The table's paired difference is checked against the per-run numbers each run wrote itself, the loop method
is shown to reuse the supervised run's round 0, the table is written as soon as the first run finishes
(marked interim while the other runs), a second invocation with one more seed recomputes nothing that was
finished, and ``--report`` with a third seed writes the table of the finished runs without starting one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wandb_files import wait_for_records

from data_prep.synthetic import make_synthetic

pytestmark = pytest.mark.slow


def command(dataset: Path, out: Path, seeds: list[str], *flags: str) -> list[str]:
    return [sys.executable, "-m", "semisam", "compare", "--dataset", str(dataset), "--out", str(out), "--labeled",
            "2", "--labeled-draws", "0", "--methods", "supervised", "selftrain", "--seeds", *seeds, *flags,
            "--", "student=tiny", "loop.max_rounds=1", "device=cpu", "logger=offline"]


def environment(wandb_dir: Path) -> dict:
    env = {**os.environ, "WANDB_DIR": str(wandb_dir), "nnUNet_n_proc_DA": "0"}
    env.pop("WANDB_MODE", None)  # the recipe's logger decides (offline here)
    return env


def compare(dataset: Path, out: Path, seeds: list[str], wandb_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(dataset, out, seeds, *flags), capture_output=True, text=True, timeout=1200,
                          env=environment(wandb_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def compare_watching_the_table(dataset: Path, out: Path, wandb_dir: Path) -> tuple[str, str]:
    """The first invocation (seed 0: supervised, then selftrain on its round 0), with ``compare.md`` read while
    it runs: its text as first seen, and the process's stderr."""
    proc = subprocess.Popen(command(dataset, out, ["0"]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=environment(wandb_dir))
    seen, deadline = "", time.time() + 1200
    while proc.poll() is None and not seen and time.time() < deadline:
        if (out / "compare.md").is_file():
            seen = (out / "compare.md").read_text()
        time.sleep(0.2)
    _, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
    assert proc.returncode == 0, err[-4000:]
    return seen, err


def run_numbers(run_dir: Path) -> dict:
    """What the run itself reports for its selected round."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    record = next(r for r in rounds if r["round"] == summary["selected_round"])
    return {"selected": summary["selected_round"], "dice": record["test"]["dice_mean"]}


def test_compare_two_methods_two_seeds(tmp_path):
    dataset = make_synthetic(tmp_path / "Dataset900_Synthetic", n_train=6, n_labeled=2, n_test=2, size=32, seed=2)
    out, wandb_dir = tmp_path / "cmp", tmp_path / "wb"

    interim, first = compare_watching_the_table(dataset, out, wandb_dir)
    assert "[2/2] finished" in first
    # written when supervised-only finished, while selftrain (a round of retraining) still ran
    assert "**Interim: 1 of 2 runs finished**, 1 not yet" in interim and "| `supervised` | 1 |" in interim
    assert "Interim" not in (out / "compare.md").read_text()
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

    # --report: the same comparison asked with a third seed starts nothing and tables the finished runs
    report = compare(dataset, out, ["0", "1", "2"], wandb_dir, "--report")
    assert "4 of 6 runs are finished" in report.stderr and "started" not in report.stderr
    assert not list((out / "runs").glob("*/draw0_seed2*"))
    assert "**Interim: 4 of 6 runs finished**, 2 not yet" in (out / "compare.md").read_text()
    again = json.loads((out / "compare.json").read_text())["methods"]["selftrain"]
    assert again["finished"] == 2 and again["runs"] == 3 and again["vs_supervised"]["diffs"] == pytest.approx(diffs)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    elsewhere = subprocess.run(command(dataset, tmp_path / "none", ["0"], "--report"), capture_output=True,
                               text=True, timeout=300, env=environment(wandb_dir))
    assert elsewhere.returncode == 2 and "holds no comparison" in elsewhere.stderr
    assert len(elsewhere.stderr.strip().splitlines()) == 1 and not (tmp_path / "none").exists()

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

"""The loop end to end through the real `semisam run` command: tiny synthetic data, a real nnU-Net student,
the tiny random SAM teacher; the honesty guarantee; bad input. Resuming after kills: test_kill_anywhere.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from wandb_files import history_rows, wait_for_records

from data_prep.synthetic import make_synthetic
from semisam.data import RawDataset, check_raw_dataset

SEMISAM = [sys.executable, "-m", "semisam"]


def run_cli(args: list[str], cwd: Path, env_extra: dict | None = None, check: bool = True, timeout: int = 900):
    env = {**os.environ, "nnUNet_n_proc_DA": "0", "WANDB_MODE": "", **(env_extra or {})}
    env.pop("WANDB_MODE")  # the recipe's logger group decides
    proc = subprocess.run(SEMISAM + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"semisam {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loopdata")
    return make_synthetic(root / "Dataset900_Synthetic", n_train=8, n_labeled=2, n_test=3, seed=3)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def training_log(model: str | Path) -> str:
    """nnU-Net's training log of a model folder (fold all)."""
    return next((Path(model) / "fold_all").glob("training_log_*.txt")).read_text()


def first_lr(log: str) -> float:
    """The learning rate of the first epoch, as nnU-Net's training log prints it."""
    return float(re.search(r"Current learning rate: (\S+)", log).group(1))


@pytest.fixture(scope="module")
def smoke_run(synthetic, tmp_path_factory):
    """A finished 2-round run (tiny student, tiny random SAM), logged to an offline W&B run."""
    tmp = tmp_path_factory.mktemp("smoke")
    run_dir = tmp / "run"
    proc = run_cli(["run", "experiment=smoke", f"dataset.raw_dir={synthetic}", f"run_dir={run_dir}",
                    "logger=offline", "loop.stop_when_no_new=false"], cwd=tmp, env_extra={"WANDB_DIR": str(tmp / "wb")})
    return run_dir, tmp / "wb", proc


@pytest.mark.slow
def test_two_rounds_end_to_end(smoke_run, synthetic):
    run_dir, _, proc = smoke_run
    steps = manifest(run_dir)["steps"]
    for step in ("r0/train", "r0/evaluate", "r0/predict_unlabeled", "r1/teacher", "r1/train", "r1/predict_unlabeled",
                 "r2/teacher", "r2/train", "r2/evaluate"):
        assert step in steps, step
    assert "r2/predict_unlabeled" not in steps  # the last round has no teacher after it
    # the round's training set is a valid nnU-Net dataset: labeled + accepted pseudo-labeled cases
    teach = steps["r1/teacher"]["result"]
    assert teach["n_candidates"] == 6 and 0 < len(teach["accepted"]) <= 6
    round_raw = Path(steps["r1/dataset"]["result"]["raw_dir"])
    ds = check_raw_dataset(round_raw, nnunet=True)
    # each case once; the labeled ones are drawn for half of the samples by nnU-Net's sampler
    assert len(ds.labeled_cases()) == 2 + len(teach["accepted"])
    # its images and labels are links to the dataset's and round 1's pseudo-label files, not copies, and
    # nnU-Net preprocessed and trained on them (r1/preprocess, r1/train)
    case = teach["accepted"][0]
    assert os.path.samefile(round_raw / "imagesTr" / f"{case}_0000.png", synthetic / "imagesTr" / f"{case}_0000.png")
    assert os.path.samefile(round_raw / "labelsTr" / f"{case}.png", teach["files"][case])
    assert steps["r0/dataset"]["result"]["labeled_share"] is None  # labeled cases only: uniform
    assert steps["r1/dataset"]["result"]["labeled_share"] == 0.5  # loop.labeled_weight=0.5 (default)
    r1_log = training_log(steps["r1/train"]["result"]["model"])
    assert f"sampling 2 labeled of {2 + len(teach['accepted'])} training cases with probability 0.5" in r1_log
    assert all(Path(f).is_file() for f in teach["files"].values())
    # pseudo-label quality was measured against labelsHidden (analysis only)
    assert teach["pseudo_quality"]["n_cases"] == 6 and teach["pseudo_quality"]["student_dice"] is not None
    # reports on disk
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    report = (run_dir / "report.md").read_text()
    assert "| 0 " in report and "| 2 " in report
    for png in ("plots/test_dice.png", "plots/accept_rate.png", "round_01/gallery.png"):
        assert (run_dir / png).stat().st_size > 1000, png
    assert "| round | training set | test Dice" in proc.stdout  # the final table
    # the selected round (the last: loop.select_by_val is off) is what summary.json, metrics.json, the report
    # and the table report, never the best test round
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["selected_round"], summary["selection"]) == (2, "last")
    assert summary["selected"] == metrics["selected"] and summary["selected"]["test"] == metrics["rounds"][2]["test"]
    assert summary["selected"]["pseudo_quality"] == metrics["rounds"][2]["pseudo_quality"]
    assert "**Selected round: 2** (last round)" in report and "Best round" not in report
    assert "← **Selected round: 2** (last round)" in proc.stdout
    # the embedding cache served round 2 from disk/memory (the image encoder ran once per image per run)
    assert steps["r2/teacher"]["result"]["cache"]["misses"] == steps["r1/teacher"]["result"]["cache"]["misses"]


@pytest.mark.slow
def test_wandb_offline_run_holds_the_logged_keys(smoke_run, synthetic):
    _, wb, _ = smoke_run
    run_folder = next((wb / "wandb").glob("offline-run-*"))
    records = wait_for_records(run_folder)
    keys = set().union(*[row.keys() for row in history_rows(records)])
    for key in ("round/test/dice_mean", "round/test/hd95_mean", "round/accept_rate", "round/pseudo_quality/student_dice",
                "round/n_added", "round/cache/misses", "round/timings/train_s", "student/train_loss",
                "student/val_loss", "student/pseudo_dice"):
        assert key in keys, key
    assert any(k.startswith("images/gallery/") for k in keys)  # a wandb.Image is logged as a nested record
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.summary.update})
    assert summary["selected/round"] == 2 and summary["selected/selection"] == "last"
    assert "selected/test/dice_mean" in summary and not any(k.startswith("best/") for k in summary)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["teacher"]["name"] == "tiny_random" and config["dataset"]["raw_dir"] == str(synthetic)


@pytest.mark.slow
def test_standalone_pseudolabel_and_evaluate_commands(smoke_run, synthetic, tmp_path):
    """`semisam pseudolabel` on nnU-Net's --save_probabilities output; `semisam evaluate` on a prediction folder."""
    run_dir, _, _ = smoke_run
    out = tmp_path / "pl"
    probs = run_dir / "round_00" / "pred_unlabeled"
    proc = run_cli(["pseudolabel", "--images", str(synthetic / "imagesTr"), "--probs", str(probs),
                    "--dataset-json", str(synthetic / "dataset.json"), "--out", str(out),
                    "teacher=tiny_random", "filters=student", f"dataset.raw_dir={synthetic}"], cwd=tmp_path)
    stats = json.loads((out / "stats.json").read_text())
    assert len(stats["cases"]) == 6 and stats["cache"]["misses"] >= 1
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == sorted(f"{c}.png" for c, s in stats["cases"].items() if s["accepted"]) and written
    assert "cases accepted" in proc.stderr
    ev = run_cli(["evaluate", "--pred", str(run_dir / "round_01" / "pred_test"), "--gt", str(synthetic / "labelsTs"),
                  "--dataset-json", str(synthetic / "dataset.json"), "--out", str(tmp_path / "ev")], cwd=tmp_path)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_cases"] == 3 and 0.0 <= metrics["mean_dice"] <= 1.0 and "|" in ev.stdout
    bad = run_cli(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(synthetic / "labelsTs"),
                   "--dataset-json", str(synthetic / "dataset.json"), "--out", str(tmp_path / "ev2")],
                  cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --pred folder")


@pytest.mark.slow
def test_fine_tuning_schedule_and_final_labeled_only_fine_tune(smoke_run, synthetic, tmp_path):
    """student.init=finetune trains rounds r > 0 with finetune_lr / finetune_epochs; loop.final_finetune_epochs
    then fine-tunes each round's student on round 0's labeled-only dataset, and the round evaluates, predicts
    and hands on that model; student.pseudo_augmentation=da5 gives the rounds' pseudo-labeled cases nnU-Net's DA5
    transforms and loop.pseudo_loss_weight weighs their loss. Round 0 is the smoke run's (loop.init_from: these keys do not change it)."""
    base_dir = smoke_run[0]
    base_pre = base_dir / "round_00" / "nnunet" / "nnUNet_preprocessed"
    base_files = sorted(str(p) for p in base_pre.rglob("*"))
    run_dir = tmp_path / "run"
    args = ["run", "experiment=smoke", f"dataset.raw_dir={synthetic}", f"run_dir={run_dir}",
            "loop.stop_when_no_new=false", f"loop.init_from={base_dir}", "student.init=finetune",
            "student.finetune_lr=0.002", "student.finetune_epochs=2", "loop.final_finetune_epochs=1",
            "student.pseudo_augmentation=da5", "loop.pseudo_loss_weight=0.5"]
    run_cli(args, cwd=tmp_path)
    steps = manifest(run_dir)["steps"]
    assert "r0/finetune" not in steps and steps["r0/train"]["shared_from"] == str(base_dir)
    r0_model = steps["r0/train"]["result"]["model"]
    assert first_lr(training_log(r0_model)) == 0.01  # round 0: student.initial_lr
    previous = r0_model
    for r in (1, 2):
        trained, tuned = steps[f"r{r}/train"]["result"]["model"], steps[f"r{r}/finetune"]["result"]["model"]
        # the round's training: its own schedule, from the previous round's (fine-tuned) student
        log = training_log(trained)
        assert "semisam: 2 epochs x 2 iterations" in log and first_lr(log) == 0.002
        assert "pseudo-labeled cases get nnU-Net's DA5 augmentation, the 2 labeled cases the default" in log
        assert "a pseudo-labeled sample's loss counts 0.5 of a labeled one's" in log
        assert f"initial weights from {Path(previous) / 'fold_all' / 'checkpoint_final.pth'}" in log
        # the labeled-only fine-tune: round 0's dataset and plans, not preprocessed again, from this round's weights
        assert Path(tuned).is_relative_to(run_dir / f"round_{r:02d}" / "finetune")
        log = training_log(tuned)
        assert "semisam: 1 epochs x 2 iterations" in log and first_lr(log) == 0.002
        assert "DA5" not in log and "pseudo-labeled sample's loss" not in log  # labeled cases only
        assert f"initial weights from {Path(trained) / 'fold_all' / 'checkpoint_final.pth'}" in log
        assert json.loads((Path(tuned) / "dataset.json").read_text())["numTraining"] == 2  # the labeled cases
        assert not list((run_dir / f"round_{r:02d}" / "finetune").rglob("nnUNet_preprocessed"))
        # what the round reports and hands on is the fine-tuned student
        assert steps[f"r{r}/evaluate"]["result"]["model"] == tuned
        previous = tuned
    assert steps["r1/predict_unlabeled"]["result"]["model"] == steps["r1/finetune"]["result"]["model"]
    assert sorted(str(p) for p in base_pre.rglob("*")) == base_files  # the base run's round 0 was only read
    # a finished run resumes without fine-tuning again
    ckpt = Path(steps["r2/finetune"]["result"]["model"]) / "fold_all" / "checkpoint_final.pth"
    stamp = ckpt.stat().st_mtime_ns
    run_cli(args, cwd=tmp_path)
    assert manifest(run_dir)["steps"] == steps and ckpt.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_calibration_chooses_the_rule_on_the_labeled_cases_only(synthetic, tmp_path):
    """loop.calibrate: one leave-one-out student per labeled case predicts the case it did not see; every rule
    labels it and is scored against its label; the best (first on ties) is what round 1's teacher uses. The same
    calibration without the hidden labels on disk gives the same numbers. Bad input is refused in one line."""
    rules = ["smoke filters=sam filters.case_min_accept=0.0", "smoke"]
    data = tmp_path / "Dataset900_Synthetic"
    shutil.copytree(synthetic, data)
    run_dir = tmp_path / "run"
    args = ["run", "experiment=smoke", f"dataset.raw_dir={data}", f"run_dir={run_dir}", "loop.max_rounds=1",
            f"loop.calibrate=[{','.join(repr(r) for r in rules)}]"]
    results = []
    for hidden in (True, False):
        if not hidden:  # the hidden labels gone, round 1 forgotten: the calibration again, same round 0
            shutil.rmtree(data / "labelsHidden")
            m = manifest(run_dir)
            m["steps"] = {k: v for k, v in m["steps"].items() if not k.startswith("r1/")}
            (run_dir / "manifest.json").write_text(json.dumps(m))
        proc = run_cli(args, cwd=tmp_path)
        steps = manifest(run_dir)["steps"]
        cal = steps["r1/calibrate"]["result"]
        results.append({k: cal[k] for k in ("chosen", "rules", "student")})
    assert results[0] == results[1]  # nothing read from labelsHidden
    labeled = json.loads((synthetic / "semisam_split.json").read_text())["labeled"]
    assert [f["held_out"] for f in cal["folds"]] == labeled
    for k, fold in enumerate(cal["folds"]):  # each student trained on the other labeled case only
        trained_on = [p.name for p in (run_dir / "calibrate" / f"fold_{k}" / "dataset").glob("*/labelsTr/*")]
        assert [Path(n).stem for n in trained_on] == [c for c in labeled if c != fold["held_out"]]
        assert json.loads((Path(fold["model"]) / "dataset.json").read_text())["numTraining"] == 1
    scores = [cal["rules"][r]["dice_all"] for r in rules]
    assert cal["chosen"] == rules[scores.index(max(scores))]
    assert steps["r1/teacher"]["result"]["rule"] == cal["chosen"]
    assert "calibration on the labeled cases" in proc.stderr and f"→ {cal['chosen']}" in proc.stderr
    report = (run_dir / "report.md").read_text()  # the table in the report, the choice in the run's summary
    assert "## Pseudo-label rule, chosen on the labeled cases" in report and f"| **{cal['chosen']}** (chosen) |" in report
    other = next(r for r in rules if r != cal["chosen"])
    assert f"| {other} | {cal['rules'][other]['dice_all']:.3f} |" in report
    summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
    assert summary["calibrate/chosen"] == cal["chosen"] and summary["calibrate/student_dice"] == cal["student"]
    assert summary[f"calibrate/{other}/dice_all"] == cal["rules"][other]["dice_all"]

    one = make_synthetic(tmp_path / "one" / "Dataset901_One", n_train=6, n_labeled=1, n_test=1, seed=3)
    for data, rule, words in ((one, "smoke", "needs at least 2 labeled training cases; this run has 1"),
                              (synthetic, "nosuch", "loop.calibrate rule 'nosuch'"),
                              (synthetic, "samdsk", "composes teacher litemedsam")):
        proc = run_cli(["run", "experiment=smoke", f"dataset.raw_dir={data}", f"run_dir={tmp_path / 'bad'}",
                        f"loop.calibrate=[{rule}]"], cwd=tmp_path, check=False)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_pseudo_labels_do_not_depend_on_hidden_labels(synthetic, tmp_path):
    """Honesty: poison labelsHidden with random labels, redo the teacher step: byte-identical pseudo-labels."""
    data = tmp_path / "Dataset900_Synthetic"
    shutil.copytree(synthetic, data)
    run_dir = tmp_path / "run"
    # agree fusion with SAM's masks in play; accept every case so that every pseudo-label is written
    args = ["run", "experiment=smoke", f"dataset.raw_dir={data}", f"run_dir={run_dir}", "loop.max_rounds=1",
            "filters=agree", "filters.case_min_accept=0.0"]
    run_cli(args, cwd=tmp_path)
    steps = manifest(run_dir)["steps"]
    files = steps["r1/teacher"]["result"]["files"]
    assert len(files) == 6
    truth = {c: Path(f).read_bytes() for c, f in files.items()}
    quality_true = steps["r1/teacher"]["result"]["pseudo_quality"]

    ds = RawDataset.open(data)
    rng = np.random.default_rng(0)
    for case in ds.unlabeled_cases():
        hidden = ds.hidden_label_file(case.case_id)
        seg, props = ds.read_seg(hidden)
        ds.write_seg(rng.integers(0, 2, seg.shape[1:]).astype(np.uint8), props, hidden)
    # forget the teacher step and everything after it; the student's predictions stay as they were
    m = manifest(run_dir)
    m["steps"] = {k: v for k, v in m["steps"].items() if not k.startswith("r1/")}
    (run_dir / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(run_dir / "round_01")
    run_cli(args, cwd=tmp_path)
    steps = manifest(run_dir)["steps"]
    assert {c: Path(f).read_bytes() for c, f in steps["r1/teacher"]["result"]["files"].items()} == truth
    # the evaluation did read the poisoned labels: the quality numbers moved, the pseudo-labels did not
    assert steps["r1/teacher"]["result"]["pseudo_quality"]["student_dice"] != quality_true["student_dice"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, synthetic):
    cases = [
        (["run", "experiment=smoke", f"dataset.raw_dir={tmp_path / 'nope'}", f"run_dir={tmp_path / 'r1'}"],
         "does not exist"),
        (["run", "experiment=smoke", f"dataset.raw_dir={synthetic}", "filters.iou_tresh=0.5"], "did you mean"),
        (["run", "experiment=smoke", f"dataset.raw_dir={synthetic}", "filters.iou_thresh=1.5"], "filters.iou_thresh"),
    ]
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases.append((["run", "experiment=smoke", f"dataset.raw_dir={synthetic}", f"run_dir={blocker / 'run'}"],
                  "not writable"))
    for args, expected in cases:
        proc = run_cli(args, cwd=tmp_path, check=False, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and expected in lines[-1], (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r1").exists()


def test_a_run_folder_of_another_recipe_is_refused(tmp_path, synthetic):
    from semisam.loop.state import RunState

    RunState(tmp_path / "run", "aaaa")
    proc = run_cli(["run", "experiment=smoke", f"dataset.raw_dir={synthetic}", f"run_dir={tmp_path / 'run'}"],
                   cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2 and "restart=true" in proc.stderr


@pytest.mark.slow
def test_empty_unlabeled_set_runs_the_supervised_baseline(tmp_path):
    data = make_synthetic(tmp_path / "Dataset901_AllLabeled", n_train=3, n_labeled=3, n_test=2, seed=1)
    run_dir = tmp_path / "run"
    proc = run_cli(["run", "experiment=smoke", f"dataset.raw_dir={data}", f"run_dir={run_dir}"], cwd=tmp_path)
    assert "no unlabeled cases: running the supervised baseline only" in proc.stderr
    steps = manifest(run_dir)["steps"]
    assert "r0/evaluate" in steps and not any(k.startswith("r1/") for k in steps)
    assert json.loads((run_dir / "summary.json").read_text())["final_round"] == 0


@pytest.mark.slow
def test_a_round_that_rejects_every_case_stops_and_keeps_the_previous_student(synthetic, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["run", "experiment=smoke", f"dataset.raw_dir={synthetic}", f"run_dir={run_dir}",
                    "filters=agree", "filters.agreement_thresh=1.0"], cwd=tmp_path)
    assert "the filters rejected every unlabeled case" in proc.stderr and "keeping student 0" in proc.stderr
    steps = manifest(run_dir)["steps"]
    assert steps["r1/teacher"]["result"]["accepted"] == [] and "r1/train" not in steps
    assert not list((run_dir / "round_01" / "pseudo").glob("*.png"))  # nothing rejected is written
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_round"] == 0 and "rejected every" in summary["stop_reason"]
    assert summary["selected_round"] == 0 and summary["selected"]["round"] == 0  # round 1 was never trained


@pytest.mark.slow
def test_loop_with_the_real_litemedsam_on_real_nuclei(tmp_path):
    """The embedded LiteMedSAM in the loop, on the real nuclei tiles, re-adapted on accepted pseudo-labels:
    what the agreement filter keeps is more often right than the student's own prediction."""
    from data_prep.nuclei import make_nuclei

    # 4 labeled and 12 unlabeled 64-px tiles, the other 48 for test: the embeddings of the unlabeled tiles are
    # most of a round's teacher time, test tiles cost a small prediction each
    data = make_nuclei(tmp_path / "Dataset501_Nuclei", labeled=4, n_test=48, seed=0)
    run_dir = tmp_path / "run"
    run_cli(["run", "experiment=smoke", f"dataset.raw_dir={data}", f"run_dir={run_dir}", "dataset=nuclei",
             f"dataset.raw_dir={data}", "teacher=litemedsam", "teacher.adapt.steps=4", "teacher.adapt.batch_size=4",
             "teacher.adapt.each_round=true", "teacher.adapt.augment=false", "prompts=instances", "filters=agree",
             "loop.max_rounds=2",
             "student.epochs=6", "student.iterations_per_epoch=10", "loop.stop_when_no_new=false"], cwd=tmp_path)
    steps = manifest(run_dir)["steps"]
    for r in (1, 2):
        teach = steps[f"r{r}/teacher"]["result"]
        q = teach["pseudo_quality"]
        assert q["n_cases"] == 12 and teach["accepted"], q
        assert q["accepted_dice"] >= q["student_dice"], q  # agree keeps the pixels the student gets right
        assert q["rejected_dice"] < q["student_dice"], q    # and rejects where it is wrong
    assert (run_dir / "teacher" / "adapted_r1.pt").is_file() and (run_dir / "teacher" / "adapted_r2.pt").is_file()
    # round 2's teacher was adapted on the labeled tiles plus the tiles accepted in round 1
    assert steps["r2/teacher"]["result"]["adapt"]["reused"] is False
    # image embeddings were computed in round 1 and served from the cache in round 2
    assert steps["r2/teacher"]["result"]["cache"]["misses"] == steps["r1/teacher"]["result"]["cache"]["misses"]


# ------------------------------------------------------------------------------------------ torchrun ranks
def run_ranks(args: list[str], cwd: Path, nproc: int = 2, check: bool = True, timeout: int = 300):
    """`semisam ...` under torchrun on ``nproc`` CPU ranks (gloo), one node."""
    env = {**os.environ, "nnUNet_n_proc_DA": "0"}
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "semisam"]
    proc = subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun semisam {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


TIMING_KEYS = ("teacher_s", "seconds", "embed_seconds", "steps_per_s")


def comparable(result, run_dir: Path):
    """A step's result without timings and with its run folder's path replaced."""
    if isinstance(result, dict):
        return {k: comparable(v, run_dir) for k, v in result.items() if k not in TIMING_KEYS}
    if isinstance(result, list):
        return [comparable(v, run_dir) for v in result]
    return result.replace(str(run_dir), "<run>") if isinstance(result, str) else result


@pytest.mark.slow
def test_teacher_round_on_two_ranks_equals_one_process(smoke_run, synthetic, tmp_path):
    """`torchrun --nproc_per_node 2 -m semisam run`: rank 0 trains, predicts and reports, both ranks pseudo-label
    their share of the unlabeled cases; the round's pseudo-label files are byte-identical to the 1-process
    run's, and its result (per-case stats, pseudo-label quality, cache counters) equal to it but for timings.
    Round 0 is the smoke run's (loop.init_from); rerunning the same command resumes with nothing to do."""
    base = smoke_run[0]
    run_dir = tmp_path / "ranks"
    args = ["run", "experiment=smoke", f"dataset.raw_dir={synthetic}", f"run_dir={run_dir}",
            "loop.stop_when_no_new=false", "loop.max_rounds=1", f"loop.init_from={base}"]
    proc = run_ranks(args, cwd=tmp_path)
    steps, one = manifest(run_dir)["steps"], manifest(base)["steps"]
    assert comparable(steps["r1/teacher"]["result"], run_dir) == comparable(one["r1/teacher"]["result"], base)
    ours, theirs = run_dir / "round_01" / "pseudo", base / "round_01" / "pseudo"
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for f in theirs.iterdir():  # every accepted case's pseudo-label and stats.json
        assert (ours / f.name).read_bytes() == f.read_bytes(), f.name
    assert steps["r1/teacher"]["result"]["accepted"] and "r1/evaluate" in steps
    assert (run_dir / "report.md").is_file() and (run_dir / "round_01" / "gallery.png").is_file()
    # progress comes from rank 0 alone; the table is printed once
    assert proc.stderr.count("round 1: adapting the teacher") == 1 and proc.stdout.count("| round |") == 1
    # a rerun under torchrun finds every step complete: nothing recomputed, nothing rewritten but the reports
    pseudo = {f.name: f.stat().st_mtime_ns for f in ours.iterdir()}
    run_ranks(args, cwd=tmp_path)
    assert manifest(run_dir)["steps"] == steps
    assert {f.name: f.stat().st_mtime_ns for f in ours.iterdir()} == pseudo


@pytest.mark.slow
def test_pseudolabel_command_on_two_ranks_equals_one_process(smoke_run, synthetic, tmp_path):
    """`semisam pseudolabel` under torchrun shards the cases (rank 0 adapts, rank 1 loads its adaptation): the
    same files, byte for byte, and the same stats.json; a case that fails on rank 1 ends every rank with an
    error line naming it, and no stats.json."""
    probs = smoke_run[0] / "round_00" / "pred_unlabeled"

    def args(images: Path, out: Path) -> list[str]:
        return ["pseudolabel", "--images", str(images), "--probs", str(probs), "--dataset-json",
                str(synthetic / "dataset.json"), "--out", str(out), "--adapt-on", str(synthetic),
                "teacher=tiny_random", "teacher.adapt.steps=2", "filters=student", f"dataset.raw_dir={synthetic}"]

    run_cli(args(synthetic / "imagesTr", tmp_path / "one"), cwd=tmp_path)
    run_ranks(args(synthetic / "imagesTr", tmp_path / "two"), cwd=tmp_path)
    one = sorted(p.name for p in (tmp_path / "one").iterdir() if p.suffix in (".png", ".json"))
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir() if p.suffix in (".png", ".json"))
    assert len(one) > 1 and "stats.json" in one
    for name in one:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    # bad input on rank 1 (the second case, by round-robin): one line from rank 0, no hang, nothing merged
    images = tmp_path / "images"
    shutil.copytree(synthetic / "imagesTr", images)
    second = sorted(probs.glob("*.npz"))[1].name[: -len(".npz")]
    (images / f"{second}_0000.png").unlink()
    bad = run_ranks(args(images, tmp_path / "bad"), cwd=tmp_path, check=False, timeout=120)
    assert bad.returncode != 0
    assert f"error: rank 1: case {second}: image {images / f'{second}_0000.png'} does not exist" in bad.stderr
    assert not (tmp_path / "bad" / "stats.json").exists()

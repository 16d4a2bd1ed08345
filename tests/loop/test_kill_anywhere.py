"""Kill anywhere: a 3-round `semisam run` killed with SIGKILL at several points (predicting, writing pseudo-labels,
training, evaluating, between rounds), the same command rerun after each kill, ends with what an uninterrupted
run of the same seed ends with (accepted pseudo-labels byte for byte, the rounds' records, the selected round)
and with the same files: nothing temporary, half-written or duplicated is left behind."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from data_prep.synthetic import make_synthetic

#: Runs the real CLI; with ``KILL_TEST_PAUSE=<point>`` it first makes one function sleep once, right after it
#: returns, so that the test can kill the run at that point without racing it (the kill comes long before
#: the sleep ends). Nothing else is changed: the steps run as they do under ``semisam run``.
LAUNCHER = r"""
import os, sys, time
from pathlib import Path

def pause_after(owner, name, when=lambda *a, **k: True):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            time.sleep(300)
        return result
    setattr(owner, name, wrapped)

point = os.environ.get("KILL_TEST_PAUSE")
if point == "predicting":  # after the first case's prediction files are written
    import nnunetv2.inference.predict_from_raw_data as predict
    pause_after(predict, "export_prediction_from_logits")
elif point == "pseudo":  # after the first pseudo-label file is written
    from semisam.data.raw import RawDataset
    pause_after(RawDataset, "write_seg", lambda self, seg, props, out: Path(out).parent.name == "pseudo")
elif point == "training":  # after the first epoch (training log, checkpoint_best.pth written)
    from semisam.nnunet.nnUNetTrainerSemiSAM import nnUNetTrainerSemiSAM
    pause_after(nnUNetTrainerSemiSAM, "on_epoch_end")
elif point == "evaluating":  # after the test cases' predictions, before their metrics
    from semisam.student.driver import NnUNetStudent
    pause_after(NnUNetStudent, "predict", lambda self, model, cases, out, **k: Path(out).name == "pred_test")
from semisam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def steps(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text())["steps"] if path.is_file() else {}


def tmp_dirs(folder: Path, name: str) -> list[Path]:
    """The temporary folders of ``semisam.utils.io.atomic_dir`` writing ``folder/name``."""
    return list(folder.glob(f".{name}.tmp-*")) if folder.is_dir() else []


#: (where, the launcher's pause, when the run has reached that point, the step that must then be incomplete)
KILL_POINTS = [
    ("predicting the unlabeled cases with student 0", "predicting",
     lambda d, s: any(f.suffix == ".npz" for t in tmp_dirs(d / "round_00", "pred_unlabeled") for f in t.iterdir()),
     "r0/predict_unlabeled"),
    ("writing round 1's pseudo-labels", "pseudo",
     lambda d, s: any((d / "round_01" / "pseudo").glob("case_*")) and not (d / "round_01" / "pseudo" / "stats.json").exists(),
     "r1/teacher"),
    ("training student 1", "training",
     lambda d, s: "r1/preprocess" in s and any((d / "round_01" / "nnunet" / "nnUNet_results").rglob("training_log_*")),
     "r1/train"),
    ("evaluating student 1 (its test predictions written)", "evaluating",
     lambda d, s: (d / "round_01" / "pred_test").is_dir() and "r1/evaluate" not in s,
     "r1/evaluate"),
    ("between rounds 1 and 2", "pseudo",  # the pause holds round 2's teacher step open
     lambda d, s: "r1/logged" in s and "r2/teacher" not in s,
     "r2/teacher"),
]

#: Names the atomic writers (semisam.utils.io, the student's environment) and nnU-Net's checkpointing use for
#: what is not complete yet.
TEMPORARY = re.compile(r"\.tmp-|\.old-|\.tmp$|\.write-test$")


def environment(pause: str | None = None) -> dict:
    env = {**os.environ, "nnUNet_n_proc_DA": "0"}
    env.pop("KILL_TEST_PAUSE", None)
    if pause:
        env["KILL_TEST_PAUSE"] = pause
    return env


def kill_at(args: list[str], cwd: Path, run_dir: Path, where: str, pause: str, reached, timeout: float = 300) -> None:
    """Start the run, watch its folder until it has ``reached`` the point, then SIGKILL its process group."""
    log = cwd / "killed.err"  # a file, not a pipe: a pipe nobody reads while the run is watched could stall it
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], cwd=cwd, env=environment(pause),
                                stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)  # its own process group: nnU-Net's workers die with it
    deadline = time.monotonic() + timeout
    try:
        while not reached(run_dir, steps(run_dir)):
            assert proc.poll() is None, f"the run ended before {where}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"the run did not reach {where} in {timeout} s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # no cleanup code runs, in any process of the run
        proc.wait()


def finish(args: list[str], cwd: Path) -> str:
    """Run the command to its end; its stderr."""
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *args], cwd=cwd, env=environment(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=900)
    assert proc.returncode == 0, f"semisam {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc.stderr


def tree(run_dir: Path) -> Counter:
    """Every file and folder of a run folder, relative, nnU-Net's time-stamped log names made comparable."""
    return Counter(re.sub(r"training_log_[\d_]+\.txt$", "training_log_<time>.txt", str(p.relative_to(run_dir)))
                   for p in run_dir.rglob("*"))


def comparable(record: dict) -> dict:
    """A round's record without what an interruption legitimately changes: step times, embedding-cache hits
    (embeddings computed before a kill are found in the cache afterwards), whether an adapted teacher was
    reused from disk."""
    return {k: v for k, v in record.items() if k not in ("timings", "cache", "adapt")}


@pytest.mark.slow
def test_a_run_killed_anywhere_resumes_to_what_an_uninterrupted_run_ends_with(tmp_path):
    data = make_synthetic(tmp_path / "Dataset900_Synthetic", n_train=8, n_labeled=2, n_test=3, seed=3)
    common = ["run", "experiment=smoke", f"dataset.raw_dir={data}", "loop.max_rounds=2", "loop.stop_when_no_new=false"]
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    finish(common + [f"run_dir={ref_dir}"], tmp_path)
    ref_steps = steps(ref_dir)
    assert ref_steps["r1/teacher"]["result"]["accepted"] and ref_steps["r2/teacher"]["result"]["accepted"]
    assert "r2/evaluate" in ref_steps  # three rounds were trained

    # The killed run shares the reference's round 0 (the same dataset, student and seed: the same supervised
    # student), so that the kills land in the rounds that pseudo-label; it still predicts the unlabeled cases.
    args = common + [f"run_dir={run_dir}", f"loop.init_from={ref_dir}"]
    complete = {}  # the steps complete at each kill, as the manifest recorded them
    for where, pause, reached, step in KILL_POINTS:
        kill_at(args, tmp_path, run_dir, where, pause, reached)
        complete = steps(run_dir)
        assert step not in complete, f"killed {where}, but {step} was complete"
        if step == "r1/evaluate":  # student 1 was trained before this kill: later reruns must not train it again
            checkpoint = Path(complete["r1/train"]["result"]["model"]) / "fold_all" / "checkpoint_final.pth"
            stamp = checkpoint.stat().st_mtime_ns
    assert "resuming" in finish(args, tmp_path)  # the rerun after the last kill
    got = steps(run_dir)
    assert {k: got[k] for k in complete} == complete  # a complete step is never run again
    assert checkpoint.stat().st_mtime_ns == stamp
    # rerunning the finished run changes nothing
    err = finish(args, tmp_path)
    assert "resuming" in err and "round " not in err.split("resuming", 1)[1].split("stopped")[0]
    assert steps(run_dir) == got

    # the same accepted pseudo-labels, byte for byte
    assert set(got) == set(ref_steps)
    for r in (1, 2):
        want, have = ref_steps[f"r{r}/teacher"]["result"], got[f"r{r}/teacher"]["result"]
        assert have["accepted"] == want["accepted"]
        for key in ("n_added", "skipped", "pseudo_quality"):
            assert have[key] == want[key], (r, key)
        for case in want["accepted"]:
            ref_file, file = Path(want["files"][case]), Path(have["files"][case])
            assert file.relative_to(run_dir) == ref_file.relative_to(ref_dir)
            assert file.read_bytes() == ref_file.read_bytes(), f"round {r}: {case}'s pseudo-label differs"
    # the same students (test Dice of every round) and the same selected round
    ref_metrics = json.loads((ref_dir / "metrics.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [comparable(r) for r in metrics["rounds"]] == [comparable(r) for r in ref_metrics["rounds"]]
    ref_summary = json.loads((ref_dir / "summary.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("selected_round", "final_round", "stop_reason"):
        assert summary[key] == ref_summary[key], key

    # nothing left over: no temporary name anywhere, and the same files as the reference (whose round 0 the
    # killed run did not compute, except the predictions of the unlabeled cases)
    leftovers = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if TEMPORARY.search(p.name)]
    assert not leftovers, leftovers

    def files(run: Path) -> Counter:
        return Counter({p: n for p, n in tree(run).items()
                        if not p.startswith("round_00") or p.startswith("round_00/pred_unlabeled")})

    extra, missing = files(run_dir) - files(ref_dir), files(ref_dir) - files(run_dir)
    assert not extra and not missing, f"left over: {sorted(extra)}; missing: {sorted(missing)}"

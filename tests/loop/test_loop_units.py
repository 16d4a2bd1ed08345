"""Pure parts of the loop: retraining settings, round selection, the final table, run state."""
from __future__ import annotations

import json

import pytest

from semisam.loop.rounds import dice_table, select_round
from semisam.loop.state import RunState, config_fingerprint
from semisam.utils.errors import SemisamError


@pytest.mark.parametrize("override", ["loop.labeled_weight=1.0", "loop.labeled_weight=-0.1",
                                      "loop.final_finetune_epochs=-1", "student.finetune_lr=0",
                                      "student.finetune_epochs=0"])
def test_bad_retraining_values_are_one_line(override):
    from semisam.config import compose

    with pytest.raises(SemisamError) as info:
        compose([override])
    assert override.split("=")[0] in str(info.value) and "\n" not in str(info.value)


def test_select_round_uses_validation_only_when_asked():
    records = [{"round": 0, "val": {"dice_mean": 0.8}, "test": {"dice_mean": 0.9}},
               {"round": 1, "val": {"dice_mean": 0.85}, "test": {"dice_mean": 0.7}},
               {"round": 2, "val": {"dice_mean": 0.82}, "test": {"dice_mean": 0.95}}]
    assert select_round(records, by_val=True) == 1  # best validation, whatever the test says
    assert select_round(records, by_val=False) == 2  # the last round
    assert select_round([{"round": 0}, {"round": 1}], by_val=True) == 1  # no validation cases: the last
    assert select_round([], by_val=True) is None


def test_dice_table_marks_the_selected_round():
    records = [{"round": 0, "test": {"dice_mean": 0.5, "pooled_dice": 0.52, "hd95_mean": 3.0}, "trained": True},
               {"round": 1, "n_labeled": 1, "n_pseudo": 5, "accept_rate": 0.5, "n_added": 5,
                "test": {"dice_mean": 0.6}, "pseudo_quality": {"accepted_dice": 0.9}, "trained": True},
               {"round": 2, "accept_rate": 0.0, "n_added": 0, "trained": False}]
    table = dice_table(records, selected=1)
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")][2:]
    assert rows[0].startswith("| 0 | labeled only (supervised) | 0.500 | 0.520 | 3.000")
    assert rows[1].startswith("| 1 ← | 1 + 5 pseudo | 0.600") and "5 new, 50%" in rows[1] and "0.900" in rows[1]
    assert "not trained (stopped)" in rows[2]
    assert "← **Selected round: 1** (last round), test Dice 0.600, delta vs round 0 (supervised): +0.100." in table
    assert "Selected round: 0** (best validation Dice), test Dice 0.500" in dice_table(records, 0, "val")


def _finish(tmp_path, records, overrides, capsys, calibration=None):
    """``Experiment.finish`` on logged round records (no training): the run's outputs, read back.
    ``calibration``: a recorded ``r1/calibrate`` result."""
    from semisam.config import compose
    from semisam.loop.rounds import Experiment
    from semisam.tracking import Tracker

    exp = Experiment.__new__(Experiment)
    exp.cfg = compose(["logger=disabled", *overrides])
    exp.run_dir = tmp_path / "run"
    exp.state = RunState(exp.run_dir, "units")
    if calibration is not None:
        exp.state.run("r1/calibrate", lambda: calibration)
    exp._tracker = Tracker.create("disabled", "p", exp.run_dir)
    for rec in records:
        exp._tracker.log_round(rec["round"], rec)
    summary = exp.finish("reached loop.max_rounds=2")
    out = capsys.readouterr().out
    on_disk = json.loads((exp.run_dir / "summary.json").read_text())
    metrics = json.loads((exp.run_dir / "metrics.json").read_text())
    return summary, on_disk, metrics, (exp.run_dir / "report.md").read_text(), out


def _records():
    def test(d):
        return {"dice_mean": d, "pooled_dice": d + 0.01, "hd95_mean": 10 * (1 - d),
                "dice_per_class": {"a": d, "b": None}, "hd95_per_class": {"a": 10 * (1 - d), "b": None}}

    return [{"round": 0, "n_labeled": 2, "n_pseudo": 0, "test": test(0.6), "val": {"dice_mean": 0.5}, "trained": True},
            {"round": 1, "n_labeled": 2, "n_pseudo": 4, "test": test(0.9), "val": {"dice_mean": 0.7},
             "pseudo_quality": {"accepted_dice": 0.8, "student_dice": 0.7}, "trained": True},
            {"round": 2, "n_labeled": 2, "n_pseudo": 6, "test": test(0.7), "val": {"dice_mean": 0.6},
             "pseudo_quality": {"accepted_dice": 0.75, "student_dice": 0.72}, "trained": True},
            {"round": 3, "n_candidates": 6, "accept_rate": 0.0, "trained": False}]


@pytest.mark.parametrize("by_val,selected,selection", [(False, 2, "last"), (True, 1, "val")])
def test_finish_reports_the_selected_round_never_the_best_test_round(tmp_path, capsys, by_val, selected, selection):
    recs = _records()
    if not by_val:
        recs[1]["test"]["dice_mean"] = 0.95  # round 1 has the best test Dice; "last" still keeps round 2
    summary, on_disk, metrics, report, out = _finish(tmp_path, recs, [f"loop.select_by_val={str(by_val).lower()}"],
                                                     capsys)
    assert on_disk == json.loads(json.dumps(summary))
    assert (on_disk["selected_round"], on_disk["selection"], on_disk["final_round"]) == (selected, selection, 2)
    entry = on_disk["selected"]
    assert entry == metrics["selected"]
    assert entry["round"] == selected and entry["selection"] == selection
    assert entry["test"] == recs[selected]["test"] and entry["round0_test"] == recs[0]["test"]
    assert entry["pseudo_quality"] == recs[selected]["pseudo_quality"]
    d = recs[selected]["test"]["dice_mean"] - 0.6
    assert entry["delta_vs_round0"]["dice_mean"] == pytest.approx(d)
    assert entry["delta_vs_round0"]["dice_per_class"] == {"a": pytest.approx(d), "b": None}
    flat = metrics["summary"]
    assert flat["selected/round"] == selected and flat["selected/selection"] == selection
    assert flat["selected/test/dice_mean"] == recs[selected]["test"]["dice_mean"]
    assert flat["selected/test/hd95_per_class/a"] == pytest.approx(recs[selected]["test"]["hd95_per_class"]["a"])
    assert flat["selected_round"] == selected and not any(k.startswith("best/") for k in flat)
    rule = {"last": "last round", "val": "best validation Dice"}[selection]
    line = f"**Selected round: {selected}** ({rule}), test Dice {recs[selected]['test']['dice_mean']:.3f}"
    assert line in report and line in out and "Best round" not in report
    assert f"| {selected} ← |" in out


def test_finish_reports_the_rule_calibration(tmp_path, capsys):
    """A run that chose its rule on the labeled cases shows the table in report.md (choice in bold, Δ to the
    leave-one-out students, n/a where a rule has no Dice) and the choice in the summary; a run without does not."""
    cal = {"chosen": "corrector", "student": 0.70, "folds": [{"held_out": "a"}, {"held_out": "b"}],
           "rules": {"samdsk": {"dice_all": 0.70, "kept": 0.9, "accept": 0.5},
                     "corrector": {"dice_all": 0.75, "kept": 0.95, "accept": 1.0},
                     "strict": {"dice_all": None, "kept": 0.0, "accept": 0.0}}}
    _, _, metrics, report, _ = _finish(tmp_path / "cal", _records(), [], capsys, calibration=cal)
    assert "Leave-one-out over the 2 labeled cases" in report and "The students' own Dice: 0.700." in report
    assert "| **corrector** (chosen) | 0.750 | +0.050 | 95.0 % | 100 % |" in report
    assert "| samdsk | 0.700 | +0.000 | 90.0 % | 50 % |" in report and "| strict | n/a | n/a | 0.0 % | 0 % |" in report
    assert report.index("chosen on the labeled cases") < report.index("## Config")
    flat = metrics["summary"]
    assert flat["calibrate/chosen"] == "corrector" and flat["calibrate/corrector/dice_all"] == 0.75
    assert flat["calibrate/student_dice"] == 0.70 and "calibrate/strict/dice_all" not in flat  # no value, no key
    _, _, metrics, report, _ = _finish(tmp_path / "plain", _records(), [], capsys)
    assert "loop.calibrate`)" not in report and not any(k.startswith("calibrate/") for k in metrics["summary"])


def test_finish_with_select_by_val_but_no_validation_falls_back_to_last(tmp_path, capsys):
    recs = [{k: v for k, v in r.items() if k != "val"} for r in _records()]
    _, on_disk, _, report, _ = _finish(tmp_path, recs, ["loop.select_by_val=true"], capsys)
    assert (on_disk["selected_round"], on_disk["selection"]) == (2, "last")
    assert "**Selected round: 2** (last round)" in report


def test_run_state_records_steps_last_and_refuses_another_recipe(tmp_path):
    fp = config_fingerprint({"a": 1, "logger": {"wandb": "offline"}})
    assert fp == config_fingerprint({"a": 1, "logger": {"wandb": "disabled"}})  # logging does not change results
    assert fp != config_fingerprint({"a": 2})
    state = RunState(tmp_path / "run", fp)
    calls = []
    assert state.run("r0/x", lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert state.run("r0/x", lambda: calls.append(2) or {"v": 2}) == {"v": 1} and calls == [1]
    with pytest.raises(RuntimeError):
        state.run("r0/y", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    saved = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert list(saved["steps"]) == ["r0/x"]  # a failed step is not recorded
    assert RunState(tmp_path / "run", fp).done("r0/x")
    with pytest.raises(SemisamError, match="restart=true"):
        RunState(tmp_path / "run", config_fingerprint({"a": 2}))
    assert not RunState(tmp_path / "run", config_fingerprint({"a": 2}), restart=True).resumed


def test_reopening_a_run_folder_removes_what_killed_atomic_writes_left(tmp_path):
    """A process that dies inside an atomic write (os._exit: no cleanup runs, as under SIGKILL) leaves its
    temporary; the run folder's next opening removes it, and only it."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    RunState(run_dir, "fp")
    (run_dir / "pseudo").mkdir()
    (run_dir / ".hidden-but-not-temporary").write_text("kept")
    prelude = "import os, sys; from pathlib import Path; from semisam.utils.io import atomic_dir, atomic_write_path\n"
    killed_in_file = ("with atomic_write_path(Path(sys.argv[1]) / 'pseudo' / 'case_0.png') as tmp:\n"
                      "    tmp.write_bytes(b'done')\n"  # a finished write: nothing temporary left
                      "with atomic_write_path(Path(sys.argv[1]) / 'pseudo' / 'case_1.png') as tmp:\n"
                      "    tmp.write_bytes(b'ha'); os._exit(1)\n")
    killed_in_dir = ("with atomic_dir(Path(sys.argv[1]) / 'pred') as tmp:\n"
                     "    (tmp / 'case_0.npz').write_bytes(b'x'); os._exit(1)\n")
    for code in (killed_in_file, killed_in_dir):
        assert subprocess.run([sys.executable, "-c", prelude + code, str(run_dir)]).returncode == 1
    left = sorted(p.relative_to(run_dir).as_posix().split(".tmp-")[0] for p in run_dir.rglob(".*.tmp-*"))
    assert left == [".pred", "pseudo/.case_1.png"]
    RunState(run_dir, "fp")
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) == [
        ".hidden-but-not-temporary", "manifest.json", "pseudo", "pseudo/case_0.png"]

"""Pure parts of the loop: labeled oversampling, round selection, the final table, run state."""
from __future__ import annotations

import json

import pytest

from semisam.loop.rounds import dice_table, labeled_repeats, select_round
from semisam.loop.state import RunState, config_fingerprint
from semisam.utils.errors import SemisamError


@pytest.mark.parametrize("n_lab,n_pseudo,w,expected", [
    (1, 42, 0.5, 42),   # one labeled tile repeated to match 42 pseudo-labeled ones
    (4, 44, 0.5, 11),
    (4, 44, 0.2, 3),    # 12 / (12 + 44) ≈ 0.21
    (4, 0, 0.5, 1),     # no pseudo-labeled case: nothing to balance
    (4, 44, 0.0, 1),    # off: nnU-Net's uniform sampling
    (10, 2, 0.5, 1),    # never fewer than one copy
])
def test_labeled_repeats(n_lab, n_pseudo, w, expected):
    k = labeled_repeats(n_lab, n_pseudo, w)
    assert k == expected
    if n_pseudo and w and k > 1:
        assert abs(k * n_lab / (k * n_lab + n_pseudo) - w) < 0.05


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

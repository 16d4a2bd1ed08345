"""Tracker: metrics.json always; a real offline W&B run read back from its .wandb file; resume; disabled."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from wandb_files import history_rows, offline_runs, wait_for_records  # tests/ is on sys.path (conftest)

from semisam.tracking import Tracker, load_nnunet_logging, nnunet_curves
from semisam.tracking.report import selected_entry
from semisam.utils.errors import SemisamError


def nnunet_logging(n_epochs: int, start: float) -> dict:
    """A real nnU-Net LocalLogger filled the way nnUNetTrainer does it (numpy floats)."""
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    logger = LocalLogger()
    for e in range(n_epochs):
        logger.log("epoch_start_timestamps", 100.0 + e, e)
        logger.log("lrs", 0.01 * (1 - e / n_epochs), e)
        logger.log("train_losses", np.float64(start - 0.1 * e), e)
        logger.log("val_losses", np.float64(start - 0.05 * e), e)
        logger.log("dice_per_class_or_region", [np.float64(0.5 + 0.01 * e), np.float64(0.4)], e)
        logger.log("mean_fg_dice", np.float64(0.45 + 0.005 * e), e)
        logger.log("ema_fg_dice", np.float64(0.45), e)
        logger.log("epoch_end_timestamps", 101.5 + e, e)
    return logger.get_checkpoint()


def record(dice: float, accept: float | None) -> dict:
    return {
        "n_labeled": 4, "n_pseudo": 0 if accept is None else 6, "accept_rate": accept,
        "test": {"dice_mean": dice, "hd95_mean": np.float32(3.5), "dice_per_class": {"nucleus": dice}},
        "pseudo_quality": None, "timings": {"train_s": 10.0}, "cache": {"hits": 3, "misses": 1},
        "note": "text is kept",
    }


def test_offline_run_has_the_logged_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    run_dir = tmp_path / "run"
    png = tmp_path / "g.png"
    import matplotlib.image as mpimg

    mpimg.imsave(png, np.random.default_rng(0).random((16, 16)))
    from omegaconf import OmegaConf

    config = OmegaConf.create({"loop": {"rounds": 2}, "seed": 7, "seed_copy": "${seed}"})  # resolved on the way
    tracker = Tracker.create("offline", "semisam-test", run_dir, config=config, name="t", tags=["unit"])
    tracker.log_training_curve(0, nnunet_logging(3, 1.0))
    tracker.log_round(0, record(0.70, None))
    tracker.log_training_curve(1, {"logging": nnunet_logging(2, 0.8)})  # checkpoint form
    tracker.log_images(1, {"gallery": png, "array": np.zeros((8, 8, 3), np.uint8)})
    tracker.log_round(1, record(0.75, 0.5))
    assert not [k for k in tracker.local.data["summary"] if k.startswith("best/")]  # nothing picked by test Dice
    tracker.log_selected(selected_entry(tracker.records, 0, "val"))  # the caller's choice, even if not the max
    tracker.finish()
    run_id = tracker.run_id
    assert "wandb sync" in capsys.readouterr().err

    assert (run_dir / "wandb_run_id").read_text().strip() == run_id
    assert not (run_dir / "wandb").exists()  # WANDB_DIR respected
    (run_folder,) = offline_runs(tmp_path / "wb", run_id)
    records = wait_for_records(run_folder)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "run" in kinds, (len(records), kinds[:5])
    run = records[kinds.index("run")].run
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["loop"] == {"rounds": 2} and config["seed"] == 7 and config["seed_copy"] == 7
    assert run.run_id == run_id and list(run.tags) == ["unit"] and run.display_name == "t"

    rows = history_rows(records)
    keys = set().union(*rows)
    for key in ["round", "round/test/dice_mean", "round/test/hd95_mean", "round/test/dice_per_class/nucleus",
                "round/accept_rate", "round/cache/hits", "round/timings/train_s", "round/note",
                "student/train_loss", "student/val_loss", "student/pseudo_dice", "student/lr",
                "student/epoch_s", "student/pseudo_dice/class_2", "student/global_epoch",
                "images/gallery/path", "images/array/path", "student_by_round/val_loss_table/_type"]:
        assert key in keys, key
    assert [r["round/test/dice_mean"] for r in rows if "round/test/dice_mean" in r] == [0.70, 0.75]
    # the two rounds' curves lie back to back on the global epoch axis
    assert [r["student/global_epoch"] for r in rows if "student/train_loss" in r] == [0, 1, 2, 3, 4]
    assert [r["student/round"] for r in rows if "student/train_loss" in r] == [0, 0, 0, 1, 1]
    steps = [r["_step"] for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    metric_defs = {m.metric.glob_name: m.metric.step_metric for m in records
                   if m.WhichOneof("record_type") == "metric" and m.metric.glob_name}
    assert metric_defs["round/*"] == "round" and metric_defs["student/*"] == "student/global_epoch"
    assert len(list(run_folder.rglob("files/media/images/**/*.png"))) == 2

    # metrics.json is the source of truth and holds all of it
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1]
    assert metrics["rounds"][0]["test"]["hd95_mean"] == 3.5 and metrics["rounds"][0]["note"] == "text is kept"
    assert metrics["training_curves"]["1"]["train_loss"] == pytest.approx([0.8, 0.7])
    assert Path(metrics["images"]["1"]["array"]).is_file()
    assert metrics["selected"]["round"] == 0 and metrics["selected"]["selection"] == "val"
    assert metrics["selected"]["test"]["dice_mean"] == 0.70
    assert metrics["selected"]["delta_vs_round0"]["dice_mean"] == 0.0
    assert metrics["summary"]["selected/round"] == 0 and metrics["summary"]["selected/test/dice_mean"] == 0.70
    assert not [k for k in metrics["summary"] if k.startswith("best/")]
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.summary.update})
    assert summary["selected/round"] == 0 and summary["selected/selection"] == "val"
    assert summary["selected/test/dice_per_class/nucleus"] == 0.70
    assert "best/round" not in summary


def test_resume_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    run_dir = tmp_path / "run"
    first = Tracker.create("offline", "semisam-test", run_dir, config={"a": 1}, name="r", tags=None)
    first.log_round(0, record(0.6, None))
    first.finish()
    second = Tracker.create("offline", "semisam-test", run_dir, config={"a": 1}, name="r", tags=None)
    assert second.run_id == first.run_id
    second.log_round(0, record(0.65, None))  # a round redone after a crash replaces its record
    second.log_round(1, record(0.7, 0.4))
    second.finish()

    folders = offline_runs(tmp_path / "wb", first.run_id)
    assert len(folders) == 2
    steps = [[r["_step"] for r in history_rows(wait_for_records(f))]
             for f in folders]
    assert max(steps[0]) < min(steps[1])  # no step restarts at 0 after an offline resume
    assert [(r["round"], r["test"]["dice_mean"]) for r in second.records] == [(0, 0.65), (1, 0.7)]
    assert Tracker.create("disabled", "p", tmp_path / "other", resume_id="abc").run_id is None


def test_disabled_writes_metrics_but_no_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    run_dir = tmp_path / "run"
    with Tracker.create("disabled", "semisam-test", run_dir, config={"a": 1}) as tracker:
        curves = tracker.log_training_curve(0, nnunet_logging(2, 1.0))
        tracker.log_round(0, record(0.5, None))
        tracker.log_images(0, {"grey": np.random.default_rng(0).random((8, 8))})
        tracker.summary({"final": {"dice": 0.5}})
        tracker.log_round(1, dict(record(0.6, 0.5), test={"dice_mean": 0.6, "dice_per_class": {"nucleus": 0.6}}))
        tracker.log_selected(selected_entry(tracker.records, 1, "last"))
        tracker.log_round(1, dict(record(0.55, 0.5), test={"dice_mean": 0.55, "dice_per_class": {"nucleus": None}}))
        tracker.log_selected(selected_entry(tracker.records, 1, "last"))  # a resumed run selecting again
    assert set(curves) >= {"train_loss", "pseudo_dice/class_1", "epoch_s"}
    assert not (tmp_path / "wb").exists() and not (run_dir / "wandb").exists()
    assert not (run_dir / "wandb_run_id").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["rounds"][0]["test"]["dice_mean"] == 0.5
    assert metrics["summary"]["final/dice"] == 0.5
    assert metrics["selected"]["round"] == 1 and metrics["selected"]["test"]["dice_mean"] == 0.55
    assert metrics["selected"]["test"]["dice_per_class"] == {"nucleus": None}
    assert metrics["summary"]["selected/delta_vs_round0/dice_mean"] == pytest.approx(0.05)
    assert "selected/test/dice_per_class/nucleus" not in metrics["summary"]  # the stale 0.6 is gone
    assert (run_dir / "images" / "r00_grey.png").stat().st_size > 0


def test_online_without_key_and_unknown_mode_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    with pytest.raises(SemisamError, match=r"needs an account: run `wandb login`.*logger.wandb=offline"):
        Tracker.create("online", "semisam-test", tmp_path / "run")
    with pytest.raises(SemisamError, match="did you mean 'offline'"):
        Tracker.create("ofline", "semisam-test", tmp_path / "run")


def test_nnunet_curves_and_checkpoint(tmp_path):
    import torch

    logging = nnunet_logging(4, 1.0)
    logging["train_losses"].append(np.float64(0.1))  # an epoch half-logged when training stopped
    curves = nnunet_curves(logging)
    assert {len(v) for v in curves.values()} == {4}
    assert curves["epoch_s"] == pytest.approx([1.5] * 4)
    assert curves["pseudo_dice/class_1"][3] == pytest.approx(0.53)
    torch.save({"network_weights": {}, "logging": logging}, tmp_path / "checkpoint_final.pth")
    loaded = load_nnunet_logging(tmp_path / "checkpoint_final.pth")
    assert nnunet_curves(loaded) == curves
    with pytest.raises(SemisamError, match="does not exist"):
        load_nnunet_logging(tmp_path / "missing.pth")

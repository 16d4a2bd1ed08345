"""Composition errors are one SemisamError line that names the key and suggests the valid one."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from semisam.config import compose
from semisam.utils.errors import SemisamError
from semisam.config.compose import recipes_dir


def _error(overrides, config_dir=None) -> str:
    with pytest.raises(SemisamError) as info:
        compose(overrides, config_dir)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


def test_unknown_key_suggests_closest():
    msg = _error(["filters.iou_tresh=0.3"])
    assert "'filters.iou_tresh'" in msg and "did you mean 'filters.iou_thresh'" in msg


def test_unknown_key_in_other_group_suggests_where_it_lives():
    msg = _error(["student.iou_thresh=0.3"])
    assert "did you mean 'filters.iou_thresh'" in msg


def test_unknown_top_level_and_nested_keys():
    assert "did you mean 'teacher'" in _error(["tacher=x"])
    assert "did you mean 'teacher.intensity.mode'" in _error(["teacher.intensity.mod=window"])


def test_appended_keys_outside_the_schema_are_rejected():
    assert "unknown key 'foo'" in _error(["+foo=1"])
    assert "did you mean 'student.epochs'" in _error(["+student.epoch=3"])


@pytest.mark.parametrize("override,key,expected", [
    ("student.epochs=abc", "student.epochs", "int"),
    ("filters.iou_thresh=high", "filters.iou_thresh", "float"),
    ("prompts.box=maybe", "prompts.box", "bool"),
    ("logger.tags=x", "logger.tags", "List[str]"),
])
def test_wrong_type(override, key, expected):
    msg = _error([override])
    assert f"wrong type for {key}" in msg and f"expected {expected}" in msg


@pytest.mark.parametrize("override,key", [
    ("filters.iou_thresh=1.5", "filters.iou_thresh"),
    ("prompts.threshold=-0.1", "prompts.threshold"),
    ("filters.case_min_accept=2", "filters.case_min_accept"),
    ("filters.fusion_weight=1.01", "filters.fusion_weight"),
    ("student.epochs=0", "student.epochs"),
    ("student.initial_lr=0", "student.initial_lr"),
    ("loop.max_rounds=-1", "loop.max_rounds"),
])
def test_out_of_range(override, key):
    msg = _error([override])
    assert msg.startswith(f"{key}=") and "out of range" in msg


def test_bounds_are_inclusive():
    cfg = compose(["filters.iou_thresh=1.0", "prompts.threshold=0", "filters.uncertainty_thresh=0.0"])
    assert cfg.filters.iou_thresh == 1.0 and cfg.prompts.threshold == 0.0


def test_bad_choices_suggest():
    assert "did you mean 'agree'" in _error(["filters.fusion=agre"])
    assert "did you mean 'online'" in _error(["logger.wandb=onlin"])
    assert "did you mean 'cuda'" in _error(["device=cudaa"])
    assert compose(["device=cuda:1"]).device == "cuda:1"


def test_bad_group_option_suggests():
    msg = _error(["teacher=litemdsam"])
    assert "unknown teacher option 'litemdsam'" in msg and "did you mean 'litemedsam'" in msg
    msg = _error(["experiment=smok"])
    assert "did you mean 'smoke'" in msg and "supervised" in msg


def test_required_values():
    assert "dataset.raw_dir is required" in _error(["dataset=custom"])
    assert "teacher.checkpoint=" in _error(["teacher=sam_vit_b"])


def test_inconsistent_combinations():
    assert "filters=student" in _error(["experiment=supervised", "loop.max_rounds=2"])
    assert "window_center" in _error(["teacher.intensity.mode=window"])
    assert "teacher.intensity.lower" in _error(["teacher.intensity.lower=99", "teacher.intensity.upper=10"])
    assert "prompts.box" in _error(["prompts.box=false"])
    assert "student.fold" in _error(["student.fold=first"])


def test_unparsable_override_is_named():
    assert "'filters.iou_thresh=[1'" in _error(["filters.iou_thresh=[1"])


def _copy_recipes(tmp_path: Path) -> Path:
    dst = tmp_path / "recipes"
    shutil.copytree(recipes_dir(), dst)
    return dst


def test_typo_inside_a_recipe_file_names_file_and_key(tmp_path: Path):
    rec = _copy_recipes(tmp_path)
    with open(rec / "filters" / "agree.yaml", "a") as f:
        f.write("iou_tresh: 0.3\n")
    msg = _error([], rec)
    assert "filters/agree.yaml" in msg and "did you mean 'filters.iou_thresh'" in msg


def test_wrong_type_inside_an_experiment_file(tmp_path: Path):
    rec = _copy_recipes(tmp_path)
    (rec / "experiment" / "mine.yaml").write_text("# @package _global_\nstudent:\n  epochs: lots\n")
    msg = _error(["experiment=mine"], rec)
    assert "student.epochs" in msg and "experiment/mine.yaml" in msg


def test_recipes_folder_from_env(tmp_path: Path, monkeypatch):
    rec = _copy_recipes(tmp_path)
    (rec / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 123\n")
    monkeypatch.setenv("SEMISAM_RECIPES", str(rec))
    cfg = compose(["experiment=mine"])
    assert cfg.seed == 123 and cfg.experiment == "mine"
    monkeypatch.setenv("SEMISAM_RECIPES", str(tmp_path / "nowhere"))
    assert "nowhere does not exist (from SEMISAM_RECIPES)" in _error([])


def test_unreadable_recipe_file_is_one_line(tmp_path: Path):
    rec = _copy_recipes(tmp_path)
    (rec / "student" / "broken.yaml").write_text("epochs: [\n")
    msg = _error(["student=broken"], rec)
    assert "broken.yaml" in msg and "line" in msg


@pytest.mark.parametrize("overrides,needle", [
    (["experiment=corrector", "prompts.candidate_threshold=0.6"], "prompts.candidate_threshold=0.6 must lie below"),
    (["experiment=corrector", "filters.gray_zone=0.5"], "filters.gray_zone=0.5 must lie below"),
    (["experiment=corrector", "filters.perturbations=0"], "filters.ensemble_mask=true needs filters.perturbations"),
    (["experiment=corrector", "prompts.second_pass=true", "prompts.box=false", "prompts.positive_points=1"],
     "prompts.second_pass refines box prompts"),
    (["experiment=corrector", "prompts.source=everything"], "cannot be combined"),
    (["experiment=samdsk", "teacher=none", "filters=student", "prompts.source=everything"], "need a SAM teacher"),
    (["experiment=samdsk", "prompts.source=all"], "prompts.source='all' is not a valid choice"),
    (["experiment=samdsk", "filters.fusion=unoin"], "did you mean 'union'"),
])
def test_corrector_settings_that_cannot_work_fail_at_composition(overrides, needle):
    assert needle in _error(["dataset.raw_dir=/nowhere", *overrides])

"""A user's recipe folder (--recipes DIR or $SEMISAM_RECIPES) is searched before semisam's own recipes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from semisam.cli import main
from semisam.config import compose
from semisam.config.compose import builtin_recipes_dir, list_options, recipe_folders, recipes_dir
from semisam.utils.errors import SemisamError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def user_recipes(tmp_path: Path) -> Path:
    """A partial folder: one new experiment, one replaced filters option, no config.yaml."""
    rec = tmp_path / "my_recipes"
    (rec / "experiment").mkdir(parents=True)
    (rec / "filters").mkdir()
    (rec / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /filters: agree\n"
                                                  "seed: 123\n")
    ours = (builtin_recipes_dir() / "filters" / "agree.yaml").read_text()
    (rec / "filters" / "agree.yaml").write_text(re.sub(r"(?m)^iou_thresh:.*\n", "", ours) + "iou_thresh: 0.123\n")
    return rec


def test_builtin_recipes_in_a_checkout_are_the_repository_folder(monkeypatch):
    monkeypatch.delenv("SEMISAM_RECIPES", raising=False)
    assert builtin_recipes_dir() == REPO / "recipes" == recipes_dir()
    assert recipe_folders() == [REPO / "recipes"] == recipe_folders(REPO / "recipes")


def test_user_folder_adds_and_replaces_files(user_recipes: Path, monkeypatch):
    monkeypatch.delenv("SEMISAM_RECIPES", raising=False)
    assert recipe_folders(user_recipes) == [user_recipes, builtin_recipes_dir()]
    cfg = compose(["experiment=mine"], config_dir=user_recipes)
    assert cfg.experiment == "mine" and cfg.seed == 123 and cfg.filters.iou_thresh == 0.123
    # ours are still there, and the user's replaced file is used by them too
    assert compose(["experiment=demo"], config_dir=user_recipes).filters.iou_thresh == 0.123
    assert compose(["experiment=demo"]).filters.iou_thresh != 0.123
    options = list_options(user_recipes)
    assert "mine" in options["experiment"] and set(list_options()["experiment"]) < set(options["experiment"])
    with pytest.raises(SemisamError, match="unknown experiment option 'mien' \\(did you mean 'mine'\\?\\)"):
        compose(["experiment=mien"], config_dir=user_recipes)


def test_flag_beats_env_and_env_is_used_without_flag(user_recipes: Path, tmp_path: Path, monkeypatch):
    other = tmp_path / "other"
    (other / "experiment").mkdir(parents=True)
    (other / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 7\n")
    monkeypatch.setenv("SEMISAM_RECIPES", str(other))
    assert compose(["experiment=mine"]).seed == 7
    assert compose(["experiment=mine"], config_dir=user_recipes).seed == 123
    with pytest.raises(SemisamError, match="does not exist \\(from --recipes\\)"):
        compose([], config_dir=tmp_path / "nowhere")


def test_cli_recipes_flag(user_recipes: Path, capsys, monkeypatch):
    monkeypatch.delenv("SEMISAM_RECIPES", raising=False)
    assert main(["run", "--recipes", str(user_recipes), "--cfg", "experiment=mine"]) == 0
    out = capsys.readouterr().out
    assert "seed: 123" in out and "iou_thresh: 0.123" in out

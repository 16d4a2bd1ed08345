"""Every recipe file under recipes/ composes, and its values reach the typed config."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from semisam.config import RunConfig, compose, list_options, recipes_dir, to_dict

RECIPES = recipes_dir()

# options that need a value the recipe cannot ship (a user's dataset folder, a user's checkpoint)
REQUIRED = {
    "dataset/custom": ["dataset.raw_dir=/data/Dataset042_Custom"],
    "teacher/sam_vit_b": ["teacher.checkpoint=/weights/sam_vit_b_01ec64.pth"],
    "teacher/mobilesam": ["teacher.checkpoint=/weights/mobile_sam.pt"],
    # self-training without a teacher needs the student's own pseudo-labels
    "teacher/none": ["filters=student"],
}

GROUP_OPTIONS = [(g, o) for g, opts in list_options().items() if g != "experiment" for o in opts]
EXPERIMENTS = list_options()["experiment"]


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_every_yaml_file_is_covered():
    files = {p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.rglob("*.yaml")}
    covered = {"config"} | {f"{g}/{o}" for g, o in GROUP_OPTIONS} | {f"experiment/{e}" for e in EXPERIMENTS}
    assert files == covered
    assert {"supervised", "samdsk", "demo", "smoke"} <= set(EXPERIMENTS)


def test_default_config_composes():
    cfg = compose([])
    assert isinstance(cfg, RunConfig)
    assert cfg.experiment == "supervised" and cfg.run_dir == "runs/supervised"
    assert cfg.dataset.raw_dir == "data/Dataset501_Nuclei"
    assert cfg.teacher.name == "litemedsam" and cfg.teacher.checkpoint is None
    assert cfg.logger.wandb == "offline"


def _written(group: str, option: str) -> dict:
    """The values a group option's file sets, with those of the options its defaults list builds on (in order,
    the file's own last, as Hydra merges them)."""
    values = OmegaConf.to_container(OmegaConf.load(RECIPES / group / f"{option}.yaml"))
    defaults = values.pop("defaults", [])
    out: dict = {}
    for base in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        out.update(_leaves(values) if base == "_self_" else _written(group, base))
    return out


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_group_option_composes_and_its_values_land(group: str, option: str):
    extra = REQUIRED.get(f"{group}/{option}", [])
    cfg = compose([f"{group}={option}", *extra])
    composed = _leaves(to_dict(cfg)[group])
    written = _written(group, option)
    overridden = {o.split("=")[0].split(".", 1)[1] for o in extra if o.startswith(f"{group}.")}
    for key, value in written.items():
        if key not in overridden:
            assert composed[key] == value, f"{group}/{option}.yaml: {key}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str):
    cfg = compose([f"experiment={name}"])
    assert cfg.experiment == name
    assert cfg.run_dir == f"runs/{name}"  # ${experiment} resolved


def test_experiments_mean_what_they_say():
    sup = compose(["experiment=supervised"])
    assert sup.loop.max_rounds == 0 and sup.teacher.name == "none"
    assert compose(["experiment=samdsk"]).loop.max_rounds > 0
    smoke = compose(["experiment=smoke"])
    assert smoke.student.epochs == 1 and smoke.device == "cpu" and smoke.logger.wandb == "disabled"
    assert smoke.dataset.raw_dir.endswith("Synthetic") and smoke.loop.max_rounds == 2
    assert smoke.teacher.name == "tiny_random" and smoke.filters.fusion == "student"
    demo = compose(["experiment=demo"])
    assert demo.dataset.raw_dir == "data/Dataset501_Nuclei" and demo.prompts.split_instances
    assert demo.logger.tags == ["demo"]


def test_command_line_beats_experiment():
    cfg = compose(["experiment=smoke", "student.epochs=3", "teacher=sam_vit_b", "teacher.checkpoint=/w.pth",
                   "run_dir=/tmp/elsewhere", "seed=7"])
    assert cfg.student.epochs == 3 and cfg.student.iterations_per_epoch == 2  # rest of tiny kept
    assert cfg.teacher.name == "sam_vit_b" and cfg.teacher.checkpoint == "/w.pth"
    assert cfg.run_dir == "/tmp/elsewhere" and cfg.seed == 7


def test_any_raw_dataset_by_path(tmp_path: Path):
    raw = tmp_path / "Dataset042_Mine"
    cfg = compose(["dataset=custom", f"dataset.raw_dir={raw}", "dataset.dataset_id=42"])
    assert cfg.dataset.raw_dir == str(raw) and cfg.dataset.dataset_id == 42
    # also without switching the group: the default dataset's folder replaced
    assert compose([f"dataset.raw_dir={raw}"]).dataset.raw_dir == str(raw)

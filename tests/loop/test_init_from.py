"""loop.init_from: a run takes round 0 from another run only when that round 0 is its own (no training here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.synthetic import make_synthetic
from semisam.config import compose, to_dict
from semisam.loop.experiment import run_experiment
from semisam.loop.state import MANIFEST, RunState, round0_fingerprint
from semisam.utils.errors import SemisamError

ROUND0 = ("r0/dataset", "r0/preprocess", "r0/train", "r0/evaluate")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("initfrom") / "Dataset900_Synthetic", n_train=4, n_labeled=2,
                          n_test=1, size=32)


def cfg_for(dataset: Path, run_dir: Path, *extra: str):
    return compose(["experiment=smoke", f"dataset.raw_dir={dataset}", f"run_dir={run_dir}", "logger=disabled", *extra])


def fake_base(run_dir: Path, fingerprint: str, steps=ROUND0) -> Path:
    run_dir.mkdir(parents=True)
    manifest = {"fingerprint": "x", "round0_fingerprint": fingerprint,
                "steps": {s: {"result": {"step": s}, "seconds": 1.5} for s in steps}}
    (run_dir / MANIFEST).write_text(json.dumps(manifest))
    return run_dir


def test_round0_fingerprint_covers_dataset_student_and_seed_only(dataset, tmp_path):
    base = to_dict(cfg_for(dataset, tmp_path / "a"))
    assert round0_fingerprint(base) == round0_fingerprint(to_dict(cfg_for(dataset, tmp_path / "b", "filters=agree",
                                                                          "loop.max_rounds=5")))
    # the fine-tuning settings are used after round 0 only
    assert round0_fingerprint(base) == round0_fingerprint(to_dict(cfg_for(
        dataset, tmp_path / "b", "student.init=finetune", "student.finetune_lr=0.005", "student.finetune_epochs=2",
        "loop.final_finetune_epochs=1", "student.pseudo_augmentation=da5")))
    # and a fingerprint stored before the fine-tuning keys existed (student.init hashed as set) still matches
    from semisam.loop.state import NOT_RESULTS, _dataset_id, _hash

    dataset_part = dict(base["dataset"], raw_dir=str(Path(base["dataset"]["raw_dir"]).resolve()))
    dataset_part["identity"] = _dataset_id(dataset_part["raw_dir"])
    older = {k: v for k, v in base["student"].items()
             if f"student.{k}" not in NOT_RESULTS and k not in ("finetune_lr", "finetune_epochs", "pseudo_augmentation")}
    assert older["init"] == "scratch"
    assert round0_fingerprint(base) == _hash({"dataset": dataset_part, "student": older, "seed": base["seed"]})
    for change in ("seed=1", "student.epochs=3", "dataset.num_val=1"):
        assert round0_fingerprint(base) != round0_fingerprint(to_dict(cfg_for(dataset, tmp_path / "c", change))), change


@pytest.mark.parametrize("case, words", [
    ("missing", "holds no semisam run"),
    ("other", "another dataset, student or seed"),
    ("unfinished", "has not finished round 0 (step r0/evaluate missing)"),
])
def test_bad_base_run_is_refused_before_any_work(dataset, tmp_path, case, words):
    run_dir = tmp_path / "run"
    mine = round0_fingerprint(to_dict(cfg_for(dataset, run_dir)))
    base = tmp_path / "base"
    if case == "other":
        fake_base(base, "0" * 16)
    elif case == "unfinished":
        fake_base(base, mine, steps=ROUND0[:3])
    with pytest.raises(SemisamError, match=None) as e:
        run_experiment(cfg_for(dataset, run_dir, f"loop.init_from={base}"))
    assert words in str(e.value)
    assert not run_dir.exists()  # refused before the run folder is made


def test_a_base_stamped_by_an_earlier_formula_is_judged_by_its_recipe(dataset, tmp_path):
    """A base run whose stored round-0 fingerprint was computed by an earlier semisam: accepted when its
    config.yaml gives this run's fingerprint today and its manifest recorded the dataset as it is now."""
    from semisam.config import to_yaml
    from semisam.loop.state import _dataset_id, round0_steps

    cfg = cfg_for(dataset, tmp_path / "run")
    base = fake_base(tmp_path / "base", "an older formula")
    (base / "config.yaml").write_text(to_yaml(cfg_for(dataset, base, "filters=agree")))
    manifest = json.loads((base / MANIFEST).read_text())
    manifest["identity"] = {"dataset": _dataset_id(str(dataset))}
    (base / MANIFEST).write_text(json.dumps(manifest))
    assert list(round0_steps(base, cfg)) == list(ROUND0)
    # another seed in its recipe, or a dataset changed since it recorded it: refused
    (base / "config.yaml").write_text(to_yaml(cfg_for(dataset, base, "seed=3")))
    with pytest.raises(SemisamError, match="another dataset, student or seed"):
        round0_steps(base, cfg)
    (base / "config.yaml").write_text(to_yaml(cfg_for(dataset, base)))
    manifest["identity"] = {"dataset": "0" * 16}
    (base / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SemisamError, match="another dataset, student or seed"):
        round0_steps(base, cfg)


def test_own_folder_is_refused(dataset, tmp_path):
    with pytest.raises(SemisamError, match="this run's own folder"):
        run_experiment(cfg_for(dataset, tmp_path / "run", f"loop.init_from={tmp_path / 'run'}"))


def test_adopted_steps_keep_results_seconds_and_source(tmp_path):
    state = RunState(tmp_path / "run", "fp")
    state.adopt("r0/train", {"model": "/elsewhere/model"}, 12.5, "/elsewhere")
    state.adopt("r0/train", {"model": "ignored"}, 1.0, "/other")  # a complete step is never replaced
    again = RunState(tmp_path / "run", "fp")
    assert again.result("r0/train") == {"model": "/elsewhere/model"} and again.seconds("r0/train") == 12.5
    assert again.manifest["steps"]["r0/train"]["shared_from"] == "/elsewhere"

"""The resolved config serialises, round-trips, and composing leaves Hydra's global state alone."""
from __future__ import annotations

import json

import pytest
import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from semisam.config import RunConfig, compose, from_dict, recipes_dir, to_dict, to_yaml
from semisam.utils.errors import SemisamError


def test_resolved_config_serialises_and_round_trips():
    cfg = compose(["experiment=demo", "logger.tags=[a,b]"])
    d = to_dict(cfg)
    json.dumps(d)  # plain types only
    assert d["run_dir"] == "runs/demo" and d["logger"]["tags"] == ["a", "b"]
    assert yaml.safe_load(to_yaml(cfg)) == d
    again = from_dict(d)
    assert isinstance(again, RunConfig) and again == cfg


def test_from_dict_checks_like_compose():
    d = to_dict(compose([]))
    d["filters"]["iou_thresh"] = 3.0
    with pytest.raises(SemisamError, match="filters.iou_thresh"):
        from_dict(d)
    d = to_dict(compose([]))
    d["filters"]["iou_tresh"] = 0.1
    with pytest.raises(SemisamError, match="did you mean 'filters.iou_thresh'"):
        from_dict(d)


def test_compose_restores_an_outer_hydra(tmp_path):
    (tmp_path / "config.yaml").write_text("x: 1\n")
    assert not GlobalHydra.instance().is_initialized()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        outer = GlobalHydra.instance().hydra
        assert compose(["experiment=smoke"]).experiment == "smoke"
        assert GlobalHydra.instance().hydra is outer
    assert not GlobalHydra.instance().is_initialized()
    compose([])
    assert not GlobalHydra.instance().is_initialized()


def test_compose_does_not_change_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compose(["experiment=smoke"], recipes_dir())
    assert not any(tmp_path.iterdir())  # no outputs/ or .hydra/ written

"""An installed wheel carries the recipes: built, installed into a fresh venv, used from outside the repository.

The wheel is built from a copy of the project (``pip wheel --no-deps --no-build-isolation --no-index``: no
network, nothing written into the checkout) and installed with ``--no-deps`` into a new venv, which then sees
this venv's dependencies through a ``.pth`` line naming its site-packages (plain path lines do not run the
editable install's own ``.pth`` hook, so ``semisam`` is imported from the wheel: asserted). About 15 s.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from test_config_recipes import REQUIRED  # options that need a user's value (same folder)

REPO = Path(__file__).resolve().parents[2]
PROJECT = ["pyproject.toml", "setup.py", "README.md", "semisam", "data_prep", "recipes"]

COMPOSE_ALL = """
import json, sys
import semisam
from semisam.config import compose, list_options
from semisam.config.compose import builtin_recipes_dir

required = json.loads(sys.argv[1])
composed = []
for group, options in list_options().items():
    for option in options:
        cfg = compose([f"{group}={option}", *required.get(f"{group}/{option}", [])])
        assert group != "experiment" or cfg.experiment == option, (group, option)
        composed.append(f"{group}/{option}")
print(json.dumps({"semisam": semisam.__file__, "recipes": str(builtin_recipes_dir()), "composed": composed}))
"""


def _run(cmd: list, cwd: Path, env: dict) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_installs_and_every_recipe_composes_outside_the_repo(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for name in PROJECT:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, src / name)
    # a recipe that appears just before the build ships too: the wheel takes whatever recipes/ holds then
    (src / "recipes" / "experiment" / "zz_added_at_build.yaml").write_text("# @package _global_\nseed: 5\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SEMISAM_RECIPES", "nnUNet_extTrainer")}

    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp_path / "dist", src], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("semisam-*.whl")
    shipped = {n.removeprefix("semisam/recipes/") for n in zipfile.ZipFile(wheel).namelist()
               if n.startswith("semisam/recipes/")}
    assert shipped == {p.relative_to(src / "recipes").as_posix() for p in (src / "recipes").rglob("*")
                       if p.is_file() and p.suffix in (".yaml", ".md")}

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python, semisam_cmd = venv / "bin" / "python", venv / "bin" / "semisam"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
         tmp_path, env)
    # only now (pip must not see this venv's editable semisam): the dependencies, from this venv
    new_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         tmp_path, env).strip())
    (new_site / "zz_semisam_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = json.loads(_run([python, "-c", COMPOSE_ALL, json.dumps(REQUIRED)], elsewhere, env).splitlines()[-1])
    assert Path(result["semisam"]).is_relative_to(new_site), result["semisam"]
    assert Path(result["recipes"]) == new_site / "semisam" / "recipes"
    composed = set(result["composed"])
    assert {"experiment/demo", "experiment/zz_added_at_build", "filters/agree", "teacher/litemedsam"} <= composed
    assert composed == {p.relative_to(src / "recipes").with_suffix("").as_posix()
                        for p in (src / "recipes").rglob("*.yaml") if p.parent != src / "recipes"}

    # the command a user types, from a folder outside the repository; then their own folder over ours
    assert "experiment: demo" in _run([semisam_cmd, "run", "experiment=demo", "--cfg"], elsewhere, env)
    mine = elsewhere / "my_recipes"
    (mine / "filters").mkdir(parents=True)
    (mine / "filters" / "agree.yaml").write_text("fusion: agree\niou_thresh: 0.321\n")
    out = _run([semisam_cmd, "run", "--recipes", mine, "experiment=demo", "--cfg"], elsewhere, env)
    assert "iou_thresh: 0.321" in out and "experiment: demo" in out
    assert not any(p.name in ("outputs", ".hydra") for p in elsewhere.iterdir())

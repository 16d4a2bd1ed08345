"""The build step (semisam.loop.preflight): every fault is one line before anything is written; resume matches
recipe and dataset, names what changed, and ignores what does not change results. No training here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.synthetic import make_synthetic
from semisam.config import compose, to_dict
from semisam.loop import preflight as pf
from semisam.loop.experiment import run_experiment
from semisam.loop.state import MANIFEST, RunState, holds_run, read_manifest, run_identity
from semisam.utils.errors import SemisamError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def dataset(tmp_path) -> Path:
    return make_synthetic(tmp_path / "data" / "Dataset900_Synthetic", n_train=4, n_labeled=2, n_test=1, size=32)


def cfg_for(dataset: Path, run_dir: Path, *extra: str):
    return compose(["experiment=smoke", f"dataset.raw_dir={dataset}", f"run_dir={run_dir}", *extra])


def refused(cfg, words: str) -> str:
    """run_experiment refuses ``cfg`` with one line containing ``words`` and writes no run folder."""
    with pytest.raises(SemisamError) as e:
        run_experiment(cfg)
    msg = str(e.value)
    assert words in msg and "\n" not in msg, msg
    return msg


def cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "NETRC"))}
    env.update(HOME=str(home), WANDB_API_KEY="", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "semisam", "run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


# ------------------------------------------------------------------------------------- faults, via the CLI
def test_cli_missing_teacher_checkpoint_fails_before_any_work(dataset, tmp_path):
    run_dir = tmp_path / "runs" / "x"
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    line = error_line(cli(f"dataset.raw_dir={dataset}", "experiment=smoke", f"run_dir={run_dir}", "teacher=sam_vit_b",
                          f"teacher.checkpoint={missing}", home=tmp_path))
    assert line == f"error: checkpoint for teacher 'sam_vit_b' not found: {missing} (give the path of the .pth file)"
    assert not run_dir.exists() and not run_dir.parent.exists()


def test_cli_online_logger_without_credentials_fails_before_any_work(dataset, tmp_path):
    run_dir = tmp_path / "runs" / "x"
    line = error_line(cli(f"dataset.raw_dir={dataset}", "experiment=smoke", f"run_dir={run_dir}", "logger=online",
                          home=tmp_path))
    assert line.startswith("error: W&B online mode needs an account: run `wandb login`")
    assert not run_dir.parent.exists()


def test_cli_check_prints_ok_and_writes_nothing(dataset, tmp_path):
    run_dir = tmp_path / "runs" / "x"
    proc = cli("--check", f"dataset.raw_dir={dataset}", "experiment=smoke", f"run_dir={run_dir}", home=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert not run_dir.parent.exists()


# ------------------------------------------------------------------------------------- faults, in process
def test_missing_dataset(tmp_path):
    refused(cfg_for(tmp_path / "nowhere", tmp_path / "run"), "does not exist")
    assert not (tmp_path / "run").exists()


def test_run_dir_that_is_a_file(dataset, tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(cfg_for(dataset, tmp_path / "afile" / "run"), f"is not writable ({tmp_path / 'afile'} is a file)")
    refused(cfg_for(dataset, tmp_path / "afile"), "is not writable (it is a file, not a folder)")


def test_checkpoint_of_another_architecture(dataset, tmp_path):
    ckpt = tmp_path / "other.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, ckpt)
    msg = refused(cfg_for(dataset, tmp_path / "run", f"teacher.checkpoint={ckpt}"), "wrong architecture")
    assert msg.startswith(f"checkpoint {ckpt} does not fit teacher 'tiny_random'")
    assert not (tmp_path / "run").exists()


def test_no_teacher_checks_without_rounds(dataset, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("semisam.teacher.models.check_teacher_checkpoint", lambda *a: calls.append(a))
    pf.preflight(cfg_for(dataset, tmp_path / "run", "loop.max_rounds=0"))
    pf.preflight(cfg_for(dataset, tmp_path / "run", "teacher=none"))
    assert calls == []
    pf.preflight(cfg_for(dataset, tmp_path / "run"))
    assert calls == [("tiny_random", None)]
    assert not (tmp_path / "run").exists()


def test_online_sam_term_checks_the_teacher_without_rounds(dataset, tmp_path):
    """Round 0 alone builds SAM when the recipe has an online SAM term: its checkpoint is checked up front."""
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    online = ["online=semisam", "loop.max_rounds=0", "teacher=sam_vit_b", f"teacher.checkpoint={missing}"]
    msg = refused(cfg_for(dataset, tmp_path / "run", *online), "not found")
    assert msg == f"checkpoint for teacher 'sam_vit_b' not found: {missing} (give the path of the .pth file)"
    assert not (tmp_path / "run").exists()


def test_not_enough_disk_names_the_numbers(dataset, tmp_path, monkeypatch):
    usage = type("Usage", (), {"free": 1000})
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: usage)
    msg = refused(cfg_for(dataset, tmp_path / "run"), "not enough disk space")
    assert " KiB needed (dataset files × (rounds + 2): " in msg and "1000 B free on" in msg and "embedding cache" in msg
    assert not (tmp_path / "run").exists()


def test_disk_estimate_counts_rounds_and_cache(dataset, tmp_path):
    cfg = cfg_for(dataset, tmp_path / "run")
    built = pf.preflight(cfg)
    est = pf.disk_estimate(cfg, built.dataset, built.cases)
    files = [p for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs") for p in (dataset / sub).iterdir()]
    assert est["data"] == sum(p.stat().st_size for p in files) * (cfg.loop.max_rounds + 2)
    assert est["cache"] == (2 + 2) * 32 * 16 * 16 * 2  # 2 unlabeled + 2 labeled (adaptation), tiny_random, float16
    for extra, cache in (("teacher.cache_dtype=float32", (2 + 2) * 32 * 16 * 16 * 4),
                         ("teacher.cache_max_gb=0.00001", 10000)):  # the cap bounds the estimate
        assert pf.disk_estimate(cfg_for(dataset, tmp_path / "run", extra), built.dataset, built.cases)["cache"] == cache
    assert pf.disk_estimate(cfg_for(dataset, tmp_path / "run", "loop.max_rounds=0"), built.dataset,
                            built.cases)["cache"] == 0


# ------------------------------------------------------------------------------------- resume
def started(cfg) -> Path:
    """A run folder as run_experiment leaves it after its first step (no training)."""
    state = RunState(Path(cfg.run_dir), run_identity(to_dict(cfg)))
    state.run("r0/dataset", lambda: {"raw_dir": "x"})
    return Path(cfg.run_dir)


def test_manifest_records_recipe_and_dataset_parts(dataset, tmp_path):
    cfg = cfg_for(dataset, tmp_path / "run")
    identity = read_manifest(started(cfg))["identity"]
    assert set(identity) == {"recipe", "dataset", "dataset_parts", "recipe_values"}
    assert set(identity["dataset_parts"]) == {"dataset.json", "semisam_split.json", "imagesTr", "labelsTr",
                                              "imagesTs", "labelsTs"}
    assert identity["recipe_values"]["student.epochs"] == cfg.student.epochs
    assert "device" not in identity["recipe_values"] and "logger.wandb" not in identity["recipe_values"]


def test_resume_refuses_a_regenerated_dataset_and_names_it(dataset, tmp_path):
    run_dir = started(cfg_for(dataset, tmp_path / "run"))
    make_synthetic(dataset, n_train=4, n_labeled=2, n_test=1, size=32, seed=1, overwrite=True)  # another split
    msg = refused(cfg_for(dataset, run_dir), f"{run_dir} holds a run with another dataset (")
    assert "semisam_split.json" in msg and "restart=true" in msg and "another recipe" not in msg
    pf.preflight(cfg_for(dataset, run_dir, "restart=true"))  # restart=true is allowed (and still writes nothing)
    assert list(read_manifest(run_dir)["steps"]) == ["r0/dataset"]


def test_resume_refuses_another_recipe_and_lists_up_to_three_keys(dataset, tmp_path):
    cfg = cfg_for(dataset, tmp_path / "run")
    run_dir = started(cfg)
    msg = refused(cfg_for(dataset, run_dir, f"student.epochs={cfg.student.epochs + 1}"),
                  f"{run_dir} holds a run with another recipe: student.epochs {cfg.student.epochs} → "
                  f"{cfg.student.epochs + 1}; rerun with restart=true")
    msg = refused(cfg_for(dataset, run_dir, "seed=5", "student.epochs=9", "filters.iou_thresh=0.3", "loop.max_rounds=1"),
                  "another recipe: seed 0 → 5, ")
    assert msg.count("→") == 3 and "and 1 more;" in msg


def test_resume_accepts_what_does_not_change_results(dataset, tmp_path):
    cfg = cfg_for(dataset, tmp_path / "run")
    run_dir = started(cfg)
    other = cfg_for(dataset, run_dir, "device=cuda", "student.num_processes_da=0", "student.num_processes=2",
                    "logger=offline", "logger.tags=[a]", "teacher.decode_batch=3", "teacher.cache_memory_items=0",
                    f"teacher.cache_dir={tmp_path / 'cache'}")
    built = pf.preflight(other)
    assert built.identity == read_manifest(run_dir)["identity"]
    assert RunState(run_dir, built.identity).done("r0/dataset")


def test_old_manifest_is_refused_with_restart_hint(dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / MANIFEST).write_text(json.dumps({"fingerprint": "0123456789abcdef", "created": 0, "steps": {}}))
    msg = refused(cfg_for(dataset, run_dir), "earlier semisam version")
    assert "restart=true" in msg
    assert not holds_run(read_manifest(run_dir), run_identity(to_dict(cfg_for(dataset, run_dir))))


def test_compare_counts_a_run_finished_only_on_the_same_recipe_and_dataset(dataset, tmp_path):
    from semisam.compare.runner import Cell, is_finished

    cfg = cfg_for(dataset, tmp_path / "run")
    cell = Cell(None, 0, 0, started(cfg), [], cfg)
    assert not is_finished(cell)  # no summary.json yet
    (cell.run_dir / "summary.json").write_text("{}")
    assert is_finished(cell)
    assert is_finished(Cell(None, 0, 0, cell.run_dir, [], cfg_for(dataset, cell.run_dir, "student.num_processes_da=0")))
    assert not is_finished(Cell(None, 0, 0, cell.run_dir, [], cfg_for(dataset, cell.run_dir, "seed=3")))
    make_synthetic(dataset, n_train=4, n_labeled=2, n_test=1, size=32, seed=1, overwrite=True)
    assert not is_finished(cell)


def test_a_run_recorded_before_keys_were_added_is_the_same_run_at_their_older_behaviour(dataset, tmp_path):
    from semisam.loop.state import ADDED_KEYS

    cfg = cfg_for(dataset, tmp_path / "run", "teacher.cache_dtype=float32")  # embeddings cached as before
    identity = run_identity(to_dict(cfg))
    older = dict(identity, recipe="0" * 16,  # recorded by a semisam without the added keys
                 recipe_values={k: v for k, v in identity["recipe_values"].items() if k not in ADDED_KEYS})
    manifest = {"identity": older, "steps": {}}
    assert holds_run(manifest, identity)
    # an added key at another value is another recipe, and the refusal names it
    changed = run_identity(to_dict(cfg_for(dataset, tmp_path / "run", "filters.gray_zone=0.2")))
    assert not holds_run(manifest, changed)
    from semisam.loop.state import resume_refusal

    assert "filters.gray_zone (absent) → 0.2" in resume_refusal(manifest, changed, "run")
    # fine-tuning settings only matter when rounds fine-tune
    finetune = run_identity(to_dict(cfg_for(dataset, tmp_path / "run", "student.init=finetune")))
    assert "student.finetune_lr (absent) → 0.001" in resume_refusal(manifest, finetune, "run")
    # float16 embeddings (the default now) change the teacher's logits slightly: another recipe when a teacher runs
    half = run_identity(to_dict(cfg_for(dataset, tmp_path / "run")))
    assert "teacher.cache_dtype (absent) → float16" in resume_refusal(manifest, half, "run")
    # ... and the same run when no teacher runs (a supervised baseline recorded before the key existed)
    supervised = run_identity(to_dict(cfg_for(dataset, tmp_path / "run", "loop.max_rounds=0")))
    before = {k: v for k, v in supervised["recipe_values"].items() if k not in ADDED_KEYS}
    assert holds_run({"identity": dict(supervised, recipe="0" * 16, recipe_values=before), "steps": {}}, supervised)

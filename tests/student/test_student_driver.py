"""The nnU-Net student for real: plan + preprocess, train nnUNetTrainerSemiSAM on CPU, predict, evaluate.

One tiny synthetic 2D dataset (64x64, 4 labeled + 2 unlabeled training cases, 2 test cases) is planned and
trained once per module (2 epochs x 3 iterations); the tests then check what came out.
"""
import json
import os
import time

import numpy as np
import pytest
import torch

import semisam.nnunet.nnUNetTrainerSemiSAM as trainer_module
from semisam.nnunet.nnUNetTrainerSemiSAM import CONFIG_ENV_VAR, TrainerOverrides, nnUNetTrainerSemiSAM
from semisam.student.checkpoint import read_checkpoint
from semisam.student import NnUNetStudent, link_raw_dataset, load_probabilities, nnunet_env, probabilities_file
from semisam.utils.errors import SemisamError

EPOCHS, ITERS, VAL_ITERS, LR = 2, 3, 1, 0.005


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from data_prep.synthetic import make_synthetic
    from semisam.data import RawDataset

    root = tmp_path_factory.mktemp("student")
    # a folder name nnU-Net would not accept: the student links it as Dataset910_Blobs
    raw = make_synthetic(root / "my raw data", n_train=6, n_labeled=4, n_test=2, dataset_id=910, name="Blobs")
    t0 = time.perf_counter()
    student = NnUNetStudent(root / "work", device="cpu", n_proc_da=0)
    dataset_id = student.add_raw_dataset(raw, dataset_id=910, name="Blobs")
    student.plan_and_preprocess(dataset_id, verify=True)
    t1 = time.perf_counter()
    model = student.train(dataset_id, "2d", "all", epochs=EPOCHS, iterations_per_epoch=ITERS,
                          val_iterations_per_epoch=VAL_ITERS, initial_lr=LR, batch_size=2)
    t2 = time.perf_counter()
    ds = RawDataset.open(raw)
    test_segs = student.predict(model, raw / "imagesTs", root / "pred_test", save_probabilities=True)
    unlabeled = ds.unlabeled_cases()
    unl_segs = student.predict(model, [c.image_files for c in unlabeled], root / "pred_unlabeled",
                               save_probabilities=True)
    t3 = time.perf_counter()
    print(f"\ntiny student: plan+preprocess {t1 - t0:.1f} s, train {t2 - t1:.1f} s, "
          f"predict {len(test_segs) + len(unl_segs)} cases {t3 - t2:.1f} s")
    return {"root": root, "raw": raw, "student": student, "dataset_id": dataset_id, "model": model,
            "ds": ds, "test_segs": test_segs, "unlabeled": unlabeled, "unl_segs": unl_segs}


@pytest.mark.slow
def test_predictions_probabilities_and_evaluation(trained):
    from semisam.eval import evaluate_segmentations, labels_from_dataset_json, write_report

    segs, ds = trained["test_segs"], trained["ds"]
    assert [s.name for s in segs] == ["test_000.png", "test_001.png"]
    for seg_file in segs:
        assert probabilities_file(seg_file) == seg_file.with_suffix(".npz")
        probs, props = load_probabilities(probabilities_file(seg_file))
        assert probs.shape == (2, 1, 64, 64) and probs.dtype == np.float32  # (K, Z, Y, X)
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        assert props["spacing"] is not None
        seg, _ = ds.read_seg(seg_file)
        # the exported label map is the argmax of the exported probabilities (ties aside)
        assert np.mean(seg[0] == probs.argmax(0)) > 0.99
    labels, ignore = labels_from_dataset_json(json.loads((trained["raw"] / "dataset.json").read_text()))
    pairs = [(c.case_id, trained["root"] / "pred_test" / f"{c.case_id}.png", c.label_file)
             for c in ds.test_cases()]
    metrics = evaluate_segmentations(pairs, labels, ignore)
    fg = metrics["classes"]["foreground"]
    assert 0.0 <= fg["mean_dice"] <= 1.0 and 0.0 <= fg["pooled_dice"] <= 1.0
    assert metrics["n_cases"] == 2
    json_path, md_path = write_report(metrics, trained["root"] / "eval")
    assert json.loads(json_path.read_text())["n_cases"] == 2
    assert "| foreground |" in md_path.read_text()
    # the unlabeled cases are predicted from their images (the teacher's input), written whole
    assert sorted(p.name for p in trained["unl_segs"]) == sorted(f"{c.case_id}.png" for c in trained["unlabeled"])
    assert all(p.is_file() and p.with_suffix(".npz").is_file() for p in trained["unl_segs"])


@pytest.mark.slow
def test_training_length_and_lr_came_from_the_recipe(trained):
    fold_dir = trained["model"] / "fold_all"
    ckpt = read_checkpoint(fold_dir / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "nnUNetTrainerSemiSAM"
    assert ckpt["current_epoch"] == EPOCHS
    assert len(ckpt["logging"]["train_losses"]) == EPOCHS
    assert ckpt["logging"]["lrs"][0] == pytest.approx(LR)
    debug = json.loads((fold_dir / "debug.json").read_text())
    assert debug["num_epochs"] == str(EPOCHS)
    assert debug["num_iterations_per_epoch"] == str(ITERS)
    assert debug["num_val_iterations_per_epoch"] == str(VAL_ITERS)
    assert debug["batch_size"] == "2"
    # fold "all": nnU-Net's final validation is skipped (it would re-predict the training cases)
    assert not (fold_dir / "validation").exists()
    # only labeled cases were preprocessed (dataset.json's explicit case list)
    pre = trained["student"].paths.preprocessed / "Dataset910_Blobs"
    assert json.loads((pre / "dataset.json").read_text())["numTraining"] == 4


def _trainer(trained, overrides=None):
    student, dataset_id = trained["student"], trained["dataset_id"]
    with student.env(trained["root"] / "scratch_results"):
        trainer = student.build_trainer(dataset_id, "2d", "all", epochs=1, iterations_per_epoch=1,
                                        val_iterations_per_epoch=1)
        if overrides is not None:
            trainer.apply_overrides(overrides)
        trainer.initialize()
    return trainer


@pytest.mark.slow
def test_init_checkpoint_loads_the_previous_weights(trained):
    ckpt_file = trained["model"] / "fold_all" / "checkpoint_final.pth"
    saved = read_checkpoint(ckpt_file)["network_weights"]
    fresh = _trainer(trained).network.state_dict()
    tuned = _trainer(trained, TrainerOverrides(init_checkpoint=str(ckpt_file))).network.state_dict()
    assert set(tuned) == set(saved)
    assert all(torch.equal(tuned[k].cpu(), saved[k].cpu()) for k in saved)
    assert not all(torch.equal(fresh[k].cpu(), saved[k].cpu()) for k in saved)
    # weights of another network are refused with one clear line
    bad = trained["root"] / "bad.pth"
    broken = dict(saved)
    broken.pop(next(iter(broken)))
    torch.save({"network_weights": broken}, bad)
    with pytest.raises(SemisamError, match="another network"):
        _trainer(trained, TrainerOverrides(init_checkpoint=str(bad)))
    # the next round's path: fine-tune into its own results folder
    round_dir = trained["root"] / "round1"
    model = trained["student"].train(trained["dataset_id"], "2d", "all", epochs=1, iterations_per_epoch=1,
                                     val_iterations_per_epoch=1, init_checkpoint=ckpt_file, results_dir=round_dir)
    assert model == round_dir / "Dataset910_Blobs" / "nnUNetTrainerSemiSAM__nnUNetPlans__2d"
    assert read_checkpoint(model / "fold_all" / "checkpoint_final.pth")["current_epoch"] == 1
    log = next((model / "fold_all").glob("training_log_*.txt")).read_text()
    assert f"initial weights from {ckpt_file}" in log


@pytest.mark.slow
def test_env_var_config_is_read_by_nnunets_own_construction(trained, tmp_path, monkeypatch):
    """``nnUNetv2_train -tr nnUNetTrainerSemiSAM`` path: nnU-Net's lookup + get_trainer_from_args."""
    cfg = TrainerOverrides(num_epochs=7, num_iterations_per_epoch=5, num_val_iterations_per_epoch=2,
                           initial_lr=0.02, batch_size=1).write_json(tmp_path / "trainer.json")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(cfg))
    monkeypatch.setenv("nnUNet_extTrainer", os.path.dirname(trainer_module.__file__))
    from nnunetv2.run.run_training import get_trainer_from_args

    with nnunet_env(trained["root"] / "work"), monkeypatch.context() as m:
        m.setenv("nnUNet_results", str(tmp_path / "results"))
        trainer = get_trainer_from_args("910", "2d", "all", "nnUNetTrainerSemiSAM", device=torch.device("cpu"))
        assert type(trainer).__name__ == "nnUNetTrainerSemiSAM"
        assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch,
                trainer.initial_lr) == (7, 5, 2, 0.02)
        trainer.initialize()
        assert trainer.batch_size == 1 and trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
        with pytest.raises(SemisamError, match="before"):
            trainer.apply_overrides(TrainerOverrides(num_epochs=3))


@pytest.mark.slow
def test_user_errors(trained, tmp_path):
    student = trained["student"]
    with pytest.raises(SemisamError, match="5-fold"):
        student.train(trained["dataset_id"], "2d", 0, epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1)
    with pytest.raises(SemisamError, match="not planned"):
        student.build_trainer(trained["dataset_id"], "3d_fullres", "all", epochs=1, iterations_per_epoch=1,
                              val_iterations_per_epoch=1)
    with pytest.raises(SemisamError, match="no checkpoint"):
        student.predict(trained["model"], trained["raw"] / "imagesTs", tmp_path / "p", fold=3)
    with pytest.raises(SemisamError, match="does not exist"):
        student.predict(trained["model"], [[tmp_path / "nope_0000.png"]], tmp_path / "p")
    assert not (tmp_path / "p").exists()
    with pytest.raises(SemisamError, match="already exists"):
        student.predict(trained["model"], trained["raw"] / "imagesTs", trained["root"] / "pred_test")


# ---------------------------------------------------------------- fast tests (no training)

def test_overrides_validation(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"num_epochs": 3, "num_epoch": 4}))
    with pytest.raises(SemisamError, match="unknown key 'num_epoch'"):
        TrainerOverrides.from_json(tmp_path / "a.json")
    with pytest.raises(SemisamError, match="num_epochs"):
        TrainerOverrides(num_epochs=0)
    with pytest.raises(SemisamError, match="initial_lr"):
        TrainerOverrides(initial_lr=-1.0)
    with pytest.raises(SemisamError, match="does not exist"):
        TrainerOverrides.from_json(tmp_path / "missing.json")
    written = TrainerOverrides(num_epochs=3, initial_lr=0.1).write_json(tmp_path / "b.json")
    assert json.loads(written.read_text()) == {"num_epochs": 3, "initial_lr": 0.1}
    assert TrainerOverrides.from_json(written) == TrainerOverrides(num_epochs=3, initial_lr=0.1)


def test_trainer_keeps_nnunets_init_signature():
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    assert list(inspect.signature(nnUNetTrainerSemiSAM.__init__).parameters) == \
        list(inspect.signature(nnUNetTrainer.__init__).parameters)


def test_nnunet_env_sets_and_restores(tmp_path, monkeypatch):
    from nnunetv2 import paths

    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.setenv("nnUNet_results", "/elsewhere")
    with nnunet_env(tmp_path, n_proc_da=0) as p:
        assert os.fspath(paths.nnUNet_raw) == str(tmp_path / "nnUNet_raw") == str(p.raw)
        assert os.fspath(paths.nnUNet_results) == str(tmp_path / "nnUNet_results")
        assert os.environ["nnUNet_n_proc_DA"] == "0"
        assert p.preprocessed.is_dir()
    assert "nnUNet_raw" not in os.environ and os.environ["nnUNet_results"] == "/elsewhere"


def test_link_raw_dataset(tmp_path):
    src = tmp_path / "anything"
    (src / "imagesTr").mkdir(parents=True)
    (src / "imagesTr" / "a_0000.png").write_bytes(b"x")
    (src / "dataset.json").write_text(json.dumps({"dataset": {"a": {"images": ["imagesTr/a_0000.png"],
                                                                      "label": "labelsTr/a.png"}}}))
    raw = tmp_path / "nnUNet_raw"
    with pytest.raises(SemisamError, match="DatasetNNN_Name"):
        link_raw_dataset(src, raw)
    did, link = link_raw_dataset(src, raw, 7, "Any")
    assert did == 7 and link.name == "Dataset007_Any" and link.is_symlink()
    assert (link / "imagesTr" / "a_0000.png").read_bytes() == b"x"  # relative paths resolve through the link
    assert link_raw_dataset(src, raw, 7, "Any") == (7, link)  # idempotent
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text("{}")
    with pytest.raises(SemisamError, match="already used"):
        link_raw_dataset(other, raw, 7, "Other")
    named = tmp_path / "Dataset012_Named"
    named.mkdir()
    (named / "dataset.json").write_text("{}")
    assert link_raw_dataset(named, raw)[0] == 12
    climbing = tmp_path / "Dataset013_Up"
    climbing.mkdir()
    (climbing / "dataset.json").write_text(json.dumps({"dataset": {"a": {"images": ["../x_0000.png"],
                                                                          "label": "l.png"}}}))
    with pytest.raises(SemisamError, match="leaving"):
        link_raw_dataset(climbing, raw)

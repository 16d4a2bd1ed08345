"""Online training for real: nnUNetTrainerSemiSAM on a tiny synthetic dataset, on CPU.

* with λ_c = λ_s = 0 (before a term's start) a step is exactly nnU-Net's supervised step;
* the SAM term's gradient is non-zero, zero on ignored pixels, and moves the student toward SAM's mask;
* SAM is prompted by the network online.sam_prompter names, the weak view labelled by online.weak_teacher's;
* the plain nnU-Net way in: ``nnUNetv2_train … -tr nnUNetTrainerSemiSAM`` with the settings file in the raw
  dataset folder, ``--c`` continuation (EMA teacher, records and store restored), ``nnUNetv2_predict``;
  with every hidden label of the unlabeled cases replaced by bytes no reader accepts (the teacher never reads
  one); bad continuation checkpoints and settings files are one line;
* the ``semisam run`` way in, on a 3D dataset (the teacher slice-wise), with the epoch records in W&B live;
  after it, benchmarks/online_store_quality.py scores the store against the hidden labels (known answer: 1).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.synthetic import make_synthetic
from semisam.nnunet.nnUNetTrainerSemiSAM import TrainerOverrides, nnUNetTrainerSemiSAM
from semisam.student.checkpoint import read_checkpoint
from semisam.student import NnUNetStudent
from semisam.utils.errors import SemisamError

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# the tiny random SAM (plumbing, not quality), the SAM term from the first epoch; adapted only in the 3D run
SAM_RECIPE = ["experiment=semisam", "teacher=tiny_random", "prompts=box", "filters=student",
              "teacher.adapt.enabled=false", "online.sam_weight.start=0.0", "online.sam_weight.ramp_up=0.0"]
ADAPT = ["teacher.adapt.enabled=true", "teacher.adapt.steps=2", "teacher.adapt.batch_size=2"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A tiny 2D dataset (2 labeled, 6 unlabeled images in imagesTr/) planned and preprocessed by nnU-Net,
    whose hidden labels are made unreadable."""
    root = tmp_path_factory.mktemp("online")
    raw = make_synthetic(root / "Dataset921_Online", n_train=8, n_labeled=2, n_test=2, size=48, seed=1,
                         dataset_id=921, name="Online")
    for f in (raw / "labelsHidden").iterdir():
        f.write_bytes(b"not an image: the teacher must never read this file")
    student = NnUNetStudent(root / "work", device="cpu", n_proc_da=0)
    dataset_id = student.add_raw_dataset(raw, dataset_id=921, name="Online")
    student.plan_and_preprocess(dataset_id, verify=False)
    return {"root": root, "raw": raw, "student": student, "dataset_id": dataset_id}


def _trainer(planned, cls, overrides: TrainerOverrides | None = None):
    student = planned["student"]
    with student.env():
        trainer = student.build_trainer(planned["dataset_id"], "2d", "all", epochs=4, iterations_per_epoch=2,
                                        val_iterations_per_epoch=1, batch_size=2, seed=0)
        if cls is not nnUNetTrainerSemiSAM:  # the stock trainer, built from the same plans
            trainer = cls(plans={**trainer.plans_manager.plans, "continue_training": False}, configuration="2d", fold="all",
                          dataset_json=trainer.dataset_json, device=torch.device("cpu"))
        elif overrides is not None:
            if isinstance(overrides.recipe, tuple) and not any(o.startswith("logger=") for o in overrides.recipe):
                # these trainers are driven step by step and never finished: no W&B run of their own
                overrides = TrainerOverrides(**{**vars(overrides), "recipe": [*overrides.recipe, "logger=disabled"]})
            trainer.apply_overrides(overrides)
    return trainer


def test_zero_weights_give_nnunets_supervised_step(planned):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    student = planned["student"]
    # mean teacher whose weight starts at half of training: λ_c = 0 in the first epoch
    ours = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(recipe=[
        "experiment=mean_teacher", "online.consistency_weight.start=0.5"]))
    stock = _trainer(planned, nnUNetTrainer)
    with student.env():
        ours.on_train_start()  # loaders, the unlabeled folder, the EMA teacher
        stock.initialize()
        stock.network.load_state_dict(ours.network.state_dict())
        batch = next(ours.dataloader_train)
        out_ours = ours.train_step(batch)
        out_stock = stock.train_step(batch)
        assert out_ours["loss"] == out_stock["loss"] and out_ours["lambda_c"] == 0
        for (name, a), b in zip(ours.network.state_dict().items(), stock.network.state_dict().values()):
            assert torch.equal(a, b), name  # the same update
        # past the start the consistency term is in the loss: the same batch gives another loss
        ours.current_epoch = 3
        out_later = ours.train_step(batch)
        assert out_later["lambda_c"] > 0 and out_later["loss"] != out_later["sup"]
        ours.on_train_end()


def test_sam_term_gradient_moves_the_student_toward_sams_mask(planned):
    from semisam.online.terms import first
    from semisam.online.unlabeled import UnlabeledBatch

    student = planned["student"]
    trainer = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(recipe=["experiment=mean_teacher"]))
    with student.env():
        trainer.on_train_start()
        unl = UnlabeledBatch.from_loader(next(trainer.dataloader_unlabeled))
        trainer.on_train_end()
    x = unl.data
    ignore = trainer.no_label
    sam_mask = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.long)
    sam_mask[..., : x.shape[-1] // 2] = 1  # SAM says: the left half is foreground
    sam_mask[..., :4, :] = ignore  # and nothing about the top rows
    net = trainer.network

    logits = first(net(x)).detach().requires_grad_(True)
    trainer.unlabeled_loss(logits, sam_mask).backward()
    g = logits.grad
    assert g.abs().sum() > 0
    assert g[..., :4, :].abs().max() == 0  # ignored pixels carry no gradient
    fg = (sam_mask[:, 0] == 1)
    assert (g[:, 1][fg] < 0).float().mean() > 0.95  # descending raises the foreground logit where SAM says so

    def agreement() -> float:
        with torch.no_grad():
            p = torch.softmax(first(net(x)), 1)[:, 1]
        keep = sam_mask[:, 0] != ignore
        return float((p[keep] * fg[keep] + (1 - p[keep]) * (~fg[keep])).mean())

    before = agreement()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        trainer.unlabeled_loss(first(net(x)), sam_mask).backward()
        opt.step()
    assert agreement() > before + 0.05


def _nnunet_cli(planned, *args, check=True):
    env = {**os.environ, **{k: str(v) for k, v in planned["student"].paths.environ().items()},
           "nnUNet_n_proc_DA": "0", "SEMISAM_TRAINER_CONFIG": ""}
    proc = subprocess.run([sys.executable, "-m", "semisam.nnunet", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=planned["root"])
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_feature_perturbation_branch(planned):
    """weak_strong with online.feature_perturbation: the branch drops encoder features (p = 0 gives the plain
    forward, p > 0 another output), its gradient reaches the encoder, and a training step includes its loss."""
    from semisam.online.terms import feature_perturbed_logits, first

    student = planned["student"]
    trainer = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(recipe=[
        "experiment=weak_strong", "online.feature_perturbation=0.5", "online.confidence=0.0",
        "online.scale_by_coverage=true"]))  # every pixel confident: the scaled terms are the plain ones
    with student.env():
        trainer.on_train_start()
        try:
            batch = next(trainer.dataloader_train)
            out = trainer.train_step(batch)
            x = batch["data"]
            net = trainer.network
            torch.manual_seed(0)
            assert torch.allclose(feature_perturbed_logits(net, x, 0.0), first(net(x)), atol=1e-5)
            perturbed = feature_perturbed_logits(net, x, 0.5)
            assert not torch.allclose(perturbed, first(net(x)), atol=1e-3)
            net.zero_grad()
            perturbed.square().mean().backward()
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())
        finally:
            trainer.on_train_end()
    assert np.isfinite(out["fp"]) and out["fp"] != 0 and np.isfinite(out["consistency"])  # CE - soft Dice: any sign


def test_sam_confidence_rides_in_the_store_and_weights_the_term(planned):
    """online.sam_confidence: a refresh stores SAM's per-pixel confidence level with each pseudo-label, the
    labels themselves are those of a store without it, and a step trains on the weighted term (the confidence
    itself: test_online_units)."""
    from semisam.online.unlabeled import decode_store, read_store, store_weights

    student = planned["student"]
    stores = {}
    for weighted in (False, True):
        trainer = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(
            recipe=[*SAM_RECIPE, f"online.sam_confidence={str(weighted).lower()}"]))
        with student.env():
            trainer.on_train_start()
            try:
                trainer.on_train_epoch_start()  # the SAM term is on from the start: the store is refreshed
                stores[weighted] = {c: torch.from_numpy(read_store(trainer.unlabeled_folder, c).astype(np.int64))
                                    for c in trainer.unlabeled_cases}
                out = trainer.train_step(next(trainer.dataloader_train))
            finally:
                trainer.on_train_end()
        assert out["lambda_s"] > 0 and np.isfinite(out["sam"])
    for case, plain in stores[False].items():
        coded = stores[True][case]
        assert torch.equal(decode_store(coded, 99), decode_store(plain, 99))
        assert float(store_weights(plain).max()) == 0
    # the tiny random SAM's masks are near p = 0.5 everywhere: its confidence is the lowest level (weight 0 to 0.25)
    assert 0 <= float(torch.cat([store_weights(c).flatten() for c in stores[True].values()]).max()) <= 0.25


def _student_says_background_ema_foreground(trainer) -> None:
    """Make the student and its EMA teacher disagree completely, whatever the input: the student's output biases
    say background everywhere, the EMA teacher's foreground."""
    with torch.no_grad():
        for network, foreground in ((trainer.network, -20.0), (trainer.ema.module, 20.0)):
            for layer in network.decoder.seg_layers:
                layer.bias.copy_(torch.tensor([-foreground, foreground]))


@pytest.mark.parametrize("prompter", ["ema", "student"])
def test_sam_prompter_chooses_whose_predictions_prompt_sam(planned, prompter):
    """online.sam_prompter: the refresh prompts SAM from the EMA teacher's predictions or from the student's.
    The two networks are made to disagree completely (the student says background everywhere, the EMA teacher
    foreground everywhere); with filters=student the stored label is the prompting network's own."""
    from semisam.online.unlabeled import decode_store, read_store

    student = planned["student"]
    trainer = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(
        recipe=[*SAM_RECIPE, f"online.sam_prompter={prompter}"]))
    with student.env():
        trainer.on_train_start()
        try:
            assert trainer.ema is not None  # experiment=semisam keeps its mean teacher either way
            _student_says_background_ema_foreground(trainer)
            trainer.on_train_epoch_start()
            stored = torch.cat([decode_store(torch.from_numpy(read_store(trainer.unlabeled_folder, c).astype(np.int64)),
                                             trainer.no_label).flatten() for c in trainer.unlabeled_cases])
            out = trainer.train_step(next(trainer.dataloader_train))
        finally:
            trainer.on_train_end()
    assert out["lambda_s"] > 0 and np.isfinite(out["sam"])
    foreground = int((stored == 1).sum())
    if prompter == "ema":
        assert trainer._refresh_stats["accepted"] > 0 and foreground == int((stored != trainer.no_label).sum()) > 0
    else:
        assert foreground == 0 and trainer._refresh_stats["foreground_fraction"] == 0


@pytest.mark.parametrize("weak_teacher", ["ema", "student"])
def test_weak_view_is_labelled_by_online_weak_teacher_beside_a_sam_term(planned, weak_teacher):
    """weak->strong with a SAM term that the EMA teacher prompts keeps an EMA copy; the weak view is still
    labelled by online.weak_teacher. The student says background everywhere, the EMA teacher foreground: the
    consistency loss on the student is ~0 only when the student labels its own weak view."""
    student = planned["student"]
    trainer = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(recipe=[
        *SAM_RECIPE, "online.sam_prompter=ema", "online.consistency=weak_strong", "online.consistency_weight.weight=1",
        "online.consistency_weight.ramp_up=0", f"online.weak_teacher={weak_teacher}"]))
    with student.env():
        trainer.on_train_start()
        try:
            assert trainer.ema is not None
            _student_says_background_ema_foreground(trainer)
            trainer.on_train_epoch_start()
            out = trainer.train_step(next(trainer.dataloader_train))
        finally:
            trainer.on_train_end()
    assert out["lambda_c"] == 1 and out["confident"] == 1
    assert out["consistency"] < 0.5 if weak_teacher == "student" else out["consistency"] > 5


def test_sam_term_per_iteration_labels_the_batch_patches(planned):
    """``online.sam_mode=iteration``: SAM labels the very patches of each unlabeled batch, prompted from
    online.sam_prompter's prediction of them, in patch geometry; no store is written and nothing is cached."""
    from semisam.online.sam_term import sam_on_patches
    from semisam.online.unlabeled import decode_store, read_store, store_weights

    student = planned["student"]
    trainer = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(recipe=[*SAM_RECIPE, "online.sam_mode=iteration"]))
    with student.env():
        trainer.on_train_start()
        try:
            assert trainer._sam is None and trainer._sam_labeler is not None
            assert trainer._sam_labeler.teacher.cache.cache_dir is None and trainer._sam_labeler.teacher.cache.max_memory_items == 0
            trainer.on_train_epoch_start()
            out = trainer.train_step(next(trainer.dataloader_train))
        finally:
            trainer.on_train_end()
    assert out["lambda_s"] > 0 and np.isfinite(out["sam"]) and out["sam_pixels"] > 0
    assert out["patches_accepted"] > 0 and out["sam_seconds"] > 0
    assert trainer._sam_store_epoch is None and not read_store(trainer.unlabeled_folder, trainer.unlabeled_cases[0]).any()

    # the patch geometry: a teacher prediction "left half of patch 0, top half of patch 1" comes back there
    # (filters=student: the kept label is the teacher network's own)
    images = torch.randn(2, 1, 32, 48)
    fg = torch.zeros(2, 32, 48)
    fg[0, :, :24] = 0.9
    fg[1, :16, :] = 0.9
    probs = torch.stack([1 - fg, fg], 1).clamp(0.05, 0.95)
    probs = probs / probs.sum(1, keepdim=True)
    codes, stats = sam_on_patches(trainer._sam_labeler, images, probs)
    pseudo = decode_store(codes, trainer.no_label)
    assert float(store_weights(codes).max()) == 0  # no confidence asked for: level 0
    weighted, _ = sam_on_patches(trainer._sam_labeler, images, probs, confidence=True)
    assert torch.equal(decode_store(weighted, trainer.no_label), pseudo)  # the labels do not change with it
    assert pseudo.shape == (2, 1, 32, 48) and stats["patches_accepted"] == 1.0
    assert (pseudo[0, 0, :, :24] == 1).all() and (pseudo[0, 0, :, 24:] == 0).all()
    assert (pseudo[1, 0, :16] == 1).all() and (pseudo[1, 0, 16:] == 0).all()
    assert len(trainer._sam_labeler.stats) == 0  # per-patch records are not kept


def test_nnunetv2_train_continue_and_predict(planned):
    from wandb_files import history_rows, offline_runs, wait_for_records

    student = planned["student"]
    raw_linked = student.paths.raw / "Dataset921_Online"
    settings = raw_linked / "semisam_trainer.json"
    values = {"num_epochs": 2, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1, "batch_size": 2,
              "seed": 0, "recipe": SAM_RECIPE}
    settings.write_text(json.dumps(values))
    train = ["nnUNetv2_train", "921", "2d", "all", "-tr", "nnUNetTrainerSemiSAM", "-device", "cpu"]
    _nnunet_cli(planned, *train)
    fold = student.paths.results / "Dataset921_Online" / "nnUNetTrainerSemiSAM__nnUNetPlans__2d" / "fold_all"
    # the recipe's logger (W&B offline by default): the trainer's own W&B run, one train_live row per epoch
    run_id = (fold / "wandb_run_id").read_text().strip()
    (first_run,) = offline_runs(fold, run_id)
    live = [r for r in history_rows(wait_for_records(first_run)) if "train_live/sam" in r]
    assert [r["train_live/epoch"] for r in live] == [0, 1]
    assert all("train_live/refresh_kept_fraction" in r and "train_live/lambda_s" in r for r in live)
    ckpt = read_checkpoint(fold / "checkpoint_final.pth")
    extra = ckpt["semisam"]
    assert [r["epoch"] for r in extra["history"]] == [0, 1]
    assert all(r["sam"] is not None for r in extra["history"])  # the SAM term was in the loss every epoch
    assert int(extra["ema"]["n_averaged"]) == 4 and extra["sam_store_epoch"] == 1
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "6 unlabeled cases" in log and "SAM pseudo-labels refreshed" in log
    unl = student.paths.preprocessed / "Dataset921_Online" / "nnUNetPlans_2d__unlabeled"
    assert sorted(p.name[:-5] for p in unl.glob("*.b2nd") if not p.name.endswith("_seg.b2nd")) == \
        sorted(p.name[: -len("_0000.png")] for p in (planned["raw"] / "imagesTr").glob("*.png")
               if not (planned["raw"] / "labelsTr" / p.name.replace("_0000", "")).exists())

    # --c: one more epoch, from the final checkpoint: the EMA teacher and the records go on
    settings.write_text(json.dumps({**values, "num_epochs": 3}))
    _nnunet_cli(planned, *train, "--c")
    extra = read_checkpoint(fold / "checkpoint_final.pth")["semisam"]
    assert [r["epoch"] for r in extra["history"]] == [0, 1, 2]
    assert int(extra["ema"]["n_averaged"]) == 6  # 4 restored + 2 (a fresh teacher would count 2)
    # the same W&B run goes on, its steps after the first part's
    assert (fold / "wandb_run_id").read_text().strip() == run_id
    (second_run,) = [p for p in offline_runs(fold, run_id) if p != first_run]
    more = [r for r in history_rows(wait_for_records(second_run)) if "train_live/sam" in r]
    assert [r["train_live/epoch"] for r in more] == [2] and more[0]["_step"] > max(r["_step"] for r in live)

    out = planned["root"] / "pred"
    _nnunet_cli(planned, "nnUNetv2_predict", "-i", str(planned["raw"] / "imagesTs"), "-o", str(out), "-d", "921",
                "-c", "2d", "-f", "all", "-tr", "nnUNetTrainerSemiSAM", "-device", "cpu")
    assert sorted(p.name for p in out.glob("*.png")) == ["test_000.png", "test_001.png"]

    # bad input, each one line: a malformed settings file; continuation from another trainer or network
    settings.write_text("{not json")
    proc = _nnunet_cli(planned, *train, check=False)
    assert proc.returncode != 0 and "semisam_trainer.json is not valid JSON" in proc.stderr
    settings.write_text(json.dumps(values))
    trainer = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(recipe=SAM_RECIPE))
    bad = read_checkpoint(fold / "checkpoint_final.pth")
    bad["trainer_name"] = "nnUNetTrainerDA5"
    torch.save(bad, planned["root"] / "other_trainer.pth")
    with student.env():
        with pytest.raises(SemisamError, match="written by trainer 'nnUNetTrainerDA5'"):
            trainer.load_checkpoint(str(planned["root"] / "other_trainer.pth"))
        bad = read_checkpoint(fold / "checkpoint_final.pth")
        bad["network_weights"].popitem()
        torch.save(bad, planned["root"] / "other_net.pth")
        with pytest.raises(SemisamError, match="weights of another network"):
            trainer.load_checkpoint(str(planned["root"] / "other_net.pth"))
        mt = _trainer(planned, nnUNetTrainerSemiSAM, TrainerOverrides(recipe=["experiment=mean_teacher"]))
        with pytest.raises(SemisamError, match="other online settings"):
            mt.load_checkpoint(str(fold / "checkpoint_final.pth"))
    settings.unlink()


def test_semisam_run_online_on_3d_with_live_wandb(tmp_path):
    from wandb_files import history_rows, wait_for_records

    raw = make_synthetic(tmp_path / "Dataset922_Vol", dim=3, n_train=5, n_labeled=2, n_test=1, size=24, seed=2,
                         dataset_id=922, name="Vol")
    run_dir = tmp_path / "run"
    env = {**os.environ, "nnUNet_n_proc_DA": "0", "WANDB_DIR": str(tmp_path / "wb")}
    env.pop("WANDB_MODE", None)
    args = ["run", *SAM_RECIPE, *ADAPT, f"dataset.raw_dir={raw}", f"run_dir={run_dir}", "student=tiny", "student.epochs=2",
            "student.configuration=3d_fullres", "logger=offline", "device=cpu"]
    proc = subprocess.run([sys.executable, "-m", "semisam", *args], env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 0: online training with mean_teacher consistency and SAM term on 3 unlabeled cases" in proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    model = Path(manifest["steps"]["r0/train"]["result"]["model"])
    extra = read_checkpoint(model / "fold_all" / "checkpoint_final.pth")["semisam"]
    assert len(extra["history"]) == 2 and extra["history"][-1]["refresh_cases"] == 3
    assert "SAM adapted on 2 labeled cases" in "".join(p.read_text() for p in (model / "fold_all").glob("training_log_*"))
    rows = history_rows(wait_for_records(next((tmp_path / "wb" / "wandb").glob("offline-run-*"))))
    live = [r for r in rows if "train_live/sam" in r]
    rounds = [r for r in rows if "round/test/dice_mean" in r]
    assert len(live) == 2 and rounds
    # logged as training went, before the round's record (written after training)
    assert max(r["_step"] for r in live) < min(r["_step"] for r in rounds)
    for key in ("train_live/consistency", "train_live/lambda_c", "train_live/lambda_s", "train_live/sam_pixels",
                "train_live/refresh_kept_fraction", "train_live/pseudo_dice", "train_live/ema_pseudo_dice"):
        assert key in live[-1], key

    # after the run, benchmarks/online_store_quality.py scores the store the SAM term trained on against the hidden
    # labels, through nnU-Net's preprocessing of this 3D run; rewritten with the hidden labels themselves, the
    # store scores 1 (store and hidden labels are aligned voxel for voxel)
    import importlib.util

    from semisam.online.unlabeled import encode_store, store_cases, store_epoch, write_store

    spec = importlib.util.spec_from_file_location("online_store_quality", REPO / "benchmarks" / "online_store_quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    store, _, config, hidden = quality.run_store(run_dir)
    scored = quality.score_run(run_dir)
    assert scored["cases"] == 3 and scored["refreshed_at_epoch"] == store_epoch(store)
    assert 0 < scored["kept"] <= 1 and 0 <= scored["dice_kept"] <= 1 and 0 < scored["fg_true"] < 1
    write_store(store, {case: encode_store(hidden(case), ignore_label=-1) for case in store_cases(store)},
                epoch=99, patch_size=config.patch_size)
    truth = quality.score_run(run_dir)
    assert truth["dice_kept"] == 1.0 and truth["fg_pseudo"] == truth["fg_true"] and truth["refreshed_at_epoch"] == 99

"""Online training's parts without a trainer: weight schedules, settings, the recipe checks, the pseudo-label
store's encoding through nnU-Net's padding, the strong view's alignment, the EMA teacher and the consistency
terms' gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semisam.config import compose
from semisam.online.settings import OnlineSettings, Ramp
from semisam.online.terms import EmaTeacher, StrongView, confident_targets, coverage_scaled, mean_teacher_loss
from semisam.online.unlabeled import UnlabeledBatch, decode_store, encode_store
from semisam.utils.errors import SemisamError


def test_ramp_up_hold_and_ramp_down():
    r = Ramp(weight=2.0, start=0.2, ramp_up=0.3, ramp_down=0.2)
    assert r(0.0) == 0 and r(0.19) == 0  # before start
    assert r(0.2) == pytest.approx(2.0 * math.exp(-5))  # the sigmoid ramp starts near 0
    assert r(0.35) == pytest.approx(2.0 * math.exp(-5 * 0.25))  # halfway up
    assert r(0.5) == pytest.approx(2.0) and r(0.8) == pytest.approx(2.0)  # held
    assert r(0.9) == pytest.approx(1.0)  # halfway down the cosine
    assert r(1.0) == pytest.approx(0.0, abs=1e-12)
    values = [r(t) for t in np.linspace(0.2, 0.5, 20)]
    assert values == sorted(values)  # monotone ramp-up
    assert Ramp(weight=0.5)(0.0) == 0.5 and Ramp(weight=0.5)(1.0) == 0.5  # constant
    assert Ramp()(0.5) == 0 and not Ramp().on


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight=1, start=0.5, ramp_up=0.4, ramp_down=0.2), "exceeds 1"),
    (dict(weight=-1), ">= 0"),
    (dict(weight=1, ramp_up=1.5), "fraction of training"),
    (dict(weight=float("nan")), "finite"),
])
def test_ramp_out_of_range_is_one_line(kwargs, message):
    with pytest.raises(SemisamError, match=message) as e:
        Ramp(**kwargs)
    assert "\n" not in str(e.value)


def test_settings_from_the_recipe_and_what_they_switch_on():
    mt = OnlineSettings.from_mapping({"consistency": "mean_teacher", "consistency_weight": {"weight": 0.1}})
    assert mt.enabled and mt.needs_ema
    off = OnlineSettings.from_mapping({"consistency": "mean_teacher", "consistency_weight": {"weight": 0.0}})
    assert not off.enabled  # a kind with weight 0 is supervised training
    ws = OnlineSettings.from_mapping({"consistency": "weak_strong", "consistency_weight": {"weight": 1},
                                      "weak_teacher": "student"})
    assert ws.enabled and not ws.needs_ema
    sam = {"sam_weight": {"weight": 1}}
    assert OnlineSettings.from_mapping(sam).needs_ema  # the EMA teacher prompts SAM by default
    assert not OnlineSettings.from_mapping({**sam, "sam_prompter": "student"}).needs_ema
    assert OnlineSettings.from_mapping({**sam, "sam_prompter": "student", "consistency": "mean_teacher",
                                        "consistency_weight": {"weight": 0.1}}).needs_ema
    with pytest.raises(SemisamError, match="online.sam_prompter='teacher'; choose ema or student"):
        OnlineSettings.from_mapping({**sam, "sam_prompter": "teacher"})
    assert OnlineSettings.from_mapping(mt.to_dict()) == mt
    with pytest.raises(SemisamError, match="unknown key 'ramp'"):
        OnlineSettings.from_mapping({"consistency_weight": {"weight": 1, "ramp": 0.1}})
    with pytest.raises(SemisamError, match="unknown key 'consistancy'"):
        OnlineSettings.from_mapping({"consistancy": "none"})


@pytest.mark.parametrize("overrides, message", [
    (["experiment=mean_teacher", "online.consistency_weight.ramp_up=0.9", "online.consistency_weight.start=0.2"],
     "online.consistency_weight: start \\+ ramp_up \\+ ramp_down = 1.1 exceeds 1"),
    (["experiment=semisam", "teacher=none", "prompts=box", "filters=agree"], "online.sam_weight.weight > 0 needs a SAM teacher"),
    (["experiment=mean_teacher", "loop.max_rounds=2"], "separate methods"),
    (["experiment=mean_teacher", "online.consistency_weight.weight=0"], "adds nothing"),
    (["online.consistency_weight.weight=1"], "needs a consistency kind"),
    (["experiment=weak_strong", "online.confidence=1.5"], "online.confidence=1.5 is out of range"),
    (["experiment=semisam", "online.sam_mode=iteration", "student.configuration=3d_fullres"],
     "online.sam_mode=iteration labels 2D patches; student.configuration=3d_fullres"),
    (["experiment=semisam", "online.sam_mode=batch"], "online.sam_mode"),
    (["experiment=semisam", "online.sam_prompter=teacher"], "online.sam_prompter"),
    (["experiment=mean_teacher", "online.feature_perturbation=0.5"], "is a branch of weak_strong consistency"),
])
def test_bad_online_recipes_fail_at_composition(tmp_path, overrides, message):
    with pytest.raises(SemisamError, match=message) as e:
        compose([f"dataset.raw_dir={tmp_path}", *overrides])
    assert "\n" not in str(e.value)


def test_the_online_recipes_compose():
    for name, kind, sam in (("mean_teacher", "mean_teacher", 0.0), ("weak_strong", "weak_strong", 0.0),
                            ("semisam", "mean_teacher", 1.0)):
        cfg = compose([f"experiment={name}", "dataset.raw_dir=/data"])
        assert cfg.online.consistency == kind and cfg.online.sam_weight.weight == sam
        assert cfg.loop.max_rounds == 0
    sam = compose(["experiment=semisam", "dataset.raw_dir=/data"])
    assert sam.teacher.name == "litemedsam"
    # the SAM term adopted in docs/benchmarks.md 6h: the corrector's prompts split per instance, its trust rules
    # with choose fusion, the student's own predictions as prompts; a component cut into more than 8 pieces stays
    # whole (docs/benchmarks.md, after 6k)
    corrector = compose(["prompts=corrector", "filters=corrector", "dataset.raw_dir=/data"])
    assert sam.prompts.split_instances and sam.filters.fusion == "choose" and sam.online.sam_prompter == "student"
    assert {**vars(corrector.prompts), "split_instances": True, "split_max_pieces": 8} == vars(sam.prompts)
    assert {**vars(corrector.filters), "fusion": "choose"} == vars(sam.filters)


def test_store_encoding_survives_nnunet_padding():
    """Stored value 0 means "no pseudo-label"; nnU-Net pads with -1 and maps -1 to 0, so padding is never
    read as background."""
    labels = np.array([[0, 1, 2], [2, 1, 0]])  # 2 = the ignore label here
    stored = encode_store(labels, ignore_label=2)
    assert stored.tolist() == [[1, 2, 0], [0, 2, 1]]
    padded = np.pad(stored, 1, constant_values=-1)  # nnU-Net's crop_and_pad_nd fill
    padded[padded == -1] = 0  # nnU-Net's RemoveLabelTansform(-1, 0)
    target = decode_store(torch.from_numpy(padded), no_label=7).numpy()
    assert (target[0] == 7).all() and (target[:, 0] == 7).all()  # padding: no label
    inner = target[1:-1, 1:-1]
    assert inner.tolist() == [[0, 1, 7], [7, 1, 0]]


def test_store_carries_confidence_levels_and_weighted_loss_reduces_to_nnunets():
    """online.sam_confidence: the level rides in the stored integer (padding still reads as no label, weight 0);
    weighted_dc_ce with weight 1 is nnU-Net's DC_and_CE_loss with the ignore label, and a pixel of weight 0 gets no
    gradient."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from semisam.online.terms import weighted_dc_ce
    from semisam.online.unlabeled import store_weights

    labels = np.array([[0, 1, 2], [1, 1, 0]])  # 2 = the ignore label
    confidence = np.array([[1.0, 0.5, 0.9], [0.0, 0.2, 0.74]])
    stored = encode_store(labels, ignore_label=2, confidence=confidence)
    padded = torch.from_numpy(np.pad(stored, 1, constant_values=-1))
    target = decode_store(padded, no_label=2)[1:-1, 1:-1]
    weights = store_weights(padded)
    assert target.tolist() == [[0, 1, 2], [1, 1, 0]]
    assert weights[1:-1, 1:-1].tolist() == [[1.0, 0.5, 0.0], [0.0, 0.25, 0.75]]
    assert (weights[0] == 0).all() and (weights[:, 0] == 0).all()

    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=2, dice_class=MemoryEfficientSoftDiceLoss)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    tgt = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    ones = torch.ones(2, 1, 8, 8)
    assert torch.allclose(weighted_dc_ce(loss, logits, tgt, ones), loss(logits, tgt), atol=1e-6)
    w = ones.clone()
    w[:, :, :4] = 0.0
    x = logits.clone().requires_grad_(True)
    weighted_dc_ce(loss, x, tgt, w).backward()
    assert x.grad[:, :, :4].abs().max() == 0 and x.grad[:, :, 4:].abs().sum() > 0


def test_sam_confidence_of_a_slice():
    from semisam.pseudolabel.pipeline import sam_confidence

    probs = np.full((2, 4, 4), 0.5, np.float32)
    probs[0, :2] = 0.9  # object 0: sure inside (rows 0-1), unsure elsewhere
    probs[0, 2:] = 0.1
    conf = sam_confidence(probs, np.array([True, False]), (4, 4))
    assert np.allclose(conf, 0.8)  # object 1 is rejected: its p = 0.5 does not count
    assert np.allclose(sam_confidence(probs, np.array([False, False]), (4, 4)), 1.0)  # nothing accepted
    assert np.allclose(sam_confidence(np.zeros((0, 4, 4), np.float32), np.zeros(0, bool), (4, 4)), 1.0)
    assert np.allclose(sam_confidence(probs, np.array([True, True]), (4, 4))[2:], 0.0)  # max(0.1, 0.5) = 0.5


def test_an_unlabeled_batch_has_no_target():
    batch = UnlabeledBatch.from_loader({"data": torch.zeros(2, 1, 4, 4), "pseudo": torch.zeros(2, 1, 4, 4),
                                        "keys": ["a", "b"]})
    assert not hasattr(batch, "target") and batch.keys == ("a", "b") and len(batch.pseudo) == 1
    with pytest.raises(SemisamError, match="carries a target"):
        UnlabeledBatch.from_loader({"data": torch.zeros(1), "pseudo": torch.zeros(1), "target": torch.zeros(1),
                                    "keys": ["a"]})


def test_strong_view_keeps_geometry_and_moves_targets_with_cutmix():
    g = torch.Generator().manual_seed(0)
    view = StrongView(brightness=0.3, contrast=0.3, blur=1.0, noise=0.1, cutmix=1.0, generator=g)
    x = torch.zeros(4, 1, 32, 32)
    for i in range(4):
        x[i, 0, 8 * i:8 * i + 8] = 5.0  # sample i: a bright band at rows 8i..8i+7
    target = (x > 1).long()  # the target of each sample is its band
    strong, moved = view(x, target)
    assert strong.shape == x.shape and moved.shape == target.shape
    # where the target says band, the strong image is bright; elsewhere dark: image and target moved together
    assert strong[moved == 1].mean() > 3.5 and strong[moved == 0].mean() < 1.5
    assert not torch.equal(moved, target)  # CutMix did move boxes between samples
    no_mix = StrongView(0.3, 0.3, 0.0, 0.0, cutmix=0.0, generator=torch.Generator().manual_seed(1))
    s2, t2 = no_mix(x, target)
    assert torch.equal(t2, target)
    assert torch.equal(s2.argmax(2), x.argmax(2))  # intensity changes only: the bright rows stay where they were


def test_confident_targets_ignore_unsure_pixels():
    logits = torch.tensor([[[[4.0, 0.1]], [[0.0, 0.0]]]])  # (B=1, K=2, 1, 2): pixel 0 sure, pixel 1 unsure
    target, kept = confident_targets(logits, 0.9, ignore_label=5)
    assert target.tolist() == [[[[0, 5]]]] and kept.item() == pytest.approx(0.5)


def test_coverage_scaling_averages_over_every_pixel_as_fixmatch_does():
    """online.scale_by_coverage: CE over the confident pixels times their share is CE summed over them and divided
    by every pixel (FixMatch / UniMatch); with nnU-Net's CE + Dice the whole term shrinks by the same share."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    teacher = torch.randn(2, 3, 8, 8) * 3
    target, kept = confident_targets(teacher, 0.8, ignore_label=9)
    assert 0.1 < kept.item() < 0.9  # some pixels confident, not all
    ce_kept = torch.nn.functional.cross_entropy(logits, target[:, 0], ignore_index=9)
    per_pixel = torch.nn.functional.cross_entropy(logits, target[:, 0].clamp(max=2), reduction="none")
    every_pixel = (per_pixel * (target[:, 0] != 9)).sum() / per_pixel.numel()
    assert coverage_scaled(ce_kept, target, 9).item() == pytest.approx(every_pixel.item(), rel=1e-5)
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=9, dice_class=MemoryEfficientSoftDiceLoss)
    assert coverage_scaled(loss(logits, target), target, 9).item() == pytest.approx(
        loss(logits, target).item() * kept.item(), rel=1e-5)
    assert coverage_scaled(loss(logits, target), torch.full_like(target, 9), 9).item() == 0  # nothing confident


def test_ema_teacher_warms_up_then_averages():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EmaTeacher(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net)  # first update: a copy (decay warm-up 1 - 1/1 = 0)
    assert ema.module.weight[0, 0].item() == pytest.approx(3.0)
    with torch.no_grad():
        net.weight.fill_(5.0)
    ema.update(net)  # n=1: min(0.9, 0.5) = 0.5
    assert ema.module.weight[0, 0].item() == pytest.approx(4.0)
    assert not any(p.requires_grad for p in ema.model.parameters())
    state = ema.state_dict()
    other = EmaTeacher(net, decay=0.9)
    other.load_state_dict(state)
    assert other.module.weight[0, 0].item() == pytest.approx(4.0) and int(other.model.n_averaged) == 2


def test_mean_teacher_loss_pulls_the_student_only():
    student = torch.zeros(1, 2, 4, 4, requires_grad=True)
    teacher = torch.zeros(1, 2, 4, 4)
    teacher[:, 1] = 3.0  # the teacher says class 1
    teacher.requires_grad_(True)
    loss = mean_teacher_loss(student, teacher)
    loss.backward()
    assert teacher.grad is None or not teacher.grad.any()
    assert (student.grad[:, 1] < 0).all()  # descending the loss raises the student's class-1 logit

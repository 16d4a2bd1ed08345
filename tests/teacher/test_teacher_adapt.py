"""Teacher adaptation on labeled cases: prompts from labels, loss, improvement, saving and reuse."""
import numpy as np
import pytest
import torch

from semisam.teacher.adapt import (
    adapt_or_load,
    adapt_teacher,
    bce_dice_loss,
    component_boxes,
    dihedral,
    jitter_boxes,
    load_adapted,
    save_adapted,
)
from semisam.teacher.cache import EmbeddingCache
from semisam.teacher.models import build_teacher_model
from semisam.teacher.predictor import SamTeacher
from semisam.utils.errors import SemisamError

from teacher_helpers import dice, synthetic_case

FAST = dict(steps=30, lr=3e-3, batch_size=8, progress=False)


def test_component_boxes_one_per_component_and_class():
    label = np.zeros((10, 12), int)
    label[1:3, 2:5] = 1
    label[6:9, 8:10] = 1
    label[5, 0] = 2
    out = component_boxes(label, [1, 2])
    assert [c for c, _, _ in out] == [1, 1, 2]
    np.testing.assert_array_equal(out[0][1], [2, 1, 4, 2])
    np.testing.assert_array_equal(out[1][1], [8, 6, 9, 8])
    assert out[2][2].sum() == 1 and out[2][2][5, 0]


def test_dihedral_gives_eight_distinct_views():
    a = np.arange(12).reshape(3, 4)
    views = {dihedral(a, k).tobytes() + str(dihedral(a, k).shape).encode() for k in range(8)}
    assert len(views) == 8
    np.testing.assert_array_equal(dihedral(a, 0), a)


def test_jitter_stays_inside_and_ordered():
    rng = np.random.default_rng(0)
    boxes = np.array([[0, 0, 1, 1], [60, 60, 63, 63]], np.float32)
    for _ in range(50):
        b = jitter_boxes(boxes, 3, (64, 64), rng)
        assert b.min() >= 0 and b.max() <= 63 and np.all(b[:, 2] >= b[:, 0]) and np.all(b[:, 3] >= b[:, 1])
        assert np.abs(b - boxes).max() <= 3


def test_bce_dice_loss_prefers_the_right_mask_and_respects_ignore():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    good, bad = (target * 20 - 10), (10 - target * 20)
    assert bce_dice_loss(good, target) < 0.05 < 1.5 < bce_dice_loss(bad, target)
    weights = torch.zeros_like(target)
    weights[0, 0, 0] = 1  # only one background pixel counts, where "bad" is wrong too
    assert bce_dice_loss(good, target, weights) < 0.05


def _mean_dice(teacher, cases):
    scores = []
    for image, label in cases:
        boxes = np.stack([b for _, b, _ in component_boxes(label, [1])])
        scores.append(dice(teacher.predict(image, boxes).masks.any(0), label == 1))
    return float(np.mean(scores))


def test_adaptation_lowers_the_loss_and_beats_zero_shot_on_held_out_cases(tmp_path):
    model = build_teacher_model("tiny_random")
    cache = EmbeddingCache(tmp_path / "emb")
    teacher = SamTeacher(model, cache)
    train = [synthetic_case(s) for s in range(4)]
    held_out = [synthetic_case(100 + s) for s in range(4)]
    zero_shot = _mean_dice(teacher, held_out)
    stats = adapt_teacher(model, cache, train, [1], **FAST)
    assert stats["n_views"] == 32
    assert stats["n_prompts"] == 8 * sum(len(component_boxes(label, [1])) for _, label in train)
    assert stats["loss_last"] < 0.8 * stats["loss_first"]
    adapted = _mean_dice(teacher, held_out)
    assert adapted > zero_shot + 0.2, (zero_shot, adapted)
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    # the identity view of a training case was cached during adaptation: the teacher reuses it
    misses = cache.misses
    teacher.predict(train[0][0], np.array([[0, 0, 10, 10.0]]))
    assert cache.misses == misses

    # saved weights reproduce the adapted teacher on a fresh base model
    path = save_adapted(model, tmp_path / "adapted.pt")
    fresh = load_adapted(build_teacher_model("tiny_random"), path)
    np.testing.assert_allclose(SamTeacher(fresh, cache).predict(*_prompt(held_out[0])).logits,
                               teacher.predict(*_prompt(held_out[0])).logits, atol=1e-5)


def _prompt(case):
    image, label = case
    return image, np.stack([b for _, b, _ in component_boxes(label, [1])])


def test_adapted_weights_refuse_another_base_model(tmp_path):
    model = build_teacher_model("tiny_random")
    path = save_adapted(model, tmp_path / "a.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["image_encoder.patch_embed.proj.bias"] += 1
    torch.save(state, tmp_path / "other.pth")
    other = build_teacher_model("tiny_random", checkpoint=tmp_path / "other.pth")
    with pytest.raises(SemisamError, match="adapted from teacher"):
        load_adapted(other, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SemisamError, match="cannot read adapted teacher weights"):
        load_adapted(model, path)


def test_adapt_or_load_reuses_a_matching_adaptation(tmp_path):
    cases = [synthetic_case(7)]
    settings = dict(steps=2, augment=False, progress=False)
    model = build_teacher_model("tiny_random")
    first = adapt_or_load(model, EmbeddingCache(None), cases, [1], tmp_path / "ad.pt", **settings)
    assert first["reused"] is False and first["steps"] == 2
    again = build_teacher_model("tiny_random")
    second = adapt_or_load(again, EmbeddingCache(None), cases, [1], tmp_path / "ad.pt", **settings)
    assert second["reused"] is True
    for a, b in zip(model.mask_decoder.parameters(), again.mask_decoder.parameters()):
        assert torch.equal(a, b)
    third = adapt_or_load(build_teacher_model("tiny_random"), EmbeddingCache(None), cases, [1], tmp_path / "ad.pt",
                          **{**settings, "steps": 3})
    assert third["reused"] is False


def test_runs_sharing_a_store_share_a_matching_adaptation(tmp_path):
    cases = [synthetic_case(7)]
    settings = dict(steps=2, augment=False, progress=False, seed=3)
    store = tmp_path / "shared"
    model = build_teacher_model("tiny_random")
    first = adapt_or_load(model, EmbeddingCache(None), cases, [1], tmp_path / "run_a" / "ad.pt", shared_dir=store,
                          **settings)
    assert first["reused"] is False and len(list(store.glob("*.pt"))) == 1
    other = build_teacher_model("tiny_random")
    second = adapt_or_load(other, EmbeddingCache(None), cases, [1], tmp_path / "run_b" / "ad.pt", shared_dir=store,
                           **settings)
    assert second["reused"] is True and second["shared"].startswith(str(store))
    assert (tmp_path / "run_b" / "ad.pt").is_file()  # the run keeps its own copy
    for a, b in zip(model.mask_decoder.parameters(), other.mask_decoder.parameters()):
        assert torch.equal(a, b)
    # another seed is another adaptation: adapted again, stored beside the first
    third = adapt_or_load(build_teacher_model("tiny_random"), EmbeddingCache(None), cases, [1],
                          tmp_path / "run_c" / "ad.pt", shared_dir=store, **{**settings, "seed": 4})
    assert third["reused"] is False and len(list(store.glob("*.pt"))) == 2


def test_no_foreground_is_a_clear_error():
    image, _ = synthetic_case(0)
    with pytest.raises(SemisamError, match="no foreground of classes"):
        adapt_teacher(build_teacher_model("tiny_random"), EmbeddingCache(None), [(image, np.zeros((64, 64), int))],
                      [1], steps=1, progress=False)
    with pytest.raises(SemisamError, match="same 2D"):
        adapt_teacher(build_teacher_model("tiny_random"), EmbeddingCache(None), [(image, np.zeros((32, 64), int))],
                      [1], steps=1, progress=False)


@pytest.mark.slow
def test_litemedsam_adaptation_improves_on_held_out_cases():
    """Real LiteMedSAM, a few steps on 4 synthetic cases (~1-2 min on 2 busy cores)."""
    model = build_teacher_model("litemedsam")
    cache = EmbeddingCache(None, max_memory_items=16)
    teacher = SamTeacher(model, cache)
    train = [synthetic_case(s) for s in range(4)]
    held_out = [synthetic_case(100 + s) for s in range(4)]
    zero_shot = _mean_dice(teacher, held_out)
    stats = adapt_teacher(model, cache, train, [1], steps=12, batch_size=4, augment=False, progress=False)
    assert stats["loss_last"] < stats["loss_first"]
    assert _mean_dice(teacher, held_out) > zero_shot + 0.01

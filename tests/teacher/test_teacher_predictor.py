"""The batched predictor: shapes, batching equivalence, prompt kinds, bad input, real LiteMedSAM."""
import numpy as np
import pytest

from semisam.teacher.cache import EmbeddingCache
from semisam.teacher.predictor import SamTeacher
from semisam.utils.errors import SemisamError

from teacher_helpers import bright_disk, dice, synthetic_case

BOXES = np.array([[5, 5, 30, 30], [10, 20, 60, 50], [0, 0, 63, 63], [30, 30, 40, 45], [2, 40, 20, 62]], float)


def test_outputs_have_the_documented_shapes(tiny_model):
    image, _ = synthetic_case(0, size=48)
    image = np.pad(image, ((0, 0), (0, 16)))  # 48 x 64, not square
    pred = SamTeacher(tiny_model).predict(image, BOXES)
    assert pred.masks.shape == (5, 48, 64) and pred.masks.dtype == bool
    assert pred.logits.shape == (5, 48, 64) and pred.logits.dtype == np.float32
    assert pred.iou_pred.shape == (5,) and pred.stability.shape == (5,)
    assert pred.lowres_logits.shape == (5, 1, 64, 64)
    assert np.array_equal(pred.masks, pred.logits > 0)
    assert np.all((pred.stability >= 0) & (pred.stability <= 1))


def test_batched_decoding_equals_one_by_one(tiny_model):
    image, _ = synthetic_case(1)
    teacher = SamTeacher(tiny_model, decode_batch=2)
    batched = teacher.predict(image, BOXES)
    singles = [teacher.predict(image, BOXES[i : i + 1]) for i in range(len(BOXES))]
    np.testing.assert_allclose(batched.logits, np.concatenate([s.logits for s in singles]), atol=1e-4)
    np.testing.assert_allclose(batched.iou_pred, np.concatenate([s.iou_pred for s in singles]), atol=1e-5)
    big = SamTeacher(tiny_model, teacher.cache, decode_batch=64).predict(image, BOXES)
    np.testing.assert_allclose(batched.logits, big.logits, atol=1e-4)
    assert teacher.cache.misses == 1  # one encoder run for all of it


def test_points_masks_and_multimask(tiny_model):
    image, _ = synthetic_case(2)
    teacher = SamTeacher(tiny_model)
    points = np.array([[[20, 20], [40, 40]], [[10, 50], [0, 0]]], float)
    labels = np.array([[1, 0], [1, -1]])
    p = teacher.predict(image, points_xy=points, point_labels=labels)
    assert p.masks.shape == (2, 64, 64)
    both = teacher.predict(image, BOXES[:2], points, labels, mask_inputs=p.lowres_logits)
    assert both.masks.shape == (2, 64, 64)
    assert not np.allclose(both.logits, p.logits)
    multi = teacher.predict(image, BOXES, multimask=True)
    assert multi.masks.shape == (5, 64, 64)
    empty = teacher.predict(image, np.zeros((0, 4)))
    assert empty.masks.shape == (0, 64, 64) and empty.lowres_logits.shape == (0, 1, 64, 64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "at least one prompt"),
        (dict(boxes_xyxy=np.zeros((2, 3))), r"shape \(N, 4\)"),
        (dict(boxes_xyxy=np.array([[10, 10, 5, 20.0]])), "x1 >= x0"),
        (dict(boxes_xyxy=np.array([[0, 0, np.nan, 5.0]])), "NaN/Inf"),
        (dict(points_xy=np.zeros((2, 1, 2))), "needs point_labels"),
        (dict(points_xy=np.zeros((2, 1, 2)), point_labels=np.full((2, 1), 2)), "must be 1"),
        (dict(boxes_xyxy=np.zeros((2, 4)), points_xy=np.zeros((3, 1, 2)), point_labels=np.ones((3, 1))), "disagree"),
        (dict(mask_inputs=np.zeros((1, 1, 256, 256))), r"\(N, 1, 64, 64\)"),
    ],
)
def test_bad_prompts(tiny_model, kwargs, match):
    with pytest.raises(SemisamError, match=match):
        SamTeacher(tiny_model).predict(synthetic_case(0)[0], **kwargs)


def test_bad_images(tiny_model):
    teacher = SamTeacher(tiny_model)
    image = synthetic_case(0)[0]
    image[3, 4] = np.inf
    with pytest.raises(SemisamError, match="NaN/Inf"):
        teacher.predict(image, BOXES)
    with pytest.raises(SemisamError, match="2D"):
        teacher.embed(np.zeros((2, 8, 8)))
    premapped = SamTeacher(tiny_model, intensity=None)
    with pytest.raises(SemisamError, match=r"\[0, 1\] was expected"):
        premapped.embed(np.full((8, 8), 5.0))
    assert premapped.embed(np.full((8, 8), 0.5, np.float32)).shape == (1, 32, 16, 16)


def test_real_litemedsam_segments_a_bright_disk(litemedsam_model, tmp_path):
    image, truth, box = bright_disk()
    cache = EmbeddingCache(tmp_path)
    teacher = SamTeacher(litemedsam_model, cache)
    pred = teacher.predict(image, box[None])
    assert pred.masks.shape == (1, 180, 240)
    assert dice(pred.masks[0], truth) > 0.8
    assert pred.iou_pred[0] > 0.5
    teacher.predict(image, np.stack([box, box + 2]))
    assert cache.stats()["misses"] == 1 and cache.stats()["hits_memory"] == 1

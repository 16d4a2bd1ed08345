"""Prompts from objects: boxes with margin and jitter, positive/negative points, low-res mask prompts."""
import numpy as np
import pytest
from scipy import ndimage

from semisam.prompts import (
    NEGATIVE,
    PADDING,
    POSITIVE,
    box_from_mask,
    deep_points,
    extract_objects,
    lowres_mask_logits,
    make_prompts,
)
from semisam.utils.errors import SemisamError


def probs_of(mask, p=0.9):
    fg = np.where(mask, p, 1 - p).astype(np.float32)
    return np.stack([1 - fg, fg])


def two_squares(shape=(30, 40)):
    m = np.zeros(shape, bool)
    m[1:6, 2:9] = True  # near the top-left corner
    m[14:25, 20:31] = True  # 11x11 square, centre (19, 25)
    return m


def test_boxes_with_margin_are_clipped_to_the_image():
    objs = extract_objects(probs_of(two_squares()), min_size=10)
    batch = make_prompts(objs, (30, 40), box=True, box_margin=3)
    assert len(batch) == 2 and batch.class_ids.tolist() == [1, 1]
    np.testing.assert_array_equal(batch.boxes_xyxy, [[0, 0, 11, 8], [17, 11, 33, 27]])
    assert batch.boxes_xyxy.dtype == np.float32
    assert batch.points_xy is None and batch.point_labels is None and batch.mask_inputs is None
    assert batch.object_masks.shape == (2, 30, 40)
    full = np.ones((10, 12), bool)
    np.testing.assert_array_equal(box_from_mask(full, margin=5), [0, 0, 11, 9])


def test_box_jitter_is_bounded_seeded_and_ordered():
    m = np.zeros((50, 50), bool)
    m[20:30, 15:35] = True
    tight = box_from_mask(m)
    boxes = np.stack([box_from_mask(m, margin=2, jitter=3, rng=s) for s in range(30)])
    assert np.abs(boxes - (tight + [-2, -2, 2, 2])).max() <= 3
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert len({tuple(b) for b in boxes}) > 1
    np.testing.assert_array_equal(box_from_mask(m, jitter=3, rng=7), box_from_mask(m, jitter=3, rng=7))


def test_positive_points_inside_and_farthest_from_the_border():
    m = two_squares()
    objs = extract_objects(probs_of(m), min_size=10)
    batch = make_prompts(objs, m.shape, box=False, positive_points=3)
    assert batch.points_xy.shape == (2, 3, 2)
    assert (batch.point_labels == POSITIVE).all()
    x, y = batch.points_xy[1, 0]
    assert (x, y) == (25, 19)  # the centre of the 11x11 square, the one pixel at depth 6
    for i, o in enumerate(objs):
        for x, y in batch.points_xy[i].astype(int):
            assert o.mask[y, x]
    depth = ndimage.distance_transform_edt(np.pad(objs[1].mask, 1))[1:-1, 1:-1]
    assert depth[19, 25] == depth.max()
    # later points are spread: not all the same pixel
    assert len({tuple(p) for p in batch.points_xy[1]}) == 3


def test_negative_points_outside_all_objects_in_a_ring():
    m = np.zeros((30, 40), bool)
    m[8:20, 5:17] = True
    m[8:20, 19:31] = True  # a second object 2 px to the right: no negatives in it
    objs = extract_objects(probs_of(m), min_size=10)
    batch = make_prompts(objs, m.shape, box=True, box_margin=3, positive_points=1, negative_points=6)
    assert batch.points_xy.shape == (2, 7, 2)
    union = batch.object_masks.any(0)
    for i, o in enumerate(objs):
        labels = batch.point_labels[i]
        assert labels[0] == POSITIVE and (labels[1:] == NEGATIVE).all()
        dist = ndimage.distance_transform_edt(~o.mask)
        x0, y0, x1, y1 = batch.boxes_xyxy[i]
        for x, y in batch.points_xy[i, 1:].astype(int):
            assert not union[y, x]
            assert 0 < dist[y, x] <= 3
            assert x0 <= x <= x1 and y0 <= y <= y1  # within the box margin
        assert len({tuple(p) for p in batch.points_xy[i, 1:]}) == 6


def test_points_are_padded_when_there_is_no_room():
    m = np.ones((6, 6), bool)  # the whole image: no ring outside, 36 pixels inside
    objs = extract_objects(probs_of(m), min_size=1)
    batch = make_prompts(objs, m.shape, box=False, positive_points=2, negative_points=2)
    assert batch.point_labels.tolist() == [[POSITIVE, POSITIVE, PADDING, PADDING]]


def test_mask_prompt_in_the_lowres_frame_and_isolated_to_its_object():
    m = np.zeros((32, 64), bool)
    m[8:24, 4:20] = True
    m[8:24, 40:56] = True
    probs = probs_of(m)
    objs = extract_objects(probs, min_size=10)
    batch = make_prompts(objs, m.shape, mask_prompt=True, student_probs_slice=probs)
    assert batch.mask_inputs.shape == (2, 1, 256, 256) and batch.mask_inputs.dtype == np.float32
    first = batch.mask_inputs[0, 0]
    # 32x64 -> 128x256 (longest side 256), padding at the bottom is logit(eps)
    assert first[200:].max() == pytest.approx(np.log(1e-4 / (1 - 1e-4)), rel=1e-3)
    # scale 4: object 0 spans rows 32..96, cols 16..80 -> positive logits there, object 1 suppressed
    assert first[64, 48] == pytest.approx(np.log(0.9 / 0.1), rel=1e-3)
    assert first[64, 190] < -5
    assert batch.mask_inputs[1, 0, 64, 190] > 0
    np.testing.assert_allclose(lowres_mask_logits(np.full((10, 10), 0.5)), 0.0, atol=1e-5)


def test_make_prompts_errors_and_empty():
    m = np.zeros((10, 10), bool)
    m[2:6, 2:6] = True
    objs = extract_objects(probs_of(m), min_size=1)
    with pytest.raises(SemisamError, match="no prompt selected"):
        make_prompts(objs, m.shape, box=False)
    with pytest.raises(SemisamError, match="mask_prompt needs"):
        make_prompts(objs, m.shape, mask_prompt=True)
    with pytest.raises(SemisamError, match="does not match"):
        make_prompts(objs, (12, 10))
    empty = make_prompts([], (10, 10), positive_points=1)
    assert len(empty) == 0 and empty.boxes_xyxy.shape == (0, 4) and empty.points_xy.shape == (0, 1, 2)
    assert deep_points(np.zeros((4, 4), bool), 3).shape == (0, 2)

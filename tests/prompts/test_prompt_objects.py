"""Objects from the student's probabilities: validation, overlap rule, components, splitting, slicing."""
import numpy as np
import pytest

from semisam.prompts import (
    extract_objects,
    has_foreground,
    iter_slices,
    stack_slices,
    student_hard_labels,
    validate_probs,
)
from semisam.utils.errors import SemisamError


def disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def binary_probs(mask, p=0.9):
    """(2, Y, X) probabilities: p on the mask, 1 - p elsewhere."""
    fg = np.where(mask, p, 1 - p).astype(np.float32)
    return np.stack([1 - fg, fg])


# --- validation --------------------------------------------------------------------------------------


def test_validate_accepts_good_probs_and_image_shapes():
    probs = binary_probs(np.zeros((4, 5), bool))[:, None]  # (2, 1, 4, 5)
    out = validate_probs(probs, (1, 4, 5))
    assert out.dtype == np.float32 and out.shape == (2, 1, 4, 5)
    validate_probs(probs, (1, 1, 4, 5))  # image with a channel axis: trailing dims compared


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.__setitem__((1, 0, 0, 0), np.nan), "NaN/Inf"),
        (lambda p: p.__setitem__((0, 0, 1, 1), np.inf), "NaN/Inf"),
        (lambda p: p.__setitem__((1, 0, 2, 2), 0.5), "do not sum to one"),
    ],
)
def test_validate_rejects_bad_values(mutate, message):
    probs = binary_probs(np.zeros((4, 5), bool))[:, None].copy()
    mutate(probs)
    with pytest.raises(SemisamError, match=message):
        validate_probs(probs, (1, 4, 5))


def test_validate_rejects_shape_mismatch_logits_and_one_class():
    probs = binary_probs(np.zeros((4, 5), bool))[:, None]
    with pytest.raises(SemisamError, match="spatial shape"):
        validate_probs(probs, (1, 5, 4))
    with pytest.raises(SemisamError, match="not \\[0, 1\\]"):
        validate_probs(probs * 4 - 2, None)
    with pytest.raises(SemisamError, match=">= 2 classes"):
        validate_probs(np.ones((1, 1, 4, 5)), None)
    with pytest.raises(SemisamError, match="\\(K, Z, Y, X\\)"):
        validate_probs(np.ones((4, 5)), None)


# --- overlap rule --------------------------------------------------------------------------------------


def test_multiclass_overlap_rule_argmax_with_threshold_and_ties():
    # pixels: clear class 2; class 1 wins but below threshold; tie bg/class1; tie class1/class2
    probs = np.array(
        [
            [0.1, 0.3, 0.5, 0.0],
            [0.2, 0.4, 0.5, 0.5],
            [0.7, 0.3, 0.0, 0.5],
        ],
        dtype=np.float32,
    )[:, None, :]  # (3, 1, 4)
    labels = student_hard_labels(probs, threshold=0.5)
    assert labels.tolist() == [[2, 0, 0, 1]]
    assert student_hard_labels(probs, threshold=0.0).tolist() == [[2, 1, 0, 1]]
    with pytest.raises(SemisamError, match="did you mean 'argmax'"):
        student_hard_labels(probs, overlap="argmx")


def test_multiclass_objects_never_overlap():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 32, 32)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(0)
    objs = extract_objects(probs.astype(np.float32), threshold=0.3, min_size=1)
    cover = np.sum([o.mask for o in objs], axis=0)
    assert cover.max() == 1
    assert {o.class_id for o in objs} == {1, 2}


# --- components -----------------------------------------------------------------------------------------


def test_components_min_size_and_fields():
    mask = np.zeros((20, 30), bool)
    mask[2:6, 3:9] = True  # 24 px
    mask[12:14, 20:23] = True  # 6 px
    mask[15, 5] = True  # 1 px
    objs = extract_objects(binary_probs(mask), threshold=0.5, min_size=10)
    assert len(objs) == 1
    o = objs[0]
    assert (o.class_id, o.area, o.bbox_xyxy) == (1, 24, (3, 2, 8, 5))
    assert o.prob_mean == pytest.approx(0.9)
    assert len(extract_objects(binary_probs(mask), min_size=1)) == 3
    assert extract_objects(binary_probs(np.zeros((8, 8), bool))) == []
    assert not has_foreground(binary_probs(np.zeros((8, 8), bool)))
    assert has_foreground(binary_probs(mask))


def test_diagonal_pixels_are_one_object():
    mask = np.eye(12, dtype=bool)
    assert len(extract_objects(binary_probs(mask), min_size=1)) == 1


def test_watershed_splits_two_touching_disks():
    shape = (40, 60)
    a, b = disk(shape, (20, 20), 8), disk(shape, (20, 34), 8)  # overlap: one merged component
    probs = binary_probs(a | b)
    merged = extract_objects(probs, min_size=10)
    assert len(merged) == 1
    split = extract_objects(probs, min_size=10, split_instances=True, split_min_distance=3)
    assert len(split) == 2
    left, right = sorted(split, key=lambda o: o.bbox_xyxy[0])
    assert left.bbox_xyxy[0] == 12 and right.bbox_xyxy[2] == 42  # the outer edges of the two disks
    assert left.bbox_xyxy[2] < 34 and right.bbox_xyxy[0] > 20  # each box stops near the neck
    assert not (left.mask & right.mask).any()
    assert ((left.mask | right.mask) == (a | b)).all()
    # the centre of each disk lies in its own object
    assert left.mask[20, 20] and right.mask[20, 34]


def test_watershed_keeps_elongated_object_and_respects_min_distance():
    bar = np.zeros((30, 60), bool)
    bar[10:17, 4:56] = True  # flat distance ridge: one object
    assert len(extract_objects(binary_probs(bar), split_instances=True)) == 1
    shape = (40, 60)
    two = disk(shape, (20, 20), 8) | disk(shape, (20, 34), 8)  # centres 14 px apart
    assert len(extract_objects(binary_probs(two), split_instances=True, split_min_distance=20)) == 1


def test_a_component_cut_into_too_many_pieces_stays_whole():
    """A chain of ten touching disks (what the watershed makes of a tissue ribbon) is ten instances without a
    limit, one object when the limit is below ten; a pair of touching disks still splits under the limit."""
    shape = (30, 110)
    chain = np.zeros(shape, bool)
    for i in range(10):
        chain |= disk(shape, (15, 10 + 9 * i), 5)
    probs = binary_probs(chain)
    assert len(extract_objects(probs, split_instances=True)) == 10
    assert len(extract_objects(probs, split_instances=True, split_max_pieces=10)) == 10
    whole = extract_objects(probs, split_instances=True, split_max_pieces=8)
    assert len(whole) == 1 and (whole[0].mask == chain).all()
    pair = disk((40, 60), (20, 20), 8) | disk((40, 60), (20, 34), 8)
    assert len(extract_objects(binary_probs(pair), split_instances=True, split_max_pieces=8)) == 2


# --- slicing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_round_trip_along_each_axis(axis):
    vol = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    probs = np.stack([vol, -vol])  # (2, 3, 4, 5)
    slices = list(iter_slices(vol, axis))
    assert len(slices) == vol.shape[axis]
    expected = {0: (4, 5), 1: (3, 5), 2: (3, 4)}[axis]
    assert slices[0][1].shape == expected
    assert [i for i, _ in slices] == list(range(vol.shape[axis]))
    np.testing.assert_array_equal(stack_slices([s for _, s in slices], axis), vol)
    pslices = [s for _, s in iter_slices(probs, axis)]
    assert pslices[0].shape == (2, *expected)
    np.testing.assert_array_equal(stack_slices(pslices, axis), probs)
    # a known voxel lands in the right slice
    z, y, x = 2, 1, 3
    i, rc = {0: (z, (y, x)), 1: (y, (z, x)), 2: (x, (z, y))}[axis]
    assert slices[i][1][rc] == vol[z, y, x]


def test_slice_axis_errors():
    with pytest.raises(SemisamError, match="slice axis"):
        list(iter_slices(np.zeros((2, 2, 2)), 3))
    with pytest.raises(SemisamError, match="at least one slice"):
        stack_slices([], 0)

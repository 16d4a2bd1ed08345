"""Prompts that let the teacher correct the student: candidates below the threshold, padded boxes that hold
a too-tight object's true extent, and the second pass's points."""
import numpy as np
import pytest

from semisam.prompts import (
    NEGATIVE,
    PADDING,
    POSITIVE,
    box_from_mask,
    extract_candidates,
    extract_objects,
    make_prompts,
    second_pass_prompts,
)
from semisam.utils.errors import SemisamError


def probs_of(fg):
    fg = np.asarray(fg, np.float32)
    return np.stack([1 - fg, fg])


def test_candidates_are_components_between_the_thresholds_without_a_student_object():
    p = np.zeros((20, 30), np.float32)
    p[2:8, 2:8] = 0.9          # a student object ...
    p[1:9, 1:9][p[1:9, 1:9] == 0] = 0.3  # ... with a halo between the thresholds: not a candidate
    p[12:18, 20:26] = 0.35     # a nucleus the student nearly missed: a candidate
    p[15:17, 2:4] = 0.3        # too small (4 px)
    probs = probs_of(p)
    objects = extract_objects(probs, threshold=0.5, min_size=5)
    cands = extract_candidates(probs, low_threshold=0.25, threshold=0.5, min_size=5)
    assert len(objects) == 1 and not objects[0].candidate
    assert len(cands) == 1 and cands[0].candidate
    assert cands[0].area == 36 and cands[0].bbox_xyxy == (20, 12, 25, 17)
    assert not (cands[0].mask & objects[0].mask).any()
    with pytest.raises(SemisamError, match="below the student's threshold"):
        extract_candidates(probs, low_threshold=0.5, threshold=0.5)


def test_a_padded_box_recovers_the_true_extent_of_a_too_tight_object():
    truth = np.zeros((40, 40), bool)
    truth[10:30, 12:28] = True
    tight = np.zeros_like(truth)
    tight[13:27, 15:25] = True  # the student's outline, 3 px too tight on every side

    def box_region(margin):
        x0, y0, x1, y1 = (int(v) for v in box_from_mask(tight, margin=margin))
        region = np.zeros_like(truth)
        region[y0:y1 + 1, x0:x1 + 1] = True
        return region

    assert (truth & ~box_region(2)).any()  # the usual 2 px margin still cuts the true object
    assert (truth <= box_region(4)).all()  # a 4 px margin holds all of it: SAM can draw the true outline


def test_second_pass_points_sit_inside_the_first_mask_and_on_the_neighbours():
    a = np.zeros((30, 40), bool)
    a[5:20, 5:20] = True
    b = np.zeros_like(a)
    b[8:16, 21:30] = True  # a neighbour reaching into a's padded box
    objects = extract_objects(probs_of(0.9 * (a | b)), threshold=0.5, min_size=4)
    batch = make_prompts(objects, a.shape, box_margin=3)
    first = np.stack([o.mask for o in objects])
    second = second_pass_prompts(batch, first, positive_points=1, negative_points=1)
    assert second.points_xy.shape == (2, 2, 2)
    for i, o in enumerate(objects):
        (px, py), (nx, ny) = second.points_xy[i]
        assert second.point_labels[i].tolist() == [POSITIVE, NEGATIVE]
        assert o.mask[int(py), int(px)]
        other = objects[1 - i].mask
        assert other[int(ny), int(nx)]  # the negative point lies on the neighbour
    np.testing.assert_array_equal(second.boxes_xyxy, batch.boxes_xyxy)
    # an isolated object has no neighbour: its negative slot is padding
    alone = extract_objects(probs_of(0.9 * a), threshold=0.5, min_size=4)
    lone = second_pass_prompts(make_prompts(alone, a.shape), np.stack([alone[0].mask]), negative_points=1)
    assert lone.point_labels[0].tolist() == [POSITIVE, PADDING]
    with pytest.raises(SemisamError, match="positive_points or negative_points"):
        second_pass_prompts(batch, first, positive_points=0, negative_points=0)

"""The corrector pipeline with a real (tiny, random) SAM: margins in the teacher's frame, everything mode
with Hungarian matching, and union fusion, candidates and the box ensemble end to end."""
from __future__ import annotations

import numpy as np
import pytest

from semisam.teacher.everything import everything_for_objects, match_segments, mask_iou_matrix
from semisam.pseudolabel.pipeline import FilterSettings, PromptSettings, PseudoLabeler


def teacher_of(model):
    from semisam.teacher.cache import EmbeddingCache
    from semisam.teacher.predictor import SamTeacher

    return SamTeacher(model, EmbeddingCache(None), decode_batch=16)


def test_margin_in_the_teachers_frame_scales_with_the_image(tiny_model):
    size = tiny_model.spec.input_size

    def margins(space, shape):
        lab = PseudoLabeler(teacher_of(tiny_model), filters=FilterSettings(), ignore_label=2,
                            prompts=PromptSettings(box_margin=4, box_margin_space=space))
        return lab._margins(shape)

    assert margins("image", (size * 2, size)) == (4, 3)
    assert margins("teacher", (size * 2, size)) == (8, 6)  # twice the teacher's input: twice the pixels
    assert margins("teacher", (size // 2, size // 4))[0] == 2


def square(shape, y, x, h, w):
    m = np.zeros(shape, bool)
    m[y:y + h, x:x + w] = True
    return m


def test_hungarian_matching_is_one_to_one_and_maximises_total_iou():
    shape = (20, 20)
    a, b = square(shape, 0, 0, 6, 6), square(shape, 10, 10, 6, 6)
    objects = np.stack([a, b])
    # segment 0 overlaps both objects a little, segment 1 is a exactly, segment 2 is b shifted by 1 px
    segments = np.stack([square(shape, 3, 3, 10, 10), a, square(shape, 11, 10, 6, 6)])
    iou = mask_iou_matrix(objects, segments)
    assert iou[0, 1] == 1.0 and iou.shape == (2, 3)
    np.testing.assert_array_equal(match_segments(objects, segments, 0.3), [1, 2])
    # two objects, one segment: only the better object gets it
    np.testing.assert_array_equal(match_segments(objects, segments[1:2], 0.3), [0, -1])
    # a pair below match_iou is no match
    np.testing.assert_array_equal(match_segments(objects, segments[:1], 0.3), [-1, -1])
    assert match_segments(objects[:0], segments, 0.3).shape == (0,)


def test_everything_mode_gives_one_answer_per_object(tiny_model):
    image = np.random.default_rng(0).random((48, 64)).astype(np.float32)
    objects = np.stack([square((48, 64), 5, 5, 10, 10), square((48, 64), 30, 40, 8, 12)])
    pred = everything_for_objects(teacher_of(tiny_model), image, objects, points_per_side=4, min_iou=0.0,
                                  min_stability=0.0, match_iou=0.0)
    assert pred.masks.shape == objects.shape and pred.iou_pred.shape == (2,)
    # an impossible match threshold: every object unmatched, empty masks, zero scores (the filters reject them)
    none = everything_for_objects(teacher_of(tiny_model), image, objects, points_per_side=4, min_iou=0.0,
                                  min_stability=0.0, match_iou=1.01)
    assert not none.masks.any() and (none.iou_pred == 0).all() and (none.logits < 0).all()


def disk_case():
    y, x = np.mgrid[:40, :48]
    disk = (y - 15) ** 2 + (x - 15) ** 2 < 36
    faint = (y - 28) ** 2 + (x - 34) ** 2 < 16  # an object the student nearly missed
    image = (60.0 * (disk | faint) + np.random.default_rng(1).normal(0, 3, disk.shape)).astype(np.float32)
    p = np.where(disk, 0.9, np.where(faint, 0.35, 0.02)).astype(np.float32)
    return image[None, None], np.stack([1 - p, p])[:, None], disk, faint


@pytest.mark.parametrize("fusion", ["union", "choose"])
def test_corrector_pipeline_runs_with_candidates_ensemble_and_gray_zone(tiny_model, fusion):
    image, probs, disk, faint = disk_case()
    prompts = PromptSettings(min_size=4, candidate_threshold=0.25, box_margin=4, box_margin_space="teacher")
    filters = FilterSettings(fusion=fusion, perturbations=2, ensemble_mask=True, gray_zone=0.25,
                             case_min_accept=0.0, uncertainty_thresh=1.0)
    lab = PseudoLabeler(teacher_of(tiny_model), prompts=prompts, filters=filters, ignore_label=2)
    from semisam.teacher.preprocess import TeacherView

    lab.view = TeacherView()
    out = lab(image, probs, "disk")
    assert out.stats["n_objects"] == 2  # the student's disk and the candidate
    assert out.pseudo.shape == disk[None].shape
    # the faint object is never taught as background: SAM's mask there, or ignore (gray zone / rejected)
    assert not (out.pseudo[0][faint] == 0).any()
    if fusion == "union":  # union keeps every student pixel foreground or ignore
        assert not (out.pseudo[0][disk] == 0).any()


def test_second_pass_and_everything_run_in_the_pipeline(tiny_model):
    from semisam.teacher.preprocess import TeacherView

    image, probs, disk, _ = disk_case()
    for prompts in (PromptSettings(min_size=4, second_pass=True, second_pass_mask=True),
                    PromptSettings(min_size=4, source="everything", everything_points_per_side=4,
                                   everything_min_iou=0.0, everything_min_stability=0.0)):
        lab = PseudoLabeler(teacher_of(tiny_model), view=TeacherView(), prompts=prompts,
                            filters=FilterSettings(fusion="union", case_min_accept=0.0), ignore_label=2)
        out = lab(image, probs, "disk")
        assert out.stats["n_objects"] == 1 and out.pseudo.shape == disk[None].shape

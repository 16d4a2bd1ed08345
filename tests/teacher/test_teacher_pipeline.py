"""The pseudo-label pipeline (prompts → tiny SAM → filters → fusion) on 2D and 3D cases, and its bad input."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from semisam.pseudolabel.pipeline import FilterSettings, PromptSettings, PseudoLabeler
from semisam.utils.errors import SemisamError


def ball_case(shape=(6, 32, 40)):
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    fg = ((y - 16) ** 2 + (x - 20) ** 2 < 60) & (z >= 1) & (z <= 4)
    image = (fg * 100.0 + np.random.default_rng(0).normal(0, 5, shape)).astype(np.float32)[None]
    p = np.where(fg, 0.9, 0.05).astype(np.float32)
    return image, np.stack([1 - p, p]), fg


def labeler(tiny_model, **filters):
    from semisam.teacher.cache import EmbeddingCache
    from semisam.teacher.predictor import SamTeacher
    from semisam.teacher.preprocess import TeacherView

    teacher = SamTeacher(tiny_model, EmbeddingCache(None), decode_batch=4)
    return PseudoLabeler(teacher, view=TeacherView(), prompts=PromptSettings(min_size=4, slice_axis=filters.pop("axis", 0)),
                         filters=FilterSettings(**{"case_min_accept": 0.0, **filters}), ignore_label=2)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_volumes_are_processed_slice_wise_along_any_axis(tiny_model, axis):
    image, probs, fg = ball_case()
    out = labeler(tiny_model, axis=axis, fusion="student")(image, probs, "ball")
    assert out.pseudo.shape == out.student.shape == out.teacher.shape == fg.shape
    assert set(np.unique(out.pseudo)) <= {0, 1, 2}
    np.testing.assert_array_equal(out.student, fg.astype(np.int64))
    # 'student' fusion with every object accepted: the student's labels come back unchanged
    np.testing.assert_array_equal(out.pseudo, fg.astype(np.uint8))
    assert out.accepted and out.stats["n_objects"] > 0


def test_agree_never_adds_foreground_and_ignores_disagreement(tiny_model):
    image, probs, fg = ball_case()
    out = labeler(tiny_model, fusion="agree")(image, probs, "ball")
    assert not ((out.pseudo == 1) & ~fg).any()
    disagree = (out.student > 0) != (out.teacher > 0)
    assert (out.pseudo[disagree] == 2).all()


def test_boundary_band_applies_to_self_training_too():
    image, probs, fg = ball_case()
    plain = PseudoLabeler(None, prompts=PromptSettings(), filters=FilterSettings(fusion="student"),
                          ignore_label=2)
    banded = PseudoLabeler(None, prompts=PromptSettings(),
                           filters=FilterSettings(fusion="student", boundary_band=1), ignore_label=2)
    a, b = plain(image, probs), banded(image, probs)
    np.testing.assert_array_equal(a.pseudo, fg.astype(np.uint8))
    assert ((b.pseudo == 2) & fg).sum() == 0 and (b.pseudo == 2).sum() > 0
    np.testing.assert_array_equal(b.pseudo[b.pseudo != 2], a.pseudo[b.pseudo != 2])


def test_no_foreground_is_skipped_with_a_reason(tiny_model):
    image, probs, _ = ball_case()
    empty = np.stack([np.ones_like(probs[0]), np.zeros_like(probs[0])])
    out = labeler(tiny_model)(image, empty, "empty")
    assert not out.accepted and out.stats["skipped"] and out.stats["skip_reason"] == "no_foreground"


def test_bad_input(tiny_model):
    image, probs, _ = ball_case()
    lab = labeler(tiny_model)
    bad = probs.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(SemisamError, match="NaN"):
        lab(image, bad)
    with pytest.raises(SemisamError, match="shape"):
        lab(image[:, :, :16], probs)
    with pytest.raises(SemisamError, match="sum"):
        lab(image, probs * 0.5)
    with pytest.raises(SemisamError, match="needs a teacher"):
        PseudoLabeler(None, prompts=PromptSettings(), filters=FilterSettings(fusion="agree"), ignore_label=2)


def test_the_teacher_api_takes_no_label():
    """Honesty by construction: the pseudo-labeller sees an image and the student's probabilities only."""
    params = list(inspect.signature(PseudoLabeler.__call__).parameters)
    assert params == ["self", "image", "student_probs", "case_id"]
    from semisam.data import UnlabeledCase

    assert not any("label" in f for f in UnlabeledCase.__dataclass_fields__)

"""Fusion modes on a tiny hand-made example, class conflicts, errors, and a seeded property test."""
import numpy as np
import pytest

from semisam.fusion import FUSION_MODES, fuse
from semisam.utils.errors import SemisamError

I = 3  # ignore label (classes 0, 1, 2)


def example():
    student = np.array([[0, 1, 1, 1, 0, 0], [0, 0, 2, 2, 2, 0]])
    teacher = np.zeros((2, 2, 6), bool)
    teacher[0, 0, 2:5] = True  # class 1, accepted; disagrees with the student at (0,1) and (0,4)
    teacher[1, 1, 2:4] = True  # class 2, rejected
    student_obj = np.zeros((2, 2, 6), bool)
    student_obj[0, 0, 1:4] = True
    student_obj[1, 1, 2:5] = True
    return student, teacher, np.array([1, 2]), np.array([True, False]), student_obj


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("sam", [[0, 0, 1, 1, 1, 0], [0, 0, I, I, I, 0]]),
        ("student", [[0, 1, 1, 1, 0, 0], [0, 0, I, I, I, 0]]),
        ("agree", [[0, I, 1, 1, I, 0], [0, 0, I, I, I, 0]]),
    ],
)
def test_modes_on_a_hand_made_example(mode, expected):
    student, teacher, cls, acc, sobj = example()
    label, accept = fuse(student, teacher, cls, acc, mode=mode, ignore_label=I, student_object_masks=sobj)
    assert label.tolist() == expected
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(accept, label != I)


def test_without_student_object_masks_only_the_teacher_mask_of_a_rejected_object_is_ignored():
    student, teacher, cls, acc, _ = example()
    label, _ = fuse(student, teacher, cls, acc, mode="student", ignore_label=I)
    assert label[1].tolist() == [0, 0, I, I, 2, 0]


def test_class_conflicts_are_ignored():
    student = np.array([[1, 1, 2, 2]])
    teacher = np.zeros((2, 1, 4), bool)
    teacher[0, 0, :3] = True  # class 1
    teacher[1, 0, 2:] = True  # class 2, overlaps at column 2
    cls, acc = np.array([1, 2]), np.array([True, True])
    assert fuse(student, teacher, cls, acc, mode="sam", ignore_label=I)[0].tolist() == [[1, 1, I, 2]]
    assert fuse(student, teacher, cls, acc, mode="agree", ignore_label=I)[0].tolist() == [[1, 1, I, 2]]
    assert fuse(student, teacher, cls, acc, mode="student", ignore_label=I)[0].tolist() == [[1, 1, 2, 2]]


def test_weighted_mode():
    student = np.array([[0, 1, 1, 0]])
    p_fg = np.array([[0.1, 0.8, 0.6, 0.3]])
    student_probs = np.stack([1 - p_fg, p_fg])
    teacher_probs = np.array([[[0.1, 0.9, 0.2, 0.9]]])
    teacher = teacher_probs > 0.5
    args = (student, teacher, np.array([1]), np.array([True]))
    kw = dict(mode="weighted", ignore_label=I, student_probs=student_probs, teacher_probs=teacher_probs)
    # w = 0.5: fused foreground [0.1, 0.85, 0.4, 0.6]
    assert fuse(*args, fusion_weight=0.5, **kw)[0].tolist() == [[0, 1, 0, 1]]
    assert fuse(*args, fusion_weight=0.5, min_confidence=0.7, **kw)[0].tolist() == [[0, 1, I, I]]
    assert fuse(*args, fusion_weight=0.0, **kw)[0].tolist() == [[0, 1, 1, 0]]
    assert fuse(*args, fusion_weight=1.0, **kw)[0].tolist() == [[0, 1, 0, 1]]
    # a rejected object's pixels are ignored, and its teacher probabilities are not used
    label, _ = fuse(student, teacher, np.array([1]), np.array([False]), fusion_weight=0.5, **kw)
    assert label.tolist() == [[0, I, 0, I]]


def test_pixel_filter_and_volume_and_no_objects():
    student, teacher, cls, acc, sobj = example()
    reliable = np.ones_like(student, bool)
    reliable[0, 0] = False
    label, _ = fuse(student, teacher, cls, acc, mode="student", ignore_label=I, pixel_reliable=reliable)
    assert label[0, 0] == I
    vol = np.stack([student, student])  # (Z, Y, X): same rules in 3D
    label, _ = fuse(vol, np.stack([teacher, teacher], 1), cls, acc, mode="agree", ignore_label=I)
    assert label.shape == (2, 2, 6)
    label, _ = fuse(student, np.zeros((0, 2, 6), bool), [], [], mode="agree", ignore_label=I)
    assert label.tolist() == [[0, I, I, I, 0, 0], [0, 0, I, I, I, 0]]


def test_fusion_errors():
    student, teacher, cls, acc, _ = example()
    with pytest.raises(SemisamError, match="did you mean 'agree'"):
        fuse(student, teacher, cls, acc, mode="agre", ignore_label=I)
    with pytest.raises(SemisamError, match="collides"):
        fuse(student, teacher, cls, acc, ignore_label=2)
    with pytest.raises(SemisamError, match="needs the student's probabilities"):
        fuse(student, teacher, cls, acc, mode="weighted", ignore_label=I)
    with pytest.raises(SemisamError, match="disagree"):
        fuse(student, teacher[:, :1], cls, acc, ignore_label=I)
    probs = np.full((3, 2, 6), 1 / 3)
    with pytest.raises(SemisamError, match="fusion_weight"):
        fuse(student, teacher, cls, acc, mode="weighted", ignore_label=I, student_probs=probs, fusion_weight=1.5)


def test_agree_never_adds_foreground_and_union_never_removes_it_seeded_property():
    rng = np.random.default_rng(1234)
    for _ in range(200):
        k = int(rng.integers(2, 4))
        shape = tuple(int(s) for s in rng.integers(1, 9, size=2))
        student = rng.integers(0, k, size=shape)
        n = int(rng.integers(0, 5))
        teacher = rng.random((n, *shape)) < 0.4
        cls = rng.integers(1, k, size=n)
        acc = rng.random(n) < 0.7
        sobj = rng.random((n, *shape)) < 0.3
        label, accept = fuse(student, teacher, cls, acc, mode="agree", ignore_label=k, student_object_masks=sobj)
        kept = label != k
        assert not ((student == 0) & (label > 0) & kept).any()
        np.testing.assert_array_equal(label[kept], student[kept])
        np.testing.assert_array_equal(accept, kept)
        # union never teaches background where the student saw foreground
        union, _ = fuse(student, teacher, cls, acc, mode="union", ignore_label=k, student_object_masks=sobj)
        assert not ((student > 0) & (union == 0)).any()
    assert set(FUSION_MODES) == {"sam", "student", "agree", "union", "choose", "weighted"}


def test_seam_prompts_to_tiny_teacher_to_filters_to_fusion():
    """The pieces glue: student probabilities → prompts → a real (tiny, random) SAM → filters → fusion."""
    import semisam.compat  # noqa: F401  (before anything imports torchvision)
    from semisam.filters import agreement, object_accept, stability_score
    from semisam.prompts import extract_objects, iter_slices, make_prompts, student_hard_labels, validate_probs
    from semisam.teacher.models import build_teacher_model
    from semisam.teacher.predictor import SamTeacher

    yy, xx = np.mgrid[:48, :64]
    mask = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 64) | ((yy - 20) ** 2 + (xx - 34) ** 2 <= 64)
    image = mask * 0.8 + np.random.default_rng(0).random(mask.shape) * 0.2
    probs = validate_probs(np.stack([1 - mask * 0.9, mask * 0.9])[:, None], image[None].shape)
    teacher = SamTeacher(build_teacher_model("tiny_random"))
    (_, probs_slice), = list(iter_slices(probs, 0))
    objects = extract_objects(probs_slice, split_instances=True)
    batch = make_prompts(objects, probs_slice.shape[1:], positive_points=1, negative_points=2,
                         mask_prompt=True, student_probs_slice=probs_slice, rng=0,
                         mask_size=teacher.model.spec.lowres_size)  # the model decides the low-res size
    pred = teacher.predict(image, batch.boxes_xyxy, batch.points_xy, batch.point_labels, batch.mask_inputs)
    assert pred.masks.shape == batch.object_masks.shape == (2, 48, 64)
    np.testing.assert_allclose(stability_score(pred.logits, 1.0), pred.stability, atol=1e-6)
    accept, _ = object_accept(pred.iou_pred, stability_score(pred.logits, 1.0),
                              agreement(pred.masks, batch.object_masks))
    student = student_hard_labels(probs_slice)
    label, kept = fuse(student, pred.masks, batch.class_ids, accept, mode="agree", ignore_label=2,
                       student_object_masks=batch.object_masks)
    assert label.shape == (48, 64) and (label[kept] == student[kept]).all()


@pytest.mark.parametrize(
    "mode, keep, expected",
    [
        # union: the accepted SAM mask grows the student's object to column 4; the rejected object is ignored
        ("union", None, [[0, 1, 1, 1, 1, 0], [0, 0, I, I, I, 0]]),
        # choose: SAM's mask replaces the student's accepted object (column 1 becomes background)
        ("choose", None, [[0, 0, 1, 1, 1, 0], [0, 0, I, I, I, 0]]),
        # choose, the student confident about the rejected object: its own mask is kept, nothing ignored
        ("choose", [False, True], [[0, 0, 1, 1, 1, 0], [0, 0, 2, 2, 2, 0]]),
    ],
)
def test_corrector_modes_can_change_the_students_label(mode, keep, expected):
    student, teacher, cls, acc, sobj = example()
    label, _ = fuse(student, teacher, cls, acc, mode=mode, ignore_label=I, student_object_masks=sobj,
                    keep_student=keep)
    assert label.tolist() == expected


def test_union_adds_an_accepted_candidate_the_student_called_background():
    student = np.array([[1, 1, 0, 0, 0, 0]])
    teacher = np.zeros((2, 1, 6), bool)
    teacher[0, 0, :2] = True
    teacher[1, 0, 3:5] = True  # a candidate: the student saw p < 0.5 there
    sobj = np.zeros((2, 1, 6), bool)
    sobj[0, 0, :2] = True
    sobj[1, 0, 3:6] = True
    label, _ = fuse(student, teacher, np.array([1, 1]), np.array([True, True]), mode="union", ignore_label=I,
                    student_object_masks=sobj)
    assert label.tolist() == [[1, 1, 0, 1, 1, 0]]
    rejected, _ = fuse(student, teacher, np.array([1, 1]), np.array([True, False]), mode="union", ignore_label=I,
                       student_object_masks=sobj)
    assert rejected.tolist() == [[1, 1, 0, I, I, I]]  # an untrusted candidate: not taught as background


def test_gray_zone_ignores_background_the_student_is_unsure_of():
    student = np.array([[1, 0, 0, 0]])
    fg = np.array([[0.9, 0.4, 0.2, 0.0]], np.float32)
    probs = np.stack([1 - fg, fg])
    none = np.zeros((0, 1, 4), bool)
    for mode in ("student", "union", "agree", "sam"):
        label, _ = fuse(student, none, np.zeros(0, int), np.zeros(0, bool), mode=mode, ignore_label=2,
                        student_probs=probs, gray_zone=0.3)
        assert label[0, 1:].tolist() == [2, 0, 0], mode
    with pytest.raises(SemisamError, match="gray zone"):
        fuse(student, none, np.zeros(0, int), np.zeros(0, bool), mode="union", ignore_label=2, gray_zone=0.3)


def test_choose_needs_the_students_objects():
    student, teacher, cls, acc, _ = example()
    with pytest.raises(SemisamError, match="object masks"):
        fuse(student, teacher, cls, acc, mode="choose", ignore_label=I)

"""What the teacher sees of a case: the channel choice (``teacher.channels``), the RGB view, and its path through
preprocessing, the embedding cache, the pipeline and adaptation (tiny random SAM)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semisam.pseudolabel.pipeline import FilterSettings, PromptSettings, PseudoLabeler
from semisam.teacher.adapt import dihedral
from semisam.teacher.cache import EmbeddingCache
from semisam.teacher.predictor import SamTeacher
from semisam.teacher.preprocess import IntensityRule, TeacherView, teacher_channels, to_model_input
from semisam.utils.errors import SemisamError

RGB = {"0": "R", "1": "G", "2": "B"}


def test_channels_default_to_rgb_only_for_channels_named_r_g_b():
    assert teacher_channels(None, RGB) == (0, 1, 2)
    assert teacher_channels(None, {"0": "red", "1": "Green", "2": " BLUE "}) == (0, 1, 2)
    assert teacher_channels(None, {"0": "T1", "1": "T2", "2": "FLAIR"}) == (0,)  # three MRI channels: grey
    assert teacher_channels(None, {"0": "B", "1": "G", "2": "R"}) == (0,)  # not in R, G, B order
    assert teacher_channels(None, {"0": "fluorescence"}) == (0,)
    assert teacher_channels([2], {"0": "T1", "1": "T2", "2": "FLAIR"}) == (2,)
    assert teacher_channels([2, 1, 0], {"0": "B", "1": "G", "2": "R"}) == (2, 1, 0)


@pytest.mark.parametrize("requested, fragment", [
    ([0, 1], "must name 1 channel index (grey) or 3"),
    ([-1], "each >= 0"),
    ([3], "the dataset has no channel 3 (its channels: 0: r, 1: g, 2: b)"),
])
def test_bad_channel_choices_are_one_line_errors(requested, fragment):
    with pytest.raises(SemisamError, match=r"^teacher\.channels=") as e:
        teacher_channels(requested, RGB)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_rgb_view_maps_the_three_channels_together():
    image = np.zeros((3, 1, 8, 8), np.float32)
    image[0] = np.linspace(0, 200, 64).reshape(1, 8, 8)  # red spans 0..200
    image[1] = 100.0  # green: one mid value
    image[2, 0, :4] = 50.0
    view = TeacherView(IntensityRule(mode="minmax"), (0, 1, 2))
    out = view.apply(image)
    assert out.shape == (3, 1, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], 0.5)  # one mapping for all three: green keeps its level, not stretched
    np.testing.assert_allclose(out[0], image[0] / 200, atol=1e-6)
    np.testing.assert_allclose(out[2, 0, :4], 0.25)
    grey = TeacherView(IntensityRule(mode="minmax"), (1,))
    assert grey.apply(image).shape == (1, 8, 8) and grey.is_constant(image)  # green alone: one value
    assert not view.is_constant(image)


@pytest.mark.parametrize("kind", ["litemedsam", "sam"])
def test_model_input_keeps_colour_and_equals_grey_for_equal_channels(kind):
    rng = np.random.default_rng(0)
    grey = rng.random((20, 30)).astype(np.float32)
    same, info = to_model_input(np.stack([grey] * 3), 64, kind)
    ref, ref_info = to_model_input(grey, 64, kind)
    assert info == ref_info and info.original_hw == (20, 30)
    torch.testing.assert_close(same, ref)  # a grey image is the RGB image with three equal channels
    rgb = np.stack([grey, 1 - grey, np.zeros_like(grey)])
    x, _ = to_model_input(rgb, 64, kind)
    assert x.shape == (1, 3, 64, 64)
    h, w = info.resized_hw
    assert not torch.allclose(x[0, 0, :h, :w], x[0, 1, :h, :w])  # the channels stay apart
    with pytest.raises(SemisamError, match=r"grey \(H, W\) or RGB \(3, H, W\)"):
        to_model_input(np.stack([grey] * 2), 64, kind)


def test_dihedral_turns_every_channel_alike():
    a = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    for k in range(8):
        np.testing.assert_array_equal(dihedral(a, k), np.stack([dihedral(c, k) for c in a]))


def _green_disk_case():
    """A 2D case whose object is only in the green channel (red and blue constant)."""
    y, x = np.mgrid[:32, :40]
    fg = (y - 16) ** 2 + (x - 20) ** 2 < 60
    image = np.zeros((3, 1, 32, 40), np.float32)
    image[0] = 30.0
    image[1, 0] = np.where(fg, 200.0, 20.0)
    image[2] = 90.0
    p = np.where(fg, 0.9, 0.05)[None]
    return image, np.stack([1 - p, p]), fg


def _labeler(tiny_model, channels, cache):
    teacher = SamTeacher(tiny_model, cache, decode_batch=4, intensity=None)
    return PseudoLabeler(teacher, view=TeacherView(IntensityRule(), channels),
                         prompts=PromptSettings(min_size=4), filters=FilterSettings(case_min_accept=0.0),
                         ignore_label=2)


def test_the_teacher_sees_the_colour_image(tiny_model):
    image, probs, fg = _green_disk_case()
    red = _labeler(tiny_model, (0,), EmbeddingCache(None))(image, probs, "c")
    assert not red.accepted and red.stats["skip_reason"] == "constant_image"  # red alone holds nothing

    cache = EmbeddingCache(None)
    out = _labeler(tiny_model, (0, 1, 2), cache)(image, probs, "c")
    assert out.stats.get("skip_reason") is None and out.teacher.shape == (1, *fg.shape) and out.stats["n_objects"] >= 1
    assert cache.stats()["misses"] == 1  # one RGB embedding for the one slice
    rgb01 = TeacherView(IntensityRule(), (0, 1, 2)).apply(image)[:, 0]
    green01 = TeacherView(IntensityRule(), (1,)).apply(image)[0]
    assert cache.key(rgb01, tiny_model) != cache.key(green01, tiny_model)
    e_rgb, _ = cache.get_or_compute(rgb01, tiny_model)
    assert cache.stats()["misses"] == 1  # the pipeline encoded exactly this (3, H, W) image
    e_green, _ = EmbeddingCache(None).get_or_compute(green01, tiny_model)
    assert not torch.allclose(e_rgb, e_green)  # colour reaches the encoder: not the green channel as grey


def test_adaptation_takes_rgb_cases(tiny_model, tmp_path):
    image, _, fg = _green_disk_case()
    lab = _labeler(tiny_model, (0, 1, 2), EmbeddingCache(None))
    lab.adapt_settings = dict(steps=2, batch_size=2, augment=True)
    info = lab.adapt([(image, fg[None].astype(np.int64))], [1], tmp_path / "adapted.pt")
    assert info["steps"] == 2 and (tmp_path / "adapted.pt").is_file()

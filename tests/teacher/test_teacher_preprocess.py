"""Intensity mapping, each model's input rule, coordinate transforms and mask postprocessing."""
import numpy as np
import pytest
import torch

from semisam.teacher.preprocess import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    IntensityRule,
    TransformInfo,
    boxes_from_input,
    boxes_to_input,
    coords_from_input,
    coords_to_input,
    map_intensity,
    postprocess_logits,
    resized_shape,
    to_model_input,
)
from semisam.utils.errors import SemisamError


def test_percentile_mapping_clips_outliers_and_spans_unit_range():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (64, 64))
    image[0, 0] = 1e6  # a hot pixel
    out = map_intensity(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(image, [0.5, 99.5])
    np.testing.assert_allclose(out[5, 5], np.clip((image[5, 5] - lo) / (hi - lo), 0, 1), rtol=1e-5)
    # the hot pixel does not squash the rest (minmax would)
    assert out[1:, 1:].std() > 0.1
    assert map_intensity(image, "minmax")[1:, 1:].std() < 0.01


def test_percentiles_are_per_volume_so_slices_share_one_mapping():
    volume = np.stack([np.full((8, 8), 10.0), np.full((8, 8), 20.0), np.linspace(0, 30, 64).reshape(8, 8)])
    out = map_intensity(volume, "minmax")
    assert np.allclose(out[0], 1 / 3) and np.allclose(out[1], 2 / 3)
    # mapping slice by slice would make both constant slices 0
    assert np.allclose(map_intensity(volume[0], "minmax"), 0.0)


def test_window_mode_is_fixed_ct_window():
    hu = np.array([[-1000.0, -160.0, 40.0], [240.0, 1000.0, 0.0]])
    out = IntensityRule("window", center=40, width=400).apply(hu)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5], [1.0, 1.0, 0.4]], atol=1e-6)


def test_constant_image_maps_to_zeros():
    assert np.all(map_intensity(np.full((4, 5), 7.0)) == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_is_a_clear_error(bad):
    image = np.ones((8, 8))
    image[3, 3] = bad
    with pytest.raises(SemisamError, match="1 NaN/Inf"):
        map_intensity(image)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="zscore"), "unknown intensity mode 'zscore'"),
        (dict(mode="window"), "needs center and width"),
        (dict(mode="window", center=0, width=-1), "needs center and width"),
        (dict(lower=99, upper=1), "lower < upper"),
    ],
)
def test_bad_mapping_parameters(kwargs, match):
    with pytest.raises(SemisamError, match=match):
        map_intensity(np.ones((4, 4)), **kwargs)


def test_wrong_dimensions():
    with pytest.raises(SemisamError, match="2D"):
        map_intensity(np.ones((2, 2, 2, 2)))


def test_litemedsam_input_rule():
    image = np.linspace(0.2, 0.6, 200 * 300, dtype=np.float32).reshape(200, 300)
    x, info = to_model_input(image, 256, "litemedsam")
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
    assert info == TransformInfo((200, 300), (171, 256), 256)
    content = x[0, :, :171, :256]
    assert torch.allclose(content[0], content[1]) and torch.allclose(content[0], content[2])
    assert abs(content.min().item()) < 1e-6 and abs(content.max().item() - 1) < 1e-6  # min-max rescaled
    assert torch.all(x[..., 171:, :] == 0) and torch.all(x[..., :, 256:] == 0)  # bottom/right padding


def test_sam_input_rule_normalises_with_pixel_mean_std():
    image = np.ones((64, 32), np.float32)
    x, info = to_model_input(image, 1024, "sam")
    assert info.resized_hw == (1024, 512)
    expected = (255.0 - torch.tensor(SAM_PIXEL_MEAN)) / torch.tensor(SAM_PIXEL_STD)
    torch.testing.assert_close(x[0, :, 10, 10], expected)
    assert torch.all(x[0, :, :, 512:] == 0)


def test_model_input_refuses_unmapped_images():
    with pytest.raises(SemisamError, match=r"\[0, 1\] was expected"):
        to_model_input(np.full((8, 8), 300.0), 256, "sam")


def test_resized_shape_matches_sams_rounding():
    assert resized_shape(200, 300, 256) == (171, 256)
    assert resized_shape(512, 512, 1024) == (1024, 1024)
    assert resized_shape(1, 5000, 256) == (1, 256)


def test_coordinate_transforms_round_trip_and_scale():
    info = TransformInfo((200, 300), (171, 256), 256)
    pts = np.array([[[0.0, 0.0], [299.0, 199.0], [150.0, 100.0]]])
    fwd = coords_to_input(pts, info)
    np.testing.assert_allclose(fwd[0, 1].numpy(), [299 * 256 / 300, 199 * 171 / 200], rtol=1e-6)
    np.testing.assert_allclose(coords_from_input(fwd, info).numpy(), pts, atol=1e-4)
    boxes = np.array([[10.0, 20.0, 110.0, 150.0], [0, 0, 299, 199]])
    np.testing.assert_allclose(boxes_from_input(boxes_to_input(boxes, info), info).numpy(), boxes, atol=1e-4)


@pytest.mark.parametrize("hw, size, lowres", [((200, 300), 256, 256), ((90, 60), 1024, 256), ((64, 64), 256, 64)])
def test_postprocess_maps_lowres_mask_back_onto_the_image(hw, size, lowres):
    """A disk drawn in model-input space comes back as the same disk on the original grid."""
    H, W = hw
    h, w = resized_shape(H, W, size)
    info = TransformInfo(hw, (h, w), size)
    yy, xx = np.mgrid[:lowres, :lowres] * (size / lowres)
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    lowres_logits = torch.from_numpy(np.where(inside, 5.0, -5.0).astype(np.float32))[None, None]
    out = postprocess_logits(lowres_logits, info)
    assert out.shape == (1, 1, H, W)
    oy, ox = np.mgrid[:H, :W]
    truth = (oy - H / 2) ** 2 + (ox - W / 2) ** 2 < (min(H, W) / 3) ** 2
    mask = out[0, 0].numpy() > 0
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.95

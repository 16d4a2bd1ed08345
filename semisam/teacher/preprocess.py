"""From medical intensities to a SAM model's input, and from its output back to the image grid.

Two steps, kept apart on purpose:

1. :func:`map_intensity` maps raw medical intensities (CT Hounsfield units, MRI arbitrary units,
   microscopy counts) to ``[0, 1]``. It runs once per 2D image, or once per 3D volume before slicing so
   that all slices of a volume share one mapping. The rule is configurable (:class:`IntensityRule`):

   - ``"percentile"`` (default): clip to the ``lower``/``upper`` percentiles (0.5 / 99.5) of the finite
     values of the whole image or volume, then scale linearly to ``[0, 1]``. Robust to a few hot pixels;
     the usual choice for MRI and microscopy.
   - ``"minmax"``: scale the image's own minimum..maximum to ``[0, 1]``.
   - ``"window"``: a fixed intensity window ``center ± width / 2`` (CT, e.g. soft tissue 40 / 400),
     clipped and scaled to ``[0, 1]``; identical for every case.

   A constant image maps to all zeros. NaN or Inf anywhere is an error (:class:`SemisamError`).

   Which channels of a case the teacher sees is :class:`TeacherView`'s choice (:func:`teacher_channels`): one
   channel as grey (the first, by default), or three as RGB (by default when ``dataset.json`` names its three
   channels R, G, B, as ``data_prep`` writes ISIC 2018 and Kvasir-SEG). The three RGB channels share one
   mapping, so colours keep their balance; the grey image is ``(H, W)``, the RGB one ``(3, H, W)``.

2. Each model's own input rule (:func:`to_model_input`), which the model was trained with:

   - ``"litemedsam"`` (LiteMedSAM): grey copied to 3 channels (an RGB image kept as it is), longest side
     resized to the input size (256), min-max scaled to ``[0, 1]`` (no ImageNet mean/std), zero padding at
     bottom/right.
   - ``"sam"`` (Meta SAM, MobileSAM): the ``[0, 1]`` image becomes 0..255 RGB, longest side resized to
     the input size (1024), normalised with SAM's pixel mean/std, zero padding (after normalisation) at
     bottom/right, as ``Sam.preprocess`` does.

Coordinates follow SAM: points are ``(x, y)`` pixels, boxes ``(x0, y0, x1, y1)``, in the original image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from semisam.utils.errors import SemisamError

IntensityMode = Literal["percentile", "minmax", "window"]
PreprocessKind = Literal["litemedsam", "sam"]

#: Meta SAM's pixel statistics (RGB, 0..255), used by ``Sam.preprocess``.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def check_finite(image: np.ndarray, what: str = "image") -> None:
    """Raise :class:`SemisamError` if ``image`` has NaN or Inf values."""
    bad = ~np.isfinite(image)
    if bad.any():
        raise SemisamError(
            f"{what} contains {int(bad.sum())} NaN/Inf values (of {image.size}); "
            "fix or mask them before passing the image to the SAM teacher"
        )


def map_intensity(
    image: np.ndarray,
    mode: IntensityMode = "percentile",
    lower: float = 0.5,
    upper: float = 99.5,
    center: float | None = None,
    width: float | None = None,
) -> np.ndarray:
    """Map medical intensities to ``[0, 1]`` (see the module docstring for the rules).

    Args:
        image: ``(H, W)`` or ``(Z, Y, X)`` array of any real dtype. Statistics (percentiles, min/max)
            are computed over the whole array, so a volume gets one mapping for all its slices.
        mode: ``"percentile"``, ``"minmax"`` or ``"window"``.
        lower, upper: percentiles in ``[0, 100]`` for ``"percentile"``, ``lower < upper``.
        center, width: the intensity window for ``"window"`` (``width > 0``).

    Returns:
        float32 array of the same shape, values in ``[0, 1]``; all zeros for a constant image.

    Raises:
        SemisamError: NaN/Inf in ``image``, a wrong number of dimensions, or bad mode parameters.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise SemisamError(f"expected a 2D (H, W) or 3D (Z, Y, X) image, got shape {image.shape}")
    if image.size == 0:
        raise SemisamError(f"image is empty (shape {image.shape})")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
        raise SemisamError(f"image dtype {image.dtype} is not a real number type")
    data = image.astype(np.float64, copy=False)
    check_finite(data)
    if mode == "percentile":
        if not (0.0 <= lower < upper <= 100.0):
            raise SemisamError(f"percentile bounds must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        lo, hi = np.percentile(data, [lower, upper])
    elif mode == "minmax":
        lo, hi = float(data.min()), float(data.max())
    elif mode == "window":
        if center is None or width is None or not width > 0:
            raise SemisamError(f"intensity mode 'window' needs center and width > 0, got center={center}, width={width}")
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        raise SemisamError(f"unknown intensity mode '{mode}'; choose one of: minmax, percentile, window")
    if not hi > lo:
        return np.zeros(image.shape, dtype=np.float32)
    out = (np.clip(data, lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32)


@dataclass(frozen=True)
class IntensityRule:
    """The configurable intensity rule, as scalars (see :func:`map_intensity`)."""

    mode: IntensityMode = "percentile"
    lower: float = 0.5
    upper: float = 99.5
    center: float | None = None
    width: float | None = None

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``map_intensity(image, **rule)``: ``(H, W)`` or ``(Z, Y, X)`` → float32 in ``[0, 1]``."""
        return map_intensity(image, self.mode, self.lower, self.upper, self.center, self.width)


#: channel names (lower case) that make a three-channel dataset an RGB one, in R, G, B order
RGB_NAMES = (("r", "red"), ("g", "green"), ("b", "blue"))


def check_channel_list(requested) -> tuple[int, ...]:
    """``teacher.channels`` as given (not None), checked without a dataset: 1 or 3 indices, each >= 0.

    Raises:
        SemisamError: another count, or a negative index.
    """
    channels = tuple(int(c) for c in requested)
    if len(channels) not in (1, 3) or min(channels) < 0:
        raise SemisamError(f"teacher.channels={list(channels)} must name 1 channel index (grey) or 3 (RGB, in R, G, B "
                           "order), each >= 0; null picks RGB for channels named R, G, B and the first channel otherwise")
    return channels


def teacher_channels(requested, channel_names: dict) -> tuple[int, ...]:
    """The image channels the teacher sees (``teacher.channels``).

    Args:
        requested: None (automatic: the three channels as RGB when ``channel_names`` names them R, G, B or red,
            green, blue in this order; else the first channel as grey), or a list of 1 channel index (grey) or 3
            (RGB, in R, G, B order).
        channel_names: ``dataset.json``'s ``channel_names`` (``{"0": "T1", ...}``).

    Raises:
        SemisamError: not 1 or 3 channels, or a channel the dataset does not have.
    """
    names = [str(channel_names[k]).strip().lower() for k in sorted(channel_names, key=int)]
    if requested is None:
        if len(names) == 3 and all(n in accepted for n, accepted in zip(names, RGB_NAMES)):
            return (0, 1, 2)
        return (0,)
    channels = check_channel_list(requested)
    bad = [c for c in channels if c >= len(names)]
    if bad:
        have = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
        raise SemisamError(f"teacher.channels={list(channels)}: the dataset has no channel {bad[0]} "
                           f"(its channels: {have}); name channels by these indices")
    return channels


@dataclass(frozen=True)
class TeacherView:
    """What the teacher sees of a case: its :attr:`channels` (one as grey, three as RGB), mapped to ``[0, 1]``
    by :attr:`rule`. The three RGB channels share one mapping (statistics over all three), so a colour keeps
    its balance."""

    rule: IntensityRule = IntensityRule()
    channels: tuple[int, ...] = (0,)

    def select(self, image: np.ndarray) -> np.ndarray:
        """``(C, Z, Y, X)`` case → its raw teacher channels: ``(Z, Y, X)`` grey or ``(3, Z, Y, X)`` RGB."""
        image = np.asarray(image)
        return image[self.channels[0]] if len(self.channels) == 1 else image[list(self.channels)]

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``(C, Z, Y, X)`` case → float32 in ``[0, 1]``: ``(Z, Y, X)`` grey or ``(3, Z, Y, X)`` RGB (slice it with
        :func:`semisam.prompts.iter_slices`, which keeps the channel axis first)."""
        sel = self.select(image)
        if len(self.channels) == 1:
            return self.rule.apply(sel)
        return self.rule.apply(sel.reshape(-1, *sel.shape[2:])).reshape(sel.shape)  # one mapping for R, G, B

    def is_constant(self, image: np.ndarray) -> bool:
        """True when the teacher's channels hold one value everywhere (nothing for SAM to segment)."""
        sel = self.select(image)
        return bool(sel.size) and sel.min() == sel.max()


def is_teacher_image(image: np.ndarray) -> bool:
    """Whether ``image`` has a 2D teacher image's shape: grey ``(H, W)`` or RGB ``(3, H, W)``."""
    return image.ndim == 2 or (image.ndim == 3 and image.shape[0] == 3)


def check_unit_image(image01: np.ndarray) -> np.ndarray:
    """Check an already-mapped 2D image, grey ``(H, W)`` or RGB ``(3, H, W)``: finite, values in ``[0, 1]``;
    return it as float32 of the same shape.

    Raises:
        SemisamError: wrong shape, NaN/Inf, or values outside ``[0, 1]``.
    """
    image01 = np.asarray(image01)
    if not is_teacher_image(image01) or min(image01.shape) < 1:
        raise SemisamError(f"expected a 2D grey (H, W) or RGB (3, H, W) image, got shape {image01.shape}")
    image01 = image01.astype(np.float32, copy=False)
    check_finite(image01)
    if image01.min() < -1e-6 or image01.max() > 1 + 1e-6:
        raise SemisamError(
            f"image values span [{image01.min():.4g}, {image01.max():.4g}] but [0, 1] was expected; "
            "map intensities first (semisam.teacher.preprocess.map_intensity)"
        )
    return np.clip(image01, 0.0, 1.0)


@dataclass(frozen=True)
class TransformInfo:
    """How an ``(H, W)`` image was placed into the model's ``S x S`` input.

    Attributes:
        original_hw: ``(H, W)`` of the image.
        resized_hw: ``(h, w)`` after resizing the longest side to ``S`` (top-left of the input).
        input_size: ``S`` (256 for LiteMedSAM, 1024 for SAM / MobileSAM).
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    input_size: int

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Per-axis factors original pixel → input pixel, ``(w / W, h / H)``."""
        return (self.resized_hw[1] / self.original_hw[1], self.resized_hw[0] / self.original_hw[0])

    def to_dict(self) -> dict[str, int]:
        return {"H": self.original_hw[0], "W": self.original_hw[1], "h": self.resized_hw[0],
                "w": self.resized_hw[1], "S": self.input_size}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> "TransformInfo":
        return cls((int(d["H"]), int(d["W"])), (int(d["h"]), int(d["w"])), int(d["S"]))


def resized_shape(height: int, width: int, input_size: int) -> tuple[int, int]:
    """``(h, w)`` with the longest side equal to ``input_size`` (rounded as SAM's ResizeLongestSide)."""
    scale = input_size / max(height, width)
    return (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))


def to_model_input(image01: np.ndarray, input_size: int, kind: PreprocessKind) -> tuple[torch.Tensor, TransformInfo]:
    """Resize, normalise and pad an intensity-mapped image into the model's input.

    Args:
        image01: ``(H, W)`` grey or ``(3, H, W)`` RGB float image in ``[0, 1]`` (from :class:`TeacherView`).
        input_size: ``S``, the model's square input side.
        kind: ``"litemedsam"`` or ``"sam"`` (see the module docstring).

    Returns:
        ``(x, info)``: ``x`` is a float32 tensor ``(1, 3, S, S)``; ``info`` the :class:`TransformInfo`.

    Raises:
        SemisamError: a bad image (see :func:`check_unit_image`) or unknown ``kind``.
    """
    image01 = check_unit_image(image01)
    H, W = image01.shape[-2:]
    h, w = resized_shape(H, W, input_size)
    x = torch.from_numpy(np.ascontiguousarray(image01)).reshape(1, -1, H, W)
    if (h, w) != (H, W):
        # Bilinear with antialiasing when shrinking, like a PIL resize of the uint8 image.
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=(h < H or w < W))
    x = x.expand(1, 3, h, w)  # grey: the one channel three times; RGB: as it is
    if kind == "litemedsam":
        lo, hi = x.min(), x.max()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    elif kind == "sam":
        mean = torch.tensor(SAM_PIXEL_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD, dtype=torch.float32).view(1, 3, 1, 1)
        x = (x.clamp(0, 1) * 255.0 - mean) / std
    else:
        raise SemisamError(f"unknown preprocessing kind '{kind}'; choose one of: litemedsam, sam")
    x = F.pad(x, (0, input_size - w, 0, input_size - h))
    return x.contiguous().float(), TransformInfo((H, W), (h, w), input_size)


def coords_to_input(coords_xy: np.ndarray | torch.Tensor, info: TransformInfo) -> torch.Tensor:
    """Original-pixel ``(..., 2)`` XY coordinates → model-input coordinates (float32 tensor)."""
    c = torch.as_tensor(np.asarray(coords_xy, dtype=np.float32)).clone()
    sx, sy = info.scale_xy
    c[..., 0] *= sx
    c[..., 1] *= sy
    return c


def coords_from_input(coords_xy: np.ndarray | torch.Tensor, info: TransformInfo) -> torch.Tensor:
    """Inverse of :func:`coords_to_input`."""
    c = torch.as_tensor(np.asarray(coords_xy, dtype=np.float32)).clone()
    sx, sy = info.scale_xy
    c[..., 0] /= sx
    c[..., 1] /= sy
    return c


def boxes_to_input(boxes_xyxy: np.ndarray | torch.Tensor, info: TransformInfo) -> torch.Tensor:
    """Original-pixel ``(N, 4)`` XYXY boxes → model-input boxes ``(N, 4)`` (float32 tensor)."""
    b = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32)).reshape(-1, 2, 2)
    return coords_to_input(b, info).reshape(-1, 4)


def boxes_from_input(boxes_xyxy: np.ndarray | torch.Tensor, info: TransformInfo) -> torch.Tensor:
    """Inverse of :func:`boxes_to_input`."""
    b = torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32)).reshape(-1, 2, 2)
    return coords_from_input(b, info).reshape(-1, 4)


def postprocess_logits(lowres_logits: torch.Tensor, info: TransformInfo) -> torch.Tensor:
    """Low-resolution decoder logits → logits on the original ``(H, W)`` grid (differentiable).

    The low-res grid ``L x L`` covers the padded ``S x S`` input. It is upsampled to ``S`` (a no-op for
    LiteMedSAM, where ``L == S == 256``), cropped to the unpadded ``(h, w)`` area, then resized to
    ``(H, W)``, all bilinear — SAM's ``postprocess_masks`` and LiteMedSAM's rule.

    Args:
        lowres_logits: ``(N, 1, L, L)`` pre-sigmoid logits.
        info: the image's :class:`TransformInfo`.

    Returns:
        ``(N, 1, H, W)`` pre-sigmoid logits; the mask is ``logits > 0`` (sigmoid > 0.5).
    """
    S = info.input_size
    h, w = info.resized_hw
    x = lowres_logits
    if x.shape[-1] != S or x.shape[-2] != S:
        x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False)
    x = x[..., :h, :w]
    if (h, w) != info.original_hw:
        x = F.interpolate(x, size=info.original_hw, mode="bilinear", align_corners=False)
    return x

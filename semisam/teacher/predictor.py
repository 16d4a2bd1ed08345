"""The SAM teacher: one cached embedding per image, many prompts decoded in batches.

Shaped like ``segment_anything.SamPredictor`` (embed once, predict many times) but stateless per call:
the embedding comes from the :class:`~semisam.teacher.cache.EmbeddingCache`, so alternating images costs
nothing extra. The teacher takes **images and prompts only, never a label**.

Conventions: ``image_2d`` is ``(H, W)`` (Y, X), or ``(3, H, W)`` for an RGB teacher view; points are ``(x, y)``
pixels and boxes ``(x0, y0, x1, y1)`` in the original image; point labels are 1 (foreground), 0 (background),
-1 (padding, ignored).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from semisam.filters.filters import stability_score
from semisam.teacher.cache import EmbeddingCache
from semisam.teacher.models import SamModel
from semisam.teacher.preprocess import (
    IntensityRule,
    TransformInfo,
    boxes_to_input,
    check_unit_image,
    coords_to_input,
    is_teacher_image,
    postprocess_logits,
)
from semisam.utils.errors import SemisamError


@dataclass
class TeacherPrediction:
    """Teacher output for N prompts on one ``(H, W)`` image (numpy arrays).

    Attributes:
        masks: ``(N, H, W)`` bool, ``logits > 0``.
        logits: ``(N, H, W)`` float32 pre-sigmoid logits, upsampled to the image grid.
        iou_pred: ``(N,)`` float32, SAM's predicted IoU of each mask.
        stability: ``(N,)`` float32, SAM's stability score (IoU of the masks at logit thresholds ±1).
        lowres_logits: ``(N, 1, L, L)`` float32 decoder logits (L = 256 for real models); can be fed back as
            ``mask_inputs``.
    """

    masks: np.ndarray
    logits: np.ndarray
    iou_pred: np.ndarray
    stability: np.ndarray
    lowres_logits: np.ndarray

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def decode_prompts(
    model: SamModel,
    embedding: torch.Tensor,
    boxes_in: torch.Tensor | None = None,
    points_in: torch.Tensor | None = None,
    point_labels: torch.Tensor | None = None,
    mask_inputs: torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder for n prompts on one image (keeps autograd; callers pick the mode).

    Args:
        model: the teacher.
        embedding: ``(1, C, h_e, w_e)`` image embedding on the model's device.
        boxes_in: ``(n, 4)`` XYXY boxes in model-input pixels, or None.
        points_in: ``(n, P, 2)`` XY points in model-input pixels, or None (with ``point_labels`` ``(n, P)``).
        mask_inputs: ``(n, 1, L, L)`` low-res logits, or None.
        multimask: decode SAM's 3 candidate masks and keep, per prompt, the one with the highest
            predicted IoU; otherwise SAM's single-mask output.

    Returns:
        ``(lowres_logits (n, 1, L, L), iou_pred (n,))``.
    """
    points = None if points_in is None else (points_in, point_labels)
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes_in, masks=mask_inputs)
    lowres, iou = model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    if multimask:
        best = iou.argmax(dim=1)
        idx = torch.arange(lowres.shape[0], device=lowres.device)
        return lowres[idx, best][:, None], iou[idx, best]
    return lowres, iou[:, 0]


class SamTeacher:
    """Embeds images once (through the cache) and decodes all prompts of an image in batched calls.

    Args:
        model: a built teacher (:func:`~semisam.teacher.models.build_teacher_model`).
        cache: an :class:`EmbeddingCache` (default: memory-only, 64 items).
        device: where to run; default the model's device. The model is moved there.
        decode_batch: prompts per prompt-encoder/decoder call.
        intensity: the rule mapping raw intensities to ``[0, 1]`` per 2D image; None when images are
            already mapped (e.g. a volume mapped once with ``map_intensity`` and then sliced) — they are
            then checked to lie in ``[0, 1]``.
    """

    def __init__(self, model: SamModel, cache: EmbeddingCache | None = None, device: str | torch.device | None = None,
                 decode_batch: int = 64, intensity: IntensityRule | None = IntensityRule()):
        if decode_batch < 1:
            raise SemisamError(f"decode_batch must be >= 1, got {decode_batch}")
        self.model = model if device is None else model.to(device)
        self.model.eval()
        self.cache = cache if cache is not None else EmbeddingCache(None)
        self.decode_batch = int(decode_batch)
        self.intensity = intensity

    @property
    def device(self) -> torch.device:
        return self.model.device

    def map_image(self, image_2d: np.ndarray) -> np.ndarray:
        """Apply the teacher's intensity rule: ``(H, W)`` grey or ``(3, H, W)`` RGB raw → float32 ``[0, 1]`` (an
        RGB image gets one mapping for its three channels)."""
        image_2d = np.asarray(image_2d)
        if not is_teacher_image(image_2d):
            raise SemisamError(f"the teacher takes 2D grey (H, W) or RGB (3, H, W) images (slice 3D volumes), "
                               f"got shape {image_2d.shape}")
        return check_unit_image(image_2d) if self.intensity is None else self.intensity.apply(image_2d)

    def embed_with_info(self, image_2d: np.ndarray) -> tuple[torch.Tensor, TransformInfo]:
        """``(H, W)`` image → ``(embedding (1, C, h_e, w_e) on CPU, TransformInfo)``, cached."""
        return self.cache.get_or_compute(self.map_image(image_2d), self.model)

    def embed(self, image_2d: np.ndarray) -> torch.Tensor:
        """``(H, W)`` image → image embedding ``(1, C, h_e, w_e)`` (CPU tensor), cached."""
        return self.embed_with_info(image_2d)[0]

    @torch.no_grad()
    def predict(
        self,
        image_2d: np.ndarray,
        boxes_xyxy: np.ndarray | None = None,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_inputs: np.ndarray | torch.Tensor | None = None,
        multimask: bool = False,
    ) -> TeacherPrediction:
        """Decode N prompts on one image. Prompt i is ``boxes_xyxy[i]`` and/or ``points_xy[i]`` and/or
        ``mask_inputs[i]``; every given prompt array has the same N.

        Args:
            image_2d: ``(H, W)`` image (raw intensities, or ``[0, 1]`` if ``intensity`` is None).
            boxes_xyxy: ``(N, 4)`` boxes in original pixels, or None.
            points_xy: ``(N, P, 2)`` points in original pixels, or None; needs ``point_labels`` ``(N, P)``.
            mask_inputs: ``(N, 1, L, L)`` low-res logits (e.g. a previous ``lowres_logits``), or None.
            multimask: pick the best of SAM's 3 candidate masks by predicted IoU.

        Returns:
            :class:`TeacherPrediction` with N entries (N may be 0).

        Raises:
            SemisamError: bad shapes, non-finite or inverted boxes, bad labels, bad image.
        """
        boxes, points, labels, masks_in = self._check_prompts(boxes_xyxy, points_xy, point_labels, mask_inputs)
        embedding_cpu, info = self.embed_with_info(image_2d)
        n = next(len(a) for a in (boxes, points, masks_in) if a is not None)
        H, W = info.original_hw
        L = self.model.spec.lowres_size
        if n == 0:
            return TeacherPrediction(np.zeros((0, H, W), bool), np.zeros((0, H, W), np.float32),
                                     np.zeros(0, np.float32), np.zeros(0, np.float32),
                                     np.zeros((0, 1, L, L), np.float32))
        dev = self.device
        embedding = embedding_cpu.to(dev, torch.float32)
        boxes_in = None if boxes is None else boxes_to_input(boxes, info).to(dev)
        points_in = None if points is None else coords_to_input(points, info).to(dev)
        labels_t = None if labels is None else torch.as_tensor(labels, dtype=torch.int64, device=dev)
        masks_t = None if masks_in is None else torch.as_tensor(masks_in, dtype=torch.float32, device=dev)

        def part(t: torch.Tensor | None, s: slice) -> torch.Tensor | None:
            return None if t is None else t[s]

        lowres_all, iou_all, logits_all = [], [], []
        for start in range(0, n, self.decode_batch):
            s = slice(start, start + self.decode_batch)
            lowres, iou = decode_prompts(self.model, embedding, part(boxes_in, s), part(points_in, s),
                                         part(labels_t, s), part(masks_t, s), multimask)
            lowres_all.append(lowres.float().cpu())
            iou_all.append(iou.float().cpu())
            logits_all.append(postprocess_logits(lowres, info)[:, 0].float().cpu())
        logits = torch.cat(logits_all)
        return TeacherPrediction(
            masks=(logits > 0).numpy(),
            logits=logits.numpy(),
            iou_pred=torch.cat(iou_all).numpy(),
            stability=stability_score(logits),
            lowres_logits=torch.cat(lowres_all).numpy(),
        )

    def _check_prompts(self, boxes, points, labels, masks_in):
        L = self.model.spec.lowres_size
        ns: dict[str, int] = {}
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float32)
            if boxes.ndim == 1 and boxes.shape == (4,):
                boxes = boxes[None]
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise SemisamError(f"boxes_xyxy must have shape (N, 4), got {boxes.shape}")
            if not np.isfinite(boxes).all():
                raise SemisamError("boxes_xyxy contains NaN/Inf")
            if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
                raise SemisamError("boxes_xyxy must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0")
            ns["boxes_xyxy"] = len(boxes)
        if points is not None:
            points = np.asarray(points, dtype=np.float32)
            if points.ndim != 3 or points.shape[2] != 2:
                raise SemisamError(f"points_xy must have shape (N, P, 2), got {points.shape}")
            if labels is None:
                raise SemisamError("points_xy needs point_labels of shape (N, P): 1 foreground, 0 background")
            labels = np.asarray(labels)
            if labels.shape != points.shape[:2]:
                raise SemisamError(f"point_labels must have shape {points.shape[:2]}, got {labels.shape}")
            if not np.isin(labels, (-1, 0, 1)).all():
                raise SemisamError("point_labels must be 1 (foreground), 0 (background) or -1 (padding)")
            if not np.isfinite(points).all():
                raise SemisamError("points_xy contains NaN/Inf")
            ns["points_xy"] = len(points)
        elif labels is not None:
            raise SemisamError("point_labels given without points_xy")
        if masks_in is not None:
            masks_in = masks_in.detach().cpu().numpy() if isinstance(masks_in, torch.Tensor) else np.asarray(masks_in)
            if masks_in.ndim != 4 or masks_in.shape[1:] != (1, L, L):
                raise SemisamError(f"mask_inputs must have shape (N, 1, {L}, {L}), got {masks_in.shape}")
            ns["mask_inputs"] = len(masks_in)
        if not ns:
            raise SemisamError("predict needs at least one prompt array: boxes_xyxy, points_xy or mask_inputs")
        if len(set(ns.values())) > 1:
            raise SemisamError(f"prompt arrays disagree on N: {ns}")
        return boxes, points, labels, masks_in

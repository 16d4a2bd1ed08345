"""The online terms: the EMA teacher, mean-teacher consistency, and the strong view of weak→strong consistency.

Where the views sit relative to nnU-Net's transforms: an unlabeled patch comes out of nnU-Net's own training
pipeline (spatial transforms, intensity transforms, mirroring — the same as a labeled patch); that is the
*weak* view, and it is what the EMA teacher sees (mean teacher: plus Gaussian noise). The *strong* view is made
from the weak one on the training device, with intensity changes only (brightness, contrast, blur, noise) and
CutMix, which moves the same box of image and teacher target together; no transform changes geometry after
nnU-Net's, so teacher and student see aligned pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class EmaTeacher:
    """An exponential moving average of the student's weights (and buffers), the mean teacher.

    Built on ``torch.optim.swa_utils.AveragedModel``; the decay warms up as ``min(decay, 1 - 1 / (n + 1))``
    over the first updates (the mean-teacher reference), so the teacher is not stuck at the random init.
    """

    def __init__(self, network: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel

        self.decay = float(decay)

        def ema(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
            d = min(self.decay, 1.0 - 1.0 / (float(num_averaged) + 1.0))
            return averaged * d + current * (1.0 - d)

        self.model = AveragedModel(unwrap(network), avg_fn=ema, use_buffers=True)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module:
        return self.model.module

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        self.model.update_parameters(unwrap(network))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits of the teacher (deep supervision's first output)."""
        return first(self.model.module(x))

    def state_dict(self) -> dict:
        return {"weights": self.model.module.state_dict(), "n_averaged": self.model.n_averaged.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.model.module.load_state_dict(state["weights"])
        self.model.n_averaged.copy_(torch.as_tensor(state["n_averaged"]))


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and ``torch.compile`` wrappers."""
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


def first(output):
    """The full-resolution output of a network with or without deep supervision."""
    return output[0] if isinstance(output, (list, tuple)) else output


def mean_teacher_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """MSE between the softmax of the student and of the teacher (no gradient to the teacher), averaged over
    classes and pixels: the mean-teacher consistency."""
    return F.mse_loss(torch.softmax(student_logits.float(), 1), torch.softmax(teacher_logits.float(), 1).detach())


def confident_targets(teacher_logits: torch.Tensor, threshold: float, ignore_label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard targets ``(B, 1, ...)`` from the teacher's logits: the argmax where its probability is at least
    ``threshold``, ``ignore_label`` elsewhere; and the fraction of pixels kept."""
    prob = torch.softmax(teacher_logits.float(), 1)
    conf, label = prob.max(1, keepdim=True)
    keep = conf >= threshold
    target = torch.where(keep, label, torch.full_like(label, ignore_label))
    return target, keep.float().mean()


def coverage_scaled(loss: torch.Tensor, target: torch.Tensor, ignore_label: int) -> torch.Tensor:
    """``loss`` (averaged over the pixels of ``target`` that are not ``ignore_label``) times their share of all
    pixels: the average over every pixel, as FixMatch and UniMatch take it, with the ignored pixels counting 0."""
    return loss * (target != ignore_label).float().mean()


class StrongView:
    """Intensity changes and CutMix on a batch of weak views ``(B, C, *spatial)``, per sample.

    Args:
        brightness: additive shift drawn from ``U(-b, b)`` (nnU-Net's images are normalised, ~unit variance).
        contrast: factor drawn from ``U(1 - c, 1 + c)`` around each sample's mean.
        blur: probability of a Gaussian blur with sigma from ``U(0.5, 1.5)`` pixels (MONAI's GaussianFilter).
        noise: Gaussian noise with a std drawn from ``U(0, noise)``.
        cutmix: probability that a sample receives a box from another sample of the batch.
        generator: a ``torch.Generator`` for the draws (on the CPU).
    """

    def __init__(self, brightness: float, contrast: float, blur: float, noise: float, cutmix: float,
                 generator: torch.Generator | None = None):
        self.brightness, self.contrast, self.blur, self.noise, self.cutmix = brightness, contrast, blur, noise, cutmix
        self.generator = generator

    def _u(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def intensity(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        shape = (b,) + (1,) * (x.ndim - 1)
        out = x
        if self.contrast > 0:
            mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
            out = (out - mean) * self._u(b, 1 - self.contrast, 1 + self.contrast).view(shape).to(x) + mean
        if self.brightness > 0:
            out = out + self._u(b, -self.brightness, self.brightness).view(shape).to(x)
        if self.blur > 0:
            from monai.networks.layers import GaussianFilter

            blur = self._u(b, 0, 1) < self.blur
            sigmas = self._u(b, 0.5, 1.5)
            spatial = x.ndim - 2
            out = torch.stack([GaussianFilter(spatial, float(s)).to(x.device)(o[None])[0] if do else o
                               for o, do, s in zip(out, blur.tolist(), sigmas.tolist())])
        if self.noise > 0:
            std = self._u(b, 0, self.noise).view(shape).to(x)
            out = out + torch.randn(x.shape, generator=self.generator).to(x) * std
        return out

    def cutmix_boxes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(partner, mask)``: for each sample the index of the sample whose box it receives, and the box mask
        ``(B, 1, *spatial)`` (all False where no box). A box covers 2-40 % of the patch (UniMatch's range)."""
        b, spatial = x.shape[0], x.shape[2:]
        partner = torch.roll(torch.arange(b), 1) if b > 1 else torch.arange(b)
        mask = torch.zeros((b, 1, *spatial), dtype=torch.bool)
        if b < 2:
            return partner, mask.to(x.device)
        for i in range(b):
            if float(self._u(1, 0, 1)) >= self.cutmix:
                continue
            area = float(self._u(1, 0.02, 0.4))
            side = area ** (1.0 / len(spatial))
            sl = [slice(None), slice(None)]
            for n in spatial:
                length = max(1, int(round(side * n)))
                start = int(torch.randint(0, n - length + 1, (1,), generator=self.generator))
                sl.append(slice(start, start + length))
            mask[i:i + 1][tuple(sl)] = True
        return partner, mask.to(x.device)

    def __call__(self, x: torch.Tensor, *targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The strong view of ``x`` and the targets moved with CutMix (each ``(B, ·, *spatial)``)."""
        strong = self.intensity(x)
        if self.cutmix <= 0:
            return (strong, *targets)
        partner, mask = self.cutmix_boxes(x)
        mix = lambda t: torch.where(mask, t[partner], t)  # noqa: E731
        return (mix(strong), *(mix(t) for t in targets))


def feature_perturbed_logits(network: torch.nn.Module, x: torch.Tensor, p: float) -> torch.Tensor:
    """UniMatch's feature-perturbation branch: ``x`` through nnU-Net's encoder, every skip feature map dropped
    channel-wise with probability ``p`` (``dropout2d``/``dropout3d``, rescaled by 1 / (1 - p)), then the decoder;
    the full-resolution logits. Gradients flow into encoder and decoder.

    Raises:
        SemisamError: a network without nnU-Net's ``encoder`` / ``decoder`` parts.
    """
    import torch.nn.functional as F

    from semisam.utils.errors import SemisamError

    net = unwrap(network)
    if not (hasattr(net, "encoder") and hasattr(net, "decoder")):
        raise SemisamError(f"online.feature_perturbation needs a network with encoder and decoder parts (nnU-Net's "
                           f"U-Nets); {type(net).__name__} has none: set online.feature_perturbation=0")
    drop = F.dropout2d if x.ndim == 4 else F.dropout3d
    skips = [drop(s, p, training=True) for s in net.encoder(x)]
    return first(net.decoder(skips))


def weighted_dc_ce(loss: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor,
                   weight: torch.Tensor) -> torch.Tensor:
    """nnU-Net's ``DC_and_CE_loss`` (``loss``, built with an ignore label) with a per-pixel weight in [0, 1]:
    CE averaged with the weights, soft Dice with the weights as nnU-Net's loss mask. Pixels of the ignore label
    weigh 0; with weights 1 elsewhere it is ``loss`` itself.

    Args:
        logits: ``(B, K, *spatial)``; target: ``(B, 1, *spatial)`` classes or the ignore label;
        weight: ``(B, 1, *spatial)``.
    """
    import torch.nn.functional as F

    keep = target != loss.ignore_label
    w = weight.to(logits.dtype) * keep
    target = torch.where(keep, target, 0)
    dc = loss.dc(logits, target, loss_mask=w) if loss.weight_dice != 0 else 0
    total = w.sum()
    ce = (F.cross_entropy(logits, target[:, 0].long(), reduction="none") * w[:, 0]).sum() / total \
        if loss.weight_ce != 0 and total > 0 else 0
    return loss.weight_ce * ce + loss.weight_dice * dc

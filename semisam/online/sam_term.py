"""The SAM term's pseudo-labels.

``online.sam_mode=refresh`` (:class:`SamRefresher`): the EMA teacher predicts each unlabeled case (nnU-Net's sliding window on the
preprocessed image), its probabilities prompt SAM through the recipe's teacher pipeline
(:class:`semisam.pseudolabel.pipeline.PseudoLabeler`: prompts, SAM, fusion, filters, the embedding cache), and the
pseudo-label — ignore where the filters reject, everywhere for a rejected case — replaces the case's store
(:func:`semisam.online.unlabeled.write_store`). Only the unlabeled images and the teacher's predictions are
involved: nothing here can read a label of an unlabeled case.

``online.sam_mode=iteration`` (:func:`sam_on_patches`): SAM labels the augmented 2D patches of the current
unlabeled batch, prompted from the EMA teacher's (or the student's) prediction of those same patches — the
reference method's way, paid at every iteration.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from semisam.online.unlabeled import decode_store, encode_store, read_image, read_store, write_store


@contextlib.contextmanager
def without_deep_supervision(network: torch.nn.Module):
    """nnU-Net's network with only its full-resolution output, for the duration of the block."""
    decoder = getattr(network, "decoder", None)
    before = getattr(decoder, "deep_supervision", None)
    if before is not None:
        decoder.deep_supervision = False
    try:
        yield network
    finally:
        if before is not None:
            decoder.deep_supervision = before


class SamRefresher:
    """Refreshes the pseudo-label store of the unlabeled folder from a network's predictions.

    Args:
        labeler: the recipe's teacher pipeline.
        folder: the unlabeled folder; ``cases``: its case ids.
        plans_manager, configuration_manager, dataset_json: the trainer's (nnU-Net's predictor needs them).
        device: where the network predicts.
        log: a one-argument print function (the trainer's log file).
        confidence: store SAM's per-pixel confidence with each pseudo-label (``online.sam_confidence``).
    """

    def __init__(self, labeler, folder: Path, cases: Sequence[str], plans_manager, configuration_manager,
                 dataset_json: dict, device: torch.device, log: Callable[[str], None] = print,
                 confidence: bool = False):
        self.labeler = labeler
        self.folder = Path(folder)
        self.cases = list(cases)
        self.plans_manager = plans_manager
        self.configuration_manager = configuration_manager
        self.dataset_json = dataset_json
        self.device = device
        self.log = log
        self.confidence = confidence

    def _predictor(self, network: torch.nn.Module):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, "nnUNetTrainerSemiSAM", None)
        return predictor

    @staticmethod
    @torch.no_grad()
    def probabilities(predictor, image: np.ndarray) -> np.ndarray:
        """Softmax ``(K, *spatial)`` of the predictor's network on a preprocessed image ``(C, *spatial)``."""
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(image))
        return torch.softmax(torch.as_tensor(logits).float(), 0).cpu().numpy()

    def refresh(self, network: torch.nn.Module, epoch: int) -> dict:
        """Pseudo-label every unlabeled case from ``network``'s predictions and replace the store.

        Returns:
            ``{"cases", "accepted", "kept_fraction", "foreground_fraction", "changed_fraction", "seconds"}``:
            cases pseudo-labeled and accepted, the share of pixels with a pseudo-label (not ignore), the share of
            kept pixels that are foreground, and the share of pixels whose stored value changed.
        """
        t0 = time.time()
        was_training = network.training
        network.eval()
        pseudo: dict[str, np.ndarray] = {}
        accepted = kept = fg = changed = total = 0
        try:
            with without_deep_supervision(network):
                predictor = self._predictor(network)
                for case in self.cases:
                    image = read_image(self.folder, case)
                    probs = self.probabilities(predictor, image)
                    out = self.labeler(image, probs, case_id=case)
                    stored = encode_store(out.pseudo, self.labeler.ignore_label,
                                          out.confidence if self.confidence else None).reshape(image.shape[1:])
                    if not out.accepted:
                        stored = np.zeros_like(stored)
                    accepted += bool(out.accepted)
                    kept += int((stored > 0).sum())
                    fg += int((decode_store(torch.from_numpy(stored), 0).numpy() > 0).sum())
                    changed += int((read_store(self.folder, case).reshape(stored.shape) != stored).sum())
                    total += stored.size
                    pseudo[case] = stored[None]
        finally:
            network.train(was_training)
        write_store(self.folder, pseudo, epoch, self.configuration_manager.patch_size)
        return {"cases": len(self.cases), "accepted": accepted, "kept_fraction": kept / max(total, 1),
                "foreground_fraction": fg / max(kept, 1), "changed_fraction": changed / max(total, 1),
                "seconds": time.time() - t0}


@torch.no_grad()
def sam_on_patches(labeler, images: torch.Tensor, probs: torch.Tensor,
                   confidence: bool = False) -> tuple[torch.Tensor, dict]:
    """SAM's pseudo-labels of a batch of 2D patches, encoded as the store encodes them.

    Args:
        labeler: the recipe's teacher pipeline.
        images: ``(B, C, Y, X)`` the patches as the network sees them (after nnU-Net's transforms).
        probs: ``(B, K, Y, X)`` the teacher network's softmax on the same patches.
        confidence: pack SAM's per-pixel confidence in (``online.sam_confidence``).

    Returns:
        ``(B, 1, Y, X)`` stored values on ``images``' device (:func:`~semisam.online.unlabeled.encode_store`:
        0 where the filters reject and over a rejected patch; decode with ``decode_store`` / ``store_weights``),
        and ``{"patches_accepted", "sam_seconds"}``.
    """
    t0 = time.time()
    out = torch.zeros((images.shape[0], 1, *images.shape[2:]), dtype=torch.int16)
    accepted = 0
    imgs = images.detach().float().cpu().numpy()
    p = probs.detach().float().cpu().numpy().astype(np.float64)
    p /= p.sum(1, keepdims=True)
    for b in range(images.shape[0]):
        res = labeler(imgs[b][:, None], p[b][:, None], case_id=f"patch{b}")
        if res.accepted:
            accepted += 1
            out[b, 0] = torch.from_numpy(encode_store(res.pseudo[0], labeler.ignore_label,
                                                      res.confidence[0] if confidence else None))
    labeler.stats.reset()  # one record per patch would pile up over a training; the term's stats are returned
    return out.to(images.device), {"patches_accepted": accepted / max(1, images.shape[0]),
                                   "sam_seconds": time.time() - t0}

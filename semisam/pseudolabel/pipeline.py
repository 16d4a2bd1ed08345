"""One unlabeled case → one pseudo-label: prompts → SAM teacher → filters → fusion.

:class:`PseudoLabeler` takes an image and the student's probabilities — never a label — and returns the
pseudo-label (rejected pixels carry the ignore label), the student's and the teacher's label maps, whether
the case is accepted, and its stats. 3D volumes are processed slice-wise along ``slice_axis``; SAM sees the
recipe's teacher channels (``teacher.channels``: the first as grey, or three as RGB; see
:class:`~semisam.teacher.preprocess.TeacherView`), mapped to ``[0, 1]`` once per case by the teacher's intensity
rule (so every slice of a volume shares one mapping).

:func:`build_pseudolabeler` is the builder from a recipe (configs stop here); :func:`pseudolabel_folder`
(:mod:`semisam.pseudolabel.folder`) is ``semisam pseudolabel``: refine any trained nnU-Net's
``--save_probabilities`` output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from semisam.config.schema import FiltersConfig, PromptsConfig, settings_of
from semisam.filters import (
    CaseStats,
    PseudoLabelStats,
    agreement,
    boundary_band,
    object_accept,
    perturbation_uncertainty,
    pixel_accept,
    stability_score,
)
from semisam.fusion import fuse, teacher_label_map
from semisam.prompts import (
    extract_candidates,
    extract_objects,
    iter_slices,
    make_prompts,
    second_pass_prompts,
    stack_slices,
    student_hard_labels,
    validate_probs,
)
from semisam.utils.errors import SemisamError


@settings_of(PromptsConfig)
class PromptSettings:
    """The ``prompts`` recipe group as plain values (see :func:`semisam.prompts.make_prompts`)."""


@settings_of(FiltersConfig)
class FilterSettings:
    """The ``filters`` recipe group as plain values (see :mod:`semisam.filters` and :func:`semisam.fusion.fuse`)."""


@dataclass
class PseudoLabel:
    """The teacher's answer for one case; label maps are ``(Z, Y, X)``."""

    pseudo: np.ndarray  # fused label, ignore label where rejected
    student: np.ndarray  # the student's hard labels
    teacher: np.ndarray | None  # the teacher's label map (all objects), None without a teacher
    accepted: bool
    stats: dict[str, Any] = field(default_factory=dict)
    #: SAM's per-pixel confidence in [0, 1]: 2·|p − 0.5| for p the largest probability SAM's accepted masks give
    #: the pixel (1 where no accepted mask reaches it); None without a teacher
    confidence: np.ndarray | None = None

    def every_pixel(self, ignore_label: int) -> np.ndarray:
        """The label every pixel ends up with when an ignored pixel, and each pixel of a rejected case, counts as
        the student's: how a rule is scored with every pixel counted (``semisam probe``, ``loop.calibrate``)."""
        if not self.accepted:
            return self.student
        return np.where(self.pseudo != ignore_label, self.pseudo, self.student)


# Extra jitter (pixels) of the perturbed box prompts behind the uncertainty filter.
PERTURB_JITTER = 3


class PseudoLabeler:
    """Builds pseudo-labels for unlabeled cases.

    Args:
        teacher: a :class:`~semisam.teacher.predictor.SamTeacher` built with ``intensity=None``, or None
            to self-train on the student's own labels (fusion must then be ``student``).
        view: the teacher's channels of a case and their mapping to ``[0, 1]``
            (:class:`~semisam.teacher.preprocess.TeacherView`; None: the first channel, percentile mapping).
        prompts, filters: the recipe's scalars.
        ignore_label: the dataset's ignore label.
        seed: for prompt jitter and perturbations.
        adapt_settings: keyword arguments of :func:`semisam.teacher.adapt.adapt_teacher`.
        shared_adapt_dir: a folder of adaptations shared by runs, by fingerprint (see
            :func:`semisam.teacher.adapt.adapt_or_load`); None: each run adapts for itself.
    """

    def __init__(self, teacher, *, view=None, prompts: PromptSettings, filters: FilterSettings, ignore_label: int,
                 seed: int = 0, adapt_settings: dict | None = None, shared_adapt_dir: str | Path | None = None):
        if teacher is None and filters.fusion != "student":
            raise SemisamError(f"filters.fusion={filters.fusion} needs a teacher; use fusion 'student' without one")
        self.teacher = teacher
        if view is None:
            from semisam.teacher.preprocess import TeacherView

            view = TeacherView()
        self.view = view
        self.p = prompts
        self.f = filters
        self.ignore_label = int(ignore_label)
        self.seed = seed
        self.adapt_settings = dict(adapt_settings or {})
        self.shared_adapt_dir = shared_adapt_dir
        self.stats = PseudoLabelStats()
        self._base_state = None  # the teacher's own prompt encoder + decoder, restored before each adaptation

    @property
    def adaptable(self) -> bool:
        return self.teacher is not None

    def cache_stats(self) -> dict:
        return {} if self.teacher is None else self.teacher.cache.stats()

    # ------------------------------------------------------------------------------------------ adaptation
    def adapt(self, labeled: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[int], path: str | Path) -> dict:
        """Adapt the teacher on ``(image (C, Z, Y, X), label (Z, Y, X))`` pairs: the labeled cases' true
        labels, optionally with accepted pseudo-labels (their ignore-label pixels carry no loss).

        Every adaptation starts from the teacher's own weights, so a run resumed between rounds adapts exactly
        as one that was not. Volumes are cut into slices along ``slice_axis``; slices without foreground are
        left out. The adapted decoder is saved at ``path`` and reused when the same data and settings come again.
        """
        from semisam.teacher.adapt import adapt_or_load, adapted_state

        model = self.teacher.model
        if self._base_state is None:
            self._base_state = adapted_state(model)
        else:
            model.prompt_encoder.load_state_dict(self._base_state["prompt_encoder"])
            model.mask_decoder.load_state_dict(self._base_state["mask_decoder"])

        pairs = []
        for image, label in labeled:
            img01 = self.view.apply(image)
            for (_, img_s), (_, lab_s) in zip(iter_slices(img01, self.p.slice_axis),
                                              iter_slices(np.asarray(label), self.p.slice_axis)):
                if ((lab_s > 0) & (lab_s != self.ignore_label)).any():
                    pairs.append((img_s, lab_s))
        if not pairs:
            raise SemisamError("no labeled slice has foreground: the teacher cannot be adapted (teacher.adapt.enabled=false)")
        return adapt_or_load(self.teacher.model, self.teacher.cache, pairs, classes, path,
                             shared_dir=self.shared_adapt_dir, intensity=None,
                             ignore_label=self.ignore_label, seed=self.seed, **self.adapt_settings)

    # ------------------------------------------------------------------------------------------ one case
    def __call__(self, image: np.ndarray, student_probs: np.ndarray, case_id: str = "") -> PseudoLabel:
        """Pseudo-label one case.

        Args:
            image: ``(C, Z, Y, X)`` (2D cases: Z == 1), raw intensities.
            student_probs: ``(K, Z, Y, X)`` the student's class probabilities, background first.

        A case is skipped (not accepted, every pixel the ignore label, counted in :attr:`stats` with its
        ``skip_reason``) when the student predicts no foreground anywhere (``"no_foreground"``: no prompt can
        be made) or, with a teacher, when the teacher's channels are constant (``"constant_image"``).

        Raises:
            SemisamError: NaN/Inf, shapes that differ, probabilities that do not sum to one.
        """
        image = np.asarray(image)
        if image.ndim != 4:
            raise SemisamError(f"case {case_id}: image must be (C, Z, Y, X), got shape {image.shape}")
        probs = validate_probs(student_probs, image.shape)
        student = student_hard_labels(probs, threshold=self.p.threshold, overlap=self.p.overlap)
        skip = None
        if self.teacher is not None and self.view.is_constant(image):
            skip = "constant_image"  # what SAM sees holds one value everywhere: nothing to segment
        elif not (student > 0).any():
            skip = "no_foreground"  # no object, no prompt: nothing to ask the teacher
        if skip is not None:
            stats = CaseStats.skipped_case(case_id, skip)
            self.stats.append(stats)
            empty = np.full(student.shape, self.ignore_label, dtype=np.uint8)
            return PseudoLabel(empty, student, None, False, stats.to_dict())
        if self.teacher is None:
            return self._self_label(case_id, student)
        img01 = self.view.apply(image)
        rng = np.random.default_rng(self.seed)
        axis = self.p.slice_axis
        pseudo_slices, teacher_slices, confidence_slices = [], [], []
        per_obj: dict[str, list[np.ndarray]] = {k: [] for k in ("accept", "iou", "stab", "agree", "unc")}
        reasons: list[tuple[str, ...]] = []
        for (_, img_s), (_, probs_s), (_, student_s) in zip(iter_slices(img01, axis), iter_slices(probs, axis),
                                                           iter_slices(student, axis)):
            out = self._slice(img_s, probs_s, student_s, rng)
            pseudo_slices.append(out["pseudo"])
            teacher_slices.append(out["teacher"])
            confidence_slices.append(out["confidence"])
            for k in per_obj:
                per_obj[k].append(out[k])
            reasons += out["reasons"]
        pseudo = boundary_band(stack_slices(pseudo_slices, axis), self.ignore_label, self.f.boundary_band)
        teacher = stack_slices(teacher_slices, axis)
        cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in per_obj.items()}
        foreground = (student > 0) | (teacher > 0)
        if self.f.gray_zone > 0:  # background the student is unsure of may be missed foreground
            foreground |= probs[1:].max(axis=0) >= self.f.gray_zone
        stats = CaseStats.from_arrays(
            case_id, accept=cat["accept"], reasons=reasons, accept_pixel_mask=pseudo != self.ignore_label,
            foreground=foreground, case_min_accept=self.f.case_min_accept, iou_pred=cat["iou"],
            stability=cat["stab"], agreement=cat["agree"],
            uncertainty=cat["unc"] if self.f.perturbations else None)
        self.stats.append(stats)
        return PseudoLabel(pseudo.astype(np.uint8), student, teacher, stats.accepted, stats.to_dict(),
                           confidence=stack_slices(confidence_slices, axis))

    def _self_label(self, case_id: str, student: np.ndarray) -> PseudoLabel:
        """No teacher: the student's own labels (plain self-training baseline)."""
        fg = student > 0
        pseudo = boundary_band(student, self.ignore_label, self.f.boundary_band)
        stats = CaseStats.from_arrays(case_id, accept=np.ones(0, bool), reasons=[],
                                      accept_pixel_mask=pseudo != self.ignore_label, foreground=fg,
                                      case_min_accept=self.f.case_min_accept)
        self.stats.append(stats)
        return PseudoLabel(pseudo.astype(np.uint8), student, None, stats.accepted, stats.to_dict())

    def _margins(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """``(box margin, perturbation jitter)`` in image pixels of a slice of ``shape`` (converted from the
        teacher's input frame when ``prompts.box_margin_space=teacher``)."""
        if self.p.box_margin_space != "teacher":
            return self.p.box_margin, PERTURB_JITTER
        scale = max(shape) / self.teacher.model.spec.input_size
        return int(round(self.p.box_margin * scale)), max(1, int(round(PERTURB_JITTER * scale)))

    def _prompts(self, objects, probs_s, shape, rng, margin: int, jitter: int):
        p = self.p
        return make_prompts(objects, shape, box=p.box, box_margin=margin, box_jitter=jitter,
                            positive_points=p.positive_points, negative_points=p.negative_points,
                            mask_prompt=p.mask_prompt, student_probs_slice=probs_s, rng=rng,
                            mask_size=self.teacher.model.spec.lowres_size)

    def _teach(self, img_s, batch):
        """The teacher's masks for a prompt batch: one pass, or two with ``prompts.second_pass``."""
        pred = self.teacher.predict(img_s, batch.boxes_xyxy, batch.points_xy, batch.point_labels, batch.mask_inputs)
        if not self.p.second_pass:
            return pred
        refined = second_pass_prompts(batch, pred.masks, positive_points=self.p.second_pass_positive,
                                      negative_points=self.p.second_pass_negative,
                                      lowres_logits=pred.lowres_logits if self.p.second_pass_mask else None)
        return self.teacher.predict(img_s, refined.boxes_xyxy, refined.points_xy, refined.point_labels,
                                    refined.mask_inputs)

    def _slice(self, img_s: np.ndarray, probs_s: np.ndarray, student_s: np.ndarray, rng: np.random.Generator) -> dict:
        p, f = self.p, self.f
        objects = extract_objects(probs_s, threshold=p.threshold, min_size=p.min_size,
                                  split_instances=p.split_instances, split_min_distance=p.split_min_distance,
                                  split_max_pieces=p.split_max_pieces, overlap=p.overlap)
        if p.candidate_threshold > 0:
            objects += extract_candidates(probs_s, low_threshold=p.candidate_threshold, threshold=p.threshold,
                                          min_size=p.min_size, overlap=p.overlap)
        shape = student_s.shape
        margin, jitter = self._margins(shape)
        batch = self._prompts(objects, probs_s, shape, rng, margin, p.box_jitter)
        n = len(batch)
        candidate = np.array([o.candidate for o in objects], dtype=bool)
        if n == 0:
            masks = np.zeros((0, *shape), bool)
            teacher_probs = np.zeros((0, *shape), np.float32)
            iou = stab = agree = unc = np.zeros(0)
            pixel_ok = None
        else:
            if p.source == "everything":
                from semisam.teacher.everything import everything_for_objects

                pred = everything_for_objects(self.teacher, img_s, batch.object_masks,
                                              points_per_side=p.everything_points_per_side,
                                              min_iou=p.everything_min_iou,
                                              min_stability=p.everything_min_stability, match_iou=p.match_iou)
            else:
                pred = self._teach(img_s, batch)
            masks, iou, stab = pred.masks, pred.iou_pred, pred.stability
            teacher_probs = 1.0 / (1.0 + np.exp(-pred.logits))
            if f.stability_offset != 1.0:  # the teacher scored its masks at SAM's offset 1
                stab = stability_score(pred.logits, offset=f.stability_offset)
            unc, pixel_ok = np.zeros(n), None
            if f.perturbations > 0:
                runs, prob_runs = [masks], [teacher_probs]
                for _ in range(f.perturbations):
                    pp = self._teach(img_s, self._prompts(objects, probs_s, shape, rng, margin,
                                                          max(p.box_jitter, jitter)))
                    runs.append(pp.masks)
                    prob_runs.append(1.0 / (1.0 + np.exp(-pp.logits)))
                pixel_unc, unc = perturbation_uncertainty(np.stack(runs))
                pixel_ok = pixel_accept(pixel_unc, f.uncertainty_thresh)
                if f.ensemble_mask:  # the jittered-box ensemble: majority mask, mean probability
                    masks = np.stack(runs).mean(axis=0) > 0.5
                    teacher_probs = np.mean(prob_runs, axis=0)
            agree = agreement(masks, batch.object_masks)
        accept, reasons = object_accept(iou, stab, agree, unc if f.perturbations else None,
                                        iou_thresh=f.iou_thresh, stability_thresh=f.stability_thresh,
                                        agreement_thresh=f.agreement_thresh, uncertainty_thresh=f.uncertainty_thresh)
        keep_student = None
        if n and f.student_confident < 1.0:
            keep_student = ~candidate & (np.array([o.prob_mean for o in objects]) >= f.student_confident)
        pseudo, _ = fuse(student_s, masks, batch.class_ids, accept, mode=f.fusion, ignore_label=self.ignore_label,
                         fusion_weight=f.fusion_weight, student_probs=probs_s, teacher_probs=teacher_probs,
                         student_object_masks=batch.object_masks, pixel_reliable=pixel_ok,
                         min_confidence=f.min_confidence, keep_student=keep_student, gray_zone=f.gray_zone)
        teacher_map, _ = teacher_label_map(masks, batch.class_ids, np.ones(n, bool))
        return {"pseudo": pseudo, "teacher": teacher_map, "accept": accept, "reasons": list(reasons),
                "iou": iou, "stab": stab, "agree": agree, "unc": unc,
                "confidence": sam_confidence(teacher_probs, accept, shape)}


def sam_confidence(teacher_probs: np.ndarray, accept: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """SAM's per-pixel confidence on a slice: 2·|p − 0.5| for p the largest mask probability of the accepted
    objects (``teacher_probs`` ``(n, *shape)``, ``accept`` ``(n,)``); 1 (sure background) where no object is
    accepted."""
    accepted = teacher_probs[np.asarray(accept, bool)] if len(teacher_probs) else teacher_probs
    p_max = accepted.max(axis=0) if len(accepted) else np.zeros(shape, np.float32)
    return np.abs(2.0 * p_max - 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------- builders
def build_pseudolabeler(cfg, *, ignore_label: int, channel_names: dict, cache_dir: str | None,
                        memory_items: int | None = None) -> PseudoLabeler:
    """The recipe's teacher pipeline (SAM built once; embeddings cached in ``cache_dir`` and, up to
    ``memory_items`` of them (None: ``teacher.cache_memory_items``), in memory). ``channel_names`` (the dataset's)
    resolve ``teacher.channels`` (:func:`~semisam.teacher.preprocess.teacher_channels`)."""
    from semisam.teacher.preprocess import IntensityRule, TeacherView, teacher_channels

    t = cfg.teacher
    intensity = IntensityRule(mode=t.intensity.mode, lower=t.intensity.lower, upper=t.intensity.upper,
                              center=t.intensity.window_center, width=t.intensity.window_width)
    view = TeacherView(intensity, teacher_channels(t.channels, channel_names))
    prompts, filters = PromptSettings.of(cfg.prompts), FilterSettings.of(cfg.filters)
    teacher = None
    if t.enabled:
        from semisam.teacher.cache import EmbeddingCache
        from semisam.teacher.models import build_teacher_model
        from semisam.teacher.predictor import SamTeacher

        from semisam.utils.device import resolve_device
        from semisam.utils.distributed import rank_device

        device = resolve_device(rank_device(cfg.device))  # under torchrun: this rank's own GPU
        model = build_teacher_model(t.name, t.checkpoint, device=device)
        cache = EmbeddingCache(cache_dir, max_memory_items=t.cache_memory_items if memory_items is None else memory_items,
                               store_dtype=t.cache_dtype, max_disk_gb=t.cache_max_gb)
        teacher = SamTeacher(model, cache, device=device, decode_batch=t.decode_batch, intensity=None)
    a = t.adapt
    adapt_settings = dict(steps=a.steps, lr=a.lr, batch_size=a.batch_size, train_prompt_encoder=a.train_prompt_encoder,
                          augment=a.augment, box_jitter=a.box_jitter)
    # runs that share an embedding cache (teacher.cache_dir set, as `semisam compare` does) share adaptations too
    shared = str(Path(t.cache_dir).parent / "adapted") if t.cache_dir else None
    return PseudoLabeler(teacher, view=view, prompts=prompts, filters=filters, ignore_label=ignore_label,
                         seed=cfg.seed, adapt_settings=adapt_settings, shared_adapt_dir=shared)

"""Range, choice and cross-field checks on a composed :class:`~semisam.config.schema.RunConfig`.

Types and unknown keys are Hydra/OmegaConf's job (the schemas are typed); this module checks what types
cannot say: a threshold in [0, 1], a count >= 0, a name among the known ones, and a few combinations.
Every failure is one :class:`SemisamError` line that names the dotted key.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from semisam.config.schema import RunConfig
from semisam.utils.errors import SemisamError
from semisam.utils.registry import suggest

__all__ = ["validate", "check_fields"]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of dataclass ``obj`` (recursively) against its ``metadata`` declaration.

    Args:
        obj: a dataclass instance of the schema (``RunConfig`` or one of its groups).
        prefix: dotted path of ``obj`` in the run config (``"filters"``), used in messages.

    Raises:
        SemisamError: the first value out of range or not among its choices, naming ``prefix.field``.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            check_fields(value, key)
            continue
        if value is None:
            continue
        meta = f.metadata
        if "choices" in meta and value not in meta["choices"]:
            raise SemisamError(
                f"{key}={value!r} is not a valid choice{suggest(str(value), meta['choices'])}; "
                f"choose one of: {', '.join(meta['choices'])}"
            )
        lo, hi = meta.get("lo"), meta.get("hi")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            raise SemisamError(f"{key}={value!r} is out of range; it must lie in [{lo_s}, {hi_s}]")
        if "gt" in meta and not value > meta["gt"]:
            raise SemisamError(f"{key}={value!r} is out of range; it must be > {meta['gt']:g}")


def validate(cfg: RunConfig) -> RunConfig:
    """Check ranges, choices and combinations of a composed run config; return it unchanged.

    Raises:
        SemisamError: one line naming the offending key and what would be valid.
    """
    check_fields(cfg)
    if not _DEVICE.match(cfg.device):
        raise SemisamError(
            f"device={cfg.device!r} is not a valid device{suggest(cfg.device, ['auto', 'cpu', 'cuda'])}; "
            "use auto, cpu, cuda or cuda:N"
        )
    if not str(cfg.dataset.raw_dir).strip():
        raise SemisamError("dataset.raw_dir is empty; pass dataset.raw_dir=<nnU-Net raw dataset folder>")
    if not str(cfg.experiment).strip() or not str(cfg.run_dir).strip():
        raise SemisamError("experiment and run_dir must not be empty")
    if cfg.student.fold != "all" and not cfg.student.fold.isdigit():
        raise SemisamError(f"student.fold={cfg.student.fold!r} is invalid; use 'all' or a fold index (0, 1, …)")

    inten = cfg.teacher.intensity
    if inten.mode == "percentile" and not inten.lower < inten.upper:
        raise SemisamError(
            f"teacher.intensity.lower={inten.lower:g} must be below teacher.intensity.upper={inten.upper:g}"
        )
    if inten.mode == "window":
        if inten.window_center is None or inten.window_width is None:
            raise SemisamError(
                "teacher.intensity.mode=window needs teacher.intensity.window_center and window_width"
            )
        if not inten.window_width > 0:
            raise SemisamError(f"teacher.intensity.window_width={inten.window_width:g} must be > 0")

    if cfg.teacher.channels is not None:
        from semisam.teacher.preprocess import check_channel_list

        check_channel_list(cfg.teacher.channels)
    if cfg.teacher.name not in ("litemedsam", "tiny_random", "none") and not cfg.teacher.checkpoint:
        raise SemisamError(
            f"teacher.name={cfg.teacher.name} needs its weights; pass teacher.checkpoint=<path to the checkpoint>"
        )

    p = cfg.prompts
    if not (p.box or p.positive_points > 0 or p.mask_prompt):
        raise SemisamError(
            "prompts give SAM nothing to segment; set prompts.box=true or prompts.positive_points>0 "
            "or prompts.mask_prompt=true"
        )
    if 0 < p.candidate_threshold and not p.candidate_threshold < p.threshold:
        raise SemisamError(f"prompts.candidate_threshold={p.candidate_threshold:g} must lie below "
                           f"prompts.threshold={p.threshold:g} (or be 0: off)")
    f = cfg.filters
    if 0 < f.gray_zone and not f.gray_zone < p.threshold:
        raise SemisamError(f"filters.gray_zone={f.gray_zone:g} must lie below prompts.threshold={p.threshold:g} "
                           "(or be 0: off)")
    if f.ensemble_mask and f.perturbations == 0:
        raise SemisamError("filters.ensemble_mask=true needs filters.perturbations > 0 (the ensemble's extra boxes)")
    if p.second_pass and not p.box:
        raise SemisamError("prompts.second_pass refines box prompts; set prompts.box=true")
    if p.second_pass and p.second_pass_positive + p.second_pass_negative == 0:
        raise SemisamError("prompts.second_pass needs prompts.second_pass_positive or second_pass_negative > 0")
    if p.source == "everything" and (p.second_pass or f.perturbations):
        raise SemisamError("prompts.source=everything matches SAM's automatic masks; it cannot be combined with "
                           "prompts.second_pass or filters.perturbations")
    if not cfg.teacher.enabled and (p.source == "everything" or p.candidate_threshold > 0 or p.second_pass):
        raise SemisamError("prompts.source=everything, candidate_threshold and second_pass need a SAM teacher; "
                           "teacher=none can only self-train")
    _validate_online(cfg)
    _validate_gpus(cfg)
    if cfg.loop.max_rounds > 0 and not cfg.teacher.enabled and cfg.filters.fusion != "student":
        raise SemisamError(
            f"teacher.name=none cannot produce filters.fusion={cfg.filters.fusion!r} pseudo-labels; "
            "use filters=student (self-training) or choose a teacher"
        )
    return cfg


def _validate_online(cfg: RunConfig) -> None:
    """Online training (``online.*``): schedules that fit in training, a SAM term that has a teacher, and no
    mixing with rounds (an online student is its own method)."""
    o = cfg.online
    for name in ("consistency_weight", "sam_weight"):
        sched = getattr(o, name)
        total = sched.start + sched.ramp_up + sched.ramp_down
        if total > 1 + 1e-9:
            raise SemisamError(f"online.{name}: start + ramp_up + ramp_down = {total:g} exceeds 1 (they are "
                               "fractions of the whole training); shorten the ramps")
    if o.consistency != "none" and o.consistency_weight.weight == 0:
        raise SemisamError(f"online.consistency={o.consistency} with online.consistency_weight.weight=0 adds "
                           "nothing; set a weight > 0 or online.consistency=none")
    if o.consistency == "none" and o.consistency_weight.weight > 0:
        raise SemisamError("online.consistency_weight.weight > 0 needs a consistency kind; set "
                           "online.consistency=mean_teacher or weak_strong")
    if o.sam_weight.weight > 0 and not cfg.teacher.enabled:
        raise SemisamError("online.sam_weight.weight > 0 needs a SAM teacher; pick one (teacher=litemedsam) or set "
                           "online.sam_weight.weight=0")
    if o.feature_perturbation > 0 and o.consistency != "weak_strong":
        raise SemisamError(f"online.feature_perturbation={o.feature_perturbation} is a branch of weak_strong "
                           f"consistency; set online.consistency=weak_strong or online.feature_perturbation=0")
    if o.sam_mode == "iteration" and o.sam_weight.weight > 0 and cfg.student.configuration != "2d":
        raise SemisamError(f"online.sam_mode=iteration labels 2D patches; student.configuration="
                           f"{cfg.student.configuration} trains on other patches: use online.sam_mode=refresh")
    if o.trains and cfg.loop.max_rounds > 0:
        raise SemisamError("online training (online.*) and pseudo-label rounds (loop.max_rounds > 0) are separate "
                           "methods; set loop.max_rounds=0 or online=none")


def _validate_gpus(cfg: RunConfig) -> None:
    """``student.num_gpus > 1`` (nnU-Net's DDP): CUDA with that many GPUs, and not an online student."""
    n = cfg.student.num_gpus
    if n <= 1:
        return
    if cfg.device in ("cpu", "mps"):
        raise SemisamError(f"student.num_gpus={n} trains with nnU-Net's DDP on CUDA GPUs, but device={cfg.device}; "
                           "set device=cuda (or auto), or student.num_gpus=1")
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < n:
        raise SemisamError(f"student.num_gpus={n} needs {n} CUDA GPUs, this machine has {have}; "
                           f"lower student.num_gpus to {max(have, 1)}")
    if cfg.online.trains:
        raise SemisamError("online training (online.*) is not built for nnU-Net's DDP; set student.num_gpus=1")

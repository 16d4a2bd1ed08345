"""The recipe's ``online.*`` (:class:`semisam.config.schema.OnlineConfig`) as plain values for the trainer, and
the weight schedule λ(t)."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping

from semisam.config.schema import OnlineConfig, WeightSchedule, settings_of, trains_online
from semisam.utils.errors import SemisamError

CONSISTENCY_KINDS = ("none", "mean_teacher", "weak_strong")


@settings_of(WeightSchedule)
class Ramp:
    """λ(t) of :class:`semisam.config.schema.WeightSchedule`; ``t`` is the fraction of training done."""

    def __post_init__(self) -> None:
        for name in ("weight", "start", "ramp_up", "ramp_down"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise SemisamError(f"weight schedule {name}={v!r} must be a finite number >= 0")
        for name in ("start", "ramp_up", "ramp_down"):
            if getattr(self, name) > 1:
                raise SemisamError(f"weight schedule {name}={getattr(self, name)!r} is a fraction of training; "
                                   "it must lie in [0, 1]")
        if self.start + self.ramp_up + self.ramp_down > 1 + 1e-9:
            raise SemisamError(f"weight schedule start + ramp_up + ramp_down = "
                               f"{self.start + self.ramp_up + self.ramp_down:g} exceeds 1; shorten the ramps")

    @property
    def on(self) -> bool:
        return self.weight > 0

    def __call__(self, t: float) -> float:
        """λ at fraction ``t`` of training: 0 before ``start``, sigmoid ramp-up exp(-5 (1 - x)²) over
        ``ramp_up``, ``weight``, cosine ramp-down to 0 over the last ``ramp_down``."""
        if self.weight == 0 or t < self.start:
            return 0.0
        up = 1.0
        if self.ramp_up > 0:
            x = min(1.0, (t - self.start) / self.ramp_up)
            up = math.exp(-5.0 * (1.0 - x) ** 2)
        down = 1.0
        if self.ramp_down > 0:
            x = min(1.0, max(0.0, (t - (1.0 - self.ramp_down)) / self.ramp_down))
            down = 0.5 * (1.0 + math.cos(math.pi * x))
        return float(self.weight * up * down)


@settings_of(OnlineConfig, nested={"consistency_weight": Ramp, "sam_weight": Ramp})
class OnlineSettings:
    """What the trainer needs of ``online.*`` (see the schema for each field's meaning), checked again here: the
    trainer may be configured from a JSON file, outside the recipe's validation."""

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_KINDS:
            raise SemisamError(f"online.consistency={self.consistency!r}; choose one of {', '.join(CONSISTENCY_KINDS)}")
        if self.weak_teacher not in ("ema", "student"):
            raise SemisamError(f"online.weak_teacher={self.weak_teacher!r}; choose ema or student")
        if self.sam_prompter not in ("ema", "student"):
            raise SemisamError(f"online.sam_prompter={self.sam_prompter!r}; choose ema or student")
        if self.sam_mode not in ("refresh", "iteration"):
            raise SemisamError(f"online.sam_mode={self.sam_mode!r}; choose refresh or iteration")
        if self.sam_refresh_every < 1:
            raise SemisamError(f"online.sam_refresh_every={self.sam_refresh_every} must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise SemisamError(f"online.ema_decay={self.ema_decay} must lie in [0, 1)")

    @property
    def enabled(self) -> bool:
        """Whether training draws unlabeled batches at all (a consistency kind with a weight, or a SAM term): the
        recipe's ``online.trains``."""
        return trains_online(self)

    @property
    def needs_ema(self) -> bool:
        return self.enabled and (self.consistency == "mean_teacher"
                                 or (self.sam_weight.on and self.sam_prompter == "ema")
                                 or (self.consistency == "weak_strong" and self.weak_teacher == "ema"))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "OnlineSettings":
        """From the recipe's ``online`` node as a dict (unknown keys refused)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SemisamError(f"online: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        for name in ("consistency_weight", "sam_weight"):
            if name in values and not isinstance(values[name], Ramp):
                ramp = dict(values[name] or {})
                bad = sorted(set(ramp) - {f.name for f in fields(Ramp)})
                if bad:
                    raise SemisamError(f"online.{name}: unknown key {bad[0]!r}; known: weight, start, ramp_up, ramp_down")
                values[name] = Ramp(**ramp)
        return cls(**values)

    @classmethod
    def from_config(cls, cfg) -> "OnlineSettings":
        """From a composed recipe (:class:`semisam.config.schema.RunConfig`)."""
        return cls.of(cfg.online)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {g.name: getattr(v, g.name) for g in fields(v)} if isinstance(v, Ramp) else v
        return out

"""Experiment tracking: a local ``metrics.json`` (the source of truth) and an optional W&B run (a sink).

One :class:`Tracker` per experiment. It fans every call out to a :class:`LocalSink` (always) and to one
W&B run (unless ``mode="disabled"``)::

    tracker = Tracker.create(mode="offline", project="semisam", run_dir=run_dir, config=resolved_cfg,
                             name="nuclei-agree", tags=["samdsk"])
    tracker.log_training_curve(0, trainer.logger.my_fantastic_logging)   # per-epoch student curves
    tracker.log_round(0, record)                                          # one round record (see report.py)
    tracker.log_images(1, {"gallery": run_dir / "round_01" / "gallery.png"})
    tracker.finish()                                                      # prints the `wandb sync` hint

Modes: ``offline`` (the default for users: works without an account, files under
``<dir>/wandb/offline-run-*``, upload later with ``wandb sync``), ``online`` (needs ``wandb login`` or
``WANDB_API_KEY``), ``disabled`` (no W&B at all; ``metrics.json`` is still written). ``dir`` defaults to
``WANDB_DIR`` if set, else the run folder.

What the W&B workspace shows (keys, x-axes):

- ``round/...`` — one row per loop round, the round record flattened with ``/`` (``round/test/dice_mean``,
  ``round/accept_rate``, ``round/timings/train_s``, ``round/cache/hits``, ...), x-axis ``round``.
- ``student/...`` — nnU-Net's per-epoch curves of every round's student (``student/train_loss``,
  ``student/val_loss``, ``student/pseudo_dice``, ``student/ema_pseudo_dice``, ``student/lr``,
  ``student/epoch_s``, ``student/pseudo_dice/class_<k>``) on one continuous x-axis
  ``student/global_epoch`` (epochs of all rounds back to back; ``student/round`` and ``student/epoch``
  are logged beside it), so one chart per metric shows every round. In addition
  ``student_by_round/<metric>`` is a line-series chart overlaying the rounds' curves against the epoch.
- ``images/<name>`` — images per round (x-axis ``round``).
- summary: ``selected/...`` — the selected round (last trained, or best validation Dice; never chosen by
  test Dice) flattened with ``/`` (``selected/round``, ``selected/selection``, ``selected/test/dice_mean``,
  ``selected/test/dice_per_class/<name>``, ``selected/delta_vs_round0/dice_mean``, ...; see
  ``semisam.tracking.report``), set by :meth:`Tracker.log_selected` at the end of a run, plus whatever
  :meth:`Tracker.summary` receives (the loop's ``summary.json``).

Resume: the run id is stored in ``<run_dir>/wandb_run_id``; a rerun of the same experiment continues the
same W&B run (``wandb.init(id=..., resume="allow")``). Rows are logged with an explicit, monotonically
increasing ``step`` kept in ``metrics.json`` (an offline resume would otherwise restart W&B's step at 0).
An offline experiment resumed N times leaves N ``offline-run-*-<id>`` folders; ``wandb sync`` them together
(the finish hint prints the glob).
"""
from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from semisam.utils.errors import SemisamError
from semisam.utils.io import atomic_write_path, write_json_atomic
from semisam.utils.registry import suggest

MODES = ("offline", "online", "disabled")
RUN_ID_FILE = "wandb_run_id"
METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 1

# nnU-Net LocalLogger key -> our curve name. Per-class pseudo Dice is expanded to "pseudo_dice/class_<k>".
NNUNET_CURVE_KEYS = {
    "train_losses": "train_loss",
    "val_losses": "val_loss",
    "mean_fg_dice": "pseudo_dice",
    "ema_fg_dice": "ema_pseudo_dice",
    "lrs": "lr",
}
# curves that also get a per-round overlay chart in W&B
OVERLAY_CURVES = ("train_loss", "val_loss", "pseudo_dice")


# ----------------------------------------------------------------------------------------------- helpers
def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Flatten nested dicts: ``{"test": {"dice_mean": .8}}`` -> ``{"test/dice_mean": .8}``.

    Args:
        metrics: nested mapping; leaves of any type.
        prefix: prepended to every key (``"round"`` gives ``"round/test/dice_mean"``).
        sep: separator between levels.

    Returns:
        A flat dict (insertion order kept). ``None`` leaves and empty dicts are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name, sep))
        elif value is not None:
            out[name] = value
    return out


def _scalar(value: Any) -> float | int | bool | str | None:
    """A W&B-loggable scalar, or ``None`` for what W&B should not get (lists, arrays, NaN stays NaN)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1:
        return _scalar(value.item())
    if isinstance(value, str):
        return value
    return None


def _jsonable(obj: Any) -> Any:
    """Deep copy with numpy scalars/arrays and paths turned into JSON types; NaN/inf become ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def nnunet_curves(nnunet_logging: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per-epoch curves from nnU-Net's logger dict (``trainer.logger.my_fantastic_logging``).

    Args:
        nnunet_logging: nnU-Net's ``LocalLogger`` lists (``train_losses``, ``val_losses``, ``mean_fg_dice``,
            ``ema_fg_dice``, ``dice_per_class_or_region``, ``lrs``, ``epoch_start_timestamps``,
            ``epoch_end_timestamps``); any may be missing. Also accepted: a checkpoint dict with a
            ``"logging"`` key.

    Returns:
        ``{name: [value per epoch]}`` with names ``train_loss, val_loss, pseudo_dice, ema_pseudo_dice, lr,
        epoch_s, pseudo_dice/class_<k>`` (k = 1.. foreground class or region). All lists are cut to the
        number of completed epochs (the shortest non-empty list, as nnU-Net's own progress plot does).
    """
    if "logging" in nnunet_logging and isinstance(nnunet_logging["logging"], Mapping):
        nnunet_logging = nnunet_logging["logging"]
    curves: dict[str, list[float]] = {}
    for key, name in NNUNET_CURVE_KEYS.items():
        values = nnunet_logging.get(key)
        if values:
            curves[name] = [float(v) for v in values]
    starts = nnunet_logging.get("epoch_start_timestamps") or []
    ends = nnunet_logging.get("epoch_end_timestamps") or []
    if starts and ends:
        curves["epoch_s"] = [float(e) - float(s) for s, e in zip(starts, ends)]
    per_class = nnunet_logging.get("dice_per_class_or_region") or []
    if per_class:
        n_classes = min(len(np.atleast_1d(v)) for v in per_class)
        for k in range(n_classes):
            curves[f"pseudo_dice/class_{k + 1}"] = [float(np.atleast_1d(v)[k]) for v in per_class]
    n_epochs = min((len(v) for v in curves.values()), default=0)
    return {name: values[:n_epochs] for name, values in curves.items()}


def load_nnunet_logging(checkpoint_path: str | os.PathLike) -> dict[str, Any]:
    """Read nnU-Net's per-epoch logging dict from a checkpoint (``checkpoint_final.pth``'s ``"logging"``), with
    :func:`semisam.student.checkpoint.read_checkpoint` (``weights_only=True``).

    Raises:
        SemisamError: the file is missing or has no ``"logging"`` entry.
    """
    from semisam.student.checkpoint import read_checkpoint

    path = Path(checkpoint_path)
    if not path.is_file():
        raise SemisamError(f"nnU-Net checkpoint {path} does not exist; train the student first")
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or "logging" not in checkpoint:
        raise SemisamError(f"{path} has no 'logging' entry; is it an nnU-Net v2 checkpoint?")
    return checkpoint["logging"]


def new_run_id(length: int = 8) -> str:
    """A fresh W&B-style run id: lowercase letters and digits."""
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


# ----------------------------------------------------------------------------------------------- local
class LocalSink:
    """``<run_dir>/metrics.json``, rewritten atomically after every call; reloaded on resume.

    Layout::

        {"schema_version": 1,
         "rounds": [round record, ...]          # sorted by "round"; a round logged again replaces its record
         "training_curves": {"<round>": {"train_loss": [...], ...}},
         "images": {"<round>": {"<name>": "<path>"}},
         "summary": {...},                       # flattened with "/" (as the W&B summary)
         "selected": {...} | None,               # the selected round's entry (semisam.tracking.report)
         "wandb": {"mode": ..., "run_id": ..., "step": <last W&B step used>}}
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "rounds": [],
            "training_curves": {},
            "images": {},
            "summary": {},
            "selected": None,
            "wandb": {},
        }
        if self.path.is_file():
            import json

            try:
                loaded = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise SemisamError(f"{self.path} is not valid JSON ({err}); move it away to start afresh")
            self.data.update(loaded)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The round records, sorted by round (copies)."""
        return copy.deepcopy(self.data["rounds"])

    def log_round(self, round_idx: int, metrics: Mapping[str, Any]) -> None:
        record = _jsonable(dict(metrics))
        record["round"] = int(round_idx)
        rounds = [r for r in self.data["rounds"] if r.get("round") != int(round_idx)]
        rounds.append(record)
        self.data["rounds"] = sorted(rounds, key=lambda r: r["round"])
        self.save()

    def log_training_curve(self, round_idx: int, curves: Mapping[str, list[float]]) -> None:
        self.data["training_curves"][str(int(round_idx))] = _jsonable(dict(curves))
        self.save()

    def epochs_before(self, round_idx: int) -> int:
        """Number of student epochs logged for rounds before ``round_idx`` (the global epoch offset)."""
        total = 0
        for key, curves in self.data["training_curves"].items():
            if int(key) < round_idx and curves:
                total += max(len(v) for v in curves.values())
        return total

    def log_images(self, round_idx: int, paths: Mapping[str, str]) -> None:
        self.data["images"].setdefault(str(int(round_idx)), {}).update(paths)
        self.save()

    def summary(self, values: Mapping[str, Any]) -> None:
        self.data["summary"].update(_jsonable(dict(values)))
        self.save()

    def set_wandb(self, **values: Any) -> None:
        self.data["wandb"].update(_jsonable(values))
        self.save()

    def save(self) -> Path:
        return write_json_atomic(self.path, self.data)


# ----------------------------------------------------------------------------------------------- tracker
class Tracker:
    """Fans out to :class:`LocalSink` and (unless disabled) one W&B run. Build with :meth:`create`."""

    def __init__(self, local: LocalSink, run: Any | None, mode: str, wandb_dir: Path | None):
        self.local = local
        self.run = run
        self.mode = mode
        self.wandb_dir = wandb_dir
        self._finished = False
        self._step = int(local.data["wandb"].get("step", -1))
        if run is not None:
            self._step = max(self._step, int(getattr(run, "step", 0) or 0) - 1)

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        mode: str,
        project: str,
        run_dir: str | os.PathLike,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        entity: str | None = None,
        group: str | None = None,
        resume_id: str | None = None,
        dir: str | os.PathLike | None = None,  # noqa: A002 - mirrors wandb.init(dir=...)
    ) -> "Tracker":
        """Open the experiment's tracker (one W&B run per experiment, resumed when the run folder has one).

        Args:
            mode: ``"offline"`` (default for users), ``"online"`` or ``"disabled"``.
            project: W&B project name.
            run_dir: the experiment's folder; gets ``metrics.json`` and ``wandb_run_id``.
            config: the resolved experiment config (plain dict), stored as the W&B run config.
            name, tags, entity: W&B display name, tags and entity (team/user; ``None`` = default).
            group: W&B run group (``semisam compare`` puts the runs of one comparison in one group).
            resume_id: continue this W&B run id; default: the id stored in ``run_dir/wandb_run_id`` if any,
                else a new id (then written there).
            dir: where W&B writes its ``wandb/`` folder; default ``WANDB_DIR`` if set, else ``run_dir``.

        Raises:
            SemisamError: unknown mode; online mode without W&B credentials; wandb.init failing.
        """
        if mode not in MODES:
            raise SemisamError(
                f"unknown W&B mode '{mode}'{suggest(str(mode), MODES)}; choose one of: {', '.join(MODES)}"
            )
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config = _plain_config(config)
        local = LocalSink(run_dir)
        if mode == "disabled":
            local.set_wandb(mode=mode)
            return cls(local, None, mode, None)

        import wandb

        wandb_dir = Path(dir or os.environ.get("WANDB_DIR") or run_dir).resolve()
        wandb_dir.mkdir(parents=True, exist_ok=True)
        if mode == "online":
            require_wandb_credentials()
        id_file = run_dir / RUN_ID_FILE
        run_id = resume_id or (id_file.read_text().strip() if id_file.is_file() else "") or None
        if run_id is None:
            run_id = new_run_id()
        if not id_file.is_file() or id_file.read_text().strip() != run_id:
            with atomic_write_path(id_file) as tmp:
                tmp.write_text(run_id + "\n")
        if mode == "offline":
            _avoid_same_second_folder(wandb_dir, run_id)
        try:
            run = wandb.init(
                mode=mode,
                project=project,
                entity=entity,
                name=name,
                tags=list(tags) if tags else None,
                group=group,
                config=config,
                id=run_id,
                resume="allow",
                dir=str(wandb_dir),
                allow_val_change=True,
                reinit="finish_previous",
            )
        except wandb.errors.Error as err:
            raise SemisamError(
                f"wandb.init failed ({err}); use logger.wandb=offline to log without a server"
            ) from None
        run.define_metric("round")
        run.define_metric("round/*", step_metric="round")
        run.define_metric("images/*", step_metric="round")
        run.define_metric("student/global_epoch")
        run.define_metric("student/*", step_metric="student/global_epoch")
        local.set_wandb(mode=mode, run_id=run.id, project=project, dir=str(wandb_dir), group=group)
        return cls(local, run, mode, wandb_dir)

    # ---------------------------------------------------------------- logging
    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    @property
    def records(self) -> list[dict[str, Any]]:
        """The round records logged so far (from ``metrics.json``), sorted by round."""
        return self.local.records

    def _wandb_log(self, row: dict[str, Any]) -> None:
        if self.run is None or not row:
            return
        self._step += 1
        self.run.log(row, step=self._step)
        self.local.data["wandb"]["step"] = self._step  # saved with the local write that follows

    def log_round(self, round_idx: int, metrics: Mapping[str, Any]) -> None:
        """Record one round (see ``semisam.tracking.report`` for the record schema).

        Locally the record is stored as given (JSON types). W&B gets the numeric/string leaves flattened as
        ``round/<path>`` with x-axis ``round``. No round is picked here (see :meth:`log_selected`).
        """
        flat = {}
        for key, value in flatten_metrics(metrics, prefix="round").items():
            if key == "round/round":
                continue
            scalar = _scalar(value)
            if scalar is not None:
                flat[key] = scalar
        self._wandb_log({"round": int(round_idx), **flat})
        self.local.log_round(round_idx, metrics)

    def log_training_curve(self, round_idx: int, nnunet_logging: Mapping[str, Any]) -> dict[str, list[float]]:
        """Log one round's student training curves (nnU-Net's per-epoch logger dict).

        Args:
            round_idx: the loop round whose student produced the curves.
            nnunet_logging: ``trainer.logger.my_fantastic_logging``, a checkpoint's ``"logging"`` entry, or
                the checkpoint dict itself (see :func:`load_nnunet_logging`).

        Returns:
            The curves as stored locally (see :func:`nnunet_curves`).
        """
        curves = nnunet_curves(nnunet_logging)
        offset = self.local.epochs_before(round_idx)
        n_epochs = min((len(v) for v in curves.values()), default=0)
        for epoch in range(n_epochs):
            row = {
                "student/global_epoch": offset + epoch,
                "student/round": int(round_idx),
                "student/epoch": epoch,
            }
            row.update({f"student/{name}": values[epoch] for name, values in curves.items()})
            self._wandb_log(row)
        self.local.log_training_curve(round_idx, curves)
        if self.run is not None:
            self._log_overlays()
        return curves

    def log_training_epoch(self, record: Mapping[str, Any]) -> None:
        """Log one epoch of a training as it happens (the online trainer calls this at each epoch's end):
        W&B gets ``train_live/<key>`` for each numeric value of ``record`` (losses per term, λ values,
        confidence-mask coverage, pseudo-label refresh stats, nnU-Net's pseudo Dice and its EMA) and
        ``train_live/epoch``."""
        row = {f"train_live/{k}": _scalar(v) for k, v in record.items() if _scalar(v) is not None}
        self._wandb_log(row)
        if self.run is not None:
            self.local.save()

    def _log_overlays(self) -> None:
        """Line-series charts overlaying every round's curve (x: epoch within the round)."""
        import wandb

        all_curves = self.local.data["training_curves"]
        row = {}
        for metric in OVERLAY_CURVES:
            rounds = sorted((int(r) for r, c in all_curves.items() if c.get(metric)))
            if not rounds:
                continue
            ys = [all_curves[str(r)][metric] for r in rounds]
            n = max(len(y) for y in ys)
            row[f"student_by_round/{metric}"] = wandb.plot.line_series(
                xs=list(range(n)),
                ys=[y + [float("nan")] * (n - len(y)) for y in ys],
                keys=[f"round {r}" for r in rounds],
                title=f"student {metric} per round",
                xname="epoch",
            )
        self._wandb_log(row)
        self.local.save()

    def log_images(self, round_idx: int, images: Mapping[str, str | os.PathLike | np.ndarray]) -> None:
        """Log images for a round: PNG paths or arrays ((Y, X) grey or (Y, X, 3|4) RGB(A), uint8 or [0, 1]).

        Arrays are also saved as ``<run_dir>/images/r<round>_<name>.png`` so the local record is complete.
        """
        paths: dict[str, str] = {}
        for key, image in images.items():
            if isinstance(image, (str, os.PathLike)):
                path = Path(image)
                if not path.is_file():
                    raise SemisamError(f"image {path} for '{key}' does not exist")
            else:
                path = self.local.run_dir / "images" / f"r{int(round_idx):02d}_{key}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                import matplotlib.image as mpimg

                array = np.asarray(image)
                with atomic_write_path(path) as tmp:
                    mpimg.imsave(tmp, array, cmap="gray" if array.ndim == 2 else None)
            paths[key] = str(path)
        if self.run is not None:
            import wandb

            row = {f"images/{k}": wandb.Image(p, caption=f"round {round_idx}: {k}") for k, p in paths.items()}
            self._wandb_log({"round": int(round_idx), **row})
        self.local.log_images(round_idx, paths)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run-level summary values (nested dicts flattened with ``/``)."""
        flat = flatten_metrics(values)
        if self.run is not None:
            for key, value in flat.items():
                scalar = _scalar(value)
                if scalar is not None:
                    self.run.summary[key] = scalar
        self.local.summary(flat)

    def log_selected(self, selected: Mapping[str, Any] | None) -> None:
        """Record the selected round's entry (``semisam.tracking.report.selected_entry``).

        ``metrics.json`` gets it as its top-level ``selected``; the summary (local and W&B) gets it flattened
        as ``selected/...``. Keys of an earlier selection (a resumed run) and old ``best/*`` keys that the
        new entry does not set are removed, so the summary never mixes two selections.
        """
        flat = flatten_metrics({"selected": selected}) if selected else {}
        stale = [k for k in self.local.data["summary"]
                 if k.startswith(("selected/", "best/")) and k not in flat]
        for key in stale:
            self.local.data["summary"].pop(key, None)
            if self.run is not None:
                try:
                    del self.run.summary[key]
                except Exception:  # noqa: BLE001 - a key W&B no longer holds
                    pass
        self.local.data["selected"] = None if selected is None else _jsonable(dict(selected))
        if flat:
            self.summary(flat)
        self.local.save()

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run (idempotent). In offline mode, print one line telling how to upload it."""
        if self._finished:
            return
        self._finished = True
        self.local.save()
        if self.run is None:
            return
        run_id = self.run.id
        self.run.finish(exit_code=exit_code)
        if self.mode == "offline":
            print(
                f"semisam: W&B run {run_id} saved offline; upload it with: "
                f"wandb sync {self.wandb_dir}/wandb/offline-run-*-{run_id}",
                file=sys.stderr,
            )

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


# ----------------------------------------------------------------------------------------------- private
def _plain_config(config: Any) -> dict[str, Any]:
    """A resolved plain dict from a dict or an OmegaConf/Hydra config."""
    if config is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return _jsonable(dict(config))


def _avoid_same_second_folder(wandb_dir: Path, run_id: str) -> None:
    """Wait for the next second if this run already has an offline folder stamped with the current one.

    wandb names offline folders ``offline-run-<YYYYmmdd_HHMMSS>-<id>``; a resume within the same second
    would reuse (and truncate) the previous folder's log.
    """
    import time
    from datetime import datetime

    stamps = {p.name.split("-")[2] for p in (wandb_dir / "wandb").glob(f"offline-run-*-{run_id}")}
    while datetime.now().strftime("%Y%m%d_%H%M%S") in stamps:
        time.sleep(0.05)


def require_wandb_credentials() -> None:
    """Raise one :class:`SemisamError` line unless W&B online mode can log in without prompting."""
    if not _has_wandb_credentials():
        raise SemisamError(
            "W&B online mode needs an account: run `wandb login` (or set WANDB_API_KEY), "
            "or log offline with logger.wandb=offline (or turn it off with logger.wandb=disabled)"
        )


def _has_wandb_credentials() -> bool:
    """True when an API key is configured (env var, netrc, or settings); never prompts."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:  # wandb's own lookup (private module; if it moves, wandb.init's own error is translated instead)
        import wandb
        from wandb.sdk.lib.wbauth import authenticate

        host = wandb.Settings().base_url
        return authenticate.authenticate_session(
            host=host, source="semisam", prompt=False, update_session=False
        ) is not None
    except Exception:  # noqa: BLE001 - fall back to letting wandb.init decide
        return True

"""Run folder state: which steps are complete, so that rerunning the same command resumes.

Every step of a run writes into its own folder and is recorded in ``manifest.json`` *last*, atomically.
A step recorded there is complete and is skipped on the next run; a step that was interrupted is run again
from the start (its folder, or the files it writes, replaced). What interrupted atomic writes left (temporary
names of :mod:`semisam.utils.io`) is removed when the run folder is opened again.

The manifest also holds the run's identity (:func:`run_identity`): a fingerprint of the resolved recipe's
values that change results and one of the dataset's content (:mod:`semisam.data.identity`), with the values
and the dataset's parts kept beside them. Resuming a run folder with another recipe or dataset is refused
with one line naming what changed (suggests ``restart=true``), because mixing rounds from two recipes or two
datasets would make the report lie. Left out, because they do not change what is computed (only speed, logs,
or where the embedding cache lives): :data:`NOT_RESULTS`.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from semisam.utils.errors import SemisamError
from semisam.utils.io import remove_temporaries, write_json_atomic

MANIFEST = "manifest.json"


#: Recipe keys (dotted prefixes) that do not change results, left out of the fingerprint: the device and the
#: worker counts (speed; ``num_processes_da`` changes which random augmentation stream a worker draws, not the
#: method: see docs/architecture.md, Seeds and determinism; ``num_gpus`` likewise splits each batch over nnU-Net's
#: DDP processes), logging, ``restart``, and the teacher's cache
#: location, in-memory cache size, disk cap (an evicted embedding is computed again, the same values) and
#: prompts per decoder call (the decoder treats each prompt on its own). ``teacher.cache_dtype`` is not among
#: them: float16 embeddings change SAM's logits slightly (see :mod:`semisam.teacher.cache`), so a mask pixel can
#: flip.
NOT_RESULTS = ("device", "restart", "logger", "student.num_processes", "student.num_processes_da", "student.num_gpus",
               "teacher.cache_dir", "teacher.cache_memory_items", "teacher.cache_max_gb", "teacher.decode_batch")


#: Student settings that only rounds after round 0 use (whether and how they fine-tune): runs that differ only
#: in them train the same round 0 and can share it (``loop.init_from``). In the round-0 fingerprint
#: ``student.init`` counts as ``"scratch"`` (how round 0 is always trained) and the others are left out, so
#: fingerprints stored before they existed still match.
AFTER_ROUND0 = ("student.init", "student.finetune_lr", "student.finetune_epochs", "student.pseudo_augmentation")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def recipe_values(config: dict[str, Any], ignore: tuple[str, ...] = NOT_RESULTS) -> dict[str, Any]:
    """The resolved recipe as ``{dotted key: value}``, without the keys under ``ignore``."""
    return {k: v for k, v in _flatten(config).items()
            if not any(k == i or k.startswith(i + ".") for i in ignore)}


def config_fingerprint(config: dict[str, Any], ignore: tuple[str, ...] = NOT_RESULTS) -> str:
    """A stable hash of the values of the resolved recipe that change results (see :data:`NOT_RESULTS`)."""
    return _hash(recipe_values(config, ignore))


def _dataset_id(raw_dir: str) -> str:
    from semisam.data.identity import RUN_PARTS, dataset_identity

    return dataset_identity(raw_dir, RUN_PARTS)


def round0_fingerprint(config: dict[str, Any]) -> str:
    """A hash of what determines round 0 (the supervised student): dataset (folder and content), student
    settings (not its worker counts; :data:`AFTER_ROUND0` as round 0 uses them) and seed.

    Two runs with the same round-0 fingerprint train the same supervised student, so one can reuse the
    other's (``loop.init_from``).
    """
    dataset = dict(config["dataset"])
    dataset["raw_dir"] = str(Path(dataset["raw_dir"]).resolve())
    dataset["identity"] = _dataset_id(dataset["raw_dir"])
    student = {k: v for k, v in config["student"].items() if f"student.{k}" not in NOT_RESULTS + AFTER_ROUND0}
    student["init"] = "scratch"  # round 0 trains from scratch whatever later rounds do (see AFTER_ROUND0)
    payload = {"dataset": dataset, "student": student, "seed": config["seed"]}
    if _online_on(_flatten({"online": config.get("online", {})})):  # an online student is another round 0
        payload["online"] = config["online"]
        payload["teacher"] = {k: v for k, v in config["teacher"].items() if f"teacher.{k}" not in NOT_RESULTS}
        payload["prompts"], payload["filters"] = config["prompts"], config["filters"]
    return _hash(payload)


def run_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a run folder's results depend on, as stored in its manifest under ``"identity"``.

    ``{"recipe": fingerprint, "dataset": fingerprint, "dataset_parts": {part: hash},
    "recipe_values": {dotted key: value}}``: the dataset's parts are :data:`semisam.data.identity.RUN_PARTS`
    (labelsHidden, read by evaluation only, is left out).
    """
    from semisam.data.identity import dataset_identity_parts

    raw_dir = config["dataset"]["raw_dir"]
    return {"recipe": config_fingerprint(config), "dataset": _dataset_id(raw_dir),
            "dataset_parts": dataset_identity_parts(raw_dir), "recipe_values": recipe_values(config)}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def resume_refusal(manifest: dict[str, Any], identity: dict[str, Any], run_dir: str | Path) -> str | None:
    """Why the run in ``manifest`` is not the run ``identity`` describes (one line), or None when it is.

    A manifest of an earlier semisam version (a ``"fingerprint"`` string, no ``"identity"``) never matches:
    it does not say which dataset it was computed on.
    """
    again = "rerun with restart=true to start over, or set run_dir to another folder"
    old = manifest.get("identity")
    if not isinstance(old, dict):
        return (f"{run_dir} holds a run of a different recipe (or of an earlier semisam version, whose manifest "
                f"does not record its dataset); {again}")
    reasons = []
    if old.get("dataset") != identity.get("dataset"):
        before, now = old.get("dataset_parts") or {}, identity.get("dataset_parts") or {}
        parts = [p for p in now if before.get(p) != now[p]] if before else []
        reasons.append(f"with another dataset ({', '.join(parts) or 'its files'} changed)")
    if old.get("recipe") != identity.get("recipe"):
        before, now = old.get("recipe_values") or {}, identity.get("recipe_values") or {}
        keys = [k for k in (*now, *(k for k in before if k not in now))
                if before.get(k, ...) != now.get(k, ...) and not _added_at_default(k, before, now)] if before else None
        if keys == []:  # only keys a newer semisam added, at their defaults: the same recipe
            return None if not reasons else f"{run_dir} holds a run {reasons[0]}; {again}"
        keys = keys or []
        shown = [f"{k} {_show(before[k]) if k in before else '(absent)'} → {_show(now[k]) if k in now else '(absent)'}"
                 for k in keys[:3]]
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        reasons.append(f"{'and ' if reasons else 'with '}another recipe"
                       + (f": {', '.join(shown)}{more}" if shown else ""))
    if not reasons:
        return None
    return f"{run_dir} holds a run {' '.join(reasons)}; {again}"


#: Keys added after manifests began recording recipes, with the value that reproduces the behaviour from before
#: they existed (a callable: the condition on the whole recipe). A run recorded without such a key, whose recipe
#: now holds that value, is the same run; any other value is another recipe.
ADDED_KEYS: dict[str, Any] = {
    **{f"prompts.{k}": v for k, v in (("box_margin_space", "image"), ("candidate_threshold", 0.0),
                                      ("source", "student"), ("second_pass", False))},
    **{f"prompts.{k}": (lambda now: now.get("prompts.source") != "everything")
       for k in ("everything_points_per_side", "everything_min_iou", "everything_min_stability", "match_iou")},
    **{f"prompts.{k}": (lambda now: not now.get("prompts.second_pass"))
       for k in ("second_pass_positive", "second_pass_negative", "second_pass_mask")},
    "filters.ensemble_mask": False,
    "filters.gray_zone": 0.0,
    "filters.student_confident": 1.0,
    "loop.final_finetune_epochs": 0,
    "loop.pseudo_loss_weight": 1.0,
    "loop.calibrate": [],
    # the teacher saw the first channel: null does the same on every dataset whose channels are not named R, G, B
    # (there, a run recorded before resumes with the colour view; teacher.channels=[0] keeps the red channel)
    "teacher.channels": None,
    # embeddings were cached in float32 (the default is now float16); without a teacher it changes nothing
    "teacher.cache_dtype": lambda now: (now.get("teacher.cache_dtype") == "float32" or now.get("teacher.name") == "none"
                                        or not now.get("loop.max_rounds")),
    # used only when rounds fine-tune (before, they restarted at student.initial_lr for student.epochs)
    "student.finetune_lr": lambda now: now.get("student.init") != "finetune",
    "student.finetune_epochs": lambda now: now.get("student.init") != "finetune",
    "student.pseudo_augmentation": "default",
    "online.sam_mode": "refresh",
    "online.feature_perturbation": 0.0,
    "online.sam_confidence": False,
    "online.sam_prompter": "ema",
    "online.scale_by_coverage": False,
    # online training (unlabeled batches inside nnU-Net's trainer): without it, the training is what it was
    **{f"online.{k}": (lambda now: not _online_on(now))
       for k in ("consistency", "sam_refresh_every", "ema_decay", "teacher_noise", "confidence", "weak_teacher",
                 "strong_brightness", "strong_contrast", "strong_blur", "strong_noise", "cutmix",
                 "unlabeled_batch_size")},
    **{f"online.{w}.{k}": (lambda now: not _online_on(now))
       for w in ("consistency_weight", "sam_weight") for k in ("weight", "start", "ramp_up", "ramp_down")},
}


def _online_on(values: dict[str, Any]) -> bool:
    """Whether a flattened recipe trains online (a consistency kind with a weight, or a SAM term)."""
    return ((values.get("online.consistency", "none") != "none" and values.get("online.consistency_weight.weight", 0) > 0)
            or values.get("online.sam_weight.weight", 0) > 0)


def _added_at_default(key: str, before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether ``key`` is missing from an older run's recipe only because semisam added it later, with a value
    that reproduces the older behaviour (:data:`ADDED_KEYS`)."""
    if key in before or key not in now or key not in ADDED_KEYS:
        return False
    same = ADDED_KEYS[key]
    return bool(same(now)) if callable(same) else now[key] == same


def holds_run(manifest: dict[str, Any], identity: dict[str, Any]) -> bool:
    """Whether ``manifest`` records the run described by ``identity`` (the same recipe on the same dataset)."""
    return resume_refusal(manifest, identity, "") is None


def check_resumable(run_dir: str | Path, identity: dict[str, Any]) -> None:
    """Raise one :class:`SemisamError` line if ``run_dir`` holds a run of another recipe or dataset."""
    manifest = read_manifest(run_dir)
    if manifest is not None:
        refusal = resume_refusal(manifest, identity, run_dir)
        if refusal:
            raise SemisamError(refusal)


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a run folder, or None when it has none (read-only; no fingerprint check)."""
    path = Path(run_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


class ManifestView:
    """Reading a run's manifest: which steps are complete, their results and times, the run's other keys."""

    run_dir: Path
    manifest: dict[str, Any]

    @property
    def resumed(self) -> bool:
        return bool(self.manifest["steps"])

    def done(self, step: str) -> bool:
        return step in self.manifest["steps"]

    def result(self, step: str) -> Any:
        return self.manifest["steps"][step]["result"]

    def result_or(self, step: str, default: Any = None) -> Any:
        """The step's result when it is done, else ``default``."""
        return self.result(step) if self.done(step) else default

    def seconds(self, step: str) -> float | None:
        entry = self.manifest["steps"].get(step)
        return None if entry is None else entry["seconds"]

    def get(self, key: str, default: Any = None) -> Any:
        return self.manifest.get(key, default)


class RunState(ManifestView):
    """The manifest of one run folder.

    Args:
        run_dir: the run folder (created if missing).
        identity: :func:`run_identity` of the resolved recipe (a plain string stands for a recipe
            fingerprint alone, for tools and tests without a dataset).
        restart: remove everything in ``run_dir`` first and start over.

    Raises:
        SemisamError: the folder cannot be written, or holds a run of another recipe or dataset.
    """

    def __init__(self, run_dir: str | Path, identity: dict[str, Any] | str, restart: bool = False):
        self.run_dir = Path(run_dir)
        if isinstance(identity, str):
            identity = {"recipe": identity}
        if restart and self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise SemisamError(f"run folder {self.run_dir} is not writable ({e.strerror}); choose another run_dir") from None
        self.path = self.run_dir / MANIFEST
        if self.path.exists():
            self.manifest = json.loads(self.path.read_text())
            refusal = resume_refusal(self.manifest, identity, self.run_dir)
            if refusal:
                raise SemisamError(refusal)
            # a run killed mid-write (SIGKILL, power loss) leaves temporaries that no rerun would otherwise reuse
            remove_temporaries(self.run_dir)
        else:
            self.manifest = {"identity": identity, "created": time.time(), "steps": {}}
            self._save()

    def run(self, step: str, fn: Callable[[], Any], collective: bool = False) -> Any:
        """Run ``fn`` unless ``step`` is complete; record its JSON-able result last.

        ``collective``: under torchrun every rank runs ``fn``, each its share (:mod:`semisam.loop.ranks`);
        in a single process it changes nothing."""
        if self.done(step):
            return self.result(step)
        start = time.time()
        result = fn()
        self.manifest["steps"][step] = {"result": result, "seconds": round(time.time() - start, 2)}
        self._save()
        return result

    def adopt(self, step: str, result: Any, seconds: float | None, source: str) -> None:
        """Record ``step`` as complete with another run's result (shared work, e.g. a common round 0)."""
        if self.done(step):
            return
        self.manifest["steps"][step] = {"result": result, "seconds": seconds, "shared_from": source}
        self._save()

    def set(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self._save()

    def _save(self) -> None:
        try:
            write_json_atomic(self.path, self.manifest)
        except OSError as e:
            raise SemisamError(
                f"cannot write {self.path} ({e.strerror}); free disk space or choose another run_dir, then rerun to resume"
            ) from None


ROUND0_STEPS = ("r0/dataset", "r0/preprocess", "r0/train", "r0/evaluate")


def _same_round0_today(base_dir: Path, base: dict[str, Any], fingerprint: str) -> bool:
    """Whether a base run's recorded recipe (``config.yaml``) has round-0 ``fingerprint`` by today's formula and
    its manifest recorded the dataset as it is now (so its round 0 was trained on it)."""
    import yaml

    config_file = base_dir / "config.yaml"
    identity = base.get("identity")
    if not config_file.is_file() or not isinstance(identity, dict):
        return False
    try:
        config = yaml.safe_load(config_file.read_text())
        return (round0_fingerprint(config) == fingerprint
                and identity.get("dataset") == _dataset_id(config["dataset"]["raw_dir"]))
    except (yaml.YAMLError, KeyError, TypeError, OSError):
        return False


def round0_steps(base_dir: Path, cfg: Any) -> dict[str, dict]:
    """The finished round-0 steps of the run in ``base_dir`` (``loop.init_from``), checked against ``cfg``.

    The base run must have trained the same round 0 (dataset, student settings, seed): its manifest's round-0
    fingerprint equals this run's, or — for a base stamped by an earlier semisam, whose fingerprint was computed
    another way — its ``config.yaml`` gives this run's fingerprint today and the dataset its manifest recorded is
    the dataset as it is now. Its files are used in place, never copied or changed.

    Raises:
        SemisamError: ``base_dir`` is the run's own folder, holds no run, trained another round 0, or has not
            finished round 0.
    """
    from semisam.config import to_dict

    where = f"loop.init_from={base_dir}"
    if base_dir.resolve() == Path(cfg.run_dir).resolve():
        raise SemisamError(f"{where} is this run's own folder; point it at another run")
    base = read_manifest(base_dir)
    if base is None:
        raise SemisamError(f"{where} holds no semisam run (no manifest.json); run the supervised recipe there first")
    mine = round0_fingerprint(to_dict(cfg))
    if base.get("round0_fingerprint") != mine and not _same_round0_today(base_dir, base, mine):
        raise SemisamError(f"{where} trained its round 0 with another dataset, student or seed than this run; "
                           "use a run of the same recipe values, or drop loop.init_from")
    steps = base.get("steps", {})
    missing = [s for s in ROUND0_STEPS if s not in steps]
    if missing:
        raise SemisamError(f"{where} has not finished round 0 (step {missing[0]} missing); finish that run first")
    return {s: steps[s] for s in ROUND0_STEPS}

"""The build step of a run: everything that can be checked before any work (compose → validate → build → run).

:func:`preflight` runs before the run folder is written (``run_experiment``) or alone (``semisam run --check``).
Each fault is one :class:`SemisamError` line, so a wrong path or a missing login fails at second 0, not after
round 0's training. In order:

1. the dataset opens and its labeled, unlabeled and test cases are listed (every listed file exists), and the
   validation split is possible;
2. ``loop.init_from`` names a finished round 0 of this recipe and dataset; ``loop.calibrate``'s rules compose
   with the run's teacher and there are at least 2 labeled training cases to leave out;
3. the run folder can be created (or is a folder we may write in), and a run already in it is this recipe on
   this dataset (unless ``restart=true``);
4. the teacher's weights, when rounds need a teacher (``loop.max_rounds > 0`` and ``teacher.name != none``):
   the checkpoint file is found (LiteMedSAM's embedded weights: SHA-256 checked) and its keys and shapes fit
   the architecture (memory-mapped, checked against the model built on the ``meta`` device); and
   ``teacher.channels`` names channels the dataset has;
5. W&B credentials for ``logger.wandb=online``;
6. free disk space against a rough estimate of the run's needs (:func:`disk_estimate`);
7. every case's files, read as nnU-Net and the teacher will read them (:func:`semisam.data.check_case_files`:
   unreadable files, NaN/Inf or constant images, labels of another shape or spacing or with undeclared
   values), last because it reads the whole dataset once. A run folder that already holds started steps of
   this run (same recipe, same dataset names and sizes) was checked when it started and is not read again.

Not an error: a recipe with rounds on a dataset without unlabeled cases runs the supervised baseline only
(:data:`NO_UNLABELED`, in :attr:`Built.notes`; ``semisam run --check`` prints it as a ``note:`` line).

Nothing here leaves a file behind (the run folder's writability is probed with an empty folder that is removed
at once).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semisam.config import RunConfig, to_dict
from semisam.data import RawDataset, check_case_files
from semisam.loop.cases import Cases, split_cases
from semisam.loop.state import check_resumable, read_manifest, round0_steps, run_identity
from semisam.utils.errors import SemisamError

GiB = 1024 ** 3
#: values in one cached image embedding: (256, 64, 64) for every real teacher, (32, 16, 16) for tiny_random;
#: 4 bytes each in float32, 2 in float16 (``teacher.cache_dtype``)
EMBEDDING_VALUES = {"tiny_random": 32 * 16 * 16}
EMBEDDING_VALUES_DEFAULT = 256 * 64 * 64
DTYPE_BYTES = {"float32": 4, "float16": 2}
_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


#: what a recipe with rounds does on a dataset without unlabeled cases (a documented skip, not an error)
NO_UNLABELED = ("no unlabeled cases: running the supervised baseline only (for semi-supervised rounds add unlabeled "
                "images to imagesTr/ or hold labels back with `python -m data_prep split --ratio r`; "
                "loop.max_rounds=0 asks for the baseline)")


@dataclass(frozen=True)
class Built:
    """What the build step found: the opened dataset, the run's cases and the run's identity (manifest), and
    notes for the user about what the run will skip."""

    dataset: RawDataset
    cases: Cases
    identity: dict[str, Any]
    notes: tuple[str, ...] = ()


def needs_teacher(cfg: RunConfig) -> bool:
    """Whether the run builds a SAM teacher: rounds after round 0, or an online SAM term inside round 0's
    training; ``teacher=none`` never builds one."""
    return cfg.teacher.enabled and (cfg.loop.max_rounds > 0 or cfg.online.sam_weight.weight > 0)


def preflight(cfg: RunConfig) -> Built:
    """Check everything a run needs before it writes anything (see the module docstring).

    Raises:
        SemisamError: the first fault, in one line.
    """
    dataset = RawDataset.open(cfg.dataset.raw_dir)
    cases = split_cases(dataset, cfg.dataset.num_val, cfg.seed)
    if cfg.loop.init_from:
        round0_steps(Path(cfg.loop.init_from), cfg)
    from semisam.loop.calibrate import check_calibration

    check_calibration(cfg, len(cases.train))
    run_dir = Path(cfg.run_dir)
    check_writable(run_dir)
    identity = run_identity(to_dict(cfg))
    if not cfg.restart:
        check_resumable(run_dir, identity)
    if needs_teacher(cfg):
        from semisam.teacher.models import check_teacher_checkpoint

        check_teacher_checkpoint(cfg.teacher.name, cfg.teacher.checkpoint)
        from semisam.teacher.preprocess import teacher_channels

        teacher_channels(cfg.teacher.channels, dataset.dataset_json["channel_names"])
    if cfg.logger.wandb == "online":
        from semisam.tracking.wandb_sink import require_wandb_credentials

        require_wandb_credentials()
    check_disk(run_dir, disk_estimate(cfg, dataset, cases))
    started = None if cfg.restart else read_manifest(run_dir)  # check_resumable: a manifest here is this run's
    if not (started and started.get("steps")):
        check_case_files(dataset, labeled=[*cases.train, *cases.val], unlabeled=cases.unlabeled, test=cases.test)
    notes = (NO_UNLABELED,) if cfg.loop.max_rounds > 0 and not cases.unlabeled else ()
    return Built(dataset, cases, identity, notes)


def check_writable(run_dir: Path) -> None:
    """Refuse a run folder that is a file, or whose nearest existing folder we may not write in: by its
    permissions, then by creating (and at once removing) an empty folder there."""
    path = Path(os.path.abspath(run_dir))
    if path.exists() and not path.is_dir():
        raise SemisamError(f"run folder {run_dir} is not writable (it is a file, not a folder); choose another run_dir")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SemisamError(f"run folder {run_dir} is not writable ({existing} is a file); choose another run_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SemisamError(f"run folder {run_dir} is not writable ({existing} is not writable); choose another run_dir")
    try:  # os.access trusts permission bits: root passes it everywhere, as do some network and FUSE mounts
        probe = tempfile.mkdtemp(prefix=".semisam-write-probe-", dir=existing)
    except OSError as e:
        raise SemisamError(f"run folder {run_dir} is not writable ({existing} is not writable: {e.strerror}); "
                           "choose another run_dir") from None
    os.rmdir(probe)


def _num_slices(file: Path, ending: str, axis: int) -> int:
    """Slices of a 3D image along ``axis`` of (Z, Y, X), from its header (1 for 2D files or when unreadable)."""
    if ending.lower() in _2D_ENDINGS:
        return 1
    try:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(file))
        reader.ReadImageInformation()
        size_zyx = tuple(reversed(reader.GetSize()))
        return int(size_zyx[axis]) if len(size_zyx) == 3 else 1
    except Exception:  # noqa: BLE001 - an estimate: an unreadable header counts one slice
        return 1


def disk_estimate(cfg: RunConfig, dataset: RawDataset, cases: Any) -> dict[str, int]:
    """A rough estimate, in bytes, of what a run writes (documented in docs/architecture.md, Before any work).

    ``data``: the dataset's case files (images and labels) × (``loop.max_rounds`` + 2): each round writes its
    training set and predictions, nnU-Net's preprocessed copy is at least as large (float32). ``cache``: one
    embedding per slice (along ``prompts.slice_axis``, counted from the first unlabeled case's header) of
    every unlabeled case, and of the labeled ones when the teacher adapts, in ``teacher.cache_dtype``, at most
    ``teacher.cache_max_gb``, when a teacher runs and the cache lives in the run folder (``teacher.cache_dir``
    unset). Checkpoints, plots and logs are not counted.
    """
    files = [f for c in (*cases.train, *cases.val, *cases.test) for f in (*c.image_files, c.label_file)]
    files += [f for c in cases.unlabeled for f in c.image_files]
    data = sum(Path(f).stat().st_size for f in files if Path(f).is_file()) * (cfg.loop.max_rounds + 2)
    cache = 0
    if needs_teacher(cfg) and not cfg.teacher.cache_dir and cases.unlabeled:
        per_case = _num_slices(Path(cases.unlabeled[0].image_files[0]), dataset.file_ending, cfg.prompts.slice_axis)
        n = len(cases.unlabeled) + (len(cases.train) if cfg.teacher.adapt.enabled else 0)
        values = EMBEDDING_VALUES.get(cfg.teacher.name, EMBEDDING_VALUES_DEFAULT)
        cache = n * per_case * values * DTYPE_BYTES[cfg.teacher.cache_dtype]
        if cfg.teacher.cache_max_gb is not None:
            cache = min(cache, int(cfg.teacher.cache_max_gb * 1e9))
    return {"data": data, "cache": cache}


def check_disk(run_dir: Path, estimate: dict[str, int]) -> None:
    """Refuse when the free space on the run folder's disk is below the estimate's total."""
    existing = Path(os.path.abspath(run_dir))
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    need = estimate["data"] + estimate["cache"]
    if free < need:
        raise SemisamError(
            f"not enough disk space for {run_dir}: about {_size(need)} needed (dataset files × (rounds + 2): "
            f"{_size(estimate['data'])}, embedding cache: {_size(estimate['cache'])}), {_size(free)} free on "
            f"{existing}; free space, or choose another run_dir (teacher.cache_dir moves the embedding cache elsewhere)"
        )


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"

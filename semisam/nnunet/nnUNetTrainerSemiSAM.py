"""``nnUNetTrainerSemiSAM``: nnU-Net's trainer with its length, learning rate, batch size and case sampling from
the recipe.

One class for every recipe (no ``nnUNetTrainer_Xepochs`` subclasses). The values come from either

* the Python API: ``trainer.apply_overrides(TrainerOverrides(...))`` before training (the student driver), or
* the environment: ``SEMISAM_TRAINER_CONFIG=/path/to/overrides.json`` (keys of :class:`TrainerOverrides`),
  read when the trainer is constructed, so that ``nnUNetv2_train DATASET 2d all -tr nnUNetTrainerSemiSAM``
  trains with the recipe's values too.

Only ``__init__`` (same signature as nnU-Net's, which its checkpoints rely on), ``initialize`` and
``get_dataloaders`` are overridden (the last two to seed, see :func:`seed_everything`, and to weight the
training loader's case sampling, see :func:`labeled_sampling_probabilities`); the training loop,
augmentation, validation and checkpointing are nnU-Net's.

Labeled oversampling: with ``labeled_cases`` and ``labeled_share`` the training loader draws a labeled case
with total probability ``labeled_share`` (uniform among the labeled cases) and one of the others (the
pseudo-labeled cases) with the remainder, through nnU-Net's own ``sampling_probabilities`` argument of
``nnUNetDataLoader`` (which the stock ``get_dataloaders`` sets to None). The validation loader stays uniform.
Rather than copying nnU-Net's 70-line ``get_dataloaders`` to change one argument, the name
``nnUNetDataLoader`` in nnU-Net's trainer module is replaced, while the stock method runs, by a function that
builds the stock loader with the probabilities filled in for the first loader built (nnU-Net builds the
training loader first, then the validation loader): the loaders are plain ``nnUNetDataLoader`` objects, so
augmentation worker processes receive them unchanged.

With ``seed`` set, the run is seeded at two places, each from its own stream derived from the seed
(:func:`derive_seed`), so that the data stream does not depend on how many random numbers the network
initialisation drew: python's ``random``, numpy's and torch's global generators right before the network
is built (its initial weights), and again right before the data loaders are built (nnU-Net's
``nnUNetDataLoader`` draws cases and patch positions from numpy's global generator, batchgeneratorsv2's
transforms from numpy's and torch's). With augmentation workers (``nnUNet_n_proc_DA`` > 0) every worker
process of nnU-Net's ``NonDetMultiThreadedAugmenter`` gets its own derived seed (nnU-Net passes none, so
workers seed numpy from the OS and, under ``fork``, all share the parent's torch state); the order in which
the workers' batches arrive still varies (see docs/architecture.md, "Seeds and determinism").

nnU-Net's trainer lookup imports this module by walking folders; it must import cheaply and safely, so the
torchvision compatibility shim is installed first and nothing else of semisam is imported at top level.
"""
from __future__ import annotations

import semisam.compat  # before anything imports torchvision (nnU-Net's lookup imports timm-based trainers)

semisam.compat.install()

import contextlib
import importlib
import itertools
import json
import os
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

# the module (not the class of the same name): get_dataloaders looks NonDetMultiThreadedAugmenter and
# nnUNetDataLoader up in it
_nnunet_trainer_module = importlib.import_module("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")

#: Environment variable naming a JSON file of :class:`TrainerOverrides` keys.
CONFIG_ENV_VAR = "SEMISAM_TRAINER_CONFIG"


def _error(message: str) -> Exception:
    from semisam.utils.errors import SemisamError  # light, but kept out of the import-time path

    return SemisamError(message)


@dataclass(frozen=True)
class TrainerOverrides:
    """Recipe values that replace nnU-Net's hard-coded ones; ``None`` keeps nnU-Net's default.

    Attributes:
        num_epochs: epochs (nnU-Net: 1000).
        num_iterations_per_epoch: training iterations per epoch (nnU-Net: 250).
        num_val_iterations_per_epoch: validation iterations per epoch, >= 1 (nnU-Net: 50).
        initial_lr: SGD's initial learning rate of the poly schedule (nnU-Net: 1e-2).
        batch_size: replaces the plans' batch size of the trained configuration.
        init_checkpoint: an nnU-Net checkpoint (``checkpoint_*.pth``) of the same network whose weights
            initialise the network (fine-tuning from a previous round); optimizer state and epoch counter
            are not taken from it.
        seed: an integer >= 0 that seeds the network's initial weights, case sampling and augmentation
            (nnU-Net: unseeded). See the module docstring.
        labeled_cases: identifiers of the labeled cases of the training set (the others are pseudo-labeled).
        labeled_share: the share of training samples drawn from ``labeled_cases``, in ``[0, 1)``; the other
            cases share the rest. 0 or None: nnU-Net's uniform sampling. Needs ``labeled_cases``.
    """

    num_epochs: int | None = None
    num_iterations_per_epoch: int | None = None
    num_val_iterations_per_epoch: int | None = None
    initial_lr: float | None = None
    batch_size: int | None = None
    init_checkpoint: str | None = None
    seed: int | None = None
    labeled_cases: Sequence[str] | None = None
    labeled_share: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "batch_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise _error(f"trainer override {name} must be an integer >= 1, got {v!r}")
        lr = self.initial_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise _error(f"trainer override initial_lr must be a number > 0, got {lr!r}")
        if self.init_checkpoint is not None:
            object.__setattr__(self, "init_checkpoint", str(self.init_checkpoint))
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise _error(f"trainer override seed must be an integer >= 0, got {seed!r}")
        cases = self.labeled_cases
        if cases is not None:
            if isinstance(cases, (str, bytes)) or not isinstance(cases, (list, tuple)) \
                    or not all(isinstance(c, str) for c in cases):
                raise _error(f"trainer override labeled_cases must be a list of case identifiers, got {cases!r:.80}")
            object.__setattr__(self, "labeled_cases", tuple(cases))
        share = self.labeled_share
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                                  or not 0 <= share < 1):
            raise _error(f"trainer override labeled_share must be a number in [0, 1), got {share!r}")
        if share and cases is None:
            raise _error("trainer override labeled_share needs labeled_cases (the labeled case identifiers)")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "trainer overrides") -> "TrainerOverrides":
        """Build from a dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise _error(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        return cls(**dict(values))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainerOverrides":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise _error(f"{CONFIG_ENV_VAR} points to {path}, which does not exist") from None
        except json.JSONDecodeError as e:
            raise _error(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(values, dict):
            raise _error(f"{path} must hold a JSON object of trainer overrides")
        return cls.from_mapping(values, source=str(path))

    @classmethod
    def from_env(cls) -> "TrainerOverrides":
        """Overrides from ``$SEMISAM_TRAINER_CONFIG``; none if it is unset or empty."""
        path = os.environ.get(CONFIG_ENV_VAR)
        return cls.from_json(path) if path else cls()

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write the set values as JSON (atomically), for ``SEMISAM_TRAINER_CONFIG``."""
        from semisam.utils.io import write_json_atomic

        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v is not None}
        return write_json_atomic(path, values)


class nnUNetTrainerSemiSAM(nnUNetTrainer):
    """nnU-Net's trainer whose length, learning rate, batch size, initial weights, seed and labeled share of the
    sampled cases come from the recipe."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # The signature must stay nnU-Net's: the base class records its arguments by name for checkpoints.
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.semisam_batch_size: int | None = None
        self.semisam_init_checkpoint: str | None = None
        self.semisam_seed: int | None = None
        self.semisam_labeled_cases: tuple[str, ...] | None = None
        self.semisam_labeled_share: float | None = None
        self.apply_overrides(TrainerOverrides.from_env())

    def apply_overrides(self, overrides: TrainerOverrides) -> None:
        """Set the non-``None`` recipe values; call before training starts (before ``initialize``).

        Raises:
            SemisamError: the trainer is already initialised (optimizer and loaders were built).
        """
        if self.was_initialized:
            raise _error("trainer overrides must be applied before the trainer is initialised")
        for name in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "initial_lr"):
            value = getattr(overrides, name)
            if value is not None:
                setattr(self, name, value)
        if overrides.batch_size is not None:
            self.semisam_batch_size = overrides.batch_size
        if overrides.init_checkpoint is not None:
            self.semisam_init_checkpoint = overrides.init_checkpoint
        if overrides.seed is not None:
            self.semisam_seed = overrides.seed
        if overrides.labeled_cases is not None:
            self.semisam_labeled_cases = overrides.labeled_cases
        if overrides.labeled_share is not None:
            self.semisam_labeled_share = overrides.labeled_share

    def initialize(self) -> None:
        if self.semisam_batch_size is not None:
            self.configuration_manager.configuration["batch_size"] = int(self.semisam_batch_size)
        if self.semisam_seed is not None:
            seed_everything(derive_seed(self.semisam_seed, SEED_STREAM_NETWORK))
        super().initialize()
        if self.semisam_init_checkpoint is not None:
            load_network_weights(self.network, self.semisam_init_checkpoint)
            self.print_to_log_file(f"initial weights from {self.semisam_init_checkpoint}")
        self.print_to_log_file(
            f"semisam: {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
            f"(+{self.num_val_iterations_per_epoch} val), lr {self.initial_lr}, batch {self.batch_size}, "
            f"seed {self.semisam_seed}"
        )

    def get_dataloaders(self):
        """nnU-Net's loaders, built after seeding the global generators (and with seeded augmentation workers),
        the training loader drawing the labeled cases with ``labeled_share`` (see the module docstring)."""
        with contextlib.ExitStack() as stack:
            if self.semisam_seed is not None:
                seed_everything(derive_seed(self.semisam_seed, SEED_STREAM_DATA))
                stack.enter_context(seeded_augmenter_workers(self.semisam_seed))
            if self.semisam_labeled_share:
                stack.enter_context(weighted_training_loader(self.training_sampling_probabilities))
            return super().get_dataloaders()

    def training_sampling_probabilities(self, identifiers: Sequence[str]) -> np.ndarray | None:
        """The training loader's ``sampling_probabilities`` for its cases (in loader order), logged; None
        (uniform) when no share is set, or when the cases are all labeled or none is."""
        share = self.semisam_labeled_share
        labeled = set(self.semisam_labeled_cases or ())
        n_labeled = sum(i in labeled for i in identifiers)
        probs = labeled_sampling_probabilities(identifiers, labeled, share)
        if probs is not None:
            self.print_to_log_file(f"semisam: sampling {n_labeled} labeled of {len(identifiers)} training cases "
                                   f"with probability {share} together (the others {1 - share:.4g})")
        elif share and n_labeled == 0:
            self.print_to_log_file(f"semisam: none of the {len(identifiers)} training cases is among labeled_cases;"
                                   f" sampling uniformly (labeled_share {share} not applied)")
        elif share:
            self.print_to_log_file(f"semisam: all {len(identifiers)} training cases are labeled; sampling uniformly")
        return probs


#: Streams of :func:`derive_seed` used by the trainer.
SEED_STREAM_NETWORK, SEED_STREAM_DATA, SEED_STREAM_WORKERS = 0, 1, 2


def derive_seed(seed: int, *stream: int) -> int:
    """A seed in ``[0, 2**32)`` for one use of a run's ``seed`` (numpy's ``SeedSequence`` of ``(seed, *stream)``):
    independent streams from one seed, accepted by ``random.seed``, ``np.random.seed`` and ``torch.manual_seed``."""
    return int(np.random.SeedSequence([int(seed), *(int(s) for s in stream)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch's (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_augmenter_workers(seed: int):
    """Within the block, nnU-Net's trainer builds ``NonDetMultiThreadedAugmenter`` with one derived seed per
    worker process (``derive_seed(seed, SEED_STREAM_WORKERS, k, i)`` for the k-th augmenter built in the
    block and its worker i) instead of ``seeds=None``. Each worker seeds numpy and torch with it."""
    original = _nnunet_trainer_module.NonDetMultiThreadedAugmenter
    built = itertools.count()

    class SeededNonDetMultiThreadedAugmenter(original):
        def __init__(self, data_loader, transform, num_processes, num_cached=2, seeds=None, pin_memory=False,
                     wait_time=0.02):
            if seeds is None:
                k = next(built)
                seeds = [derive_seed(seed, SEED_STREAM_WORKERS, k, i) for i in range(num_processes)]
            super().__init__(data_loader, transform, num_processes, num_cached=num_cached, seeds=seeds,
                             pin_memory=pin_memory, wait_time=wait_time)

    _nnunet_trainer_module.NonDetMultiThreadedAugmenter = SeededNonDetMultiThreadedAugmenter
    try:
        yield
    finally:
        _nnunet_trainer_module.NonDetMultiThreadedAugmenter = original


def labeled_sampling_probabilities(identifiers: Sequence[str], labeled_cases: Sequence[str] | set[str],
                                   labeled_share: float | None) -> np.ndarray | None:
    """Per-case sampling probabilities, shape ``(len(identifiers),)`` summing to 1: the cases in
    ``labeled_cases`` get ``labeled_share`` together (uniform among them), the others ``1 - labeled_share``
    (uniform among them). None, nnU-Net's uniform draw, when the share is 0 or None or when the cases are
    all labeled or none is."""
    labeled = set(labeled_cases)
    is_labeled = np.array([i in labeled for i in identifiers], dtype=bool)
    n_labeled = int(is_labeled.sum())
    if not labeled_share or n_labeled in (0, len(identifiers)):
        return None
    probs = np.where(is_labeled, labeled_share / n_labeled, (1.0 - labeled_share) / (len(identifiers) - n_labeled))
    return probs / probs.sum()


@contextlib.contextmanager
def weighted_training_loader(probabilities_for: Callable[[Sequence[str]], np.ndarray | None]):
    """Within the block, the first ``nnUNetDataLoader`` that nnU-Net's trainer builds (the training loader)
    gets ``sampling_probabilities=probabilities_for(its case identifiers)`` when nnU-Net passes None; later
    loaders (validation) are nnU-Net's. The loaders built are stock ``nnUNetDataLoader`` objects."""
    original = _nnunet_trainer_module.nnUNetDataLoader
    built = itertools.count()

    def build_loader(data, *args, **kwargs):
        if next(built) == 0 and kwargs.get("sampling_probabilities") is None:
            kwargs["sampling_probabilities"] = probabilities_for(list(data.identifiers))
        return original(data, *args, **kwargs)

    _nnunet_trainer_module.nnUNetDataLoader = build_loader
    try:
        yield
    finally:
        _nnunet_trainer_module.nnUNetDataLoader = original


def load_network_weights(network: torch.nn.Module, checkpoint_file: str | os.PathLike) -> None:
    """Copy the network weights of an nnU-Net checkpoint into ``network`` (all keys, shapes must match).

    Raises:
        SemisamError: missing file, or weights of another network (keys or shapes differ).
    """
    checkpoint_file = Path(checkpoint_file)
    if not checkpoint_file.is_file():
        raise _error(f"initial checkpoint {checkpoint_file} does not exist")
    state = read_checkpoint_weights(checkpoint_file, map_location="cpu")
    module = network
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module.module
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise _error(
            f"{checkpoint_file} holds weights of another network (e.g. {first!r} is missing, extra or shaped "
            "differently); fine-tune only from a checkpoint of the same plans, configuration and labels"
        )
    module.load_state_dict(state)


def read_checkpoint(checkpoint_file: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """An nnU-Net checkpoint dict, loaded with ``weights_only=True``.

    Besides tensors and plain containers, nnU-Net's checkpoints hold numpy scalars and arrays from its
    logger; exactly those numpy types are allowed.
    """
    import numpy as np

    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 / numpy 1
    safe = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    with torch.serialization.safe_globals(safe):
        return torch.load(checkpoint_file, map_location=map_location, weights_only=True)


def read_checkpoint_weights(checkpoint_file: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The ``network_weights`` state dict of an nnU-Net checkpoint (``module.`` prefixes removed)."""
    checkpoint = read_checkpoint(checkpoint_file, map_location)
    state = checkpoint["network_weights"] if "network_weights" in checkpoint else checkpoint
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}

"""``nnUNetTrainerSemiSAM``: nnU-Net's trainer with its length, learning rate and batch size from the recipe.

One class for every recipe (no ``nnUNetTrainer_Xepochs`` subclasses). The values come from either

* the Python API: ``trainer.apply_overrides(TrainerOverrides(...))`` before training (the student driver), or
* the environment: ``SEMISAM_TRAINER_CONFIG=/path/to/overrides.json`` (keys of :class:`TrainerOverrides`),
  read when the trainer is constructed, so that ``nnUNetv2_train DATASET 2d all -tr nnUNetTrainerSemiSAM``
  trains with the recipe's values too.

Only ``__init__`` (same signature as nnU-Net's, which its checkpoints rely on) and ``initialize`` are
overridden; the training loop, augmentation, validation and checkpointing are nnU-Net's.

nnU-Net's trainer lookup imports this module by walking folders; it must import cheaply and safely, so the
torchvision compatibility shim is installed first and nothing else of semisam is imported at top level.
"""
from __future__ import annotations

import semisam.compat  # before anything imports torchvision (nnU-Net's lookup imports timm-based trainers)

semisam.compat.install()

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

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
    """

    num_epochs: int | None = None
    num_iterations_per_epoch: int | None = None
    num_val_iterations_per_epoch: int | None = None
    initial_lr: float | None = None
    batch_size: int | None = None
    init_checkpoint: str | None = None

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

        return write_json_atomic(path, {k: v for k, v in asdict(self).items() if v is not None})


class nnUNetTrainerSemiSAM(nnUNetTrainer):
    """nnU-Net's trainer whose length, learning rate, batch size and initial weights come from the recipe."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # The signature must stay nnU-Net's: the base class records its arguments by name for checkpoints.
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.semisam_batch_size: int | None = None
        self.semisam_init_checkpoint: str | None = None
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

    def initialize(self) -> None:
        if self.semisam_batch_size is not None:
            self.configuration_manager.configuration["batch_size"] = int(self.semisam_batch_size)
        super().initialize()
        if self.semisam_init_checkpoint is not None:
            load_network_weights(self.network, self.semisam_init_checkpoint)
            self.print_to_log_file(f"initial weights from {self.semisam_init_checkpoint}")
        self.print_to_log_file(
            f"semisam: {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
            f"(+{self.num_val_iterations_per_epoch} val), lr {self.initial_lr}, batch {self.batch_size}"
        )


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

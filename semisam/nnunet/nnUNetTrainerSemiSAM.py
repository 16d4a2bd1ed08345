"""``nnUNetTrainerSemiSAM``: nnU-Net's trainer with its length, learning rate, batch size and case sampling from
the recipe.

One class for every recipe (no ``nnUNetTrainer_Xepochs`` subclasses). The values come from either

* the Python API: ``trainer.apply_overrides(TrainerOverrides(...))`` before training (the student driver), or
* the environment: ``SEMISAM_TRAINER_CONFIG=/path/to/overrides.json`` (keys of :class:`TrainerOverrides`),
  read when the trainer is constructed, so that ``nnUNetv2_train DATASET 2d all -tr nnUNetTrainerSemiSAM``
  trains with the recipe's values too.

Without online terms, only ``__init__`` (same signature as nnU-Net's, which its checkpoints rely on),
``initialize`` and ``get_dataloaders`` change what is computed (the last two to seed, see
:func:`seed_everything`, and to weight the training loader's case sampling, see
:func:`labeled_sampling_probabilities`), and ``get_training_transforms`` when pseudo-labeled cases get stronger
augmentation (:class:`PerCaseTransforms`); the training loop, augmentation pipelines, validation and
checkpointing are nnU-Net's. (``run_training`` and ``on_train_start`` also open and close the trainer's own W&B
run under ``nnUNetv2_train``; the online hooks are described on the class.)

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
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from semisam.student.checkpoint import read_checkpoint, read_checkpoint_weights

# the module (not the class of the same name): get_dataloaders looks NonDetMultiThreadedAugmenter and
# nnUNetDataLoader up in it
_nnunet_trainer_module = importlib.import_module("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")

#: Per-step statistics of an online step beside the losses and weights (NaN when a step has none), averaged per
#: epoch: confident-pixel coverage, SAM-labelled share, per-iteration SAM's accepted patches and seconds, the
#: feature-perturbation loss.
STEP_STATS = ("confident", "sam_pixels", "patches_accepted", "sam_seconds", "fp")

#: The training transforms a pseudo-labeled case can get (``TrainerOverrides.pseudo_augmentation``).
PSEUDO_AUGMENTATIONS = ("default", "da5")

#: Environment variable naming a JSON file of :class:`TrainerOverrides` keys.
CONFIG_ENV_VAR = "SEMISAM_TRAINER_CONFIG"
#: The settings file looked up in the raw dataset folder when ``$SEMISAM_TRAINER_CONFIG`` is not set.
SETTINGS_FILE = "semisam_trainer.json"


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
        recipe: the semisam recipe whose ``online.*`` (and, with a SAM term, ``teacher.*``, ``prompts.*``,
            ``filters.*``) the trainer follows: a resolved recipe file (``config.yaml`` of a run, or what
            ``semisam run ... --cfg`` prints), or a list of recipe overrides (``["experiment=semisam"]``) composed
            with ``dataset.raw_dir`` set to the trained dataset's raw folder. None: no online terms.
        teacher_cache_dir: the SAM embedding cache of the SAM term (None: the recipe's ``teacher.cache_dir``, else
            ``semisam_cache/embeddings`` in the preprocessed dataset folder).
        pseudo_augmentation: the training transforms of the cases not in ``labeled_cases`` (the pseudo-labeled
            ones): ``"default"`` (nnU-Net's, as the labeled cases) or ``"da5"`` (nnU-Net's stronger
            ``nnUNetTrainerDA5`` pipeline). Needs ``labeled_cases``. See :class:`PerCaseTransforms`.
        pseudo_loss_weight: in ``[0, 1]``: the training loss of a batch is (the labeled samples' losses + this
            weight × the other samples' losses) / batch size, each part nnU-Net's loss on its samples. None or 1:
            nnU-Net's loss on the whole batch. Needs ``labeled_cases``. See :class:`PseudoWeightedLoss`.
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
    recipe: str | Sequence[str] | None = None
    teacher_cache_dir: str | None = None
    pseudo_augmentation: str | None = None
    pseudo_loss_weight: float | None = None

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
        recipe = self.recipe
        if recipe is not None:
            if isinstance(recipe, os.PathLike):
                recipe = str(recipe)
            if isinstance(recipe, (list, tuple)):
                if not all(isinstance(o, str) for o in recipe):
                    raise _error(f"trainer override recipe must be a recipe file or a list of overrides, got {recipe!r:.80}")
                recipe = tuple(recipe)
            elif not isinstance(recipe, str) or not recipe.strip():
                raise _error(f"trainer override recipe must be a recipe file or a list of overrides, got {recipe!r:.80}")
            object.__setattr__(self, "recipe", recipe)
        if self.teacher_cache_dir is not None:
            object.__setattr__(self, "teacher_cache_dir", str(self.teacher_cache_dir))
        aug = self.pseudo_augmentation
        if aug is not None and aug not in PSEUDO_AUGMENTATIONS:
            raise _error(f"trainer override pseudo_augmentation must be one of {', '.join(PSEUDO_AUGMENTATIONS)}, "
                         f"got {aug!r}")
        if aug not in (None, "default") and cases is None:
            raise _error("trainer override pseudo_augmentation needs labeled_cases (the labeled case identifiers)")
        w = self.pseudo_loss_weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1):
            raise _error(f"trainer override pseudo_loss_weight must be a number in [0, 1], got {w!r}")
        if w is not None and w != 1 and cases is None:
            raise _error("trainer override pseudo_loss_weight needs labeled_cases (the labeled case identifiers)")

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
    def from_env(cls, dataset_name: str | None = None) -> "TrainerOverrides":
        """The trainer's settings file: ``$SEMISAM_TRAINER_CONFIG`` when set, else ``semisam_trainer.json`` in
        the dataset's raw folder (``$nnUNet_raw/<dataset_name>/``) when it exists, else none. A relative
        ``recipe`` file in it is relative to the settings file."""
        path = os.environ.get(CONFIG_ENV_VAR)
        if not path and dataset_name and os.environ.get("nnUNet_raw"):
            found = Path(os.environ["nnUNet_raw"]) / dataset_name / SETTINGS_FILE
            path = str(found) if found.is_file() else None
        if not path:
            return cls()
        overrides = cls.from_json(path)
        if isinstance(overrides.recipe, str) and not os.path.isabs(overrides.recipe):
            object.__setattr__(overrides, "recipe", str(Path(path).parent / overrides.recipe))
        return overrides

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write the set values as JSON (atomically), for ``SEMISAM_TRAINER_CONFIG``."""
        from semisam.utils.io import write_json_atomic

        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v is not None}
        return write_json_atomic(path, values)


class nnUNetTrainerSemiSAM(nnUNetTrainer):
    """nnU-Net's trainer whose length, learning rate, batch size, initial weights, seed and labeled share of the
    sampled cases come from the recipe — and, with the recipe's ``online.*``, online semi-supervised training:
    each iteration also draws a batch of unlabeled cases through nnU-Net's own loader and augmentation, and adds
    λ_c(t) · consistency (mean teacher or weak→strong) + λ_s(t) · SAM term to nnU-Net's supervised loss (see
    docs/architecture.md, "Online training"). Without online terms it is nnU-Net's training step unchanged."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # The signature must stay nnU-Net's: the base class records its arguments by name for checkpoints.
        from semisam.utils.distributed import teacher_group

        with warnings.catch_warnings():
            if teacher_group():  # nnU-Net takes the group for DDP on CUDA, which a CPU run warns about
                warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available")
            super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and teacher_group():
            # the default group is semisam's torchrun group (the teacher's ranks), not a DDP student's: rank 0
            # trains alone while the others wait, as nnU-Net trains without DDP
            self.is_ddp, self.local_rank = False, 0
            self.device = torch.device("cuda", 0) if device.type == "cuda" else device
            if self.device.type != "cuda":
                self.grad_scaler = None  # nnU-Net's choice for a device without CUDA
        self.semisam_batch_size: int | None = None
        self.semisam_init_checkpoint: str | None = None
        self.semisam_seed: int | None = None
        self.semisam_labeled_cases: tuple[str, ...] | None = None
        self.semisam_labeled_share: float | None = None
        self.semisam_recipe = None  # the composed RunConfig of the online recipe (None: no online terms)
        self.semisam_teacher_cache_dir: str | None = None
        self.semisam_pseudo_augmentation: str | None = None
        self.semisam_pseudo_loss_weight: float | None = None
        self.semisam_online = None  # semisam.online.settings.OnlineSettings
        #: called with each epoch's record (a dict of scalars) as training goes: the live W&B curves
        self.semisam_epoch_callback: Callable[[dict], None] | None = None
        self.semisam_history: list[dict] = []
        self.ema = None
        self.dataloader_unlabeled = None
        self._sam = None  # semisam.online.sam_term.SamRefresher (online.sam_mode=refresh)
        self._sam_labeler = None  # the teacher pipeline itself (online.sam_mode=iteration)
        self._sam_store_epoch: int | None = None
        self._refresh_stats: dict = {}
        self._resumed_store_epoch: int | None = None
        self._iteration = 0  # within the epoch: where λ(t) is read
        self._epoch_record: dict | None = None  # the online terms' means of the epoch, for on_epoch_end
        self._wandb = None  # the trainer's own W&B run under nnUNetv2_train (semisam.tracking.Tracker)
        self.apply_overrides(TrainerOverrides.from_env(plans.get("dataset_name")))

    def apply_overrides(self, overrides: TrainerOverrides) -> None:
        """Set the non-``None`` recipe values; call before training starts (before ``initialize``).

        Raises:
            SemisamError: the trainer is already initialised (optimizer and loaders were built), or the recipe
                cannot be composed or read.
        """
        if self.was_initialized:
            raise _error("trainer overrides must be applied before the trainer is initialised")
        for name in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "initial_lr"):
            value = getattr(overrides, name)
            if value is not None:
                setattr(self, name, value)
        for name in ("batch_size", "init_checkpoint", "seed", "labeled_cases", "labeled_share", "teacher_cache_dir",
                     "pseudo_augmentation", "pseudo_loss_weight"):
            value = getattr(overrides, name)
            if value is not None:
                setattr(self, f"semisam_{name}", value)
        if overrides.recipe is not None:
            from semisam.online.settings import OnlineSettings

            self.semisam_recipe = load_recipe(overrides.recipe, self.plans_manager.dataset_name)
            self.semisam_online = OnlineSettings.from_config(self.semisam_recipe)

    @property
    def online(self) -> bool:
        """Whether this training draws unlabeled batches (the recipe has a consistency or SAM term)."""
        return self.semisam_online is not None and self.semisam_online.enabled

    def initialize(self) -> None:
        if self.semisam_batch_size is not None:
            self.configuration_manager.configuration["batch_size"] = int(self.semisam_batch_size)
        if self.semisam_seed is not None:
            seed_everything(derive_seed(self.semisam_seed, SEED_STREAM_NETWORK))
        super().initialize()
        w = self.semisam_pseudo_loss_weight
        if w is not None and w != 1 and self.semisam_labeled_cases:
            self.loss = PseudoWeightedLoss(self.loss, w)
            self.print_to_log_file(f"semisam: a pseudo-labeled sample's loss counts {w:g} of a labeled one's")
        if self.semisam_init_checkpoint is not None:
            load_network_weights(self.network, self.semisam_init_checkpoint)
            self.print_to_log_file(f"initial weights from {self.semisam_init_checkpoint}")
        self.print_to_log_file(
            f"semisam: {self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
            f"(+{self.num_val_iterations_per_epoch} val), lr {self.initial_lr}, batch {self.batch_size}, "
            f"seed {self.semisam_seed}"
        )
        if self.online:
            self._initialize_online()

    # ------------------------------------------------------------------------------------------ online
    @property
    def no_label(self) -> int:
        """The value of 'no target here' in unlabeled targets: the dataset's ignore label, else one past the
        last class."""
        lm = self.label_manager
        return int(lm.ignore_label) if lm.has_ignore_label else int(lm.num_segmentation_heads)

    def _initialize_online(self) -> None:
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

        from semisam.online.terms import EmaTeacher, StrongView

        o = self.semisam_online
        if self.label_manager.has_regions:
            raise _error("online training supports label datasets, not region-based ones (dataset.json 'regions_class_order')")
        if o.sam_weight.on and o.sam_mode == "iteration" and len(self.configuration_manager.patch_size) != 2:
            raise _error(f"online.sam_mode=iteration labels 2D patches; configuration {self.configuration_name!r} has "
                         f"{len(self.configuration_manager.patch_size)}D patches: use online.sam_mode=refresh")
        self.unlabeled_loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                                              "do_bg": False, "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1,
                                             ignore_label=self.no_label, dice_class=MemoryEfficientSoftDiceLoss)
        if o.needs_ema:
            self.ema = EmaTeacher(self.network, o.ema_decay)
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.semisam_seed, SEED_STREAM_STRONG) if self.semisam_seed is not None
                              else int(torch.randint(0, 2**31 - 1, (1,))))
        self.strong_view = StrongView(o.strong_brightness, o.strong_contrast, o.strong_blur, o.strong_noise,
                                      o.cutmix, generator)
        self.print_to_log_file(f"semisam online: {o.to_dict()}")

    def _build_unlabeled_loader(self, captured: list) -> None:
        """The unlabeled folder (preprocessed here; kept on continuation) and its loader: nnU-Net's training
        loader's patch sizes and transforms, random patches, the unlabeled batch size."""
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

        from semisam.online.unlabeled import (prepare_unlabeled, store_cases, store_epoch, unlabeled_folder,
                                              unlabeled_images, unlabeled_loader_class)

        raw_root = os.environ.get("nnUNet_raw") or ""
        raw = Path(raw_root) / self.plans_manager.dataset_name
        images = unlabeled_images(raw, self.dataset_json)
        folder = unlabeled_folder(self.preprocessed_dataset_folder)
        continuing = self.current_epoch > 0 and store_cases(folder) == sorted(images)
        if not continuing:
            self.print_to_log_file(f"semisam: preprocessing {len(images)} unlabeled cases from {raw / 'imagesTr'}")
            prepare_unlabeled(images, folder, self.plans_manager, self.configuration_manager, self.dataset_json,
                              log=self.print_to_log_file)
            self._sam_store_epoch = None
        else:
            on_disk = store_epoch(folder)
            if on_disk != self._sam_store_epoch:  # refreshed after the checkpoint was written: redo now
                self._resumed_store_epoch = on_disk
                self._sam_store_epoch = None
        self.unlabeled_folder = folder
        self.unlabeled_cases = sorted(images)
        args, kwargs = captured[0]
        kwargs = dict(kwargs)
        kwargs.update(oversample_foreground_percent=0.0, sampling_probabilities=None)
        if isinstance(kwargs.get("transforms"), PerCaseTransforms):  # nnU-Net's view for the consistency terms
            kwargs["transforms"] = kwargs["transforms"].labeled
        batch_size = self.semisam_online.unlabeled_batch_size or self.batch_size
        loader = unlabeled_loader_class()(nnUNetDatasetBlosc2(str(folder), list(self.unlabeled_cases)), batch_size,
                                          *args[2:], **kwargs)
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            self.dataloader_unlabeled = SingleThreadedAugmenter(loader, None)
        else:
            self.dataloader_unlabeled = _nnunet_trainer_module.NonDetMultiThreadedAugmenter(
                data_loader=loader, transform=None, num_processes=max(1, n_proc // 2), num_cached=max(3, n_proc // 2),
                seeds=None, pin_memory=self.device.type == "cuda", wait_time=0.002)
        self.print_to_log_file(f"semisam: {len(self.unlabeled_cases)} unlabeled cases, batch {batch_size}")

    def _build_sam(self) -> None:
        """The SAM teacher pipeline of the recipe, adapted on the labeled training cases when the recipe says so."""
        from semisam.online.sam_term import SamRefresher
        from semisam.pseudolabel.pipeline import build_pseudolabeler

        cfg = self.semisam_recipe
        if self.semisam_online.sam_mode == "iteration":  # every patch is new: nothing to cache
            labeler = build_pseudolabeler(cfg, ignore_label=self.no_label, channel_names=self.dataset_json["channel_names"],
                                          cache_dir=None, memory_items=0)
        else:
            cache = (self.semisam_teacher_cache_dir or cfg.teacher.cache_dir
                     or str(Path(self.preprocessed_dataset_folder_base) / "semisam_cache" / "embeddings"))
            labeler = build_pseudolabeler(cfg, ignore_label=self.no_label, channel_names=self.dataset_json["channel_names"],
                                          cache_dir=cache)
        a = cfg.teacher.adapt
        if a.enabled and a.steps > 0:
            dataset_tr, _ = self.get_tr_and_val_datasets()
            pairs = []
            for case in dataset_tr.identifiers:
                data, seg, _, _ = dataset_tr.load_case(case)
                seg = np.asarray(seg[0]).astype(np.int16)
                pairs.append((np.asarray(data), np.where(seg < 0, 0, seg)))
            info = labeler.adapt(pairs, self.label_manager.foreground_labels,
                                 Path(self.output_folder) / "teacher_adapted.pt")
            self.print_to_log_file(f"semisam: SAM adapted on {len(pairs)} labeled cases ({info})")
        if self.semisam_online.sam_mode == "iteration":
            self._sam_labeler = labeler
            return
        self._sam = SamRefresher(labeler, self.unlabeled_folder, self.unlabeled_cases, self.plans_manager,
                                 self.configuration_manager, self.dataset_json, self.device,
                                 log=self.print_to_log_file, confidence=self.semisam_online.sam_confidence)

    def _labels_of(self, x: torch.Tensor, who: str) -> torch.Tensor:
        """Logits (no gradient) of the network that labels unlabeled patches for a term: the EMA teacher
        (``"ema"``) or the student itself (``"student"``, as it is, without deep supervision's extra outputs)."""
        from semisam.online.terms import first

        if who == "ema":
            return self.ema(x)
        with torch.no_grad():
            return first(self.network(x)).detach()

    def _progress(self, iteration: int = 0) -> float:
        """The fraction of training done at ``iteration`` of the current epoch."""
        return (self.current_epoch + iteration / max(1, self.num_iterations_per_epoch)) / max(1, self.num_epochs)

    def _sam_due(self) -> bool:
        o = self.semisam_online
        if self._sam is None or o.sam_weight((self.current_epoch + 1) / self.num_epochs) == 0:
            return False
        last = self._sam_store_epoch
        return last is None or self.current_epoch - last >= o.sam_refresh_every

    def on_train_start(self):
        super().on_train_start()
        if self.online and self.semisam_online.sam_weight.on:
            self._build_sam()
        self._open_wandb()

    def run_training(self):
        """nnU-Net's training; the trainer's own W&B run (see :meth:`_open_wandb`) is closed however it ends."""
        try:
            super().run_training()
        except BaseException:
            self._close_wandb(exit_code=1)
            raise
        self._close_wandb()

    def _open_wandb(self) -> None:
        """Under ``nnUNetv2_train`` (no ``semisam run`` receiving the records): when the recipe's ``logger.wandb``
        is not ``disabled``, open a W&B run of this training in the fold's output folder (``wandb_run_id`` and
        ``metrics.json`` there; W&B's files under ``logger.dir``, ``$WANDB_DIR`` or that folder) and log each
        epoch's record to it as the epoch ends (``train_live/*``). ``--c`` continues the same W&B run. Rank 0
        only; nothing when a caller already receives the records (``semisam_epoch_callback``)."""
        cfg = self.semisam_recipe
        if (cfg is None or self.semisam_epoch_callback is not None or self.local_rank != 0
                or cfg.logger.wandb == "disabled"):
            return
        from semisam.config import to_dict
        from semisam.tracking.wandb_sink import Tracker

        lg = cfg.logger
        name = lg.name or f"{self.plans_manager.dataset_name}/{self.configuration_name}/fold_{self.fold}"
        config = {"recipe": to_dict(cfg), "trainer": {"dataset": self.plans_manager.dataset_name,
                                                     "configuration": self.configuration_name, "fold": self.fold,
                                                     "num_epochs": self.num_epochs,
                                                     "num_iterations_per_epoch": self.num_iterations_per_epoch,
                                                     "initial_lr": self.initial_lr, "seed": self.semisam_seed}}
        self._wandb = Tracker.create(lg.wandb, lg.project, self.output_folder, config=config, name=name,
                                     tags=list(lg.tags) or None, entity=lg.entity, group=lg.group, dir=lg.dir)
        self.semisam_epoch_callback = self._wandb.log_training_epoch
        self.print_to_log_file(f"semisam: W&B run {self._wandb.run_id} ({lg.wandb}), epochs logged as train_live/*")

    def _close_wandb(self, exit_code: int = 0) -> None:
        tracker, self._wandb = getattr(self, "_wandb", None), None
        if tracker is not None:
            self.semisam_epoch_callback = None
            tracker.finish(exit_code=exit_code)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration = 0
        self._refresh_stats = {}
        if self.online and self._sam_due():
            network = self.ema.module if self.semisam_online.sam_prompter == "ema" else self.network
            if self._resumed_store_epoch is not None:
                self.print_to_log_file(f"semisam: the pseudo-label store was refreshed at epoch "
                                       f"{self._resumed_store_epoch}, after the checkpoint; refreshing it again")
                self._resumed_store_epoch = None
            self._refresh_stats = self._sam.refresh(network, self.current_epoch)
            self._sam_store_epoch = self.current_epoch
            self.print_to_log_file("semisam: SAM pseudo-labels refreshed: " + ", ".join(
                f"{k} {v:.4g}" for k, v in self._refresh_stats.items()))

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step; with online terms, the labeled and unlabeled batches go through the network together
        and the weighted terms are added to the supervised loss."""
        if not self.online:
            if isinstance(self.loss, PseudoWeightedLoss):  # nnU-Net's step, its loss told which samples are labeled
                with self.loss.labeled_samples([str(k) in self.semisam_labeled_cases for k in batch["keys"]]):
                    return super().train_step(batch)
            return super().train_step(batch)
        from semisam.online.terms import confident_targets, coverage_scaled, first, mean_teacher_loss
        from semisam.online.unlabeled import UnlabeledBatch, decode_store, store_weights

        o = self.semisam_online
        t = self._progress(self._iteration)
        self._iteration += 1
        lam_c = o.consistency_weight(t) if o.consistency != "none" else 0.0
        lam_s = o.sam_weight(t) if self._sam_store_epoch is not None or self._sam_labeler is not None else 0.0
        if lam_c == 0 and lam_s == 0:
            out = super().train_step(batch)
            if self.ema is not None:
                self.ema.update(self.network)
            out.update(sup=out["loss"], consistency=np.nan, sam=np.nan, lambda_c=lam_c, lambda_s=lam_s,
                       **dict.fromkeys(STEP_STATS, np.nan))
            return out

        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [i.to(self.device, non_blocking=True) for i in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        unl = UnlabeledBatch.from_loader(next(self.dataloader_unlabeled))
        xu = unl.data.to(self.device, non_blocking=True)
        codes = unl.pseudo[0].to(self.device, non_blocking=True)  # the store's values (decoded after CutMix)
        stats = dict.fromkeys(STEP_STATS, np.nan)
        if lam_s > 0 and self._sam_labeler is not None:  # SAM on these very patches, prompted by online.sam_prompter
            from semisam.online.sam_term import sam_on_patches

            prompts_from = torch.softmax(self._labels_of(xu, o.sam_prompter).float(), 1)
            codes, sam_stats = sam_on_patches(self._sam_labeler, xu, prompts_from, o.sam_confidence)
            stats.update(sam_stats)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else contextlib.nullcontext():
            x_student = xu
            teacher_logits = ws_target = fp_target = None
            if lam_c > 0 and o.consistency == "mean_teacher":
                noise = torch.clamp(torch.randn_like(xu) * o.teacher_noise, -2 * o.teacher_noise, 2 * o.teacher_noise)
                teacher_logits = self.ema(xu + noise)
            elif lam_c > 0 and o.consistency == "weak_strong":
                weak_logits = self._labels_of(xu, o.weak_teacher)
                ws_target, coverage = confident_targets(weak_logits, o.confidence, self.no_label)
                stats["confident"] = float(coverage)
                fp_target = ws_target  # the weak view's geometry, before CutMix
                x_student, ws_target, codes = self.strong_view(xu, ws_target, codes)
            output = self.network(torch.cat([data, x_student]))
            n = data.shape[0]
            out_labeled = [y[:n] for y in output] if isinstance(output, (list, tuple)) else output[:n]
            out_unlabeled = first(output)[n:]
            l_sup = self.loss(out_labeled, target)
            total = l_sup
            l_c = l_s = torch.zeros((), device=self.device)
            if teacher_logits is not None:
                l_c = mean_teacher_loss(out_unlabeled, teacher_logits)
            elif ws_target is not None and bool((ws_target != self.no_label).any()):
                l_c = self.unlabeled_loss(out_unlabeled, ws_target)
                if o.scale_by_coverage:
                    l_c = coverage_scaled(l_c, ws_target, self.no_label)
            if fp_target is not None and o.feature_perturbation > 0 and bool((fp_target != self.no_label).any()):
                from semisam.online.terms import feature_perturbed_logits

                l_fp = self.unlabeled_loss(feature_perturbed_logits(self.network, xu, o.feature_perturbation), fp_target)
                if o.scale_by_coverage:
                    l_fp = coverage_scaled(l_fp, fp_target, self.no_label)
                stats["fp"] = float(l_fp.detach())
                l_c = 0.5 * (l_c + l_fp)
            total = total + lam_c * l_c
            if lam_s > 0:
                pseudo = decode_store(codes, self.no_label)
                has = pseudo != self.no_label
                stats["sam_pixels"] = float(has.float().mean())
                if bool(has.any()):
                    if o.sam_confidence:  # each pixel weighted by SAM's confidence there
                        from semisam.online.terms import weighted_dc_ce

                        l_s = weighted_dc_ce(self.unlabeled_loss, out_unlabeled, pseudo, store_weights(codes))
                    else:
                        l_s = self.unlabeled_loss(out_unlabeled, pseudo)
                    total = total + lam_s * l_s
        if self.grad_scaler is not None:
            self.grad_scaler.scale(total).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            total.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.network)
        return {"loss": total.detach().cpu().numpy(), "sup": float(l_sup.detach()), "consistency": float(l_c.detach()),
                "sam": float(l_s.detach()), "lambda_c": lam_c, "lambda_s": lam_s, **stats}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.online:
            return
        record = {"epoch": self.current_epoch}
        for key in ("sup", "consistency", "sam", "lambda_c", "lambda_s", *STEP_STATS):
            values = np.array([float(o[key]) for o in train_outputs], dtype=float)
            record[key] = float(np.nanmean(values)) if np.isfinite(values).any() else None
        record.update({f"refresh_{k}": v for k, v in self._refresh_stats.items()})
        self._epoch_record = record

    def on_epoch_end(self):
        record = dict(self._epoch_record or {"epoch": self.current_epoch})
        self._epoch_record = None
        for key, name in (("train_losses", "loss"), ("val_losses", "val_loss"), ("mean_fg_dice", "pseudo_dice"),
                          ("ema_fg_dice", "ema_pseudo_dice"), ("lrs", "lr")):
            try:
                record[name] = float(self.logger.get_value(key, step=-1))
            except (IndexError, KeyError, TypeError, ValueError):
                pass
        self.semisam_history.append(record)
        if self.online:
            self.print_to_log_file("semisam: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()
                                                            if isinstance(v, (int, float)) and k != "epoch"))
        if self.semisam_epoch_callback is not None:
            self.semisam_epoch_callback(dict(record))
        super().on_epoch_end()

    def on_train_end(self):
        super().on_train_end()
        if self.dataloader_unlabeled is not None and isinstance(self.dataloader_unlabeled,
                                                                _nnunet_trainer_module.NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus, with online terms, under ``"semisam"``: the EMA teacher, the online settings,
        the epoch of the pseudo-label store and the per-epoch records; then rewritten atomically (a temporary file
        renamed)."""
        super().save_checkpoint(filename)
        if not self.online or self.local_rank != 0 or self.disable_checkpointing or not os.path.isfile(filename):
            return  # without online terms nnU-Net's checkpoint is all there is
        checkpoint = read_checkpoint(filename)
        checkpoint["semisam"] = {
            "online": None if self.semisam_online is None else self.semisam_online.to_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "sam_store_epoch": self._sam_store_epoch,
            "history": self.semisam_history,
        }
        tmp = f"{filename}.tmp"
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's continuation (``--c``), after checking with a safe load (``weights_only=True``) that the
        checkpoint is of this trainer family and network, and restoring the EMA teacher, the store's epoch and
        the records.

        Raises:
            SemisamError: the checkpoint is of another trainer, another network, or other online settings.
        """
        from semisam.online.settings import OnlineSettings

        if not self.was_initialized:
            self.initialize()
        if not isinstance(filename_or_checkpoint, (str, os.PathLike)):
            raise _error("nnUNetTrainerSemiSAM continues from a checkpoint file, not from a dict")
        filename = str(filename_or_checkpoint)
        checkpoint = read_checkpoint(filename)
        name = checkpoint.get("trainer_name")
        if name not in ("nnUNetTrainer", type(self).__name__):
            raise _error(f"{filename} was written by trainer {name!r}; continue it with -tr {name}, or train "
                         f"{type(self).__name__} from scratch")
        check_weights_match(self.network, checkpoint["network_weights"], filename)
        extra = checkpoint.get("semisam") or {}
        saved_online = extra.get("online")
        now = None if self.semisam_online is None else self.semisam_online.to_dict()
        # keys added since the checkpoint was written take their defaults (what it trained with)
        saved = None if saved_online is None else OnlineSettings.from_mapping(saved_online)
        saved_on = saved is not None and saved.enabled
        saved_online = None if saved is None else saved.to_dict()
        if saved_on != self.online or (self.online and saved_online != now):
            raise _error(f"{filename} was trained with other online settings than this recipe's; continue with the "
                         "recipe it was trained with, or start over without --c")
        super().load_checkpoint(filename)
        if self.ema is not None:
            if extra.get("ema") is None:
                raise _error(f"{filename} holds no EMA teacher; continue with the recipe it was trained with")
            self.ema.load_state_dict(extra["ema"])
        self._sam_store_epoch = extra.get("sam_store_epoch")
        self.semisam_history = list(extra.get("history") or [])

    # ------------------------------------------------------------------------------------------ data
    def get_dataloaders(self):
        """nnU-Net's loaders, built after seeding the global generators (and with seeded augmentation workers),
        the training loader drawing the labeled cases with ``labeled_share`` (see the module docstring); with
        online terms also the unlabeled loader (``self.dataloader_unlabeled``)."""
        with contextlib.ExitStack() as stack:
            if self.semisam_seed is not None:
                seed_everything(derive_seed(self.semisam_seed, SEED_STREAM_DATA))
                stack.enter_context(seeded_augmenter_workers(self.semisam_seed))
            captured: list = []
            stack.enter_context(weighted_training_loader(
                self.training_sampling_probabilities if self.semisam_labeled_share else None, captured))
            loaders = super().get_dataloaders()
            if self.online:
                self._build_unlabeled_loader(captured)
            return loaders

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's training transforms; with ``pseudo_augmentation="da5"``, a :class:`PerCaseTransforms` that
        gives the pseudo-labeled cases (those not in ``labeled_cases``) nnU-Net's ``nnUNetTrainerDA5`` pipeline,
        built from the same arguments (patch size, rotation, deep supervision scales, mirroring, labels)."""
        stock = super().get_training_transforms(*args, **kwargs)
        if self.semisam_pseudo_augmentation in (None, "default") or not self.semisam_labeled_cases:
            return stock
        from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5

        self.print_to_log_file("semisam: pseudo-labeled cases get nnU-Net's DA5 augmentation, the "
                               f"{len(self.semisam_labeled_cases)} labeled cases the default")
        return PerCaseTransforms(stock, nnUNetTrainerDA5.get_training_transforms(*args, **kwargs),
                                 self.semisam_labeled_cases)

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


def load_recipe(recipe: str | Sequence[str], dataset_name: str):
    """The recipe of an online training: a resolved recipe file, or recipe overrides composed with
    ``dataset.raw_dir`` set to ``$nnUNet_raw/<dataset_name>``.

    Raises:
        SemisamError: a missing or malformed file, or a recipe that does not compose.
    """
    from semisam.config import compose, from_dict

    if isinstance(recipe, str):
        import yaml

        path = Path(recipe)
        if not path.is_file():
            raise _error(f"trainer recipe {path} does not exist; write one with `semisam run ... --cfg > FILE`")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise _error(f"trainer recipe {path} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise _error(f"trainer recipe {path} must hold a recipe (a mapping of groups), got {type(values).__name__}")
        return from_dict(values)
    raw = Path(os.environ.get("nnUNet_raw") or ".") / dataset_name
    overrides = list(recipe)
    if not any(o.startswith("dataset.raw_dir=") for o in overrides):
        overrides.append(f"dataset.raw_dir={raw}")
    return compose(overrides)


def check_weights_match(network: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one line if ``state`` is not a state dict of ``network`` (keys or shapes differ)."""
    from semisam.online.terms import unwrap

    own = unwrap(network).state_dict()
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        first = (missing or extra or wrong)[0]
        raise _error(
            f"{source} holds weights of another network (e.g. {first!r} is missing, extra or shaped "
            "differently); use a checkpoint of the same plans, configuration and labels"
        )


#: Streams of :func:`derive_seed` used by the trainer.
SEED_STREAM_NETWORK, SEED_STREAM_DATA, SEED_STREAM_WORKERS, SEED_STREAM_STRONG = 0, 1, 2, 3


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
def weighted_training_loader(probabilities_for: Callable[[Sequence[str]], np.ndarray | None] | None,
                             captured: list | None = None):
    """Within the block, the first ``nnUNetDataLoader`` that nnU-Net's trainer builds (the training loader)
    gets ``sampling_probabilities=probabilities_for(its case identifiers)`` when nnU-Net passes None and
    ``probabilities_for`` is given; later loaders (validation) are nnU-Net's. The loaders built are stock
    ``nnUNetDataLoader`` objects. ``captured`` (a list) receives the ``(args, kwargs)`` of every loader built, so
    that another loader can be built like the training loader."""
    original = _nnunet_trainer_module.nnUNetDataLoader
    built = itertools.count()

    def build_loader(data, *args, **kwargs):
        first = next(built) == 0
        if first and probabilities_for is not None and kwargs.get("sampling_probabilities") is None:
            kwargs["sampling_probabilities"] = probabilities_for(list(data.identifiers))
        if first and isinstance(kwargs.get("transforms"), PerCaseTransforms):
            kwargs["transforms"].watch(data)
        if captured is not None:
            captured.append(((data, *args), dict(kwargs)))
        return original(data, *args, **kwargs)

    _nnunet_trainer_module.nnUNetDataLoader = build_loader
    try:
        yield
    finally:
        _nnunet_trainer_module.nnUNetDataLoader = original


class PseudoWeightedLoss(torch.nn.Module):
    """nnU-Net's training loss (``loss``: its deep-supervision wrapper) with pseudo-labeled samples weighted:
    (n_labeled · loss(labeled samples) + weight · n_pseudo · loss(pseudo-labeled samples)) / batch size, each
    part nnU-Net's loss on its own samples (its Dice over those samples). Which samples are labeled is set per
    batch with :meth:`labeled_samples`; outside that block (validation) it is ``loss`` on the whole batch."""

    def __init__(self, loss: torch.nn.Module, weight: float):
        super().__init__()
        self.loss, self.weight = loss, float(weight)
        self._labeled: torch.Tensor | None = None

    @contextlib.contextmanager
    def labeled_samples(self, labeled: Sequence[bool]):
        self._labeled = torch.as_tensor(list(labeled), dtype=torch.bool)
        try:
            yield self
        finally:
            self._labeled = None

    def forward(self, output, target):
        labeled = self._labeled
        if labeled is None or bool(labeled.all()):
            return self.loss(output, target)

        def part(mask):
            pick = (lambda x: [y[mask.to(y.device)] for y in x]) if isinstance(output, (list, tuple)) \
                else (lambda x: x[mask.to(x.device)])
            return self.loss(pick(output), pick(target))

        n, n_labeled = len(labeled), int(labeled.sum())
        total = self.weight * (n - n_labeled) * part(~labeled)
        if n_labeled:
            total = total + n_labeled * part(labeled)
        return total / n


class PerCaseTransforms:
    """The training loader's transforms chosen per case: ``pseudo`` for cases not in ``labeled_cases``,
    ``labeled`` for the others.

    nnU-Net's ``nnUNetDataLoader`` applies its transforms to each sample right after loading it with
    ``dataset.load_case(identifier)``, without passing the identifier on; :meth:`watch` makes the dataset's
    ``load_case`` record it here first (:class:`_RecordCase`, picklable, so augmentation worker processes get
    loader, dataset and transforms as one consistent copy).
    """

    def __init__(self, labeled, pseudo, labeled_cases: Sequence[str]):
        self.labeled, self.pseudo = labeled, pseudo
        self.labeled_cases = frozenset(labeled_cases)
        self.case: str | None = None

    def watch(self, dataset) -> None:
        if not isinstance(getattr(dataset, "load_case", None), _RecordCase):
            dataset.load_case = _RecordCase(dataset, self)

    def __call__(self, **data):
        if self.case is None:
            raise RuntimeError("PerCaseTransforms applied to a sample of a dataset it does not watch")
        case, self.case = self.case, None
        return (self.labeled if case in self.labeled_cases else self.pseudo)(**data)


class _RecordCase:
    """``dataset.load_case`` (its class's) that first tells a :class:`PerCaseTransforms` which case comes next."""

    def __init__(self, dataset, transforms: PerCaseTransforms):
        self.dataset, self.transforms = dataset, transforms

    def __call__(self, identifier, *args, **kwargs):
        self.transforms.case = identifier
        return type(self.dataset).load_case(self.dataset, identifier, *args, **kwargs)


def load_network_weights(network: torch.nn.Module, checkpoint_file: str | os.PathLike) -> None:
    """Copy the network weights of an nnU-Net checkpoint into ``network`` (all keys, shapes must match).

    Raises:
        SemisamError: missing file, or weights of another network (keys or shapes differ).
    """
    checkpoint_file = Path(checkpoint_file)
    if not checkpoint_file.is_file():
        raise _error(f"initial checkpoint {checkpoint_file} does not exist")
    state = read_checkpoint_weights(checkpoint_file, map_location="cpu")
    from semisam.online.terms import unwrap

    check_weights_match(network, state, str(checkpoint_file))
    unwrap(network).load_state_dict(state)

"""The nnU-Net student: plan + preprocess, train, predict — nnunetv2's Python API, nothing re-implemented.

Everything runs inside :func:`semisam.student.env.nnunet_env` for the student's work folder, so several
students (rounds, experiments) can live side by side and nothing depends on the user's shell environment.

Typical use::

    student = NnUNetStudent(work_dir, device="auto")
    dataset_id = student.add_raw_dataset("data/Dataset501_Nuclei")
    student.plan_and_preprocess(dataset_id)
    model = student.train(dataset_id, "2d", "all", epochs=30, iterations_per_epoch=30,
                          val_iterations_per_epoch=5)
    segs = student.predict(model, "data/Dataset501_Nuclei/imagesTs", out_dir, save_probabilities=True)
    student_probs, props = load_probabilities(probabilities_file(segs[0]))  # semisam.data: (K, Z, Y, X)
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

from semisam.student.env import NnUNetPaths, link_raw_dataset, nnunet_env, planner_safe_n_proc_da
from semisam.utils.device import resolve_device
from semisam.utils.environ import updated_environ
from semisam.utils.errors import SemisamError
from semisam.utils.io import atomic_dir, remove_tree

TRAINER_NAME = "nnUNetTrainerSemiSAM"
DEFAULT_PLANS = "nnUNetPlans"


def model_folder_name(configuration: str, trainer_name: str = TRAINER_NAME, plans: str = DEFAULT_PLANS) -> str:
    """nnU-Net's results sub-folder ``Trainer__Plans__configuration``."""
    return f"{trainer_name}__{plans}__{configuration}"


class NnUNetStudent:
    """An nnU-Net student living in one work folder (``nnUNet_raw/``, ``nnUNet_preprocessed/``,
    ``nnUNet_results/`` underneath).

    Args:
        work_dir: the student's folder.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, or a ``torch.device``.
        plans_identifier: nnU-Net plans name.
        n_proc_da: augmentation workers (``nnUNet_n_proc_DA``; 0 runs augmentation in this process). None
            keeps the environment's value.
    """

    def __init__(self, work_dir: str | os.PathLike, device="auto", plans_identifier: str = DEFAULT_PLANS,
                 n_proc_da: int | None = None, num_gpus: int = 1):
        self.work_dir = Path(work_dir).absolute()
        self.paths = NnUNetPaths.under(self.work_dir)
        self.device = resolve_device(device)
        self.plans_identifier = plans_identifier
        self.n_proc_da = n_proc_da
        self.num_gpus = num_gpus  # > 1: train with nnU-Net's DDP, one process per GPU (see train)

    def env(self, results_dir: str | os.PathLike | None = None):
        """The nnU-Net environment of this student (a context manager); ``results_dir`` replaces
        ``nnUNet_results`` inside it."""
        @contextlib.contextmanager
        def _env():
            with nnunet_env(self.work_dir, n_proc_da=self.n_proc_da) as paths:
                if results_dir is None:
                    yield paths
                    return
                Path(results_dir).mkdir(parents=True, exist_ok=True)
                with updated_environ({"nnUNet_results": str(Path(results_dir).absolute())}):
                    yield NnUNetPaths(paths.raw, paths.preprocessed, Path(results_dir).absolute())

        return _env()

    # ------------------------------------------------------------------ data
    def add_raw_dataset(self, raw_dataset_dir: str | os.PathLike, dataset_id: int | None = None,
                        name: str | None = None) -> int:
        """Link a raw dataset folder into this student's ``nnUNet_raw``; returns its dataset id."""
        dataset_id, _ = link_raw_dataset(raw_dataset_dir, self.paths.raw, dataset_id, name)
        return dataset_id

    def dataset_name(self, dataset_id: int) -> str:
        """``DatasetNNN_Name`` of a linked dataset."""
        hits = sorted(p.name for p in self.paths.raw.glob(f"Dataset{int(dataset_id):03d}_*"))
        if not hits:
            raise SemisamError(f"dataset {dataset_id} is not in {self.paths.raw}; add it with add_raw_dataset")
        return hits[0]

    # ------------------------------------------------------------------ plan
    def plan_and_preprocess(self, dataset_id: int, configurations: Sequence[str] = ("2d",),
                            num_processes: int = 1, verify: bool = True) -> Path:
        """nnU-Net's fingerprint, experiment planning and preprocessing of the dataset's labeled cases.

        Args:
            dataset_id: a dataset added with :meth:`add_raw_dataset`.
            configurations: nnU-Net configurations to preprocess (``"2d"``, ``"3d_fullres"``, ...).
            num_processes: worker processes for fingerprinting and preprocessing.
            verify: run nnU-Net's dataset integrity check first.

        Returns:
            The plans file (``nnUNet_preprocessed/DatasetNNN_Name/<plans>.json``).
        """
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints,
            plan_experiments,
            preprocess,
        )

        dataset_name = self.dataset_name(dataset_id)
        with self.env():
            extract_fingerprints([int(dataset_id)], num_processes=num_processes,
                                 check_dataset_integrity=verify, clean=True, verbose=False,
                                 show_progress_bar=False)
            with planner_safe_n_proc_da():
                plans_identifier = plan_experiments([int(dataset_id)])
            if plans_identifier != self.plans_identifier:
                raise SemisamError(f"nnU-Net planned {plans_identifier!r}, expected {self.plans_identifier!r}")
            preprocess([int(dataset_id)], plans_identifier, configurations=tuple(configurations),
                       num_processes=[num_processes], verbose=False, show_progress_bar=False)
        plans_file = self.paths.preprocessed / dataset_name / f"{self.plans_identifier}.json"
        missing = [c for c in configurations if not (plans_file.parent / _data_identifier(plans_file, c)).is_dir()]
        if missing:
            raise SemisamError(f"nnU-Net planned no {missing[0]!r} configuration for {dataset_name}")
        return plans_file

    def preprocess_with_plans(self, dataset_id: int, source_plans: str | os.PathLike,
                              configurations: Sequence[str] = ("2d",), num_processes: int = 1) -> Path:
        """Preprocess a dataset with the plans of another, planned dataset: the same architecture, patch size,
        spacing and normalisation (every round's student has round 0's plans).

        The plans are moved with nnU-Net's own transfer (``move_plans_between_datasets``, as
        ``nnUNetv2_move_plans_between_datasets``: the dataset name and the image reader are set for this
        dataset); the source's ``dataset_fingerprint.json`` and this dataset's ``dataset.json`` are put beside
        them (nnU-Net's trainer and preprocessor read them there), and nnU-Net preprocesses the dataset. No
        fingerprint extraction or planning runs.

        Args:
            dataset_id: a dataset added with :meth:`add_raw_dataset`.
            source_plans: ``<nnUNet_preprocessed>/DatasetNNN_Name/<plans>.json`` of a planned dataset, in this or
                any other student's work folder (it may carry the same dataset id and name).
            configurations, num_processes: as for :meth:`plan_and_preprocess`.

        Returns:
            This dataset's plans file (``nnUNet_preprocessed/DatasetNNN_Name/<plans>.json``).
        """
        import shutil

        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess
        from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
            move_plans_between_datasets,
        )

        source_plans = Path(source_plans)
        if not source_plans.is_file():
            raise SemisamError(f"plans file {source_plans} does not exist; plan the source dataset first")
        name = self.dataset_name(dataset_id)
        target = self.paths.preprocessed / name
        target.mkdir(parents=True, exist_ok=True)
        # nnU-Net's transfer reads the source from this student's nnUNet_preprocessed by dataset name: the source
        # folder is linked there under a name no dataset id resolves to, for the duration of the call
        link = self.paths.preprocessed / "Dataset_plans_source"
        with self.env():
            remove_tree(link)
            link.symlink_to(source_plans.parent.absolute(), target_is_directory=True)
            try:
                move_plans_between_datasets(link.name, name, source_plans.stem, self.plans_identifier)
            finally:
                link.unlink()
            shutil.copyfile(source_plans.parent / "dataset_fingerprint.json", target / "dataset_fingerprint.json")
            shutil.copyfile(self.paths.raw / name / "dataset.json", target / "dataset.json")
            preprocess([int(dataset_id)], self.plans_identifier, configurations=tuple(configurations),
                       num_processes=[num_processes], verbose=False, show_progress_bar=False)
        return target / f"{self.plans_identifier}.json"

    # ------------------------------------------------------------------ train
    def build_trainer(self, dataset_id: int, configuration: str = "2d", fold: int | str = "all", *,
                      epochs: int, iterations_per_epoch: int, val_iterations_per_epoch: int,
                      initial_lr: float | None = None, batch_size: int | None = None,
                      init_checkpoint: str | os.PathLike | None = None, seed: int | None = None,
                      labeled_cases: Sequence[str] | None = None, labeled_share: float | None = None,
                      recipe: str | Sequence[str] | None = None, teacher_cache_dir: str | None = None,
                      pseudo_augmentation: str | None = None, pseudo_loss_weight: float | None = None):
        """Construct ``nnUNetTrainerSemiSAM`` with the recipe's values (call inside :meth:`env`)."""
        from batchgenerators.utilities.file_and_folder_operations import load_json

        from semisam.nnunet.nnUNetTrainerSemiSAM import TrainerOverrides, nnUNetTrainerSemiSAM

        overrides = TrainerOverrides(num_epochs=epochs, num_iterations_per_epoch=iterations_per_epoch,
                                     num_val_iterations_per_epoch=val_iterations_per_epoch,
                                     initial_lr=initial_lr, batch_size=batch_size,
                                     init_checkpoint=None if init_checkpoint is None else str(init_checkpoint),
                                     seed=seed, labeled_cases=labeled_cases, labeled_share=labeled_share,
                                     recipe=recipe, teacher_cache_dir=teacher_cache_dir,
                                     pseudo_augmentation=pseudo_augmentation, pseudo_loss_weight=pseudo_loss_weight)
        pre = self.paths.preprocessed / self.dataset_name(dataset_id)
        plans_file = pre / f"{self.plans_identifier}.json"
        if not plans_file.is_file():
            raise SemisamError(f"{plans_file} does not exist; run plan_and_preprocess for dataset {dataset_id}")
        plans = load_json(str(plans_file))
        if configuration not in plans["configurations"]:
            raise SemisamError(f"configuration {configuration!r} is not planned for {pre.name}; planned: "
                               f"{', '.join(plans['configurations'])}")
        plans["continue_training"] = False  # nnU-Net's trainer pops this key
        fold = _check_fold(fold)
        dataset_json = load_json(str(pre / "dataset.json"))
        n_cases = int(dataset_json.get("numTraining", 0))
        if fold != "all" and n_cases < 5 and not (pre / "splits_final.json").is_file():
            raise SemisamError(f"fold {fold} needs nnU-Net's 5-fold split, but {pre.name} has {n_cases} labeled "
                               "cases; train with fold='all' or provide splits_final.json")
        trainer = nnUNetTrainerSemiSAM(plans=plans, configuration=configuration, fold=fold,
                                       dataset_json=dataset_json, device=self.device)
        trainer.apply_overrides(overrides)
        return trainer

    def train(self, dataset_id: int, configuration: str = "2d", fold: int | str = "all", *,
              epochs: int, iterations_per_epoch: int, val_iterations_per_epoch: int,
              initial_lr: float | None = None, batch_size: int | None = None,
              init_checkpoint: str | os.PathLike | None = None,
              results_dir: str | os.PathLike | None = None, validate: bool | None = None,
              seed: int | None = None, labeled_cases: Sequence[str] | None = None,
              labeled_share: float | None = None, recipe: str | Sequence[str] | None = None,
              teacher_cache_dir: str | None = None, pseudo_augmentation: str | None = None,
              pseudo_loss_weight: float | None = None, epoch_callback=None) -> Path:
        """Train the student with nnU-Net's loop and the recipe's length.

        Args:
            dataset_id, configuration, fold: nnU-Net's; ``fold="all"`` trains on every labeled case.
            epochs, iterations_per_epoch, val_iterations_per_epoch, initial_lr, batch_size: the recipe's
                values (None keeps nnU-Net's default for lr and batch size).
            init_checkpoint: start from these network weights (fine-tuning from the previous round).
            results_dir: replaces ``nnUNet_results`` for this run (one folder per round).
            validate: run nnU-Net's final validation (``validation/summary.json``). Default: yes for a
                numbered fold, no for ``"all"`` (it would only re-predict the training cases).
            seed: seeds the initial weights, case sampling and augmentation (None: unseeded, nnU-Net's
                behaviour). With ``n_proc_da=0`` on CPU, the same seed gives the same weights; see
                docs/architecture.md, "Seeds and determinism".
            labeled_cases, labeled_share: draw the labeled cases (identifiers in the dataset) with total
                probability ``labeled_share`` in ``[0, 1)`` and the other (pseudo-labeled) cases with the rest,
                through nnU-Net's ``sampling_probabilities``; 0 or None: nnU-Net's uniform sampling.
            recipe, teacher_cache_dir: online training (see :class:`TrainerOverrides`); the unlabeled cases are
                the images of the dataset's ``imagesTr/`` without a label.
            pseudo_augmentation: ``"da5"``: the cases not in ``labeled_cases`` are augmented with nnU-Net's
                stronger ``nnUNetTrainerDA5`` pipeline (see :class:`TrainerOverrides`).
            pseudo_loss_weight: < 1: the loss of a case not in ``labeled_cases`` counts this much of a labeled
                case's (see :class:`TrainerOverrides`).
            epoch_callback: called with each epoch's record as training goes (live monitoring).

        Returns:
            The model folder (``.../DatasetNNN_Name/nnUNetTrainerSemiSAM__<plans>__<configuration>``),
            holding ``plans.json``, ``dataset.json`` and ``fold_<fold>/checkpoint_final.pth``.
        """
        fold = _check_fold(fold)
        if validate is None:
            validate = fold != "all"
        settings = dict(epochs=epochs, iterations_per_epoch=iterations_per_epoch,
                        val_iterations_per_epoch=val_iterations_per_epoch, initial_lr=initial_lr, batch_size=batch_size,
                        init_checkpoint=init_checkpoint, seed=seed, labeled_cases=labeled_cases,
                        labeled_share=labeled_share, recipe=recipe, teacher_cache_dir=teacher_cache_dir,
                        pseudo_augmentation=pseudo_augmentation, pseudo_loss_weight=pseudo_loss_weight)
        if self.num_gpus > 1:
            return self._train_ddp(dataset_id, configuration, fold, results_dir, validate, settings)
        return self._run_trainer(dataset_id, configuration, fold, results_dir, validate, settings, epoch_callback)

    def _run_trainer(self, dataset_id: int, configuration: str, fold: int | str,
                     results_dir: str | os.PathLike | None, validate: bool, settings: dict,
                     epoch_callback=None) -> Path:
        """Build our trainer with ``settings`` (:meth:`build_trainer`'s keywords), train it and, when asked,
        validate it: the whole training in one process, or in each of :meth:`_train_ddp`'s processes."""
        with self.env(results_dir):
            trainer = self.build_trainer(dataset_id, configuration, fold, **settings)
            trainer.semisam_epoch_callback = epoch_callback
            trainer.run_training()
            if validate:
                trainer.perform_actual_validation(save_probabilities=False)
            return Path(trainer.output_folder_base)

    def _train_ddp(self, dataset_id: int, configuration: str, fold: int | str,
                   results_dir: str | os.PathLike | None, validate: bool, settings: dict) -> Path:
        """nnU-Net's multi-GPU training (its ``run_training(num_gpus=...)`` path): one process per GPU on this
        node, NCCL, nnU-Net's trainer in DDP (each rank its share of the batch, rank 0 writes the checkpoints).
        Our trainer is built with the recipe's values in each process, which nnU-Net's own launcher cannot do.
        Live per-epoch logging is not sent across processes; the curves are read from the checkpoint after."""
        import torch.multiprocessing as mp
        from nnunetv2.run.run_training import find_free_network_port

        port = find_free_network_port()  # this training's own group (not torchrun's)
        mp.spawn(_ddp_rank, args=(self.num_gpus, port, str(self.work_dir), self.plans_identifier, self.n_proc_da,
                                  dataset_id, configuration, fold, None if results_dir is None else str(results_dir),
                                  validate, settings), nprocs=self.num_gpus, join=True)
        results = Path(results_dir).absolute() if results_dir is not None else self.paths.results
        return results / self.dataset_name(dataset_id) / model_folder_name(configuration, plans=self.plans_identifier)

    # ------------------------------------------------------------------ predict
    def predict(self, model_folder: str | os.PathLike, inputs: "str | os.PathLike | list[list[str | os.PathLike]]",
                output_dir: str | os.PathLike, save_probabilities: bool = False,
                checkpoint: str = "checkpoint_final.pth", fold: int | str = "all",
                use_mirroring: bool = True, tile_step_size: float = 0.5, overwrite: bool = False) -> list[Path]:
        """Predict cases with nnU-Net's sliding-window predictor, sequentially (no process pools).

        Args:
            model_folder: as returned by :meth:`train`.
            inputs: a folder of ``<case>_0000<ext>`` files, or one list of channel files per case.
            output_dir: receives ``<case><ext>`` (and ``<case>.npz`` + ``<case>.pkl`` with
                probabilities) and nnU-Net's ``dataset.json``/``plans.json``/``predict_from_raw_data_args.json``;
                written as a whole (a temporary folder renamed at the end): after a crash it does not exist.
            save_probabilities: also write the class probabilities (see :func:`semisam.data.load_probabilities`).
            checkpoint, fold: which weights.
            use_mirroring, tile_step_size: nnU-Net's test-time mirroring and sliding-window overlap.
            overwrite: replace an existing ``output_dir`` (with everything in it); otherwise it is an error.

        Returns:
            The segmentation files, in input order.

        Raises:
            SemisamError: missing checkpoint or input files, ``output_dir`` exists without ``overwrite``.
        """
        predictor = self.load_predictor(model_folder, checkpoint=checkpoint, fold=fold,
                                        use_mirroring=use_mirroring, tile_step_size=tile_step_size)
        file_ending = predictor.dataset_json["file_ending"]
        if isinstance(inputs, (str, os.PathLike)):
            from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

            if not Path(inputs).is_dir():
                raise SemisamError(f"input folder {inputs} does not exist")
            lists = create_lists_from_splitted_dataset_folder(str(inputs), file_ending)
        else:
            lists = [[str(f) for f in case] for case in inputs]
        if not lists:
            raise SemisamError(f"no input cases ending in {file_ending} to predict")
        for case in lists:
            for f in case:
                if not Path(f).is_file():
                    raise SemisamError(f"input image {f} does not exist")
        case_ids = [os.path.basename(case[0])[: -(len(file_ending) + 5)] for case in lists]
        output_dir = Path(output_dir).absolute()
        with self.env(), atomic_dir(output_dir, overwrite=overwrite) as tmp:
            predictor.predict_from_files_sequential(lists, str(tmp), save_probabilities=save_probabilities,
                                                    overwrite=True)
        return [output_dir / f"{c}{file_ending}" for c in case_ids]

    def load_predictor(self, model_folder: str | os.PathLike, checkpoint: str = "checkpoint_final.pth",
                       fold: int | str = "all", use_mirroring: bool = True, tile_step_size: float = 0.5):
        """An initialised ``nnUNetPredictor`` for a trained model folder.

        The network is rebuilt with nnU-Net's own builder from the saved plans. For checkpoints of
        ``nnUNetTrainer`` or ``nnUNetTrainerSemiSAM`` the trainer class is not looked up by name (nnU-Net's
        lookup imports every trainer module, and needs ``nnUNet_extTrainer`` for ours); other trainers are.
        """
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from semisam.nnunet.nnUNetTrainerSemiSAM import nnUNetTrainerSemiSAM
        from semisam.student.checkpoint import read_checkpoint

        model_folder = Path(model_folder)
        ckpt_file = model_folder / f"fold_{_check_fold(fold)}" / checkpoint
        if not ckpt_file.is_file():
            raise SemisamError(f"no checkpoint {ckpt_file}; train the student first")
        ckpt = read_checkpoint(ckpt_file)
        plans_manager = PlansManager(load_json(str(model_folder / "plans.json")))
        dataset_json = load_json(str(model_folder / "dataset.json"))
        configuration_manager = plans_manager.get_configuration(ckpt["init_args"]["configuration"])
        trainer_name = ckpt.get("trainer_name", TRAINER_NAME)
        trainer_class = nnUNetTrainerSemiSAM
        if trainer_name not in ("nnUNetTrainer", TRAINER_NAME):  # another trainer may build another network
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

            trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        network = trainer_class.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
            enable_deep_supervision=False,
        )
        weights = {(k[7:] if k.startswith("module.") else k): v for k, v in ckpt["network_weights"].items()}
        network.load_state_dict(weights)
        predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True,
                                    use_mirroring=use_mirroring,
                                    perform_everything_on_device=self.device.type == "cuda",
                                    device=self.device, verbose=False, verbose_preprocessing=False,
                                    allow_tqdm=False)
        predictor.manual_initialization(network.to(self.device), plans_manager, configuration_manager,
                                        [weights], dataset_json, trainer_name,
                                        ckpt.get("inference_allowed_mirroring_axes"))
        return predictor


def _ddp_rank(rank: int, world_size: int, port: int, work_dir: str, plans_identifier: str, n_proc_da: int | None,
              dataset_id: int, configuration: str, fold: int | str, results_dir: str | None, validate: bool,
              settings: dict) -> None:
    """One process of :meth:`NnUNetStudent._train_ddp` (what nnU-Net's ``run_ddp`` does, with our trainer)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from semisam import compat

    compat.install()
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(hours=2))
    torch.cuda.set_device(rank)
    student = NnUNetStudent(work_dir, device=f"cuda:{rank}", plans_identifier=plans_identifier, n_proc_da=n_proc_da)
    try:
        student._run_trainer(dataset_id, configuration, fold, results_dir, validate, settings)
    finally:
        dist.destroy_process_group()


def _check_fold(fold: int | str) -> int | str:
    if fold == "all":
        return "all"
    try:
        fold = int(fold)
    except (TypeError, ValueError):
        raise SemisamError(f"fold must be 'all' or an integer, got {fold!r}") from None
    if fold < 0:
        raise SemisamError(f"fold must be 'all' or an integer >= 0, got {fold}")
    return fold


def _data_identifier(plans_file: Path, configuration: str) -> str:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(load_json(str(plans_file)))
    if configuration not in pm.available_configurations:
        return f"<no {configuration}>"
    return pm.get_configuration(configuration).data_identifier

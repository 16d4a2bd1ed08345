"""Time per training iteration of ``nnUNetTrainerSemiSAM`` with online terms against nnU-Net's stock
``nnUNetTrainer``, at the same labeled batch size, as ratios from one run.

An online step sees ``--batch-size`` labeled plus (by default) as many unlabeled patches. ``--stock-batch-sizes``
times the stock trainer at more than one batch size, e.g. ``2 4``: against batch 4 (the same number of patches
per step) the ratio is the method's own cost (teacher forward, strong view, terms, EMA update) without the
extra patches. Ratios are always given against each stock row.

A benchmark, not a test (docs/benchmarks.md). One nnU-Net raw dataset (default: the embedded nuclei tiles made
by ``python -m data_prep nuclei``) is planned once; then each trainer trains ``--epochs`` × ``--iterations`` in
this process, one after another (never in parallel), from the same initial weights. Timed per trainer:

* ``step_s``: the training steps (``train_step``: for the online trainer also drawing the unlabeled batch, the
  EMA teacher's forward, the terms and the EMA update); drawing the labeled batch is not timed for either;
* ``epoch_start_s``: ``on_train_epoch_start`` (for the SAM term: the pseudo-label refreshes, including the SAM
  image encoder on first sight of each case).

Validation and checkpoints are not timed. Ratios are online / stock of ``step_s`` and of ``step_s +
epoch_start_s``. ``--init-checkpoint`` starts every trainer (and the EMA teachers) from a trained student of
the same plans, so that the SAM term is prompted from realistic predictions: an untrained network's noise
prompts SAM on every speck.

    OMP_NUM_THREADS=1 python benchmarks/online_overhead.py --raw data/Dataset501_Nuclei --work /tmp/ovh \\
        --epochs 4 --iterations 20
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RECIPES = {
    "mean_teacher": ["experiment=mean_teacher"],
    "weak_strong": ["experiment=weak_strong"],
    # half as many unlabeled patches as labeled ones per iteration (with --batch-size 2: one)
    "mean_teacher_half_unlabeled": ["experiment=mean_teacher", "online.unlabeled_batch_size=1"],
    # the SAM term from the first epoch, refreshed every epoch: the most refreshes a run can do
    "semisam": ["experiment=semisam", "online.sam_weight.start=0.0", "teacher.adapt.enabled=false"],
    # the same SAM term on each unlabeled patch of every iteration (no refreshes, no embedding cache)
    "semisam_iteration": ["experiment=semisam", "online.sam_mode=iteration", "online.sam_weight.start=0.0",
                          "teacher.adapt.enabled=false"],
}


def time_training(trainer, epochs: int, iterations: int) -> dict:
    trainer.on_train_start()
    step_s = start_s = 0.0
    for _ in range(epochs):
        trainer.on_epoch_start()
        t0 = time.perf_counter()
        trainer.on_train_epoch_start()
        start_s += time.perf_counter() - t0
        outputs = []
        for _ in range(iterations):
            batch = next(trainer.dataloader_train)
            t0 = time.perf_counter()
            outputs.append(trainer.train_step(batch))
            step_s += time.perf_counter() - t0
        trainer.on_train_epoch_end(outputs)
        trainer.current_epoch += 1
    trainer.current_epoch -= 1
    trainer.on_train_end()
    return {"step_s": step_s, "epoch_start_s": start_s, "iterations": epochs * iterations,
            "s_per_iteration": step_s / (epochs * iterations)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, required=True, help="nnU-Net raw dataset (semisam layout)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--stock-batch-sizes", type=int, nargs="+", default=None,
                    help="batch sizes of the stock trainer's rows (default: --batch-size)")
    ap.add_argument("--methods", nargs="+", default=["mean_teacher", "weak_strong", "semisam"], choices=list(RECIPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--init-checkpoint", type=Path, default=None,
                    help="an nnU-Net checkpoint of the same plans: every trainer's initial weights")
    args = ap.parse_args()

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from semisam.nnunet.nnUNetTrainerSemiSAM import TrainerOverrides
    from semisam.student import NnUNetStudent

    student = NnUNetStudent(args.work / "nnunet", device=args.device, n_proc_da=0)
    ds_id = student.add_raw_dataset(args.raw.resolve(), dataset_id=960)
    plans = student.paths.preprocessed / student.dataset_name(ds_id) / "nnUNetPlans.json"
    if not plans.is_file():
        student.plan_and_preprocess(ds_id, verify=False)
    results: dict[str, dict] = {}
    weights = None
    stock_sizes = args.stock_batch_sizes or [args.batch_size]
    stocks = {f"stock_b{b}" if len(stock_sizes) > 1 else "stock": b for b in stock_sizes}
    for name in [*stocks, *args.methods]:
        with student.env(args.work / "results" / name):
            base = student.build_trainer(ds_id, "2d", "all", epochs=args.epochs, iterations_per_epoch=args.iterations,
                                         val_iterations_per_epoch=1, batch_size=args.batch_size, seed=0)
            if name in stocks:
                trainer = nnUNetTrainer(plans={**base.plans_manager.plans, "continue_training": False},
                                        configuration="2d", fold="all", dataset_json=base.dataset_json,
                                        device=student.device)
                trainer.configuration_manager.configuration["batch_size"] = stocks[name]
                trainer.num_epochs, trainer.num_iterations_per_epoch = args.epochs, args.iterations
            else:
                trainer = base
                # no W&B run of the trainer's own: the stock trainer has none either
                trainer.apply_overrides(TrainerOverrides(recipe=[*RECIPES[name], "logger=disabled"], teacher_cache_dir=str(
                    args.work / "cache" / "embeddings")))
            trainer.initialize()
            if weights is None and args.init_checkpoint is not None:
                from semisam.nnunet.nnUNetTrainerSemiSAM import load_network_weights

                load_network_weights(trainer.network, args.init_checkpoint)
            if weights is None:
                weights = {k: v.clone() for k, v in trainer.network.state_dict().items()}
            trainer.network.load_state_dict(weights)
            if getattr(trainer, "ema", None) is not None:  # the teacher starts from the same weights
                trainer.ema.module.load_state_dict(weights)
            results[name] = time_training(trainer, args.epochs, args.iterations)
            print(name, json.dumps(results[name]), flush=True)
    tags = {stock_name: stock_name[len("stock"):] for stock_name in stocks}  # "" or "_b<size>"
    for name in args.methods:
        r = results[name]
        for stock_name, tag in tags.items():
            stock = results[stock_name]
            r[f"ratio_steps{tag}"] = r["step_s"] / stock["step_s"]
            r[f"ratio_with_refresh{tag}"] = (r["step_s"] + r["epoch_start_s"]) / (stock["step_s"] + stock["epoch_start_s"])
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "torch_threads": torch.get_num_threads(),
           "results": results}
    (args.work / "online_overhead.json").write_text(json.dumps(out, indent=2))
    print("| trainer | s / iteration | " + " | ".join(f"ratio to {s} (steps) | ratio to {s} (steps + refreshes)"
                                                     for s in stocks) + " |")
    print("| --- | --- |" + " --- | --- |" * len(stocks))
    for name in stocks:
        print(f"| nnUNetTrainer, batch {stocks[name]} | {results[name]['s_per_iteration']:.3f} |"
              + " | ".join(f" {results[name]['step_s'] / results[s]['step_s']:.2f} | –" for s in stocks) + " |")
    for name in args.methods:
        r = results[name]
        print(f"| {name} | {r['s_per_iteration']:.3f} |" + " | ".join(
            f" {r[f'ratio_steps{tag}']:.2f} | {r[f'ratio_with_refresh{tag}']:.2f}" for tag in tags.values()) + " |")


if __name__ == "__main__":
    main()

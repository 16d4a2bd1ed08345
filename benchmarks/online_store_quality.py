"""How good were the SAM term's targets? The pseudo-label store an online run last trained on, scored against
the hidden labels of its unlabeled cases, for every run of the given methods in a ``semisam compare`` folder.

An analysis after the runs, not part of training (docs/benchmarks.md, 6e): the trainer never reads a hidden
label; this script reads them once the run is finished, and nothing is chosen by its numbers. The store lives in
nnU-Net's preprocessed space (``<preprocessed>/<data identifier>__unlabeled/<case>_seg.b2nd``), so each hidden
label goes through the same nnU-Net preprocessor (the run's plans and configuration) before it is compared.

Per run: ``dice_kept`` (pooled Dice over the pixels that carry a pseudo-label), ``kept`` (their share),
``fg_pseudo`` and ``fg_true`` (the foreground share of those pixels in the store and in the hidden labels: a
store fatter than the truth shows as ``fg_pseudo > fg_true``), ``refreshed_at_epoch``.

    python benchmarks/online_store_quality.py runs/online/nuclei-1 --methods semisam "semisam filters.fusion=weighted"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_store(run_dir: Path):
    """An online run's pseudo-label store and what scores it: ``(store folder, dataset, configuration,
    hidden)``, where ``hidden(case)`` is the case's hidden label run through the run's nnU-Net preprocessing
    (``(1, *spatial)``, aligned with the store; -1 outside nnU-Net's crop)."""
    import yaml
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from semisam.data import RawDataset
    from semisam.online.unlabeled import unlabeled_folder
    from semisam.student.driver import DEFAULT_PLANS

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = RawDataset.open(cfg["dataset"]["raw_dir"])
    plans_files = sorted((run_dir / "round_00" / "nnunet" / "nnUNet_preprocessed").glob(f"*/{DEFAULT_PLANS}.json"))
    if not plans_files:
        raise SystemExit(f"error: {run_dir} holds no nnU-Net plans ({DEFAULT_PLANS}.json); is it a finished run?")
    plans = PlansManager(str(plans_files[0]))
    config = plans.get_configuration(cfg["student"]["configuration"])
    store = unlabeled_folder(plans_files[0].parent / config.data_identifier)
    if not store.is_dir():
        raise SystemExit(f"error: {run_dir} holds no pseudo-label store ({store}); is it an online run?")
    preprocessor = config.preprocessor_class(verbose=False)
    images = {c.case_id: c.image_files for c in data.unlabeled_cases()}

    def hidden(case: str):
        label = data.hidden_label_file(case)
        if label is None:
            raise SystemExit(f"error: unlabeled case {case} has no hidden label in {data.root}")
        _, seg, _ = preprocessor.run_case([str(f) for f in images[case]], str(label), plans, config,
                                          data.dataset_json)
        return seg

    return store, data, config, hidden


def score_run(run_dir: Path) -> dict:
    import numpy as np
    import torch

    from semisam.eval.metrics import PooledDice
    from semisam.online.unlabeled import decode_store, read_store, store_cases, store_epoch

    store, data, _, hidden = run_store(run_dir)
    dice = PooledDice({k: v for k, v in data.labels.items() if v != 0})
    kept = fg_pseudo = fg_true = total = 0
    for case in store_cases(store) or []:
        seg = hidden(case)
        target = decode_store(torch.from_numpy(read_store(store, case)), -1).numpy()
        keep = target >= 0
        dice.add(np.where(keep, target, 0), seg, keep=keep)
        kept += int(keep.sum())
        total += keep.size
        fg_pseudo += int(((target > 0) & keep).sum())
        fg_true += int(((seg > 0) & keep).sum())
    return {"dice_kept": dice.value(), "kept": kept / max(total, 1), "fg_pseudo": fg_pseudo / max(kept, 1),
            "fg_true": fg_true / max(kept, 1), "cases": dice.n_cases, "refreshed_at_epoch": store_epoch(store)}


def main(argv: list[str] | None = None) -> int:
    from semisam.compare.methods import slugify

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("compare_dir", type=Path)
    ap.add_argument("--methods", nargs="+", default=["semisam"], help="online methods (compare words or folder names)")
    ap.add_argument("--out", type=Path, help="write the per-run numbers here (JSON)")
    args = ap.parse_args(argv)
    results = {}
    for method in args.methods:
        runs = sorted(d for d in (args.compare_dir / "runs" / slugify(method)).glob("draw*_seed*") if d.is_dir())
        if not runs:
            raise SystemExit(f"error: {args.compare_dir / 'runs' / slugify(method)} holds no run")
        for run in runs:
            r = results.setdefault(method, {})[run.name] = score_run(run)
            print(f"{method:40s} {run.name:14s} dice_kept {r['dice_kept']:.3f}  kept {r['kept']:.3f}  "
                  f"fg pseudo {r['fg_pseudo']:.3f} / true {r['fg_true']:.3f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

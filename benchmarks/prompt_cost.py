"""What a SAM refresh costs per slice as the instance split's limit changes: the prompts SAM decodes and the
teacher's seconds, for each ``prompts.split_max_pieces`` value, on one trained student's predictions.

The student's hard predictions of a ``semisam compare`` run (``round_00/pred_test``, labels of test images the run
predicted; no label file is read) stand in for its probabilities (one-hot, so the recipe's below-threshold
candidates do not appear); the recipe's teacher pipeline (``experiment=semisam`` unless told otherwise, the
LiteMedSAM shipped with the package, not adapted) pseudo-labels each slice once per limit, the limits taking turns
slice by slice so both see the same machine load. A benchmark: one run, ratios within it (docs/benchmarks.md 6k).

    python benchmarks/prompt_cost.py --dataset data/bench/Dataset503_MNI152 \\
        --pred runs/tissue/mni152-1/runs/supervised/draw8_seed0/round_00/pred_test --limits 0 8 --slices 7 --stride 4
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, type=Path, help="the nnU-Net raw dataset the run was trained on")
    ap.add_argument("--pred", required=True, type=Path, help="a run's round_00/pred_test folder")
    ap.add_argument("--limits", type=int, nargs="+", default=[0, 8], help="prompts.split_max_pieces values")
    ap.add_argument("--slices", type=int, default=8, help="how many test cases (sorted by name)")
    ap.add_argument("--stride", type=int, default=1, help="take every k-th test case")
    ap.add_argument("--cache", type=Path, default=None, help="an embedding cache folder to reuse")
    ap.add_argument("overrides", nargs="*", default=["experiment=semisam"], help="recipe overrides")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from semisam.config.compose import compose
    from semisam.data import RawDataset
    from semisam.prompts import iter_slices
    from semisam.pseudolabel.pipeline import build_pseudolabeler

    torch.set_num_threads(1)
    ds = RawDataset.open(args.dataset)
    channel_names = ds.dataset_json["channel_names"]
    labelers = {}
    for limit in args.limits:
        cfg = compose([*args.overrides, f"prompts.split_max_pieces={limit}"])
        labelers[limit] = build_pseudolabeler(cfg, ignore_label=ds.pseudo_ignore_label, channel_names=channel_names,
                                              cache_dir=str(args.cache) if args.cache else None)
    n_classes = max(ds.labels.values()) + 1
    cases = [c for c in ds.test_cases() if (args.pred / f"{c.case_id}{ds.file_ending}").is_file()]
    cases = cases[:: max(args.stride, 1)][: args.slices]
    if not cases:
        raise SystemExit(f"error: no test-case predictions in {args.pred}; give a run's round_00/pred_test")
    totals = {limit: {"objects": 0, "seconds": 0.0, "accepted": 0} for limit in args.limits}
    for case in cases:
        case_id = case.case_id
        image = ds.read_image(case.image_files)[0]
        pred = ds.read_seg(args.pred / f"{case_id}{ds.file_ending}")[0][0]
        probs = np.stack([(pred == k) for k in range(n_classes)]).astype(np.float32)
        row = []
        for limit, labeler in labelers.items():
            for _, image_slice in iter_slices(labeler.view.apply(image), labeler.p.slice_axis):
                labeler.teacher.embed(image_slice)  # outside the clock; the pipeline then finds it cached
            t0 = time.perf_counter()
            out = labeler(image, probs, case_id)
            seconds = time.perf_counter() - t0
            t = totals[limit]
            t["objects"] += out.stats["n_objects"]
            t["seconds"] += seconds
            t["accepted"] += bool(out.accepted)
            row.append(f"limit {limit}: {out.stats['n_objects']} prompts {seconds:.1f} s")
        print(case_id, " | ".join(row), flush=True)
    base = totals[args.limits[0]]
    print(f"{len(cases)} slices")
    for limit, t in totals.items():
        print(f"split_max_pieces={limit}: {t['objects']} prompts, {t['seconds']:.1f} s "
              f"({t['seconds'] / base['seconds']:.2f}x of limit {args.limits[0]}), {t['accepted']} slices accepted")


if __name__ == "__main__":
    main()

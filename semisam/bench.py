"""``semisam bench``: does the teacher make pseudo-labels better than the student's own? Measured, not assumed.

On a dataset with hidden labels (e.g. ``python -m data_prep nuclei --labeled 4``), it

1. trains the supervised nnU-Net student on the labeled cases (or reuses it from ``--work-dir``) and predicts
   the unlabeled cases with probabilities,
2. builds the teacher once and pseudo-labels every unlabeled case for each prompt recipe × fusion mode,
   zero-shot and after adaptation on the labeled cases,
3. scores each against ``labelsHidden/`` (pooled Dice; for ``agree``, Dice on the kept pixels and the fraction
   kept), and the teacher alone on the test cases with prompts from their true masks (teacher quality
   independent of the student),
4. times the image encoder (cache misses), the cache's second pass and the mask decoder per prompt.

Prints a markdown table and writes everything to ``<work-dir>/bench.json``. Hidden and test labels are read
here for scoring only.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from semisam.utils.io import write_json_atomic
from semisam.utils.progress import speaker

FUSIONS = ("student", "sam", "agree", "weighted")
PROMPT_RECIPES = {
    "box": dict(box=True, box_margin=2, split_instances=False),
    "instances": dict(box=True, box_margin=2, split_instances=True, split_min_distance=3),
}


_say = speaker("bench")


def train_student(raw_dir: Path, work: Path, *, epochs: int, iterations: int, device: str, seed: int = 0) -> Path:
    """Round-0 student trained with ``seed`` (reused when ``work`` already holds it, whatever its seed); returns
    the unlabeled-probabilities folder."""
    from semisam.data import RawDataset
    from semisam.student.driver import NnUNetStudent

    ds = RawDataset.open(raw_dir)
    probs_dir = work / "pred_unlabeled"
    if probs_dir.is_dir():
        return probs_dir
    student = NnUNetStudent(work / "nnunet", device=device)
    ds_id = student.add_raw_dataset(raw_dir, 501)
    student.plan_and_preprocess(ds_id, ("2d",))
    t0 = time.time()
    model = student.train(ds_id, "2d", "all", epochs=epochs, iterations_per_epoch=iterations,
                          val_iterations_per_epoch=5, seed=seed)
    _say(f"student trained in {time.time() - t0:.0f} s")
    student.predict(model, [list(c.image_files) for c in ds.unlabeled_cases()], probs_dir, save_probabilities=True)
    test_dir = work / "pred_test"
    student.predict(model, [list(c.image_files) for c in ds.test_cases()], test_dir)
    return probs_dir


def one_hot(label_zyx: np.ndarray, n_classes: int) -> np.ndarray:
    """True labels as 'probabilities' (test cases only: prompts from the truth, to score the teacher alone)."""
    return np.stack([(label_zyx == k).astype(np.float32) for k in range(n_classes)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from semisam import compat

    compat.install()
    import torch

    from semisam.config import compose
    from semisam.data import RawDataset
    from semisam.eval.metrics import pooled_dice
    from semisam.loop.evaluation import pseudo_quality
    from semisam.data.probabilities import load_probabilities
    from semisam.pseudolabel.pipeline import FilterSettings, PromptSettings, PseudoLabeler, build_pseudolabeler

    torch.manual_seed(args.seed)  # belt and braces: the student and the teacher get the seed explicitly
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ds = RawDataset.open(args.raw_dir)
    fg = {k: v for k, v in ds.labels.items() if v}
    ignore = ds.pseudo_ignore_label
    probs_dir = train_student(Path(args.raw_dir), work, epochs=args.epochs, iterations=args.iterations,
                              device=args.device, seed=args.seed)
    unl = ds.unlabeled_cases()
    images = {c.case_id: ds.read_image(c.image_files)[0] for c in unl}
    probs = {c.case_id: load_probabilities(probs_dir / f"{c.case_id}.npz")[0] for c in unl}
    test = [(c.case_id, ds.read_image(c.image_files)[0], ds.read_seg(c.label_file)[0][0]) for c in ds.test_cases()]

    cfg = compose([f"dataset.raw_dir={args.raw_dir}", f"teacher={args.teacher}", f"teacher.adapt.steps={args.adapt_steps}",
                   f"device={args.device}", f"seed={args.seed}"]
                  + ([f"teacher.checkpoint={args.checkpoint}"] if args.checkpoint else []))
    base = build_pseudolabeler(cfg, ignore_label=ignore, channel_names=ds.dataset_json["channel_names"],
                               cache_dir=str(work / "cache"))
    teacher = base.teacher
    cache = teacher.cache
    results: dict[str, Any] = {"dataset": str(args.raw_dir), "n_labeled": len(ds.labeled_cases()),
                               "n_unlabeled": len(unl), "n_test": len(test), "teacher": args.teacher, "rows": []}

    # --- throughput: encoder on a cold cache, then the cache's second pass --------------------------------
    cache.clear_memory()
    cold = EmbedTimer(teacher, images, base.view)
    results["timing"] = {"encode_s_per_image": cold.first, "cache_second_pass_s_per_image": cold.second,
                         "cache_speedup": cold.first / max(cold.second, 1e-9)}

    def labeler(prompt_name: str, fusion: str) -> PseudoLabeler:
        p = PromptSettings(**{**dataclasses.asdict(base.p), **PROMPT_RECIPES[prompt_name]})
        f = FilterSettings(**{**dataclasses.asdict(base.f), "fusion": fusion, "case_min_accept": 0.0})
        return PseudoLabeler(teacher, view=base.view, prompts=p, filters=f, ignore_label=ignore,
                             seed=cfg.seed, adapt_settings=base.adapt_settings)

    def score(stage: str) -> None:
        for prompt_name in PROMPT_RECIPES:
            # teacher alone on the test cases, prompted from their true masks
            lt = labeler(prompt_name, "sam")
            true_prompted = {cid: lt(img, one_hot(lab, len(ds.labels)), cid) for cid, img, lab in test}
            dice_true = pooled_dice([(r.teacher, lab) for (_, _, lab), r in zip(test, true_prompted.values())], fg, ignore)
            for fusion in FUSIONS:
                lab = labeler(prompt_name, fusion)
                t0 = time.time()
                out = {cid: lab(images[cid], probs[cid], cid) for cid in images}
                dt = time.time() - t0
                arrays = {cid: (r.pseudo, r.student, r.teacher) for cid, r in out.items()}
                q = pseudo_quality(ds, arrays, list(out), fg, ignore)
                n_prompts = sum(s.stats.get("n_objects", 0) for s in out.values())
                results["rows"].append({"teacher": stage, "prompts": prompt_name, "fusion": fusion, **q,
                                        "teacher_dice_true_prompts_test": dice_true,
                                        "decode_s_per_prompt": dt / max(n_prompts, 1), "n_prompts": n_prompts})
                _say(f"{stage:9s} {prompt_name:9s} {fusion:8s} kept-px Dice {_f3(q['accepted_dice'])} "
                     f"kept {100 * (q['kept_fraction'] or 0):.1f}%  student {_f3(q['student_dice'])} SAM {_f3(q['teacher_dice'])}")

    score("zero-shot")
    t0 = time.time()
    adapt = base.adapt(ds.image_label_pairs(ds.labeled_cases()), sorted(fg.values()), work / "adapted.pt")
    results["adapt"] = {"seconds": time.time() - t0, **{k: v for k, v in adapt.items() if isinstance(v, (int, float, bool))}}
    score("adapted")
    results["cache"] = cache.stats()
    write_json_atomic(work / "bench.json", results)
    print(table(results))
    return results


def _f3(x: float | None) -> str:
    """A Dice for the progress lines; "–" when undefined (None: nothing to score)."""
    return "–" if x is None else f"{x:.3f}"


class EmbedTimer:
    """Seconds per image for the encoder (cold cache) and for the same images again (cache hits)."""

    def __init__(self, teacher, images: dict[str, np.ndarray], view):
        mapped = [view.apply(img)[..., 0, :, :] for img in images.values()]  # the teacher's view, first slice
        teacher_intensity, teacher.intensity = teacher.intensity, None
        try:
            t0 = time.time()
            for m in mapped:
                teacher.embed(m)
            self.first = (time.time() - t0) / len(mapped)
            t0 = time.time()
            for m in mapped:
                teacher.embed(m)
            self.second = (time.time() - t0) / len(mapped)
        finally:
            teacher.intensity = teacher_intensity


def table(results: dict) -> str:
    def f(x: Any) -> str:
        return "–" if x is None else f"{x:.3f}"

    rows = results["rows"]
    lines = [f"teacher {results['teacher']}: {results['n_labeled']} labeled, {results['n_unlabeled']} unlabeled, "
             f"{results['n_test']} test cases", "",
             f"student's own prediction on the unlabeled cases: Dice {f(rows[0]['student_dice'])}", "",
             "| teacher | prompts | SAM raw (unlabeled) | SAM, true-mask prompts (test) | fusion | pseudo-label Dice (kept px) | kept | student on the same px |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['teacher']} | {r['prompts']} | {f(r['teacher_dice'])} | {f(r['teacher_dice_true_prompts_test'])} | "
                     f"{r['fusion']} | {f(r['accepted_dice'])} | {100 * (r['kept_fraction'] or 0):.1f}% | {f(r['student_dice_on_kept'])} |")
    t = results["timing"]
    lines += ["", f"encoder {t['encode_s_per_image']:.3f} s/image; cache second pass {t['cache_second_pass_s_per_image'] * 1000:.2f} "
              f"ms/image ({t['cache_speedup']:.0f}× faster); decoder "
              f"{np.median([r['decode_s_per_prompt'] for r in rows]) * 1000:.1f} ms/prompt (whole pipeline, median over rows); "
              f"adaptation {results['adapt']['seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="semisam bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--raw-dir", required=True, help="nnU-Net raw dataset with labelsHidden/ (e.g. from data_prep)")
    p.add_argument("--work-dir", required=True, help="folder for the student, caches and bench.json (reused)")
    p.add_argument("--teacher", default="litemedsam")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--adapt-steps", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the student's training and the teacher's prompt jitter and adaptation (a student "
                        "already in --work-dir is reused whatever its seed)")
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

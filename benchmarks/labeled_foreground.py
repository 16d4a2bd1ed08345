"""Does the labeled case's own foreground share tell when a method pays? One row per labeled draw of the given
``semisam compare`` folders (seed 0): the labeled cases' foreground share (their labels, which a run has), the
supervised-only student's test foreground over the true one (how fat it is; this column reads the test labels),
its test Dice, and each method's Dice minus it; then Spearman's rank correlation of the labeled share with the
student's fatness and with each method's difference.

An analysis after the runs (docs/benchmarks.md, end of 6h): nothing is chosen by its numbers.

    python benchmarks/labeled_foreground.py runs/online/nuclei-1 runs/confirm/nuclei-1 --methods semisam weak_strong
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def dice(compare_dir: Path, method: str, draw: int) -> float | None:
    from semisam.compare.methods import slugify

    summary = compare_dir / "runs" / slugify(method) / f"draw{draw}_seed0" / "summary.json"
    return json.loads(summary.read_text())["selected"]["test"]["dice_mean"] if summary.is_file() else None


def fatness(compare_dir: Path, method: str, draw: int) -> float | None:
    """A run's test foreground over the true test foreground (None when the run is not there)."""
    from semisam.compare.methods import slugify
    from semisam.data import RawDataset

    pred_dir = compare_dir / "runs" / slugify(method) / f"draw{draw}_seed0" / "round_00" / "pred_test"
    if not pred_dir.is_dir():
        return None
    data = RawDataset.open(compare_dir / "data" / f"draw_{draw}")
    predicted = true = 0
    for case in data.test_cases():
        predicted += int((data.read_seg(pred_dir / f"{case.case_id}{data.file_ending}")[0] > 0).sum())
        true += int((data.read_seg(case.label_file)[0] > 0).sum())
    return predicted / max(true, 1)


def draw_row(compare_dir: Path, draw: int) -> dict:
    """The labeled share and the supervised student's test foreground / true foreground of one draw."""
    import numpy as np

    from semisam.data import RawDataset

    data = RawDataset.open(compare_dir / "data" / f"draw_{draw}")
    labeled = [data.read_seg(c.label_file)[0] > 0 for c in data.labeled_cases()]
    return {"labeled_share": float(np.mean([m.mean() for m in labeled])),
            "fatness": fatness(compare_dir, "supervised", draw)}


def main(argv: list[str] | None = None) -> int:
    from scipy import stats

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("compare_dirs", type=Path, nargs="+")
    ap.add_argument("--methods", nargs="+", default=["semisam", "weak_strong"])
    ap.add_argument("--fatness-of", nargs="*", default=[],
                    help="also print these methods' test foreground / true per draw (e.g. semisam)")
    args = ap.parse_args(argv)
    rows: dict[int, dict] = {}
    for compare_dir in args.compare_dirs:  # a draw in several folders: its first folder with supervised-only
        for run in sorted((compare_dir / "runs" / "supervised").glob("draw*_seed0")):
            draw = int(run.name[len("draw"):].split("_")[0])
            if draw in rows or dice(compare_dir, "supervised", draw) is None:
                continue
            rows[draw] = {**draw_row(compare_dir, draw), "supervised": dice(compare_dir, "supervised", draw)}
            rows[draw].update({m: None for m in args.methods})
    for compare_dir in args.compare_dirs:
        for draw, row in rows.items():
            for m in args.methods:
                if row[m] is None:
                    row[m] = dice(compare_dir, m, draw)
    print("| draw | labeled foreground share | supervised test foreground / true | supervised | "
          + " | ".join(f"{m} − supervised" for m in args.methods) + " |")
    print("| --- | --- | --- | --- |" + " --- |" * len(args.methods))
    for draw in sorted(rows):
        r = rows[draw]
        print(f"| {draw} | {r['labeled_share']:.3f} | {r['fatness']:.2f} | {r['supervised']:.3f} | " + " | ".join(
            "–" if r[m] is None else f"{r[m] - r['supervised']:+.3f}" for m in args.methods) + " |")
    share = [rows[d]["labeled_share"] for d in sorted(rows)]
    rho = stats.spearmanr(share, [rows[d]["fatness"] for d in sorted(rows)]).statistic
    print(f"\nSpearman, labeled share vs fatness: {rho:+.2f} (n = {len(rows)})")
    for m in args.methods:
        have = [d for d in sorted(rows) if rows[d][m] is not None]
        if len(have) > 2:
            rho = stats.spearmanr([rows[d]["labeled_share"] for d in have],
                                  [rows[d][m] - rows[d]["supervised"] for d in have]).statistic
            print(f"Spearman, labeled share vs {m} − supervised: {rho:+.2f} (n = {len(have)})")
    for m in args.fatness_of:
        for draw in sorted(rows):
            ratio = next((f for f in (fatness(c, m, draw) for c in args.compare_dirs) if f is not None), None)
            if ratio is not None:
                print(f"{m}, draw {draw}: test foreground / true {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

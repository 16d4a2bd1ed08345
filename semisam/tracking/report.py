"""``report.md``: one table row per loop round, the best round's gain over round 0, links to the plots.

The round record (a plain dict, one per round; what :meth:`Tracker.log_round` stores in ``metrics.json``
and what :func:`write_report` and :func:`semisam.tracking.plots.plot_rounds` read). Every key except
``round`` is optional; a missing key or ``None`` is shown as "–" / skipped::

    {
      "round": 0,                      # 0 = the supervised baseline (labeled cases only)
      "n_labeled": 4,                  # labeled cases in this round's training set
      "n_pseudo": 12,                  # pseudo-labeled cases in this round's training set
      "n_added": 5,                    # cases newly accepted by this round's teacher/filters
      "n_candidates": 20,              # unlabeled cases the teacher looked at
      "accept_rate": 0.6,              # accepted fraction of the candidates in [0, 1] (unit set by the loop)
      "test": {"dice_mean": 0.81, "hd95_mean": 3.2,
               "dice_per_class": {"nucleus": 0.81}, "hd95_per_class": {"nucleus": 3.2}},
      "val": {"dice_mean": 0.79} | None,                 # nnU-Net's validation / pseudo Dice
      "pseudo_quality": {                                # vs labelsHidden; None when no hidden labels
          "accepted_dice": 0.92,       # fused pseudo-labels on accepted (non-ignore) pixels
          "rejected_dice": 0.61,       # what the rejected pixels would have scored
          "student_dice": 0.89,        # the student's raw prediction
          "teacher_dice": 0.85,        # SAM's raw masks
          "kept_fraction": 0.95,       # fraction of pixels not set to ignore
      } | None,
      "timings": {"train_s": 120.0, "predict_s": 10.0, "teacher_s": 30.0},   # seconds
      "cache": {"hits": 20, "misses": 0},                                      # teacher embedding cache
    }
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from semisam.utils.io import atomic_write_path

MAX_CLASS_COLUMNS = 4


def _get(record: Mapping[str, Any], *keys: str) -> Any:
    """``record[k1][k2]...`` or ``None`` when any level is missing / not a dict."""
    value: Any = record
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"


def round_time_s(record: Mapping[str, Any]) -> float | None:
    """The round's wall time: ``timings.total_s`` if given, else the sum of its ``*_s`` entries."""
    timings = record.get("timings")
    if not isinstance(timings, Mapping):
        return None
    if isinstance(timings.get("total_s"), (int, float)):
        return float(timings["total_s"])
    parts = [float(v) for k, v in timings.items() if k.endswith("_s") and isinstance(v, (int, float))]
    return sum(parts) if parts else None


def class_names(records: list[Mapping[str, Any]]) -> list[str]:
    """Class names found in any record's ``test.dice_per_class``, first-seen order."""
    names: list[str] = []
    for record in records:
        per_class = _get(record, "test", "dice_per_class")
        if isinstance(per_class, Mapping):
            names += [str(n) for n in per_class if str(n) not in names]
    return names


def best_vs_baseline(records: list[Mapping[str, Any]]) -> tuple[int, float, float | None] | None:
    """``(best round, its test Dice, delta vs round 0 or None)`` by ``test.dice_mean``; None if no Dice."""
    scored = [(r["round"], _get(r, "test", "dice_mean")) for r in records]
    scored = [(r, d) for r, d in scored if isinstance(d, (int, float)) and d == d]
    if not scored:
        return None
    best_round, best = max(scored, key=lambda x: x[1])
    base = dict(scored).get(0)
    return best_round, float(best), None if base is None else float(best - base)


def _table(records: list[Mapping[str, Any]]) -> list[str]:
    names = class_names(records)
    per_class = names if 1 < len(names) <= MAX_CLASS_COLUMNS else []
    has = {
        "hd95": any(_get(r, "test", "hd95_mean") is not None for r in records),
        "pq": any(isinstance(r.get("pseudo_quality"), Mapping) for r in records),
        "val": any(_get(r, "val", "dice_mean") is not None for r in records),
        "cache": any(isinstance(r.get("cache"), Mapping) for r in records),
    }
    header = ["round", "labeled", "pseudo (added)", "accept rate", "test Dice"]
    header += [f"Dice {n}" for n in per_class]
    header += ["test HD95"] if has["hd95"] else []
    header += ["PL Dice accepted", "PL Dice student"] if has["pq"] else []
    header += ["val Dice"] if has["val"] else []
    header += ["cache hits/misses"] if has["cache"] else []
    header += ["time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in records:
        pseudo = _fmt(r.get("n_pseudo"))
        if r.get("n_added") is not None:
            pseudo += f" (+{_fmt(r.get('n_added'))})"
        cells = [_fmt(r.get("round")), _fmt(r.get("n_labeled")), pseudo, _pct(r.get("accept_rate"))]
        cells.append(_fmt(_get(r, "test", "dice_mean")))
        cells += [_fmt(_get(r, "test", "dice_per_class", n)) for n in per_class]
        if has["hd95"]:
            cells.append(_fmt(_get(r, "test", "hd95_mean"), 2))
        if has["pq"]:
            cells += [_fmt(_get(r, "pseudo_quality", "accepted_dice")),
                      _fmt(_get(r, "pseudo_quality", "student_dice"))]
        if has["val"]:
            cells.append(_fmt(_get(r, "val", "dice_mean")))
        if has["cache"]:
            cells.append(f"{_fmt(_get(r, 'cache', 'hits'))}/{_fmt(_get(r, 'cache', 'misses'))}")
        cells.append(_fmt(round_time_s(r), 1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(
    run_dir: str | os.PathLike,
    records: list[Mapping[str, Any]],
    config_yaml: str | None = None,
    plots: list[Path] | None = None,
    title: str = "semisam run report",
) -> Path:
    """Write ``<run_dir>/report.md`` atomically and return its path.

    Args:
        run_dir: the experiment folder.
        records: round records (schema in this module's docstring); sorted by ``round`` here.
        config_yaml: the resolved config as YAML, shown at the end (optional).
        plots: PNGs to link (shown inline, paths relative to ``run_dir`` when inside it).
        title: the page heading.

    Returns:
        The path of ``report.md``.
    """
    run_dir = Path(run_dir)
    records = sorted(records, key=lambda r: r.get("round", 0))
    lines = [f"# {title}", ""]
    if not records:
        lines += ["No round has finished yet.", ""]
    else:
        lines += _table(records) + [""]
        best = best_vs_baseline(records)
        if best is None:
            lines += ["No test Dice recorded.", ""]
        else:
            best_round, best_dice, delta = best
            if delta is None:
                lines += [f"**Best round: {best_round}**, test Dice {best_dice:.3f} (no round 0 baseline).", ""]
            else:
                lines += [
                    f"**Best round: {best_round}**, test Dice {best_dice:.3f}, "
                    f"delta vs round 0 (supervised): {delta:+.3f}.",
                    "",
                ]
        names = class_names(records)
        if len(names) > MAX_CLASS_COLUMNS:
            lines += ["Per-class test Dice: see `metrics.json` (`rounds[*].test.dice_per_class`).", ""]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            plot = Path(plot)
            try:
                rel = plot.resolve().relative_to(run_dir.resolve()).as_posix()
            except ValueError:
                rel = plot.as_posix()
            lines += [f"![{plot.stem}]({rel})", ""]
    if config_yaml:
        lines += ["## Config", "", "```yaml", config_yaml.rstrip("\n"), "```", ""]
    path = run_dir / "report.md"
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path

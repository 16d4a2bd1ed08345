"""``report.md``: one table row per loop round, the selected round's gain over round 0, links to the plots.

Nothing here picks a round by test Dice: the caller passes the selected round (the last trained round, or
the best validation Dice round with ``loop.select_by_val``; see ``semisam.loop.rounds.select_round``) and
:func:`selected_entry` / :func:`write_report` report that round.

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
      "test": {"dice_mean": 0.81, "pooled_dice": 0.83, "hd95_mean": 3.2,   # None: undefined (conventions:
                                                                          # semisam.eval.metrics)
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
      "cache": {"hits": 20, "misses": 0, "disk_bytes": 2.1e6, "evictions": 0, ...},  # EmbeddingCache.stats()
      "trained": True,                 # False: a round the loop stopped in before training (not selectable)
    }

The selected round's entry (:func:`selected_entry`), stored as ``selected`` in ``summary.json`` and as the
top-level ``selected`` of ``metrics.json``, and flattened into the W&B summary as ``selected/...``
(``selected/test/dice_mean``, ``selected/delta_vs_round0/dice_mean``, ``selected/test/dice_per_class/<name>``,
...; undefined values are left out there)::

    {
      "round": 2,                      # the selected round
      "selection": "last",             # "last": the last trained round; "val": best validation Dice
      "n_labeled": 4, "n_pseudo": 12,  # its training set
      "test": {"dice_mean", "pooled_dice", "hd95_mean", "dice_per_class": {name: ...},
               "hd95_per_class": {name: ...}} | None,      # the round record's test metrics, as logged
      "val": {...} | None,             # the same for the validation cases (what "val" selected on)
      "pseudo_quality": {...} | None,  # the pseudo-labels this round's student was trained on (None: round 0
                                       # or no hidden labels)
      "round0_test": {...} | None,     # round 0's (supervised only) test metrics
      "delta_vs_round0": {"dice_mean", "pooled_dice", "hd95_mean",        # selected − round 0; a value is
                          "dice_per_class": {name: ...}} | None,          # None where either side is; the
    }                                                                     # whole entry None without test
                                                                          # metrics of both rounds

``summary.json`` (written by ``Experiment.finish``; its other keys also go, flattened with ``/``, into
``metrics.json``'s ``summary`` and the W&B summary)::

    {
      "stop_reason": "reached loop.max_rounds=2",
      "final_round": 2,                # the last trained round
      "selected_round": 2,             # = selected["round"]; None when no round was trained
      "selection": "last" | "val",     # = selected["selection"]
      "report": "<run_dir>/report.md",
      "selected": {...} | None,        # the entry above
    }
"""
from __future__ import annotations

import copy
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


SELECTIONS = {"last": "last round", "val": "best validation Dice"}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


def _delta(a: Any, b: Any) -> float | None:
    a, b = _number(a), _number(b)
    return None if a is None or b is None else a - b


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return copy.deepcopy(dict(value)) if isinstance(value, Mapping) else None


def selected_entry(records: list[Mapping[str, Any]], selected: int | None, selection: str) -> dict[str, Any] | None:
    """The selected round's metrics and its difference to round 0 (schema in this module's docstring).

    Args:
        records: round records (any order); the selected round's record must be among them.
        selected: the round the caller selected (never by test Dice), or None (no round trained).
        selection: how it was selected: ``"last"`` or ``"val"``.

    Returns:
        The entry, or None when ``selected`` is None.

    Raises:
        ValueError: unknown ``selection``, or no record of round ``selected``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {sorted(SELECTIONS)}, got {selection!r}")
    if selected is None:
        return None
    by_round = {r.get("round"): r for r in records}
    if selected not in by_round:
        raise ValueError(f"no record of the selected round {selected}")
    rec = by_round[selected]
    test = rec.get("test") if isinstance(rec.get("test"), Mapping) else None
    base = _get(by_round.get(0) or {}, "test")
    base = base if isinstance(base, Mapping) else None
    delta = None
    if test is not None and base is not None:
        delta = {k: _delta(test.get(k), base.get(k)) for k in ("dice_mean", "pooled_dice", "hd95_mean")}
        delta["dice_per_class"] = {n: _delta(_get(test, "dice_per_class", n), _get(base, "dice_per_class", n))
                                   for n in (test.get("dice_per_class") or {})}
    return {
        "round": int(selected),
        "selection": selection,
        "n_labeled": rec.get("n_labeled"),
        "n_pseudo": rec.get("n_pseudo"),
        "test": _dict_or_none(test),
        "val": _dict_or_none(rec.get("val")),
        "pseudo_quality": _dict_or_none(rec.get("pseudo_quality")),
        "round0_test": _dict_or_none(base),
        "delta_vs_round0": delta,
    }


def selection_line(records: list[Mapping[str, Any]], selected: int | None, selection: str) -> str:
    """One sentence: the selected round, how it was selected, its test Dice and the delta vs round 0."""
    entry = selected_entry(records, selected, selection)
    if entry is None:
        return "No round selected (no round was trained)."
    head = f"**Selected round: {entry['round']}** ({SELECTIONS[selection]})"
    dice = _number(_get(entry, "test", "dice_mean"))
    if dice is None:
        return f"{head}; no test Dice recorded."
    if entry["round0_test"] is None:
        return f"{head}, test Dice {dice:.3f} (no round 0 baseline)."
    delta = _get(entry, "delta_vs_round0", "dice_mean")
    delta_txt = "–" if delta is None else f"{delta:+.3f}"
    return f"{head}, test Dice {dice:.3f}, delta vs round 0 (supervised): {delta_txt}."


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
            disk = _get(r, "cache", "disk_bytes")  # the cache folder's size on disk after the round
            cells.append(f"{_fmt(_get(r, 'cache', 'hits'))}/{_fmt(_get(r, 'cache', 'misses'))}"
                         + ("" if disk is None else f", {disk / 1e6:.1f} MB"))
        cells.append(_fmt(round_time_s(r), 1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(
    run_dir: str | os.PathLike,
    records: list[Mapping[str, Any]],
    config_yaml: str | None = None,
    plots: list[Path] | None = None,
    title: str = "semisam run report",
    selected: int | None = None,
    selection: str = "last",
    sections: list[str] | None = None,
) -> Path:
    """Write ``<run_dir>/report.md`` atomically and return its path.

    Args:
        run_dir: the experiment folder.
        records: round records (schema in this module's docstring); sorted by ``round`` here.
        config_yaml: the resolved config as YAML, shown at the end (optional).
        plots: PNGs to link (shown inline, paths relative to ``run_dir`` when inside it).
        title: the page heading.
        selected: the round the caller selected (last trained, or best validation Dice); the report states
            its test Dice and delta vs round 0. None: no round selected.
        selection: how ``selected`` was chosen, ``"last"`` or ``"val"``.
        sections: further Markdown lines placed after the rounds' table (e.g. the rule calibration's table).

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
        lines += [selection_line(records, selected, selection), "",
                  "The round is selected without test labels (the last round, or the best validation Dice); "
                  "the other rounds' test Dice is shown for reference, not to pick from.", ""]
        names = class_names(records)
        if len(names) > MAX_CLASS_COLUMNS:
            lines += ["Per-class test Dice: see `metrics.json` (`rounds[*].test.dice_per_class`).", ""]
    lines += list(sections or [])
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

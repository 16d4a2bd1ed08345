"""PNG plots of the loop's round records (schema: ``semisam.tracking.report``).

Figures are built with ``matplotlib.figure.Figure`` (Agg rendering, no pyplot, no display, no global
backend change) and written atomically. A plot whose data is absent from every record is skipped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from semisam.tracking.report import _get, class_names
from semisam.utils.io import atomic_write_path

DPI = 100


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _series(records: Sequence[Mapping[str, Any]], *keys: str) -> tuple[list[int], list[float]]:
    """(rounds, values) of the records where ``record[keys...]`` is a number."""
    xs, ys = [], []
    for r in records:
        value = _get(r, *keys)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(int(r["round"]))
            ys.append(float(value))
    return xs, ys


def _axes(title: str, ylabel: str, rounds: list[int]) -> tuple[Figure, Any]:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    if rounds:
        ax.set_xticks(sorted(set(rounds)))
    ax.grid(alpha=0.3)
    return fig, ax


def plot_test_dice(records: Sequence[Mapping[str, Any]], out_file: str | os.PathLike) -> Path | None:
    """Test Dice per round: mean (bold) and each class; round 0 (supervised) as a dashed line."""
    xs, mean = _series(records, "test", "dice_mean")
    names = class_names(list(records))
    if not xs and not names:
        return None
    fig, ax = _axes("test Dice per round", "Dice", xs)
    for name in names:
        cx, cy = _series(records, "test", "dice_per_class", name)
        if cx and (len(names) > 1 or not xs):
            ax.plot(cx, cy, marker="o", lw=1, alpha=0.8, label=name)
    if xs:
        ax.plot(xs, mean, marker="o", lw=2.5, color="black", label="mean")
        if 0 in xs:
            ax.axhline(mean[xs.index(0)], ls="--", color="grey", label="round 0 (supervised)")
    ax.legend(fontsize="small")
    return save_figure(fig, out_file)


def plot_accept_rate(records: Sequence[Mapping[str, Any]], out_file: str | os.PathLike) -> Path | None:
    """Accept rate per round (bars, left axis) and pseudo-labeled cases added (line, right axis)."""
    xs, rate = _series(records, "accept_rate")
    ax_, added = _series(records, "n_added")
    if not xs and not ax_:
        return None
    fig, ax = _axes("pseudo-label accept rate per round", "accept rate", xs + ax_)
    if xs:
        ax.bar(xs, rate, color="tab:blue", alpha=0.7, label="accept rate")
        ax.set_ylim(0, 1.05)
    if ax_:
        twin = ax.twinx()
        twin.plot(ax_, added, marker="o", color="tab:orange", label="cases added")
        twin.set_ylabel("cases added")
        twin.set_ylim(0, 1.25 * max(added) + 1)
        twin.yaxis.set_major_locator(MaxNLocator(integer=True))
        twin.legend(loc="upper right", fontsize="small")
    ax.legend(loc="upper left", fontsize="small")
    return save_figure(fig, out_file)


PSEUDO_QUALITY_KEYS = {
    "accepted_dice": "accepted (fused)",
    "rejected_dice": "rejected",
    "student_dice": "student raw",
    "teacher_dice": "SAM raw",
}


def plot_pseudo_quality(records: Sequence[Mapping[str, Any]], out_file: str | os.PathLike) -> Path | None:
    """Pseudo-label Dice vs the hidden labels per round (accepted / rejected / student / SAM), if known."""
    lines = {label: _series(records, "pseudo_quality", key) for key, label in PSEUDO_QUALITY_KEYS.items()}
    lines = {label: s for label, s in lines.items() if s[0]}
    if not lines:
        return None
    rounds = [x for xs, _ in lines.values() for x in xs]
    fig, ax = _axes("pseudo-label quality vs hidden labels", "Dice", rounds)
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", label=label, ls=":" if label == "rejected" else "-")
    ax.legend(fontsize="small")
    return save_figure(fig, out_file)


def plot_test_hd95(records: Sequence[Mapping[str, Any]], out_file: str | os.PathLike) -> Path | None:
    """Test HD95 (mean over classes) per round."""
    xs, ys = _series(records, "test", "hd95_mean")
    if not xs:
        return None
    fig, ax = _axes("test HD95 per round", "HD95 (lower is better)", xs)
    ax.plot(xs, ys, marker="o", color="tab:red")
    if 0 in xs:
        ax.axhline(ys[xs.index(0)], ls="--", color="grey", label="round 0 (supervised)")
        ax.legend(fontsize="small")
    return save_figure(fig, out_file)


def plot_rounds(records: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Write every round plot that has data into ``out_dir``.

    Args:
        records: round records (``semisam.tracking.report`` schema), any order.
        out_dir: folder for ``test_dice.png``, ``test_hd95.png``, ``accept_rate.png``,
            ``pseudo_quality.png``.

    Returns:
        The PNGs written (plots without data are skipped).
    """
    out_dir = Path(out_dir)
    records = sorted((r for r in records if "round" in r), key=lambda r: r["round"])
    plots = [
        plot_test_dice(records, out_dir / "test_dice.png"),
        plot_test_hd95(records, out_dir / "test_hd95.png"),
        plot_accept_rate(records, out_dir / "accept_rate.png"),
        plot_pseudo_quality(records, out_dir / "pseudo_quality.png"),
    ]
    return [p for p in plots if p is not None]

"""Summaries over runs and paired differences with a t interval (pure functions over lists of floats).

A *paired difference* pairs each run of a method with the supervised run of the same labeled draw and seed:
``d_i = method_i − supervised_i``. Pairing removes what the two share (the draw's labeled cases, the seed's
round-0 student), so the interval is much tighter than the difference of two unpaired means. The 95 %
interval is Student's t over the ``n`` differences: ``mean ± t_{0.975, n−1} · sd / √n`` (undefined for
``n < 2``). Runs whose value is missing (``None`` / NaN, e.g. a failed run) are left out of both sides.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are real numbers (``None`` and NaN dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def describe(values: Iterable[float | None]) -> dict:
    """``{"n", "mean", "sd"}`` of the finite values (sample sd, ``ddof=1``; None where undefined)."""
    xs = finite(values)
    n = len(xs)
    mean = sum(xs) / n if n else None
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd}


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """Student's t confidence interval of the mean of ``values`` (``(None, None)`` for fewer than 2)."""
    from scipy import stats

    xs = finite(values)
    n = len(xs)
    if n < 2:
        return None, None
    d = describe(xs)
    if d["sd"] == 0:
        return d["mean"], d["mean"]
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * d["sd"] / math.sqrt(n)
    return d["mean"] - half, d["mean"] + half


def paired_difference(method: Sequence[float | None], baseline: Sequence[float | None], level: float = 0.95) -> dict:
    """Mean paired difference ``method − baseline`` and its t interval.

    Args:
        method, baseline: one value per pair, in the same order (``None`` / NaN drops the pair).
        level: confidence level of the interval.

    Returns:
        ``{"n", "mean", "sd", "lo", "hi", "diffs"}``; ``lo``/``hi`` are None for fewer than 2 pairs.

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(method) != len(baseline):
        raise ValueError(f"paired values differ in length: {len(method)} vs {len(baseline)}")
    diffs = [float(m) - float(b) for m, b in zip(method, baseline)
             if finite([m]) and finite([b])]
    lo, hi = t_interval(diffs, level)
    return {**describe(diffs), "lo": lo, "hi": hi, "diffs": diffs}

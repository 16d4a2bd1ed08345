"""The labeled / unlabeled / test split of a dataset: ``semisam_split.json``.

Format: ``{"labeled": [...], "unlabeled": [...], "test": [...], "seed": N, "ratio": r or null,
"source": "..."}``. Case ids are sorted within each list.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from semisam.utils.errors import SemisamError
from semisam.utils.io import write_json_atomic

SPLIT_FILE = "semisam_split.json"


@dataclass(frozen=True)
class Split:
    """Which training cases are labeled, which are unlabeled, and which cases are held out for testing.

    ``seed`` and ``ratio`` record how the split was drawn (``ratio`` is None when a count was given);
    ``source`` says what made the dataset (e.g. ``"synthetic"``, ``"nuclei"``).
    """

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    test: tuple[str, ...] = ()
    seed: int | None = None
    ratio: float | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("labeled", "unlabeled", "test"):
            object.__setattr__(self, name, tuple(sorted(str(c) for c in getattr(self, name))))
        groups = [set(self.labeled), set(self.unlabeled), set(self.test)]
        sizes = [len(self.labeled), len(self.unlabeled), len(self.test)]
        if [len(g) for g in groups] != sizes:
            raise SemisamError("split lists a case twice within one group; each case id must appear once")
        overlap = (groups[0] & groups[1]) | (groups[0] & groups[2]) | (groups[1] & groups[2])
        if overlap:
            raise SemisamError(f"split puts case(s) {sorted(overlap)[:5]} in more than one group")

    @property
    def training(self) -> tuple[str, ...]:
        """All training case ids (labeled and unlabeled), sorted."""
        return tuple(sorted(self.labeled + self.unlabeled))

    def to_json(self) -> dict[str, Any]:
        out = {"labeled": list(self.labeled), "unlabeled": list(self.unlabeled), "test": list(self.test),
               "seed": self.seed, "ratio": self.ratio, "source": self.source}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "split") -> "Split":
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), list) for k in ("labeled", "unlabeled")):
            raise SemisamError(f"{where} must be a JSON object with lists 'labeled' and 'unlabeled'")
        known = {"labeled", "unlabeled", "test", "seed", "ratio", "source"}
        return cls(labeled=tuple(obj["labeled"]), unlabeled=tuple(obj["unlabeled"]),
                   test=tuple(obj.get("test") or ()), seed=obj.get("seed"), ratio=obj.get("ratio"),
                   source=obj.get("source"), extra={k: v for k, v in obj.items() if k not in known})


def load_split(path: str | os.PathLike) -> Split:
    """Read a ``semisam_split.json``.

    Raises:
        SemisamError: the file is missing or is not a valid split.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise SemisamError(f"split file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise SemisamError(f"cannot read split file {path}: {e}") from None
    return Split.from_json(obj, where=str(path))


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write ``split`` to ``path`` atomically and return the path."""
    return write_json_atomic(path, split.to_json())


def num_labeled(n: int, *, labeled: int | None, ratio: float | None) -> int:
    """How many of ``n`` training cases are labeled for a count ``labeled`` or a fraction ``ratio``.

    ``ratio`` rounds up (``ceil(ratio * n)``), so any ratio in (0, 1] gives at least one labeled case.

    Raises:
        SemisamError: neither or both given, ``ratio`` outside (0, 1], ``labeled`` outside [1, n].
    """
    if (labeled is None) == (ratio is None):
        raise SemisamError("give exactly one of --labeled N or --ratio r")
    if n < 1:
        raise SemisamError("the dataset has no training cases to split")
    if ratio is not None:
        ratio = float(ratio)
        if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
            raise SemisamError(f"--ratio must be in (0, 1], got {ratio}")
        return max(1, min(n, math.ceil(ratio * n - 1e-9)))
    if isinstance(labeled, bool) or int(labeled) != labeled:
        raise SemisamError(f"--labeled must be an integer, got {labeled!r}")
    if not 1 <= int(labeled) <= n:
        raise SemisamError(f"--labeled must be between 1 and the number of training cases ({n}), got {labeled}")
    return int(labeled)


def make_split(case_ids: Iterable[str], *, labeled: int | None = None, ratio: float | None = None, seed: int = 0,
               test: Iterable[str] = (), source: str | None = None) -> Split:
    """Draw the labeled subset of ``case_ids`` at random, reproducibly.

    The ids are sorted before drawing, so the result depends only on the set of ids and ``seed``.

    Args:
        case_ids: training case ids (labeled + unlabeled).
        labeled: number of labeled cases, in [1, n]; or
        ratio: fraction of labeled cases, in (0, 1] (rounded up to a count).
        seed: seed of the draw.
        test: held-out case ids, recorded in the split.
        source: what made the dataset.

    Returns:
        The split.

    Raises:
        SemisamError: bad ``labeled`` / ``ratio`` (see :func:`num_labeled`) or duplicate ids.
    """
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        raise SemisamError("duplicate case ids in the training set")
    k = num_labeled(len(ids), labeled=labeled, ratio=ratio)
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    chosen = {ids[i] for i in order[:k]}
    return Split(labeled=tuple(c for c in ids if c in chosen), unlabeled=tuple(c for c in ids if c not in chosen),
                 test=tuple(test), seed=int(seed), ratio=None if ratio is None else float(ratio), source=source)

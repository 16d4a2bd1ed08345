"""semisam.data split files: drawing, validation, round trip."""
from __future__ import annotations

import json

import pytest

from semisam.data import Split, load_split, make_split, save_split
from semisam.utils.errors import SemisamError

IDS = [f"c{i:02d}" for i in range(10)]


def test_make_split_is_a_seeded_partition():
    s = make_split(reversed(IDS), labeled=3, seed=1, test=["t1"], source="x")
    assert len(s.labeled) == 3 and set(s.labeled) | set(s.unlabeled) == set(IDS)
    assert not set(s.labeled) & set(s.unlabeled)
    assert s == make_split(IDS, labeled=3, seed=1, test=["t1"], source="x")  # order of ids does not matter
    assert len({make_split(IDS, labeled=3, seed=k).labeled for k in range(8)}) > 1
    assert s.labeled == tuple(sorted(s.labeled))


@pytest.mark.parametrize("ratio,count", [(0.01, 1), (0.25, 3), (0.5, 5), (1.0, 10)])
def test_ratio_rounds_up(ratio, count):
    s = make_split(IDS, ratio=ratio, seed=0)
    assert len(s.labeled) == count and s.ratio == ratio


@pytest.mark.parametrize("kwargs,needle", [
    ({"ratio": 0.0}, "(0, 1]"), ({"ratio": 1.01}, "(0, 1]"), ({"ratio": float("nan")}, "(0, 1]"),
    ({"labeled": 0}, "between 1"), ({"labeled": 11}, "between 1 and the number of training cases (10)"),
    ({}, "exactly one"), ({"labeled": 2, "ratio": 0.5}, "exactly one"),
])
def test_bad_split_arguments(kwargs, needle):
    with pytest.raises(SemisamError, match=None) as e:
        make_split(IDS, seed=0, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_overlapping_groups_rejected():
    with pytest.raises(SemisamError, match="more than one group"):
        Split(labeled=("a",), unlabeled=("a", "b"))


def test_save_load_round_trip(tmp_path):
    s = make_split(IDS, ratio=0.3, seed=5, test=["t0", "t1"], source="unit")
    path = save_split(s, tmp_path / "semisam_split.json")
    obj = json.loads(path.read_text())
    assert set(obj) == {"labeled", "unlabeled", "test", "seed", "ratio", "source"}
    assert load_split(path) == s
    path.write_text("{not json")
    with pytest.raises(SemisamError, match="cannot read"):
        load_split(path)
    with pytest.raises(SemisamError, match="does not exist"):
        load_split(tmp_path / "missing.json")

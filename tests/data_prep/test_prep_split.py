"""data_prep split: correctness of the labeled / hidden partition; the source is never edited."""
from __future__ import annotations

import json

import pytest

from data_prep.split import make_group_split, split_dataset
from prep_helpers import file_bytes, run_cli
from semisam.data import RawDataset, check_raw_dataset, load_split
from semisam.utils.errors import SemisamError


def _ids(folder, ending=".png"):
    return {p.name[: -len(ending)] for p in folder.glob(f"*{ending}")} if folder.is_dir() else set()


def test_split_partitions_labels(tmp_path, plain_dataset):
    before = file_bytes(plain_dataset)
    out = split_dataset(plain_dataset, tmp_path / "Dataset991_Split", labeled=2, seed=1, verify=True)
    assert file_bytes(plain_dataset) == before  # source untouched
    split = load_split(out / "semisam_split.json")
    assert len(split.labeled) == 2 and len(split.unlabeled) == 4 and split.test == ("t06", "t07")
    in_tr, hidden = _ids(out / "labelsTr"), _ids(out / "labelsHidden")
    assert in_tr == set(split.labeled)                 # no hidden label in labelsTr
    assert hidden == set(split.unlabeled)              # no labeled label in labelsHidden
    assert not in_tr & hidden
    assert _ids(out / "imagesTr") == {f"{c}_0000" for c in split.training}
    # labels are moved verbatim
    for cid in split.labeled:
        assert (out / "labelsTr" / f"{cid}.png").read_bytes() == before[f"labelsTr/{cid}.png"]
    for cid in split.unlabeled:
        assert (out / "labelsHidden" / f"{cid}.png").read_bytes() == before[f"labelsTr/{cid}.png"]
    dj = json.loads((out / "dataset.json").read_text())
    assert set(dj["dataset"]) == set(split.labeled) and dj["numTraining"] == 2
    assert dj["labels"] == {"background": 0, "a": 1, "b": 2, "ignore": 3}
    assert dj["licence"] == "test"  # other keys of the source are kept
    ds = RawDataset.open(out)
    assert [c.case_id for c in ds.unlabeled_cases()] == list(split.unlabeled)
    assert not hasattr(ds.unlabeled_cases()[0], "label_file")


def test_split_deterministic_and_ratio(tmp_path, plain_dataset):
    a = load_split(split_dataset(plain_dataset, tmp_path / "a", ratio=0.5, seed=4) / "semisam_split.json")
    b = load_split(split_dataset(plain_dataset, tmp_path / "b", ratio=0.5, seed=4) / "semisam_split.json")
    assert a == b and len(a.labeled) == 3 and a.ratio == 0.5
    seeds = {load_split(split_dataset(plain_dataset, tmp_path / f"s{s}", labeled=2, seed=s)
                        / "semisam_split.json").labeled for s in range(6)}
    assert len(seeds) > 1
    full = load_split(split_dataset(plain_dataset, tmp_path / "full", ratio=1.0) / "semisam_split.json")
    assert full.unlabeled == () and not (tmp_path / "full" / "labelsHidden").exists()


def test_resplit_semisam_dataset_uses_hidden_labels(tmp_path, plain_dataset):
    first = split_dataset(plain_dataset, tmp_path / "first", labeled=1, seed=0)
    second = split_dataset(first, tmp_path / "second", labeled=5, seed=0)
    check_raw_dataset(second, nnunet=False)
    split = load_split(second / "semisam_split.json")
    assert len(split.labeled) == 5 and _ids(second / "labelsHidden") == set(split.unlabeled)


def test_split_refuses_in_place_and_unlabeled_sources(tmp_path, plain_dataset):
    with pytest.raises(SemisamError, match="differ"):
        split_dataset(plain_dataset, plain_dataset, labeled=1)
    (plain_dataset / "labelsTr" / "c03.png").unlink()
    with pytest.raises(SemisamError, match="not fully labeled"):
        split_dataset(plain_dataset, tmp_path / "x", labeled=1)
    assert not (tmp_path / "x").exists()


def test_split_cli(tmp_path, plain_dataset):
    out = tmp_path / "Dataset992_Cli"
    r = run_cli("split", plain_dataset, "--out", out, "--labeled", "3", "--seed", "2", "--no-verify")
    assert r.returncode == 0, r.stderr
    assert _ids(out / "labelsTr") == set(load_split(out / "semisam_split.json").labeled)


def test_group_split_keeps_groups_together():
    groups = {f"p{i}_{f}": f"p{i}" for i in range(5) for f in ("ED", "ES")}
    for seed in range(6):
        s = make_group_split(groups, labeled=2, seed=seed, test=["t0"], source="unit")
        assert len(s.labeled) == 4 and len(s.unlabeled) == 6 and s.test == ("t0",)
        assert {c.split("_")[0] for c in s.labeled}.isdisjoint({c.split("_")[0] for c in s.unlabeled})
    assert make_group_split(groups, ratio=0.5, seed=1).labeled == make_group_split(groups, ratio=0.5, seed=1).labeled
    assert len(make_group_split(groups, ratio=0.5, seed=1).labeled) == 6  # ceil(0.5 * 5 groups) = 3 groups
    with pytest.raises(SemisamError, match=r"--labeled counts patients here: .* \(5\), got 6"):
        make_group_split(groups, labeled=6, noun="patient")


def test_split_dataset_draws_case_groups(tmp_path, plain_dataset):
    # c00/c01, c02/c03, c04/c05 are three groups (e.g. two frames of one patient)
    dj = json.loads((plain_dataset / "dataset.json").read_text())
    dj["case_groups"] = {f"c{i:02d}": f"g{i // 2}" for i in range(6)}
    (plain_dataset / "dataset.json").write_text(json.dumps(dj))
    for seed in range(4):
        out = split_dataset(plain_dataset, tmp_path / f"s{seed}", labeled=1, seed=seed)
        split = load_split(out / "semisam_split.json")
        assert len(split.labeled) == 2 and int(split.labeled[0][1:]) // 2 == int(split.labeled[1][1:]) // 2
        # the grouping travels with the dataset, so a re-split draws by group too
        assert json.loads((out / "dataset.json").read_text())["case_groups"] == dj["case_groups"]
    again = load_split(split_dataset(tmp_path / "s0", tmp_path / "again", ratio=0.6, seed=3) / "semisam_split.json")
    assert len(again.labeled) == 4  # ceil(0.6 * 3 groups) = 2 groups

"""Sharding the teacher over torch.distributed ranks, in parts: the world from torchrun's environment, the
round-robin shares and their merge, the merged sums, and two real gloo ranks passing results and failures.

The whole commands under torchrun (2 CPU ranks against 1 process) are in tests/loop/test_loop.py, beside the run
they start from."""
from __future__ import annotations

import pickle
import socket

import numpy as np
import pytest

from semisam.eval.metrics import PooledDice
from semisam.teacher.cache import merge_cache_stats
from semisam.utils import distributed
from semisam.utils.distributed import World
from semisam.utils.errors import SemisamError


@pytest.fixture
def torchrun_env(monkeypatch):
    def set_world(rank: int, size: int, local: int | None = None) -> None:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(size))
        monkeypatch.setenv("LOCAL_RANK", str(rank if local is None else local))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return set_world


def test_without_torchrun_everything_is_one_process(torchrun_env):
    w = distributed.world()
    assert (w.rank, w.size, w.main, w.distributed) == (0, 1, True, False)
    assert distributed.shard([3, 1, 2]) == [3, 1, 2]
    assert distributed.lead(lambda: 7) == 7 and distributed.collect(lambda: 7) == [7]
    assert distributed.broadcast({"a": 1}) == {"a": 1} and distributed.gather(5) == [5]
    assert distributed.init("cpu") == w and not distributed.teacher_group()  # nothing initialised
    with pytest.raises(ValueError, match="boom"):  # one process: errors as they are
        distributed.collect(lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert distributed.rank_device("cuda:1") == "cuda:1"


def test_world_and_devices_from_torchrun_variables(torchrun_env):
    torchrun_env(3, 4, local=1)
    assert distributed.world() == World(3, 4, 1)
    assert distributed.rank_device("cuda") == "cuda:1" and distributed.rank_device("cpu") == "cpu"
    with pytest.raises(SemisamError, match=r"device=cuda:0 with 4 torchrun ranks.*set device=cuda"):
        distributed.rank_device("cuda:0")
    torchrun_env(4, 4)
    with pytest.raises(SemisamError, match="do not describe a world"):
        distributed.world()
    torchrun_env(0, 2)
    import os

    os.environ["WORLD_SIZE"] = "two"
    with pytest.raises(SemisamError, match=r"\$WORLD_SIZE='two' is not an integer"):
        distributed.world()


@pytest.mark.parametrize("words", [["compare", "--dataset", "{d}", "--out", "{o}"],
                                   ["evaluate", "--pred", "{d}", "--gt", "{d}", "--dataset-json", "{d}", "--out", "{o}"]])
def test_single_process_commands_refuse_torchrun_ranks(torchrun_env, tmp_path, capsys, words):
    """Each of two ranks would run the whole comparison (or evaluation) into the same folder: one line, exit 2,
    nothing written, on whichever rank."""
    from semisam.cli import main

    torchrun_env(1, 2)
    argv = [w.format(d=tmp_path / "data", o=tmp_path / "out") for w in words]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: semisam {words[0]} runs in one process")
    assert "without torchrun" in err[0] and not (tmp_path / "out").exists()


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_s() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.timeout_s() == 90.0
    for bad in ("0", "soon"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(SemisamError, match="must be a number of seconds > 0"):
            distributed.timeout_s()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 12])
def test_shares_are_round_robin_disjoint_and_merge_back_in_order(size):
    items = [f"case_{i:02d}" for i in range(10)]
    indexed = list(enumerate(items))
    shares = [distributed.shard(indexed, World(r, size, r)) for r in range(size)]
    assert sorted(i for s in shares for i, _ in s) == list(range(10))  # every case once
    assert all(i % size == r for r, s in enumerate(shares) for i, _ in s)  # round-robin by index
    # the ranks' results come back in the dataset's order, whatever the world size
    assert distributed.ordered(list(reversed(shares)), len(items)) == items


def test_merge_refuses_shares_that_do_not_cover_the_cases():
    with pytest.raises(SemisamError, match="item 1 is missing"):
        distributed.ordered([[(0, "a")], [(2, "c")]], 3)
    with pytest.raises(SemisamError, match="item 0 is repeated"):
        distributed.ordered([[(0, "a")], [(0, "a"), (1, "b")]], 2)
    with pytest.raises(SemisamError, match="item 5 is out of range"):
        distributed.ordered([[(5, "a")]], 1)


def test_pooled_dice_sums_merge_to_the_sums_of_all_cases():
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 3, (1, 16, 16)), rng.integers(0, 3, (1, 16, 16))) for _ in range(6)]
    labels = {"a": 1, "b": 2}
    whole = PooledDice(labels, ignore_label=2)
    parts = [PooledDice(labels, ignore_label=2) for _ in range(2)]
    for i, (pred, gt) in enumerate(cases):
        whole.add(pred, gt)
        parts[i % 2].add(pred, gt)
    parts[0].merge(pickle.loads(pickle.dumps(parts[1])))
    assert (parts[0].intersection, parts[0].size, parts[0].n_cases) == (whole.intersection, whole.size, 6)
    assert parts[0].value() == whole.value()
    with pytest.raises(SemisamError, match="other classes"):
        parts[0].merge(PooledDice({"a": 1}))


def test_pseudo_quality_shares_merge_to_one_process_result(tmp_path):
    """PseudoQuality travels to rank 0 without its dataset (pickled sums) and merges to the 1-process numbers."""
    from data_prep.synthetic import make_synthetic
    from semisam.data import RawDataset
    from semisam.loop.evaluation import PseudoQuality

    ds = RawDataset.open(make_synthetic(tmp_path / "Dataset900_Synthetic", n_train=5, n_labeled=1, n_test=0, size=32))
    fg = {k: v for k, v in ds.labels.items() if v}
    ignore = ds.pseudo_ignore_label
    whole, shares = PseudoQuality(ds, fg, ignore), [PseudoQuality(ds, fg, ignore) for _ in range(2)]
    for i, case in enumerate(ds.unlabeled_cases()):
        hidden = ds.read_seg(ds.hidden_label_file(case.case_id))[0][0]
        student = np.roll(hidden, i, axis=-1)
        pseudo = np.where(np.arange(hidden.shape[-1]) < 4 * i, ignore, student).astype(np.uint8)
        for q in (whole, shares[i % 2]):
            q.add(case.case_id, pseudo, student, hidden, accepted=i % 3 != 0)
    sent = pickle.loads(pickle.dumps(shares[1]))
    assert not hasattr(sent, "dataset")
    shares[0].merge(sent)
    assert shares[0].result() == whole.result() and whole.result()["n_cases"] == 4


def test_cache_counters_add_up_and_the_folder_is_read_after_every_rank():
    a = {"hits": 1, "hits_memory": 1, "hits_disk": 0, "misses": 3, "in_memory": 4, "hit_rate": 0.25,
         "disk_files": 3, "disk_bytes": 30, "evictions": 0, "write_errors": 0}
    b = dict(a, hits=0, hits_memory=0, misses=2, in_memory=2, hit_rate=0.0, disk_files=5, disk_bytes=50)
    now = dict(a, disk_files=5, disk_bytes=50)
    merged = merge_cache_stats([a, b], now)
    assert list(merged) == list(a)  # the same keys in the same order as one process's stats.json
    assert (merged["hits"], merged["misses"], merged["in_memory"], merged["hit_rate"]) == (1, 5, 6, 1 / 6)
    assert (merged["disk_files"], merged["disk_bytes"]) == (5, 50)
    assert merge_cache_stats([a], a) == a  # one process: its own stats
    assert merge_cache_stats([{}, {}], {}) == {}  # no teacher


# ------------------------------------------------------------------------------------------ two real gloo ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, results) -> None:
    """One rank of a 2-rank gloo world, as torchrun would start it."""
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), SEMISAM_DIST_TIMEOUT="60")
    out = {}
    with distributed.session("cpu") as w:
        out["teacher_group"] = distributed.teacher_group()
        out["lead"] = distributed.lead(lambda: {"from": w.rank})
        parts = distributed.collect(lambda: distributed.shard(list(range(5))))
        out["collect"] = parts
        try:  # a failure on rank 1 reaches rank 0 as one line; rank 1 raises its own
            distributed.collect(lambda: 1 / (1 - w.rank))
        except (SemisamError, ZeroDivisionError) as e:
            out["collect_error"] = f"{type(e).__name__}: {e}"
        try:  # a failure on rank 0 stops rank 1 instead of leaving it waiting
            distributed.lead(lambda: (_ for _ in ()).throw(SemisamError("rank 0's bad input")))
        except SemisamError as e:
            out["lead_error"] = f"{type(e).__name__}: {e}"
        out["after"] = distributed.broadcast("still in step" if w.main else None)
    out["teacher_group_after"] = distributed.teacher_group()
    results[rank] = out


def test_two_gloo_ranks_pass_results_and_failures():
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(_free_port(), results), nprocs=2, join=True)
    r0, r1 = results[0], results[1]
    assert r0["teacher_group"] and r1["teacher_group"] and not r0["teacher_group_after"]
    assert r0["lead"] == r1["lead"] == {"from": 0}
    assert r0["collect"] == [[0, 2, 4], [1, 3]] and r1["collect"] is None
    assert r0["collect_error"] == "SemisamError: rank 1: ZeroDivisionError: division by zero"
    assert r1["collect_error"] == "ZeroDivisionError: division by zero"
    assert r0["lead_error"] == "SemisamError: rank 0's bad input"
    assert r1["lead_error"] == "RankFailed: rank 1 stops: rank 0 failed (rank 0's bad input)"
    assert r0["after"] == r1["after"] == "still in step"  # both ranks went on in step


@pytest.mark.parametrize("overrides, words", [
    (["student.num_gpus=2", "device=cpu"], "student.num_gpus=2 trains with nnU-Net's DDP on CUDA GPUs, but device=cpu"),
    (["student.num_gpus=4", "device=auto"], "student.num_gpus=4 needs 4 CUDA GPUs, this machine has"),
    (["student.num_gpus=0"], "student.num_gpus=0 is out of range"),
])
def test_student_gpus_beyond_what_the_machine_has_are_one_line(overrides, words):
    """nnU-Net's DDP student (student.num_gpus > 1) needs CUDA; it cannot run on this CPU machine, so only the
    refusals are tested here."""
    import torch

    from semisam.config import compose

    if torch.cuda.device_count() >= 4:
        pytest.skip("a machine with 4 GPUs can train student.num_gpus=4")
    with pytest.raises(SemisamError) as info:
        compose(overrides)
    assert words in str(info.value) and "\n" not in str(info.value)

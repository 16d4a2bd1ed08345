"""The recipe's seed makes the nnU-Net student reproducible: same seed, same weights (CPU, augmentation in the
main process); another seed, other weights. Plus the seeding helpers, without training."""
import json
import time

import numpy as np
import pytest
import torch

import semisam.nnunet.nnUNetTrainerSemiSAM as trainer_module
from semisam.nnunet.nnUNetTrainerSemiSAM import (
    TrainerOverrides,
    derive_seed,
    seed_everything,
    seeded_augmenter_workers,
)
from semisam.student import NnUNetStudent
from semisam.student.checkpoint import read_checkpoint_weights
from semisam.utils.errors import SemisamError


def _train(student, dataset_id, results_dir, seed):
    model = student.train(dataset_id, "2d", "all", epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1,
                          batch_size=2, results_dir=results_dir, seed=seed)
    return read_checkpoint_weights(model / "fold_all" / "checkpoint_final.pth")


@pytest.mark.slow
def test_same_seed_same_student_other_seed_other_student(tmp_path):
    from data_prep.synthetic import make_synthetic

    raw = make_synthetic(tmp_path / "raw", n_train=4, n_labeled=4, n_test=0, dataset_id=912, name="Seeds")
    student = NnUNetStudent(tmp_path / "work", device="cpu", n_proc_da=0)
    dataset_id = student.add_raw_dataset(raw, dataset_id=912, name="Seeds")
    student.plan_and_preprocess(dataset_id)
    t0 = time.perf_counter()
    a = _train(student, dataset_id, tmp_path / "a", seed=7)
    torch.manual_seed(1234), np.random.seed(1234)  # whatever the process drew in between does not matter
    b = _train(student, dataset_id, tmp_path / "b", seed=7)
    c = _train(student, dataset_id, tmp_path / "c", seed=8)
    print(f"\n3 seeded trainings: {time.perf_counter() - t0:.1f} s")
    assert set(a) == set(b) == set(c)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another seed: other initial weights and another data stream
    assert not all(torch.equal(a[k], c[k]) for k in a)
    log = next((tmp_path / "a").rglob("training_log_*.txt")).read_text()
    assert "seed 7" in log


# ---------------------------------------------------------------- fast tests (no training)

def test_seed_override_validation_and_json(tmp_path):
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(SemisamError, match="seed"):
            TrainerOverrides(seed=bad)
    written = TrainerOverrides(num_epochs=2, seed=0).write_json(tmp_path / "t.json")
    assert json.loads(written.read_text()) == {"num_epochs": 2, "seed": 0}
    assert TrainerOverrides.from_json(written).seed == 0


def test_derive_seed_streams():
    seeds = {derive_seed(s, stream) for s in range(5) for stream in range(3)}
    assert len(seeds) == 15 and all(0 <= s < 2**32 for s in seeds)
    assert derive_seed(3, 2, 1, 0) == derive_seed(3, 2, 1, 0) != derive_seed(3, 2, 1, 1)
    seed_everything(derive_seed(3, 1))
    first = (np.random.rand(), torch.rand(1).item())
    seed_everything(derive_seed(3, 1))
    assert (np.random.rand(), torch.rand(1).item()) == first


def test_augmentation_workers_get_derived_seeds():
    """nnU-Net builds NonDetMultiThreadedAugmenter with seeds=None (workers seed numpy from the OS); within
    seeded_augmenter_workers each worker of each augmenter gets its own seed from the run's seed."""
    original = trainer_module._nnunet_trainer_module.NonDetMultiThreadedAugmenter
    loader = iter(())  # not started: the augmenter only records its seeds here
    with seeded_augmenter_workers(5):
        cls = trainer_module._nnunet_trainer_module.NonDetMultiThreadedAugmenter
        train = cls(data_loader=loader, transform=None, num_processes=3, num_cached=6, seeds=None)
        val = cls(data_loader=loader, transform=None, num_processes=1, num_cached=3, seeds=None)
        given = cls(loader, None, 2, 2, [11, 12])
    assert trainer_module._nnunet_trainer_module.NonDetMultiThreadedAugmenter is original
    assert isinstance(train, original)
    assert train.seeds == [derive_seed(5, trainer_module.SEED_STREAM_WORKERS, 0, i) for i in range(3)]
    assert val.seeds == [derive_seed(5, trainer_module.SEED_STREAM_WORKERS, 1, 0)]
    assert len(set(train.seeds + val.seeds)) == 4
    assert given.seeds == [11, 12]

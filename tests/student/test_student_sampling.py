"""Labeled oversampling through nnU-Net's own sampler: the real training loader of ``nnUNetTrainerSemiSAM``
draws the labeled cases with the asked share; the validation loader, share 0 and the edge cases stay uniform.

One tiny synthetic 2D dataset (6 cases, 64x64) is planned and preprocessed once per module; no training.
"""
import json
from collections import Counter

import numpy as np
import pytest

from semisam.nnunet.nnUNetTrainerSemiSAM import TrainerOverrides, labeled_sampling_probabilities
from semisam.student import NnUNetStudent
from semisam.utils.errors import SemisamError

LABELED = ["case_000", "case_003"]  # "labeled"; the other four stand for pseudo-labeled cases
DRAWS = 3000  # cases drawn per loader (batches of 2): the share's standard deviation is below 0.01


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    from data_prep.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("sampling")
    raw = make_synthetic(root / "raw", n_train=6, n_labeled=6, n_test=0, dataset_id=913, name="Sampling")
    student = NnUNetStudent(root / "work", device="cpu", n_proc_da=0)
    dataset_id = student.add_raw_dataset(raw, dataset_id=913, name="Sampling")
    student.plan_and_preprocess(dataset_id)
    return {"root": root, "student": student, "dataset_id": dataset_id}


def _loaders(preprocessed, tag, **sampling):
    """The trainer's real (training, validation) data loaders, built by nnU-Net's get_dataloaders."""
    student = preprocessed["student"]
    with student.env(preprocessed["root"] / f"results_{tag}"):
        trainer = student.build_trainer(preprocessed["dataset_id"], "2d", "all", epochs=1, iterations_per_epoch=1,
                                        val_iterations_per_epoch=1, batch_size=2, seed=0, **sampling)
        trainer.initialize()
        trainer.print_to_log_file("start")  # creates the log file (nnU-Net does it in on_train_start)
        train, val = trainer.get_dataloaders()
    log = trainer.log_file
    return train.data_loader, val.data_loader, open(log).read()


def _drawn(loader) -> Counter:
    """Identifiers the loader draws over many batches (its own ``get_indices``, as ``generate_train_batch``)."""
    counts = Counter()
    for _ in range(DRAWS // loader.batch_size):
        counts.update(loader.get_indices())
    return counts


def _labeled_fraction(counts: Counter) -> float:
    return sum(counts[c] for c in LABELED) / sum(counts.values())


@pytest.mark.slow
def test_training_loader_draws_the_labeled_share(preprocessed):
    train, val, log = _loaders(preprocessed, "half", labeled_cases=LABELED, labeled_share=0.5)
    assert len(train.indices) == 6
    counts = _drawn(train)
    assert _labeled_fraction(counts) == pytest.approx(0.5, abs=0.04)  # uniform would give 2/6
    # uniform among the labeled cases, and among the others
    assert counts["case_000"] == pytest.approx(counts["case_003"], rel=0.2)
    others = [counts[c] for c in counts if c not in LABELED]
    assert len(others) == 4 and max(others) < 1.3 * min(others)
    # a real batch comes from the same draw
    assert set(train.generate_train_batch()["keys"]) <= set(train.indices)
    # the validation loader is nnU-Net's uniform one
    assert val.sampling_probabilities is None
    assert _labeled_fraction(_drawn(val)) == pytest.approx(2 / 6, abs=0.04)
    assert "sampling 2 labeled of 6 training cases with probability 0.5 together" in log


@pytest.mark.slow
def test_share_zero_no_labeled_case_or_all_labeled_is_uniform(preprocessed):
    train, _, _ = _loaders(preprocessed, "zero", labeled_cases=LABELED, labeled_share=0.0)
    assert train.sampling_probabilities is None
    assert _labeled_fraction(_drawn(train)) == pytest.approx(2 / 6, abs=0.04)
    train, _, log = _loaders(preprocessed, "absent", labeled_cases=["not_a_case"], labeled_share=0.5)
    assert train.sampling_probabilities is None
    assert "none of the 6 training cases is among labeled_cases" in log
    everything = [f"case_{i:03d}" for i in range(6)]
    train, _, log = _loaders(preprocessed, "all", labeled_cases=everything, labeled_share=0.5)
    assert train.sampling_probabilities is None
    assert "all 6 training cases are labeled" in log


@pytest.mark.slow
def test_augmentation_workers_draw_the_labeled_share(preprocessed):
    """The recipes' default (2 augmentation workers, spawned): the workers receive the weighted loader (and the
    per-case transforms of ``pseudo_augmentation``)."""
    student = NnUNetStudent(preprocessed["root"] / "work", device="cpu", n_proc_da=2)
    with student.env(preprocessed["root"] / "results_workers"):
        trainer = student.build_trainer(preprocessed["dataset_id"], "2d", "all", epochs=1, iterations_per_epoch=1,
                                        val_iterations_per_epoch=1, batch_size=2, seed=0, labeled_cases=LABELED,
                                        labeled_share=0.5, pseudo_augmentation="da5")
        trainer.initialize()
        train, val = trainer.get_dataloaders()
    try:
        counts = Counter()
        for _ in range(200):  # real augmented batches, keys as the workers drew them
            counts.update(str(k) for k in next(train)["keys"])
    finally:
        train._finish()
        val._finish()
    assert sum(counts.values()) == 400
    assert _labeled_fraction(counts) == pytest.approx(0.5, abs=0.08)  # uniform would give 2/6


@pytest.mark.slow
def test_pseudo_labeled_cases_get_the_da5_transforms(preprocessed):
    """``pseudo_augmentation="da5"``: every sample of a pseudo-labeled case goes through nnU-Net's DA5 pipeline,
    every labeled one through the default pipeline, in real batches of the real training loader."""
    from semisam.nnunet.nnUNetTrainerSemiSAM import PerCaseTransforms

    train, val, log = _loaders(preprocessed, "da5", labeled_cases=LABELED, labeled_share=0.5,
                               pseudo_augmentation="da5")
    per_case = train.transforms
    assert isinstance(per_case, PerCaseTransforms) and not isinstance(val.transforms, PerCaseTransforms)
    # DA5's pipeline has transforms nnU-Net's default has not (median filter, sharpening, local gamma, ...)
    assert "MedianFilterTransform" in repr(per_case.pseudo) and "MedianFilterTransform" not in repr(per_case.labeled)
    assert "pseudo-labeled cases get nnU-Net's DA5 augmentation, the 2 labeled cases the default" in log

    applied = []

    def recording(kind, pipeline):
        def run(**data):
            applied.append(kind)
            return pipeline(**data)
        return run

    per_case.labeled, per_case.pseudo = recording("labeled", per_case.labeled), recording("pseudo", per_case.pseudo)
    keys = []
    for _ in range(10):
        batch = train.generate_train_batch()
        assert batch["data"].shape[0] == 2
        keys += [str(k) for k in batch["keys"]]
    assert applied == ["labeled" if k in LABELED else "pseudo" for k in keys]
    assert set(applied) == {"labeled", "pseudo"}


@pytest.mark.slow
def test_pseudo_loss_weight_scales_the_pseudo_labeled_samples(preprocessed):
    """``pseudo_loss_weight``: in a real batch of the real loader, the loss is (labeled samples' nnU-Net loss +
    w × pseudo-labeled samples') / batch size; with w = 0 a pseudo-label's content does not reach the loss;
    outside a training step (validation) it is nnU-Net's loss; a training step runs with it."""
    import torch

    from semisam.nnunet.nnUNetTrainerSemiSAM import PseudoWeightedLoss

    student = preprocessed["student"]

    def trainer_with(weight):
        with student.env(preprocessed["root"] / f"results_w{weight}"):
            trainer = student.build_trainer(preprocessed["dataset_id"], "2d", "all", epochs=1, iterations_per_epoch=1,
                                            val_iterations_per_epoch=1, batch_size=4, seed=0, labeled_cases=LABELED,
                                            labeled_share=0.5, pseudo_loss_weight=weight)
            trainer.initialize()
            trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
        return trainer

    trainer = trainer_with(0.25)
    assert isinstance(trainer.loss, PseudoWeightedLoss)
    assert "a pseudo-labeled sample's loss counts 0.25 of a labeled one's" in open(trainer.log_file).read()
    loader = trainer.dataloader_train.data_loader
    batch = next(b for b in iter(loader.generate_train_batch, None)
                 if 0 < sum(str(k) in LABELED for k in b["keys"]) < len(b["keys"]))
    labeled = torch.tensor([str(k) in LABELED for k in batch["keys"]])
    with torch.no_grad():
        output = trainer.network(batch["data"])
        stock = trainer.loss.loss  # nnU-Net's deep-supervision loss
        part = lambda m: float(stock([o[m] for o in output], [t[m] for t in batch["target"]]))  # noqa: E731
        with trainer.loss.labeled_samples(labeled.tolist()):
            weighted = float(trainer.loss(output, batch["target"]))
        n, n_l = len(labeled), int(labeled.sum())
        assert weighted == pytest.approx((n_l * part(labeled) + 0.25 * (n - n_l) * part(~labeled)) / n, rel=1e-5)
        assert float(trainer.loss(output, batch["target"])) == pytest.approx(float(stock(output, batch["target"])))

        # w = 0: whatever the pseudo-labels say, the loss is the same; a labeled sample's label does count
        zero = PseudoWeightedLoss(stock, 0.0)
        flipped = [t.clone() for t in batch["target"]]
        for t in flipped:
            t[~labeled] = 1 - t[~labeled].clamp(0, 1)
        with zero.labeled_samples(labeled.tolist()):
            assert float(zero(output, flipped)) == pytest.approx(float(zero(output, batch["target"])))
            flipped_labeled = [t.clone() for t in batch["target"]]
            for t in flipped_labeled:
                t[labeled] = 1 - t[labeled].clamp(0, 1)
            assert float(zero(output, flipped_labeled)) != pytest.approx(float(zero(output, batch["target"])))
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"]) and trainer.loss._labeled is None  # the step's block has ended


# ---------------------------------------------------------------- fast tests (no nnU-Net data)

def test_labeled_sampling_probabilities():
    ids = ["a", "b", "c", "d", "e"]
    p = labeled_sampling_probabilities(ids, {"b"}, 0.6)
    np.testing.assert_allclose(p, [0.1, 0.6, 0.1, 0.1, 0.1])
    p = labeled_sampling_probabilities(ids, ["a", "e", "zz"], 0.5)
    np.testing.assert_allclose(p, [0.25, 1 / 6, 1 / 6, 1 / 6, 0.25])
    assert p.sum() == pytest.approx(1.0)
    assert labeled_sampling_probabilities(ids, {"b"}, 0.0) is None
    assert labeled_sampling_probabilities(ids, {"b"}, None) is None
    assert labeled_sampling_probabilities(ids, set(), 0.5) is None
    assert labeled_sampling_probabilities(ids, set(ids), 0.5) is None


@pytest.mark.parametrize("values,match", [
    ({"labeled_cases": ["a"], "labeled_share": 1.0}, r"labeled_share must be a number in \[0, 1\)"),
    ({"labeled_cases": ["a"], "labeled_share": -0.1}, r"labeled_share must be a number in \[0, 1\)"),
    ({"labeled_cases": ["a"], "labeled_share": "0.5"}, "labeled_share must be a number"),
    ({"labeled_cases": ["a"], "labeled_share": True}, "labeled_share must be a number"),
    ({"labeled_cases": "case_000", "labeled_share": 0.5}, "labeled_cases must be a list of case identifiers"),
    ({"labeled_cases": [1, 2], "labeled_share": 0.5}, "labeled_cases must be a list of case identifiers"),
    ({"labeled_share": 0.5}, "labeled_share needs labeled_cases"),
    ({"pseudo_augmentation": "da5"}, "pseudo_augmentation needs labeled_cases"),
    ({"labeled_cases": ["a"], "pseudo_augmentation": "strong"}, "pseudo_augmentation must be one of default, da5"),
    ({"pseudo_loss_weight": 0.5}, "pseudo_loss_weight needs labeled_cases"),
    ({"labeled_cases": ["a"], "pseudo_loss_weight": 1.5}, r"pseudo_loss_weight must be a number in \[0, 1\]"),
])
def test_bad_sampling_overrides_are_one_line(values, match):
    with pytest.raises(SemisamError, match=match) as info:
        TrainerOverrides.from_mapping(values)
    assert "\n" not in str(info.value)


def test_sampling_overrides_round_trip_through_json(tmp_path):
    overrides = TrainerOverrides(labeled_cases=["case_000", "case_003"], labeled_share=0.5)
    written = overrides.write_json(tmp_path / "t.json")
    assert json.loads(written.read_text()) == {"labeled_cases": ["case_000", "case_003"], "labeled_share": 0.5}
    assert TrainerOverrides.from_json(written) == overrides
    assert TrainerOverrides(labeled_cases=[], labeled_share=0).labeled_cases == ()

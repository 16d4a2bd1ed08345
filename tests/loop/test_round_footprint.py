"""A round's memory and disk: the teacher round streams (pseudo-label quality folded in case by case equals the
all-at-once computation, and the round does not keep every case's label maps alive); a round's dataset links
the images and labels it reuses instead of copying them."""
from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from data_prep.synthetic import make_synthetic
from semisam.data import RawDataset
from semisam.eval.metrics import evaluate_arrays
from semisam.loop.evaluation import PseudoQuality, pseudo_quality

FG = {"a": 1, "b": 2}
IGNORE = 3


def reference_quality(dataset, arrays, accepted, foreground, ignore_label):
    """The all-at-once computation the loop used before it streamed: every case's maps and hidden labels in
    memory, pooled Dice through ``evaluate_arrays`` (per-case metrics, HD95 included)."""
    hidden = {}
    for cid in arrays:
        f = dataset.hidden_label_file(cid)
        if f is not None:
            hidden[cid] = dataset.read_seg(f)[0][0]
    if not hidden:
        return None

    def masked(pred, gt, keep):
        return np.where(keep, pred, ignore_label), np.where(keep, gt, ignore_label)

    def pooled(items):
        cases = [(str(i), p, g, None) for i, (p, g) in enumerate(items)]
        return evaluate_arrays(cases, foreground, ignore_label)["pooled_dice"] if cases else None

    acc = [c for c in accepted if c in hidden]
    kept, student_kept, rejected = [], [], []
    kept_px = total_px = 0
    for c in hidden:
        pseudo, student, _ = arrays[c]
        keep = pseudo != ignore_label
        if c in acc:
            kept.append(masked(pseudo, hidden[c], keep))
            student_kept.append(masked(student, hidden[c], keep))
            kept_px += int(keep.sum())
            total_px += keep.size
        if (~keep).any() or c not in acc:
            rej = ~keep if c in acc else np.ones_like(keep)
            rejected.append(masked(student, hidden[c], rej))
    return {
        "n_cases": len(hidden),
        "n_accepted": len(acc),
        "accepted_dice": pooled(kept),
        "student_dice_on_kept": pooled(student_kept),
        "kept_fraction": kept_px / total_px if total_px else None,
        "student_dice": pooled([(arrays[c][1], hidden[c]) for c in hidden]),
        "teacher_dice": pooled([(arrays[c][2], hidden[c]) for c in hidden if arrays[c][2] is not None]),
        "rejected_dice": pooled(rejected),
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> RawDataset:
    root = make_synthetic(tmp_path_factory.mktemp("stream") / "Dataset900_Synthetic", n_classes=2, n_train=8,
                          n_labeled=2, n_test=0, size=32, seed=5)
    return RawDataset.open(root)


def fake_maps(image: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Deterministic ``(pseudo, student, teacher, accepted)`` from a case's image and probabilities."""
    student = probs.argmax(0).astype(np.uint8)
    teacher = np.digitize(image[0], np.quantile(image[0], [0.6, 0.85])).astype(np.uint8)
    rng = np.random.default_rng(int(image.sum() * 1000) % 2**32)
    pseudo = np.where(rng.random(student.shape) < 0.3, IGNORE, np.where(teacher == student, student, teacher))
    return pseudo.astype(np.uint8), student, teacher, bool(rng.random() < 0.6)


def test_streamed_quality_equals_the_all_at_once_computation(synthetic):
    arrays, accepted = {}, []
    for i, case in enumerate(synthetic.unlabeled_cases()):
        image, _ = synthetic.read_image(case.image_files)
        probs = np.random.default_rng(i).dirichlet(np.ones(3), image.shape[1:]).transpose(3, 0, 1, 2)
        pseudo, student, teacher, acc = fake_maps(image, probs)
        if i == 0:
            pseudo, acc = student.copy(), True  # accepted and every pixel kept: no rejected pixels
        if i == 1:
            teacher = None  # no SAM map for this case
        arrays[case.case_id] = (pseudo, student, teacher)
        if acc:
            accepted.append(case.case_id)
    arrays["no_hidden_label"] = arrays[next(iter(arrays))]  # a case without a hidden label is not scored
    expected = reference_quality(synthetic, arrays, accepted, FG, IGNORE)
    assert expected["n_cases"] == 6 and 0 < expected["n_accepted"] < 6
    assert all(v is not None for v in expected.values())
    assert pseudo_quality(synthetic, arrays, accepted, FG, IGNORE) == expected  # bit for bit
    streamed = PseudoQuality(synthetic, FG, IGNORE)
    for cid, (pseudo, student, teacher) in arrays.items():
        streamed.add(cid, pseudo, student, teacher, cid in accepted)
    assert streamed.result() == expected
    # what the accumulator keeps: integer counts only, never an array
    held = [v for acc in (streamed.kept, streamed.student, streamed.teacher, streamed.rejected)
            for v in (*acc.intersection.values(), *acc.size.values())]
    assert all(type(v) is int for v in held)
    assert not [k for k, v in vars(streamed).items() if isinstance(v, np.ndarray)]
    assert PseudoQuality(synthetic, FG, IGNORE).result() is None  # nothing scored: no numbers


@dataclass
class _Result:
    pseudo: np.ndarray
    student: np.ndarray
    teacher: np.ndarray | None
    accepted: bool
    stats: dict = field(default_factory=dict)


class CountingLabeler:
    """A stand-in teacher pipeline that records, at each call, how many label maps it handed out before are
    still alive."""

    adaptable = False

    def __init__(self):
        from semisam.teacher.preprocess import TeacherView

        self.view = TeacherView()  # what the teacher sees (the gallery draws it)
        self.refs: list[weakref.ref] = []
        self.alive_at_call: list[int] = []

    def __call__(self, image: np.ndarray, probs: np.ndarray, case_id: str = "") -> _Result:
        gc.collect()
        self.alive_at_call.append(sum(r() is not None for r in self.refs))
        pseudo, student, teacher, accepted = fake_maps(image, probs)
        self.refs += [weakref.ref(a) for a in (pseudo, student, teacher)]
        return _Result(pseudo, student, teacher, accepted, {"accepted": accepted})

    def cache_stats(self) -> dict:
        return {}


def test_teacher_round_streams_cases_and_keeps_only_the_gallery(synthetic, tmp_path):
    from semisam.config import compose
    from semisam.loop.cases import split_cases
    from semisam.loop.rounds import Experiment
    from semisam.loop.state import RunState

    cfg = compose([f"dataset.raw_dir={synthetic.root}", f"run_dir={tmp_path / 'run'}", "logger=disabled",
                   "loop.gallery_cases=1"])
    state = RunState(tmp_path / "run", "stream-test")
    probs_dir = tmp_path / "probs"
    probs_dir.mkdir()
    unlabeled = synthetic.unlabeled_cases()
    inputs = {}
    for i, case in enumerate(unlabeled):
        image, _ = synthetic.read_image(case.image_files)
        probs = np.random.default_rng(i).dirichlet(np.ones(3), image.shape[1:]).transpose(3, 0, 1, 2)
        np.savez_compressed(probs_dir / f"{case.case_id}.npz", probabilities=probs.astype(np.float32))
        inputs[case.case_id] = (image, probs.astype(np.float32))
    state.run("r0/predict_unlabeled", lambda: {"dir": str(probs_dir)})
    exp = Experiment(cfg, state, synthetic, split_cases(synthetic, 0, cfg.seed))
    exp._labeler = labeler = CountingLabeler()

    result = exp.teacher_round(1, {})

    # at every call, at most the gallery's case (3 maps) is still alive: no case's maps pile up
    assert len(labeler.alive_at_call) == len(unlabeled) == 6
    assert max(labeler.alive_at_call) <= 3, labeler.alive_at_call
    del result["gallery"], exp
    gc.collect()
    assert sum(r() is not None for r in labeler.refs) == 0  # nothing kept after the round
    # the pseudo-labels were written, and the streamed quality is the all-at-once one
    arrays, accepted = {}, []
    for cid, (image, probs) in inputs.items():
        pseudo, student, teacher, acc = fake_maps(image, probs)
        arrays[cid] = (pseudo, student, teacher)
        if acc:
            accepted.append(cid)
    assert result["accepted"] == accepted and all(Path(f).is_file() for f in result["files"].values())
    assert result["pseudo_quality"] == reference_quality(synthetic, arrays, accepted, FG, IGNORE)


def test_round_dataset_links_its_images_and_labels(synthetic, tmp_path):
    """build_round_dataset: the labeled cases' images and labels and the accepted cases' images and
    pseudo-labels are links to the files they come from (hard links here: one filesystem), not copies; nnU-Net's
    integrity check reads them."""
    import os

    from semisam.config import compose
    from semisam.data import check_raw_dataset
    from semisam.loop.cases import split_cases
    from semisam.loop.rounds import Experiment
    from semisam.loop.state import RunState

    cfg = compose([f"dataset.raw_dir={synthetic.root}", f"run_dir={tmp_path / 'run'}", "logger=disabled"])
    exp = Experiment(cfg, RunState(tmp_path / "run", "links-test"), synthetic, split_cases(synthetic, 0, cfg.seed))
    accepted = {}
    for case in exp.cases.unlabeled[:3]:
        image, props = synthetic.read_image(case.image_files)
        accepted[case.case_id] = str(synthetic.write_seg(np.zeros(image.shape[1:], np.uint8), props,
                                                         tmp_path / "pseudo" / f"{case.case_id}.png"))
    out = Path(exp.build_round_dataset(1, accepted)["raw_dir"])
    sources = {f"{c.case_id}_0000.png": c.image_files[0] for c in (*exp.cases.train, *exp.cases.unlabeled)}
    sources.update({f"{c.case_id}.png": c.label_file for c in exp.cases.train})
    sources.update({f"{cid}.png": Path(f) for cid, f in accepted.items()})
    written = [*(out / "imagesTr").iterdir(), *(out / "labelsTr").iterdir()]
    assert len(written) == 2 * (len(exp.cases.train) + 3)
    for f in written:
        assert os.path.samefile(f, sources[f.name]) and f.stat().st_nlink >= 2, f  # the same file: no copy
    ds = check_raw_dataset(out, nnunet=True)
    assert len(ds.labeled_cases()) == len(exp.cases.train) + 3

"""One experiment from a recipe: SamDSK rounds of student → teacher → pseudo-labels → next student.

Round 0 trains the supervised student on the labeled cases. Each round ``r ≥ 1``

1. predicts the unlabeled cases with student ``r − 1`` (probabilities),
2. runs the teacher (adaptation once per run or per round → prompts → SAM → fusion → filters) and writes
   the pseudo-labels, rejected pixels carrying the ignore label,
3. builds the round's training set = labeled ∪ every case accepted so far, each once (a valid nnU-Net raw
   dataset, trainable by stock ``nnUNetv2_train``), preprocesses it with round 0's plans and trains student
   ``r`` (from scratch, or fine-tuned from student ``r − 1``), drawing the labeled cases for
   ``loop.labeled_weight`` of the samples,
4. with ``loop.final_finetune_epochs``, fine-tunes student ``r`` on round 0's labeled-only dataset; the
   round's evaluation and predictions use that model.

It stops after ``loop.max_rounds`` or when a round accepts no new case (SamDSK's criterion). The teacher and
the student run one after the other, never side by side.

Everything lives in ``run_dir``: a folder per round, ``manifest.json`` recording each complete step last
(rerunning the same command resumes; ``restart=true`` starts over), ``metrics.json`` and ``report.md``.
Hidden labels (``labelsHidden/``) are read by :mod:`semisam.loop.evaluation` only, after the round's
pseudo-labels are written: nothing read from them reaches training, filtering or selection.
"""
from __future__ import annotations

import logging
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semisam.config import RunConfig, to_dict, to_yaml
from semisam.data import LabeledCase, RawDataset, UnlabeledCase
from semisam.loop.state import round0_fingerprint
from semisam.utils.errors import SemisamError

log = logging.getLogger("semisam")

PLANS = "nnUNetPlans"


def say(message: str) -> None:
    """Progress for the user: one line on stderr (stdout stays for tables)."""
    print(f"[semisam] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Cases:
    """The run's cases: who trains, who is validated on, who the teacher sees, who is tested."""

    train: list[LabeledCase]
    val: list[LabeledCase]
    unlabeled: list[UnlabeledCase]
    test: list[LabeledCase]


def split_cases(dataset: RawDataset, num_val: int, seed: int) -> Cases:
    """Reserve ``num_val`` labeled cases for validation (never trained on, never shown to the teacher)."""
    labeled = dataset.labeled_cases()
    if not labeled:
        raise SemisamError(f"{dataset.root} has no labeled case; label at least one (labelsTr/) or run data_prep split")
    if num_val >= len(labeled):
        raise SemisamError(
            f"dataset.num_val={num_val} leaves no labeled case to train on ({len(labeled)} labeled); lower it"
        )
    order = list(range(len(labeled)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:num_val])
    return Cases(
        train=[c for i, c in enumerate(labeled) if i not in val_idx],
        val=[c for i, c in enumerate(labeled) if i in val_idx],
        unlabeled=dataset.unlabeled_cases(),
        test=dataset.test_cases(),
    )


def run_experiment(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) the experiment described by a validated recipe; returns the final summary."""
    from semisam.loop.preflight import preflight
    from semisam.loop.rounds import Experiment
    from semisam.online.settings import OnlineSettings

    from semisam.loop.ranks import shared_state
    from semisam.utils import distributed

    # under torchrun rank 0 checks and owns the run folder; the other ranks take what it found (semisam.loop.ranks)
    built = distributed.lead(lambda: preflight(cfg))  # every fault that can be found before work fails here
    if not built.cases.unlabeled and OnlineSettings.from_config(cfg).enabled:
        raise SemisamError(f"online training (experiment={cfg.experiment}) needs unlabeled cases, but "
                           f"{built.dataset.name} has none; add images without labels or run experiment=supervised")
    run_dir = Path(cfg.run_dir)
    state = shared_state(run_dir, built.identity, restart=cfg.restart)
    state.set("round0_fingerprint", round0_fingerprint(to_dict(cfg)))
    if distributed.world().main:
        if state.resumed:
            say(f"resuming {run_dir} from its last complete step (restart=true starts over)")
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return Experiment(cfg, state, built.dataset, built.cases).run()


ROUND0_STEPS = ("r0/dataset", "r0/preprocess", "r0/train", "r0/evaluate")


def round0_steps(base_dir: Path, cfg: RunConfig) -> dict[str, dict]:
    """The finished round-0 steps of the run in ``base_dir`` (``loop.init_from``), checked against ``cfg``.

    The base run must have trained the same round 0 (dataset, student settings, seed: its manifest's
    round-0 fingerprint is compared). Its files are used in place, never copied or changed.

    Raises:
        SemisamError: ``base_dir`` is the run's own folder, holds no run, trained another round 0, or has not
            finished round 0.
    """
    from semisam.loop.state import read_manifest

    where = f"loop.init_from={base_dir}"
    if base_dir.resolve() == Path(cfg.run_dir).resolve():
        raise SemisamError(f"{where} is this run's own folder; point it at another run")
    base = read_manifest(base_dir)
    if base is None:
        raise SemisamError(f"{where} holds no semisam run (no manifest.json); run the supervised recipe there first")
    if base.get("round0_fingerprint") != round0_fingerprint(to_dict(cfg)):
        raise SemisamError(f"{where} trained its round 0 with another dataset, student or seed than this run; "
                           "use a run of the same recipe values, or drop loop.init_from")
    steps = base.get("steps", {})
    missing = [s for s in ROUND0_STEPS if s not in steps]
    if missing:
        raise SemisamError(f"{where} has not finished round 0 (step {missing[0]} missing); finish that run first")
    return {s: steps[s] for s in ROUND0_STEPS}


def copy_plans(src_plans: Path, dst_preprocessed: Path, dataset_name: str) -> Path:
    """Reuse a planned architecture for another dataset (every round's student has round 0's plans)."""
    import json

    plans = json.loads(Path(src_plans).read_text())
    plans["dataset_name"] = dataset_name
    dst_preprocessed.mkdir(parents=True, exist_ok=True)
    out = dst_preprocessed / f"{PLANS}.json"
    out.write_text(json.dumps(plans, indent=2))
    return out


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def now() -> float:
    return time.time()

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

from pathlib import Path
from typing import Any

from semisam.config import RunConfig, to_dict, to_yaml
from semisam.loop.preflight import preflight
from semisam.loop.ranks import shared_state
from semisam.loop.rounds import Experiment
from semisam.loop.state import round0_fingerprint
from semisam.online.settings import OnlineSettings
from semisam.utils import distributed
from semisam.utils.errors import SemisamError
from semisam.utils.progress import say


def run_experiment(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) the experiment described by a validated recipe; returns the final summary."""
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

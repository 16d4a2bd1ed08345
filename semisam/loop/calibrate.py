"""``loop.calibrate``: choose the run's pseudo-label rule on the labeled cases only (leave-one-out).

The question a rule must answer — does it correct the student's own prediction on an image whose label the
student never saw? — is asked of the labeled training cases, the only labels a run may read. For each labeled
case k (at least two are needed):

1. a student is trained on the other labeled cases, with round 0's plans, budget and seed, and predicts case k
   (its probabilities, as round 0 predicts the unlabeled cases);
2. the teacher is adapted on the other labeled cases when the recipe adapts (never on case k);
3. every candidate rule (``loop.calibrate``: the same words as ``semisam probe --rules``, an experiment name and
   overrides, of which only ``prompts`` and ``filters`` are used) pseudo-labels case k from that prediction, and
   is scored against case k's label **with every pixel counted**: an ignored pixel, and every pixel of a rejected
   case, counts as the student's label (as ``semisam probe`` scores).

Dice is pooled over the held-out cases per rule; the rule with the highest Dice is chosen (ties: the first
listed), and the run's teacher rounds use its prompts and filters. No unlabeled image, hidden label or test
label is read here. The step is ``r1/calibrate`` (once, before round 1's teacher); its folds live under
``<run_dir>/calibrate/`` and an interrupted calibration starts over.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from semisam.utils.errors import SemisamError

if TYPE_CHECKING:  # pragma: no cover
    from semisam.loop.rounds import Experiment


def rule_settings(rules: list[str], raw_dir: str) -> dict[str, tuple]:
    """Each rule word → ``(PromptSettings, FilterSettings, teacher name)`` (see :func:`semisam.compare.probe.rule_settings`).

    Raises:
        SemisamError: a rule that does not compose (one line naming it).
    """
    from semisam.compare.probe import rule_settings as settings_of_rule

    out = {}
    for rule in rules:
        try:
            out[rule] = settings_of_rule(rule, raw_dir, None)
        except SemisamError as e:
            raise SemisamError(f"loop.calibrate rule '{rule}': {e}") from None
    return out


def check_calibration(cfg, n_labeled: int) -> None:
    """Pre-flight: the rules compose with this run's teacher, and there are labeled cases to leave out.

    Raises:
        SemisamError: one line.
    """
    rules = list(cfg.loop.calibrate)
    if not rules or cfg.loop.max_rounds == 0:
        return
    if not cfg.teacher.enabled:
        raise SemisamError("loop.calibrate chooses among teacher rules; this run has teacher=none (drop loop.calibrate)")
    if n_labeled < 2:
        raise SemisamError(f"loop.calibrate leaves one labeled case out at a time and needs at least 2 labeled training "
                           f"cases; this run has {n_labeled} (drop loop.calibrate, or label another case)")
    for rule, (_, _, teacher) in rule_settings(rules, cfg.dataset.raw_dir).items():
        if teacher != cfg.teacher.name:
            raise SemisamError(f"loop.calibrate rule '{rule}' composes teacher {teacher}; rules choose prompts and "
                               f"filters for this run's teacher ({cfg.teacher.name}): name the teacher in the rule "
                               f"(teacher={cfg.teacher.name})")


def calibrate(exp: "Experiment") -> dict[str, Any]:
    """Run the leave-one-out calibration of ``exp`` (see the module docstring) and return the step's result:
    ``{"chosen", "rules": {rule: {"dice_all", "kept", "accept"}}, "student": Dice of the held-out predictions,
    "folds": [{"held_out", "model"}]}``."""
    from semisam.data.probabilities import load_probabilities
    from semisam.eval.metrics import PooledDice
    from semisam.loop.rounds import say
    from semisam.pseudolabel.pipeline import PseudoLabeler
    from semisam.utils.io import remove_tree

    cfg, s, ds = exp.cfg, exp.cfg.student, exp.dataset
    rules = rule_settings(list(cfg.loop.calibrate), cfg.dataset.raw_dir)
    base = exp.labeler
    labelers = {rule: PseudoLabeler(base.teacher, view=base.view, prompts=p, filters=f,
                                    ignore_label=exp.ignore_label, seed=cfg.seed)
                for rule, (p, f, _) in rules.items()}
    root = exp.run_dir / "calibrate"
    remove_tree(root)
    r0 = exp.state.result("r0/preprocess")
    dice = {rule: PooledDice(exp.foreground, exp.ignore_label) for rule in rules}
    student_dice = PooledDice(exp.foreground, exp.ignore_label)
    counts = {rule: {"accepted": 0, "kept": 0, "px": 0} for rule in rules}
    folds = []
    train = list(exp.cases.train)
    for k, held in enumerate(train):
        others = [c for c in train if c.case_id != held.case_id]
        fold = root / f"fold_{k}"
        say(f"calibration {k + 1}/{len(train)}: a student on {len(others)} labeled cases predicts {held.case_id}")
        raw = exp.write_training_dataset(fold / "dataset", exp.case_data(others), (),
                                         f"semisam calibration fold {k}: {held.case_id} left out")
        student = exp.student(0, fold / "nnunet")
        ds_id = student.add_raw_dataset(raw, cfg.dataset.dataset_id)
        student.preprocess_with_plans(ds_id, r0["plans"], configurations=(s.configuration,),
                                      num_processes=s.num_processes)
        model = student.train(ds_id, s.configuration, s.fold, epochs=s.epochs, iterations_per_epoch=s.iterations_per_epoch,
                              val_iterations_per_epoch=s.val_iterations_per_epoch, initial_lr=s.initial_lr,
                              batch_size=s.batch_size, seed=cfg.seed)
        student.predict(model, [list(held.image_files)], fold / "pred", save_probabilities=True, fold=s.fold,
                        overwrite=True)
        probs, _ = load_probabilities(fold / "pred" / f"{held.case_id}.npz")
        if cfg.teacher.adapt.enabled and cfg.teacher.adapt.steps > 0:
            base.adapt(ds.image_label_pairs(others), sorted(exp.foreground.values()), fold / "adapted.pt")
        image, _ = ds.read_image(held.image_files)
        results = {rule: lab(image, probs, held.case_id) for rule, lab in labelers.items()}
        truth = ds.read_seg(held.label_file)[0][0]  # read after every rule has labelled the case
        for rule, res in results.items():
            keep = res.pseudo != exp.ignore_label
            dice[rule].add(res.every_pixel(exp.ignore_label), truth)
            c = counts[rule]
            c["accepted"] += bool(res.accepted)
            c["kept"] += int(keep.sum()) if res.accepted else 0
            c["px"] += keep.size
        student_dice.add(next(iter(results.values())).student, truth)
        folds.append({"held_out": held.case_id, "model": str(model)})
    scores = {rule: {"dice_all": dice[rule].value(), "kept": counts[rule]["kept"] / max(1, counts[rule]["px"]),
                     "accept": counts[rule]["accepted"] / len(train)} for rule in rules}
    best = max(scores.values(), key=lambda v: _finite(v["dice_all"]))["dice_all"]
    chosen = next(rule for rule in rules if _finite(scores[rule]["dice_all"]) == _finite(best))
    say("calibration on the labeled cases (every pixel counted; the students' own Dice "
        f"{_fmt(student_dice.value())}): " + ", ".join(f"{rule} {_fmt(v['dice_all'])}" for rule, v in scores.items())
        + f" → {chosen}")
    return {"chosen": chosen, "rules": scores, "student": student_dice.value(), "folds": folds}


def report_section(result: dict[str, Any]) -> list[str]:
    """The calibration's table for ``report.md``: each rule's Dice on the held-out labeled cases (every pixel
    counted), its difference to the leave-one-out students' own Dice, the share of pixels it kept and of cases
    it accepted; the chosen rule in bold."""
    student = result.get("student")
    lines = ["## Pseudo-label rule, chosen on the labeled cases (`loop.calibrate`)", "",
             f"Leave-one-out over the {len(result.get('folds', []))} labeled cases: a student trained on the others "
             "predicts each one, every rule labels that prediction, and the rule whose labels score best against the "
             "held-out labels (every pixel counted) labels the unlabeled cases. No unlabeled, hidden or test label "
             f"is read. The students' own Dice: {_fmt(student)}.", "",
             "| rule | Dice, every pixel | Δ vs the students | pixels kept | cases accepted |", "|---|---|---|---|---|"]
    for rule, v in result["rules"].items():
        name = f"**{rule}** (chosen)" if rule == result["chosen"] else rule
        delta = _finite(v["dice_all"]) - _finite(student)  # NaN (n/a) when either is missing
        lines.append(f"| {name} | {_fmt(v['dice_all'])} | {'n/a' if not np.isfinite(delta) else f'{delta:+.3f}'} | "
                     f"{100 * v['kept']:.1f} % | {100 * v['accept']:.0f} % |")
    return lines + [""]


def summary_keys(result: dict[str, Any]) -> dict[str, Any]:
    """The calibration in the run's W&B summary: ``calibrate/chosen``, ``calibrate/student_dice`` and
    ``calibrate/<rule>/dice_all``."""
    out: dict[str, Any] = {"calibrate/chosen": result["chosen"], "calibrate/student_dice": result.get("student")}
    out.update({f"calibrate/{rule}/dice_all": v["dice_all"] for rule, v in result["rules"].items()})
    return out


def apply_choice(labeler, result: dict[str, Any], raw_dir: str) -> None:
    """Give the run's teacher pipeline the prompts and filters of the calibration's chosen rule."""
    prompts, filters, _ = rule_settings([result["chosen"]], raw_dir)[result["chosen"]]
    labeler.p, labeler.f = prompts, filters


def _finite(value: Any) -> float:
    return float(value) if value is not None and np.isfinite(value) else float("-inf")


def _fmt(value: Any) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"

"""``semisam probe``: the teacher alone, before any retraining — does a pseudo-label rule beat the student?

A cheap first table for a new teacher rule. It reuses the round-0 students of a finished ``semisam compare``
folder (every labeled draw × seed of one loop method, ``samdsk`` by default): their probabilities on the
unlabeled cases (``round_00/pred_unlabeled``), their adapted teacher (``teacher/adapted_r1.pt``, adapted on
the draw's labeled cases only) and the shared embedding cache. For each *rule* — a recipe with overrides,
of which only the ``prompts`` and ``filters`` groups are used — it pseudo-labels every unlabeled case and
scores the result against the hidden labels:

- ``dice_all``: pooled Dice with **every pixel counted**: an ignored pixel, and every pixel of a rejected
  case, is scored as the student's own label (ignoring cannot raise it; only corrections can);
- ``student``: the student's prediction on the same cases (the number to beat); ``delta`` = the difference,
  paired per run, with a Student-t 95 % interval over the runs;
- ``kept_dice`` / ``kept``: Dice on the pixels the rule keeps in accepted cases, and their share;
- ``accept``: the share of accepted cases; ``missed``: the share of true foreground pixels of accepted
  cases that the pseudo-label calls background (the student's own share in ``student_missed``);
- ``sam``: SAM's raw masks (every prompted object, no filter, no fusion).

``--adapt-steps N`` probes a teacher adapted for N steps instead of the run's own (0: the teacher as shipped,
not adapted): each run's teacher is adapted again from its base weights on the draw's labeled cases, with the
run's other adaptation settings, and saved under ``<out>/adapted/<setting>/<run>.pt`` (and in the compare
folder's shared store of adaptations, keyed by fingerprint, when it has one). An out folder holds one
adaptation: resuming it with another is refused. Comparing adaptation lengths = one out folder per length,
paired by run.

Hidden labels are read here for scoring only, after each pseudo-label is made; nothing is selected by them
(the probe prints every rule, and recipes are not changed by it). Per-run results are written as they come
(``<out>/runs/<setting>/<run>.json``), so a rerun resumes and more rules can be added later.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from semisam.utils.errors import SemisamError
from semisam.utils.io import atomic_write_path, write_json_atomic
from semisam.utils.progress import speaker

METRICS = ("dice_all", "student", "kept_dice", "kept", "accept", "missed", "student_missed", "sam")


say = speaker("probe")


def find_runs(compare_dir: Path, method: str, pattern: str = "draw*_seed*") -> list[Path]:
    """The run folders of ``method`` in a compare folder (names matching ``pattern``) that hold a round-0
    prediction of the unlabeled cases. ``method`` is the word given to ``semisam compare``
    (``"corrector filters.fusion=weighted"``) or its folder name (``corrector__filters.fusion-weighted``)."""
    from semisam.compare.methods import slugify

    root = compare_dir / "runs" / slugify(method)
    runs = sorted(d for d in root.glob(pattern) if (d / "round_00" / "pred_unlabeled").is_dir()
                  and (d / "config.yaml").is_file())
    if not runs:
        raise SemisamError(f"{root} holds no run named {pattern} with round_00/pred_unlabeled; run `semisam "
                           f"compare` with a loop method first (--method names it, now {method!r})")
    return runs


def rule_settings(rule: str, raw_dir: str, recipes: Path | None):
    """A rule word (``"samdsk filters.fusion=union"``) → ``(PromptSettings, FilterSettings)`` composed from
    the recipes (the rule's teacher, student and loop settings are not used)."""
    from semisam.compare.methods import parse_method
    from semisam.config import compose, list_options
    from semisam.pseudolabel.pipeline import FilterSettings, PromptSettings

    method = parse_method(rule, list_options(recipes)["experiment"])
    cfg = compose([*method.overrides, *method.extra, f"dataset.raw_dir={raw_dir}"], config_dir=recipes)
    return PromptSettings.of(cfg.prompts), FilterSettings.of(cfg.filters), cfg.teacher.name


def probe_run(run_dir: Path, rules: dict[str, tuple], done: dict[str, dict], adapt_steps: int | None = None,
              adapted: Path | None = None) -> dict[str, dict]:
    """Score every rule not in ``done`` on one run's round-0 student; returns rule → metrics. With
    ``adapt_steps``, the teacher is adapted for that many steps (0: not at all) and saved at ``adapted``,
    instead of the run's own adaptation."""
    import yaml

    from semisam.config import from_dict
    from semisam.data import RawDataset
    from semisam.eval.metrics import PooledDice
    from semisam.loop.cases import split_cases
    from semisam.data.probabilities import load_probabilities
    from semisam.pseudolabel.pipeline import PseudoLabeler, build_pseudolabeler

    todo = {k: v for k, v in rules.items() if k not in done}
    if not todo:
        return done
    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    adapt_file = run_dir / "teacher" / "adapted_r1.pt"
    if adapt_steps is not None:
        cfg.teacher.adapt.enabled, cfg.teacher.adapt.steps, adapt_file = adapt_steps > 0, adapt_steps, adapted
    ds = RawDataset.open(cfg.dataset.raw_dir)
    cases = split_cases(ds, cfg.dataset.num_val, cfg.seed)
    fg = {k: v for k, v in ds.labels.items() if v}
    ignore = ds.pseudo_ignore_label
    base = build_pseudolabeler(cfg, ignore_label=ignore, channel_names=ds.dataset_json["channel_names"],
                               cache_dir=cfg.teacher.cache_dir or str(run_dir / "cache" / "embeddings"))
    if base.teacher is None:
        raise SemisamError(f"{run_dir} was run without a teacher; probe a run of a SAM method")
    if cfg.teacher.adapt.enabled and cfg.teacher.adapt.steps > 0:
        base.adapt(ds.image_label_pairs(cases.train), sorted(fg.values()), adapt_file)
    labelers = {name: PseudoLabeler(base.teacher, view=base.view, prompts=p, filters=f,
                                    ignore_label=ignore, seed=cfg.seed) for name, (p, f, _) in todo.items()}
    probs_dir = run_dir / "round_00" / "pred_unlabeled"
    # running sums per rule (PooledDice keeps counts only: no case's maps outlive its loop iteration)
    acc = {name: {k: PooledDice(fg, ignore) for k in ("all", "student", "kept", "sam")} for name in todo}
    counts = {name: dict(accepted=0, cases=0, kept_px=0, px=0, fg=0, missed=0, student_missed=0) for name in todo}
    for case in cases.unlabeled:
        hidden_file = ds.hidden_label_file(case.case_id)
        if hidden_file is None:
            continue
        image, _ = ds.read_image(case.image_files)
        probs, _ = load_probabilities(probs_dir / f"{case.case_id}.npz")
        results = {name: lab(image, probs, case.case_id) for name, lab in labelers.items()}
        hidden = ds.read_seg(hidden_file)[0][0]  # read after every rule has labelled the case
        true_fg = (hidden > 0) & (hidden != ignore)
        for name, res in results.items():
            a, c = acc[name], counts[name]
            keep = res.pseudo != ignore
            a["all"].add(res.every_pixel(ignore), hidden)
            a["student"].add(res.student, hidden)
            if res.teacher is not None:
                a["sam"].add(res.teacher, hidden)
            c["cases"] += 1
            if res.accepted:
                c["accepted"] += 1
                a["kept"].add(res.pseudo, hidden, keep)
                c["kept_px"] += int(keep.sum())
                c["px"] += keep.size
                c["fg"] += int(true_fg.sum())
                c["missed"] += int((true_fg & (res.pseudo == 0)).sum())
                c["student_missed"] += int((true_fg & (res.student == 0)).sum())
    out = dict(done)
    for name in todo:
        a, c = acc[name], counts[name]
        out[name] = {"dice_all": a["all"].value(), "student": a["student"].value(), "kept_dice": a["kept"].value(),
                     "kept": c["kept_px"] / c["px"] if c["px"] else None,
                     "accept": c["accepted"] / c["cases"] if c["cases"] else None,
                     "missed": c["missed"] / c["fg"] if c["fg"] else None,
                     "student_missed": c["student_missed"] / c["fg"] if c["fg"] else None,
                     "sam": a["sam"].value(), "n_cases": c["cases"]}
    return out


def summarize(per_run: dict[str, dict[str, dict]], rules: list[str]) -> dict[str, dict]:
    """rule → mean of each metric over the runs, and the paired Δ (dice_all − student) with its interval."""
    from semisam.compare.stats import describe, paired_difference

    table = {}
    for rule in rules:
        rows = [r[rule] for r in per_run.values() if rule in r]
        entry = {m: describe([row.get(m) for row in rows]) for m in METRICS}
        entry["delta"] = {k: v for k, v in paired_difference([row["dice_all"] for row in rows],
                                                             [row["student"] for row in rows]).items()}
        entry["n_runs"] = len(rows)
        table[rule] = entry
    return table


def markdown(setting: str, table: dict[str, dict]) -> str:
    def f(d: dict, key: str = "mean", pct: bool = False) -> str:
        v = d.get(key)
        return "–" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")

    def delta(d: dict) -> str:
        if d.get("mean") is None:
            return "–"
        ci = "" if d.get("lo") is None else f" [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        return f"{d['mean']:+.3f}{ci}"

    lines = [f"### {setting}", "",
             "| rule | runs | pseudo-label Dice, every pixel | student | Δ (95 % CI) | kept-px Dice | kept | accepted "
             "| missed fg (student) | SAM raw |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rule, e in table.items():
        lines.append(f"| `{rule}` | {e['n_runs']} | {f(e['dice_all'])} | {f(e['student'])} | {delta(e['delta'])} | "
                     f"{f(e['kept_dice'])} | {f(e['kept'], pct=True)} | {f(e['accept'], pct=True)} | "
                     f"{f(e['missed'], pct=True)} ({f(e['student_missed'], pct=True)}) | {f(e['sam'])} |")
    return "\n".join(lines) + "\n"


def adaptation_words(adapt_steps: int | None) -> str:
    if adapt_steps is None:
        return "each run's own adapted teacher"
    return f"the teacher adapted for {adapt_steps} steps" if adapt_steps else "the teacher not adapted"


def adaptation_of(out: Path, adapt_steps: int | None) -> dict:
    """The teacher adaptation ``out`` is probed with, checked against the one it was probed with before."""
    if adapt_steps is not None and adapt_steps < 0:
        raise SemisamError(f"--adapt-steps {adapt_steps} is negative; give a number of steps (0: no adaptation)")
    f = out / "adaptation.json"
    if f.is_file():
        before = json.loads(f.read_text()).get("adapt_steps")
    else:  # a folder probed before adaptation.json was written was probed with the runs' own
        before = None if (out / "runs").is_dir() else adapt_steps
    if before != adapt_steps:
        raise SemisamError(f"{out} was probed with {adaptation_words(before)}, not {adaptation_words(adapt_steps)}; "
                           f"give another --out for another adaptation")
    return {"adapt_steps": adapt_steps}


def run_probe(compares: list[Path], rules: list[str], out: Path, method: str = "samdsk",
              recipes: Path | None = None, pattern: str = "draw*_seed*",
              adapt_steps: int | None = None) -> dict[str, Any]:
    """Probe every rule on every run of ``method`` in each compare folder; writes ``probe.md`` and
    ``probe.json`` in ``out`` and returns the tables (setting → rule → summary). ``adapt_steps``: see the
    module's docstring (None: each run's own adapted teacher)."""
    if not rules:
        raise SemisamError("no rule to probe; pass --rules, e.g. --rules samdsk \"samdsk filters.fusion=union\"")
    adaptation = adaptation_of(out, adapt_steps)
    runs = {c: find_runs(c, method, pattern) for c in compares}  # every folder checked before any work
    import yaml

    first_raw = yaml.safe_load((runs[compares[0]][0] / "config.yaml").read_text())["dataset"]["raw_dir"]
    settings = {}
    for rule in rules:
        p, f, teacher = rule_settings(rule, first_raw, recipes)  # composition errors before any work
        if teacher == "none":
            raise SemisamError(f"rule '{rule}' has no teacher; a probe scores SAM pseudo-label rules")
        settings[rule] = (p, f, teacher)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "adaptation.json", adaptation)
    tables: dict[str, Any] = {}
    n_total = sum(len(v) for v in runs.values())
    k = 0
    t0 = time.time()
    for compare_dir, run_dirs in runs.items():
        setting = compare_dir.name
        per_run = {}
        for run_dir in run_dirs:
            k += 1
            f_json = out / "runs" / setting / f"{run_dir.name}.json"
            done = json.loads(f_json.read_text()) if f_json.is_file() else {}
            missing = [r for r in rules if r not in done]
            if missing:
                t_run = time.time()
                done = probe_run(run_dir, settings, done, adapt_steps,
                                 out / "adapted" / setting / f"{run_dir.name}.pt")
                write_json_atomic(f_json, done)
                say(f"{setting}/{run_dir.name}: {len(missing)} rule(s) in {time.time() - t_run:.0f} s "
                    f"({k}/{n_total}, {time.time() - t0:.0f} s so far)")
            per_run[run_dir.name] = done
        tables[setting] = summarize(per_run, rules)
    md = ["# semisam probe: pseudo-label rules against the student, before retraining", "",
          "Each row: the rule's pseudo-labels on the unlabeled cases of every round-0 student (labeled draws × "
          "seeds), scored against the hidden labels with every pixel counted (ignored pixels and rejected cases "
          "as the student's label). Δ is paired per run, with a Student-t 95 % interval. Nothing here selects "
          "a rule.", "", f"Teacher: {adaptation_words(adapt_steps)}.", ""]
    md += [markdown(s, t) for s, t in tables.items()]
    with atomic_write_path(out / "probe.md") as tmp:
        tmp.write_text("\n".join(md))
    write_json_atomic(out / "probe.json", {"method": method, "rules": rules, **adaptation,
                                           "compares": [str(c) for c in compares], "tables": tables})
    print("\n".join(md))
    return tables


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="semisam probe", description=__doc__.split("\n\n")[0])
    p.add_argument("compares", nargs="+", type=Path, help="finished `semisam compare` folders")
    p.add_argument("--rules", nargs="+", required=True,
                   help="recipes with overrides, quoted: samdsk \"samdsk filters.fusion=union\" (prompts and filters "
                        "are taken from them)")
    p.add_argument("--out", required=True, type=Path, help="folder for probe.md, probe.json and per-run results")
    p.add_argument("--method", default="samdsk", help="the loop method whose round-0 students are probed: its word "
                                                   "as given to `semisam compare`, quoted, or its folder name")
    p.add_argument("--runs", default="draw*_seed*", help="which of its runs (a name pattern; default all, e.g. "
                                                         "'draw*_seed0' for one seed per labeled draw)")
    p.add_argument("--adapt-steps", type=int, default=None, metavar="N",
                   help="probe a teacher adapted for N steps on each draw's labeled cases (0: not adapted) instead "
                        "of each run's own adaptation; one adaptation per --out folder")
    return p

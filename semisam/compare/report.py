"""The comparison's outputs: per-method statistics, ``compare.md``, ``compare.json`` and ``compare.png``.

Per method (rows of :func:`summarize`): test Dice of the selected round (mean ± sd over runs; per class for
multi-class data), HD95, pooled Dice, wall time, pseudo-label quality against hidden labels where the run
has it, and the paired difference to ``supervised`` on the same labeled draw and seed with a 95 % t
interval (:mod:`semisam.compare.stats`). ``full`` runs on every label and has no draw: each of its runs is
paired with the mean of the supervised runs of the same seed over the draws (one pair per seed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from semisam.compare.methods import SUPERVISED
from semisam.compare.stats import describe, paired_difference
from semisam.utils.io import atomic_write_path, write_json_atomic


def _pairs(rows: list[dict], label: str, key: str, per_class: str | None = None,
           baseline: str = SUPERVISED) -> tuple[list, list]:
    """(method values, baseline values) paired on draw and seed (``full`` against supervised's mean over the
    draws of its seed; against another baseline it has no pair)."""
    def value(row: dict) -> Any:
        return (row.get("dice_per_class") or {}).get(per_class) if per_class else row.get(key)

    base = {(r["draw"], r["seed"]): value(r) for r in rows if r["method"] == baseline and r["status"] == "done"}
    mine, theirs = [], []
    for row in rows:
        if row["method"] != label:
            continue
        if row["draw"] is None:  # full: one pair per seed, against supervised's mean over the draws
            if baseline != SUPERVISED:
                continue
            same_seed = [v for (_, seed), v in base.items() if seed == row["seed"]]
            if same_seed:
                mine.append(value(row))
                theirs.append(describe(same_seed)["mean"])
        elif (row["draw"], row["seed"]) in base:
            mine.append(value(row))
            theirs.append(base[(row["draw"], row["seed"])])
    return mine, theirs


def summarize(rows: list[dict], labels: list[str], versus: str | None = None) -> dict[str, Any]:
    """Statistics per method (in first-seen order of ``labels``) from the per-run rows of
    :func:`semisam.compare.runner.collect`.

    Besides the paired difference to supervised, each method other than ``supervised`` and ``full`` gets its
    *gap closure* — (method − supervised) / (full − supervised), of the means, when ``full`` ran — and, with
    ``versus`` (another method's label), its paired difference to that method on the same draw and seed."""
    order = list(dict.fromkeys(labels))
    classes = list(dict.fromkeys(c for r in rows for c in (r.get("dice_per_class") or {})))
    methods = {}
    for label in order:
        mine = [r for r in rows if r["method"] == label]
        done = [r for r in mine if r["status"] == "done"]
        pq = [r.get("pseudo_quality") or {} for r in done]
        entry: dict[str, Any] = {
            "runs": len(mine), "finished": len(done),
            "dice": describe(r.get("dice") for r in done),
            "pooled_dice": describe(r.get("pooled_dice") for r in done),
            "hd95": describe(r.get("hd95") for r in done),
            "wall_s": describe(r.get("wall_s") for r in done),
            "dice_per_class": {c: describe((r.get("dice_per_class") or {}).get(c) for r in done) for c in classes},
            "pseudo_accepted_dice": describe(q.get("accepted_dice") for q in pq),
            "pseudo_student_dice": describe(q.get("student_dice") for q in pq),
            "accept_rate": describe(r.get("accept_rate") for r in done),
        }
        if label != SUPERVISED:
            entry["vs_supervised"] = paired_difference(*_pairs(rows, label, "dice"))
            entry["vs_supervised_per_class"] = {c: paired_difference(*_pairs(rows, label, "", c)) for c in classes}
        if versus and label not in (versus, SUPERVISED, "full"):
            entry["vs_versus"] = paired_difference(*_pairs(rows, label, "dice", baseline=versus))
        methods[label] = entry
    sup = methods.get(SUPERVISED, {}).get("dice", {}).get("mean")
    full = methods.get("full", {}).get("dice", {}).get("mean")
    for label, entry in methods.items():
        if label in (SUPERVISED, "full"):
            continue
        gap = None if sup is None or full is None or entry["dice"]["mean"] is None or full - sup <= 1e-9 \
            else (entry["dice"]["mean"] - sup) / (full - sup)
        entry["gap_closure"] = gap
    return {"classes": classes, "methods": methods, "runs": rows, "versus": versus}


def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _mean_sd(d: dict, digits: int = 3) -> str:
    if d["mean"] is None:
        return "–"
    return _f(d["mean"], digits) + ("" if d["sd"] is None else f" ± {_f(d['sd'], digits)}")


def _of(d: dict, runs: int) -> str:
    """`` (n of N runs)`` when a statistic covers only some of the finished runs."""
    return "" if d["n"] in (0, runs) else f" ({d['n']} of {runs} runs)"


def _delta(d: dict | None) -> str:
    if not d or d["mean"] is None:
        return "–"
    ci = "" if d["lo"] is None else f" [{d['lo']:+.3f}, {d['hi']:+.3f}]"
    return f"{d['mean']:+.3f}{ci}"


def table(result: dict[str, Any]) -> str:
    """The comparison as one markdown table (plus a per-class table for multi-class data)."""
    classes = result["classes"]
    has_pq = any(m["pseudo_accepted_dice"]["n"] for m in result["methods"].values())
    versus = result.get("versus")
    has_gap = any(m.get("gap_closure") is not None for m in result["methods"].values())
    head = ["method", "runs", "test Dice (mean ± sd)", "Δ vs supervised [95 % CI]"]
    head += ["gap closed"] if has_gap else []
    head += [f"Δ vs {versus} [95 % CI]"] if versus else []
    head += ["test HD95", "pooled Dice"]
    head += ["accepted cases", "PL Dice kept px", "student Dice unlabeled"] if has_pq else []
    head += ["wall time (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for label, m in result["methods"].items():
        runs = f"{m['finished']}" + ("" if m["finished"] == m["runs"] else f" of {m['runs']}")
        cells = [f"`{label}`", runs, _mean_sd(m["dice"]), _delta(m.get("vs_supervised"))]
        if has_gap:
            cells.append("–" if m.get("gap_closure") is None else f"{100 * m['gap_closure']:+.0f} %")
        if versus:
            cells.append(_delta(m.get("vs_versus")))
        cells += [_mean_sd(m["hd95"], 2), _mean_sd(m["pooled_dice"])]
        if has_pq:
            acc = m["accept_rate"]
            cells += ["–" if acc["mean"] is None else f"{100 * acc['mean']:.0f} %",
                      _mean_sd(m["pseudo_accepted_dice"]) + _of(m["pseudo_accepted_dice"], m["finished"]),
                      _mean_sd(m["pseudo_student_dice"])]
        wall = m["wall_s"]
        cells.append("–" if wall["mean"] is None else f"{wall['mean'] / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if len(classes) > 1:
        lines += ["", "Per class (test Dice mean ± sd; Δ vs supervised [95 % CI]):", "",
                  "| method | " + " | ".join(classes) + " |", "|---|" + "|".join("---" for _ in classes) + "|"]
        for label, m in result["methods"].items():
            per = []
            for c in classes:
                cell = _mean_sd(m["dice_per_class"][c])
                if label != SUPERVISED:
                    cell += f"; {_delta(m['vs_supervised_per_class'][c])}"
                per.append(cell)
            lines.append(f"| `{label}` | " + " | ".join(per) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: dict[str, Any]) -> str:
    spec = result.get("spec", {})
    n_draws, n_seeds = len(spec.get("labeled_draws", [])), len(spec.get("seeds", []))
    labeled = spec.get("labeled") if spec.get("labeled") is not None else f"ratio {spec.get('ratio')}"
    lines = ["# semisam compare", ""]
    if result.get("command"):
        lines += ["```bash", result["command"], "```", ""]
    lines += [f"Dataset `{spec.get('dataset')}`, {labeled} labeled per draw, {n_draws} labeled draw(s) × "
              f"{n_seeds} seed(s). Test Dice is the selected round's (the last, or best on validation cases "
              "when `loop.select_by_val`), never a best-of-test. Δ pairs each run with the supervised run of the "
              "same draw and seed (`full`: supervised's mean over the draws at its seed); the interval is Student's t over the pairs. "
              "Gap closed = (method − supervised) / (full − supervised), of the means. "
              "PL = the last teacher round's pseudo-labels against the hidden labels of the unlabeled cases (analysis "
              "only; accepted cases = its accept rate, and a round that accepted nothing stops the run at the "
              "previous student).", ""]
    waiting = sum(r["status"] in ("pending", "running") for r in result["runs"])
    if waiting:
        done = sum(r["status"] == "done" for r in result["runs"])
        lines += [f"**Interim: {done} of {len(result['runs'])} runs finished**, {waiting} not yet; the table pairs "
                  "the finished ones. Rerun the comparison's command (without `--report`) to run the rest; finished "
                  "runs are read, not recomputed.", ""]
    lines.append(table(result))
    failed = [r for r in result["runs"] if r["status"] in ("failed", "skipped")]
    if failed:
        lines += ["", "Runs that did not finish:", ""]
        lines += [f"- {r['method']} draw {r['draw']} seed {r['seed']}: {r['status']} — {r.get('error')}" for r in failed]
    lines += ["", f"Elapsed: {result.get('elapsed_s', 0) / 60:.1f} min for this invocation "
              "(finished runs are read, not recomputed).", "", "![compare](compare.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Per method: one point per run (colour = labeled draw), the mean as a bar, supervised's mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["methods"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(labels), 3.6), dpi=110)
    draws = sorted({r["draw"] for r in result["runs"] if r["draw"] is not None})
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        rows = [r for r in result["runs"] if r["method"] == label and r.get("dice") is not None]
        for j, r in enumerate(rows):
            colour = "black" if r["draw"] is None else cmap(draws.index(r["draw"]) % 10)
            ax.scatter(i + (j - (len(rows) - 1) / 2) * 0.05, r["dice"], s=18, color=colour, zorder=3)
        mean = result["methods"][label]["dice"]["mean"]
        if mean is not None:
            ax.hlines(mean, i - 0.3, i + 0.3, color="black", lw=2, zorder=4)
    sup = result["methods"].get(SUPERVISED, {}).get("dice", {}).get("mean")
    if sup is not None:
        ax.axhline(sup, color="grey", ls="--", lw=1, label="supervised (mean)")
        ax.legend(loc="best", fontsize=7, framealpha=0.6)
    ax.set_xticks(range(len(labels)), [lb if len(lb) < 18 else lb[:16] + "…" for lb in labels], fontsize=8,
                  rotation=15)
    ax.set_ylabel("test Dice (selected round)")
    ax.set_title("semisam compare: one point per run (colour: labeled draw), bar: mean", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_outputs(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``compare.json``, ``compare.md`` and ``compare.png`` atomically; return paths and the table."""
    write_json_atomic(out / "compare.json", result)
    with atomic_write_path(out / "compare.md") as tmp:
        tmp.write_text(markdown(result))
    return {"json": out / "compare.json", "md": out / "compare.md", "png": plot(result, out / "compare.png"),
            "table": table(result)}

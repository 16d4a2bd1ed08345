"""Plan, run and collect a comparison: methods × labeled draws × seeds, one ``semisam run`` per cell.

Layout of ``--out``::

    compare_spec.json                 what this folder compares (dataset identity, labeled count, overrides)
    data/draw_<d>/                    the dataset with draw d's labeled cases (``data_prep split --seed d``)
    data/full/                        every training case labeled (for ``full``)
    runs/<method>/draw<d>_seed<s>/    one semisam run folder per cell (``full``: ``all_seed<s>``)
    runs/<method>/draw<d>_seed<s>.log its output
    cache/embeddings/                 the teacher's image embeddings, shared by every run (unless the
                                      overrides set teacher.cache_dir)
    compare.json  compare.md  compare.png

Every cell is an ordinary run folder, so an interrupted compare resumes: finished runs (``summary.json``
beside a manifest of the same recipe) are read, never recomputed, and a half-done run continues from its
last complete step. Runs go pair by pair (every method of one labeled draw and seed before the next draw and
seed, :func:`run_order`), and the tables are rewritten as each run finishes, so a comparison stopped early
still leaves complete paired draws and a table of them; ``--report`` writes the tables from the finished runs
and starts nothing. Methods with rounds reuse the supervised run of their draw and seed as round 0
(``loop.init_from``), so supervised-only and the loop methods start from one student and their paired
difference is the rounds' effect alone.

Runs are subprocesses (``python -m semisam run``) with their thread counts pinned
(``OMP_NUM_THREADS = cores // jobs``): on 2 cores two unpinned torch processes slow each other 10–60×.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from semisam.compare.methods import FULL, SUPERVISED, Method, parse_methods
from semisam.config import RunConfig, compose, to_dict
from semisam.config.compose import list_options, recipes_dir
from semisam.data.identity import dataset_identity
from semisam.utils.errors import SemisamError
from semisam.utils.io import write_json_atomic
from semisam.utils.progress import speaker

SPEC_FILE = "compare_spec.json"


say = speaker("compare")


@dataclass
class CompareSpec:
    """A comparison as the user asked for it (``semisam compare`` arguments)."""

    dataset: Path
    out: Path
    methods: list[str]
    seeds: list[int]
    draws: list[int]
    labeled: int | None = None
    ratio: float | None = None
    overrides: list[str] = field(default_factory=list)
    jobs: int = 1
    threads: int | None = None
    group: str | None = None
    recipes: Path | None = None
    versus: str | None = None  # a method's label: every other method's paired Δ against it too (report only)


@dataclass
class Cell:
    """One run of the comparison: a method on one labeled draw (None for ``full``) with one seed."""

    method: Method
    draw: int | None
    seed: int
    run_dir: Path
    overrides: list[str]
    cfg: RunConfig
    depends_on: "Cell | None" = None
    status: str = "pending"  # pending | running | done | failed | skipped
    started: float | None = None
    seconds: float | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        draw = "all" if self.draw is None else f"draw {self.draw}"
        return f"{self.method.label} · {draw} · seed {self.seed}"

    @property
    def log_file(self) -> Path:
        return self.run_dir.with_suffix(".log")


# ---------------------------------------------------------------------------------------------- checks
def check_source(spec: CompareSpec):
    """Open the source dataset and check that a comparison can run on it.

    Raises:
        SemisamError: no test cases, no labeled-count choice, empty seeds or draws, bad jobs.
    """
    from semisam.data import RawDataset

    if not spec.seeds:
        raise SemisamError("--seeds is empty; give at least one seed, e.g. --seeds 0 1")
    if not spec.draws:
        raise SemisamError("--labeled-draws is empty; give at least one draw seed, e.g. --labeled-draws 0 1 2")
    if len(set(spec.seeds)) != len(spec.seeds) or len(set(spec.draws)) != len(spec.draws):
        raise SemisamError("--seeds and --labeled-draws must not repeat a value")
    if spec.labeled is None and spec.ratio is None:
        raise SemisamError("choose how many training cases are labeled in each draw: --labeled N or --ratio r")
    if spec.jobs < 1:
        raise SemisamError(f"--jobs must be at least 1, got {spec.jobs}")
    src = RawDataset.open(spec.dataset)
    if not src.test_cases():
        raise SemisamError(f"{spec.dataset} has no test cases (imagesTs/ + labelsTs/); a comparison is scored on "
                           "them, so hold some cases out first")
    n_train = len(src.labeled_cases()) + len(src.unlabeled_cases())
    if spec.labeled is not None and not 1 <= spec.labeled < n_train:
        raise SemisamError(f"--labeled {spec.labeled} must be in [1, {n_train - 1}] for {n_train} training cases "
                           "(a draw needs unlabeled cases)")
    return src


def check_draws(spec: CompareSpec, src) -> None:
    """Refuse two labeled draws that label the same cases (likely with few labeled cases: one tile of 40 is the
    same tile in two draws one time in 40): their runs would count one draw twice in every paired interval.

    Raises:
        SemisamError: one line naming the two draws and a way out.
    """
    from data_prep.split import draw_split

    seen: dict[frozenset, int] = {}
    for d in spec.draws:
        cases = frozenset(draw_split(src, labeled=spec.labeled, ratio=spec.ratio, seed=d).labeled)
        if cases in seen:
            named = ", ".join(sorted(cases)[:3]) + (", ..." if len(cases) > 3 else "")
            raise SemisamError(f"--labeled-draws {seen[cases]} and {d} label the same case(s) ({named}): their pairs "
                               f"would count one draw twice; drop {d} or give another draw seed")
        seen[cases] = d


def spec_record(spec: CompareSpec) -> dict[str, Any]:
    """What ties ``--out`` to one comparison. Methods, seeds and draws may grow between invocations."""
    return {"dataset": str(spec.dataset.resolve()), "dataset_identity": dataset_identity(spec.dataset),
            "labeled": spec.labeled, "ratio": spec.ratio, "overrides": list(spec.overrides)}


def check_out_folder(spec: CompareSpec) -> None:
    """Refuse an ``--out`` folder that holds a comparison of another dataset, draw size or overrides."""
    path = spec.out / SPEC_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        new = spec_record(spec)
        changed = [k for k in new if old.get(k) != new[k]]
        if changed:
            raise SemisamError(f"{spec.out} holds a comparison with another {', '.join(changed)} "
                               f"(see {path}); choose another --out")
    elif spec.out.is_dir() and any(spec.out.iterdir()):
        raise SemisamError(f"{spec.out} exists and is not a semisam comparison folder; choose another --out")


# ---------------------------------------------------------------------------------------------- plan
def plan(spec: CompareSpec) -> list[Cell]:
    """Every run of the comparison with its composed, validated recipe; nothing is written.

    Raises:
        SemisamError: unknown method, a recipe override that does not compose (named with its method).
    """
    root = recipes_dir(spec.recipes)
    methods = parse_methods(spec.methods, list_options(root)["experiment"])
    group = spec.group or f"compare-{spec.out.resolve().name}"
    cells: list[Cell] = []
    supervised: dict[tuple[int, int], Cell] = {}
    for method in methods:
        draws: list[int | None] = [None] if method.dataset == FULL else list(spec.draws)
        for draw in draws:
            for seed in spec.seeds:
                cell = _make_cell(spec, root, method, draw, seed, group)
                if method.label == SUPERVISED:
                    supervised[(draw, seed)] = cell  # type: ignore[index]
                elif cell.cfg.loop.max_rounds > 0 and draw is not None:
                    base = supervised[(draw, seed)]
                    if _same_round0(cell.cfg, base.cfg):
                        cell = _make_cell(spec, root, method, draw, seed, group,
                                          extra=[f"loop.init_from={base.run_dir}"])
                        cell.depends_on = base
                cells.append(cell)
    return cells


@functools.lru_cache(maxsize=None)
def method_trains_online(method: Method, root: Path) -> bool:
    """Whether a method's own recipe (its words alone, before the comparison's common overrides) trains online —
    semisam's `mean_teacher`, `weak_strong`, `semisam`, or a user's recipe with online terms: one student and no
    rounds, so a common ``loop.max_rounds=1`` does not apply to it."""
    try:
        return compose([*method.overrides, *method.extra], config_dir=root).online.trains
    except SemisamError:
        return False  # the run's own composition names the problem, with its method


def _make_cell(spec: CompareSpec, root: Path, method: Method, draw: int | None, seed: int, group: str,
               extra: list[str] = ()) -> Cell:  # type: ignore[assignment]
    data = spec.out.resolve() / "data" / ("full" if draw is None else f"draw_{draw}")
    run_dir = spec.out.resolve() / "runs" / method.slug / (f"all_seed{seed}" if draw is None else f"draw{draw}_seed{seed}")
    tags = [method.slug[:60], "full" if draw is None else f"draw{draw}", f"seed{seed}", "compare"]
    overrides = [*method.overrides, *spec.overrides, *method.extra]
    if method.supervised or method_trains_online(method, root):
        overrides.append("loop.max_rounds=0")  # round 0 only, whatever the common overrides say
    if not any(o.split("=", 1)[0].lstrip("+~") == "teacher.cache_dir" for o in overrides):
        # one embedding cache for every run (keyed by image content and encoder: sharing is exact)
        overrides.append(f"teacher.cache_dir={spec.out.resolve() / 'cache' / 'embeddings'}")
    overrides += [f"dataset.raw_dir={data}", f"seed={seed}", f"run_dir={run_dir}", "restart=false",
                  f"logger.group={group}", f"logger.name={method.slug}-{tags[1]}-seed{seed}",
                  f"logger.tags=[{','.join(tags)}]", *extra]
    try:
        cfg = compose(overrides, config_dir=root)
    except SemisamError as e:
        raise SemisamError(f"method '{method.label}': {e}") from None
    return Cell(method, draw, seed, run_dir, overrides, cfg)


def _same_round0(a: RunConfig, b: RunConfig) -> bool:
    from semisam.loop.state import round0_fingerprint

    return round0_fingerprint(to_dict(a)) == round0_fingerprint(to_dict(b))


def prepare_data(spec: CompareSpec, cells: list[Cell]) -> None:
    """Write each labeled draw's dataset (and the fully labeled one) once; existing ones are kept."""
    from data_prep.split import split_dataset

    needed = sorted({c.draw for c in cells}, key=lambda d: (d is None, d or 0))
    for draw in needed:
        out = spec.out.resolve() / "data" / ("full" if draw is None else f"draw_{draw}")
        if (out / "dataset.json").is_file():
            continue
        what = "every training case labeled" if draw is None else f"labeled draw {draw}"
        say(f"writing the dataset with {what} → {out}")
        if draw is None:
            split_dataset(spec.dataset, out, ratio=1.0, seed=0)
        else:
            split_dataset(spec.dataset, out, labeled=spec.labeled, ratio=spec.ratio, seed=draw)


# ---------------------------------------------------------------------------------------------- run
def is_finished(cell: Cell) -> bool:
    """A run whose summary is written and whose manifest holds this very recipe on this very dataset."""
    from semisam.loop.state import holds_run, read_manifest, run_identity

    manifest = read_manifest(cell.run_dir)
    return (manifest is not None and (cell.run_dir / "summary.json").is_file()
            and holds_run(manifest, run_identity(to_dict(cell.cfg))))


def child_env(threads: int) -> dict[str, str]:
    """The environment of one run: thread counts pinned so that parallel runs do not thrash the cores."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("WANDB_SILENT", "true")
    return env


def run_cell(cell: Cell, recipes: Path, threads: int) -> None:
    """Run one cell as ``python -m semisam run`` (output to ``<run_dir>.log``); raise on failure."""
    cell.log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "semisam", "run", "--recipes", str(recipes), *cell.overrides]
    with open(cell.log_file, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(threads))
    if proc.returncode != 0:
        tail = [line for line in cell.log_file.read_text().splitlines() if line.strip()][-1:]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0] if tail else 'no output'} (log: {cell.log_file})")


class Progress:
    """One line per start and finish: how many runs are done, which are going, and an ETA."""

    def __init__(self, cells: list[Cell], jobs: int):
        self.total = len(cells)
        self.jobs = jobs
        self.durations: list[float] = []
        self.lock = threading.Lock()
        self.cells = cells

    def line(self, event: str) -> None:
        with self.lock:
            done = sum(c.status in ("done", "failed", "skipped") for c in self.cells)
            left = self.total - done
            eta = ""
            if self.durations and left:
                mean = sum(self.durations) / len(self.durations)
                eta = f" · ETA ~{_fmt_s(mean * left / self.jobs)}"
            say(f"[{done}/{self.total}] {event}{eta}")


def run_order(spec: CompareSpec, cells: list[Cell]) -> list[Cell]:
    """The order runs start in: pair by pair — for each labeled draw (in ``--labeled-draws`` order) and seed,
    supervised-only and then every other method (in ``--methods`` order), ``full`` of a seed after the first
    draw's block of that seed. A comparison stopped early then holds complete pairs, not every supervised run
    and half a method. (``plan`` keeps the method-by-method order of the tables.)"""
    methods = list(dict.fromkeys(c.method.label for c in cells))

    def key(cell: Cell) -> tuple[int, int, int]:
        seed = spec.seeds.index(cell.seed)
        if cell.draw is None:  # full
            return 0, seed, len(methods)
        return spec.draws.index(cell.draw), seed, methods.index(cell.method.label)

    return sorted(cells, key=key)


def mark_finished(cells: list[Cell]) -> None:
    """Set the status of every cell whose run is already finished (same recipe, summary written) to done."""
    for cell in cells:
        if is_finished(cell):
            cell.status = "done"


def execute(spec: CompareSpec, cells: list[Cell], on_finish: Callable[[], None] | None = None) -> None:
    """Run every unfinished cell in :func:`run_order`, ``spec.jobs`` at a time, each after the run it depends
    on; ``on_finish()`` after each run that finishes or fails (the interim tables)."""
    recipes = recipes_dir(spec.recipes)
    threads = spec.threads or max(1, (os.cpu_count() or 1) // spec.jobs)
    mark_finished(cells)
    todo = [c for c in run_order(spec, cells) if c.status == "pending"]
    progress = Progress(cells, spec.jobs)
    if not todo:
        say(f"all {len(cells)} runs are finished; reading their results")
        return
    say(f"{len(todo)} of {len(cells)} runs to go, {spec.jobs} at a time with {threads} thread(s) each")
    running: dict[Future, Cell] = {}

    def ready(c: Cell) -> bool:
        return c.depends_on is None or c.depends_on.status == "done"

    with ThreadPoolExecutor(max_workers=spec.jobs) as pool:
        while todo or running:
            for cell in list(todo):
                if cell.depends_on is not None and cell.depends_on.status in ("failed", "skipped"):
                    cell.status, cell.error = "skipped", f"its round 0 ({cell.depends_on.name}) failed"
                    todo.remove(cell)
                    progress.line(f"skipped {cell.name}: {cell.error}")
            for cell in [c for c in todo if ready(c)]:
                if len(running) >= spec.jobs:
                    break
                todo.remove(cell)
                cell.status = "running"
                cell.started = time.time()
                running[pool.submit(run_cell, cell, recipes, threads)] = cell
                progress.line(f"started {cell.name}")
            if not running:
                if todo:  # cannot happen when every dependency is planned before its dependents
                    raise AssertionError(f"no runnable cell among {[c.name for c in todo]}")
                continue
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                cell = running.pop(fut)
                cell.seconds = time.time() - (cell.started or time.time())
                try:
                    fut.result()
                    cell.status = "done"
                    progress.durations.append(cell.seconds)
                    progress.line(f"finished {cell.name} in {_fmt_s(cell.seconds)}")
                except Exception as e:  # a failed run is reported, the others go on
                    cell.status, cell.error = "failed", str(e)
                    progress.line(f"FAILED {cell.name}: {e}")
                if on_finish is not None:
                    on_finish()


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


# ---------------------------------------------------------------------------------------------- collect
def collect(cell: Cell) -> dict[str, Any]:
    """The numbers of one finished run: the SELECTED round's test metrics (never a best-of-test), the
    pseudo-label quality and accept rate of its last teacher round (analysis only), and its wall time."""
    row: dict[str, Any] = {"method": cell.method.label, "draw": cell.draw, "seed": cell.seed,
                           "run_dir": str(cell.run_dir), "status": cell.status, "error": cell.error}
    if cell.status != "done":
        return row
    from semisam.loop.state import read_manifest

    summary = json.loads((cell.run_dir / "summary.json").read_text())
    metrics = json.loads((cell.run_dir / "metrics.json").read_text())
    selected = summary.get("selected_round")
    rounds = sorted(metrics.get("rounds", []), key=lambda r: r.get("round", 0))
    record = next((r for r in rounds if r.get("round") == selected), {})
    test = record.get("test") or {}
    # the run's last teacher round, trained on or not (a round whose cases were all rejected is not selected)
    taught = next((r for r in reversed(rounds) if isinstance(r.get("pseudo_quality"), dict)), {})
    manifest = read_manifest(cell.run_dir) or {"steps": {}}
    row.update(
        selected_round=selected,
        dice=test.get("dice_mean"),
        pooled_dice=test.get("pooled_dice"),
        hd95=test.get("hd95_mean"),
        dice_per_class=test.get("dice_per_class") or {},
        pseudo_quality=taught.get("pseudo_quality"),
        accept_rate=taught.get("accept_rate"),
        wall_s=round(sum(float(s.get("seconds") or 0.0) for s in manifest["steps"].values()), 1),
        shared_round0=any("shared_from" in s for s in manifest["steps"].values()),
    )
    return row


def run_compare(spec: CompareSpec, argv: list[str] | None = None, report_only: bool = False) -> dict[str, Any]:
    """The whole comparison: check → plan (every recipe composed) → data → runs → tables.

    ``argv`` is the command line after ``semisam`` (``["compare", "--dataset", ...]``), shown in ``compare.md``.
    The tables are rewritten after every run that finishes (marked interim until the last). With
    ``report_only`` nothing is run or written but the tables, from the runs of ``spec.out`` already finished.

    Returns:
        The content of ``compare.json``.

    Raises:
        SemisamError: bad input, found before anything is written (with ``report_only``: ``--out`` holds no
            comparison); or runs that failed (after the others finished and the tables were written).
    """
    t0 = time.time()
    check_draws(spec, check_source(spec))
    if report_only and not (spec.out / SPEC_FILE).is_file():
        raise SemisamError(f"{spec.out} holds no comparison ({SPEC_FILE} missing); --report reads the runs of a "
                           "comparison started there before: give its --out, or drop --report to start one")
    check_out_folder(spec)
    cells = plan(spec)
    labels = list(dict.fromkeys(c.method.label for c in cells))
    if spec.versus is not None and spec.versus not in labels:
        raise SemisamError(f"--versus {spec.versus!r} is not one of the compared methods ({', '.join(labels)}); "
                           "name one of them, quoted as in --methods")

    def tables(final: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from semisam.compare.report import summarize, write_outputs

        rows = [collect(c) for c in cells]
        result = summarize(rows, [c.method.label for c in cells], versus=spec.versus)
        result.update(spec={**spec_record(spec), "methods": spec.methods, "seeds": spec.seeds,
                            "labeled_draws": spec.draws, "jobs": spec.jobs},
                      command=" ".join(["semisam", *argv]) if argv is not None else None,
                      elapsed_s=round(time.time() - t0, 1))
        paths = write_outputs(spec.out, result)
        if final:
            print(paths["table"])
            say(f"wrote {spec.out / 'compare.md'}, {spec.out / 'compare.json'} and {spec.out / 'compare.png'}")
        return result, rows

    if report_only:
        mark_finished(cells)
        result, rows = tables(final=True)
        left = sum(r["status"] != "done" for r in rows)
        if left:
            say(f"{len(rows) - left} of {len(rows)} runs are finished; the table pairs those. Rerun without "
                "--report to run the other " + (f"{left}" if left > 1 else "one"))
        return result
    spec.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec.out / SPEC_FILE, spec_record(spec))
    prepare_data(spec, cells)
    execute(spec, cells, on_finish=lambda: tables(final=False))
    result, rows = tables(final=True)
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        raise SemisamError(f"{len(failed)} run(s) did not finish, e.g. {failed[0]['method']} "
                           f"(draw {failed[0]['draw']}, seed {failed[0]['seed']}): {failed[0]['error']}; "
                           "fix the cause and rerun the same command to resume")
    return result

"""semisam compare without training: method names, statistics, planning, bad input, the output folder."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.synthetic import make_synthetic
from semisam.compare.methods import parse_method, parse_methods, slugify
from semisam.compare.report import markdown, summarize, table
from semisam.compare.runner import CompareSpec, check_out_folder, check_source, plan, run_order
from semisam.compare.stats import describe, paired_difference, t_interval
from semisam.config.compose import list_options
from semisam.utils.errors import SemisamError

EXPERIMENTS = ["demo", "samdsk", "smoke", "supervised"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cmpdata")
    return make_synthetic(root / "Dataset900_Synthetic", n_train=6, n_labeled=2, n_test=2, size=32, seed=1)


def spec(dataset: Path, out: Path, **kw) -> CompareSpec:
    args = dict(dataset=dataset, out=out, methods=["supervised", "selftrain"], seeds=[0, 1], draws=[0],
                labeled=2, overrides=["student=tiny", "loop.max_rounds=1", "logger=disabled"])
    args.update(kw)
    return CompareSpec(**args)


# ------------------------------------------------------------------------------------------ methods
def test_builtin_and_recipe_methods():
    assert parse_method("supervised", EXPERIMENTS).overrides == ("experiment=supervised",)
    assert parse_method("full", EXPERIMENTS).dataset == "full"
    assert parse_method("selftrain", EXPERIMENTS).overrides == ("experiment=samdsk", "teacher=none", "filters=student")
    m = parse_method("samdsk  filters=sam prompts.box_margin=4", EXPERIMENTS)
    assert m.label == "samdsk filters=sam prompts.box_margin=4"
    assert m.overrides == ("experiment=samdsk",) and m.extra == ("filters=sam", "prompts.box_margin=4")
    assert m.slug == slugify(m.label) == "samdsk__filters-sam__prompts.box_margin-4"


def test_supervised_is_always_first_and_once():
    methods = parse_methods(["samdsk", "supervised", "supervised"], EXPERIMENTS)
    assert [m.label for m in methods] == ["supervised", "samdsk"]
    assert [m.label for m in parse_methods(["selftrain"], EXPERIMENTS)] == ["supervised", "selftrain"]


@pytest.mark.parametrize("label, words", [
    ("samdks", ["unknown method 'samdks'", "did you mean 'samdsk'"]),
    ("filters=sam", ["unknown method", "after `--`"]),
    ("samdsk filters", ["'filters' is not a recipe override"]),
    ("", ["empty method name"]),
])
def test_bad_method_names(label, words):
    with pytest.raises(SemisamError) as e:
        parse_method(label, EXPERIMENTS)
    for w in words:
        assert w in str(e.value)


# ------------------------------------------------------------------------------------------ statistics
def test_describe_and_t_interval_against_hand_computation():
    d = describe([0.8, 0.9, None, float("nan"), 1.0])
    assert d["n"] == 3 and math.isclose(d["mean"], 0.9) and math.isclose(d["sd"], 0.1)
    lo, hi = t_interval([0.8, 0.9, 1.0])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2}
    assert math.isclose(lo, 0.9 - half) and math.isclose(hi, 0.9 + half)
    assert t_interval([0.5]) == (None, None)
    assert t_interval([0.5, 0.5]) == (0.5, 0.5)


def test_paired_difference_drops_incomplete_pairs():
    p = paired_difference([0.8, None, 0.9, 0.7], [0.7, 0.6, 0.85, float("nan")])
    assert p["n"] == 2 and p["diffs"] == pytest.approx([0.1, 0.05])
    assert p["mean"] == pytest.approx(0.075) and p["lo"] < 0.075 < p["hi"]
    with pytest.raises(ValueError):
        paired_difference([0.1], [0.1, 0.2])


def row(method, draw, seed, dice, per_class=None, status="done"):
    return {"method": method, "draw": draw, "seed": seed, "status": status, "dice": dice, "pooled_dice": dice,
            "hd95": 2.0, "wall_s": 60.0, "dice_per_class": per_class or {"a": dice}, "pseudo_quality": None}


def test_summary_pairs_on_draw_and_seed_and_full_with_every_draw():
    rows = [row("supervised", d, s, 0.5 + 0.1 * d + 0.01 * s) for d in (0, 1) for s in (0, 1)]
    rows += [row("samdsk", d, s, 0.52 + 0.1 * d + 0.01 * s) for d in (0, 1) for s in (0, 1)]
    rows += [row("full", None, s, 0.9) for s in (0, 1)]
    rows.append(row("samdsk", 2, 0, None, status="failed"))
    out = summarize(rows, ["supervised", "samdsk", "full"])
    sam = out["methods"]["samdsk"]
    assert sam["runs"] == 5 and sam["finished"] == 4
    assert sam["vs_supervised"]["diffs"] == pytest.approx([0.02] * 4)
    assert sam["vs_supervised"]["lo"] == pytest.approx(0.02)  # sd 0: the interval collapses
    full = out["methods"]["full"]["vs_supervised"]
    assert full["n"] == 2  # one pair per seed: full vs supervised's mean over the draws at that seed
    assert full["diffs"] == pytest.approx([0.9 - 0.55, 0.9 - 0.56])
    text = table(out)
    assert "`samdsk` | 4 of 5 |" in text and "+0.020 [+0.020, +0.020]" in text


def test_gap_closure_and_pairing_against_another_method():
    rows = [row("supervised", d, s, 0.5 + 0.1 * d) for d in (0, 1) for s in (0, 1)]
    rows += [row("samdsk", d, s, 0.52 + 0.1 * d + 0.01 * s) for d in (0, 1) for s in (0, 1)]
    rows += [row("corrector", d, s, 0.55 + 0.1 * d) for d in (0, 1) for s in (0, 1)]
    rows += [row("full", None, s, 0.75) for s in (0, 1)]
    out = summarize(rows, ["supervised", "samdsk", "corrector", "full"], versus="samdsk")
    cor = out["methods"]["corrector"]
    assert cor["gap_closure"] == pytest.approx(0.05 / 0.2)  # (0.60 - 0.55) / (0.75 - 0.55)
    assert cor["vs_versus"]["diffs"] == pytest.approx([0.03, 0.02, 0.03, 0.02])  # paired on draw and seed
    assert "vs_versus" not in out["methods"]["samdsk"] and "vs_versus" not in out["methods"]["full"]
    text = table(out)
    assert "| gap closed | Δ vs samdsk [95 % CI] |" in text and "+25 %" in text
    # without full there is no gap to close
    assert summarize(rows[:-2], ["supervised", "corrector"])["methods"]["corrector"]["gap_closure"] is None


def test_versus_must_be_a_compared_method(dataset, tmp_path):
    from semisam.compare.runner import run_compare

    with pytest.raises(SemisamError, match="--versus 'samdks' is not one of the compared methods"):
        run_compare(spec(dataset, tmp_path / "out", methods=["samdsk"], versus="samdks"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ planning and input
def test_plan_shares_round0_and_composes_every_run(dataset, tmp_path):
    cells = plan(spec(dataset, tmp_path / "out", methods=["selftrain", "full", "samdsk student.epochs=2",
                                                          "supervised student.epochs=3"]))
    names = [(c.method.label, c.draw, c.seed) for c in cells]
    assert names[:2] == [("supervised", 0, 0), ("supervised", 0, 1)]  # supervised first: others depend on it
    sup = {(c.draw, c.seed): c for c in cells if c.method.label == "supervised"}
    for c in cells:
        if c.method.label == "selftrain":
            assert c.depends_on is sup[(c.draw, c.seed)]
            assert c.cfg.loop.init_from == str(sup[(c.draw, c.seed)].run_dir)
            assert c.cfg.teacher.name == "none" and c.cfg.loop.max_rounds == 1
        if c.method.label == "full":
            assert c.draw is None and c.cfg.loop.max_rounds == 0 and c.depends_on is None
            assert c.cfg.dataset.raw_dir.endswith("data/full")
        if c.method.label.startswith("samdsk"):
            assert c.depends_on is None  # another student budget: its round 0 is its own
        if c.method.label.startswith("supervised"):
            assert c.cfg.loop.max_rounds == 0  # the common loop.max_rounds=1 does not make it a loop
        if c.method.label == "supervised student.epochs=3":  # an equal-budget control: still no rounds
            assert c.cfg.student.epochs == 3 and c.depends_on is None
        assert c.cfg.seed == c.seed and c.cfg.logger.group == "compare-out"
        assert c.cfg.teacher.cache_dir == str((tmp_path / "out" / "cache" / "embeddings").resolve())
    assert not (tmp_path / "out").exists()  # planning writes nothing


def test_online_methods_have_no_rounds_whoever_wrote_the_recipe(dataset, tmp_path):
    """semisam's online recipes and a user's own (found through --recipes) train one student: the common
    loop.max_rounds=1 does not apply to them (with it, their recipe would not compose), and they share no round 0."""
    mine = tmp_path / "recipes" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - weak_strong\n  - _self_\n\n"
                                    "online:\n  confidence: 0.9\n")
    cells = plan(spec(dataset, tmp_path / "out", methods=["supervised", "mine", "weak_strong", "samdsk"],
                      seeds=[0], recipes=tmp_path / "recipes"))
    by = {c.method.label: c for c in cells}
    for name in ("mine", "weak_strong"):
        assert by[name].cfg.loop.max_rounds == 0 and by[name].depends_on is None
        assert by[name].cfg.online.consistency == "weak_strong"
    assert by["mine"].cfg.online.confidence == 0.9
    assert by["samdsk"].cfg.loop.max_rounds == 1 and not by["samdsk"].cfg.online.trains


def test_runs_start_pair_by_pair_while_the_tables_keep_the_method_order(dataset, tmp_path):
    s = spec(dataset, tmp_path / "out", methods=["selftrain", "full", "supervised"], draws=[3, 1], seeds=[0, 1])
    cells = plan(s)
    order = [(c.method.label, c.draw, c.seed) for c in run_order(s, cells)]
    assert order == [("supervised", 3, 0), ("selftrain", 3, 0), ("full", None, 0),
                     ("supervised", 3, 1), ("selftrain", 3, 1), ("full", None, 1),
                     ("supervised", 1, 0), ("selftrain", 1, 0), ("supervised", 1, 1), ("selftrain", 1, 1)]
    for i, c in enumerate(run_order(s, cells)):  # every run starts after the run it depends on
        assert c.depends_on is None or c.depends_on in run_order(s, cells)[:i]
    assert [c.method.label for c in cells][:4] == ["supervised"] * 4  # plan (the tables) is method by method


def test_interim_table_says_how_many_runs_it_pairs():
    rows = [row("supervised", 0, 0, 0.5), row("samdsk", 0, 0, 0.6), row("supervised", 1, 0, 0.7),
            row("samdsk", 1, 0, None, status="running"), row("samdsk", 2, 0, None, status="pending"),
            row("supervised", 2, 0, None, status="failed")]
    text = markdown(summarize(rows, ["supervised", "samdsk"]))
    assert "**Interim: 3 of 6 runs finished**, 2 not yet" in text
    assert "- supervised draw 2 seed 0: failed" in text and "samdsk draw 2 seed 0" not in text  # pending: no error
    done = markdown(summarize(rows[:2], ["supervised", "samdsk"]))
    assert "Interim" not in done and "Runs that did not finish" not in done


def test_override_that_does_not_compose_names_its_method(dataset, tmp_path):
    with pytest.raises(SemisamError, match=r"method 'samdsk filters.iou_thres=0.5'.*iou_thresh"):
        plan(spec(dataset, tmp_path / "out", methods=["samdsk filters.iou_thres=0.5"]))
    with pytest.raises(SemisamError, match="student.epoch"):
        plan(spec(dataset, tmp_path / "out", overrides=["student.epoch=3"]))


@pytest.mark.parametrize("kw, words", [
    ({"seeds": []}, "--seeds is empty"),
    ({"draws": []}, "--labeled-draws is empty"),
    ({"labeled": None}, "--labeled N or --ratio r"),
    ({"labeled": 6}, "must be in [1, 5]"),
    ({"seeds": [0, 0]}, "must not repeat"),
])
def test_bad_spec(dataset, tmp_path, kw, words):
    with pytest.raises(SemisamError, match=None) as e:
        check_source(spec(dataset, tmp_path / "out", **kw))
    assert words in str(e.value)


def test_two_draws_that_label_the_same_cases_are_refused_before_anything_is_written(dataset, tmp_path):
    from data_prep.split import draw_split, split_dataset
    from semisam.compare.runner import check_draws, run_compare
    from semisam.data import RawDataset

    src = RawDataset.open(dataset)
    labeled = {d: draw_split(src, labeled=1, seed=d).labeled for d in range(7)}  # 6 training cases: 7 draws collide
    first = {}
    for d, cases in labeled.items():
        first.setdefault(cases, d)
    a, b = next((first[cases], d) for d, cases in labeled.items() if first[cases] != d)
    out = tmp_path / "out"
    with pytest.raises(SemisamError, match=rf"--labeled-draws {a} and {b} label the same case\(s\) \({labeled[a][0]}\)"):
        run_compare(spec(dataset, out, labeled=1, draws=list(range(7))))
    assert not out.exists()
    distinct = sorted(first.values())[:2]  # draws with different labeled cases pass the check
    check_draws(spec(dataset, out, labeled=1, draws=distinct), src)
    # the draw is the one split_dataset writes
    written = RawDataset.open(split_dataset(dataset, tmp_path / "draw", labeled=1, seed=b))
    assert tuple(c.case_id for c in written.labeled_cases()) == labeled[b]


def test_dataset_without_test_cases_is_refused(tmp_path):
    ds = make_synthetic(tmp_path / "Dataset900_Synthetic", n_train=6, n_labeled=2, n_test=0, size=32)
    with pytest.raises(SemisamError, match="no test cases"):
        check_source(spec(ds, tmp_path / "out"))


def test_out_folder_of_another_comparison_is_refused(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "compare_spec.json").write_text(json.dumps({"dataset": str(dataset.resolve()), "labeled": 3}))
    with pytest.raises(SemisamError, match="another dataset_identity, labeled, overrides "):
        check_out_folder(spec(dataset, out))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SemisamError, match="not a semisam comparison folder"):
        check_out_folder(spec(dataset, other))


def test_cli_bad_input_is_one_line_and_writes_nothing(dataset, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "semisam", "compare", "--dataset", str(dataset), "--out", str(out),
                           "--labeled", "2", "--methods", "supervised", "samdks", "--", "student=tiny"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'samdks'"), proc.stderr
    assert not out.exists()


def test_every_experiment_recipe_is_a_method():
    names = list_options()["experiment"]
    assert {"samdsk", "supervised"} <= set(names)
    assert [m.label for m in parse_methods(names, names)][0] == "supervised"


def test_table_says_when_pseudo_label_quality_covers_only_some_runs():
    rows = [row("supervised", 0, s, 0.5) for s in (0, 1)]
    rows += [dict(row("samdsk", 0, s, 0.5), accept_rate=a, pseudo_quality={"accepted_dice": d, "student_dice": 0.8})
             for s, a, d in ((0, 0.0, None), (1, 0.5, 0.9))]
    out = summarize(rows, ["supervised", "samdsk"])
    assert out["methods"]["samdsk"]["accept_rate"]["mean"] == pytest.approx(0.25)
    line = next(ln for ln in table(out).splitlines() if ln.startswith("| `samdsk`"))
    assert "| 25 % | 0.900 (1 of 2 runs) | 0.800 ± 0.000 |" in line

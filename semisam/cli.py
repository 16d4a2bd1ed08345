"""The ``semisam`` command: a thin entry point (compose → validate → build → run).

    semisam run [experiment=<name>] [key=value ...]     the semi-supervised loop from a recipe
    semisam compare --dataset DIR --out DIR ...         methods × labeled draws × seeds, paired vs supervised
    semisam pseudolabel --images DIR --probs DIR ...    refine a trained nnU-Net's predictions with SAM
    semisam evaluate --pred DIR --gt DIR ...            Dice / HD95 tables (monai.metrics)
    semisam probe COMPARE_DIR ... --rules R ... --out DIR  pseudo-label rules vs the student (no retraining)
    semisam bench --raw-dir DIR --work-dir DIR          does the teacher beat the student? (measured)
    semisam nnunet <nnUNetv2_command> [args ...]         nnU-Net's own commands, torchvision-safe

Bad input ends with one ``error: ...`` line on stderr and exit status 2; nothing half-written is left. So does a
full disk (ENOSPC, EDQUOT, EFBIG) anywhere in a run: rerunning the same command resumes from the last complete step.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from semisam.utils.errors import SemisamError
from semisam.utils.io import NO_SPACE_ERRNOS, quiet_finalizers, write_failure


def _cmd_run(args: argparse.Namespace) -> int:
    from semisam.config.compose import ENV_RECIPES
    from semisam.utils.environ import updated_environ

    if args.recipes is None:
        return _run(args)
    # what the run composes later (loop.calibrate's rules) searches the folder too, for the command's duration
    with updated_environ({ENV_RECIPES: str(Path(args.recipes).expanduser().resolve())}):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from semisam.config import compose, to_yaml

    cfg = compose(args.overrides, config_dir=args.recipes)
    if args.cfg:
        print(to_yaml(cfg), end="")
        return 0
    if args.check:
        from semisam.loop.preflight import preflight

        for note in preflight(cfg).notes:
            print(f"note: {note}", file=sys.stderr)
        print("ok")
        return 0
    from semisam.loop.experiment import run_experiment
    from semisam.utils import distributed

    with distributed.session(cfg.device):  # under torchrun: rank 0 runs the loop, every rank its teacher share
        run_experiment(cfg)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from semisam.compare import CompareSpec, run_compare

    if args.ratio is not None and not 0 < args.ratio < 1:  # before --out is written (NaN fails here too)
        raise SemisamError(f"--ratio {args.ratio:g} must lie in (0, 1): the labeled fraction of each draw, whose "
                           "other cases are its unlabeled ones; or give --labeled N")
    spec = CompareSpec(dataset=args.dataset, out=args.out, methods=args.methods, seeds=args.seeds,
                       draws=args.labeled_draws, labeled=args.labeled, ratio=args.ratio, overrides=args.overrides,
                       jobs=args.jobs, threads=args.threads, group=args.group, recipes=args.recipes,
                       versus=args.versus)
    run_compare(spec, argv=args.argv, report_only=args.report)
    return 0


def _cmd_pseudolabel(args: argparse.Namespace) -> int:
    from semisam.config import compose
    from semisam.pseudolabel.folder import pseudolabel_folder

    from semisam.utils import distributed

    cfg = compose(args.overrides, config_dir=args.recipes)
    with distributed.session(cfg.device):  # under torchrun: the cases are sharded over the ranks
        pseudolabel_folder(
            images_dir=Path(args.images),
            probs_dir=Path(args.probs),
            out_dir=Path(args.out),
            dataset_json=Path(args.dataset_json),
            cfg=cfg,
            adapt_on=Path(args.adapt_on) if args.adapt_on else None,
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from semisam.eval.report import evaluate_folders

    evaluate_folders(Path(args.pred), Path(args.gt), Path(args.dataset_json), Path(args.out))
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from semisam.compare.probe import run_probe

    run_probe(args.compares, args.rules, args.out, method=args.method, recipes=args.recipes, pattern=args.runs,
              adapt_steps=args.adapt_steps)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from semisam.bench import run

    run(args)
    return 0


def _cmd_nnunet(args: argparse.Namespace) -> int:
    from semisam.nnunet.__main__ import run_nnunet_command

    return run_nnunet_command(args.command, args.args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semisam", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def recipes_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--recipes", type=Path, default=None,
                        help="your recipe folder, searched before semisam's own recipes: its files add options "
                             "(experiment/mine.yaml) or replace ours of the same name (default: $SEMISAM_RECIPES)")

    r = sub.add_parser("run", help="run an experiment recipe (Hydra overrides: key=value)")
    recipes_arg(r)
    r.add_argument("--cfg", action="store_true", help="print the resolved, validated recipe and exit")
    r.add_argument("--check", action="store_true",
                   help="only the build step: check dataset, teacher weights, W&B login, run folder and disk "
                        "space, print 'ok' (or one error line) and exit; writes nothing")
    r.add_argument("overrides", nargs="*", help="e.g. experiment=demo dataset.raw_dir=data/Dataset501_Nuclei")
    r.set_defaults(fn=_cmd_run)

    c = sub.add_parser(
        "compare", help="run methods over labeled draws and seeds; one table paired against supervised-only",
        description="Run several methods on one dataset over labeled draws and seeds and print one table: test "
                    "Dice (selected round) mean ± sd, the paired difference to supervised-only with a 95 % "
                    "interval, HD95, pseudo-label quality and wall time. Recipe overrides for every method go "
                    "after `--`. Runs go pair by pair (every method of a labeled draw and seed, then the next) "
                    "and the tables are rewritten as each run finishes. Rerunning the same command resumes; "
                    "finished runs are never recomputed.")
    recipes_arg(c)
    c.add_argument("--dataset", required=True, type=Path,
                   help="a labeled nnU-Net raw dataset with test cases (hidden labels count as labels)")
    c.add_argument("--out", required=True, type=Path, help="the comparison folder (created; reused to resume)")
    c.add_argument("--methods", nargs="+", default=["supervised", "full", "selftrain", "samdsk"],
                   help="supervised, full, selftrain, a recipe name, or \"recipe key=value ...\" (quoted); "
                        "default: supervised full selftrain samdsk")
    c.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="run seeds (default 0 1)")
    c.add_argument("--labeled-draws", nargs="+", type=int, default=[0, 1, 2],
                   help="seeds of the labeled draws (data_prep split --seed; default 0 1 2)")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--labeled", type=int, default=None, help="labeled training cases per draw")
    g.add_argument("--ratio", type=float, default=None, help="labeled fraction per draw, in (0, 1)")
    c.add_argument("--jobs", type=int, default=1, help="runs at a time (threads are divided among them)")
    c.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores // jobs)")
    c.add_argument("--versus", default=None,
                   help="also pair every method with this one (e.g. samdsk), on the same draw and seed")
    c.add_argument("--group", default=None, help="W&B group of the runs (default: compare-<out folder name>)")
    c.add_argument("--report", action="store_true",
                   help="start no run: write the tables from the runs of --out that are finished so far (give the "
                        "comparison's own arguments)")
    c.add_argument("overrides", nargs="*", help="after `--`: recipe overrides for every method, "
                                                "e.g. -- student.epochs=10 loop.max_rounds=1")
    c.set_defaults(fn=_cmd_compare)

    pl = sub.add_parser("pseudolabel", help="SAM-refined pseudo-labels from nnU-Net probability files")
    recipes_arg(pl)
    pl.add_argument("--images", required=True, help="folder of images named like nnU-Net's imagesTr (<case>_0000<ext>)")
    pl.add_argument("--probs", required=True, help="folder of <case>.npz + <case>.pkl written by nnUNetv2_predict --save_probabilities")
    pl.add_argument("--dataset-json", required=True, help="the dataset.json of the trained model (labels, file_ending)")
    pl.add_argument("--out", required=True, help="output folder for the pseudo-label files and stats.json")
    pl.add_argument("--adapt-on", default=None, help="optional nnU-Net raw dataset whose LABELED cases adapt the teacher first")
    pl.add_argument("overrides", nargs="*", help="recipe overrides, e.g. teacher=litemedsam filters=agree")
    pl.set_defaults(fn=_cmd_pseudolabel)

    ev = sub.add_parser("evaluate", help="Dice/HD95 per case and class of a prediction folder")
    ev.add_argument("--pred", required=True)
    ev.add_argument("--gt", required=True)
    ev.add_argument("--dataset-json", required=True)
    ev.add_argument("--out", required=True, help="folder for metrics.json and metrics.md")
    ev.set_defaults(fn=_cmd_evaluate)

    from semisam.bench import build_parser as bench_parser

    bp = sub.add_parser("bench", help="measure the teacher against the student's own pseudo-labels (hidden labels)")
    bench_parser(bp)
    bp.set_defaults(fn=_cmd_bench)

    from semisam.compare.probe import build_parser as probe_parser

    pr = sub.add_parser("probe", help="score pseudo-label rules against the student on a compare folder's "
                                      "round-0 students (hidden labels, no retraining)")
    recipes_arg(pr)
    probe_parser(pr)
    pr.set_defaults(fn=_cmd_probe)

    nn = sub.add_parser("nnunet", help="run an nnUNetv2_* command with semisam's compat and trainers active")
    nn.add_argument("command", help="e.g. nnUNetv2_train")
    nn.add_argument("args", nargs=argparse.REMAINDER)
    nn.set_defaults(fn=_cmd_nnunet)
    return p


#: The commands that share their work over torchrun's ranks; every other one is a single process.
TORCHRUN_COMMANDS = ("run", "pseudolabel")


def one_process_only(cmd: str) -> None:
    """Refuse a single-process command started by torchrun with more than one rank: each rank would run the
    whole command and write the same files.

    Raises:
        SemisamError: one line naming the command and what to do instead.
    """
    from semisam.utils import distributed

    w = distributed.world()
    if w.distributed and cmd not in TORCHRUN_COMMANDS:
        hint = {"compare": " (its runs are separate processes: --jobs runs several at once)",
                "nnunet": " (nnU-Net starts its own process per GPU for -num_gpus)"}.get(cmd, "")
        raise SemisamError(f"semisam {cmd} runs in one process{hint}, but torchrun started {w.size} ranks; run it "
                           f"without torchrun (only {' and '.join(TORCHRUN_COMMANDS)} share work over ranks)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # Before anything imports torchvision (segment_anything, timm, nnU-Net's trainer lookup).
    from semisam import compat

    compat.install()
    with contextlib.ExitStack() as after_failure:
        try:
            one_process_only(args.cmd)
            return int(args.fn(args) or 0)
        except SemisamError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume from the last complete step", file=sys.stderr)
            return 130
        except OSError as e:  # a full disk anywhere (nnU-Net's files, checkpoints, reports): one line, then resume
            if e.errno not in NO_SPACE_ERRNOS:
                raise
            after_failure.enter_context(quiet_finalizers(collect=True))  # writers that fail again when released
            message = write_failure(e.filename, e.strerror or str(e), e.errno)
    print(f"error: {message}", file=sys.stderr)
    return SemisamError.exit_code


if __name__ == "__main__":
    sys.exit(main())

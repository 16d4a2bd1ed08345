"""Run nnU-Net's own commands with semisam active: ``python -m semisam.nnunet <nnUNetv2_command> [args ...]``.

    python -m semisam.nnunet nnUNetv2_plan_and_preprocess -d 501 -c 2d --verify_dataset_integrity
    python -m semisam.nnunet nnUNetv2_train 501 2d all -tr nnUNetTrainerSemiSAM
    python -m semisam.nnunet nnUNetv2_predict -i imagesTs -o pred -d 501 -c 2d -f all -tr nnUNetTrainerSemiSAM
    semisam nnunet nnUNetv2_train ...            (the same, through the main CLI)

Before handing over to the stock console script it (1) installs :mod:`semisam.compat` (torchvision on CPU
torch: nnU-Net's trainer lookup imports timm-based trainers), (2) lists semisam's trainer folder in
``nnUNet_extTrainer`` so ``-tr nnUNetTrainerSemiSAM`` is found for training and prediction alike, (3) for the
commands that take ``-device`` (whose default, ``cuda``, fails with "Torch not compiled with CUDA enabled"
on a machine without CUDA) adds ``-device cuda|mps|cpu``, the first this machine has, when none is given,
and (4) for the commands that run the experiment planner raises ``nnUNet_n_proc_DA=0`` to 1 (the planner
calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which rejects 0; 0 stays valid for training: augmentation
in the main process). Each of (3) and (4) says so in one line on stderr. Otherwise the command's arguments
are nnU-Net's, unchanged; its exit status is returned. ``train`` is accepted for ``nnUNetv2_train`` (any name
without the prefix). An unknown name ends with one error line and status 2.
"""
from __future__ import annotations

import contextlib
import sys
from typing import ContextManager

from semisam.nnunet import ensure_ext_trainer_env
from semisam.student.env import planner_safe_n_proc_da
from semisam.utils.errors import SemisamError
from semisam.utils.progress import speaker
from semisam.utils.registry import suggest

PREFIX = "nnUNetv2_"
#: nnU-Net (2.8) commands with a ``-device`` option (default ``cuda``).
DEVICE_COMMANDS = frozenset({"nnUNetv2_train", "nnUNetv2_predict", "nnUNetv2_predict_from_modelfolder"})
#: nnU-Net (2.8) commands that run the experiment planner (``ExperimentPlanner.static_estimate_VRAM_usage``).
PLANNER_COMMANDS = frozenset({"nnUNetv2_plan_and_preprocess", "nnUNetv2_plan_experiment"})


say = speaker("semisam nnunet")


def planner_guard(name: str) -> ContextManager[None]:
    """For a :data:`PLANNER_COMMANDS` command, ``nnUNet_n_proc_DA`` below 1 is raised to 1 while it runs, and said
    (:func:`semisam.student.env.planner_safe_n_proc_da`); other commands run with the value as it is."""
    if name not in PLANNER_COMMANDS:
        return contextlib.nullcontext()
    return planner_safe_n_proc_da(lambda line: say(f"{name}: {line}"))


def _names_option(arg: str, option: str) -> bool:
    """``arg`` sets ``option`` as argparse reads it: ``-device``, ``-device=cpu`` or an abbreviation (``-dev``)."""
    name = arg.split("=", 1)[0]
    return len(name) >= 3 and option.startswith(name)


def with_device(name: str, args: list[str]) -> list[str]:
    """``args`` plus ``-device <cuda|mps|cpu>`` (the first available) for a :data:`DEVICE_COMMANDS` command
    given none; otherwise ``args`` unchanged."""
    if name not in DEVICE_COMMANDS or any(_names_option(a, "-device") or a in ("-h", "--help") for a in args):
        return args
    from semisam.utils.device import available_device_type

    device = available_device_type(mps=True)
    say(f"no -device given: using -device {device} (the first available of cuda, mps, cpu)")
    return [*args, "-device", device]


def nnunet_commands() -> dict:
    """The installed ``nnUNetv2_*`` console scripts: ``{name: importlib.metadata.EntryPoint}``."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith(PREFIX)}


def run_nnunet_command(name: str, args: list[str]) -> int:
    """Run the nnU-Net console script ``name`` in this process with ``args``; return its exit status.

    Raises:
        SemisamError: ``name`` is not an installed ``nnUNetv2_*`` command (with a "did you mean").
    """
    commands = nnunet_commands()
    if name not in commands and PREFIX + name in commands:
        name = PREFIX + name
    if name not in commands:
        raise SemisamError(f"unknown nnU-Net command '{name}'{suggest(name, commands)}; "
                           f"choose one of: {', '.join(sorted(commands)) or '(nnunetv2 is not installed)'}")
    from semisam import compat

    compat.install()  # before the entry point's module (and nnU-Net's trainer lookup) imports torchvision
    ensure_ext_trainer_env()
    entry = commands[name].load()
    saved_argv, sys.argv = sys.argv, [name, *with_device(name, args)]
    try:
        with planner_guard(name):
            code = entry()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = saved_argv
    if code is None or isinstance(code, int):
        return int(code or 0)
    print(code, file=sys.stderr)  # sys.exit("message") semantics
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\ncommands: " + " ".join(sorted(nnunet_commands())),
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        return run_nnunet_command(argv[0], argv[1:])
    except SemisamError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

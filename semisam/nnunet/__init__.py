"""semisam's nnU-Net glue: the trainer ``nnUNetTrainerSemiSAM`` and the folder nnU-Net's lookup searches.

nnU-Net (>= 2.8) finds a trainer by class name in its own package, then in the folders listed in the
``nnUNet_extTrainer`` environment variable (``os.pathsep``-separated), importing each module there as a
top-level module. This package's folder is such a folder: :func:`ensure_ext_trainer_env` lists it. Run
nnU-Net's commands through ``python -m semisam.nnunet <nnUNetv2_command> ...`` (see ``__main__``), which
also installs :mod:`semisam.compat` first. Importing this package is cheap (no torch, no nnunetv2).
"""
from __future__ import annotations

import os

#: The folder nnU-Net searches for semisam's trainers (this package's own folder).
TRAINER_DIR = os.path.dirname(os.path.abspath(__file__))
EXT_TRAINER_ENV = "nnUNet_extTrainer"


def ensure_ext_trainer_env() -> str:
    """Prepend :data:`TRAINER_DIR` to ``$nnUNet_extTrainer`` unless it is already listed; return the value.

    nnU-Net reads the variable at every lookup, so calling this in-process before constructing a trainer by
    name (training or prediction) is enough; child processes inherit it.
    """
    listed = [p for p in os.environ.get(EXT_TRAINER_ENV, "").split(os.pathsep) if p.strip()]
    if not any(os.path.abspath(p) == TRAINER_DIR for p in listed):
        listed.insert(0, TRAINER_DIR)
    os.environ[EXT_TRAINER_ENV] = os.pathsep.join(listed)
    return os.environ[EXT_TRAINER_ENV]

"""The class probabilities nnU-Net writes with ``--save_probabilities`` (``<case>.npz`` + ``<case>.pkl``): what
the teacher reads of the student, from semisam's own prediction folders or any trained nnU-Net's."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np

from semisam.utils.errors import SemisamError


def load_probabilities(npz_file: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Class probabilities written by :meth:`semisam.student.NnUNetStudent.predict` with ``save_probabilities=True``.

    Args:
        npz_file: ``<case>.npz``; its sibling ``<case>.pkl`` holds nnU-Net's image properties.

    Returns:
        ``(student_probs, properties)``: ``student_probs`` is float32 ``(K, Z, Y, X)`` — K classes including
        background, summing to 1 over K, in the original image geometry (2D images: Z == 1);
        ``properties`` is nnU-Net's dict (``spacing``, ...), or ``{}`` without a ``.pkl``.

    Raises:
        SemisamError: missing file or no ``probabilities`` array in it.
    """
    npz_file = Path(npz_file)
    if not npz_file.is_file():
        raise SemisamError(f"probabilities file {npz_file} does not exist; predict with save_probabilities")
    with np.load(npz_file) as z:
        if "probabilities" not in z:
            raise SemisamError(f"{npz_file} has no 'probabilities' array")
        probs = np.asarray(z["probabilities"], dtype=np.float32)
    if probs.ndim == 3:  # (K, Y, X): a writer without the Z axis
        probs = probs[:, None]
    if probs.ndim != 4:
        raise SemisamError(f"{npz_file}: probabilities have shape {probs.shape}, expected (K, Z, Y, X)")
    pkl = npz_file.with_suffix(".pkl")
    properties = {}
    if pkl.is_file():
        with open(pkl, "rb") as f:  # our own output folder (nnU-Net's properties are a plain pickle)
            properties = pickle.load(f)
    return probs, properties


def probabilities_file(seg_file: str | os.PathLike) -> Path:
    """The ``<case>.npz`` written beside a segmentation ``<case><ext>`` by :meth:`semisam.student.NnUNetStudent.predict`
    (the file ending is read from the ``dataset.json`` nnU-Net writes into the output folder)."""
    seg_file = Path(seg_file)
    dj = seg_file.parent / "dataset.json"
    ending = json.loads(dj.read_text())["file_ending"] if dj.is_file() else "".join(seg_file.suffixes)
    if not seg_file.name.endswith(ending):
        raise SemisamError(f"{seg_file} does not end with the dataset's file ending {ending}")
    return seg_file.with_name(seg_file.name[: -len(ending)] + ".npz")

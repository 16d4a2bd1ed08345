"""nnU-Net's environment: the three data folders, worker counts, and the raw dataset link.

nnunetv2 2.8 reads ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` lazily
(``nnunetv2.paths._EnvPath`` looks ``os.environ`` up on every use), so setting them for the duration of a
``with nnunet_env(work_dir):`` block is enough, and spawned worker processes inherit them.

Two of nnU-Net's worker counts are different: ``nnUNet_def_n_proc`` is read once, when
``nnunetv2.configuration`` is first imported, and ``nnUNet_n_proc_DA`` on every trainer start. Importing
this module therefore sets small-machine defaults for both (``setdefault``: a user's value wins) before
anything of nnunetv2 is imported through semisam.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from semisam.utils.environ import updated_environ
from semisam.utils.errors import SemisamError

#: nnU-Net's number of augmentation workers (0: augmentation in the main process)
N_PROC_DA_ENV = "nnUNet_n_proc_DA"

#: Worker defaults for small machines (2 cores): one preprocessing/export worker, two augmentation workers.
DEFAULT_N_PROC = "1"
DEFAULT_N_PROC_DA = "2"

os.environ.setdefault("nnUNet_def_n_proc", DEFAULT_N_PROC)
os.environ.setdefault("nnUNet_n_proc_DA", DEFAULT_N_PROC_DA)

_DATASET_DIR_RE = re.compile(r"^Dataset(\d{3})_(.+)$")


@dataclass(frozen=True)
class NnUNetPaths:
    """The three nnU-Net folders under one work folder."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, work_dir: str | os.PathLike) -> "NnUNetPaths":
        work_dir = Path(work_dir).absolute()
        return cls(work_dir / "nnUNet_raw", work_dir / "nnUNet_preprocessed", work_dir / "nnUNet_results")

    def environ(self) -> dict[str, str]:
        return {
            "nnUNet_raw": str(self.raw),
            "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
        }


@contextlib.contextmanager
def nnunet_env(
    work_dir: str | os.PathLike,
    *,
    n_proc: int | None = None,
    n_proc_da: int | None = None,
) -> Iterator[NnUNetPaths]:
    """Point nnU-Net at ``<work_dir>/nnUNet_{raw,preprocessed,results}`` for the duration of the block.

    Args:
        work_dir: folder that holds (or will hold) the three nnU-Net folders; they are created.
        n_proc: ``nnUNet_def_n_proc`` for this block. Only effective if nnunetv2 was not imported yet in this
            process (nnU-Net reads it at import); always effective for worker processes spawned inside.
        n_proc_da: ``nnUNet_n_proc_DA`` (augmentation workers; 0 = in the main process) for this block.

    Yields:
        The :class:`NnUNetPaths`. The previous environment is restored on exit.
    """
    paths = NnUNetPaths.under(work_dir)
    for p in (paths.raw, paths.preprocessed, paths.results):
        p.mkdir(parents=True, exist_ok=True)
    updates = paths.environ()
    if n_proc is not None:
        updates["nnUNet_def_n_proc"] = str(int(n_proc))
    if n_proc_da is not None:
        updates["nnUNet_n_proc_DA"] = str(int(n_proc_da))
    with updated_environ(updates):
        yield paths


@contextlib.contextmanager
def planner_safe_n_proc_da(announce: Callable[[str], None] | None = None) -> Iterator[None]:
    """``nnUNet_n_proc_DA`` below 1 is raised to 1 for the block: nnU-Net's experiment planner passes it to
    ``torch.set_num_threads``, which rejects 0 (the value that runs augmentation in the main process).

    Args:
        announce: called with one line saying so when the value is raised (None: silently).
    """
    value = os.environ.get(N_PROC_DA_ENV)
    try:
        too_low = value is not None and int(value) < 1
    except ValueError:
        too_low = False  # not a number: nnU-Net's own error
    if not too_low:
        yield
        return
    if announce is not None:
        announce(f"{N_PROC_DA_ENV}={value} raised to 1 for nnU-Net's planner: it passes it to torch.set_num_threads, "
                 f"which rejects {value}")
    with updated_environ({N_PROC_DA_ENV: "1"}):
        yield


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetNNN_Name``."""
    if not 0 < int(dataset_id) < 1000:
        raise SemisamError(f"dataset id must be between 1 and 999 (nnU-Net's three digits), got {dataset_id}")
    if not name or "/" in name or os.sep in name:
        raise SemisamError(f"dataset name must be a plain folder-name part, got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def parse_dataset_folder_name(folder: str | os.PathLike) -> tuple[int, str] | None:
    """``DatasetNNN_Name`` → ``(NNN, "Name")``; anything else → None."""
    m = _DATASET_DIR_RE.match(Path(folder).name)
    return (int(m.group(1)), m.group(2)) if m else None


def link_raw_dataset(
    raw_dataset_dir: str | os.PathLike,
    nnunet_raw: str | os.PathLike,
    dataset_id: int | None = None,
    name: str | None = None,
) -> tuple[int, Path]:
    """Make a raw dataset folder (anywhere, any name) visible as ``<nnunet_raw>/DatasetNNN_Name``.

    A symlink to the absolute, resolved folder is made. nnU-Net joins the relative paths of dataset.json's
    ``"dataset"`` entry to the link's path without resolving it, so they resolve inside the linked folder;
    paths that climb out of it (``..``) would not, and are refused.

    Args:
        raw_dataset_dir: the user's raw dataset folder (contains dataset.json).
        nnunet_raw: the ``nnUNet_raw`` folder.
        dataset_id, name: required unless the folder is already named ``DatasetNNN_Name``; they win if given.

    Returns:
        ``(dataset_id, path of the link)``.

    Raises:
        SemisamError: no dataset.json, no id/name, ``..`` paths, or the link name is taken by another dataset.
    """
    src = Path(raw_dataset_dir).resolve()
    if not (src / "dataset.json").is_file():
        raise SemisamError(f"{src} is not an nnU-Net raw dataset: it has no dataset.json")
    parsed = parse_dataset_folder_name(src)
    if dataset_id is None or name is None:
        if parsed is None:
            raise SemisamError(
                f"cannot tell the dataset id and name of {src}: name the folder DatasetNNN_Name or pass "
                "dataset_id and name"
            )
        dataset_id = parsed[0] if dataset_id is None else dataset_id
        name = parsed[1] if name is None else name
    _check_relative_paths(src)
    raw_root = Path(nnunet_raw)
    raw_root.mkdir(parents=True, exist_ok=True)
    dst = raw_root / dataset_folder_name(dataset_id, name)
    _check_id_unused(raw_root, int(dataset_id), dst.name)
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src:
            return int(dataset_id), dst
        raise SemisamError(f"{dst} already exists and is not {src}; remove it or use another dataset id")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(src, target_is_directory=True)
    os.replace(tmp, dst)
    return int(dataset_id), dst


def _check_id_unused(raw_root: Path, dataset_id: int, folder_name: str) -> None:
    others = [p.name for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder_name]
    if others:
        raise SemisamError(
            f"dataset id {dataset_id} is already used by {others[0]} in {raw_root}; choose another dataset id"
        )


def _check_relative_paths(src: Path) -> None:
    dataset_json = json.loads((src / "dataset.json").read_text())
    for case_id, entry in (dataset_json.get("dataset") or {}).items():
        for f in [*entry.get("images", []), entry.get("label", "")]:
            if not os.path.isabs(f) and ".." in Path(f).parts:
                raise SemisamError(
                    f"dataset.json of {src} lists {f!r} for case {case_id}, a relative path leaving the dataset "
                    "folder; use paths inside the folder or absolute paths"
                )

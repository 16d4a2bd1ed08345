"""Atomic file and folder writes: a reader never sees a half-written file.

Everything is first written under a temporary name in the destination's own folder (so the final
``os.replace`` is a rename on one file system) and renamed only once complete. On any exception the
temporary is removed and the destination is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to ``path``.

    The temporary keeps ``path``'s suffixes, so writers that dispatch on the file ending (SimpleITK,
    nnU-Net's image writers, numpy) work unchanged. An ``OSError`` of the block that names no file (a
    failed ``write()``, e.g. ENOSPC) is given ``path`` as its ``filename``.
    """
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=False)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file: name the target
            e.filename = str(path)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` as a whole.

    With ``overwrite=False`` an existing ``path`` is an error raised before anything is written.
    """
    from semisam.utils.errors import SemisamError

    path = Path(path)
    if path.exists() and not overwrite:
        raise SemisamError(f"{path} already exists; remove it or pass the overwrite option")
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a file, a link (not what it points to) or a folder tree; nothing if ``path`` does not exist."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one the atomic writers here give what is not complete yet:
    ``.<name>.tmp-<random>[<suffixes>]`` (:func:`atomic_write_path`, :func:`atomic_dir`) or ``.<name>.old-<pid>``
    (the version :func:`atomic_dir` is replacing)."""
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove, anywhere under ``folder``, what atomic writes that never finished left behind (a process killed
    with SIGKILL runs no cleanup); return what was removed. Symbolic links are not followed.

    Only for a folder no other process is writing into: a temporary being written would be removed under it.
    """
    removed = []
    for parent, dirs, files in os.walk(folder):
        for name in [d for d in dirs if is_temporary(d)]:
            dirs.remove(name)
            path = Path(parent) / name
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        for name in files:
            if is_temporary(name):
                (Path(parent) / name).unlink(missing_ok=True)
                removed.append(Path(parent) / name)
    return removed


#: errors of a write that more room would fix: a full disk, a quota, a file-size limit (``ulimit -f``)
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_failure(path: str | os.PathLike | None, reason: str, errno_: int | None = None) -> str:
    """The one line for a write that failed: what failed, and what to do (free space, or fix permissions);
    the run resumes from its last complete step when the same command is rerun."""
    where = f"cannot write {path}" if path else "a write failed"
    if errno_ in NO_SPACE_ERRNOS:
        todo = "free disk space (or raise the quota or file-size limit)"
    elif errno_ in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "make the folder writable, or choose another output folder"
    else:
        todo = "check the disk and the folder's permissions"
    return f"{where}: {reason}; {todo}, then rerun the same command to resume from the last complete step"


@contextlib.contextmanager
def quiet_finalizers(collect: bool = False) -> Iterator[None]:
    """Silence unraisable-exception reports while the block runs (and, with ``collect``, collect garbage
    before the reports are heard again).

    After a failed write some writers fail once more when they are finalised: imageio's PNG plugin closes its
    file again in ``__del__`` and prints ``Exception ignored in ...`` with a traceback, when the exception
    that holds its frames is released (the end of the ``except`` block) or collected. Wrap the ``try`` /
    ``except`` that handles the failure, so that the user sees the one error line only.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = _ignore_unraisable
    try:
        yield
    finally:
        if collect:
            gc.collect()
        sys.unraisablehook = hook


def _ignore_unraisable(unraisable: Any) -> None:
    pass


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    path = Path(path)
    with atomic_write_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

"""Several processes, one job: ``torch.distributed`` ranks started by ``torchrun`` (or ``srun torchrun``).

semisam uses ranks for one thing: the teacher's unlabeled cases are sharded over them (:func:`shard`), each rank
pseudo-labels and writes its own cases, and what they measured is gathered to rank 0 (:func:`collect`), which
merges it in the dataset's case order and alone writes the run's records. Everything else (student training,
prediction, evaluation, the manifest, reports, W&B) is rank 0's (:func:`lead`); the other ranks wait for its
results.

The world is read from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). Without it (a plain
``semisam`` command) every function here is the single-process no-op: :func:`shard` returns every item,
:func:`collect` ``[fn()]``, :func:`lead` ``fn()``; nothing is initialised and nothing changes.

Backends: ``gloo`` on CPU; on CUDA ``cpu:gloo,cuda:nccl``, so NCCL serves tensors on each rank's GPU
(``cuda:LOCAL_RANK``) while the pickled objects exchanged here travel over gloo in CPU memory, and a rank
waiting for rank 0 holds no GPU kernel. The timeout is long (:data:`DEFAULT_TIMEOUT_S`, or
``$SEMISAM_DIST_TIMEOUT`` seconds) because the other ranks wait in a collective while rank 0 trains a
student. A failure that one rank knows of is sent to the others (:func:`lead`, :func:`collect`), which stop with
one line instead of waiting; a rank that dies ends the job through torchrun, which stops the other workers of
its node when one exits with an error.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

from semisam.utils.errors import SemisamError

T = TypeVar("T")

#: seconds a rank waits in a collective (a whole round of student training and prediction happens meanwhile)
DEFAULT_TIMEOUT_S = 7 * 24 * 3600
TIMEOUT_ENV = "SEMISAM_DIST_TIMEOUT"

_initialised_here = False  # whether this process joined torchrun's group through init() (see teacher_group)


class RankFailed(SemisamError):
    """Another rank failed; this one stops too (the failing rank printed the cause)."""


@dataclass(frozen=True)
class World:
    """This process's place among the job's ranks (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SemisamError(f"${name}={value!r} is not an integer (set by torchrun; unset it for a plain run)") from None


def world() -> World:
    """The world from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (rank 0 of 1 without them).

    Raises:
        SemisamError: a variable that is not an integer, or a rank outside the world.
    """
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size or local < 0:
        raise SemisamError(f"RANK={rank} / WORLD_SIZE={size} / LOCAL_RANK={local} do not describe a world; "
                           "start ranks with torchrun, or unset them for a plain run")
    return World(rank, size, local)


def timeout_s() -> float:
    """Seconds a collective may wait (``$SEMISAM_DIST_TIMEOUT``, default :data:`DEFAULT_TIMEOUT_S`)."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return float(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise SemisamError(f"${TIMEOUT_ENV}={value!r} must be a number of seconds > 0")
    return seconds


def rank_device(device: str) -> str:
    """The device this rank's teacher uses for the recipe's ``device``: each rank its own GPU,
    ``cuda:LOCAL_RANK``, when the recipe asks for CUDA (``cuda``, or ``auto`` where CUDA is present); the
    recipe's value unchanged in a single process.

    Raises:
        SemisamError: ``cuda:N`` or ``mps`` with more than one rank (ranks would share one device).
    """
    w = world()
    if not w.distributed or device == "cpu":
        return device
    if device == "auto":
        import torch

        return f"cuda:{w.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{w.local_rank}"
    raise SemisamError(f"device={device} with {w.size} torchrun ranks: each rank uses its own GPU (cuda:LOCAL_RANK); "
                       "set device=cuda, auto or cpu")


def init(device: str = "cpu") -> World:
    """Join torchrun's process group (gloo on CPU; gloo for objects and NCCL for tensors on CUDA), once per
    process; a no-op in a single process. ``device`` is the recipe's (see :func:`rank_device`)."""
    global _initialised_here
    w = world()
    import torch.distributed as dist

    if not w.distributed or dist.is_initialized():
        return w
    dev = rank_device(device)
    if dev.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SemisamError(f"device={device} was asked for but CUDA is not available; use device=cpu or auto")
        if w.local_rank >= torch.cuda.device_count():
            raise SemisamError(f"LOCAL_RANK={w.local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                               "start at most one rank per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(w.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    _initialised_here = True
    return w


def shutdown() -> None:
    """Leave the process group (after a run that ended well on every rank): every rank waits for the others,
    then tears its group down and frees it while the interpreter is fully alive.

    The barrier keeps a rank from closing its gloo connections while a peer is still working (rank 0 writes
    the report after the last collective), and the collection drops the group's last references here rather
    than during interpreter finalization, where a gloo object destroyed late can abort the process after a
    run that ended well (a rare SIGABRT, "terminate called without an active exception", seen once on rank 1
    of a 2-rank CPU run)."""
    global _initialised_here
    import gc

    import torch.distributed as dist

    if dist.is_initialized() and _initialised_here:
        dist.barrier()
        dist.destroy_process_group()
        _initialised_here = False
        gc.collect()


@contextlib.contextmanager
def session(device: str = "cpu") -> Iterator[World]:
    """:func:`init` for the block, :func:`shutdown` after it when it ends well. On an error the group is left
    as it is: the process exits and torchrun stops the other workers (a rank blocked in a collective with a
    dead peer would wait for it)."""
    w = init(device)
    yield w
    shutdown()


def teacher_group() -> bool:
    """Whether this process's default process group is the teacher's torchrun group joined by :func:`init`.

    nnU-Net's trainer takes any initialised default group for its own DDP; a student trained by rank 0 while
    the other ranks wait must not (see ``nnUNetTrainerSemiSAM``)."""
    return _initialised_here


def shard(items: Sequence[T], w: World | None = None) -> list[T]:
    """This rank's share of ``items``: round-robin by index (``items[rank::size]``), so every rank's share is
    fixed by the order of ``items`` and the world size alone, and the shares are disjoint and cover ``items``."""
    w = w or world()
    return list(items[w.rank::w.size])


def ordered(parts: Sequence[Sequence[tuple[int, T]]], n: int) -> list[T]:
    """Merge ranks' ``(index, item)`` lists into one list in index order ``0 … n − 1``.

    Raises:
        SemisamError: an index that is missing, repeated or out of range (shares that do not cover the items).
    """
    merged: list[Any] = [None] * n
    seen = [False] * n
    for part in parts:
        for i, item in part:
            if not 0 <= i < n or seen[i]:
                raise SemisamError(f"item {i} is {'out of range' if not 0 <= i < n else 'repeated'} in the ranks' "
                                   f"results (expected each of 0 … {n - 1} once)")
            seen[i], merged[i] = True, item
    missing = [i for i, s in enumerate(seen) if not s]
    if missing:
        raise SemisamError(f"item {missing[0]} is missing from the ranks' results ({len(missing)} of {n} missing)")
    return merged


def broadcast(obj: Any = None, w: World | None = None) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object); ``obj`` itself in a single process."""
    w = w or world()
    if not w.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if w.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, w: World | None = None) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others; ``[obj]`` in a single process."""
    w = w or world()
    if not w.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * w.size if w.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(w: World | None = None) -> None:
    """Wait for every rank (a no-op in a single process)."""
    w = w or world()
    if w.distributed:
        import torch.distributed as dist

        dist.barrier()


def _failure(e: BaseException) -> str:
    return str(e) if isinstance(e, SemisamError) else f"{type(e).__name__}: {e}"


def lead(fn: Callable[[], T], w: World | None = None) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank.

    If ``fn`` raises on rank 0, rank 0 raises it and every other rank raises :class:`RankFailed` (instead of
    waiting for a result that will not come). A single process: ``fn()``.
    """
    w = w or world()
    if not w.distributed:
        return fn()
    if w.main:
        try:
            result = fn()
        except BaseException as e:
            broadcast(("error", _failure(e)), w)
            raise
        broadcast(("ok", result), w)
        return result
    status, value = broadcast(None, w)
    if status == "error":
        raise RankFailed(f"rank {w.rank} stops: rank 0 failed ({value})")
    return value


def collect(fn: Callable[[], T], w: World | None = None) -> list[T] | None:
    """Run ``fn`` on every rank (its share of the work); rank 0 gets every rank's result in rank order, the
    others None. A failure on any rank is gathered too: rank 0 then raises it as one line naming the rank,
    and the failing rank raises its own error after the gather, so no rank waits for another that failed.
    A single process: ``[fn()]``, errors raised as they are.
    """
    w = w or world()
    if not w.distributed:
        return [fn()]
    error: BaseException | None = None
    try:
        payload: tuple[str, Any] = ("ok", fn())
    except BaseException as e:  # sent to rank 0, then raised here
        error, payload = e, ("error", _failure(e))
    parts = gather(payload, w)
    if error is not None and not w.main:
        raise error
    if not w.main:
        return None
    failed = [(r, msg) for r, (status, msg) in enumerate(parts) if status == "error"]
    if failed:
        if error is not None:
            raise error
        rank, msg = failed[0]
        raise SemisamError(f"rank {rank}: {msg}")
    return [value for _, value in parts]

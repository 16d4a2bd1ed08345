"""A run folder's state as every torchrun rank sees it (:mod:`semisam.utils.distributed`).

Rank 0 owns the run folder: it alone creates the :class:`~semisam.loop.state.RunState`, runs the steps and
writes ``manifest.json``. The other ranks hold a copy of the manifest that rank 0 keeps current: each step's
result is broadcast when the step completes (or is found complete on resume), so every rank takes the same
path through the rounds and reads the same results (``state.result(...)``) without writing anything. A
*collective* step (the teacher round) is run by every rank, each on its share of the cases; rank 0 records it.

In a single process :func:`shared_state` returns the :class:`RunState` itself: nothing changes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from semisam.loop.state import ManifestView, RunState
from semisam.utils import distributed


class FollowerState(ManifestView):
    """The manifest copy of a rank other than 0: :class:`RunState`'s reading methods, and :meth:`run` takes rank
    0's result instead of running the step (or runs its share, for a collective step)."""

    def __init__(self, run_dir: str | Path, manifest: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.manifest = manifest

    def set(self, key: str, value: Any) -> None:
        self.manifest[key] = value

    def adopt(self, step: str, result: Any, seconds: float | None, source: str) -> None:
        if not self.done(step):
            self.manifest["steps"][step] = {"result": result, "seconds": seconds, "shared_from": source}

    def run(self, step: str, fn: Callable[[], Any], collective: bool = False) -> Any:
        done = distributed.broadcast(None)  # rank 0: whether the step is complete already
        error: Exception | None = None
        if collective and not done:
            try:
                fn()  # this rank's share; rank 0 learns of a failure through distributed.collect
            except Exception as e:
                error = e
        try:
            result = distributed.lead(lambda: None)  # rank 0's result, or the step's failure
        except distributed.RankFailed:
            if error is not None and not isinstance(error, distributed.RankFailed):
                raise error from None  # this rank's own failure, in its own words
            raise
        self.manifest["steps"][step] = {"result": result, "seconds": None}
        return result


class LeaderState(RunState):
    """Rank 0's :class:`RunState`: each :meth:`run` also hands the step's result to the other ranks."""

    def run(self, step: str, fn: Callable[[], Any], collective: bool = False) -> Any:
        distributed.broadcast(self.done(step))
        return distributed.lead(lambda: super(LeaderState, self).run(step, fn))


def shared_state(run_dir: str | Path, identity: dict[str, Any] | str, restart: bool = False) -> RunState | FollowerState:
    """The run's state on this rank: a :class:`RunState` in a single process, a :class:`LeaderState` on rank 0
    (it alone creates, restarts or refuses the run folder: see :class:`RunState`), the manifest's copy on the
    other ranks. A refusal on rank 0 stops every rank with one line."""
    w = distributed.world()
    if not w.distributed:
        return RunState(run_dir, identity, restart=restart)
    made: list[LeaderState] = []

    def leader() -> tuple[str, dict[str, Any]]:
        made.append(LeaderState(run_dir, identity, restart=restart))
        return str(made[0].run_dir), made[0].manifest

    folder, manifest = distributed.lead(leader)
    return made[0] if w.main else FollowerState(folder, manifest)

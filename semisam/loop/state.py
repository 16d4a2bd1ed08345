"""Run folder state: which steps are complete, so that rerunning the same command resumes.

Every step of a run writes into its own folder and is recorded in ``manifest.json`` *last*, atomically.
A step recorded there is complete and is skipped on the next run; a step that was interrupted left at most
a temporary folder, which is removed before the step runs again.

The manifest also holds a fingerprint of the resolved recipe. Resuming a run folder with a different
recipe is refused (one line, suggests ``restart=true``), because mixing rounds from two recipes would make
the report lie.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from semisam.utils.errors import SemisamError
from semisam.utils.io import write_json_atomic

MANIFEST = "manifest.json"


def config_fingerprint(config: dict[str, Any], ignore: tuple[str, ...] = ("logger", "restart")) -> str:
    """A stable hash of the parts of the resolved recipe that change results."""
    kept = {k: v for k, v in config.items() if k not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def round0_fingerprint(config: dict[str, Any]) -> str:
    """A hash of what determines round 0 (the supervised student): dataset, student settings and seed.

    Two runs with the same round-0 fingerprint train the same supervised student, so one can reuse the
    other's (``loop.init_from``).
    """
    dataset = dict(config["dataset"])
    dataset["raw_dir"] = str(Path(dataset["raw_dir"]).resolve())
    return config_fingerprint({"dataset": dataset, "student": config["student"], "seed": config["seed"]}, ignore=())


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a run folder, or None when it has none (read-only; no fingerprint check)."""
    path = Path(run_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


class RunState:
    """The manifest of one run folder.

    Args:
        run_dir: the run folder (created if missing).
        fingerprint: :func:`config_fingerprint` of the resolved recipe.
        restart: remove everything in ``run_dir`` first and start over.

    Raises:
        SemisamError: the folder cannot be written, or holds a run of another recipe.
    """

    def __init__(self, run_dir: str | Path, fingerprint: str, restart: bool = False):
        self.run_dir = Path(run_dir)
        if restart and self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise SemisamError(f"run folder {self.run_dir} is not writable ({e.strerror}); choose another run_dir") from None
        self.path = self.run_dir / MANIFEST
        if self.path.exists():
            self.manifest = json.loads(self.path.read_text())
            old = self.manifest.get("fingerprint")
            if old != fingerprint:
                raise SemisamError(
                    f"{self.run_dir} holds a run of a different recipe; rerun with restart=true to start over, "
                    f"or set run_dir to another folder"
                )
        else:
            self.manifest = {"fingerprint": fingerprint, "created": time.time(), "steps": {}}
            self._save()

    @property
    def resumed(self) -> bool:
        return bool(self.manifest["steps"])

    def done(self, step: str) -> bool:
        return step in self.manifest["steps"]

    def result(self, step: str) -> Any:
        return self.manifest["steps"][step]["result"]

    def run(self, step: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless ``step`` is complete; record its JSON-able result last."""
        if self.done(step):
            return self.result(step)
        start = time.time()
        result = fn()
        self.manifest["steps"][step] = {"result": result, "seconds": round(time.time() - start, 2)}
        self._save()
        return result

    def adopt(self, step: str, result: Any, seconds: float | None, source: str) -> None:
        """Record ``step`` as complete with another run's result (shared work, e.g. a common round 0)."""
        if self.done(step):
            return
        self.manifest["steps"][step] = {"result": result, "seconds": seconds, "shared_from": source}
        self._save()

    def seconds(self, step: str) -> float | None:
        entry = self.manifest["steps"].get(step)
        return None if entry is None else entry["seconds"]

    def set(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self._save()

    def get(self, key: str, default: Any = None) -> Any:
        return self.manifest.get(key, default)

    def _save(self) -> None:
        try:
            write_json_atomic(self.path, self.manifest)
        except OSError as e:
            raise SemisamError(
                f"cannot write {self.path} ({e.strerror}); free disk space or choose another run_dir, then rerun to resume"
            ) from None

"""Peak memory (resident set) of one teacher round as the number of unlabeled 3D cases grows.

A benchmark, not a test (docs/benchmarks.md): for each case count N it writes a synthetic 3D dataset
(``data_prep.synthetic.make_synthetic(dim=3)``: N unlabeled volumes with hidden labels, 2 labeled) and stand-in
student probabilities (a sigmoid of the image intensity: no student is trained), then runs
``Experiment.teacher_round`` with the tiny random SAM (no adaptation, every case accepted) in a fresh process
and reports its resident set before the round and its peak (Linux ``VmRSS`` / ``VmHWM``). The counts run one
after another, never in parallel.

    OMP_NUM_THREADS=1 python benchmarks/teacher_round_memory.py --cases 5 20 40 --size 64 --work /tmp/trm

``--repo`` imports semisam from another checkout (e.g. a worktree of an earlier commit) to compare before/after.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def prepare(work: Path, n: int, size: int) -> tuple[Path, Path]:
    """The dataset and stand-in probabilities of ``n`` unlabeled volumes (reused when already written)."""
    import numpy as np

    from data_prep.synthetic import make_synthetic
    from semisam.data import RawDataset

    raw, probs_dir = work / f"n{n}" / "Dataset950_Mem", work / f"n{n}" / "probs"
    if not (probs_dir / "done").is_file():
        make_synthetic(raw, dim=3, n_train=n + 2, n_labeled=2, n_test=0, size=size, seed=0, overwrite=True)
        ds = RawDataset.open(raw)
        probs_dir.mkdir(parents=True, exist_ok=True)
        for case in ds.unlabeled_cases():
            image = ds.read_image(case.image_files)[0][0]
            fg = 1.0 / (1.0 + np.exp(-(image - image.mean()) / (image.std() + 1e-6) * 2.0))
            np.savez_compressed(probs_dir / f"{case.case_id}.npz",
                                probabilities=np.stack([1.0 - fg, fg]).astype(np.float32))
        (probs_dir / "done").write_text("ok")
    return raw, probs_dir


def one_round(work: Path, n: int, size: int) -> dict:
    """Run one teacher round on ``n`` cases in this process; its memory in MiB."""
    import torch

    torch.set_num_threads(1)
    from semisam.config import compose
    from semisam.data import RawDataset
    try:
        from semisam.loop.cases import split_cases
    except ImportError:  # --repo: a checkout from before semisam.loop.cases
        from semisam.loop.experiment import split_cases
    from semisam.loop.rounds import Experiment
    from semisam.loop.state import RunState

    raw, probs_dir = prepare(work, n, size)
    run_dir = work / f"n{n}" / f"run-{os.getpid()}"
    cfg = compose([f"dataset.raw_dir={raw}", f"run_dir={run_dir}", "teacher=tiny_random", "teacher.adapt.enabled=false",
                   "filters.case_min_accept=0.0", "logger=disabled", "device=cpu"])
    state = RunState(run_dir, "teacher-round-memory")
    state.run("r0/predict_unlabeled", lambda: {"dir": str(probs_dir)})
    ds = RawDataset.open(raw)
    exp = Experiment(cfg, state, ds, split_cases(ds, 0, cfg.seed))
    exp.labeler  # the teacher is built before the measurement
    before = _status_kib("VmRSS")
    t0 = time.time()
    result = exp.teacher_round(1, {})
    return {"cases": n, "size": size, "rss_before_mib": round(before / 1024, 1),
            "peak_mib": round(_status_kib("VmHWM") / 1024, 1), "seconds": round(time.time() - t0, 1),
            "accepted": len(result["accepted"]), "student_dice": (result["pseudo_quality"] or {}).get("student_dice")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, nargs="+", default=[5, 20, 40])
    ap.add_argument("--size", type=int, default=64, help="volume side (size³ voxels)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout whose semisam is measured")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prepare", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare is not None:
        prepare(args.work, args.prepare, args.size)
        return
    if args.child is not None:
        sys.path.insert(0, str(args.repo.resolve()))
        print(json.dumps(one_round(args.work, args.child, args.size)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    common = ["--size", str(args.size), "--work", str(args.work), "--repo", str(args.repo)]
    for n in args.cases:
        # the data are written once, outside the measured process
        subprocess.run([sys.executable, __file__, "--prepare", str(n), *common], check=True)
        out = subprocess.run([sys.executable, __file__, "--child", str(n), *common], check=True,
                             stdout=subprocess.PIPE, text=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)

if __name__ == "__main__":
    main()

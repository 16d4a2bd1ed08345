"""Helpers shared by the data_prep tests (imported as ``prep_helpers``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str | os.PathLike, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m data_prep ...`` in a subprocess from the repository root."""
    env = dict(os.environ, nnUNet_def_n_proc="1")
    return subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def make_plain_dataset(root: Path, n: int = 6, n_test: int = 2, size: int = 32) -> Path:
    """A fully labeled, stock nnU-Net raw dataset (no 'dataset' list, no split, no ignore label) of 2D PNGs.

    Cases ``c00 ...`` with a bright square of label 1 (and a smaller one of label 2) on noise.
    """
    from skimage import io

    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n + n_test):
        img = rng.integers(0, 60, size=(size, size)).astype(np.uint8)
        lab = np.zeros((size, size), np.uint8)
        y, x = rng.integers(2, size - 12, size=2)
        lab[y:y + 10, x:x + 10] = 1
        lab[y + 2:y + 5, x + 2:x + 5] = 2
        img[lab > 0] += 120
        cid, part = (f"c{i:02d}", "Tr") if i < n else (f"t{i:02d}", "Ts")
        io.imsave(root / f"images{part}" / f"{cid}_0000.png", img, check_contrast=False)
        io.imsave(root / f"labels{part}" / f"{cid}.png", lab, check_contrast=False)
    dj = {"channel_names": {"0": "grey"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n,
          "file_ending": ".png", "name": "Plain", "licence": "test"}
    (root / "dataset.json").write_text(json.dumps(dj))
    return root


def file_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[Path]:
    """Temporary siblings that a failed atomic write would have left next to ``parent / name``."""
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def expect_main_error(capsys, argv: list, out: Path, needle: str) -> str:
    """Run ``data_prep`` in this process (``data_prep.cli.main``) and check that it fails cleanly: exit
    status 2, one line ``error: ...`` on stderr containing ``needle``, no ``out`` folder and no temporaries
    (staging or writing) next to it. Returns the error line."""
    from data_prep.cli import main

    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert needle in lines[0], lines[0]
    assert not out.exists()
    if out.parent.is_dir():
        assert leftovers(out.parent, out.name) == []
    return lines[0]


def fake_download(make, folder: str = "download"):
    """A pytest fixture returning ``make(tmp_path / folder)``: a fake copy of a release's layout for a converter."""
    import pytest

    @pytest.fixture
    def fixture(tmp_path: Path) -> Path:
        return make(tmp_path / folder)

    return fixture

"""The bad-input matrix (README, "What bad input does"): every row through the real entry point.

Each row damages a copy of a tiny dataset (or passes a bad file or value) and runs the command a user would:
``semisam run`` (a real run, not ``--check``: it must refuse before it writes anything), ``semisam compare``,
``semisam pseudolabel`` or ``python -m data_prep split``. Each asserts the one ``error:`` line on stderr (what
is wrong, what to do), the exit status, and that nothing was written or left half-written (the whole folder
tree is compared before and after). Most rows call ``semisam.cli.main`` / ``data_prep.cli.main`` in this
process (what ``python -m semisam`` runs, minus the interpreter start, so the module stays fast); the rows
that need a process of their own run ``python -m semisam`` in a subprocess:

- unwritable output folder: a read-only folder; as root, who writes through permission bits, a folder in
  sysfs, which refuses even root;
- disk full while pseudo-labels are written (``semisam pseudolabel``, whose writer is the teacher round's:
  ``RawDataset.write_seg``; self-training labels, so that no SAM has to start): ``RLIMIT_FSIZE``
  (``ulimit -f``) on the subprocess, with SIGXFSZ ignored, makes every write past the limit fail with a real
  EFBIG — the same path as ENOSPC on a full disk (no root, no tmpfs). ITK's writers ignore the failure and
  leave a short file (the ``.mha`` variant): ``write_seg`` reads each label back before it takes its name.

Empty student predictions are a counted skip, not an error: the teacher pipeline is called directly with an
all-background probability map and the tiny random SAM. No row trains anything.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from skimage import io

from data_prep.synthetic import make_synthetic
from semisam.data import CaseData, Geometry, RawDataset, Split, write_raw_dataset

REPO = Path(__file__).resolve().parents[1]
PNG = "Dataset900_Synthetic"  # 2D, .png: labeled case_000, case_002; unlabeled case_001, case_003; test test_000
MHA = "Dataset901_Volumes"  # 3D, .mha (keeps NaN/Inf; SimpleITK reads them in NIfTI files as 0): labeled a, b;
#                             unlabeled c; test t


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _volumes(root: Path) -> Path:
    rng = np.random.default_rng(0)
    cases = []
    for cid in ("a", "b", "c", "t"):
        image = rng.normal(0.2, 0.05, (1, 4, 16, 16)).astype(np.float32)
        label = np.zeros((4, 16, 16), np.uint8)
        label[1:3, 4:10, 5:11] = 1
        image[0][label > 0] += 1.0
        cases.append(CaseData(cid, image, label, Geometry(spacing_zyx=(2.0, 1.0, 1.0))))
    split = Split(labeled=("a", "b"), unlabeled=("c",), test=("t",), seed=0)
    return write_raw_dataset(root, name="Volumes", cases=cases[:3], test_cases=cases[3:],
                             labels={"background": 0, "foreground": 1}, file_ending=".mha",
                             channel_names={0: "MR"}, split=split)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """The pristine datasets and teacher checkpoints that each row copies."""
    root = tmp_path_factory.mktemp("sources")
    make_synthetic(root / PNG, n_train=4, n_labeled=2, n_test=1, size=32)
    make_synthetic(root / "Dataset902_AllLabeled", n_train=3, n_labeled=3, n_test=1, size=32)
    _volumes(root / MHA)
    from semisam.teacher.models import build_teacher_model

    torch.save(build_teacher_model("tiny_random").state_dict(), root / "tiny_random.pth")
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its size and modification time: what a refused command must not change."""
    return {str(p.relative_to(root)): (p.is_dir(), 0 if p.is_dir() else p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def expect_line(stderr: str, pattern: str) -> None:
    """Exactly one ``error:`` line, no traceback, and it reads ``pattern`` (``...`` stands for any text)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    regex = ".*".join(re.escape(part) for part in pattern.split("..."))
    assert re.fullmatch(regex, errors[0]), f"\n got: {errors[0]}\nwant: {pattern}"


# ---------------------------------------------------------------------------------------------- the rows
def _png(tmp: Path) -> Path:
    return tmp / PNG


def _mha(tmp: Path) -> Path:
    return tmp / MHA


def _run(ds: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    """``semisam run experiment=smoke`` on a copy of a dataset; a real run (rounds, the tiny SAM teacher)."""
    return lambda tmp: ["run", "experiment=smoke", f"dataset.raw_dir={ds(tmp)}", f"run_dir={tmp / 'run'}",
                        *[e.format(tmp=tmp) for e in extra]]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _write_png(path: Path, array: np.ndarray) -> None:
    io.imsave(path, array.astype(np.uint8), check_contrast=False)


def _rewrite_mha(path: Path, change: Callable[[np.ndarray], np.ndarray], spacing_xyz=None) -> None:
    image = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(image).copy()))
    out.CopyInformation(image)
    if spacing_xyz is not None:
        out.SetSpacing(spacing_xyz)
    sitk.WriteImage(out, str(path))


def _set_voxel(value: float, at=(2, 7, 7)) -> Callable[[np.ndarray], np.ndarray]:
    def change(a: np.ndarray) -> np.ndarray:
        a[at] = value
        return a
    return change


@dataclass(frozen=True)
class Row:
    """One row of the matrix: how to spoil the copy (``damage``), the command, and what must come out."""

    name: str
    damage: Callable[[Path], None]
    argv: Callable[[Path], list[str]]
    line: str  # the error line, {tmp} = the row's folder; "" for a documented skip (exit 0)
    code: int = 2
    program: str = "semisam"


def _nothing(tmp: Path) -> None:
    pass


ROWS = [
    Row("corrupt image (labeled case)",
        lambda tmp: _truncate(_png(tmp) / "imagesTr" / "case_000_0000.png"), _run(_png),
        "error: case 'case_000': cannot read imagesTr/case_000_0000.png (damaged, truncated or not a .png file); "
        "replace the file, or remove the case from the dataset"),
    Row("corrupt image (unlabeled case)",
        lambda tmp: (_png(tmp) / "imagesTr" / "case_003_0000.png").write_bytes(b"not a png"), _run(_png),
        "error: case 'case_003': cannot read imagesTr/case_003_0000.png (damaged, truncated or not a .png file); "
        "replace the file, or remove the case from the dataset"),
    Row("corrupt label file",
        lambda tmp: _truncate(_png(tmp) / "labelsTr" / "case_002.png", 0.3), _run(_png),
        "error: case 'case_002': cannot read label labelsTr/case_002.png (damaged, truncated or not a .png file); "
        "replace the file, or remove the case from the dataset"),
    Row("label value not in dataset.json",
        lambda tmp: _write_png(_png(tmp) / "labelsTr" / "case_000.png",
                               np.where(io.imread(_png(tmp) / "labelsTr" / "case_000.png") > 0, 7, 0)),
        _run(_png),
        "error: case 'case_000' (labelsTr/case_000.png): label value(s) [7] are not declared in dataset.json labels "
        "(declared: [0, 1, 2]); fix the label, or declare the value in dataset.json"),
    Row("image/label shape mismatch",
        lambda tmp: _write_png(_png(tmp) / "labelsTr" / "case_002.png", np.zeros((32, 31))), _run(_png),
        "error: case 'case_002' (labelsTr/case_002.png): image shape (1, 32, 32) and label shape (1, 32, 31) differ; "
        "the label must be drawn on its image's voxel grid"),
    Row("image/label spacing mismatch",
        lambda tmp: _rewrite_mha(_mha(tmp) / "labelsTr" / "b.mha", lambda a: a, spacing_xyz=(1.0, 1.0, 3.0)),
        _run(_mha),
        "error: case 'b' (labelsTr/b.mha): image spacing [2, 1, 1] and label spacing [3, 1, 1] differ; write the "
        "label with its image's geometry (resample it onto the image)"),
    Row("NaN in an image",
        lambda tmp: _rewrite_mha(_mha(tmp) / "imagesTr" / "c_0000.mha", _set_voxel(np.nan)), _run(_mha),
        "error: case 'c' (imagesTr/c_0000.mha): the image holds 1 NaN/Inf value(s); replace them (e.g. with the "
        "background intensity), or remove the case"),
    Row("Inf in an image",
        lambda tmp: _rewrite_mha(_mha(tmp) / "imagesTs" / "t_0000.mha", _set_voxel(np.inf)), _run(_mha),
        "error: case 't' (imagesTs/t_0000.mha): the image holds 1 NaN/Inf value(s); replace them (e.g. with the "
        "background intensity), or remove the case"),
    Row("constant (all-zero) image",
        lambda tmp: _write_png(_png(tmp) / "imagesTr" / "case_001_0000.png", np.zeros((32, 32))), _run(_png),
        "error: case 'case_001' (imagesTr/case_001_0000.png): the image is constant (every voxel 0): an empty or "
        "broken file with nothing to segment; replace it, or remove the case from the dataset"),
    Row("no unlabeled cases (documented skip)", _nothing,
        lambda tmp: ["run", "--check", "experiment=smoke", f"dataset.raw_dir={tmp / 'Dataset902_AllLabeled'}",
                     f"run_dir={tmp / 'run'}"],
        "", code=0),
    Row("missing teacher checkpoint", _nothing, _run(_png, "teacher.checkpoint={tmp}/sam_vit_b_01ec64.pth"),
        "error: checkpoint for teacher 'tiny_random' not found: {tmp}/sam_vit_b_01ec64.pth (give the path of the "
        ".pth file)"),
    Row("checkpoint of another architecture", _nothing,
        _run(_png, "teacher=sam_vit_b", "teacher.checkpoint={tmp}/tiny_random.pth"),
        "error: checkpoint {tmp}/tiny_random.pth does not fit teacher 'sam_vit_b' (wrong architecture): 192 missing "
        "keys (e.g. '...'), 121 shape mismatches (e.g. '...': file (...) vs model (...)); pass the checkpoint that "
        "matches the teacher name"),
    Row("truncated checkpoint", lambda tmp: _truncate(tmp / "tiny_random.pth"),
        _run(_png, "teacher.checkpoint={tmp}/tiny_random.pth"),
        "error: cannot read checkpoint {tmp}/tiny_random.pth for teacher 'tiny_random': truncated or not a PyTorch "
        "file (...); download it again, or pass the right teacher.checkpoint"),
    Row("teacher channel the dataset lacks", _nothing, _run(_png, "teacher.channels=[1]"),
        "error: teacher.channels=[1]: the dataset has no channel 1 (its channels: 0: synthetic); name channels by "
        "these indices"),
    Row("teacher channels neither 1 nor 3", _nothing, _run(_png, "teacher.channels=[0,0]"),
        "error: teacher.channels=[0, 0] must name 1 channel index (grey) or 3 (RGB, in R, G, B order), each >= 0; "
        "null picks RGB for channels named R, G, B and the first channel otherwise"),
    Row("recipe typo", _nothing, _run(_png, "student.epoch=3"),
        "error: unknown key 'student.epoch' (did you mean 'student.epochs'?)"),
    Row("recipe value of the wrong type", _nothing, _run(_png, "student.epochs=abc"),
        "error: wrong type for student.epochs: ... (expected int)"),
    Row("label ratio 0 (data_prep split)", _nothing,
        lambda tmp: ["split", str(_png(tmp)), "--out", str(tmp / "Dataset903_Split"), "--ratio", "0"],
        "error: --ratio must be in (0, 1], got 0.0", program="data_prep"),
    Row("label ratio > 1 (semisam compare)", _nothing,
        lambda tmp: ["compare", "--dataset", str(_png(tmp)), "--out", str(tmp / "compare"), "--ratio", "1.5"],
        "error: --ratio 1.5 must lie in (0, 1): the labeled fraction of each draw, whose other cases are its "
        "unlabeled ones; or give --labeled N"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input(row: Row, sources: Path, tmp_path: Path, capsys):
    for item in sources.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    row.damage(tmp_path)
    before = snapshot(tmp_path)
    argv = row.argv(tmp_path)
    if row.program == "data_prep":
        from data_prep.cli import main
    else:
        from semisam.cli import main
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == row.code, err[-3000:]
    if row.line:
        expect_line(err, row.line.format(tmp=tmp_path))
    else:  # the documented skip: a note, then ok
        from semisam.loop.preflight import NO_UNLABELED

        assert out.strip() == "ok" and f"note: {NO_UNLABELED}" in err.splitlines(), err[-3000:]
    assert snapshot(tmp_path) == before  # nothing written, nothing half-written, nothing changed


# ---------------------------------------------------------------------------------------------- own process
def _cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", nnUNet_def_n_proc="1")
    env.update(kwargs.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "semisam", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_unwritable_output_folder(sources: Path, tmp_path: Path):
    """A run folder inside a folder we may not write in: one line before anything is written. Root writes
    through permission bits, so as root the folder is in sysfs, which refuses even root (the preflight
    probes with an empty folder, as it must for root and for mounts whose permission bits say yes)."""
    shutil.copytree(sources / PNG, tmp_path / PNG)
    if os.geteuid() == 0:
        if not os.path.ismount("/sys"):
            pytest.skip("running as root without sysfs: no folder here refuses root")
        locked = Path("/sys")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
    before = snapshot(tmp_path)
    run_dir = locked / "semisam-bad-input-run"
    try:
        proc = _cli(["run", "experiment=smoke", f"dataset.raw_dir={tmp_path / PNG}", f"run_dir={run_dir}"])
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(stat.S_IRWXU)
    assert proc.returncode == 2, proc.stderr[-3000:]
    expect_line(proc.stderr, f"error: run folder {run_dir} is not writable ({locked} is not writable...); "
                             "choose another run_dir")
    assert not run_dir.exists() and snapshot(tmp_path) == before


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("dataset", [PNG, MHA])
def test_disk_full_while_writing_pseudo_labels(dataset: str, sources: Path, tmp_path: Path):
    """``semisam pseudolabel`` (the teacher round's writer: ``RawDataset.write_seg``) under a 64-byte file-size
    limit: one line, exit 2, no pseudo-label and no temporary left in the output folder."""
    ds = RawDataset.open(sources / dataset)
    probs = tmp_path / "probs"
    probs.mkdir()
    for case in ds.unlabeled_cases():  # a confident student: foreground where the hidden label is
        fg = (ds.read_seg(ds.hidden_label_file(case.case_id))[0][0] > 0).astype(np.float32) * 0.9 + 0.05
        np.savez(probs / f"{case.case_id}.npz", probabilities=np.stack([1 - fg, fg]))
    out = tmp_path / "pseudo"
    first = ds.unlabeled_cases()[0].case_id
    proc = _cli(["pseudolabel", "--images", str(sources / dataset / "imagesTr"), "--probs", str(probs),
                 "--dataset-json", str(sources / dataset / "dataset.json"), "--out", str(out), "experiment=smoke",
                 "teacher=none", "filters=student"],  # the student's own labels: the same writer, no SAM to start
                preexec_fn=_file_size_limit(64))
    assert proc.returncode == 2, proc.stderr[-3000:]
    reason = "File too large" if dataset == PNG else "the file written cannot be read back (disk full?)"
    expect_line(proc.stderr, f"error: cannot write {out / first}{ds.file_ending}: {reason}; free disk space (or raise "
                             "the quota or file-size limit), then rerun the same command to resume from the last "
                             "complete step")
    assert [p for p in out.rglob("*")] == []


# ---------------------------------------------------------------------------------------------- the teacher
@pytest.fixture(scope="module")
def pseudolabeler():
    """The loop's teacher pipeline, built from the smoke recipe (the tiny random SAM)."""
    from semisam.config import compose
    from semisam.pseudolabel.pipeline import build_pseudolabeler

    return build_pseudolabeler(compose(["experiment=smoke"]), ignore_label=2, channel_names={"0": "x"}, cache_dir=None)


@pytest.mark.parametrize("what", ["no_foreground", "constant_image"])
def test_empty_student_prediction_or_constant_image_is_a_counted_skip(what: str, pseudolabeler, sources: Path):
    """The student predicts background everywhere (no object, so no prompt), or SAM's channel is constant:
    the case is skipped, counted by reason, every pixel ignored; a round that skips every case says why."""
    from semisam.loop.rounds import nothing_accepted

    ds = RawDataset.open(sources / PNG)
    case = ds.unlabeled_cases()[0]
    image, _ = ds.read_image(case.image_files)
    fg = np.zeros(image.shape[1:], np.float32)
    if what == "constant_image":
        image = np.zeros_like(image)
        fg[0, 8:20, 8:20] = 1.0  # the student is sure of an object SAM could not see
    n_before = pseudolabeler.stats.aggregate()["n_cases"]
    res = pseudolabeler(image, np.stack([1.0 - fg, fg]), case.case_id)
    assert not res.accepted and res.teacher is None and (res.pseudo == 2).all()
    assert res.stats["skipped"] and res.stats["skip_reason"] == what and res.stats["case_id"] == case.case_id
    summary = pseudolabeler.stats.aggregate()
    assert summary["n_cases"] == n_before + 1 and summary["skip_reasons"].get(what, 0) >= 1
    reason, advice = nothing_accepted(1, {"accepted": [], "n_candidates": 2, "skipped": {"x": what, "y": what}})
    assert reason == f"round 1: no unlabeled case reached the teacher ({what}: 2 skipped)"
    if what == "no_foreground":
        assert advice == ("student 0 found no object to prompt SAM with: train it longer (student.epochs) or lower "
                          "prompts.threshold")

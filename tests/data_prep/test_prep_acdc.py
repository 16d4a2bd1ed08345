"""data_prep acdc on a small fake copy of the ACDC release layout (database/{training,testing}/patientNNN/)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data_prep.acdc import make_acdc
from data_prep.split import split_dataset
from prep_helpers import expect_main_error, fake_download, file_bytes, leftovers
from semisam.data import RawDataset, load_split

SHAPE_ZYX = (3, 12, 10)
SPACING_XYZ = (1.5625, 1.5625, 10.0)
PATIENTS = {"training": (1, 2, 3, 4), "testing": (101, 102)}


def _write(arr: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, str(path))


def make_fake_acdc(src: Path) -> Path:
    """Per patient: Info.cfg as released (ED, ES, Group, Height, NbFrame, Weight), the ED and ES frames with
    their ``_gt`` (0 background, 1 RV, 2 MYO, 3 LV), a non-key frame without ground truth and the 4D file."""
    rng = np.random.default_rng(2)
    for part, numbers in PATIENTS.items():
        for n in numbers:
            p = src / "database" / part / f"patient{n:03d}"
            p.mkdir(parents=True)
            es = 5 + n % 3
            (p / "Info.cfg").write_text(f"ED: 1\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 10\nWeight: 95.0\n")
            for frame in (1, es):
                gt = np.zeros(SHAPE_ZYX, np.uint8)
                gt[:, 2:9, 1:4] = 1
                gt[:, 3:8, 4:9] = 2
                gt[:, 4:7, 5:8 - (frame > 1)] = 3
                stem = f"patient{n:03d}_frame{frame:02d}"
                _write((rng.normal(100, 20, SHAPE_ZYX) + 50 * gt).astype(np.int16), p / f"{stem}.nii.gz")
                _write(gt, p / f"{stem}_gt.nii.gz")
            _write(np.zeros(SHAPE_ZYX, np.int16), p / f"patient{n:03d}_frame03.nii.gz")
            _write(np.zeros((10, *SHAPE_ZYX), np.int16), p / f"patient{n:03d}_4d.nii.gz")
    return src


acdc_src = fake_download(make_fake_acdc, "ACDC")


def _patients(ids) -> set[str]:
    return {c.rsplit("_", 1)[0] for c in ids}


def test_acdc_converts_by_patient_and_passes_nnunet(tmp_path, acdc_src):
    out = make_acdc(acdc_src, tmp_path / "Dataset508_ACDC", labeled=2, verify=True)
    split = load_split(out / "semisam_split.json")
    assert split.test == ("patient101_ED", "patient101_ES", "patient102_ED", "patient102_ES")
    assert len(split.training) == 8 and len(split.labeled) == 4  # 2 patients, both frames
    assert _patients(split.labeled).isdisjoint(_patients(split.unlabeled))
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3, "ignore": 4}
    assert dj["case_groups"]["patient003_ES"] == "patient003" and len(dj["case_groups"]) == 12
    ds = RawDataset.open(out)
    es = next(c for c in ds.test_cases() if c.case_id == "patient102_ES")  # ES of patient 102 is frame 05
    written = sitk.ReadImage(str(es.image_files[0]))
    assert written.GetSpacing() == SPACING_XYZ
    frame = acdc_src / "database" / "testing" / "patient102"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(frame / "patient102_frame05.nii.gz"))))
    seg, _ = ds.read_seg(es.label_file)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 3}


def test_acdc_split_groups_patients_for_every_draw(tmp_path, acdc_src):
    out = make_acdc(acdc_src / "database", tmp_path / "acdc", ratio=0.5)  # --src may be database/ itself
    assert len(load_split(out / "semisam_split.json").labeled) == 4
    for seed in range(3):  # data_prep split (and semisam compare, which calls it) re-draws by patient
        again = load_split(split_dataset(out, tmp_path / f"s{seed}", labeled=1, seed=seed) / "semisam_split.json")
        assert len(again.labeled) == 2 and len(_patients(again.labeled)) == 1
        assert _patients(again.labeled).isdisjoint(_patients(again.unlabeled))


def test_acdc_bad_sources(tmp_path, acdc_src, capsys):
    out = tmp_path / "out"
    expect_main_error(capsys, ["acdc", "--src", tmp_path / "ACDC" / "database" / "training", "--out", out], out,
                      "database/training/patient001/Info.cfg")
    expect_main_error(capsys, ["acdc", "--src", acdc_src, "--out", out, "--labeled", "5"], out,
                      "--labeled counts patients here: it must be between 1 and the number of training patients (4)")
    patient = acdc_src / "database" / "training" / "patient004"
    (patient / "patient004_frame06_gt.nii.gz").unlink()
    expect_main_error(capsys, ["acdc", "--src", acdc_src, "--out", out], out,
                      f"ACDC file {patient / 'patient004_frame06_gt.nii.gz'} does not exist (ES is frame 6")
    (patient / "Info.cfg").write_text("ED: 1\nGroup: DCM\n")
    expect_main_error(capsys, ["acdc", "--src", acdc_src, "--out", out], out, "has no 'ES: <frame number>' line")
    (patient / "Info.cfg").unlink()
    expect_main_error(capsys, ["acdc", "--src", acdc_src, "--out", out], out,
                      f"ACDC patient file {patient / 'Info.cfg'} does not exist")


def test_acdc_ground_truth_of_another_shape_writes_nothing(tmp_path, acdc_src, capsys):
    gt = acdc_src / "database" / "testing" / "patient102" / "patient102_frame05_gt.nii.gz"  # the last case
    _write(np.zeros((3, 12, 9), np.uint8), gt)
    out = tmp_path / "out"
    expect_main_error(capsys, ["acdc", "--src", acdc_src, "--out", out, "--labeled", "1"], out,
                      "has shape (3, 12, 9) but its frame patient102_frame05.nii.gz has (3, 12, 10)")


def test_acdc_cli(tmp_path, acdc_src, capsys):
    from data_prep.cli import main

    out = tmp_path / "Dataset508_ACDC"
    assert main(["acdc", "--src", str(acdc_src), "--out", str(out), "--labeled", "3", "--no-verify"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 6 labeled, 2 unlabeled, 4 test cases"
    before = file_bytes(out)
    assert main(["acdc", "--src", str(acdc_src), "--out", str(out), "--labeled", "1"]) == 2  # fails before converting
    assert "already exists; remove it or pass the overwrite option" in capsys.readouterr().err
    assert file_bytes(out) == before and leftovers(tmp_path, out.name) == []
    assert main(["acdc", "--src", str(acdc_src), "--out", str(out), "--labeled", "1", "--overwrite",
                 "--no-verify"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 2 labeled, 6 unlabeled, 4 test cases"

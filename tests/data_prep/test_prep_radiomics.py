"""data_prep radiomics on the real pyradiomics 3.0.1 sdist."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.radiomics import make_radiomics
from prep_helpers import run_cli
from semisam.data import RawDataset, check_raw_dataset


def test_radiomics_small_cases_keep_geometry(tmp_path, radiomics_sdist):
    out = make_radiomics(tmp_path / "Dataset502_Radiomics", cases=("brain1", "breast1"), test=("breast1",),
                         labeled=1, sdist=radiomics_sdist)
    ds = RawDataset.open(out)
    assert [c.case_id for c in ds.labeled_cases()] == ["brain1"]
    assert ds.unlabeled_cases() == [] and [c.case_id for c in ds.test_cases()] == ["breast1"]
    brain = sitk.ReadImage(str(ds.labeled_cases()[0].image_files[0]))
    assert brain.GetSize() == (256, 256, 25)
    np.testing.assert_allclose(brain.GetSpacing(), (0.78125, 0.78125, 6.5), rtol=1e-5)
    np.testing.assert_allclose(brain.GetOrigin()[:2], (-99.6, 99.6), atol=0.1)
    seg, props = ds.read_seg(ds.labeled_cases()[0].label_file)
    assert set(np.unique(seg).tolist()) == {0, 1} and seg.sum() > 100
    img, _ = ds.read_image(ds.labeled_cases()[0].image_files)
    assert img.shape == seg.shape == (1, 25, 256, 256)


@pytest.mark.slow
def test_radiomics_all_cases_cli(tmp_path, radiomics_sdist):
    out = tmp_path / "Dataset502_Radiomics"
    r = run_cli("radiomics", "--out", out)  # verifies with nnU-Net before the rename
    assert r.returncode == 0, r.stderr
    ds = check_raw_dataset(out)
    assert [c.case_id for c in ds.test_cases()] == ["brain2", "lung2"]
    assert len(ds.labeled_cases()) == 1 and len(ds.unlabeled_cases()) == 2
    lung = [c for c in ds.labeled_cases() + ds.test_cases() if c.case_id.startswith("lung")][0]
    img, _ = ds.read_image(lung.image_files)
    assert img.shape[2:] == (512, 512) and img.min() == -1024  # CT in Hounsfield units, untouched

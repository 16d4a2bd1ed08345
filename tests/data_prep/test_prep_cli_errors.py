"""Bad input through the CLI: one clear line on stderr, exit status 2, no output folder, no temporaries."""
from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import io

from prep_helpers import leftovers, run_cli


def _expect_error(r, out, needle):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert not out.exists()
    assert leftovers(out.parent, out.name) == []


def test_missing_dataset_folder(tmp_path):
    out = tmp_path / "out"
    _expect_error(run_cli("split", tmp_path / "nope", "--out", out, "--labeled", "1"), out, "does not exist")


def test_missing_dataset_json(tmp_path, plain_dataset):
    (plain_dataset / "dataset.json").unlink()
    out = tmp_path / "out"
    _expect_error(run_cli("split", plain_dataset, "--out", out, "--labeled", "1"), out, "no dataset.json")


@pytest.mark.parametrize("ratio", ["0", "-0.2", "1.5", "nan"])
def test_ratio_outside_unit_interval(tmp_path, plain_dataset, ratio):
    out = tmp_path / "out"
    _expect_error(run_cli("split", plain_dataset, "--out", out, "--ratio", ratio), out, "--ratio must be in (0, 1]")


def test_labeled_larger_than_training_set(tmp_path, plain_dataset):
    out = tmp_path / "out"
    _expect_error(run_cli("split", plain_dataset, "--out", out, "--labeled", "7"), out,
                  "between 1 and the number of training cases (6)")


def test_undeclared_label_value_mid_write(tmp_path, plain_dataset):
    # the LAST training case carries an undeclared value: earlier cases are already written when it fails
    lab = io.imread(plain_dataset / "labelsTr" / "c05.png")
    lab[0, 0] = 7
    io.imsave(plain_dataset / "labelsTr" / "c05.png", lab, check_contrast=False)
    out = tmp_path / "out"
    _expect_error(run_cli("split", plain_dataset, "--out", out, "--labeled", "2"), out, "not declared")


def test_undeclared_label_in_existing_out_keeps_old_dataset(tmp_path, plain_dataset):
    out = tmp_path / "out"
    assert run_cli("split", plain_dataset, "--out", out, "--labeled", "2", "--no-verify").returncode == 0
    before = sorted(p.name for p in out.rglob("*"))
    dj = json.loads((plain_dataset / "dataset.json").read_text())
    dj["labels"] = {"background": 0, "a": 1}  # label 2 is now undeclared
    (plain_dataset / "dataset.json").write_text(json.dumps(dj))
    r = run_cli("split", plain_dataset, "--out", out, "--labeled", "2", "--overwrite")
    assert r.returncode == 2 and "not declared" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.rglob("*")) == before  # the previous dataset is intact
    assert leftovers(out.parent, out.name) == []


def test_image_label_shape_mismatch(tmp_path, plain_dataset):
    io.imsave(plain_dataset / "labelsTr" / "c02.png", np.zeros((20, 32), np.uint8), check_contrast=False)
    out = tmp_path / "out"
    _expect_error(run_cli("split", plain_dataset, "--out", out, "--labeled", "2"), out, "shape")


def test_usage_errors_are_one_line(tmp_path, plain_dataset):
    out = tmp_path / "out"
    _expect_error(run_cli("split", plain_dataset, "--out", out), out, "--labeled N or --ratio r")
    _expect_error(run_cli("synthetic", "--out", out, "--bogus"), out, "unrecognized arguments")
    _expect_error(run_cli("nuclei", "--out", out, "--labeled", "2", "--ratio", "0.5"), out, "not allowed with")
    _expect_error(run_cli("nuclei", "--out", out, "--n-test", "64"), out, "a smaller --tile gives more tiles")
    _expect_error(run_cli("radiomics", "--out", out, "--cases", "brain1,lung9"), out, "did you mean 'lung")

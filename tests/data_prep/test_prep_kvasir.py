"""data_prep kvasir on a small fake copy of the Kvasir-SEG release layout (Kvasir-SEG/{images,masks}/*.jpg)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.kvasir import make_kvasir
from prep_helpers import expect_main_error, fake_download
from semisam.data import RawDataset, load_split

NAMES = ("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0roawvklrq0799vmjorwfv",
         "cju0rx1idathl0835detmsp84", "cju0s2a9ekvms080138tjjpxr", "cju0s690hkp960855tjuaqvv0")
SHAPE = (30, 40)  # (Y, X)


def make_fake_kvasir(src: Path) -> Path:
    """Six RGB JPEG images with a polyp disc and its mask saved as JPEG too (as released: white on black, with
    compression artefacts along the edge), plus the release's kavsir_bboxes.json."""
    rng = np.random.default_rng(1)
    root = src / "Kvasir-SEG"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    for i, name in enumerate(NAMES):
        disc = (yy - 12 - i) ** 2 + (xx - 15 - 2 * i) ** 2 < 49
        rgb = rng.integers(40, 120, (*SHAPE, 3)).astype(np.uint8)
        rgb[disc] = (200, 90, 60)
        Image.fromarray(rgb).save(root / "images" / f"{name}.jpg", quality=90)
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / "masks" / f"{name}.jpg", quality=75)
    (root / "kavsir_bboxes.json").write_text("{}")
    return src


kvasir_src = fake_download(make_fake_kvasir)


def test_kvasir_converts_and_passes_nnunet(tmp_path, kvasir_src):
    out = make_kvasir(kvasir_src, tmp_path / "Dataset505_KvasirSEG", labeled=2, test_fraction=0.34, verify=True)
    split = load_split(out / "semisam_split.json")
    assert sorted(split.training + split.test) == sorted(NAMES)
    assert (len(split.labeled), len(split.unlabeled), len(split.test)) == (2, 2, 2)
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["file_ending"] == ".png"
    ds = RawDataset.open(out)
    case = ds.labeled_cases()[0]
    assert [f.name for f in case.image_files] == [f"{case.case_id}_{c:04d}.png" for c in range(3)]
    image, _ = ds.read_image(case.image_files)
    source = np.asarray(Image.open(kvasir_src / "Kvasir-SEG" / "images" / f"{case.case_id}.jpg").convert("RGB"))
    np.testing.assert_array_equal(image[:, 0], source.transpose(2, 0, 1))
    # the JPEG mask carries intermediate values; the label is the mask thresholded at > 127
    mask = np.asarray(Image.open(kvasir_src / "Kvasir-SEG" / "masks" / f"{case.case_id}.jpg").convert("L"))
    assert ((mask > 0) & (mask < 255)).any()
    seg, _ = ds.read_seg(case.label_file)
    assert set(np.unique(seg).tolist()) == {0, 1}
    np.testing.assert_array_equal(seg[0, 0], (mask > 127).astype(np.float32))


def test_kvasir_max_size_and_src_folder_itself(tmp_path, kvasir_src):
    out = make_kvasir(kvasir_src / "Kvasir-SEG", tmp_path / "small", ratio=0.5, test_fraction=0.0, max_size=20)
    ds = RawDataset.open(out)
    assert len(ds.labeled_cases()) == 3 and len(ds.unlabeled_cases()) == 3 and ds.test_cases() == []
    case = ds.labeled_cases()[0]
    image, _ = ds.read_image(case.image_files)
    seg, _ = ds.read_seg(case.label_file)
    assert image.shape == (3, 1, 15, 20) and seg.shape == (1, 1, 15, 20)
    assert set(np.unique(seg).tolist()) == {0, 1}  # nearest neighbour: still binary


def test_kvasir_bad_sources(tmp_path, kvasir_src, capsys):
    out = tmp_path / "out"
    expect_main_error(capsys, ["kvasir", "--src", tmp_path, "--out", out], out,
                      f"expected {tmp_path / 'Kvasir-SEG'}/images/*.jpg")
    (kvasir_src / "Kvasir-SEG" / "masks" / f"{NAMES[3]}.jpg").unlink()
    expect_main_error(capsys, ["kvasir", "--src", kvasir_src, "--out", out], out,
                      f"has no mask: expected {kvasir_src / 'Kvasir-SEG' / 'masks' / NAMES[3]}.jpg")
    expect_main_error(capsys, ["kvasir", "--src", kvasir_src, "--out", out, "--max-size", "8"], out,
                      "--max-size must be at least 16")


def test_kvasir_cli(tmp_path, kvasir_src, capsys):
    from data_prep.cli import main

    out = tmp_path / "Dataset505_KvasirSEG"
    argv = ["kvasir", "--src", kvasir_src, "--out", out, "--labeled", "3", "--test-fraction", "0", "--max-size", "16",
            "--no-verify"]
    assert main([str(a) for a in argv]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 3 labeled, 3 unlabeled, 0 test cases"
    image, _ = RawDataset.open(out).read_image(RawDataset.open(out).labeled_cases()[0].image_files)
    assert image.shape == (3, 1, 12, 16)

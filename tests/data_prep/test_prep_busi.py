"""data_prep busi on a small fake copy of the BUSI release layout (Dataset_BUSI_with_GT/<class>/)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.busi import find_busi, make_busi
from prep_helpers import expect_main_error, fake_download
from semisam.data import RawDataset, load_split

SHAPE = (24, 32)  # (Y, X)


def _square(y: int, x: int, side: int = 6) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[y:y + side, x:x + side] = 255
    return m


def make_fake_busi(src: Path) -> Path:
    """Benign 1-4, malignant 1-3, normal 1-2, as named in the release: ``benign (2).png`` with
    ``benign (2)_mask.png`` and a second lesion in ``benign (2)_mask_1.png``. Odd images are saved as RGB with
    three equal channels (as some BUSI files are), one mask is RGB too; masks are 0/255; normal masks are empty.
    """
    rng = np.random.default_rng(0)
    root = src / "Dataset_BUSI_with_GT"
    for cls, n in (("benign", 4), ("malignant", 3), ("normal", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            gray = rng.integers(0, 200, SHAPE).astype(np.uint8)
            img = np.repeat(gray[..., None], 3, axis=2) if i % 2 else gray
            Image.fromarray(img).save(root / cls / f"{cls} ({i}).png")
            mask = np.zeros(SHAPE, np.uint8) if cls == "normal" else _square(2 + i, 3 + 2 * i)
            Image.fromarray(np.repeat(mask[..., None], 3, axis=2) if i == 3 else mask).save(
                root / cls / f"{cls} ({i})_mask.png")
    Image.fromarray(_square(15, 20, 5)).save(root / "benign" / "benign (2)_mask_1.png")
    (root / "benign" / "Thumbs.db").write_bytes(b"not an image")
    return src


busi_src = fake_download(make_fake_busi)


def test_busi_converts_and_passes_nnunet(tmp_path, busi_src):
    out = make_busi(busi_src, tmp_path / "Dataset504_BUSI", labeled=2, test_fraction=0.3, verify=True)
    ds = RawDataset.open(out)
    split = load_split(out / "semisam_split.json")
    # default classes: benign + malignant (7 images), normal left out; 0.3 * 7 -> 2 test images
    assert sorted(split.training + split.test) == ["benign_001", "benign_002", "benign_003", "benign_004",
                                                   "malignant_001", "malignant_002", "malignant_003"]
    assert (len(split.labeled), len(split.unlabeled), len(split.test)) == (2, 3, 2)
    assert ds.labels == {"background": 0, "lesion": 1} and ds.num_channels == 1
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["file_ending"] == ".png" and dj["channel_names"] == {"0": "ultrasound"}
    src = busi_src / "Dataset_BUSI_with_GT"
    for cid in ("benign_001", "benign_002"):  # benign (1) was saved as RGB, benign (2) as grayscale
        folder = "imagesTr" if cid in split.training else "imagesTs"
        image, _ = ds.read_image([out / folder / f"{cid}_0000.png"])
        source = np.asarray(Image.open(src / "benign" / f"benign ({int(cid[-3:])}).png").convert("L"))
        assert image.shape == (1, 1, *SHAPE)
        np.testing.assert_array_equal(image[0, 0], source)
    # benign (2): both masks merged into one binary label
    label_file = next(out.glob("*/benign_002.png"))
    seg, _ = ds.read_seg(label_file)
    expected = (_square(4, 7) > 0) | (_square(15, 20, 5) > 0)
    np.testing.assert_array_equal(seg[0, 0], expected.astype(np.float32))


def test_busi_classes(busi_src):
    assert len(find_busi(busi_src, ("benign", "malignant", "normal"))) == 9
    normal = find_busi(busi_src / "Dataset_BUSI_with_GT", ("normal",))  # --src may be the release folder itself
    assert list(normal) == ["normal_001", "normal_002"]
    assert [m.name for m in find_busi(busi_src, ("benign",))["benign_002"][1]] == [
        "benign (2)_mask.png", "benign (2)_mask_1.png"]


def test_busi_bad_sources(tmp_path, busi_src, capsys):
    out = tmp_path / "out"
    expect_main_error(capsys, ["busi", "--src", tmp_path / "empty", "--out", out], out, "does not exist")
    (tmp_path / "empty").mkdir()
    expect_main_error(capsys, ["busi", "--src", tmp_path / "empty", "--out", out], out,
                      "expected " + str(tmp_path / "empty" / "Dataset_BUSI_with_GT"))
    expect_main_error(capsys, ["busi", "--src", busi_src, "--out", out, "--classes", "benign,malignat"], out,
                      "did you mean 'malignant'")
    (busi_src / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2)_mask.png").unlink()
    expect_main_error(capsys, ["busi", "--src", busi_src, "--out", out], out,
                      "malignant (2).png has no mask 'malignant (2)_mask.png'")


def test_busi_mask_size_mismatch_writes_nothing(tmp_path, busi_src, capsys):
    # the failing mask comes late: earlier cases are already staged when it fails
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(
        busi_src / "Dataset_BUSI_with_GT" / "malignant" / "malignant (3)_mask.png")
    out = tmp_path / "out"
    expect_main_error(capsys, ["busi", "--src", busi_src, "--out", out, "--labeled", "1", "--no-verify"], out,
                      "is 20x20 pixels but its image malignant (3).png is 32x24")


def test_busi_cli(tmp_path, busi_src, capsys):
    from data_prep.cli import main

    out = tmp_path / "Dataset504_BUSI"
    argv = ["busi", "--src", busi_src, "--out", out, "--classes", "benign,normal", "--test-fraction", "0.5",
            "--ratio", "0.5", "--seed", "1", "--no-verify"]
    assert main([str(a) for a in argv]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 2 labeled, 1 unlabeled, 3 test cases"
    split = load_split(out / "semisam_split.json")
    assert {c.split("_")[0] for c in split.training + split.test} == {"benign", "normal"}

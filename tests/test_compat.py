"""semisam.compat and the nnU-Net command wrapper, each check in a fresh interpreter (a subprocess).

Why subprocesses: whether ``import torchvision`` works depends on what ran before it in the process; every
test starts clean so that the order of tests (and of other test files) cannot hide a failure.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from semisam.nnunet import TRAINER_DIR
from semisam.utils.errors import SemisamError

REPO = Path(__file__).resolve().parents[1]


def run_py(code: str, *args: str, env: dict | None = None, module: bool = False) -> subprocess.CompletedProcess:
    """Run ``code`` (or ``-m code`` when ``module``) in a fresh interpreter of this venv, from the repo root."""
    full_env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    full_env.update(env or {})
    cmd = [sys.executable, "-m", code, *args] if module else [sys.executable, "-c", textwrap.dedent(code), *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout


def test_importing_semisam_stays_cheap():
    out = ok(run_py("""
        import sys, semisam, semisam.compat, semisam.nnunet
        print('torch' in sys.modules, 'torchvision' in sys.modules)
    """))
    assert out.split() == ["False", "False"]


def test_without_install_torchvision_import_fails_here():
    out = ok(run_py("""
        import json, semisam.compat as compat
        status = compat.status()  # probes without importing torchvision
        try:
            import torchvision
            error = None
        except RuntimeError as e:
            error = str(e)
        print(json.dumps({"status": status, "error": error}))
    """))
    result = json.loads(out.splitlines()[-1])
    if result["status"]["native_ops"]:
        pytest.skip("torchvision's compiled ops load natively here (e.g. a CUDA install): nothing to patch")
    assert result["status"] == {**result["status"], "native_ops": False, "patched": False}
    assert result["error"] and "torchvision::nms" in result["error"]


def test_nms_after_install_hand_checked_and_brute_force():
    ok(run_py("""
        import random, semisam.compat as compat
        compat.install()
        import torch, torchvision
        from torchvision.ops import nms, batched_nms

        # D=[0,0,10,9] .95, A .9, B .8, C far away .7; IoU(D,A)=0.9, IoU(D,B)=72/118=0.61, IoU(A,B)=81/119=0.68
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=torch.float32)
        scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
        assert nms(boxes, scores, 0.5).tolist() == [3, 2]
        assert nms(boxes, scores, 0.65).tolist() == [3, 1, 2]  # greedy: A, suppressed by D, spares B
        assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]
        assert nms(boxes, scores, 0.5).dtype == torch.int64
        assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.5).tolist() == [3, 1, 2]
        assert nms(boxes[:0], scores[:0], 0.5).tolist() == []

        def iou(a, b):
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0])); h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)

        def brute(bx, sc, thr):
            kept = []
            for i in sorted(range(len(sc)), key=lambda i: -sc[i]):
                if all(iou(bx[i], bx[j]) <= thr for j in kept):
                    kept.append(i)
            return kept

        g = torch.Generator().manual_seed(0)
        for n, thr in [(1, 0.5), (30, 0.3), (200, 0.5), (200, 0.8)]:
            xy = torch.rand(n, 2, generator=g) * 50
            b = torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 20], 1)
            s = torch.rand(n, generator=g)
            assert nms(b, s, thr).tolist() == brute(b.tolist(), s.tolist(), thr), (n, thr)
        assert len(nms(b, s, 0.5)) < 200  # the random sets do overlap

        x = torch.zeros(1, 1, 4, 4)   # compiled-only ops: a clear error when called, not at import
        try:
            torchvision.ops.deform_conv2d(x, torch.zeros(1, 18, 2, 2), torch.zeros(1, 1, 3, 3))
            raise AssertionError("deform_conv2d unexpectedly ran")
        except RuntimeError as e:
            assert "Couldn't load custom C++ ops" in str(e), e
    """))


def test_segment_anything_predictor_and_timm_after_install():
    out = ok(run_py("""
        import semisam.compat as compat
        compat.install()
        import numpy as np, torch, timm, segment_anything
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        torch.manual_seed(0)
        sam = Sam(ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=32),
                  PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=8),
                  MaskDecoder(num_multimask_outputs=3, transformer_dim=32, iou_head_depth=1, iou_head_hidden_dim=16,
                              transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2))).eval()
        image = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
        predictor = SamPredictor(sam)
        predictor.set_image(image)    # torchvision.transforms inside
        masks, iou, _ = predictor.predict(box=np.array([5, 5, 30, 30]), multimask_output=False)
        assert masks.shape == (1, 48, 40), masks.shape
        # the automatic mask generator deduplicates with torchvision's batched_nms
        gen = SamAutomaticMaskGenerator(sam, points_per_side=4, pred_iou_thresh=-1e9, stability_score_thresh=-1e9,
                                        stability_score_offset=0.0, box_nms_thresh=0.5)
        print(len(gen.generate(image)), len(timm.list_models("resnet1*")) > 0)
    """))
    n_masks, timm_ok = out.split()[-2:]
    assert int(n_masks) >= 1 and timm_ok == "True"


def test_nnunet_trainer_lookup_builtin_and_external(tmp_path):
    (tmp_path / "my_ext_trainers.py").write_text(textwrap.dedent("""
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        class MyExtTrainer(nnUNetTrainer):
            pass
    """))
    out = ok(run_py("""
        import os, sys, semisam.compat as compat
        compat.install()
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
        from semisam.nnunet import TRAINER_DIR, ensure_ext_trainer_env

        assert find("nnUNetTrainer_5epochs").__name__ == "nnUNetTrainer_5epochs"  # imports every nnU-Net trainer
        assert find("MyExtTrainer").__name__ == "MyExtTrainer"
        value = ensure_ext_trainer_env()
        assert ensure_ext_trainer_env() == value == TRAINER_DIR + os.pathsep + sys.argv[1], value
        print("semisam:", find("nnUNetTrainerSemiSAM").__name__)
    """, str(tmp_path), env={"nnUNet_extTrainer": str(tmp_path)}))
    assert "semisam: nnUNetTrainerSemiSAM" in out


def test_wrapper_runs_nnunet_command():
    proc = run_py("semisam.nnunet", "nnUNetv2_train", "--help", module=True)
    assert "usage: nnUNetv2_train" in ok(proc)


def test_wrapper_unknown_command_one_line_exit_2():
    proc = run_py("semisam.nnunet", "nnUNetv2_trian", "501", module=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown nnU-Net command 'nnUNetv2_trian'")
    assert "did you mean 'nnUNetv2_train'" in lines[0] and "nnUNetv2_predict" in lines[0]


def test_run_nnunet_command_unknown_raises_in_process():
    from semisam.nnunet.__main__ import nnunet_commands, run_nnunet_command

    assert "nnUNetv2_train" in nnunet_commands()
    with pytest.raises(SemisamError, match="did you mean 'nnUNetv2_predict'"):
        run_nnunet_command("nnUNetv2_predcit", [])


def test_ensure_ext_trainer_env_keeps_existing_entries(monkeypatch):
    from semisam.nnunet import ensure_ext_trainer_env

    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join(["/a", "/b"]))
    assert ensure_ext_trainer_env() == os.pathsep.join([TRAINER_DIR, "/a", "/b"])
    assert ensure_ext_trainer_env() == os.pathsep.join([TRAINER_DIR, "/a", "/b"])
    monkeypatch.delenv("nnUNet_extTrainer")
    assert ensure_ext_trainer_env() == TRAINER_DIR


def test_install_idempotent_and_noop_when_ops_present():
    out = ok(run_py("""
        import json, sys, semisam.compat as compat
        native = bool(compat.status()["native_ops"])
        first = compat.install()
        import torch
        dump, hooks, lib = torch._C._dispatch_dump("torchvision::nms"), list(sys.meta_path), compat._LIB
        second = compat.install()   # now the ops are present: the no-op path
        same = (dump == torch._C._dispatch_dump("torchvision::nms"), hooks == sys.meta_path, lib is compat._LIB)
        import torchvision
        kept = torchvision.ops.nms(torch.tensor([[0., 0, 2, 2], [0, 0, 2, 2]]), torch.tensor([1., 2]), 0.5).tolist()
        print(json.dumps({"native": native, "first": first, "second": second, "same": same, "kept": kept,
                          "status": compat.status()}))
    """))
    r = json.loads(out.splitlines()[-1])
    assert r["first"] is (not r["native"]) and r["second"] is False
    assert r["same"] == [True, True, True] and r["kept"] == [1]
    assert r["status"]["patched"] is (not r["native"])


# ---------------------------------------------------------------------------------------------- the wrapper's
# two additions: -device when none is given, and the planner's nnUNet_n_proc_DA


def _entry_function_source(entry_point) -> str:
    """The source of an nnU-Net console script's function, read without importing nnU-Net."""
    import ast
    import importlib.util

    module, _, func = entry_point.value.partition(":")
    text = Path(importlib.util.find_spec(module).origin).read_text()
    node = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == func)
    return ast.get_source_segment(text, node)


def test_device_and_planner_command_sets_match_installed_nnunet():
    from semisam.nnunet.__main__ import DEVICE_COMMANDS, PLANNER_COMMANDS, nnunet_commands

    sources = {name: _entry_function_source(ep) for name, ep in nnunet_commands().items()}
    assert {n for n, src in sources.items() if "'-device'" in src} == DEVICE_COMMANDS
    assert {n for n, src in sources.items() if "plan_experiments(" in src} == PLANNER_COMMANDS


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_available_device_type_order(monkeypatch, cuda, mps, expected):
    import torch

    from semisam.utils.device import available_device_type, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert available_device_type() == expected
    assert available_device_type(mps=False) == ("cuda" if cuda else "cpu")
    if not cuda:
        assert resolve_device("auto").type == "cpu"  # the student's and teacher's "auto" stays CUDA-or-CPU


def test_with_device_only_when_missing(monkeypatch, capsys):
    import semisam.utils.device
    from semisam.nnunet.__main__ import with_device

    monkeypatch.setattr(semisam.utils.device, "available_device_type", lambda mps=True: "mps" if mps else "cpu")
    args = ["501", "2d", "all", "-tr", "nnUNetTrainerSemiSAM"]
    for name in ("nnUNetv2_train", "nnUNetv2_predict", "nnUNetv2_predict_from_modelfolder"):
        assert with_device(name, args) == [*args, "-device", "mps"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["[semisam nnunet] no -device given: using -device mps (the first available of cuda, mps, "
                     "cpu)"] * 3
    for given in (["-device", "cpu"], ["-device=cuda"], ["-dev", "cpu"], ["--help"]):
        assert with_device("nnUNetv2_train", [*args, *given]) == [*args, *given]
    assert with_device("nnUNetv2_plan_and_preprocess", ["-d", "501"]) == ["-d", "501"]  # -d is not -device
    assert capsys.readouterr().err == ""


def test_planner_guard_raises_zero_for_planner_commands_only(monkeypatch, capsys):
    from semisam.nnunet.__main__ import planner_guard

    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    for name in ("nnUNetv2_plan_and_preprocess", "nnUNetv2_plan_experiment"):
        with planner_guard(name):
            assert os.environ["nnUNet_n_proc_DA"] == "1"
        assert os.environ["nnUNet_n_proc_DA"] == "0"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nnUNetv2_plan_and_preprocess: nnUNet_n_proc_DA=0 raised to 1" in err[0]
    with planner_guard("nnUNetv2_train"):
        assert os.environ["nnUNet_n_proc_DA"] == "0"  # training: augmentation in the main process
    monkeypatch.setenv("nnUNet_n_proc_DA", "3")
    with planner_guard("nnUNetv2_plan_and_preprocess"):
        assert os.environ["nnUNet_n_proc_DA"] == "3"
    monkeypatch.delenv("nnUNet_n_proc_DA")
    with planner_guard("nnUNetv2_plan_and_preprocess"):
        assert "nnUNet_n_proc_DA" not in os.environ
    assert capsys.readouterr().err == ""


def _readme_nnunet_block() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    (block,) = [b for b in blocks if "semisam nnunet nnUNetv2_plan_and_preprocess" in b]
    return block


@pytest.mark.slow
def test_readme_nnunet_commands_run_as_written(tmp_path: Path):
    """The README's plan → train → predict lines, run by bash as written (no -device, nnUNet_n_proc_DA=0, on a
    machine without CUDA here) on a tiny synthetic Dataset501, with one change: trainer.json asks for 1 epoch of
    2 iterations. About 55 s of CPU (three nnU-Net processes, each spawning workers): measured 99-107 s wall on
    two cores shared with other jobs (load 6), so it is marked slow."""
    block = _readme_nnunet_block()
    commands = [line for line in block.splitlines() if line.startswith("semisam nnunet ")]
    assert [c.split()[2] for c in commands] == ["nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict"]
    assert not any("-device" in c for c in commands)
    tiny = '{"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1, "seed": 0}'
    script, n = re.subn(r"echo '\{[^']*\}' > trainer\.json", f"echo '{tiny}' > trainer.json", block)
    assert n == 1
    ok(run_py("data_prep", "synthetic", "--out", str(tmp_path / "data" / "Dataset501_Nuclei"), "--n-train", "1",
              "--labeled", "1", "--n-test", "1", "--size", "32", "--dataset-id", "501", "--no-verify", module=True))

    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") and k != "SEMISAM_TRAINER_CONFIG"}
    env.update(nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    log = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, log
    from semisam.utils.device import available_device_type

    notes = [line for line in proc.stderr.splitlines() if line.startswith("[semisam nnunet]")]
    assert len(notes) == 3, log
    assert "nnUNetv2_plan_and_preprocess: nnUNet_n_proc_DA=0 raised to 1" in notes[0]
    assert all(f"using -device {available_device_type()}" in n for n in notes[1:])
    assert "semisam: 1 epochs x 2 iterations" in proc.stdout, log
    model = tmp_path / "nnunet" / "results" / "Dataset501_Nuclei" / "nnUNetTrainerSemiSAM__nnUNetPlans__2d"
    assert (model / "fold_all" / "checkpoint_final.pth").is_file()
    assert sorted(p.name for p in (tmp_path / "pred501").glob("*.png")) == ["test_000.png"]

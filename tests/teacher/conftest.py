"""Fixtures for the teacher tests: models built once per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model():
    from semisam.teacher.models import build_teacher_model

    return build_teacher_model("tiny_random")


@pytest.fixture(scope="session")
def litemedsam_model():
    from semisam.teacher.models import build_teacher_model

    return build_teacher_model("litemedsam")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """On a shared 2-core machine, 2 torch threads under contention were measured up to 60x slower than 1
    (OpenMP spin-waits); the teacher tests run single-threaded."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

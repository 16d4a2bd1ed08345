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

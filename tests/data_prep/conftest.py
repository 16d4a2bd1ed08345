"""Fixtures for data_prep tests: real downloads cached once per session, small raw datasets on disk."""
from __future__ import annotations

from pathlib import Path

import pytest

from prep_helpers import make_plain_dataset


@pytest.fixture(scope="session")
def stardist_wheel() -> Path:
    """The real stardist 0.9.2 wheel, fetched once into the user cache ($SEMISAM_CACHE or ~/.cache/semisam)."""
    from data_prep.fetch import fetch_package

    return fetch_package("stardist", "0.9.2")


@pytest.fixture(scope="session")
def radiomics_sdist() -> Path:
    """The real pyradiomics 3.0.1 sdist, fetched once."""
    from data_prep.radiomics import fetch_sdist

    return fetch_sdist()


@pytest.fixture(scope="session")
def nilearn_wheel() -> Path:
    """The real nilearn 0.14.1 wheel (MNI152 template files), fetched once; nilearn is never installed."""
    from data_prep.fetch import fetch_package
    from data_prep.mni152 import NILEARN_VERSION

    return fetch_package("nilearn", NILEARN_VERSION)


@pytest.fixture
def plain_dataset(tmp_path: Path) -> Path:
    return make_plain_dataset(tmp_path / "Dataset990_Plain")


"""Shared test fixtures. Tests needing ../shared/data are marked ``shared_data`` and skipped where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
SHARED_DATA = Path(os.environ.get("CAMPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    if not SHARED_DATA.is_dir():
        skip = pytest.mark.skip(reason=f"shared data not found at {SHARED_DATA}")
        for item in items:
            if "shared_data" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def linear_image(rng) -> np.ndarray:
    """A small float32 (48, 64, 3) linear working-space image with a gradient and noise, values in [0, 1]."""
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w, y / h, 0.5 * np.ones_like(x)], axis=-1) * 0.8
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)

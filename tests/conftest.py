"""Shared fixtures: where the real data lives, and GPU test selection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$RECFORGE_DATA`` or ``../shared/data`` beside the project."""
    env = os.environ.get("RECFORGE_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "ml-latest-small" / "ratings.csv").is_file():
        pytest.fail(
            f"real test data not found at {root}: set RECFORGE_DATA or put shared/data beside "
            "the project"
        )
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are deselected (not skipped) where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("gpu") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

"""Shared fixtures: where the real data lives, and GPU test selection."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

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


def models_root() -> Path:
    """``$RECFORGE_MODELS`` or ``../shared/models`` beside the project."""
    env = os.environ.get("RECFORGE_MODELS")
    return Path(env) if env else ROOT.parent / "shared" / "models"


def start_llama_server(model: Path, log: Path, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """recforge.llm.start_llama_server, failing the test (not skipping it) when it cannot start."""
    from recforge.errors import ConfigError
    from recforge.llm import start_llama_server as start

    n_ctx = int(extra[extra.index("--n_ctx") + 1]) if extra and "--n_ctx" in extra else 2048
    try:
        return start(model, n_ctx=n_ctx, log=log)
    except ConfigError as e:
        pytest.fail(f"{e} (set RECFORGE_MODELS or put shared/models beside the project)")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a llama.cpp server running the 1.7 MB random-weight test model."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    proc, url = start_llama_server(models_root() / "llama-2-tiny-random.gguf", log, ["--n_ctx", "512"])
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

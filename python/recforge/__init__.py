"""recforge: LLM-enhanced recommender-system research with a Rust/libtorch core.

Quick start::

    import recforge
    ds = recforge.datasets.movielens_small()          # built in, works offline
    train, valid, test = recforge.split.leave_one_out(ds.interactions)
"""

from __future__ import annotations

# torch first: the extension links the libtorch of the installed torch wheel, and torch's own
# import sets up the libraries (CUDA kernels, Python bindings) that libtorch's Python side needs.
import torch as _torch  # noqa: F401

from . import _native
from ._native import IdMap, Interactions, num_threads
from . import errors, split, datasets, metrics, sampling, stats, models, tuning
from . import llm, parsing, prompts, rerank, text
from .datasets import Dataset

__version__: str = _native.__version__


def device() -> str:
    """The device recforge trains on with ``device="auto"``: ``"cuda"`` when a GPU is visible
    to libtorch, else ``"cpu"``."""
    return _native.device()


def resolve_device(name: str = "auto") -> str:
    """Resolve ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` to the device a trainer uses.

    Raises :class:`recforge.errors.ConfigError` for an unknown name or a GPU that is not there."""
    return _native.resolve_device(name)


__all__ = [
    "Dataset",
    "IdMap",
    "Interactions",
    "__version__",
    "datasets",
    "device",
    "errors",
    "llm",
    "metrics",
    "models",
    "num_threads",
    "parsing",
    "prompts",
    "rerank",
    "resolve_device",
    "sampling",
    "split",
    "stats",
    "text",
    "tuning",
]

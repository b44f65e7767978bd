"""recforge: LLM-enhanced recommender-system research with a Rust/libtorch core.

Quick start::

    import recforge
    ds = recforge.datasets.movielens_small()          # built in, works offline
    train, valid, test = recforge.split.leave_one_out(ds.interactions)
"""

from __future__ import annotations

import importlib.metadata as _metadata
import importlib.util as _importlib_util
import os as _os
import platform as _platform
from typing import Any

# Prefix of the marker that carries, inside the extension's file, the torch version it was built
# against (src/python/mod.rs, TORCH_MARKER): read when the extension cannot be loaded.
_TORCH_MARKER = b"recforge-built-against-torch="


def _built_torch_from_file(path: str | None = None) -> str | None:
    """The torch version the extension in ``path`` (default: ``recforge._native`` as Python would
    import it) was built against, read from the marker in the file without loading it; None when
    there is no extension or no marker."""
    if path is None:
        try:
            spec = _importlib_util.find_spec("recforge._native")
        except (ImportError, ValueError):
            return None
        if spec is None or spec.origin is None:
            return None
        path = spec.origin
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    start = data.find(_TORCH_MARKER)
    if start < 0:
        return None
    start += len(_TORCH_MARKER)
    end = data.find(b"\0", start, start + 64)
    return data[start:end].decode("ascii", "replace") if end > start else None


def _release(version: str) -> str:
    """``2.11.0+cu130`` -> ``2.11.0``: builds of one release for CPU or CUDA share libtorch's ABI."""
    return version.split("+", 1)[0].strip()


def _check_torch_version(installed: str, built: str) -> None:
    """Raise ImportError, naming the torch needed, when the installed torch is another release
    than the one the extension was built against: tch calls libtorch's C++ API, which changes
    between releases. Another build of the same release (``+cpu``, ``+cu126``) passes, and so does
    ``built == "unknown"`` (no version found at build time)."""
    if built == "unknown" or _release(installed) == _release(built):
        return
    raise ImportError(
        f"recforge was built against torch {built}, but torch {installed} is installed. recforge "
        f"links libtorch itself, so the releases must match: pip install torch=={_release(built)} "
        "(or build recforge from source against this torch: see the README, 'Install in Colab')"
    )


def _torch_pin() -> str:
    """The torch requirement of the installed recforge distribution, e.g. ``torch==2.11.0``."""
    try:
        for req in _metadata.requires("recforge") or []:
            if req.replace(" ", "").startswith("torch=="):
                return req.split(";")[0].replace(" ", "")
    except _metadata.PackageNotFoundError:
        pass
    return "torch"


# torch first: the extension links the libtorch of the installed torch wheel, and torch's own
# import sets up the libraries (CUDA kernels, Python bindings) that libtorch's Python side needs.
try:
    import torch as _torch
except ModuleNotFoundError as _e:
    if _e.name != "torch":
        raise
    _built = _built_torch_from_file()
    _need = f"torch=={_release(_built)}" if _built and _built != "unknown" else _torch_pin()
    raise ImportError(f"recforge needs PyTorch: pip install {_need}") from _e

try:
    from . import _native
except ImportError as _e:
    # A loader error (a libtorch symbol or library not found) usually means another torch release.
    _built = _built_torch_from_file()
    try:
        if _built is not None:
            _check_torch_version(_torch.__version__, _built)
    except ImportError as _mismatch:
        raise _mismatch from _e
    raise
_check_torch_version(_torch.__version__, _native._TORCH_VERSION)

from ._native import IdMap, Interactions, num_threads
from . import errors, split, datasets, metrics, sampling, stats, models, tuning
from . import llm, parsing, profiling, prompts, rerank, text
from .datasets import Dataset

__version__: str = _native.__version__


def build_info() -> dict[str, Any]:
    """Facts about this build and the machine, for bug reports and run records:

    - ``recforge``: the version; ``python``: the interpreter's version;
    - ``abi3``: whether the extension is the stable-ABI build (one file for every CPython >= 3.10),
      ``extension``: its file name;
    - ``tch``: the tch (Rust libtorch bindings) version compiled in;
    - ``torch_built_against`` / ``torch_installed``: the torch the extension was built against and
      the one imported now (the same release, or ``import recforge`` would have failed);
    - ``torch_cuda``: the CUDA version of the installed torch build (None for a CPU build);
    - ``cuda_available``, ``cuda_devices``: what torch sees; ``device``: what ``device="auto"``
      resolves to (:func:`device`);
    - ``threads``: recforge's Rust thread pool (``RECFORGE_NUM_THREADS``), ``torch_threads``:
      torch's intra-op threads (libtorch's, used by recforge's training too).
    """
    ext = _os.path.basename(_native.__file__ or "")
    return {
        "recforge": __version__,
        "python": _platform.python_version(),
        "abi3": ".abi3." in ext,
        "extension": ext,
        "tch": _native._TCH_VERSION,
        "torch_built_against": _native._TORCH_VERSION,
        "torch_installed": str(_torch.__version__),
        "torch_cuda": _torch.version.cuda,
        "cuda_available": bool(_torch.cuda.is_available()),
        "cuda_devices": int(_torch.cuda.device_count()),
        "device": device(),
        "threads": int(num_threads()),
        "torch_threads": int(_torch.get_num_threads()),
    }


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
    "build_info",
    "datasets",
    "device",
    "errors",
    "llm",
    "metrics",
    "models",
    "num_threads",
    "parsing",
    "profiling",
    "prompts",
    "rerank",
    "resolve_device",
    "sampling",
    "split",
    "stats",
    "text",
    "tuning",
]

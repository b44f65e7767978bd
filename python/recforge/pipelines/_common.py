"""What every pipeline shares: atomic JSON, version facts, bootstrap intervals of per-user
metrics, the data folder and the offline default encoder."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from .. import stats as _stats
from ..errors import ConfigError
from ..text import default_encoder, minilm_path  # noqa: F401 (re-exported for the pipelines)


def write_json(path: Path, value: Any) -> None:
    """Write JSON through a temporary file, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, allow_nan=True, default=json_default) + "\n")
    os.replace(tmp, path)


def json_default(x: Any) -> Any:
    """``json.dumps``' ``default``: numpy scalars and arrays, tuples and paths."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, tuple)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def check_run_dir(run_dir: Path, config: dict[str, Any], keys: Sequence[str], products: Sequence[str]) -> None:
    """Refuse (ConfigError) a run folder whose ``config.json`` differs from ``config`` in one of
    ``keys`` when it already holds one of ``products`` (names inside the folder) made with them."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}): use a new run folder") from None
    differ = [k for k in keys if k in old and old[k] != config[k]]
    if differ and any((run_dir / p).exists() for p in products):
        raise ConfigError(
            f"{run_dir} holds a run with other {', '.join(differ)} "
            f"({', '.join(f'{k}={old[k]!r}' for k in differ)}): use a new run folder"
        )


def save_plot_and_info(result: Any, folder: Path, png: str, dpi: int) -> None:
    """``result.plot()`` as ``folder/png`` (a logged warning when matplotlib is missing: the
    tables are the result, a missing plotting library must not lose them), then
    ``results.json`` from ``result.info``."""
    if importlib.util.find_spec("matplotlib") is not None:
        result.plot().savefig(folder / png, dpi=dpi)
    else:
        logging.getLogger("recforge").warning("matplotlib is not installed: %s/%s not written (pip install matplotlib)", folder, png)
    write_json(folder / "results.json", result.info)


def save_result(result: Any, run_dir: str | Path, png: str, dpi: int, list_columns: dict[str, tuple[str, ...]] | None = None) -> Path:
    """A pipeline result's run folder: ``config.json``, each of ``result.TABLES`` as
    ``<name>.csv`` (the columns ``list_columns[name]`` hold lists, written space-separated), the
    plot and ``results.json`` (:func:`save_plot_and_info`); returns the folder."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "config.json", result.config.to_dict())
    for name in result.TABLES:
        table: pd.DataFrame = getattr(result, name)
        cols = (list_columns or {}).get(name, ())
        if cols:
            table = table.assign(**{c: [" ".join(map(str, r)) for r in table[c]] for c in cols})
        table.to_csv(d / f"{name}.csv")
    save_plot_and_info(result, d, png, dpi)
    return d


def versions() -> dict[str, str]:
    """The versions a ``results.json`` records."""
    import torch

    from .. import __version__

    return {
        "recforge": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": np.__version__, "pandas": pd.__version__, "platform": platform.platform(),
    }  # fmt: skip


def run_dir_name(prefix: str, dataset: str, settings: dict[str, Any]) -> Path:
    """``runs/<prefix>-<dataset>-<hash of the settings>`` under the working directory: the same
    settings resume there, other settings get their own folder."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=json_default).encode()).hexdigest()[:10]
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(dataset).name) or "data"
    return Path("runs") / f"{prefix}-{name}-{digest}"


def metric_values(ranks: npt.NDArray[Any], metric: str) -> npt.NDArray[np.float64]:
    """Per-user values of ``HR@K`` / ``NDCG@K`` from the 1-based rank of the ground truth (0 or
    less: not in the list)."""
    name, _, k_text = metric.partition("@")
    k = int(k_text)
    r = np.asarray(ranks, dtype=np.float64)
    inside = (r >= 1) & (r <= k)
    if name == "HR":
        return inside.astype(np.float64)
    return np.where(inside, 1.0 / np.log2(np.maximum(r, 1.0) + 1.0), 0.0)


def ci(values: npt.NDArray[Any], n_resamples: int, confidence: float, seed: int) -> tuple[float, float, float]:
    """(estimate, low, high) of the mean, percentile bootstrap; NaN bounds when there are fewer
    than 2 values."""
    if len(values) < 2:
        est = float(np.mean(values)) if len(values) else float("nan")
        return est, float("nan"), float("nan")
    res = _stats.bootstrap_ci(values, n_resamples, confidence, seed=seed)
    return res.estimate, res.low, res.high


def finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values (NaN when there are none), without numpy's warnings."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def data_root(data_dir: str | None) -> Path:
    """``data_dir``, else ``$RECFORGE_DATA``, else ``../shared/data``."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("RECFORGE_DATA")
    return Path(env) if env else Path("..") / "shared" / "data"



"""Statistics for comparing recommenders, computed in the Rust core (rayon, seeded, the same
result for any number of threads): bootstrap confidence intervals (percentile and BCa), the paired
bootstrap with a two-sided p-value, and RMSE/MAE with intervals for rating predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from . import _native
from .errors import DataError

MethodName = Literal["percentile", "bca"]


@dataclass(frozen=True)
class ConfidenceInterval:
    """A statistic with its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    std_error: float
    confidence: float
    method: str
    n: int

    def __str__(self) -> str:
        pct = round(self.confidence * 100)
        return f"{self.estimate:.4f} [{pct}% CI {self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class PairedComparison:
    """``stat(a) - stat(b)`` over the same units, with its interval and two-sided p-value."""

    difference: float
    low: float
    high: float
    std_error: float
    p_value: float
    confidence: float
    n: int

    def __str__(self) -> str:
        pct = round(self.confidence * 100)
        return (
            f"diff {self.difference:+.4f} [{pct}% CI {self.low:+.4f}, {self.high:+.4f}], "
            f"p = {self.p_value:.4g}"
        )


def _array(values: npt.ArrayLike, name: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} must be a 1-D array of numbers: {e}") from None


def bootstrap_ci(
    values: npt.ArrayLike,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    method: MethodName = "percentile",
    seed: int = 0,
    *,
    statistic: Literal["mean", "root_mean"] = "mean",
) -> ConfidenceInterval:
    """Bootstrap confidence interval of the mean of ``values`` (e.g. per-user NDCG@10).

    ``method="bca"`` is the bias-corrected and accelerated interval (acceleration from the
    jackknife); ``statistic="root_mean"`` gives the interval of ``sqrt(mean(values))``."""
    v = _array(values, "values")
    est, low, high, se = _native._bootstrap_ci(v, statistic, n_resamples, confidence, method, seed)
    return ConfidenceInterval(est, low, high, se, confidence, method, int(v.size))


def paired_bootstrap(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    *,
    statistic: Literal["mean", "root_mean"] = "mean",
) -> PairedComparison:
    """Paired bootstrap of ``stat(a) - stat(b)`` where ``a[i]`` and ``b[i]`` belong to the same
    user or rating. Each resample draws one set of indices for both. The p-value is two-sided:
    the share of centred bootstrap differences at least as far from 0 as the observed one."""
    a_ = _array(a, "a")
    d, low, high, se, p = _native._paired_bootstrap(a_, _array(b, "b"), statistic, n_resamples, confidence, seed)
    return PairedComparison(d, low, high, se, p, confidence, int(a_.size))


def _errors(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> np.ndarray:
    try:
        t = np.asarray(y_true, dtype=np.float64)
        p = np.asarray(y_pred, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"y_true and y_pred must be numbers: {e}") from None
    if t.shape != p.shape or t.ndim != 1:
        raise DataError(f"y_true and y_pred must be 1-D of one length, got {t.shape} and {p.shape}")
    return p - t


def rmse(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    method: MethodName = "percentile",
    seed: int = 0,
) -> ConfidenceInterval:
    """Root mean squared error of rating predictions with a bootstrap interval."""
    e = _errors(y_true, y_pred)
    return bootstrap_ci(e * e, n_resamples, confidence, method, seed, statistic="root_mean")


def mae(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    method: MethodName = "percentile",
    seed: int = 0,
) -> ConfidenceInterval:
    """Mean absolute error of rating predictions with a bootstrap interval."""
    return bootstrap_ci(np.abs(_errors(y_true, y_pred)), n_resamples, confidence, method, seed)


def compare_rmse(
    y_true: npt.ArrayLike,
    pred_a: npt.ArrayLike,
    pred_b: npt.ArrayLike,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """RMSE(a) - RMSE(b) on the same ratings, paired bootstrap (S5's keyword comparison)."""
    ea, eb = _errors(y_true, pred_a), _errors(y_true, pred_b)
    return paired_bootstrap(ea * ea, eb * eb, n_resamples, confidence, seed, statistic="root_mean")


__all__ = [
    "ConfidenceInterval",
    "PairedComparison",
    "bootstrap_ci",
    "compare_rmse",
    "mae",
    "paired_bootstrap",
    "rmse",
]

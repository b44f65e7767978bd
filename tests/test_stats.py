"""recforge.stats: bootstrap intervals against scipy and against known coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from recforge import stats
from recforge.errors import ConfigError, DataError


def test_percentile_and_bca_agree_with_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.exponential(size=400)  # skewed: BCa and percentile differ
    for method in ("percentile", "bca"):
        ours = stats.bootstrap_ci(x, n_resamples=20_000, method=method, seed=1)
        ref = sps.bootstrap(
            (x,), np.mean, n_resamples=20_000, method=method, random_state=2, vectorized=True
        ).confidence_interval
        width = ref.high - ref.low
        assert ours.estimate == pytest.approx(x.mean(), rel=1e-12)
        # Different random streams: the ends agree to Monte Carlo error (~2% of the width).
        assert abs(ours.low - ref.low) < 0.03 * width, (method, ours, ref)
        assert abs(ours.high - ref.high) < 0.03 * width, (method, ours, ref)
        assert ours.std_error == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=0.05)
    pct = stats.bootstrap_ci(x, n_resamples=20_000, method="percentile", seed=1)
    bca = stats.bootstrap_ci(x, n_resamples=20_000, method="bca", seed=1)
    assert bca.high > pct.high  # right skew moves BCa up


def test_coverage_of_the_95_percent_interval_is_close_to_95_percent() -> None:
    rng = np.random.default_rng(5)
    hits = 0
    reps = 400
    for r in range(reps):
        x = rng.normal(loc=2.0, scale=1.5, size=100)
        ci = stats.bootstrap_ci(x, n_resamples=1000, seed=r)
        hits += ci.low <= 2.0 <= ci.high
    coverage = hits / reps
    assert 0.91 <= coverage <= 0.98, coverage


def test_paired_bootstrap_p_values_under_the_null_and_a_real_difference() -> None:
    rng = np.random.default_rng(11)
    small = 0
    for r in range(200):
        a = rng.normal(size=200)
        b = rng.normal(size=200)
        small += stats.paired_bootstrap(a, b, n_resamples=500, seed=r).p_value < 0.05
    assert 0.01 <= small / 200 <= 0.11  # about 5% false positives
    base = rng.normal(size=500)
    better = base + 0.2 + rng.normal(scale=0.5, size=500)
    res = stats.paired_bootstrap(better, base, seed=0)
    assert res.difference == pytest.approx(float((better - base).mean()))
    assert res.low < res.difference < res.high and res.low > 0
    assert res.p_value < 0.001
    assert "p = " in str(res)


def test_rmse_mae_and_their_comparison() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(1, 6, size=2000).astype(float)
    good = y + rng.normal(scale=0.8, size=2000)
    bad = y + rng.normal(scale=1.0, size=2000)
    r = stats.rmse(y, good, n_resamples=2000)
    assert r.estimate == pytest.approx(np.sqrt(np.mean((good - y) ** 2)), rel=1e-12)
    assert r.low < r.estimate < r.high
    m = stats.mae(y, good, n_resamples=2000, method="bca")
    assert m.estimate == pytest.approx(np.mean(np.abs(good - y)), rel=1e-12)
    c = stats.compare_rmse(y, good, bad, n_resamples=2000)
    assert c.difference == pytest.approx(r.estimate - np.sqrt(np.mean((bad - y) ** 2)), rel=1e-12)
    assert c.high < 0 and c.p_value < 0.01


def test_seeded_and_bad_input() -> None:
    x = np.arange(50, dtype=float)
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    assert stats.bootstrap_ci(x, seed=3) != stats.bootstrap_ci(x, seed=4)
    with pytest.raises(DataError, match="at least 2"):
        stats.bootstrap_ci([1.0])
    with pytest.raises(DataError, match="not finite"):
        stats.bootstrap_ci([1.0, np.nan, 2.0])
    with pytest.raises(ConfigError, match="confidence"):
        stats.bootstrap_ci(x, confidence=95)
    with pytest.raises(ConfigError, match="method"):
        stats.bootstrap_ci(x, method="basic")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="differ in length"):
        stats.paired_bootstrap(x, x[1:])
    with pytest.raises(DataError, match="1-D of one length"):
        stats.rmse([1, 2], [1, 2, 3])

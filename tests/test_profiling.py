"""recforge.profiling: recforge's own Rust timers, on real training runs of ml-latest-small."""

from __future__ import annotations

import math
import time

import pytest

import recforge
from recforge import models, profiling
from recforge.errors import ConfigError


@pytest.fixture(scope="module")
def loo() -> recforge.split.SplitResult:
    return recforge.split.leave_one_out(recforge.datasets.movielens_small().interactions)


def test_nfm_epochs_are_timed_per_section(loo: recforge.split.SplitResult) -> None:
    epochs, batch = 2, 2048
    m = models.NFM(epochs=epochs, batch_size=batch, dropout=0.2, device="cpu", seed=0)
    start = time.perf_counter()
    with profiling.native_timers() as t:
        m.fit(loo.train, progress=False)
    wall = time.perf_counter() - start
    steps = epochs * math.ceil(loo.train.n_interactions / batch)
    assert tuple(t.calls) == profiling.SECTIONS
    # One fused Adam pass per parameter tensor per step, plus the sparse rows' scatter/clear.
    assert t.calls["optimizer"] >= 2 * steps
    # Two masks per step (the bi-interaction and the hidden layer), one batch built per step,
    # one draw of negatives per epoch.
    assert t.calls["dropout_masks"] == 2 * steps
    assert t.calls["batch_building"] >= steps
    assert t.calls["sampling"] == epochs
    assert all(s > 0 for s in t.seconds.values()), t
    assert 0 < t.total < wall
    assert "optimizer" in repr(t)


def test_only_inside_the_block_and_one_collection_at_a_time(loo: recforge.split.SplitResult) -> None:
    with profiling.native_timers() as idle:
        pass
    assert idle.calls == dict.fromkeys(profiling.SECTIONS, 0) and idle.total == 0.0
    with profiling.native_timers() as outer:
        with pytest.raises(ConfigError, match="already running"):
            with profiling.native_timers():
                pass
        models.BPRMF(epochs=1, batch_size=4096, optimizer="sparse_adam", device="cpu").fit(loo.train, progress=False)
    snapshot = dict(outer.calls)
    assert snapshot["optimizer"] > 0 and snapshot["sampling"] == 1 and snapshot["dropout_masks"] == 0
    models.BPRMF(epochs=1, batch_size=4096, device="cpu").fit(loo.train, progress=False)
    assert outer.calls == snapshot
    # Stopped by an exception too: a new collection can start.
    with pytest.raises(RuntimeError):
        with profiling.native_timers():
            raise RuntimeError("boom")
    with profiling.native_timers() as again:
        pass
    assert again.total == 0.0

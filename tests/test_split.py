"""recforge.split on real data and on random data, against independent pandas/NumPy references."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recforge
from recforge import Interactions, split
from recforge.errors import ConfigError, SplitError


@pytest.fixture(scope="module")
def ml() -> recforge.Dataset:
    return recforge.datasets.movielens_small()


def frame(x: Interactions) -> pd.DataFrame:
    a = x.to_arrays()
    return pd.DataFrame({k: v for k, v in a.items() if v is not None})


def test_leave_one_out_on_movielens_matches_pandas(ml: recforge.Dataset) -> None:
    train, valid, test = split.leave_one_out(ml.interactions)
    assert (test.n_interactions, valid.n_interactions, train.n_interactions) == (610, 610, 99_616)
    for part in (train, valid, test):
        assert (part.n_users, part.n_items) == (610, 9742)
    # Reference: stable sort by (user, timestamp, input row); last -> test, second last -> valid.
    df = frame(ml.interactions).sort_values(["users", "timestamps", "rows"], kind="stable")
    last = df.groupby("users").tail(1)
    second = df.drop(last.index).groupby("users").tail(1)
    assert sorted(frame(test)["rows"]) == sorted(last["rows"])
    assert sorted(frame(valid)["rows"]) == sorted(second["rows"])
    # No leakage: every input row is in exactly one part.
    rows = np.concatenate([frame(p)["rows"].to_numpy() for p in (train, valid, test)])
    assert np.array_equal(np.sort(rows), np.arange(ml.n_interactions))


def test_leave_one_out_tie_break_is_the_input_row_order() -> None:
    # User 0's last two interactions share a timestamp; the later input row is the test item.
    x = Interactions.from_arrays([0, 0, 0, 0], [7, 8, 9, 6], timestamps=[5, 9, 9, 1])
    train, valid, test = split.leave_one_out(x)
    assert test.user_items(0).tolist() == [9]
    assert valid.user_items(0).tolist() == [8]
    assert train.user_items(0).tolist() == [6, 7]
    # The same rows in another input order give the tie to the other item.
    y = Interactions.from_arrays([0, 0, 0, 0], [9, 8, 7, 6], timestamps=[9, 9, 5, 1])
    assert split.leave_one_out(y).test.user_items(0).tolist() == [8]


def test_short_users_policies() -> None:
    x = Interactions.from_arrays([0, 0, 0, 1, 1, 2], [0, 1, 2, 0, 1, 3], timestamps=[1, 2, 3, 1, 2, 1])
    s = split.leave_one_out(x)
    assert s.report["n_short_users"] == 2
    assert s.train.user_items(1).tolist() == [0, 1]
    d = split.leave_one_out(x, short_users="drop")
    assert d.report["n_dropped_users"] == 2 and d.report["n_dropped_interactions"] == 3
    assert d.train.n_interactions + d.valid.n_interactions + d.test.n_interactions == 3
    with pytest.raises(SplitError, match="2 of 3 users have 1 or 2"):
        split.leave_one_out(x, short_users="raise")
    with pytest.raises(ConfigError, match="short_users"):
        split.leave_one_out(x, short_users="keep")  # type: ignore[arg-type]


def recbole_counts(n: int, f: tuple[float, float, float]) -> list[int]:
    """RecBole's split_by_ratio sizes, written out independently."""
    cnt = [int(f[1] * n), int(f[2] * n)]
    cnt = [n - sum(cnt)] + cnt
    for i in (2, 1):
        if cnt[0] <= 1:
            break
        if 0 < f[i] * n < 1:
            cnt[i] += 1
            cnt[0] -= 1
    return cnt


def test_ratio_per_user_counts_and_seed(ml: recforge.Dataset) -> None:
    f = (0.8, 0.1, 0.1)
    a = split.ratio(ml.interactions, f, seed=3)
    b = split.ratio(ml.interactions, f, seed=3)
    c = split.ratio(ml.interactions, f, seed=4)
    assert a.train == b.train and a.valid == b.valid and a.test == b.test
    assert a.test != c.test
    deg = ml.interactions.user_degrees()
    expected = np.array([recbole_counts(int(n), f) for n in deg])
    for k, part in enumerate((a.train, a.valid, a.test)):
        assert part.user_degrees().tolist() == expected[:, k].tolist()
    assert a.report["n_train"] + a.report["n_valid"] + a.report["n_test"] == ml.n_interactions


def test_ratio_time_per_user_puts_the_latest_in_test(ml: recforge.Dataset) -> None:
    s = split.ratio(ml.interactions, (0.7, 0.1, 0.2), order="time")
    tr, te = frame(s.train), frame(s.test)
    last_train = tr.groupby("users")["timestamps"].max()
    first_test = te.groupby("users")["timestamps"].min()
    assert (last_train.loc[first_test.index] <= first_test).all()


def test_ratio_global_time_split(ml: recforge.Dataset) -> None:
    s = split.ratio(ml.interactions, (0.8, 0.2), order="time", by_user=False)
    assert s.valid.n_interactions == 0
    assert s.test.n_interactions == int(0.2 * ml.n_interactions)
    # Reference: global stable order by (timestamp, row).
    df = frame(ml.interactions).sort_values(["timestamps", "rows"], kind="stable")
    n_train = ml.n_interactions - s.test.n_interactions
    assert sorted(frame(s.train)["rows"]) == sorted(df["rows"].iloc[:n_train])


@pytest.mark.parametrize("fractions", [(0.5, 0.6), (0.8, 0.1, 0.2), (0.0, 0.5, 0.5), (1.0, 0.0, 0.0, 0.0)])
def test_bad_fractions(ml: recforge.Dataset, fractions: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError):
        split.ratio(ml.interactions, fractions)


def test_bad_order_and_type(ml: recforge.Dataset) -> None:
    with pytest.raises(ConfigError, match="order"):
        split.ratio(ml.interactions, order="newest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected recforge.Interactions"):
        split.leave_one_out(frame(ml.interactions))  # type: ignore[arg-type]


def test_splits_do_not_depend_on_the_thread_count(ml: recforge.Dataset) -> None:
    code = (
        "import hashlib, recforge\n"
        "x = recforge.datasets.movielens_small().interactions\n"
        "h = hashlib.sha256()\n"
        "for s in (recforge.split.ratio(x, seed=11), recforge.split.leave_one_out(x)):\n"
        "    for p in s:\n"
        "        h.update(p.to_arrays()['rows'].tobytes())\n"
        "print(h.hexdigest())\n"
    )
    digests = set()
    for threads in ("1", "2", "5"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "RECFORGE_NUM_THREADS": threads},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def _rows_in_child(seed: int) -> list[int]:
    x = recforge.datasets.movielens_small().interactions
    return split.ratio(x, seed=seed).test.to_arrays()["rows"].tolist()


def test_parallel_work_still_runs_in_a_forked_child(ml: recforge.Dataset) -> None:
    # The parent has used the thread pool (loading and splitting run in parallel) before forking;
    # a forked child inherits none of its threads and must not wait for them forever.
    expected = split.ratio(ml.interactions, seed=5).test.to_arrays()["rows"].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, Python >= 3.12
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_rows_in_child, (5,)).get(timeout=120)
    assert got == expected


def test_k_core_on_movielens_matches_a_pandas_loop(ml: recforge.Dataset) -> None:
    core = ml.k_core(10)
    df = frame(ml.interactions)
    while True:  # reference: alternate filtering until stable
        u = df.groupby("users")["items"].transform("size")
        i = df.groupby("items")["users"].transform("size")
        keep = (u >= 10) & (i >= 10)
        if keep.all():
            break
        df = df[keep]
    assert core.n_interactions == len(df)
    assert core.n_users == df["users"].nunique() and core.n_items == df["items"].nunique()
    assert core.interactions.user_degrees().min() >= 10
    assert core.interactions.item_degrees().min() >= 10
    assert core.stats["kcore_dropped_interactions"] == ml.n_interactions - len(df)
    # Tables and maps follow the re-indexing: new item j is the movie with the same raw id.
    raw = core.item_map.raw()
    assert core.items["movieId"].tolist() == list(raw)
    assert set(core.items["movieId"]) == set(ml.items["movieId"].iloc[sorted(df["items"].unique())])


interactions_strategy = st.lists(
    st.tuples(st.integers(0, 9), st.integers(0, 14), st.integers(0, 4)), min_size=1, max_size=120
)


@settings(max_examples=50, deadline=None)
@given(interactions_strategy, st.integers(0, 2**32))
def test_property_splits_partition_and_respect_time(rows: list[tuple[int, int, int]], seed: int) -> None:
    users = np.array([r[0] for r in rows])
    items = np.array([r[1] for r in rows])
    ts = np.array([r[2] for r in rows])
    x = Interactions.from_arrays(users, items, timestamps=ts, n_users=10, n_items=15)
    for s in (
        split.leave_one_out(x),
        split.ratio(x, (0.6, 0.2, 0.2), order="random", seed=seed),
        split.ratio(x, (0.6, 0.2, 0.2), order="time"),
        split.ratio(x, (0.6, 0.2, 0.2), order="random", by_user=False, seed=seed),
    ):
        parts = [frame(p) for p in s]
        got = np.sort(np.concatenate([p["rows"].to_numpy() for p in parts]))
        assert np.array_equal(got, np.arange(len(rows)))  # a partition: no leak, nothing lost
        for p in s:
            assert (p.n_users, p.n_items) == (10, 15)
    # Temporal splits: per user, every train interaction is no later than any test one.
    for s in (split.leave_one_out(x), split.ratio(x, (0.6, 0.2, 0.2), order="time")):
        tr, te = frame(s.train), frame(s.test)
        for u, g in te.groupby("users"):
            t_train = tr[tr["users"] == u]
            if len(t_train):
                key_tr = list(zip(t_train["timestamps"], t_train["rows"]))
                key_te = list(zip(g["timestamps"], g["rows"]))
                assert max(key_tr) < min(key_te)
    # Same seed, same split.
    a = split.ratio(x, (0.6, 0.2, 0.2), seed=seed)
    b = split.ratio(x, (0.6, 0.2, 0.2), seed=seed)
    assert tuple(a) == tuple(b)

"""recforge.sampling and recforge.metrics.sampled on real data."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recforge
from recforge import Interactions, metrics, sampling
from recforge.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def ml() -> tuple[recforge.Dataset, Interactions, Interactions, Interactions]:
    ds = recforge.datasets.movielens_small()
    train, valid, test = recforge.split.leave_one_out(ds.interactions)
    return ds, train, valid, test


def seen_sets(*parts: Interactions) -> list[set[int]]:
    sets: list[set[int]] = [set() for _ in range(parts[0].n_users)]
    for p in parts:
        a = p.to_arrays()
        for u, i in zip(a["users"], a["items"]):
            sets[u].add(int(i))
    return sets


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(["uniform", "popularity"]), st.sampled_from([1, 100, 2000]))
def test_eval_negatives_never_hit_a_seen_item(ml, seed: int, strategy: str, n: int) -> None:  # type: ignore[no-untyped-def]
    ds, train, valid, test = ml
    neg = sampling.eval_negatives(test, [train, valid], n=n, strategy=strategy, seed=seed)  # type: ignore[arg-type]
    assert neg.shape == (ds.n_users, n) and neg.dtype == np.int64
    seen = seen_sets(train, valid, test)
    for u in range(ds.n_users):
        row = neg[u]
        assert len(set(row.tolist())) == n  # without replacement
        assert not seen[u] & set(row.tolist())
        assert row.min() >= 0 and row.max() < ds.n_items


def test_eval_negatives_seeded_and_thread_independent(ml) -> None:  # type: ignore[no-untyped-def]
    ds, train, valid, test = ml
    a = sampling.eval_negatives(test, [train, valid], seed=7)
    assert np.array_equal(a, sampling.eval_negatives(test, [train, valid], seed=7))
    assert not np.array_equal(a, sampling.eval_negatives(test, [train, valid], seed=8))
    code = (
        "import recforge, hashlib\n"
        "tr, va, te = recforge.split.leave_one_out(recforge.datasets.movielens_small().interactions)\n"
        "a = recforge.sampling.eval_negatives(te, [tr, va], seed=7, strategy='popularity')\n"
        "b = recforge.sampling.training_negatives(tr, 3, seed=7)\n"
        "print(hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "RECFORGE_NUM_THREADS": t},
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        for t in ("1", "2", "4")
    }
    assert len(digests) == 1


def test_users_without_test_items_get_minus_one_rows() -> None:
    test = Interactions.from_arrays([0], [1], n_users=2, n_items=10)
    neg = sampling.eval_negatives(test, n=3)
    assert (neg[1] == -1).all() and (neg[0] >= 0).all() and 1 not in neg[0]


def test_dense_user_falls_back_and_impossible_requests_fail() -> None:
    # User 0 has seen 97 of 100 items: exactly 3 negatives exist.
    train = Interactions.from_arrays(np.zeros(96, np.int64), np.arange(96), n_users=1, n_items=100)
    test = Interactions.from_arrays([0], [96], n_users=1, n_items=100)
    neg = sampling.eval_negatives(test, [train], n=3, seed=1)
    assert sorted(neg[0].tolist()) == [97, 98, 99]
    with pytest.raises(DataError, match="user 0 has fewer than 4 items"):
        sampling.eval_negatives(test, [train], n=4)
    tn = sampling.training_negatives(train, k=4, replace=False)
    assert tn.shape == (96, 4) and all(sorted(row) == [96, 97, 98, 99] for row in tn.tolist())
    with pytest.raises(DataError, match="user 0 has fewer than 5 items"):
        sampling.training_negatives(train, k=5, replace=False)


def test_popularity_sampling_follows_the_weights() -> None:
    n_items = 6
    w = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    users = np.arange(3000)
    test = Interactions.from_arrays(users, np.zeros(3000, np.int64), n_items=n_items)
    neg = sampling.eval_negatives(test, n=1, strategy="popularity", popularity=w, seed=3)
    counts = np.bincount(neg[:, 0], minlength=n_items)
    assert counts[0] == 0  # the test item, and weight 0
    expected = w[1:] / w[1:].sum() * 3000
    assert np.all(np.abs(counts[1:] - expected) < 4 * np.sqrt(expected) + 5)
    with pytest.raises(DataError, match="popularity has 2 weights"):
        sampling.eval_negatives(test, n=1, strategy="popularity", popularity=[1.0, 2.0])
    with pytest.raises(ConfigError, match="strategy"):
        sampling.eval_negatives(test, n=1, strategy="zipf")  # type: ignore[arg-type]


def test_training_negatives_on_movielens(ml) -> None:  # type: ignore[no-untyped-def]
    ds, train, valid, test = ml
    neg = sampling.training_negatives(train, k=4, seed=1)
    assert neg.shape == (train.n_interactions, 4)
    users = train.to_arrays()["users"]
    seen = seen_sets(train)
    bad = [u for u, row in zip(users, neg) if seen[u] & set(row.tolist())]
    assert not bad
    assert not np.array_equal(neg, sampling.training_negatives(train, k=4, seed=1, epoch=1))
    assert np.array_equal(neg, sampling.training_negatives(train, k=4, seed=1))
    pop = sampling.training_negatives(train, k=2, strategy="popularity", seed=1)
    deg = train.item_degrees()
    assert deg[pop].mean() > deg[neg].mean()  # popular items drawn more often


def test_sampled_metrics_by_hand() -> None:
    # User 0: test item 0 scores 0.5; negatives 1 (0.9), 2 (0.1), 3 (0.5 tie) -> rank 2 or 3.
    scores = np.array([[0.5, 0.9, 0.1, 0.5, 0.0]], dtype=np.float32)
    test = Interactions.from_arrays([0], [0], n_items=5)
    r = metrics.sampled(scores, test, np.array([[1, 2, 3]]), ks=(1, 2, 3), metrics=("hit", "mrr"))
    assert r["hit@1"] == 0 and r["hit@2"] == pytest.approx(0.5) and r["hit@3"] == 1
    assert r["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    with pytest.raises(DataError, match="contain its test item 0"):
        metrics.sampled(scores, test, np.array([[0, 2, 3]]))
    with pytest.raises(DataError, match="twice"):
        metrics.sampled(scores, test, np.array([[2, 2, 3]]))
    with pytest.raises(DataError, match=r"\[n_users = 1, N\]"):
        metrics.sampled(scores, test, np.array([1, 2, 3]))


def test_sampled_equals_full_ranking_restricted_to_candidates(ml) -> None:  # type: ignore[no-untyped-def]
    ds, train, valid, test = ml
    neg = sampling.eval_negatives(test, [train, valid], n=100, seed=0)
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((ds.n_users, ds.n_items)).astype(np.float32)
    r = metrics.sampled(scores, test, neg, ks=(10,), metrics=("hit", "ndcg"), per_user=True)
    t = test.to_arrays()
    pos = scores[t["users"], t["items"]]
    neg_scores = np.take_along_axis(scores, neg, axis=1)
    rank = 1 + (neg_scores > pos[:, None]).sum(axis=1)
    assert np.allclose(r["per_user"]["hit@10"], rank <= 10)
    assert np.allclose(r["per_user"]["ndcg@10"], np.where(rank <= 10, 1 / np.log2(rank + 1), 0))


def test_corrected_estimate_is_far_closer_to_full_ranking(ml) -> None:  # type: ignore[no-untyped-def]
    ds, train, valid, test = ml
    pop = train.item_degrees().astype(np.float32)
    scores = np.tile(pop, (ds.n_users, 1))
    full = metrics.full_ranking(scores, test, [train, valid], ks=(10,), metrics=("hit",))["hit@10"]
    neg = sampling.eval_negatives(test, [train, valid], n=100, seed=0)
    s = metrics.sampled(scores, test, neg, ks=(10,), metrics=("hit",), corrected=True, exclude=[train, valid])
    assert s["n_users_corrected"] == ds.n_users
    raw_err = abs(s["hit@10"] - full)
    corrected_err = abs(s["corrected_hit@10"] - full)
    assert raw_err > 0.5  # sampled Hit@10 (0.61) says nothing about full Hit@10 (0.04)
    assert corrected_err < 0.05 and corrected_err < raw_err / 10

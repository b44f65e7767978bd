"""recforge.metrics against hand-computed cases and slow, obviously correct NumPy references."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from typing import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recforge
from recforge import Interactions, metrics
from recforge.errors import ConfigError, DataError

ALL = ("hit", "recall", "precision", "ndcg", "mrr", "map")


def metric_from_ranks(ranks: Sequence[int], n_rel: int, k: int, name: str) -> float:
    """Metric of one user from the 1-based ranks of its relevant items (the textbook formulas)."""
    ranks = sorted(ranks)
    inside = [r for r in ranks if r <= k]
    if name == "hit":
        return float(bool(inside))
    if name == "recall":
        return len(inside) / n_rel
    if name == "precision":
        return len(inside) / k
    if name == "ndcg":
        dcg = sum(1 / np.log2(r + 1) for r in inside)
        return dcg / sum(1 / np.log2(p + 1) for p in range(1, min(n_rel, k) + 1))
    if name == "mrr":
        return 1 / inside[0] if inside else 0.0
    if name == "map":
        return sum((j + 1) / r for j, r in enumerate(inside)) / min(n_rel, k)
    raise ValueError(name)


def reference(
    scores: np.ndarray, test: list[set[int]], exclude: list[set[int]], k: int, name: str, exact_ties: bool
) -> list[float]:
    """Per-user values. With ``exact_ties`` the metric is averaged over every order of the
    candidates that is consistent with the scores (brute force); otherwise candidates are sorted
    by score (stable) and ranks read off directly."""
    out = []
    for u, rel in enumerate(test):
        if not rel:
            continue
        cands = [i for i in range(scores.shape[1]) if i not in exclude[u] or i in rel]
        if not exact_ties:
            order = sorted(cands, key=lambda i: -scores[u, i])
            ranks = [order.index(i) + 1 for i in rel]
            out.append(metric_from_ranks(ranks, len(rel), k, name))
            continue
        values = []
        for perm in itertools.permutations(cands):
            s = [scores[u, i] for i in perm]
            if all(s[j] >= s[j + 1] for j in range(len(s) - 1)):
                values.append(metric_from_ranks([perm.index(i) + 1 for i in rel], len(rel), k, name))
        out.append(float(np.mean(values)))
    return out


def to_interactions(sets: list[set[int]], n_items: int) -> Interactions:
    users = [u for u, s in enumerate(sets) for _ in s]
    items = [i for s in sets for i in sorted(s)]
    return Interactions.from_arrays(
        np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), n_users=len(sets), n_items=n_items
    )


def test_hand_computed_user() -> None:
    # 1 user, 6 items. Train: item 0 (masked). Test: items 2 and 4.
    # Candidates by score: 3 (0.9), 2 (0.8), 5 (0.5), 4 (0.4), 1 (0.1) -> test ranks 2 and 4.
    scores = np.array([[1.0, 0.1, 0.8, 0.9, 0.4, 0.5]], dtype=np.float32)
    test = to_interactions([{2, 4}], 6)
    train = to_interactions([{0}], 6)
    r = metrics.full_ranking(scores, test, [train], ks=(1, 3, 10), metrics=ALL)
    idcg2 = 1 + 1 / np.log2(3)
    expected = {
        "hit@1": 0, "hit@3": 1, "hit@10": 1,
        "recall@1": 0, "recall@3": 0.5, "recall@10": 1,
        "precision@1": 0, "precision@3": 1 / 3, "precision@10": 0.2,
        "ndcg@1": 0, "ndcg@3": (1 / np.log2(3)) / idcg2, "ndcg@10": (1 / np.log2(3) + 1 / np.log2(5)) / idcg2,
        "mrr@1": 0, "mrr@3": 0.5, "mrr@10": 0.5,
        "map@1": 0, "map@3": 0.5 / 2, "map@10": (1 / 2 + 2 / 4) / 2,
    }  # fmt: skip
    for key, v in expected.items():
        assert r[key] == pytest.approx(v, abs=1e-12), key
    assert r["n_users"] == 1 and r["n_users_skipped"] == 0


def test_ties_are_expected_values_by_hand() -> None:
    # Test item 1 ties with items 0 and 2 at the top: rank 1, 2 or 3 with probability 1/3 each.
    scores = np.array([[0.5, 0.5, 0.5, 0.1]], dtype=np.float32)
    test = to_interactions([{1}], 4)
    r = metrics.full_ranking(scores, test, ks=(1, 2), metrics=("hit", "mrr", "ndcg"))
    assert r["hit@1"] == pytest.approx(1 / 3)
    assert r["hit@2"] == pytest.approx(2 / 3)
    assert r["mrr@2"] == pytest.approx((1 + 1 / 2) / 3)
    assert r["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 3)
    p = metrics.full_ranking(scores, test, ks=(1, 3), metrics=("hit",), ties="pessimistic")
    assert p["hit@1"] == 0 and p["hit@3"] == 1


def test_users_without_test_items_are_skipped_and_counted_and_k_beyond_items() -> None:
    scores = np.array([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]], dtype=np.float32)
    test = to_interactions([{2}, set(), {0}], 3)
    r = metrics.full_ranking(scores, test, ks=(50,), metrics=("hit", "precision", "ndcg"))
    assert r["n_users"] == 2 and r["n_users_skipped"] == 1
    assert r["hit@50"] == 1.0
    assert r["precision@50"] == pytest.approx(1 / 50)  # divided by K, not by the 3 candidates
    assert r["ndcg@50"] == pytest.approx(np.mean([1 / np.log2(4), np.mean([1, 1 / np.log2(3), 0.5])]))


def test_constant_scores_give_the_random_ranking_value_on_movielens() -> None:
    ds = recforge.datasets.movielens_small()
    train, valid, test = recforge.split.leave_one_out(ds.interactions)
    scores = np.zeros((ds.n_users, ds.n_items), dtype=np.float32)
    r = metrics.full_ranking(scores, test, [train, valid], ks=(20,), metrics=("hit",), per_user=True)
    n_cand = r["per_user"]["n_candidates"]
    # Reference candidate counts from Python sets.
    a, b = train.to_arrays(), valid.to_arrays()
    for u in (0, 17, 609):
        seen = set(a["items"][a["users"] == u]) | set(b["items"][b["users"] == u])
        seen.discard(int(test.user_items(u)[0]))
        assert n_cand[u] == ds.n_items - len(seen)
    assert r["hit@20"] == pytest.approx(float(np.mean(20 / n_cand)), abs=1e-12)
    assert np.allclose(r["per_user"]["hit@20"], 20 / n_cand)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4), st.integers(2, 6), st.integers(0, 10_000), st.sampled_from([(1,), (2, 5), (3,)])
)
def test_random_small_cases_with_ties_match_brute_force(
    n_users: int, n_items: int, seed: int, ks: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(n_users, n_items)).astype(np.float32)  # many ties
    test = [set(rng.choice(n_items, rng.integers(0, 3), replace=False).tolist()) for _ in range(n_users)]
    exclude = [set(rng.choice(n_items, rng.integers(0, n_items // 2 + 1), replace=False).tolist()) - test[u] for u in range(n_users)]
    if not any(test):
        return
    r = metrics.full_ranking(
        scores, to_interactions(test, n_items), [to_interactions(exclude, n_items)], ks=ks, metrics=ALL, per_user=True
    )
    for name in ALL:
        for k in ks:
            want = reference(scores, test, exclude, k, name, exact_ties=True)
            assert np.allclose(r["per_user"][f"{name}@{k}"], want, atol=1e-9), (name, k)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(5, 300), st.integers(0, 10_000))
def test_random_larger_cases_match_sorting_reference(n_users: int, n_items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.stack([rng.permutation(n_items) for _ in range(n_users)]).astype(np.float32)  # no ties
    test = [set(rng.choice(n_items, rng.integers(0, 6), replace=False).tolist()) for _ in range(n_users)]
    exclude = [set(rng.choice(n_items, rng.integers(0, n_items // 3 + 1), replace=False).tolist()) for _ in range(n_users)]
    if not any(test):
        return
    ks = (1, 5, 20)
    r = metrics.full_ranking(
        scores, to_interactions(test, n_items), [to_interactions(exclude, n_items)], ks=ks, metrics=ALL, per_user=True
    )
    for name in ALL:
        for k in ks:
            want = reference(scores, test, exclude, k, name, exact_ties=False)
            assert np.allclose(r["per_user"][f"{name}@{k}"], want, atol=1e-6), (name, k)
            assert r[f"{name}@{k}"] == pytest.approx(np.mean(want), abs=1e-6)


@pytest.fixture(scope="module")
def ml_split() -> tuple[recforge.Dataset, Interactions, Interactions, Interactions, np.ndarray]:
    ds = recforge.datasets.movielens_small()
    train, valid, test = recforge.split.leave_one_out(ds.interactions)
    rng = np.random.default_rng(0)
    scores = (rng.standard_normal((ds.n_users, 16)) @ rng.standard_normal((16, ds.n_items))).astype(np.float32)
    return ds, train, valid, test, scores


def test_score_sources_batch_sizes_and_threads_agree(ml_split) -> None:  # type: ignore[no-untyped-def]
    ds, train, valid, test, scores = ml_split
    kw = dict(ks=(5, 20), metrics=ALL + ("coverage",))
    base = metrics.full_ranking(scores, test, [train, valid], **kw)
    assert 0 < base["coverage@20"] <= 1
    for b in (1, 7, 1000):
        assert metrics.full_ranking(scores, test, [train, valid], batch_size=b, **kw) == base
    assert metrics.full_ranking(scores.astype(np.float64), test, [train, valid], **kw) == base
    assert metrics.full_ranking(torch.from_numpy(scores), test, [train, valid], batch_size=64, **kw) == base
    assert metrics.full_ranking(lambda u: scores[u], test, [train, valid], batch_size=50, **kw) == base
    assert metrics.full_ranking(lambda u: torch.from_numpy(scores[u]), test, [train, valid], **kw) == base
    code = (
        "import numpy as np, recforge, json\n"
        "ds = recforge.datasets.movielens_small()\n"
        "tr, va, te = recforge.split.leave_one_out(ds.interactions)\n"
        "rng = np.random.default_rng(0)\n"
        "s = (rng.standard_normal((ds.n_users, 16)) @ rng.standard_normal((16, ds.n_items))).astype(np.float32)\n"
        "print(json.dumps(recforge.metrics.full_ranking(s, te, [tr, va], ks=(5, 20), batch_size=33)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "RECFORGE_NUM_THREADS": "1"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    import json

    one_thread = json.loads(out.stdout)
    for key, v in metrics.full_ranking(scores, test, [train, valid], ks=(5, 20)).items():
        assert one_thread[key] == v, key


@pytest.mark.gpu  # deselected by conftest where no CUDA device is visible
def test_cuda_tensor_scores(ml_split) -> None:  # type: ignore[no-untyped-def]
    ds, train, valid, test, scores = ml_split
    base = metrics.full_ranking(scores, test, [train, valid])
    assert metrics.full_ranking(torch.from_numpy(scores).cuda(), test, [train, valid]) == base


def test_bad_input(ml_split) -> None:  # type: ignore[no-untyped-def]
    ds, train, valid, test, scores = ml_split
    with pytest.raises(DataError, match="shape"):
        metrics.full_ranking(scores[:, :10], test, [train])
    bad = scores.copy()
    bad[3, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        metrics.full_ranking(bad, test, [train])
    with pytest.raises(ConfigError, match="unknown metric"):
        metrics.full_ranking(scores, test, [train], metrics=("auc",))
    with pytest.raises(ConfigError, match="ties"):
        metrics.full_ranking(scores, test, [train], ties="random")
    with pytest.raises(ConfigError, match="ks"):
        metrics.full_ranking(scores, test, [train], ks=(0,))
    with pytest.raises(ConfigError, match="recforge.Interactions"):
        metrics.full_ranking(scores, test, [scores])  # type: ignore[list-item]
    other = to_interactions([{0}], ds.n_items)
    with pytest.raises(DataError, match="one id space"):
        metrics.full_ranking(scores, test, [other])
    with pytest.raises(DataError, match=r"got \(3, 9742\)"):
        metrics.full_ranking(lambda u: scores[:3], test, [train])

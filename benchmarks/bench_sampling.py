"""Negative sampling speed: recforge against NumPy rejection sampling, in one process.

Run: python benchmarks/bench_sampling.py [--users 100000 --items 20000]

- eval negatives: 100 distinct negatives per user, none of them an item the user has in
  train/valid/test. Reference: per user, draw a batch of candidates with NumPy, drop seen items and
  repeats, draw again until 100 are found (the loop most evaluation scripts contain).
- training negatives: 1 negative per training interaction, never a training item of the user.
  Reference: fully vectorised NumPy rejection (draw for all, find collisions with a sorted
  (user, item) key array, redraw only the collisions until none is left).
Each reference's output is checked for validity; times are the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

import recforge


def best(fn: Callable, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def numpy_eval_negatives(indptr, indices, users, n_items, n, seed):
    rng = np.random.default_rng(seed)
    out = np.full((len(indptr) - 1, n), -1, dtype=np.int64)
    for u in users:
        seen = indices[indptr[u] : indptr[u + 1]]
        got = np.empty(0, dtype=np.int64)
        while len(got) < n:
            cand = rng.integers(0, n_items, 2 * n)
            cand = cand[~np.isin(cand, seen)]
            got = np.concatenate([got, cand])
            _, first = np.unique(got, return_index=True)
            got = got[np.sort(first)]
        out[u] = got[:n]
    return out


def numpy_training_negatives(users, items, n_items, seed):
    rng = np.random.default_rng(seed)
    keys = np.unique(users.astype(np.int64) * n_items + items)
    neg = rng.integers(0, n_items, len(users))
    todo = np.arange(len(users))
    while len(todo):
        k = users[todo].astype(np.int64) * n_items + neg[todo]
        pos = np.searchsorted(keys, k)
        hit = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == k)
        todo = todo[hit]
        neg[todo] = rng.integers(0, n_items, len(todo))
    return neg


def check_no_seen(neg_rows: np.ndarray, users: np.ndarray, key_set: np.ndarray, n_items: int) -> None:
    valid = neg_rows >= 0
    keys = np.repeat(users, neg_rows.shape[1]).reshape(neg_rows.shape)[valid] * n_items + neg_rows[valid]
    assert not np.isin(keys, key_set).any()


def run(name: str, x: recforge.Interactions, repeat: int) -> list[str]:
    s = recforge.split.leave_one_out(x)
    allx = recforge.Interactions.concat([s.train, s.valid, s.test])
    a = allx.to_arrays()
    n_items = x.n_items
    key_set = np.unique(a["users"] * n_items + a["items"])
    users = np.flatnonzero(s.test.user_degrees() > 0)
    ours = recforge.sampling.eval_negatives(s.test, [s.train, s.valid], n=100, seed=0)
    ref = numpy_eval_negatives(allx.indptr, allx.indices, users, n_items, 100, 0)
    for arr in (ours, ref):
        check_no_seen(arr[users], users, key_set, n_items)
    t_ours = best(lambda: recforge.sampling.eval_negatives(s.test, [s.train, s.valid], n=100, seed=0), repeat)
    t_ref = best(lambda: numpy_eval_negatives(allx.indptr, allx.indices, users, n_items, 100, 0), repeat)
    tr = s.train.to_arrays()
    tk = np.unique(tr["users"] * n_items + tr["items"])
    ours_t = recforge.sampling.training_negatives(s.train, 1, seed=0)
    ref_t = numpy_training_negatives(tr["users"], tr["items"], n_items, 0)
    check_no_seen(ours_t, tr["users"], tk, n_items)
    check_no_seen(ref_t[:, None], tr["users"], tk, n_items)
    t_ours_t = best(lambda: recforge.sampling.training_negatives(s.train, 1, seed=0), repeat)
    t_ref_t = best(lambda: numpy_training_negatives(tr["users"], tr["items"], n_items, 0), repeat)
    return [
        f"| {name} | 100 eval negatives per user | {t_ours:.4f} | {t_ref:.4f} | {t_ref / t_ours:.0f}x |",
        f"| {name} | 1 training negative per interaction | {t_ours_t:.4f} | {t_ref_t:.4f} | {t_ref_t / t_ours_t:.1f}x |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--per-user", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    lines = run("ml-latest-small", recforge.datasets.movielens_small().interactions, args.repeat)
    rng = np.random.default_rng(1)
    n = args.users * (args.per_user + 2)
    users = np.repeat(np.arange(args.users), args.per_user + 2)
    items = (rng.zipf(1.2, n) - 1) % args.items
    x = recforge.Interactions.from_arrays(users, items, timestamps=np.arange(n))
    lines += run(f"synthetic {args.users:,} x {args.items:,}", x, args.repeat)
    print(f"recforge {recforge.__version__}, {recforge.num_threads()} threads, numpy {np.__version__}, best of {args.repeat}")
    print("| data | task | recforge (s) | NumPy (s) | speed-up |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

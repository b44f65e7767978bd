"""Full-ranking evaluation speed: recforge against a vectorised NumPy implementation
(argpartition + masking) and torch.topk with masking, in one process, on the same score batches.

Run: python benchmarks/bench_eval.py [--users 100000 --items 20000 --batch 1024]

Task: HR@20 and NDCG@20 with each user's training items masked, one held-out item per user
(leave-one-out). Scores arrive batch by batch from one score function shared by all three (its
own cost is measured alone and subtracted in the "evaluation" column), so no implementation holds
the full matrix. Peak RSS is the whole process's (torch included) right after recforge's run. The NumPy and
torch versions break ties arbitrarily; recforge computes the expected value under random
tie-breaking (scores here are continuous, so the results agree, which the script checks).
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Callable

import numpy as np
import torch

import recforge


def reference_numpy(score: Callable, users: np.ndarray, test_item: np.ndarray, seen, k: int, batch: int):
    hits, ndcgs = [], []
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for s0 in range(0, len(users), batch):
        u = users[s0 : s0 + batch]
        s = np.array(score(u), dtype=np.float32, copy=True)
        rows, cols = seen(u)
        s[rows, cols] = -np.inf
        top = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        match = top == test_item[u][:, None]
        hits.append(match.any(axis=1))
        ndcgs.append((match * disc).sum(axis=1))
    return float(np.concatenate(hits).mean()), float(np.concatenate(ndcgs).mean())


def reference_torch(score: Callable, users: np.ndarray, test_item: np.ndarray, seen, k: int, batch: int):
    hits, ndcgs = [], []
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))
    for s0 in range(0, len(users), batch):
        u = users[s0 : s0 + batch]
        s = torch.from_numpy(np.asarray(score(u), dtype=np.float32)).clone()
        rows, cols = seen(u)
        s[torch.from_numpy(rows), torch.from_numpy(cols)] = -torch.inf
        top = torch.topk(s, k, dim=1).indices
        match = top == torch.from_numpy(test_item[u])[:, None]
        hits.append(match.any(dim=1))
        ndcgs.append((match * disc).sum(dim=1))
    return float(torch.cat(hits).float().mean()), float(torch.cat(ndcgs).mean())


REPEAT = 3


def timed(fn: Callable) -> tuple[float, object]:
    """Best wall time of REPEAT runs, and the last result."""
    best, out = float("inf"), None
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_case(name: str, train: recforge.Interactions, test: recforge.Interactions, batch: int, k: int) -> list[str]:
    n_users, n_items = test.n_users, test.n_items
    rng = np.random.default_rng(0)
    dim = 32
    user_f = rng.standard_normal((n_users, dim)).astype(np.float32)
    item_f = rng.standard_normal((dim, n_items)).astype(np.float32)

    def score(u: np.ndarray) -> np.ndarray:
        return user_f[u] @ item_f

    indptr, indices = train.indptr, train.indices

    def seen(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lens = indptr[u + 1] - indptr[u]
        rows = np.repeat(np.arange(len(u)), lens)
        cols = np.concatenate([indices[indptr[x] : indptr[x + 1]] for x in u]) if len(u) else rows
        # As in recforge, a held-out item that the user also has in train stays a candidate.
        keep = cols != test_item[u][rows]
        return rows[keep], cols[keep]

    users = np.flatnonzero(test.user_degrees() > 0)
    t = test.to_arrays()
    test_item = np.full(n_users, -1, dtype=np.int64)
    test_item[t["users"]] = t["items"]

    def generate_only() -> None:
        for s0 in range(0, len(users), batch):
            score(users[s0 : s0 + batch])

    t_ours, ours = timed(
        lambda: recforge.metrics.full_ranking(
            score, test, [train], ks=(k,), metrics=("hit", "ndcg"), batch_size=batch
        )
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_gen, _ = timed(generate_only)
    t_np, ref_np = timed(lambda: reference_numpy(score, users, test_item, seen, k, batch))
    t_torch, ref_t = timed(lambda: reference_torch(score, users, test_item, seen, k, batch))
    for ref in (ref_np, ref_t):
        assert abs(ours[f"hit@{k}"] - ref[0]) < 1e-6 and abs(ours[f"ndcg@{k}"] - ref[1]) < 1e-5, (ours, ref)
    ev = t_ours - t_gen
    return [
        f"| {name} | recforge `full_ranking` | {t_ours:.3f} | {ev:.3f} | 1.0x | {peak_mb:.0f} MB |",
        f"| {name} | NumPy argpartition + mask | {t_np:.3f} | {t_np - t_gen:.3f} | {(t_np - t_gen) / ev:.1f}x | |",
        f"| {name} | torch.topk + mask (CPU) | {t_torch:.3f} | {t_torch - t_gen:.3f} | {(t_torch - t_gen) / ev:.1f}x | |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--per-user", type=int, default=10, help="training items per synthetic user")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = ap.parse_args()
    global REPEAT
    REPEAT = args.repeat
    lines = []
    ds = recforge.datasets.movielens_small()
    tr, va, te = recforge.split.leave_one_out(ds.interactions)
    lines += run_case("ml-latest-small 610 x 9,742", recforge.Interactions.concat([tr, va]), te, args.batch, args.k)
    rng = np.random.default_rng(1)
    n = args.users * (args.per_user + 1)
    users = np.repeat(np.arange(args.users), args.per_user + 1)
    items = (rng.zipf(1.2, n) - 1) % args.items
    x = recforge.Interactions.from_arrays(users, items, timestamps=np.arange(n))
    s = recforge.split.leave_one_out(x)
    train = recforge.Interactions.concat([s.train, s.valid])
    lines += run_case(f"synthetic {args.users:,} x {args.items:,}", train, s.test, args.batch, args.k)
    print(f"recforge {recforge.__version__}, {recforge.num_threads()} threads; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); HR@{args.k} + NDCG@{args.k}, batches of {args.batch} users, best of {REPEAT}")
    print("| data | implementation | total s | evaluation s (total - score generation) | time / recforge's | peak RSS after recforge |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Data-layer speed: recforge (Rust) against the pandas/NumPy way of doing the same thing.

Run: python benchmarks/bench_data.py [--interactions 5000000]
Prints, for each task, the best-of-N wall time of both and the speed-up (pandas time / recforge
time). The pandas versions are the idiomatic ones a researcher would write (stable sorts, groupby
cumcount), and each is checked to give the same result as recforge before it is timed.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import pandas as pd

import recforge


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def synthetic(n: int, n_users: int, n_items: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = (rng.zipf(1.3, n) - 1) % n_items
    ts = rng.integers(0, n // 10, n)  # many equal timestamps: the tie-break matters
    return pd.DataFrame({"user": users, "item": items, "ts": ts})


def pandas_csr(df: pd.DataFrame) -> np.ndarray:
    s = df.assign(row=np.arange(len(df))).sort_values(["user", "ts", "row"], kind="stable")
    return s["row"].to_numpy()


def pandas_loo(df: pd.DataFrame) -> np.ndarray:
    s = df.assign(row=np.arange(len(df))).sort_values(["user", "ts", "row"], kind="stable")
    pos_from_end = s.groupby("user").cumcount(ascending=False).to_numpy()
    size = s.groupby("user")["row"].transform("size").to_numpy()
    test = (pos_from_end == 0) & (size >= 3)
    return np.sort(s["row"].to_numpy()[test])


def pandas_kcore(df: pd.DataFrame, k: int) -> int:
    d = df
    while True:
        keep = (d.groupby("user")["item"].transform("size") >= k) & (
            d.groupby("item")["user"].transform("size") >= k
        )
        if keep.all():
            return len(d)
        d = d[keep]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    cases = [("ml-latest-small", None), (f"synthetic {args.interactions:,}", args.interactions)]
    for name, n in cases:
        if n is None:
            a = recforge.datasets.movielens_small().interactions.to_arrays()
            df = pd.DataFrame(
                {"user": a["users"], "item": a["items"], "ts": a["timestamps"]}
            ).iloc[np.argsort(a["rows"])].reset_index(drop=True)
        else:
            df = synthetic(n, n // 40, n // 100)
        u, i, t = (df[c].to_numpy() for c in ("user", "item", "ts"))
        x = recforge.Interactions.from_arrays(u, i, timestamps=t)
        # Same answers first.
        assert np.array_equal(x.to_arrays()["rows"], pandas_csr(df))
        loo = recforge.split.leave_one_out(x)
        assert np.array_equal(np.sort(loo.test.to_arrays()["rows"]), pandas_loo(df))
        assert recforge.split.k_core(x, 5)[0].n_interactions == pandas_kcore(df, 5)
        tasks = [
            ("build CSR (sort by user, time, row)", lambda: recforge.Interactions.from_arrays(u, i, timestamps=t), lambda: pandas_csr(df)),
            ("leave-one-out split", lambda: recforge.split.leave_one_out(x), lambda: pandas_loo(df)),
            ("5-core filter", lambda: recforge.split.k_core(x, 5), lambda: pandas_kcore(df, 5)),
        ]  # fmt: skip
        for task, ours, ref in tasks:
            t_ours = best_of(ours, args.repeat)
            t_ref = best_of(ref, args.repeat)
            rows.append((name, task, t_ours, t_ref, t_ref / t_ours))
    print(f"recforge {recforge.__version__}, {recforge.num_threads()} threads, pandas {pd.__version__}")
    print(f"| data | task | recforge (s) | pandas (s) | speed-up |")
    print(f"|---|---|---:|---:|---:|")
    for name, task, a, b, r in rows:
        print(f"| {name} | {task} | {a:.4f} | {b:.4f} | {r:.1f}x |")


if __name__ == "__main__":
    main()

"""Scale (issue #19): training speed and memory of BPR-MF and FM at the size of the Kindle data set
of the CLLM4Rec paper (100K users, 349K items, up to 8M interactions), recforge against a lean
plain-PyTorch loop, and how both grow from 1M to 8M interactions.

Run: python benchmarks/bench_scale.py [--sizes 1000000 2000000 4000000 8000000 --epochs 1
     --batch-size 4096 --optimizer sparse_adam --threads N --json scale.json]
Quick check: python benchmarks/bench_scale.py --users 2000 --items 5000 --sizes 50000 100000

Data (synthetic, seeded with numpy ``default_rng(0)``): for each requested size n, every user gets
one interaction and the other n - users are drawn with user activity skewed (lognormal weights,
sigma 1) and item popularity power-law (Zipf-like: ``p_i ∝ 1 / (rank_i + 1) ** alpha``,
``--alpha 1.0`` by default, ranks a random permutation of the item ids). Duplicate (user, item)
pairs are removed and more drawn the same way until exactly n distinct pairs remain (the first
draw keeps every user); rows are shuffled and timestamps increase along them. No split: each model trains on all of
it, without validation.

Models: recforge ``BPRMF`` (dim 64, Adam lr 0.005, reg 1e-4) and ``FM(loss="bce",
lr=0.005, reg=0.0)`` over the user id and item id only, against the lean loop, the strongest plain
PyTorch an engineer writes (as in benchmarks/bench_train.py): ``nn.Embedding`` tables (normal init,
std 0.1), batches sliced from tensors after one ``torch.randperm`` per epoch, negatives from one
``torch.randint`` per epoch (uniform, no rejection of positives), the same loss (BPR-MF:
``-log sigmoid(p_u.q_i - p_u.q_j)`` + 1e-4 x the batch-mean squared norm of the rows used, as
recforge; FM: BCE on the positive and on the negative, ``w0 + w_u + w_i + <v_u, v_i>``, which is
the first-order + pairwise FM over the two one-hot features). ``--optimizer sparse_adam`` (default):
``nn.Embedding(sparse=True)`` + ``torch.optim.SparseAdam`` for the tables and ``torch.optim.Adam``
for the FM's global bias; ``--optimizer adam``: dense tables + ``torch.optim.Adam``.

Each (model, size, implementation) runs in a fresh child process (this script with hidden
arguments) that generates the data, imports, builds its input (``recforge.Interactions`` /
tensors), warms up (the same training on 64 interactions: one-time lazy initialisation, e.g.
``torch.optim`` importing ``torch._dynamo`` on its first step, is not training), then trains. Seconds per epoch = wall time of training (recforge: the whole ``fit``;
lean: model and optimizer creation plus the epochs) / epochs. "Peak MiB" = the child's peak RSS
during training (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, its high-water mark reset after
data generation through /proc/self/clear_refs on Linux) minus its RSS just before training (after
data generation, imports and the input): the memory training adds on top of the data. After the
table, a least-squares line of s/epoch against interactions per model and implementation (slope in
seconds per million interactions, R^2) and time(largest) / time(smallest) against the size ratio,
so "grows linearly" can be read off. ``--json PATH`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return maxrss_mib()


def maxrss_mib() -> float:
    """``ru_maxrss`` of this process in MiB (KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


def reset_peak() -> bool:
    """Reset the RSS high-water mark (Linux >= 4.0), so ``ru_maxrss`` is this phase's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_data(n_users: int, n_items: int, n: int, alpha: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, timestamps): n distinct pairs (every user at least once, skewed activity,
    Zipf-like item popularity), shuffled, timestamps increasing along the rows."""
    if n < n_users:
        raise SystemExit(f"size {n} is below --users {n_users}: every user needs an interaction")
    rng = np.random.default_rng(seed)
    item_p = 1.0 / (rng.permutation(n_items).astype(np.float64) + 1.0) ** alpha
    user_w = rng.lognormal(0.0, 1.0, n_users)

    def draw(weights: np.ndarray, k: int) -> np.ndarray:
        cdf = np.cumsum(weights)
        return np.minimum(np.searchsorted(cdf, rng.random(k) * cdf[-1], side="right"), len(weights) - 1)

    if n > n_users * n_items:
        raise SystemExit(f"size {n} exceeds users x items")
    # One interaction per user, then n - users distinct other pairs: duplicates are removed and
    # more pairs drawn the same way until enough remain.
    first = np.arange(n_users, dtype=np.int64) * n_items + draw(item_p, n_users)
    rest = np.empty(0, dtype=np.int64)
    while len(rest) < n - n_users:
        k = int((n - n_users - len(rest)) * 1.2) + 16
        more = draw(user_w, k) * n_items + draw(item_p, k)
        rest = np.setdiff1d(np.concatenate([rest, more]), first)
    rest = rest[rng.permutation(len(rest))[: n - n_users]]
    keys = np.concatenate([first, rest])
    keys = keys[rng.permutation(n)]
    users, items = keys // n_items, keys % n_items
    stamps = 1_600_000_000 + np.arange(len(keys), dtype=np.int64)
    return users, items, stamps


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One (model, size, implementation) run, in this fresh process: returns its numbers."""
    import torch

    import recforge

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    versions = {"torch": torch.__version__, "recforge": recforge.__version__, "torch_threads": torch.get_num_threads()}
    if spec["impl"] == "info":
        return versions
    torch.manual_seed(0)
    users, items, stamps = make_data(spec["users"], spec["items"], spec["size"], spec["alpha"])
    n_users, n_items, n = spec["users"], spec["items"], len(users)
    epochs, batch, opt_name, model = spec["epochs"], spec["batch_size"], spec["optimizer"], spec["model"]
    if spec["impl"] == "recforge":
        train = recforge.Interactions.from_arrays(users, items, timestamps=stamps, n_users=n_users, n_items=n_items)
        del users, items, stamps
    else:
        offset = n_users if model == "FM" else 0  # FM: one table, user ids then item ids
        u_t, p_t = torch.from_numpy(users), torch.from_numpy(items + offset)
        del items, stamps
    # Warm-up on 64 interactions, so one-time lazy initialisation (torch.optim imports
    # torch._dynamo on its first step: ~2 s, ~100 MiB) counts as an import, not as training.
    wu, wi = torch.arange(64) % 8, torch.arange(64) % 16
    if spec["impl"] == "recforge":
        warm = recforge.Interactions.from_arrays(wu.numpy(), wi.numpy(), n_users=8, n_items=16)
        train_recforge(model, warm, 1, 16, opt_name)
    else:
        lean_train(model, wu, wi + (8 if model == "FM" else 0), 8, 16, 1, 16, opt_name)
    gc.collect()
    reset_ok = reset_peak()
    base = rss_mib()
    t0 = time.perf_counter()
    if spec["impl"] == "recforge":
        train_recforge(model, train, epochs, batch, opt_name)
    else:
        lean_train(model, u_t, p_t, n_users, n_items, epochs, batch, opt_name)
    seconds = time.perf_counter() - t0
    return {
        **spec,
        "interactions": n,
        "s_per_epoch": seconds / epochs,
        "peak_mib": maxrss_mib() - base,
        "baseline_mib": base,
        "peak_reset": reset_ok,
        **versions,
    }


def train_recforge(model: str, train: Any, epochs: int, batch: int, opt_name: str) -> None:
    """recforge's BPR-MF (its defaults: dim 64, lr 0.005, reg 1e-4) or FM (BCE, reg 0), no validation."""
    from recforge import models

    if model == "BPR-MF":
        m: Any = models.BPRMF(epochs=epochs, batch_size=batch, optimizer=opt_name, lr=0.005, reg=1e-4, init_std=0.1)
    else:
        m = models.FM(loss="bce", epochs=epochs, batch_size=batch, lr=0.005, reg=0.0, optimizer=opt_name)
    m.fit(train, progress=False)


def lean_train(model: str, u_t: Any, p_t: Any, n_users: int, n_items: int, epochs: int, batch: int, opt_name: str,
               dim: int = 64, lr: float = 0.005, reg: float = 1e-4) -> None:  # fmt: skip
    """The lean plain-PyTorch loop (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    sparse = opt_name == "sparse_adam"

    def table(rows: int, width: int, std: float) -> nn.Embedding:
        e = nn.Embedding(rows, width, sparse=sparse)
        if std > 0:
            nn.init.normal_(e.weight, std=std)
        else:
            nn.init.zeros_(e.weight)
        return e

    dense: list[torch.Tensor] = []
    if model == "BPR-MF":
        user_f, item_f = table(n_users, dim, 0.1), table(n_items, dim, 0.1)
        tables = [user_f, item_f]
        neg_lo = 0
    else:
        factors, linear = table(n_users + n_items, dim, 0.1), table(n_users + n_items, 1, 0.0)
        bias = nn.Parameter(torch.zeros(1))
        tables, dense = [factors, linear], [bias]
        neg_lo = n_users
    params = [t.weight for t in tables]
    if sparse:
        opts: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(params, lr=lr)]
        if dense:
            opts.append(torch.optim.Adam(dense, lr=lr))
    else:
        opts = [torch.optim.Adam(params + dense, lr=lr)]

    def step(u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> None:
        b = len(u)
        ij = torch.cat([i, j])
        if model == "BPR-MF":
            pu, q = user_f(u), item_f(ij)
            qi, qj = q[:b], q[b:]
            x = (pu * (qi - qj)).sum(1)
            loss = -F.logsigmoid(x).mean() + reg * (pu.square().sum() + q.square().sum()) / b
        else:
            vu, v = factors(u), factors(ij).view(2, b, -1)
            s = bias + linear(u).view(1, b) + linear(ij).view(2, b) + (vu * v).sum(-1)
            loss = F.softplus(-s[0]).mean() + F.softplus(s[1]).mean()  # BCE(pos, 1) + BCE(neg, 0)
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()

    n = len(u_t)
    for _ in range(epochs):
        neg = torch.randint(neg_lo, neg_lo + n_items, (n,))
        perm = torch.randperm(n)
        for s0 in range(0, n, batch):
            b = perm[s0 : s0 + batch]
            step(u_t[b], p_t[b], neg[b])


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs ``spec`` in a fresh Python process; on failure returns it with an ``error``."""
    p = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    err = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
    print(f"  {spec['model']} {spec['impl']} size {spec['size']} failed: {err}", file=sys.stderr, flush=True)
    return {**spec, "error": err, "returncode": p.returncode}


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares ``y = slope * x + intercept`` (x in millions) with R^2, and the growth ratios."""
    x, y = np.asarray(xs, dtype=np.float64) / 1e6, np.asarray(ys, dtype=np.float64)
    out = {"time_ratio": float(y[-1] / y[0]), "size_ratio": float(x[-1] / x[0])}
    if len(x) >= 2:
        slope, intercept = np.polyfit(x, y, 1)
        ss_res, ss_tot = float(((y - (slope * x + intercept)) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
        out.update(slope_s_per_m=float(slope), intercept_s=float(intercept), r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0)
    return out


def fmt(r: dict[str, Any], key: str, spec: str) -> str:
    return "failed" if "error" in r else format(r[key], spec)


def main() -> None:
    ap = argparse.ArgumentParser(description="BPR-MF / FM training speed and memory at Kindle scale, recforge vs lean PyTorch.")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=349_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000, 8_000_000],
                    help="distinct interactions per size")  # fmt: skip
    ap.add_argument("--alpha", type=float, default=1.0, help="Zipf exponent of item popularity")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--optimizer", choices=["adam", "sparse_adam"], default="sparse_adam")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--models", nargs="+", choices=["BPR-MF", "FM"], default=["BPR-MF", "FM"])
    ap.add_argument("--json", default=None, help="write the raw numbers to this path")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child is not None:
        print("RESULT " + json.dumps(child(json.loads(args._child))), flush=True)
        return

    common = {k: getattr(args, k) for k in ("users", "items", "alpha", "epochs", "batch_size", "optimizer", "threads")}
    sizes = sorted(args.sizes)
    info = run_child({**common, "model": args.models[0], "impl": "info", "size": 0})  # versions only
    print(f"recforge {info.get('recforge', '?')}, torch {info.get('torch', '?')} ({info.get('torch_threads', '?')} threads), "
          f"{args.users} users, {args.items} items, alpha {args.alpha}, {args.epochs} epoch(s), batch {args.batch_size}, "
          f"optimizer {args.optimizer}, one fresh process per run", flush=True)  # fmt: skip
    print("\n| model | interactions | recforge s/epoch | lean s/epoch | ratio lean/recforge | recforge peak MiB | lean peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
    runs: list[dict[str, Any]] = []
    for model in args.models:
        for size in sizes:
            ours = run_child({**common, "model": model, "impl": "recforge", "size": size})
            lean = run_child({**common, "model": model, "impl": "lean", "size": size})
            runs += [ours, lean]
            ratio = "-" if "error" in ours or "error" in lean else f"{lean['s_per_epoch'] / ours['s_per_epoch']:.2f}x"
            print(f"| {model} | {size:,} | {fmt(ours, 's_per_epoch', '.2f')} | {fmt(lean, 's_per_epoch', '.2f')} | {ratio} | "
                  f"{fmt(ours, 'peak_mib', '.0f')} | {fmt(lean, 'peak_mib', '.0f')} |", flush=True)  # fmt: skip

    print("\nGrowth of s/epoch with interactions (least-squares line; linear growth: R^2 near 1 and time ratio near size ratio)\n")
    print("| model | implementation | slope s per 1M interactions | intercept s | R^2 | time(largest)/time(smallest) | size ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    fits: list[dict[str, Any]] = []
    for model in args.models:
        for impl in ("recforge", "lean"):
            ok = [r for r in runs if r["model"] == model and r["impl"] == impl and "error" not in r]
            if len(ok) < 2:
                continue
            f = {"model": model, "impl": impl, **linear_fit([r["interactions"] for r in ok], [r["s_per_epoch"] for r in ok])}
            fits.append(f)
            print(f"| {model} | {impl} | {f['slope_s_per_m']:.3f} | {f['intercept_s']:.3f} | {f['r2']:.4f} | "
                  f"{f['time_ratio']:.2f} | {f['size_ratio']:.2f} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": common, "models": args.models, "sizes": sizes, "versions": info, "runs": runs, "fits": fits}, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

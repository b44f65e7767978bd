"""Full-ranking scoring speed of NFM (and FM): recforge's `score_all` against the pairwise
scoring it replaced, in one process, on the same trained weights.

Run: python benchmarks/bench_score_all.py [--users 943 --items 1682 --batch 256 --hidden 64]

recforge scores a batch of users against every item with the first hidden layer written as one
batched product: h1[b, i] = s_i (diag(s_u) W^T) + W bi_u + W bi_i + bias (batch norm folded in),
so no [B, I, k] bi-interaction tensor is built. The reference is the pairwise computation, as
RecBole's NFM and recforge before this change do it: the bi-interaction vector of every (user,
item) pair, [B, I, k], then the MLP, written in PyTorch from the model's own `state_dict()`.
Both run on the CPU with the same thread count; scores must agree to 1e-4.

Default size: MovieLens-100k (943 users x 1,682 items), the size the training-core issue measured
RecBole's evaluation at (1.0-1.3 s for all users).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import recforge
from recforge import models


def pairwise(sd: dict[str, torch.Tensor], n_users: int, users: torch.Tensor, hidden: int) -> torch.Tensor:
    """Scores of `users` against every item, pair by pair (the reference)."""
    v, lin, bias = sd["factors"], sd["linear"], sd["bias"]
    n_items = v.shape[0] - n_users
    su, lu = v[users], lin[users]  # id-only rows: one feature each
    si, li = v[n_users:], lin[n_users:]
    s = su[:, None, :] + si[None, :, :]  # [B, I, k]
    bi = 0.5 * (s * s - (su * su)[:, None, :] - (si * si)[None, :, :])
    h = torch.relu(bi @ sd["mlp.0.weight"].T + sd["mlp.0.bias"])
    out = (h @ sd["mlp.1.weight"].T + sd["mlp.1.bias"]).squeeze(-1)
    assert out.shape == (len(users), n_items)
    return out + lu[:, None] + li[None, :] + bias


def best_of(f, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=943)
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.users * 20
    x = recforge.Interactions.from_arrays(
        rng.integers(0, args.users, n), rng.integers(0, args.items, n), n_users=args.users, n_items=args.items
    )
    m = models.NFM(dim=args.dim, hidden=[args.hidden], epochs=1, device="cpu").fit(x, progress=False)
    sd = {k: v.float() for k, v in m.state_dict().items()}
    batches = [torch.arange(s, min(s + args.batch, args.users)) for s in range(0, args.users, args.batch)]

    def ours() -> None:
        for b in batches:
            m.score_all(b.numpy())

    def ref() -> None:
        with torch.no_grad():
            for b in batches:
                pairwise(sd, args.users, b, args.hidden)

    check = batches[0]
    diff = (m.score_all(check.numpy()) - pairwise(sd, args.users, check, args.hidden)).abs().max().item()
    assert diff < 1e-4, diff
    t_ours, t_ref = best_of(ours), best_of(ref)
    print(f"NFM score_all, {args.users} users x {args.items} items, batch {args.batch}, k {args.dim}, hidden {args.hidden}, "
          f"{torch.get_num_threads()} threads (max |diff| {diff:.1e})")  # fmt: skip
    print("| scoring | seconds (all users) | speed-up |")
    print("|---|---:|---:|")
    print(f"| pairwise [B, I, k] bi-interaction, then the MLP (PyTorch) | {t_ref:.3f} | 1.0x |")
    print(f"| recforge `score_all` (first layer as one batched product) | {t_ours:.3f} | {t_ref / t_ours:.1f}x |")


if __name__ == "__main__":
    main()

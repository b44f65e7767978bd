"""Training speed: recforge FM / NFM against two plain PyTorch implementations of the same
network, in one process, same data, same hyperparameters, same device:

- the lean loop, the strongest plain PyTorch a skilled engineer writes: batches sliced from
  tensors after one ``torch.randperm``, negatives drawn with one ``torch.randint`` per epoch (no
  rejection of positives), ``torch.optim.Adam`` (the main reference column);
- the loop the reference systems write: an ``nn.Module``, a ``DataLoader(TensorDataset(...))`` and
  negatives rejected against the positives in a Python loop.

Run: python benchmarks/bench_train.py [--epochs 5 --batch-sizes 64 256 1024 4096 --device cpu]

Task: ml-latest-small, leave-one-out, item ids + genres as features, BCE with one uniform negative
per positive (fresh each epoch), Adam lr 0.005, embedding 64, NFM hidden layer 64 with dropout 0.2.
Prints seconds per epoch, the ratios, the kernel time (libtorch's own time for the lean loop's ops
in one epoch, summed from torch.profiler: the floor any loop over this network pays; the profiler
adds some overhead per op, so it is an upper estimate of that floor), and the validation NDCG@10
after the last epoch (computed for all three by recforge.metrics.full_ranking).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recforge
from recforge import metrics, models


class TorchFM(nn.Module):
    def __init__(self, n_features: int, dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.factors = nn.Embedding(n_features, dim)
        nn.init.normal_(self.factors.weight, std=0.1)
        self.linear = nn.Embedding(n_features, 1)
        nn.init.zeros_(self.linear.weight)
        self.bias = nn.Parameter(torch.zeros(1))
        layers: list[nn.Module] = []
        if hidden:
            layers.append(nn.Dropout(dropout))
            d = dim
            for h in hidden:
                layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
                d = h
            layers.append(nn.Linear(d, 1))
        self.mlp = nn.Sequential(*layers) if layers else None

    def forward(self, idx: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
        vx = self.factors(idx) * val.unsqueeze(-1)
        bi = 0.5 * (vx.sum(1) ** 2 - (vx**2).sum(1))
        lin = self.bias + (self.linear(idx).squeeze(-1) * val).sum(1)
        inter = bi.sum(1) if self.mlp is None else self.mlp(bi).squeeze(-1)
        return lin + inter


def features(ds: recforge.Dataset, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    genres = ds.items["genres"].str.split("|")
    vocab = {g: i for i, g in enumerate(sorted({g for gs in genres for g in gs}))}
    side = [[vocab[g] for g in gs] for gs in genres]
    width = 1 + max(len(s) for s in side)
    idx = np.zeros((n_items, width), np.int64)
    val = np.zeros((n_items, width), np.float32)
    for i, s in enumerate(side):
        idx[i, 0], val[i, 0] = n_users + i, 1
        idx[i, 1 : 1 + len(s)] = n_users + n_items + np.asarray(s, dtype=np.int64)
        val[i, 1 : 1 + len(s)] = 1
        idx[i, 1 + len(s) :] = n_users + i
    return idx, val, side


def train_torch(train, valid, ds, hidden, dropout, batch, epochs, device, lr=0.005, lean=False, kernel_time=None) -> tuple[float, float]:
    n_users, n_items = train.n_users, train.n_items
    iidx, ival, side = features(ds, n_users, n_items)
    n_features = n_users + n_items + int(iidx.max()) - n_users - n_items + 1
    torch.manual_seed(0)
    model = TorchFM(n_features, 64, hidden, dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    a = train.to_arrays()
    users, pos = a["users"], a["items"]
    iidx_t, ival_t = torch.from_numpy(iidx).to(device), torch.from_numpy(ival).to(device)
    lossf = nn.BCEWithLogitsLoss()

    def step(u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> None:
        uidx, uval = u.unsqueeze(1), torch.ones(len(u), 1, device=device)

        def score(items: torch.Tensor) -> torch.Tensor:
            return model(torch.cat([uidx, iidx_t[items]], 1), torch.cat([uval, ival_t[items]], 1))

        sp, sn = score(i), score(j)
        loss = lossf(sp, torch.ones_like(sp)) + lossf(sn, torch.zeros_like(sn))
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    t0 = time.perf_counter()
    if lean:
        u_t, p_t = torch.from_numpy(users).to(device), torch.from_numpy(pos).to(device)
        n = len(users)

        def epoch() -> None:
            neg = torch.randint(0, n_items, (n,), device=device)
            perm = torch.randperm(n, device=device)
            for s0 in range(0, n, batch):
                b = perm[s0 : s0 + batch]
                step(u_t[b], p_t[b], neg[b])

        for _ in range(epochs):
            epoch()
        per_epoch = (time.perf_counter() - t0) / epochs
        if kernel_time is not None:
            # The floor: libtorch's own time for the ops of one epoch (self time of every aten
            # op, as the profiler measures it), without the Python around them.
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                epoch()
            kernel_time.append(sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")) / 1e6)
    else:
        seen = set(zip(users.tolist(), pos.tolist()))
        rng = np.random.default_rng(0)
        for _ in range(epochs):
            neg_np = rng.integers(0, n_items, len(users))
            for k in np.flatnonzero([(u, j) in seen for u, j in zip(users.tolist(), neg_np.tolist())]):
                while (users[k], neg_np[k]) in seen:
                    neg_np[k] = rng.integers(0, n_items)
            loader = DataLoader(TensorDataset(torch.from_numpy(users), torch.from_numpy(pos), torch.from_numpy(neg_np)), batch_size=batch, shuffle=True)
            for u, i, j in loader:
                step(u.to(device), i.to(device), j.to(device))
        per_epoch = (time.perf_counter() - t0) / epochs
    model.eval()

    @torch.no_grad()
    def score_all(us: np.ndarray) -> torch.Tensor:
        out = []
        for u in us:
            uidx = torch.full((n_items, 1), int(u), device=device)
            out.append(model(torch.cat([uidx, iidx_t], 1), torch.cat([torch.ones(n_items, 1, device=device), ival_t], 1)))
        return torch.stack(out)

    r = metrics.full_ranking(score_all, valid, [train], ks=(10,), metrics=("ndcg",), batch_size=64)
    return per_epoch, r["ndcg@10"]


def train_recforge(train, valid, ds, cls, batch, epochs, device) -> tuple[float, float]:
    _, _, side = features(ds, train.n_users, train.n_items)
    m = cls(loss="bce", epochs=epochs, batch_size=batch, lr=0.005, reg=0.0, device=device, dropout=0.2 if cls is models.NFM else 0.0)
    t0 = time.perf_counter()
    m.fit(train, item_features=side, progress=False)
    per_epoch = (time.perf_counter() - t0) / epochs
    r = metrics.full_ranking(m.score_all, valid, [train], ks=(10,), metrics=("ndcg",))
    return per_epoch, r["ndcg@10"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ds = recforge.datasets.movielens_small()
    train, valid, _ = recforge.split.leave_one_out(ds.interactions)
    print(f"recforge {recforge.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}, {args.epochs} epochs")
    print("| model | batch | recforge s/epoch | lean PyTorch s/epoch | ratio | DataLoader PyTorch s/epoch | ratio | kernel time s/epoch | recforge / kernel | valid NDCG@10 recforge / lean / DataLoader |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, cls, hidden in (("FM", models.FM, []), ("NFM", models.NFM, [64])):
        for b in args.batch_sizes:
            p = 0.2 if hidden else 0.0
            ours, m_ours = train_recforge(train, valid, ds, cls, b, args.epochs, args.device)
            kernel: list[float] = []
            lean, m_lean = train_torch(train, valid, ds, hidden, p, b, args.epochs, args.device, lean=True, kernel_time=kernel)
            ref, m_ref = train_torch(train, valid, ds, hidden, p, b, args.epochs, args.device)
            print(f"| {name} | {b} | {ours:.2f} | {lean:.2f} | {lean / ours:.1f}x | {ref:.2f} | {ref / ours:.1f}x | "
                  f"{kernel[0]:.2f} | {ours / kernel[0]:.2f} | {m_ours:.4f} / {m_lean:.4f} / {m_ref:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

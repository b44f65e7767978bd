"""Training speed: recforge's FM, NFM, BPR-MF, SVD and SASRec against plain PyTorch implementations of the
same networks, in one process, same data, same hyperparameters, same device:

- the lean loop, the strongest plain PyTorch a skilled engineer writes: batches sliced from
  tensors after one ``torch.randperm``, negatives drawn with one ``torch.randint`` per epoch (the
  user's own items redrawn, vectorised, as recforge does), ``torch.optim.Adam``; with
  ``--optimizers sparse_adam`` the tables are ``nn.Embedding(sparse=True)`` under
  ``torch.optim.SparseAdam`` (dense parameters under Adam), the reference for recforge's
  ``optimizer="sparse_adam"`` (the main reference column);
- for FM and NFM with Adam, the loop the reference systems write: an ``nn.Module``, a
  ``DataLoader(TensorDataset(...))`` and negatives rejected against the positives in a Python loop.

Run: python benchmarks/bench_train.py [--epochs 2 --batch-sizes 64 256 1024 4096
     --models FM NFM BPR-MF SVD SASRec --optimizers adam sparse_adam --device cpu]

Task: ml-latest-small. FM/NFM/BPR-MF: leave-one-out, one uniform negative per positive (fresh each
epoch); FM/NFM over user id + item id + genres with BCE, BPR-MF with BPR; SVD: 80/10/10 ratings,
squared error, global mean start; SASRec: leave-one-out, one row per user (its last 50
next-item targets), 2 blocks, 1 head, dropout 0.2, cross-entropy over all items, Adam lr 0.001
(betas 0.9/0.98), batches of 32-512 users. Otherwise Adam lr 0.005, dimension 64, NFM hidden layer 64 with dropout
0.2, no L2 on either side. Prints seconds per epoch (mean over epochs 2.., the first left out on every side), the ratios, the
kernel time of one epoch (libtorch's own self time of recforge's ops, summed from torch.profiler,
plus recforge's own compute kernels, which the profiler cannot see, timed by
``recforge.profiling.native_timers``: the fused optimiser pass, dropout masks and negative
sampling, each doing what libtorch ops do in the lean loop; host batch building is reported beside
it, not counted: what remains when every call overhead is gone), and the validation metric after
the last epoch: NDCG@10 (full ranking, training items masked) or RMSE, computed the same way for
every side.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recforge
from recforge import metrics, models, profiling

LR = 0.005


class TorchFM(nn.Module):
    def __init__(self, n_features: int, dim: int, hidden: list[int], dropout: float, sparse: bool = False) -> None:
        super().__init__()
        self.factors = nn.Embedding(n_features, dim, sparse=sparse)
        nn.init.normal_(self.factors.weight, std=0.1)
        self.linear = nn.Embedding(n_features, 1, sparse=sparse)
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


class TorchMF(nn.Module):
    """BPR-MF (``p_u . q_i``) or, with biases, SVD (``mu + b_u + b_i + p_u . q_i``)."""

    def __init__(self, n_users: int, n_items: int, dim: int, sparse: bool, mean: float | None = None) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim, sparse=sparse)
        self.item = nn.Embedding(n_items, dim, sparse=sparse)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        self.biased = mean is not None
        if mean is not None:
            self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
            self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)
            self.mu = nn.Parameter(torch.tensor([mean], dtype=torch.float32))

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        s = (self.user(u) * self.item(i)).sum(-1)
        if self.biased:
            s = s + self.mu + self.user_bias(u).squeeze(-1) + self.item_bias(i).squeeze(-1)
        return s


def optimizers(model: nn.Module, sparse_adam: bool) -> list[torch.optim.Optimizer]:
    """Adam over everything, or SparseAdam over the embedding tables and Adam over the rest."""
    if not sparse_adam:
        return [torch.optim.Adam(model.parameters(), lr=LR)]
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    ids = {id(p) for p in tables}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [torch.optim.SparseAdam(tables, lr=LR)] + ([torch.optim.Adam(rest, lr=LR)] if rest else [])


def negatives(users: torch.Tensor, keys: torch.Tensor, n_items: int) -> torch.Tensor:
    """One uniform negative per positive, the user's own items redrawn (vectorised)."""
    neg = torch.randint(0, n_items, (len(users),), device=users.device)
    bad = torch.isin(users * n_items + neg, keys)
    while bool(bad.any()):
        neg[bad] = torch.randint(0, n_items, (int(bad.sum()),), device=users.device)
        bad = torch.isin(users * n_items + neg, keys)
    return neg


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


def per_epoch(t0: float, ends: list[float]) -> float:
    """Seconds per epoch: the mean over epochs 2.. (the first, with its warm-up and, for
    recforge, the fit's set-up, is left out on every side), or the one epoch there is."""
    return (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else ends[0] - t0


def lean_epochs(
    step: Callable[[torch.Tensor, torch.Tensor | None], None],
    n: int,
    batch: int,
    epochs: int,
    device: str,
    draw: Callable[[], torch.Tensor] | None = None,
) -> float:
    """Seconds per epoch of the lean loop: per epoch the negatives from ``draw`` (if any) and one
    randperm, then ``step(batch indices, negatives)`` over slices of it."""
    t0, ends = time.perf_counter(), []
    for _ in range(epochs):
        neg = draw() if draw is not None else None
        perm = torch.randperm(n, device=device)
        for s0 in range(0, n, batch):
            step(perm[s0 : s0 + batch], neg)
        ends.append(time.perf_counter())
    return per_epoch(t0, ends)


def train_torch_fm(train, valid, ds, hidden, dropout, batch, epochs, device, sparse_adam=False, lean=True) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    n_users, n_items = train.n_users, train.n_items
    iidx, ival, side = features(ds, n_users, n_items)
    n_features = int(iidx.max()) + 1
    torch.manual_seed(0)
    model = TorchFM(n_features, 64, hidden, dropout, sparse=sparse_adam).to(device)
    opts = optimizers(model, sparse_adam)
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
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()

    model.train()
    if lean:
        u_t, p_t = torch.from_numpy(users).to(device), torch.from_numpy(pos).to(device)
        keys = u_t * n_items + p_t

        def lean_step(b: torch.Tensor, neg: torch.Tensor | None) -> None:
            assert neg is not None
            step(u_t[b], p_t[b], neg[b])

        seconds = lean_epochs(lean_step, len(users), batch, epochs, device, lambda: negatives(u_t, keys, n_items))
    else:
        t0, ends = time.perf_counter(), []
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
            ends.append(time.perf_counter())
        seconds = per_epoch(t0, ends)
    model.eval()

    @torch.no_grad()
    def score_all(us: np.ndarray) -> torch.Tensor:
        out = []
        for u in us:
            uidx = torch.full((n_items, 1), int(u), device=device)
            out.append(model(torch.cat([uidx, iidx_t], 1), torch.cat([torch.ones(n_items, 1, device=device), ival_t], 1)))
        return torch.stack(out)

    r = metrics.full_ranking(score_all, valid, [train], ks=(10,), metrics=("ndcg",), batch_size=64)
    return seconds, r["ndcg@10"]


def train_torch_mf(train, valid, rating: bool, batch, epochs, device, sparse_adam=False) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    n_users, n_items = train.n_users, train.n_items
    a = train.to_arrays()
    u_t, i_t = torch.from_numpy(a["users"]).to(device), torch.from_numpy(a["items"]).to(device)
    torch.manual_seed(0)
    mean = float(a["ratings"].mean()) if rating else None
    model = TorchMF(n_users, n_items, 64, sparse_adam, mean).to(device)
    opts = optimizers(model, sparse_adam)
    r_t = torch.from_numpy(a["ratings"]).to(device) if rating else None
    keys = u_t * n_items + i_t

    def step(b: torch.Tensor, neg: torch.Tensor | None) -> None:
        u, i = u_t[b], i_t[b]
        if r_t is not None:
            loss = ((model(u, i) - r_t[b]) ** 2).mean()
        else:
            assert neg is not None
            loss = -torch.nn.functional.logsigmoid(model(u, i) - model(u, neg[b])).mean()
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()

    draw = None if rating else (lambda: negatives(u_t, keys, n_items))
    seconds = lean_epochs(step, len(u_t), batch, epochs, device, draw)
    with torch.no_grad():
        if rating:
            v = valid.to_arrays()
            pred = model(torch.from_numpy(v["users"]).to(device), torch.from_numpy(v["items"]).to(device))
            return seconds, float(torch.sqrt(((pred.cpu() - torch.from_numpy(v["ratings"])) ** 2).mean()))
        item_w = model.item.weight

        def score_all(us: np.ndarray) -> torch.Tensor:
            return model.user.weight[torch.from_numpy(np.asarray(us)).to(device)] @ item_w.T

        return seconds, metrics.full_ranking(score_all, valid, [train], ks=(10,), metrics=("ndcg",))["ndcg@10"]


class TorchSASRec(nn.Module):
    """recforge's SASRec layout in torch.nn: pre-LN causal blocks, padding (item 0) never attended
    to, dropout on the embeddings, the attention weights and each block's outputs."""

    def __init__(self, n_items: int, d: int, max_len: int, n_layers: int, heads: int, p: float) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, d)
        self.pos_emb = nn.Embedding(max_len, d)
        for e in (self.item_emb, self.pos_emb):
            nn.init.normal_(e.weight, std=0.02)
        self.ln1 = nn.ModuleList([nn.LayerNorm(d) for _ in range(n_layers)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(d) for _ in range(n_layers)])
        self.attn = nn.ModuleList([nn.MultiheadAttention(d, heads, dropout=p, batch_first=True) for _ in range(n_layers)])
        self.ffn = nn.ModuleList([nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(p), nn.Linear(d, d)) for _ in range(n_layers)])
        self.final_ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(p)
        self.heads = heads

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        _, length = seq.shape
        valid = (seq != 0).unsqueeze(-1)
        x = self.drop(self.item_emb(seq) + self.pos_emb.weight[:length]) * valid
        allowed = torch.tril(torch.ones(length, length, dtype=torch.bool, device=seq.device)) & (seq != 0).unsqueeze(1)
        allowed |= torch.eye(length, dtype=torch.bool, device=seq.device)
        blocked = (~allowed).repeat_interleave(self.heads, 0)
        for ln1, ln2, attn, ffn in zip(self.ln1, self.ln2, self.attn, self.ffn):
            q = ln1(x)
            x = x + self.drop(attn(q, q, q, attn_mask=blocked, need_weights=False)[0])
            x = (x + self.drop(ffn(ln2(x)))) * valid
        return self.final_ln(x)


def train_torch_sasrec(train, valid, batch, epochs, device, max_len=50) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The lean SASRec loop: one row per user (its last max_len next-item targets, left-padded),
    rows sliced after one randperm, cross-entropy over all items at every target position."""
    n_items = train.n_items
    users = [u for u in range(train.n_users) if train.indptr[u + 1] - train.indptr[u] >= 2]
    inp = np.zeros((len(users), max_len), np.int64)
    tgt = np.zeros((len(users), max_len), np.int64)
    for r, u in enumerate(users):
        items = train.indices[train.indptr[u] : train.indptr[u + 1]][-(max_len + 1) :] + 1
        inp[r, max_len - len(items) + 1 :], tgt[r, max_len - len(items) + 1 :] = items[:-1], items[1:]
    inp_t, tgt_t = torch.from_numpy(inp).to(device), torch.from_numpy(tgt).to(device)
    torch.manual_seed(0)
    model = TorchSASRec(n_items, 64, max_len, 2, 1, 0.2).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.98))
    model.train()

    def step(b: torch.Tensor, _: torch.Tensor | None) -> None:
        t = tgt_t[b].reshape(-1)
        at = t != 0
        h = model(inp_t[b]).reshape(-1, 64)[at]
        loss = nn.functional.cross_entropy(h @ model.item_emb.weight[1:].T, t[at] - 1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    seconds = lean_epochs(step, len(users), batch, epochs, device)
    model.eval()

    @torch.no_grad()
    def score_all(us: np.ndarray) -> torch.Tensor:
        seq = np.zeros((len(us), max_len), np.int64)
        for r, u in enumerate(us):
            items = train.indices[train.indptr[u] : train.indptr[u + 1]][-max_len:] + 1
            if len(items):
                seq[r, max_len - len(items) :] = items
        return model(torch.from_numpy(seq).to(device))[:, -1] @ model.item_emb.weight[1:].T

    return seconds, metrics.full_ranking(score_all, valid, [train], ks=(10,), metrics=("ndcg",))["ndcg@10"]


def make_recforge(name: str, batch: int, epochs: int, device: str, optimizer: str) -> models.TorchModel:
    common: dict[str, Any] = {"epochs": epochs, "batch_size": batch, "lr": LR, "device": device, "optimizer": optimizer}
    if name == "FM":
        return models.FM(loss="bce", reg=0.0, **common)
    if name == "NFM":
        return models.NFM(loss="bce", reg=0.0, dropout=0.2, **common)
    if name == "BPR-MF":
        return models.BPRMF(reg=0.0, init_std=0.1, **common)  # the lean loop's init
    if name == "SASRec":
        return models.SASRec(**{**common, "lr": 0.001})
    return models.SVD(reg=0.0, **common)


def train_recforge(name, train, valid, ds, batch, epochs, device, optimizer) -> tuple[float, float, float, profiling.NativeTimes]:  # type: ignore[no-untyped-def]
    fit_kw: dict[str, Any] = {"progress": False}
    if name in ("FM", "NFM"):
        fit_kw["item_features"] = features(ds, train.n_users, train.n_items)[2]
    m = make_recforge(name, batch, epochs, device, optimizer)
    ends: list[float] = []
    t0 = time.perf_counter()
    m.fit(train, callbacks=[lambda epoch, logs: ends.append(time.perf_counter())], **fit_kw)
    seconds = per_epoch(t0, ends)
    if name == "SVD":
        v = valid.to_arrays()
        metric = float(np.sqrt(np.mean((m.predict(v["users"], v["items"]) - v["ratings"]) ** 2)))
    else:
        metric = metrics.full_ranking(m.score_all, valid, [train], ks=(10,), metrics=("ndcg",))["ndcg@10"]
    # Kernel time over one more epoch: libtorch's self time of recforge's ops, plus recforge's own
    # compute kernels, which torch.profiler cannot see (recforge.profiling).
    k = make_recforge(name, batch, 1, device, optimizer)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with profiling.native_timers() as own:
            k.fit(train, **fit_kw)
    kernel = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")) / 1e6
    return seconds, metric, kernel, own


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--models", nargs="+", default=["FM", "NFM", "BPR-MF", "SVD", "SASRec"], choices=["FM", "NFM", "BPR-MF", "SVD", "SASRec"])
    ap.add_argument("--seq-batch-sizes", type=int, nargs="+", default=[32, 128, 512], help="SASRec: users per batch")
    ap.add_argument("--optimizers", nargs="+", default=["adam", "sparse_adam"], choices=["adam", "sparse_adam"])
    ap.add_argument("--no-dataloader", action="store_true", help="skip the DataLoader column")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="torch.set_flush_denormal(True) first: libtorch's ops (both sides) treat subnormal floats as zero")
    args = ap.parse_args()
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("this CPU cannot flush subnormal floats")
    ds = recforge.datasets.movielens_small()
    loo = recforge.split.leave_one_out(ds.interactions)
    ratings = recforge.split.ratio(ds.interactions, (0.8, 0.1, 0.1), seed=0)
    print(f"recforge {recforge.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}, "
          f"{args.epochs} epochs{', subnormals flushed' if args.flush_denormal else ''}")
    print("| model | optimizer | batch | recforge s/epoch | lean PyTorch s/epoch | ratio | DataLoader PyTorch s/epoch | ratio "
          "| libtorch kernels s/epoch | recforge kernels s/epoch | recforge / kernels | batch building s/epoch "
          "| valid metric recforge / lean / DataLoader |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.models:
        train, valid, _ = ratings if name == "SVD" else loo
        for opt in args.optimizers if name != "SASRec" else ["adam"]:
            sparse = opt == "sparse_adam"
            for b in args.batch_sizes if name != "SASRec" else args.seq_batch_sizes:
                ours, m_ours, kernel, own = train_recforge(name, train, valid, ds, b, args.epochs, args.device, opt)
                ref: tuple[float, float] | None = None
                if name in ("FM", "NFM"):
                    hidden, p = ([64], 0.2) if name == "NFM" else ([], 0.0)
                    lean, m_lean = train_torch_fm(train, valid, ds, hidden, p, b, args.epochs, args.device, sparse_adam=sparse)
                    if not sparse and not args.no_dataloader:
                        ref = train_torch_fm(train, valid, ds, hidden, p, b, args.epochs, args.device, lean=False)
                elif name == "SASRec":
                    lean, m_lean = train_torch_sasrec(train, valid, b, args.epochs, args.device)
                else:
                    lean, m_lean = train_torch_mf(train, valid, name == "SVD", b, args.epochs, args.device, sparse_adam=sparse)
                metric = "RMSE" if name == "SVD" else "NDCG@10"
                dl = f"{ref[0]:.2f} | {ref[0] / ours:.1f}x" if ref else "- | -"
                dl_m = f" / {ref[1]:.4f}" if ref else ""
                # recforge's own compute kernels: each replaces libtorch ops the lean loop runs
                # (Adam's, bernoulli's, randint's); host batch building is not counted as one.
                mine = sum(own.seconds[k] for k in ("optimizer", "dropout_masks", "sampling"))
                print(f"| {name} | {opt} | {b} | {ours:.2f} | {lean:.2f} | {lean / ours:.1f}x | {dl} | "
                      f"{kernel:.2f} | {mine:.2f} | {ours / (kernel + mine):.2f} | {own.seconds['batch_building']:.2f} | "
                      f"{metric} {m_ours:.4f} / {m_lean:.4f}{dl_m} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

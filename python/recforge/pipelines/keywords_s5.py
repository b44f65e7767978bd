"""S5: keywords written by an LLM against TMDB's human keywords as Factorization Machine features.

The seed system joined MovieLens 25M with TMDB 5000, asked a chat LLM for thematic keywords of
each movie from its plot overview (one movie per prompt), trained a PyTorch FM over user id,
item id and multi-hot keywords for rating regression, tuned it with Optuna, and compared test
RMSE with 95% bootstrap intervals (10,000 resamples), concluding "no significant difference"
because the intervals overlapped. :func:`run_s5` reproduces it, adds the controls the seed
lacked (ids only, both keyword sets together) and answers with a paired test::

    from recforge.pipelines import S5Config, run_s5
    res = run_s5(S5Config(n_trials=20), run_dir="runs/s5")
    res.counts            # movies and ratings kept or excluded at each step
    res.rmse              # test RMSE of each group with its bootstrap interval
    res.comparisons       # paired bootstrap of each RMSE difference, p-value, detectable difference
    res.conclusion        # one sentence: what the data support
    res.plot()            # RMSE intervals, Optuna histories, keyword statistics

**1. Data.** MovieLens (the bundled ml-latest-small by default, or any MovieLens folder with
``links.csv``) is joined with TMDB 5000 through ``links.csv``'s ``tmdbId``
(:func:`recforge.datasets.attach_tmdb`). A movie is *matched* when its ``tmdbId`` is in TMDB 5000.
The master table (``master.parquet``) holds one row per rating of a matched movie: ``userId``,
``movieId``, ``rating``, ``timestamp``, ``tmdbId``, ``title``, ``overview``,
``human_keywords`` (TMDB's list), ``genres`` (MovieLens, a list) and ``tmdb_genres``.

**2. Keywords.** Candidates are the matched movies with a plot overview and at least one human
keyword (movies without human keywords would be excluded from both groups anyway, so they cost
no LLM call), the ``max_movies`` most-rated first (ties by ``movieId``) when a limit is set.
Each gets one prompt (:func:`recforge.prompts.keywords_messages`, with its few-shot example),
all sent together through the client's ``chat_batch`` (its concurrency, rate and token limits,
retries and response cache) with OpenAI's repetition penalties: the logit of every token the
answer already holds ``count`` times is lowered by ``presence_penalty + frequency_penalty * count``
(1.0 and 0.5; 0 sends none). They stop a small model from listing one keyword fifteen times: of
the 10 most-rated candidates of ml-latest-small, greedy SmolLM2-135M gave 0 valid answers without
penalties, 2 with ``presence_penalty=1``, 6 with ``presence_penalty=2`` and 7 with the defaults.
Answers are parsed by :func:`recforge.parsing.keyword_list`; then, *before* the count is checked,
repeats are dropped (the first occurrence kept as written) where two keywords are equal after
:func:`normalise_keyword` (case-insensitive; ``"Sci-Fi"`` equals ``"sci fi"``, which the features
could not tell apart either): an answer is valid with ``min_keywords``..``max_keywords`` distinct
keywords of at most ``max_words`` words (:func:`distinct_keywords`). An invalid answer is re-asked
with the reason (:func:`recforge.prompts.reask_messages`) at a
temperature raised by ``retry_temperature_step`` per round, at most ``max_retries`` times (the
rule of :mod:`recforge.rerank`). Clients that decode under constraints
(``supports_constraints``, the in-process LLM) get the answer's JSON schema. A movie whose answers
stay invalid keeps its last raw answer and the error, and is counted, never guessed.
``keywords.parquet`` has one row per candidate (``movieId``, ``tmdbId``, ``title``,
``overview``, ``prompt_hash``, ``raw_answer``, ``keywords``, ``error``, ``ok``, ``attempts``,
``cached``, tokens); it is rewritten after every ``chunk_size`` movies, and a rerun reuses each
row whose ``prompt_hash`` (the messages, model and settings) still matches, so a crash loses at
most one chunk (whose answers the response cache still holds).

**3. Features.** Both keyword sets are normalised alike (:func:`normalise_keyword`): Unicode
NFKC, case folding, apostrophes removed, every other run of punctuation replaced by a space,
whitespace collapsed; no lemmatisation; ``stemming="s"`` optionally applies Harman's (1991)
S-stemmer to words longer than 3 letters (off by default: keywords are kept as written). A
keyword is kept when at least ``min_freq`` candidate movies carry it (counted per source over
the candidates whose LLM answer is valid; a movie counts a keyword once). A movie that lacks
either set (LLM failed, or no keyword left after normalisation) is excluded from *every* group,
with its ratings, and counted (``counts``). The groups differ only in the item features of the
FM (user id and item id always): ``human`` (TMDB's keywords, multi-hot), ``llm`` (the LLM's),
``ids`` (none) and ``both`` (the two vocabularies side by side: a keyword in both sets is two
features).

**4. Tuning.** Ratings are split per user at random, 80/10/10
(:func:`recforge.split.ratio`, seed ``seed``; users with fewer than 3 ratings stay in train): the
same train, validation and test ratings for every group. Each group gets an Optuna study with the
same search space and budget: ``dim`` in ``dims``, ``lr`` and ``reg`` log-uniform in their
ranges, up to ``epochs`` epochs with early stopping (``patience``) on validation RMSE and median
pruning (:func:`recforge.tuning.optuna_callback`, ``MedianPruner(n_warmup_steps=
pruning_warmup)``, after 5 finished trials); TPE sampler seeded with ``seed``, its first
``min(10, n_trials // 2)`` (at least 1) trials random (the same proposals in every group), then
guided by the group's own values; ``n_trials`` finished trials (complete or pruned). ``storage`` is any Optuna
storage: None (in memory), an RDB URL (``sqlite:///s5.db``, ``postgresql://...``) or a journal
file (a path ending in ``.log`` or ``.journal``); several machines pointed at one storage share
the studies (``s5-<group>-<hash of data and settings>``) and stop at ``n_trials`` in all. The best
trial's configuration is retrained on train + validation for its best epoch count, seed ``seed``.

**5. Statistics.** Test RMSE per group with a percentile bootstrap interval
(:func:`recforge.stats.rmse`, ``n_resamples`` resamples of the test ratings). Each difference
(``llm - human``, ``human - ids``, ``llm - ids``, ``both - ids``) gets the paired bootstrap on the
same test ratings (:func:`recforge.stats.compare_rmse`: one set of indices per resample for both
groups; the interval, the bootstrap standard error and the two-sided p-value). The *minimal
detectable difference* is ``(z_{1-alpha/2} + z_{power}) * SE`` with SE the paired bootstrap
standard error: the smallest true difference the test would find with probability ``power``
(0.8) at level ``alpha = 1 - confidence`` (0.05), i.e. 2.80 x SE. ``conclusion`` says in one
sentence what the LLM - human comparison supports.

**Run folder and resume.** ``config.json`` first; then ``master.parquet``, ``keywords.parquet``,
``movies.parquet`` (the normalised keywords of the movies used), ``groups/<group>/`` (the trials
as ``trials.csv``, the retrained ``model/``, the test predictions ``pred.npy`` and ``done.json``)
and the LLM cache ``llm-cache.jsonl`` (default client). A rerun with the same folder redoes no
finished LLM call and no finished group (``done.json`` keyed by a hash of the group's data and
settings); the statistics are recomputed (cheap, seeded). A folder holding a run of other
settings is refused (ConfigError). At the end: the tables as CSV, ``predictions.parquet``,
``s5.png`` and ``results.json``. The same seed gives the same numbers (on the CPU; CUDA's
embedding gradients add in a nondeterministic order, so GPU reruns may differ in the last digits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import statistics
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from .. import datasets as _datasets
from .. import prompts as P
from .. import split as _split
from .. import stats as _stats
from .._native import Interactions
from ..datasets import Dataset
from ..errors import ConfigError, DataError
from ..parsing import keyword_list
from ..rerank import answer_schema
from ._common import check_run_dir, save_result, data_root, run_dir_name, versions, write_json

__all__ = [
    "COMPARISONS",
    "GROUPS",
    "KEYWORD_COLUMNS",
    "S5Config",
    "S5Result",
    "build_vocab",
    "candidates",
    "conclusion",
    "default_run_dir",
    "distinct_keywords",
    "exclusion",
    "generate_keywords",
    "group_features",
    "load_data",
    "master_table",
    "mdd_factor",
    "multi_hot",
    "normalise_keyword",
    "paired_rmse",
    "run_s5",
    "s_stem",
]

log = logging.getLogger("recforge")

#: The feature groups, in table order: TMDB's human keywords, the LLM's keywords, user and item
#: ids only, and both keyword sets together.
GROUPS = ("human", "llm", "ids", "both")
#: The paired comparisons ``(a, b)``: the difference is RMSE(a) - RMSE(b).
COMPARISONS = (("llm", "human"), ("human", "ids"), ("llm", "ids"), ("both", "ids"))

# Settings that change the keywords or the trained models: a run folder holding results of other
# values is refused. (Statistics, storage, device and chunking may change between runs.)
_RESULT_KEYS = (
    "dataset", "data_dir", "tmdb_path", "max_movies", "min_keywords", "max_keywords", "max_words", "max_retries",
    "temperature", "retry_temperature_step", "presence_penalty", "frequency_penalty", "max_tokens", "min_freq",
    "stemming", "split", "n_trials", "epochs", "patience", "batch_size", "dims", "lr_range", "reg_range",
    "pruning_warmup", "seed",
)  # fmt: skip


@dataclass
class S5Config:
    """Settings of :func:`run_s5`; every field has a default (validated on construction).

    Data:
        dataset: ``"movielens-small"`` (the bundled ml-latest-small, default) or the path of a
            MovieLens folder with ``links.csv`` (25M, 32M, latest; :func:`recforge.datasets.load_movielens`).
        data_dir: where the TMDB 5000 folder ``tmdb-5000`` is looked for; default
            ``$RECFORGE_DATA``, else ``../shared/data`` from the working directory.
        tmdb_path: ``tmdb_5000_movies.csv``, its zip, or a folder holding either (default
            ``<data_dir>/tmdb-5000``).
        max_movies: keep only the ``max_movies`` most-rated candidate movies (None: all).

    Keyword generation:
        min_keywords / max_keywords: the number of distinct keywords asked for and accepted (5, 15).
        max_words: the longest keyword accepted, in words (5).
        max_retries: re-asks of an invalid answer (2). temperature: 0.0 (greedy).
        presence_penalty: OpenAI's presence penalty on every keyword request (1.0; the API
            accepts -2..2): a token already in the answer loses this much logit, so the model
            moves on to new keywords instead of repeating one. 0: none sent (the server's default).
        frequency_penalty: OpenAI's frequency penalty (0.5; -2..2): a token loses this much
            logit per time it is already in the answer, so a loop gets costlier at every turn.
            0: none sent.
        retry_temperature_step: temperature added per re-ask (0.2).
        max_tokens: completion limit per answer (256). chunk_size: movies per batch between
            two writes of ``keywords.parquet`` (256).

    Features:
        min_freq: the fewest candidate movies a keyword must tag to become a feature (2).
        stemming: ``"none"`` (default) or ``"s"`` (Harman's S-stemmer, see :func:`s_stem`).

    Split and tuning (the same for every group):
        split: train / validation / test fractions of each user's ratings ((0.8, 0.1, 0.1)).
        n_trials: finished Optuna trials per group (20). epochs: at most, per trial (20).
        patience: epochs without a better validation RMSE before stopping (3).
        batch_size: 1024. dims: embedding sizes tried ((8, 16, 32, 64)).
        lr_range: learning rate, log-uniform ((1e-3, 3e-2)). reg_range: L2 on the embeddings,
            log-uniform ((1e-6, 1e-1)). pruning_warmup: epochs before a trial may be pruned (2).
        storage: Optuna storage: None (in memory), an RDB URL, or a journal file path
            (``.log`` / ``.journal``).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        seed: the split, the sampler, every FM's initialisation and the bootstrap (0).

    Statistics:
        n_resamples: bootstrap resamples (10,000). confidence: interval level (0.95).
        power: the power of the minimal detectable difference (0.8).
    """

    dataset: str = "movielens-small"
    data_dir: str | None = None
    tmdb_path: str | None = None
    max_movies: int | None = None
    min_keywords: int = 5
    max_keywords: int = 15
    max_words: int = 5
    max_retries: int = 2
    temperature: float = 0.0
    retry_temperature_step: float = 0.2
    presence_penalty: float = 1.0
    frequency_penalty: float = 0.5
    max_tokens: int = 256
    chunk_size: int = 256
    min_freq: int = 2
    stemming: Literal["none", "s"] = "none"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    n_trials: int = 20
    epochs: int = 20
    patience: int = 3
    batch_size: int = 1024
    dims: tuple[int, ...] = (8, 16, 32, 64)
    lr_range: tuple[float, float] = (1e-3, 3e-2)
    reg_range: tuple[float, float] = (1e-6, 1e-1)
    pruning_warmup: int = 2
    storage: str | None = None
    device: str = "auto"
    seed: int = 0
    n_resamples: int = 10_000
    confidence: float = 0.95
    power: float = 0.8

    def __post_init__(self) -> None:
        for name in ("split", "dims", "lr_range", "reg_range"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ConfigError(f"S5Config.{name} must be a list of numbers, got {value!r}")
            setattr(self, name, tuple(value))
        ints = {
            "min_keywords": (self.min_keywords, 1), "max_keywords": (self.max_keywords, 1), "max_words": (self.max_words, 1),
            "max_retries": (self.max_retries, 0), "max_tokens": (self.max_tokens, 1), "chunk_size": (self.chunk_size, 1),
            "min_freq": (self.min_freq, 1), "n_trials": (self.n_trials, 1), "epochs": (self.epochs, 1),
            "patience": (self.patience, 0), "batch_size": (self.batch_size, 1), "pruning_warmup": (self.pruning_warmup, 0),
            "seed": (self.seed, 0), "n_resamples": (self.n_resamples, 100),
        }  # fmt: skip
        if self.max_movies is not None:
            ints["max_movies"] = (self.max_movies, 1)
        ints.update({f"dims[{i}]": (d, 1) for i, d in enumerate(self.dims)})
        for name, (value, lo) in ints.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ConfigError(f"S5Config.{name} must be an integer >= {lo}, got {value!r}")
        if not self.dims:
            raise ConfigError("S5Config.dims must hold at least one embedding size")
        if self.min_keywords > self.max_keywords:
            raise ConfigError(f"S5Config: min_keywords ({self.min_keywords}) > max_keywords ({self.max_keywords})")
        floats: dict[str, Any] = {
            "temperature": self.temperature, "retry_temperature_step": self.retry_temperature_step,
            "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
            "confidence": self.confidence, "power": self.power,
            **{f"split[{i}]": v for i, v in enumerate(self.split)},
            **{f"lr_range[{i}]": v for i, v in enumerate(self.lr_range)},
            **{f"reg_range[{i}]": v for i, v in enumerate(self.reg_range)},
        }  # fmt: skip
        for name, value in floats.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(float(value)):
                raise ConfigError(f"S5Config.{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.temperature <= 2.0 or self.retry_temperature_step < 0:
            raise ConfigError("S5Config: temperature must be in [0, 2] and retry_temperature_step >= 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ConfigError(f"S5Config.{name} must be in [-2, 2] (OpenAI's range), got {getattr(self, name)!r}")
        if not 0 < self.confidence < 1 or not 0 < self.power < 1:
            raise ConfigError("S5Config: confidence and power must be in (0, 1)")
        if len(self.split) != 3 or min(self.split) <= 0 or abs(sum(self.split) - 1.0) > 1e-9:
            raise ConfigError(f"S5Config.split must be 3 positive fractions summing to 1, got {self.split!r}")
        for name in ("lr_range", "reg_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise ConfigError(f"S5Config.{name} must be (low, high) with 0 < low <= high, got {lo_hi!r}")
        if self.stemming not in ("none", "s"):
            raise ConfigError(f"S5Config.stemming must be 'none' or 's', got {self.stemming!r}")
        for name in ("dataset", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"S5Config.{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("data_dir", "tmdb_path", "storage"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"S5Config.{name} must be a string or None, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (tuples as lists)."""
        out = dataclasses.asdict(self)
        for name in ("split", "dims", "lr_range", "reg_range"):
            out[name] = list(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "S5Config":
        """A config from :meth:`to_dict`'s output (an unknown key is a ConfigError)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"S5Config has no settings {unknown}")
        return cls(**values)


def default_run_dir(config: S5Config | None = None) -> Path:
    """``runs/s5-<dataset>-<hash of the settings>`` under the working directory: running the same
    settings again resumes there, other settings get their own folder."""
    cfg = config or S5Config()
    return run_dir_name("s5", cfg.dataset, {k: v for k, v in cfg.to_dict().items() if k in _RESULT_KEYS})


# ------------------------------------------------------------------------------------------------
# Keyword normalisation, vocabularies and multi-hot features

_APOSTROPHES = re.compile(r"['\u2019\u2018`\u00b4]")
_PUNCTUATION = re.compile(r"[^\w\s]+|_+")


def s_stem(word: str) -> str:
    """Harman's S-stemmer (1991) on one lower-case word longer than 3 letters: ``-ies`` -> ``-y``
    (not after ``e`` or ``a``), ``-es`` -> ``-e`` (not after ``a``, ``e`` or ``o``), ``-s`` -> ``""``
    (not after ``u`` or ``s``); the first rule that matches applies, shorter words are kept."""
    if len(word) <= 3:
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def normalise_keyword(keyword: str, stemming: Literal["none", "s"] = "none") -> str:
    """One keyword as both sets are compared: Unicode NFKC, case folded, apostrophes removed,
    every other run of punctuation (and ``_``) replaced by a space, whitespace collapsed; with
    ``stemming="s"`` each word through :func:`s_stem`. ``"Sci-Fi"`` and ``"sci fi"`` become
    ``"sci fi"``; ``"Hero's Journey"`` becomes ``"heros journey"``. May return ``""``."""
    text = unicodedata.normalize("NFKC", keyword).casefold()
    text = _PUNCTUATION.sub(" ", _APOSTROPHES.sub("", text))
    words = text.split()
    if stemming == "s":
        words = [s_stem(w) for w in words]
    return " ".join(words)


def _normalise_list(keywords: Sequence[str] | None, stemming: Literal["none", "s"]) -> list[str]:
    """Normalised keywords, repeats and empties dropped, first occurrence order."""
    out: list[str] = []
    seen: set[str] = set()
    for kw in keywords or ():
        n = normalise_keyword(str(kw), stemming)
        if n and n not in seen:
            seen.add(n)
            out.append(n)
    return out


def build_vocab(keyword_lists: Sequence[Sequence[str]], min_freq: int = 1) -> dict[str, int]:
    """The keywords that at least ``min_freq`` of the lists hold (a list counts a keyword once),
    numbered 0.. in sorted order."""
    counts: dict[str, int] = {}
    for kws in keyword_lists:
        for kw in set(kws):
            counts[kw] = counts.get(kw, 0) + 1
    return {kw: i for i, kw in enumerate(sorted(k for k, c in counts.items() if c >= min_freq))}


def multi_hot(keyword_lists: Sequence[Sequence[str]], vocab: dict[str, int]) -> list[list[int]]:
    """Per list, the sorted, distinct vocabulary ids of its keywords (keywords outside the
    vocabulary are dropped): the multi-hot rows :meth:`recforge.models.FM.fit` takes as
    ``item_features``."""
    return [sorted({vocab[kw] for kw in kws if kw in vocab}) for kws in keyword_lists]


def group_features(
    group: str, human: Sequence[Sequence[int]], llm: Sequence[Sequence[int]], n_human: int
) -> list[list[int]] | None:
    """The FM item features of a group from the two multi-hot sets: ``human``, ``llm``, ``ids``
    (None: user and item ids only) or ``both`` (human ids, then LLM ids shifted by ``n_human``,
    the size of the human vocabulary)."""
    if group == "human":
        return [list(r) for r in human]
    if group == "llm":
        return [list(r) for r in llm]
    if group == "ids":
        return None
    if group == "both":
        return [list(h) + [n_human + j for j in m] for h, m in zip(human, llm, strict=True)]
    raise ConfigError(f"unknown group {group!r} (one of {GROUPS})")


# ------------------------------------------------------------------------------------------------
# Data unification and the exclusion rule


def master_table(ml: Dataset, tmdb: Dataset) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Join MovieLens with TMDB through ``links.csv`` (:func:`recforge.datasets.attach_tmdb`).

    Returns:
        ``(master, movies, counts)``: ``master`` one row per rating of a matched movie
        (``userId``, ``movieId``, ``rating``, ``timestamp``, ``tmdbId``, ``title``, ``overview``,
        ``human_keywords``, ``genres``, ``tmdb_genres``; in the ratings' order); ``movies`` one
        row per MovieLens movie (``item`` dense id, ``movieId``, ``tmdbId``, ``title``,
        ``overview``, ``human_keywords``, ``genres``, ``tmdb_genres``, ``n_ratings``,
        ``matched``); ``counts``: movies and ratings in all, matched, without a ``tmdbId`` and
        with a ``tmdbId`` not in TMDB.
    """
    joined = _datasets.attach_tmdb(ml, tmdb, columns=("overview", "genres", "keywords"))
    items = joined.items
    tmdb_ids = set(int(i) for i in tmdb.items["id"].tolist())
    tmdb_col = items["tmdbId"]
    has_id = tmdb_col.notna().to_numpy()
    matched = np.array([bool(h) and int(t) in tmdb_ids for h, t in zip(has_id, tmdb_col.tolist())], dtype=bool)
    x = ml.interactions.to_arrays()
    n_ratings = np.bincount(x["items"], minlength=len(items)).astype(np.int64)
    overview = [o.strip() if isinstance(o, str) else "" for o in items["tmdb_overview"].tolist()]
    genres = [[g for g in str(s).split("|") if g and g != "(no genres listed)"] if isinstance(s, str) else []
              for s in items["genres"].tolist()]  # fmt: skip
    movies = pd.DataFrame({
        "item": np.arange(len(items), dtype=np.int64),
        "movieId": items["movieId"].to_numpy(),
        "tmdbId": tmdb_col.astype("Int64").to_numpy(),
        "title": [str(t) for t in items["title"].tolist()],
        "overview": overview,
        "human_keywords": [list(k) for k in items["tmdb_keywords"].tolist()],
        "genres": genres,
        "tmdb_genres": [list(g) for g in items["tmdb_genres"].tolist()],
        "n_ratings": n_ratings,
        "matched": matched,
    })  # fmt: skip
    rated_matched = matched[x["items"]]
    rows = np.flatnonzero(rated_matched)
    items_of = x["items"][rows]
    users_raw = np.asarray(ml.user_map.decode(x["users"][rows]))
    mv = movies.iloc[items_of]
    master = pd.DataFrame({
        "userId": users_raw,
        "movieId": mv["movieId"].to_numpy(),
        "rating": x["ratings"][rows] if x["ratings"] is not None else np.full(len(rows), np.nan, np.float32),
        "timestamp": x["timestamps"][rows] if x["timestamps"] is not None else np.zeros(len(rows), np.int64),
        "tmdbId": mv["tmdbId"].to_numpy(),
        "title": mv["title"].to_numpy(),
        "overview": mv["overview"].to_numpy(),
        "human_keywords": mv["human_keywords"].to_numpy(),
        "genres": mv["genres"].to_numpy(),
        "tmdb_genres": mv["tmdb_genres"].to_numpy(),
    })  # fmt: skip
    no_id = ~has_id
    counts = {
        "movies": len(movies), "ratings": int(len(x["items"])),
        "movies_matched": int(matched.sum()), "ratings_matched": int(len(rows)),
        "movies_unmatched": int((~matched).sum()), "ratings_unmatched": int(len(x["items"]) - len(rows)),
        "movies_without_tmdb_id": int(no_id.sum()), "ratings_without_tmdb_id": int(n_ratings[no_id].sum()),
        "movies_tmdb_id_not_in_tmdb": int((has_id & ~matched).sum()),
        "ratings_tmdb_id_not_in_tmdb": int(n_ratings[has_id & ~matched].sum()),
    }  # fmt: skip
    return master, movies, counts


def candidates(movies: pd.DataFrame, max_movies: int | None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The movies that get an LLM prompt: matched, with an overview and at least one human
    keyword, the ``max_movies`` most-rated first (ties by ``movieId``). Returns them (most-rated
    first) and the exclusion steps so far (``step``, ``movies``, ``ratings``)."""
    steps: list[dict[str, Any]] = []
    keep = movies

    def drop(name: str, mask: npt.NDArray[np.bool_]) -> None:
        nonlocal keep
        steps.append({"step": name, "movies": int((~mask).sum()), "ratings": int(keep["n_ratings"].to_numpy()[~mask].sum())})
        keep = keep[mask]

    steps.append({"step": "MovieLens", "movies": len(movies), "ratings": int(movies["n_ratings"].sum())})
    drop("excluded: no TMDB 5000 match", keep["matched"].to_numpy(bool))
    drop("excluded: no plot overview", np.array([bool(o) for o in keep["overview"]], dtype=bool))
    drop("excluded: no human keywords", np.array([len(k) > 0 for k in keep["human_keywords"]], dtype=bool))
    order = np.lexsort((keep["movieId"].to_numpy(), -keep["n_ratings"].to_numpy()))
    keep = keep.iloc[order]
    mask = np.zeros(len(keep), dtype=bool)
    mask[: len(keep) if max_movies is None else max_movies] = True
    drop("excluded: beyond max_movies (least rated)", mask)
    return keep.reset_index(drop=True), steps


def exclusion(
    movies: pd.DataFrame, *, min_freq: int = 2, stemming: Literal["none", "s"] = "none"
) -> tuple[pd.DataFrame, dict[str, int], dict[str, int], list[dict[str, Any]]]:
    """The exclusion rule and the two vocabularies.

    ``movies`` has ``human_keywords`` (lists) and ``llm_keywords`` (lists, or None where the LLM
    failed), and ``n_ratings`` (optional). Both sets are normalised (:func:`normalise_keyword`);
    each vocabulary holds the keywords of at least ``min_freq`` movies among those whose LLM
    answer is valid; a movie left without a keyword in either set is excluded.

    Returns:
        ``(kept, human_vocab, llm_vocab, steps)``: the kept rows with ``human`` and ``llm`` (the
        normalised keywords in the vocabulary, first-occurrence order) and ``human_all`` /
        ``llm_all`` (before the frequency filter), the vocabularies, and the exclusion steps
        (``step``, ``movies``, ``ratings``).
    """
    n_ratings = movies["n_ratings"].to_numpy() if "n_ratings" in movies.columns else np.zeros(len(movies), np.int64)
    llm_ok = np.array([isinstance(k, (list, tuple, np.ndarray)) for k in movies["llm_keywords"]], dtype=bool)
    steps = [{"step": "excluded: LLM failed", "movies": int((~llm_ok).sum()), "ratings": int(n_ratings[~llm_ok].sum())}]
    ok = movies[llm_ok].copy()
    ok["human_all"] = [_normalise_list(list(k), stemming) for k in ok["human_keywords"]]
    ok["llm_all"] = [_normalise_list(list(k), stemming) for k in ok["llm_keywords"]]
    human_vocab = build_vocab(ok["human_all"].tolist(), min_freq)
    llm_vocab = build_vocab(ok["llm_all"].tolist(), min_freq)
    ok["human"] = [[k for k in kws if k in human_vocab] for kws in ok["human_all"]]
    ok["llm"] = [[k for k in kws if k in llm_vocab] for kws in ok["llm_all"]]
    ratings_ok = n_ratings[llm_ok]
    no_h = np.array([not k for k in ok["human"]], dtype=bool)
    steps.append({"step": f"excluded: no human keyword tags >= {min_freq} movies", "movies": int(no_h.sum()),
                  "ratings": int(ratings_ok[no_h].sum())})  # fmt: skip
    no_l = np.array([not k for k in ok["llm"]], dtype=bool) & ~no_h
    steps.append({"step": f"excluded: no LLM keyword tags >= {min_freq} movies", "movies": int(no_l.sum()),
                  "ratings": int(ratings_ok[no_l].sum())})  # fmt: skip
    kept = ok[~no_h & ~no_l].reset_index(drop=True)
    return kept, human_vocab, llm_vocab, steps


# ------------------------------------------------------------------------------------------------
# Statistics


def paired_rmse(
    y_true: npt.ArrayLike, pred_a: npt.ArrayLike, pred_b: npt.ArrayLike, *, n_resamples: int = 10_000,
    confidence: float = 0.95, power: float = 0.8, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """RMSE(a) - RMSE(b) on the same ratings (:func:`recforge.stats.compare_rmse`, paired
    bootstrap): ``difference``, ``low`` / ``high`` (percentile interval), ``std_error`` (of the
    bootstrap differences), ``p_value`` (two-sided), and ``mdd``, the minimal detectable
    difference ``(z_{1 - alpha/2} + z_{power}) * std_error`` with ``alpha = 1 - confidence``
    (2.80 x SE at the defaults)."""
    c = _stats.compare_rmse(y_true, pred_a, pred_b, n_resamples, confidence, seed)
    return {"difference": c.difference, "low": c.low, "high": c.high, "std_error": c.std_error,
            "p_value": c.p_value, "mdd": mdd_factor(confidence, power) * c.std_error}  # fmt: skip


def mdd_factor(confidence: float = 0.95, power: float = 0.8) -> float:
    """``z_{1 - alpha/2} + z_{power}`` with ``alpha = 1 - confidence`` (2.8016 at 0.95 and 0.8)."""
    z = statistics.NormalDist()
    return z.inv_cdf(1 - (1 - confidence) / 2) + z.inv_cdf(power)


# ------------------------------------------------------------------------------------------------
# Keyword generation

#: The columns of ``keywords.parquet``, in order.
KEYWORD_COLUMNS = (
    "movieId", "tmdbId", "title", "overview", "prompt_hash", "raw_answer", "keywords", "error", "ok", "attempts",
    "cached", "prompt_tokens", "completion_tokens",
)  # fmt: skip


def distinct_keywords(
    min_n: int = 5, max_n: int = 15, *, max_words: int | None = 5, stemming: Literal["none", "s"] = "none"
) -> Any:
    """The validator of S5's keyword answers: :func:`recforge.parsing.keyword_list`'s parsing and
    cleaning, then repeats dropped where two keywords are equal after :func:`normalise_keyword`
    (case, punctuation, whitespace; and the S-stemmer with ``stemming="s"``), the first occurrence
    kept as written, together with keywords that normalise to nothing; *then* the count is
    checked. ``["Love", "love", "Sci-Fi", "sci fi", ...]`` counts two keywords.

    Raises (from the validator):
        DataError: no list, a keyword of more than ``max_words`` words, or fewer than ``min_n``
            or more than ``max_n`` distinct keywords.
    """
    if not 1 <= min_n <= max_n:
        raise ConfigError(f"distinct_keywords needs 1 <= min_n <= max_n, got {min_n}, {max_n}")
    parse = keyword_list(1, 2**31, max_words=max_words)

    def validate(text: str) -> list[str]:
        try:
            parsed = parse(text)
        except DataError as e:
            if not str(e).startswith("0 distinct keywords"):
                raise
            parsed = []  # an empty list: counted below, with this validator's bounds
        out: list[str] = []
        seen: set[str] = set()
        for kw in parsed:
            key = normalise_keyword(kw, stemming)
            if key and key not in seen:
                seen.add(key)
                out.append(kw)
        if not min_n <= len(out) <= max_n:
            one = " ".join(text.split())
            preview = one if len(one) <= 160 else one[:160] + "..."
            raise DataError(f"{len(out)} distinct keywords, {min_n} to {max_n} asked for: {preview!r}")
        return out

    return validate


def _penalties(cfg: S5Config) -> dict[str, float]:
    """The repetition penalties to send (those not 0), as ``chat_batch`` keyword arguments."""
    return {k: float(v) for k, v in (("presence_penalty", cfg.presence_penalty), ("frequency_penalty", cfg.frequency_penalty)) if v}


def _model_id(client: Any) -> str:
    """What identifies the client's model in the prompt hash (its model name or file name)."""
    model = getattr(client, "model", None)
    return Path(model).name if isinstance(model, Path) else str(model)


def _keyword_jobs(cfg: S5Config, movies: pd.DataFrame, client: Any) -> tuple[list[list[P.Message]], list[str], dict[str, Any] | None]:
    """Each movie's messages and prompt hash, and the answer schema for constrained clients."""
    constrained = bool(getattr(client, "supports_constraints", False))
    schema = None
    if constrained:
        words = {"type": "string", "minLength": 2, "maxLength": 40}
        schema = answer_schema(
            "keywords", {"type": "array", "items": words, "minItems": cfg.min_keywords, "maxItems": cfg.max_keywords}
        )
    settings = {
        "model": _model_id(client), "schema": schema, "min": cfg.min_keywords, "max": cfg.max_keywords,
        "max_words": cfg.max_words, "max_retries": cfg.max_retries, "temperature": cfg.temperature,
        "step": cfg.retry_temperature_step, "max_tokens": cfg.max_tokens, "stemming": cfg.stemming,
        **_penalties(cfg),
    }  # fmt: skip
    messages, hashes = [], []
    for title, overview in zip(movies["title"].tolist(), movies["overview"].tolist()):
        msgs = P.keywords_messages(str(title), str(overview), min_n=cfg.min_keywords, max_n=cfg.max_keywords)
        messages.append(msgs)
        text = json.dumps({"messages": msgs, **settings}, sort_keys=True)
        hashes.append(hashlib.sha256(text.encode()).hexdigest()[:16])
    return messages, hashes, schema


def _ask_chunk(
    cfg: S5Config, client: Any, messages: list[list[P.Message]], schema: dict[str, Any] | None,
    report: dict[str, Any], progress: bool,
) -> list[dict[str, Any]]:  # fmt: skip
    """One prompt per movie, validated, invalid answers re-asked (bounded); one record each."""
    validate = distinct_keywords(cfg.min_keywords, cfg.max_keywords, max_words=cfg.max_words, stemming=cfg.stemming)
    penalty = _penalties(cfg)
    recs: list[dict[str, Any]] = [
        {"raw_answer": None, "keywords": None, "error": None, "ok": False, "attempts": 0, "cached": False,
         "prompt_tokens": 0, "completion_tokens": 0}
        for _ in messages
    ]  # fmt: skip
    pending = list(enumerate(messages))
    for attempt in range(cfg.max_retries + 1):
        if not pending:
            break
        t = min(2.0, cfg.temperature + attempt * cfg.retry_temperature_step)
        if attempt:
            report["reasks"] += len(pending)
        requests: list[Any] = [{"messages": m, "response_format": schema} if schema is not None else m for _, m in pending]
        batch = client.chat_batch(requests, temperature=t, max_tokens=cfg.max_tokens, progress=progress, **penalty)
        report["llm_calls"] += len(pending)
        again: list[tuple[int, list[P.Message]]] = []
        for (k, _), res in zip(pending, batch):
            rec = recs[k]
            rec["attempts"] += 1
            rec["cached"] = bool(res.cached)
            report["cache_hits"] += int(res.cached)
            if res.usage:
                rec["prompt_tokens"] += int(res.usage.get("prompt_tokens", 0))
                rec["completion_tokens"] += int(res.usage.get("completion_tokens", 0))
            if not res.ok or res.text is None:
                # The client already retried transport errors; the movie fails, counted.
                report["llm_errors"] += 1
                rec["error"] = f"LLM request failed: {res.error}"
                continue
            rec["raw_answer"] = res.text
            try:
                rec["keywords"] = validate(res.text)
            except DataError as e:
                report["invalid_answers"] += 1
                tries = attempt + 1
                rec["error"] = f"invalid answer after {tries} {'try' if tries == 1 else 'tries'}: {e}"
                if attempt < cfg.max_retries:
                    again.append((k, P.reask_messages(messages[k], res.text, str(e))))
            else:
                rec["ok"], rec["error"] = True, None
        pending = again
    return recs


def _optional_int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _read_keywords(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        old = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        log.warning("%s cannot be read (%s): generating the keywords again", path, e)
        return None
    if list(old.columns) != list(KEYWORD_COLUMNS):
        return None
    return old


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` through a temporary file (a crash never leaves half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def generate_keywords(
    client: Any, movies: pd.DataFrame, config: S5Config | None = None, *, path: str | Path | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:  # fmt: skip
    """LLM keywords for each movie of ``movies`` (``movieId``, ``title``, ``overview``; ``tmdbId``
    optional), one prompt per movie, as the module docs describe.

    With ``path`` (a ``.parquet`` file) the rows already there whose ``prompt_hash`` matches are
    reused without a request, and the file is rewritten after every ``config.chunk_size`` movies.

    Returns:
        The table (:data:`KEYWORD_COLUMNS`, one row per movie in input order; ``keywords`` is the
        validated list, or None where the movie failed and ``error`` says why) and a report:
        ``movies``, ``ok``, ``failed``, ``reused`` (rows taken from ``path``), ``sent`` (movies
        prompted), ``llm_calls``, ``cache_hits``, ``new_calls`` (calls the cache did not answer),
        ``reasks``, ``invalid_answers``, ``llm_errors``, ``retried`` (movies re-asked), tokens and
        ``seconds``.
    """
    cfg = config if config is not None else S5Config()
    t0 = time.perf_counter()
    messages, hashes, schema = _keyword_jobs(cfg, movies, client)
    target = None if path is None else Path(path)
    old = _read_keywords(target) if target is not None else None
    reuse: dict[tuple[int, str], dict[str, Any]] = {}
    if old is not None:
        for row in old.to_dict("records"):
            reuse[(int(row["movieId"]), str(row["prompt_hash"]))] = row
    report: dict[str, Any] = dict.fromkeys(("llm_calls", "cache_hits", "reasks", "invalid_answers", "llm_errors"), 0)
    ids = [int(m) for m in movies["movieId"].tolist()]
    tmdb = movies["tmdbId"].tolist() if "tmdbId" in movies.columns else [None] * len(movies)
    rows: list[dict[str, Any] | None] = [None] * len(movies)
    todo: list[int] = []
    for k, (mid, h) in enumerate(zip(ids, hashes)):
        hit = reuse.get((mid, h))
        if hit is not None:
            kw = hit["keywords"]
            hit = {**hit, "keywords": None if kw is None else [str(x) for x in kw]}
            rows[k] = hit
        else:
            todo.append(k)
    reused = len(movies) - len(todo)

    def frame() -> pd.DataFrame:
        done = [r for r in rows if r is not None]
        out = pd.DataFrame.from_records(done, columns=list(KEYWORD_COLUMNS))
        for col in ("attempts", "prompt_tokens", "completion_tokens"):
            out[col] = out[col].astype("int64")
        for col in ("ok", "cached"):
            out[col] = out[col].astype(bool)
        out["tmdbId"] = out["tmdbId"].astype("Int64")
        return out

    retried = 0
    for start in range(0, len(todo), cfg.chunk_size):
        chunk = todo[start : start + cfg.chunk_size]
        recs = _ask_chunk(cfg, client, [messages[k] for k in chunk], schema, report, progress)
        for k, rec in zip(chunk, recs):
            retried += int(rec["attempts"] > 1)
            rows[k] = {
                "movieId": ids[k], "tmdbId": _optional_int(tmdb[k]),
                "title": str(movies["title"].iloc[k]), "overview": str(movies["overview"].iloc[k]),
                "prompt_hash": hashes[k], **rec,
            }  # fmt: skip
        if target is not None:
            _write_parquet(frame(), target)
    table = frame()
    if target is not None and (old is None or len(old) != len(table) or todo):
        _write_parquet(table, target)
    ok = int(table["ok"].sum()) if len(table) else 0
    report = {
        "movies": len(table), "ok": ok, "failed": len(table) - ok, "reused": reused, "sent": len(todo),
        **report, "new_calls": report["llm_calls"] - report["cache_hits"], "retried": retried,
        "prompt_tokens": int(table["prompt_tokens"].sum()) if len(table) else 0,
        "completion_tokens": int(table["completion_tokens"].sum()) if len(table) else 0,
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    return table, report


# ------------------------------------------------------------------------------------------------
# Data loading


def load_data(config: S5Config) -> tuple[Dataset, Dataset]:
    """The MovieLens dataset and TMDB 5000 that ``config`` names (see :class:`S5Config`)."""
    name = config.dataset
    if name == "movielens-small":
        ml = _datasets.movielens_small()
    elif Path(name).is_dir():
        ml = _datasets.load_movielens(name)
    else:
        raise ConfigError(f"S5Config.dataset: {name!r} is neither 'movielens-small' nor a MovieLens folder")
    if "tmdbId" not in ml.items.columns:
        raise ConfigError(f"{ml.name} has no links.csv (tmdbId): S5 joins MovieLens to TMDB through it")
    path = Path(config.tmdb_path) if config.tmdb_path else data_root(config.data_dir) / "tmdb-5000"
    if not path.exists():
        raise ConfigError(
            f"TMDB 5000 not found at {path}: put tmdb_5000_movies.csv (or its zip) there, or set "
            "S5Config.tmdb_path, S5Config.data_dir or RECFORGE_DATA"
        )
    return ml, _datasets.load_tmdb(path)


def _interactions(ml: Dataset, items: npt.NDArray[np.int64]) -> tuple[Interactions, npt.NDArray[Any]]:
    """The ratings of ``items`` (dense MovieLens ids) as Interactions over new dense ids: item
    ``j`` is ``items[j]``, users numbered in raw-id order. Returns them and the users' raw ids."""
    x = ml.interactions.to_arrays()
    pos = np.full(ml.n_items, -1, dtype=np.int64)
    pos[items] = np.arange(len(items))
    mask = pos[x["items"]] >= 0
    users, uu = np.unique(x["users"][mask], return_inverse=True)
    out = Interactions.from_arrays(
        uu.astype(np.int64), pos[x["items"][mask]], ratings=x["ratings"][mask],
        timestamps=None if x["timestamps"] is None else x["timestamps"][mask], n_users=len(users), n_items=len(items),
    )  # fmt: skip
    return out, np.asarray(ml.user_map.decode(users))


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def _parts_digest(parts: Any) -> str:
    arrays = []
    for x in parts:
        a = x.to_arrays()
        arrays += [a["users"], a["items"], a["ratings"]]
    return _digest(*arrays)


# ------------------------------------------------------------------------------------------------
# Tuning and the final models

_TUNING_KEYS = ("n_trials", "epochs", "patience", "batch_size", "dims", "lr_range", "reg_range", "pruning_warmup", "seed")


def _storage(spec: str | None) -> Any:
    """An Optuna storage from ``S5Config.storage``: None (in memory), a journal file path
    (``.log`` / ``.journal``) or an RDB URL."""
    if spec is None:
        return None
    if "://" not in spec and spec.endswith((".log", ".journal")):
        import optuna
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(spec))
    return spec


def _trials_table(group: str, study: Any) -> pd.DataFrame:
    """One row per finished trial (number order): state, value (best validation RMSE; a pruned
    trial's last reported one), params, epochs (the best epoch count, or the epochs run), and the
    best complete value so far."""
    rows = []
    best = math.inf
    for t in sorted(study.trials, key=lambda t: t.number):
        state = t.state.name.lower()
        if state not in ("complete", "pruned"):
            continue
        if state == "complete":
            value = float(t.value)
            best = min(best, value)
        else:
            steps = sorted(t.intermediate_values)
            value = float(t.intermediate_values[steps[-1]]) if steps else float("nan")
        epochs = t.user_attrs.get("epochs", len(t.intermediate_values))
        rows.append({"group": group, "trial": t.number, "state": state, "value": value, "dim": t.params.get("dim"),
                     "lr": t.params.get("lr"), "reg": t.params.get("reg"), "epochs": int(epochs),
                     "best_so_far": best if math.isfinite(best) else float("nan")})  # fmt: skip
    return pd.DataFrame(rows, columns=["group", "trial", "state", "value", "dim", "lr", "reg", "epochs", "best_so_far"])


def _tune(
    cfg: S5Config, group: str, study_name: str, train: Interactions, valid: Interactions,
    feats: list[list[int]] | None, progress: bool,
) -> Any:  # fmt: skip
    """The group's Optuna study, with ``n_trials`` finished trials."""
    import optuna
    from tqdm.auto import tqdm

    from ..models import FM
    from ..tuning import optuna_callback

    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=max(1, min(10, cfg.n_trials // 2)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=cfg.pruning_warmup)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=study_name, storage=_storage(cfg.storage), direction="minimize", sampler=sampler, pruner=pruner,
            load_if_exists=True,
        )  # fmt: skip
    finally:
        optuna.logging.set_verbosity(verbosity)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def objective(trial: Any) -> float:
        dim = trial.suggest_categorical("dim", list(cfg.dims))
        lr = trial.suggest_float("lr", cfg.lr_range[0], cfg.lr_range[1], log=True)
        reg = trial.suggest_float("reg", cfg.reg_range[0], cfg.reg_range[1], log=True)
        model = FM(int(dim), loss="mse", epochs=cfg.epochs, batch_size=cfg.batch_size, lr=lr, reg=reg, seed=cfg.seed,
                   device=cfg.device)  # fmt: skip
        model.fit(train, valid, item_features=feats, callbacks=[optuna_callback(trial, "rmse")], patience=cfg.patience,
                  progress=False)  # fmt: skip
        if model.interrupted:
            raise KeyboardInterrupt("S5 tuning interrupted: run again with the same run_dir to resume")
        best = int(model.best_epoch if model.best_epoch is not None else len(model.history) - 1)
        trial.set_user_attr("epochs", best + 1)
        return float(model.history[best]["rmse"])

    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < cfg.n_trials:
        bar = tqdm(total=cfg.n_trials, initial=done, desc=f"S5 {group}", unit="trial", disable=not progress, leave=False)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study.optimize(
                objective, n_trials=cfg.n_trials - done,
                callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=finished), lambda s, t: bar.update(1)],
            )  # fmt: skip
        finally:
            optuna.logging.set_verbosity(verbosity)
            bar.close()
    return study


def _run_group(
    cfg: S5Config, group: str, data_digest: str, parts: Any, feats: list[list[int]] | None, folder: Path,
    progress: bool,
) -> tuple[npt.NDArray[np.float32], pd.DataFrame, dict[str, Any]]:  # fmt: skip
    """Tune the group, retrain its best configuration on train + valid and predict the test
    ratings; a finished group in ``folder`` (same data and settings) is loaded instead."""
    from ..models import FM

    train, valid, test = parts
    key = _digest(group, data_digest, {k: cfg.to_dict()[k] for k in _TUNING_KEYS})
    done_path, pred_path, trials_path = folder / "done.json", folder / "pred.npy", folder / "trials.csv"
    if done_path.is_file() and pred_path.is_file() and trials_path.is_file():
        try:
            done = json.loads(done_path.read_text())
        except (OSError, ValueError):
            done = {}
        if done.get("key") == key:
            pred = np.load(pred_path)
            if pred.shape == (test.n_interactions,):
                trials = pd.read_csv(trials_path)
                return pred.astype(np.float32), trials, {**done, "source": "loaded"}
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    study = _tune(cfg, group, f"s5-{group}-{key}", train, valid, feats, progress)
    trials = _trials_table(group, study)
    complete = trials[trials["state"] == "complete"]
    if complete.empty:
        raise DataError(f"S5 group {group!r}: no Optuna trial completed (every trial was pruned or failed)")
    best = study.best_trial
    dim, lr, reg = int(best.params["dim"]), float(best.params["lr"]), float(best.params["reg"])
    params: dict[str, Any] = {"dim": dim, "lr": lr, "reg": reg}
    epochs = int(best.user_attrs["epochs"])
    tune_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = FM(dim, loss="mse", epochs=epochs, batch_size=cfg.batch_size, lr=lr, reg=reg, seed=cfg.seed, device=cfg.device)
    model.fit(Interactions.concat([train, valid]), None, item_features=feats, progress=progress)
    if model.interrupted:
        raise KeyboardInterrupt("S5 training interrupted: run again with the same run_dir to resume")
    a = test.to_arrays()
    pred = np.asarray(model.predict(a["users"], a["items"]), dtype=np.float32)
    model.save(folder / "model")
    np.save(pred_path, pred)
    trials.to_csv(trials_path, index=False)
    info = {
        "key": key, "group": group, "study": study.study_name, "best_trial": int(best.number),
        "best_valid_rmse": float(best.value), "params": params, "epochs": epochs,
        "trials_complete": int((trials["state"] == "complete").sum()), "trials_pruned": int((trials["state"] == "pruned").sum()),
        "features": 0 if feats is None else int(max((max(r, default=-1) for r in feats), default=-1) + 1),
        "tune_seconds": tune_seconds, "retrain_seconds": time.perf_counter() - t1, "device": model.device,
    }  # fmt: skip
    write_json(done_path, info)
    return pred, trials, {**info, "source": "trained"}


# ------------------------------------------------------------------------------------------------
# Tables: keyword statistics, RMSE, comparisons, conclusion


def _overlap(a: Sequence[str], b: Sequence[str]) -> tuple[int, float]:
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb), (len(sa & sb) / union if union else float("nan"))


def _keyword_stats(kept: pd.DataFrame, ok: pd.DataFrame, hv: dict[str, int], lv: dict[str, int]) -> pd.DataFrame:
    """Vocabulary sizes and keywords per movie of each source, and their overlap."""
    h_all = build_vocab(ok["human_all"].tolist(), 1) if len(ok) else {}
    l_all = build_vocab(ok["llm_all"].tolist(), 1) if len(ok) else {}
    rows = []
    for name, col, col_all, vocab_all, vocab in (("human", "human", "human_all", h_all, hv), ("llm", "llm", "llm_all", l_all, lv)):
        n = np.array([len(k) for k in kept[col]], dtype=np.float64)
        n_all = np.array([len(k) for k in kept[col_all]], dtype=np.float64)
        rows.append({"source": name, "vocabulary": len(vocab_all), "vocabulary_kept": len(vocab),
                     "per_movie_mean": float(n.mean()) if len(n) else float("nan"),
                     "per_movie_median": float(np.median(n)) if len(n) else float("nan"),
                     "per_movie_max": float(n.max()) if len(n) else float("nan"),
                     "per_movie_before_filter_mean": float(n_all.mean()) if len(n_all) else float("nan"),
                     "movies_with_overlap": float("nan"), "jaccard_mean": float("nan")})  # fmt: skip
    ov = np.array([_overlap(h, m)[0] for h, m in zip(kept["human_all"], kept["llm_all"])], dtype=np.float64)
    jac = np.array([_overlap(h, m)[1] for h, m in zip(kept["human_all"], kept["llm_all"])], dtype=np.float64)
    rows.append({"source": "shared", "vocabulary": len(set(h_all) & set(l_all)), "vocabulary_kept": len(set(hv) & set(lv)),
                 "per_movie_mean": float(ov.mean()) if len(ov) else float("nan"),
                 "per_movie_median": float(np.median(ov)) if len(ov) else float("nan"),
                 "per_movie_max": float(ov.max()) if len(ov) else float("nan"),
                 "per_movie_before_filter_mean": float(ov.mean()) if len(ov) else float("nan"),
                 "movies_with_overlap": float((ov > 0).mean()) if len(ov) else float("nan"),
                 "jaccard_mean": float(np.nanmean(jac)) if len(jac) else float("nan")})  # fmt: skip
    return pd.DataFrame(rows).set_index("source")


def _rmse_table(cfg: S5Config, y: npt.NDArray[Any], preds: dict[str, npt.NDArray[Any]], groups: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for g in GROUPS:
        r = _stats.rmse(y, preds[g], cfg.n_resamples, cfg.confidence, seed=cfg.seed)
        info = groups[g]
        rows.append({"group": g, "test_ratings": len(y), "rmse": r.estimate, "low": r.low, "high": r.high,
                     "std_error": r.std_error, "mae": float(np.mean(np.abs(np.asarray(preds[g], np.float64) - y))),
                     "best_valid_rmse": info["best_valid_rmse"], "dim": info["params"]["dim"], "lr": info["params"]["lr"],
                     "reg": info["params"]["reg"], "epochs": info["epochs"], "features": info["features"],
                     "trials_complete": info["trials_complete"], "trials_pruned": info["trials_pruned"]})  # fmt: skip
    return pd.DataFrame(rows).set_index("group")


def _comparisons(cfg: S5Config, y: npt.NDArray[Any], preds: dict[str, npt.NDArray[Any]]) -> pd.DataFrame:
    rows = []
    for a, b in COMPARISONS:
        c = paired_rmse(y, preds[a], preds[b], n_resamples=cfg.n_resamples, confidence=cfg.confidence, power=cfg.power,
                        seed=cfg.seed)  # fmt: skip
        rows.append({"comparison": f"{a} - {b}", **c, "interval_excludes_0": bool(c["low"] > 0 or c["high"] < 0)})
    return pd.DataFrame(rows).set_index("comparison")


def conclusion(comparisons: pd.DataFrame, n_test: int, confidence: float = 0.95, power: float = 0.8) -> str:
    """One sentence on what the ``llm - human`` paired comparison supports."""
    row = comparisons.loc["llm - human"]
    d, lo, hi, p, mdd = (float(row[c]) for c in ("difference", "low", "high", "p_value", "mdd"))
    pct = f"{confidence * 100:g}%"
    stat = f"RMSE(LLM) - RMSE(human) = {d:+.4f} ({pct} CI {lo:+.4f} to {hi:+.4f}, paired bootstrap p = {p:.3g})"
    if lo > 0 or hi < 0:
        better, worse = ("human", "LLM") if d > 0 else ("LLM", "human")
        return f"On {n_test:,} test ratings, {better} keywords predict ratings better than {worse} keywords: {stat}."
    bound = max(abs(lo), abs(hi))
    return (
        f"On {n_test:,} test ratings the data show no difference between LLM and human keywords ({stat}): "
        f"the interval rules out differences larger than {bound:.4f} RMSE, and the experiment had {power:.0%} power "
        f"only for differences of {mdd:.4f} or more, so smaller ones remain possible."
    )


# ------------------------------------------------------------------------------------------------
# Result


@dataclass
class S5Result:
    """What :func:`run_s5` measured. Tables (pandas):

    Attributes:
        counts: index ``step``: ``movies`` and ``ratings`` at each step: ``MovieLens`` (all),
            each exclusion (no TMDB 5000 match, no overview, no human keywords, beyond
            ``max_movies``, LLM failed, no human / LLM keyword left after the frequency filter),
            and ``used by every group``.
        keyword_report: one ``value`` column: the LLM stage's counts (see
            :func:`generate_keywords`) with ``invalid_answer_rate`` (invalid answers / calls).
        keyword_stats: index ``human``, ``llm``, ``shared``: vocabulary sizes (normalised, and
            kept by ``min_freq``), keyword features per used movie (mean, median, max; for
            ``shared`` the keywords both sets give a movie, before the filter), the share of movies
            whose two sets share a keyword and the mean Jaccard overlap.
        rmse: index = group: ``test_ratings``, ``rmse`` with ``low`` / ``high`` (bootstrap
            interval) and ``std_error``, ``mae``, the best trial's validation RMSE and
            configuration (``dim``, ``lr``, ``reg``, ``epochs``), ``features`` (keyword features)
            and the trial counts.
        comparisons: index ``"a - b"`` (:data:`COMPARISONS`): ``difference`` (RMSE(a) - RMSE(b)),
            ``low`` / ``high``, ``std_error``, ``p_value`` (two-sided), ``mdd`` (minimal
            detectable difference) and ``interval_excludes_0``.
        trials: one row per Optuna trial of every group (see the module docs).
        movies: one row per used movie: ``item`` (dense id of the FM), ``movieId``, ``tmdbId``,
            ``title``, ``n_ratings``, ``human`` / ``llm`` (the features' keywords),
            ``human_all`` / ``llm_all`` (normalised, before the frequency filter), ``overlap``
            and ``jaccard`` (of the two sets before the filter).
        predictions: one row per test rating: ``userId``, ``movieId``, ``rating`` and
            ``pred_<group>`` for each group.
        conclusion: one sentence on the LLM - human comparison.
        info: what ``results.json`` holds (versions, seed, protocol, counts, split, LLM client,
            groups, summary, timings).
        config: the settings. run_dir: the run folder (None when not saved).
    """

    config: S5Config
    counts: pd.DataFrame
    keyword_report: pd.DataFrame
    keyword_stats: pd.DataFrame
    rmse: pd.DataFrame
    comparisons: pd.DataFrame
    trials: pd.DataFrame
    movies: pd.DataFrame
    predictions: pd.DataFrame
    conclusion: str
    info: dict[str, Any]
    run_dir: Path | None = None

    #: The tables saved as ``<name>.csv`` (``movies`` and ``predictions`` go to Parquet).
    TABLES: ClassVar[tuple[str, ...]] = ("counts", "keyword_report", "keyword_stats", "rmse", "comparisons", "trials")

    def __str__(self) -> str:
        with pd.option_context("display.width", 160, "display.max_columns", 30, "display.precision", 4):
            cols = ["test_ratings", "rmse", "low", "high", "mae", "best_valid_rmse", "dim", "lr", "reg", "epochs", "features"]
            return (
                f"S5 on {self.info['dataset']['name']} + TMDB 5000: movies and ratings\n{self.counts.to_string()}\n\n"
                f"Test RMSE ({self.config.confidence:.0%} bootstrap CI, {self.config.n_resamples:,} resamples)\n"
                f"{self.rmse[cols].to_string()}\n\n"
                f"Paired differences (RMSE(a) - RMSE(b), same test ratings; mdd: minimal detectable difference)\n"
                f"{self.comparisons.to_string()}\n\n{self.conclusion}"
            )

    def __repr__(self) -> str:
        return f"S5Result(dataset={self.info['dataset']['name']!r}, movies={len(self.movies)}, run_dir={self.run_dir!r})"

    def _repr_html_(self) -> str:
        parts = [
            "<h4>Movies and ratings</h4>", self.counts.to_html(),
            "<h4>Test RMSE</h4>", self.rmse.to_html(float_format="%.4f"),
            "<h4>Paired differences</h4>", self.comparisons.to_html(float_format="%.4f"),
            f"<p>{self.conclusion}</p>",
            "<h4>Keywords</h4>", self.keyword_stats.to_html(float_format="%.3f"),
        ]  # fmt: skip
        return "\n".join(parts)

    def plot(self) -> Any:
        """A matplotlib figure: (1) test RMSE of each group with its bootstrap interval, (2) the
        paired differences with their intervals and the +-minimal detectable difference band,
        (3) the Optuna optimisation histories (validation RMSE per trial, best so far), (4)
        vocabulary sizes, (5) keyword features per movie, (6) the human/LLM overlap per movie."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(16, 8.5), layout="constrained")
        axes = fig.subplots(2, 3)
        ax = axes[0, 0]
        r = self.rmse
        y = np.arange(len(r))
        ax.errorbar(r["rmse"], y, xerr=[r["rmse"] - r["low"], r["high"] - r["rmse"]], fmt="o", capsize=4)
        ax.set_yticks(y, list(r.index))
        ax.invert_yaxis()
        ax.set_xlabel("test RMSE")
        ax.set_title(f"test RMSE, {self.config.confidence:.0%} bootstrap CI")
        ax = axes[0, 1]
        c = self.comparisons
        y = np.arange(len(c))
        ax.errorbar(c["difference"], y, xerr=[c["difference"] - c["low"], c["high"] - c["difference"]], fmt="o", capsize=4)
        for k, m in enumerate(c["mdd"]):
            ax.fill_betweenx([k - 0.3, k + 0.3], -m, m, color="grey", alpha=0.2, lw=0)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, list(c.index))
        ax.invert_yaxis()
        ax.set_xlabel("RMSE(a) - RMSE(b) (grey: +- minimal detectable difference)")
        ax.set_title("paired bootstrap differences")
        ax = axes[0, 2]
        for g in GROUPS:
            t = self.trials[self.trials["group"] == g]
            line = ax.plot(t["trial"], t["best_so_far"], label=g)[0]
            done = t[t["state"] == "complete"]
            ax.scatter(done["trial"], done["value"], s=12, color=line.get_color(), alpha=0.6)
            pr = t[t["state"] == "pruned"]
            ax.scatter(pr["trial"], pr["value"], s=12, marker="x", color=line.get_color(), alpha=0.6)
        values = self.trials["value"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values):  # a few diverged trials must not flatten the others
            lo = float(values.min())
            ax.set_ylim(lo * 0.98, min(float(values.max()), lo * 1.3) * 1.01)
        ax.set_xlabel("trial")
        ax.set_ylabel("validation RMSE (axis cut at 1.3 x the best)")
        ax.set_title("Optuna histories (x: pruned)")
        ax.legend()
        ax = axes[1, 0]
        ks = self.keyword_stats
        x = np.arange(len(ks))
        ax.bar(x - 0.2, ks["vocabulary"], 0.4, label="normalised")
        ax.bar(x + 0.2, ks["vocabulary_kept"], 0.4, label=f"tagging >= {self.config.min_freq} movies")
        ax.set_xticks(x, list(ks.index))
        ax.set_title("vocabulary sizes")
        ax.legend()
        ax = axes[1, 1]
        nh = [len(k) for k in self.movies["human"]]
        nl = [len(k) for k in self.movies["llm"]]
        top = max([*nh, *nl, 1])
        bins = np.arange(0, top + 2) - 0.5
        ax.hist(nh, bins=bins, histtype="step", label="human")
        ax.hist(nl, bins=bins, histtype="step", label="LLM")
        ax.set_xlabel("keyword features per movie")
        ax.set_ylabel("movies")
        ax.set_title("keywords per movie")
        ax.legend()
        ax = axes[1, 2]
        jac = self.movies["jaccard"].to_numpy(dtype=float)
        ax.hist(jac[np.isfinite(jac)], bins=np.linspace(0, 1, 21))
        ax.set_xlabel("Jaccard overlap of the human and LLM sets")
        ax.set_ylabel("movies")
        mean_ov = float(self.movies["overlap"].mean()) if len(self.movies) else float("nan")
        ax.set_title(f"overlap per movie (mean shared keywords {mean_ov:.2f})")
        fig.suptitle(f"S5 on {self.info['dataset']['name']}: LLM vs human keywords as FM features")
        return fig

    def save(self, run_dir: str | Path) -> Path:
        """Write ``config.json``, the tables as CSV, ``movies.parquet``, ``predictions.parquet``,
        ``s5.png`` (when matplotlib is installed; a logged warning otherwise) and
        ``results.json`` into ``run_dir`` (created if needed); returns the folder."""
        d = save_result(self, run_dir, "s5.png", 100)
        _write_parquet(self.movies, d / "movies.parquet")
        _write_parquet(self.predictions, d / "predictions.parquet")
        return d


# ------------------------------------------------------------------------------------------------
# The pipeline


def _check_run_dir(run_dir: Path, cfg: S5Config) -> None:
    """Refuse a folder holding keywords or models made with other settings."""
    check_run_dir(run_dir, cfg.to_dict(), _RESULT_KEYS, ('keywords.parquet', 'groups'))


def run_s5(
    config: S5Config | None = None,
    *,
    run_dir: str | Path | None = None,
    client: Any = None,
    progress: bool = True,
) -> S5Result:
    """Run S5 (see the module docs for the protocol) and save it into ``run_dir``.

    Args:
        config: the settings (default :class:`S5Config()`).
        run_dir: the run folder; None: :func:`default_run_dir`. Running again with the same
            folder resumes (finished keywords and groups are reused).
        client: any :mod:`recforge.llm` client (``Client`` for a server or hosted API,
            ``LocalClient``); None: :func:`recforge.llm.default_client` with its cache in
            ``<run_dir>/llm-cache.jsonl`` (a server when ``RECFORGE_LLM_BASE_URL`` is set, else
            SmolLM2-135M-Instruct in this process).
        progress: progress bars.

    Returns:
        An :class:`S5Result`, also saved into the run folder.
    """
    cfg = config if config is not None else S5Config()
    if not isinstance(cfg, S5Config):
        raise ConfigError(f"config must be an S5Config, got {type(cfg).__name__}")
    folder = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    _check_run_dir(folder, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", cfg.to_dict())
    started = time.perf_counter()

    # 1. Data unification.
    ml, tmdb = load_data(cfg)
    master, movies, join_counts = master_table(ml, tmdb)
    _write_parquet(master, folder / "master.parquet")
    cand, steps = candidates(movies, cfg.max_movies)

    # 2. Keywords.
    if client is None:
        from ..llm import default_client

        client = default_client(cache=folder / "llm-cache.jsonl")
    kw_table, kw_report = generate_keywords(client, cand, cfg, path=folder / "keywords.parquet", progress=progress)
    cand = cand.assign(llm_keywords=kw_table["keywords"].tolist())

    # 3. Features and the exclusion rule.
    kept, hv, lv, steps2 = exclusion(cand, min_freq=cfg.min_freq, stemming=cfg.stemming)
    steps += steps2
    steps.append({"step": "used by every group", "movies": len(kept), "ratings": int(kept["n_ratings"].sum())})
    counts = pd.DataFrame(steps).set_index("step")
    if len(kept) == 0:
        raise DataError(f"S5: no movie is left to train on (see the counts):\n{counts.to_string()}")
    ov = [_overlap(h, m) for h, m in zip(kept["human_all"], kept["llm_all"])]
    movies_used = pd.DataFrame({
        "item": np.arange(len(kept), dtype=np.int64), "movieId": kept["movieId"].to_numpy(),
        "tmdbId": kept["tmdbId"].astype("Int64").to_numpy(), "title": kept["title"].to_numpy(),
        "n_ratings": kept["n_ratings"].to_numpy(np.int64),
        "human": kept["human"].tolist(), "llm": kept["llm"].tolist(),
        "human_all": kept["human_all"].tolist(), "llm_all": kept["llm_all"].tolist(),
        "overlap": np.array([o[0] for o in ov], dtype=np.int64), "jaccard": np.array([o[1] for o in ov], dtype=np.float64),
    })  # fmt: skip
    ok_llm = cand[[isinstance(k, list) for k in cand["llm_keywords"]]]
    ok_llm = ok_llm.assign(human_all=[_normalise_list(list(k), cfg.stemming) for k in ok_llm["human_keywords"]],
                           llm_all=[_normalise_list(list(k), cfg.stemming) for k in ok_llm["llm_keywords"]])  # fmt: skip
    keyword_stats = _keyword_stats(kept, ok_llm, hv, lv)
    human_ids = multi_hot(kept["human"].tolist(), hv)
    llm_ids = multi_hot(kept["llm"].tolist(), lv)

    # 4. One split for every group; tuning and the final models.
    x, user_raw = _interactions(ml, kept["item"].to_numpy(np.int64))
    parts = _split.ratio(x, cfg.split, order="random", by_user=True, seed=cfg.seed)
    train, valid, test = parts
    if valid.n_interactions == 0 or test.n_interactions == 0:
        # Users with fewer than 3 ratings stay in train: a handful of movies leaves nothing to tune on.
        raise DataError(
            f"S5: the split left {valid.n_interactions} validation and {test.n_interactions} test ratings of the "
            f"{len(kept)} movies used ({x.n_interactions} ratings): use more movies (S5Config.max_movies)"
        )
    data_digest = _digest(_parts_digest(parts), human_ids, llm_ids, len(hv))
    preds: dict[str, npt.NDArray[np.float32]] = {}
    trials, groups = [], {}
    for g in GROUPS:
        feats = group_features(g, human_ids, llm_ids, len(hv))
        preds[g], tg, groups[g] = _run_group(cfg, g, data_digest, parts, feats, folder / "groups" / g, progress)
        trials.append(tg)
    trials_table = pd.concat(trials, ignore_index=True)

    # 5. Statistics.
    a = test.to_arrays()
    y = np.asarray(a["ratings"], dtype=np.float64)
    rmse_table = _rmse_table(cfg, y, preds, groups)
    comparisons = _comparisons(cfg, y, preds)
    sentence = conclusion(comparisons, len(y), cfg.confidence, cfg.power)
    predictions = pd.DataFrame({
        "userId": user_raw[a["users"]], "movieId": kept["movieId"].to_numpy()[a["items"]], "rating": a["ratings"],
        **{f"pred_{g}": preds[g] for g in GROUPS},
    })  # fmt: skip
    rep: dict[str, Any] = dict(kw_report)
    rep["invalid_answer_rate"] = rep["invalid_answers"] / rep["llm_calls"] if rep["llm_calls"] else float("nan")
    keyword_report = pd.DataFrame({"value": pd.Series(rep, dtype="object")})
    keyword_report.index.name = "count"

    info = {
        "pipeline": "S5",
        "versions": versions(),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "protocol": {
            "join": "MovieLens links.csv tmdbId = TMDB 5000 id (recforge.datasets.attach_tmdb); master.parquet holds the ratings of matched movies",
            "candidates": "matched movies with an overview and >= 1 human keyword" + (f", the {cfg.max_movies} most rated" if cfg.max_movies else ""),
            "keywords": f"one prompt per movie (recforge.prompts.keywords_messages), {cfg.min_keywords}-{cfg.max_keywords} distinct keywords (repeats after normalisation dropped before counting) of <= {cfg.max_words} words, presence_penalty {cfg.presence_penalty}, frequency_penalty {cfg.frequency_penalty}, <= {cfg.max_retries} re-asks; failures counted and excluded",
            "normalisation": f"NFKC, casefold, apostrophes removed, other punctuation -> space, whitespace collapsed, stemming={cfg.stemming}; keywords tagging >= {cfg.min_freq} candidate movies with a valid LLM answer",
            "exclusion": "a movie lacking either keyword set is excluded from every group, with its ratings",
            "split": f"per user, random, fractions {list(cfg.split)}, seed {cfg.seed}; the same test ratings for every group",
            "tuning": f"Optuna TPE (seed {cfg.seed}), {cfg.n_trials} trials per group, dim in {list(cfg.dims)}, lr log-uniform {list(cfg.lr_range)}, reg log-uniform {list(cfg.reg_range)}, <= {cfg.epochs} epochs, early stopping patience {cfg.patience}, median pruning after {cfg.pruning_warmup} epochs; best configuration retrained on train + valid for its best epoch count, seed {cfg.seed}",
            "statistics": f"percentile bootstrap of test RMSE, {cfg.n_resamples} resamples, {cfg.confidence:.0%}; paired bootstrap of RMSE differences (recforge.stats.compare_rmse), two-sided p; minimal detectable difference = (z_(1-alpha/2) + z_power) x paired SE = {mdd_factor(cfg.confidence, cfg.power):.3f} x SE (power {cfg.power})",
        },  # fmt: skip
        "dataset": {"name": ml.name, "users": ml.n_users, "items": ml.n_items, "ratings": ml.n_interactions,
                    "tmdb_movies": tmdb.n_items, **join_counts},  # fmt: skip
        "used": {"movies": len(kept), "users": x.n_users, "ratings": x.n_interactions, "split": dict(parts.report),
                 "human_vocabulary": len(hv), "llm_vocabulary": len(lv)},  # fmt: skip
        "llm": {"client": repr(client), "report": kw_report},
        "groups": groups,
        "summary": {
            "rmse": {g: {k: float(rmse_table.loc[g, k]) for k in ("rmse", "low", "high")} for g in GROUPS},
            "comparisons": {str(i): {k: float(v) for k, v in row.items()} for i, row in comparisons.iterrows()},
            "conclusion": sentence,
        },
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    result = S5Result(cfg, counts, keyword_report, keyword_stats, rmse_table, comparisons, trials_table, movies_used,
                      predictions, sentence, info, folder)  # fmt: skip
    result.save(folder)
    return result

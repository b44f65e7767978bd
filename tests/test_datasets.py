"""Loaders on the real files in shared/data (and on files written in the other original formats)."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import recforge
from recforge import datasets
from recforge.errors import ConfigError, DataError


def test_builtin_movielens_small_counts() -> None:
    ds = datasets.movielens_small()
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (100_836, 610, 9_742)
    assert ds.name == "ml-latest-small"
    assert len(ds.items) == 9_742 and len(ds.users) == 610
    assert {"movieId", "title", "genres", "imdbId", "tmdbId"} <= set(ds.items.columns)
    assert len(ds.extra["tags"]) == 3_683
    assert ds.interactions.has_ratings and ds.interactions.has_timestamps


def test_shared_movielens_matches_the_csv(shared_data: Path) -> None:
    d = shared_data / "ml-latest-small"
    ds = datasets.load_movielens(d)
    ref = pd.read_csv(d / "ratings.csv")
    assert ds.n_interactions == len(ref) == 100_836
    assert ds.n_users == ref["userId"].nunique() == 610
    # Dense ids decode to the raw ids of each input row.
    a = ds.interactions.to_arrays()
    order = a["rows"]
    assert np.array_equal(ds.user_map.decode(a["users"]), ref["userId"].to_numpy()[order])
    assert np.array_equal(ds.item_map.decode(a["items"]), ref["movieId"].to_numpy()[order])
    assert np.allclose(a["ratings"], ref["rating"].to_numpy()[order])
    assert np.array_equal(a["timestamps"], ref["timestamp"].to_numpy()[order])
    # items[j] describes item j.
    assert ds.items["movieId"].tolist() == list(ds.item_map.raw())
    # Loading by a file inside the folder works too.
    assert datasets.load_movielens(d / "ratings.csv").n_interactions == 100_836


def _write_ml1m(src: Path, dst: Path) -> None:
    dst.mkdir()
    r = pd.read_csv(src / "ratings.csv")
    m = pd.read_csv(src / "movies.csv")
    with open(dst / "ratings.dat", "w", encoding="latin-1") as f:
        for row in r.itertuples(index=False):
            f.write(f"{row.userId}::{row.movieId}::{row.rating:g}::{row.timestamp}\n")
    with open(dst / "movies.dat", "w", encoding="latin-1", errors="replace") as f:
        for row in m.itertuples(index=False):
            f.write(f"{row.movieId}::{row.title}::{row.genres}\n")


def test_movielens_1m_format(shared_data: Path, tmp_path: Path) -> None:
    _write_ml1m(shared_data / "ml-latest-small", tmp_path / "ml-1m")
    (tmp_path / "ml-1m" / "users.dat").write_text("1::F::1::10::48067\n", encoding="latin-1")
    ds = datasets.load_movielens(tmp_path / "ml-1m")
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (100_836, 610, 9_742)
    assert ds.users.loc[ds.users["userId"] == 1, "gender"].item() == "F"
    ref = datasets.movielens_small()
    assert ds.interactions == ref.interactions


def test_movielens_100k_format(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t4\t881250950\n")
    flags = "|".join(["0"] * 19)
    (d / "u.item").write_text(
        f"242|Kolya (1996)|24-Jan-1997||http://x|{flags[:-1]}1\n"
        f"302|L.A. Confidential (1997)|01-Jan-1997||http://y|0|1{flags[3:]}\n",
        encoding="latin-1",
    )
    ds = datasets.load_movielens(d)
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (3, 2, 2)
    assert ds.items["genres"].tolist() == ["Western", "Action"]
    assert ds.interactions.user_items(0).tolist() == [0, 1]  # user 196, time order


def test_movielens_bad_files(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "ml-latest-small"
    d = tmp_path / "ml"
    d.mkdir()
    shutil.copy(src / "movies.csv", d / "movies.csv")
    lines = (src / "ratings.csv").read_text().splitlines()
    # A non-numeric rating on file line 5.
    bad = lines.copy()
    bad[4] = "1,50,five,964982931"
    (d / "ratings.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"ratings.csv, line 5: column 'rating' has non-numeric value 'five'"):
        datasets.load_movielens(d)
    # A movie that is not in movies.csv, on line 7.
    bad = lines.copy()
    bad[6] = "1,99999999,4.0,964982931"
    (d / "ratings.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"line 7: movieId 99999999 is not in movies.csv"):
        datasets.load_movielens(d)
    # A missing column.
    (d / "ratings.csv").write_text("userId,movieId,timestamp\n1,1,5\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['rating'\]"):
        datasets.load_movielens(d)
    # An empty file.
    (d / "ratings.csv").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        datasets.load_movielens(d)
    # A missing rating (empty field) on line 3.
    bad = lines[:5]
    bad[2] = "1,3,,964981247"
    (d / "ratings.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"line 3: column 'rating' is missing"):
        datasets.load_movielens(d)
    with pytest.raises(DataError, match="not found"):
        datasets.load_movielens(tmp_path / "nope")
    with pytest.raises(DataError, match="not a MovieLens folder"):
        datasets.load_movielens(tmp_path)


def test_tmdb_zip_and_csv(shared_data: Path, tmp_path: Path) -> None:
    z = shared_data / "tmdb-5000" / "tmdb_5000_movies.csv.zip"
    ds = datasets.load_tmdb(z)
    assert ds.n_items == len(ds.items) == 4_803
    assert ds.n_users == 0 and ds.n_interactions == 0
    avatar = ds.items.loc[ds.items["title"] == "Avatar"].iloc[0]
    assert avatar["genres"][:2] == ["Action", "Adventure"]
    assert "culture clash" in avatar["keywords"]
    with zipfile.ZipFile(z) as f:
        f.extract("tmdb_5000_movies.csv", tmp_path)
    again = datasets.load_tmdb(tmp_path)  # a folder holding the CSV
    assert again.items["keywords"].tolist() == ds.items["keywords"].tolist()


def test_attach_tmdb_to_movielens(shared_data: Path) -> None:
    ml = datasets.load_movielens(shared_data / "ml-latest-small")
    tmdb = datasets.load_tmdb(shared_data / "tmdb-5000")
    joined = datasets.attach_tmdb(ml, tmdb)
    # Independent reference: pandas inner join on links.tmdbId == tmdb.id.
    links = pd.read_csv(shared_data / "ml-latest-small" / "links.csv")
    with zipfile.ZipFile(shared_data / "tmdb-5000" / "tmdb_5000_movies.csv.zip") as f:
        raw = pd.read_csv(f.open("tmdb_5000_movies.csv"))
    expected = int(links["tmdbId"].isin(raw["id"]).sum())
    assert joined.stats["tmdb_matched"] == expected
    assert joined.stats["tmdb_unmatched"] == 9_742 - expected
    toy = joined.items.loc[joined.items["movieId"] == 1].iloc[0]
    assert "toy" in toy["tmdb_keywords"] and toy["tmdb_overview"].startswith("Led by Woody")
    assert len(joined.items) == 9_742 and joined.interactions == ml.interactions
    no_links = ml.items.drop(columns=["tmdbId"])
    with pytest.raises(DataError, match="no tmdbId column"):
        datasets.attach_tmdb(recforge.Dataset(**{**ml.__dict__, "items": no_links}), tmdb)


def test_microlens_titles(shared_data: Path) -> None:
    t = datasets.load_microlens_titles(shared_data / "microlens-100k" / "MicroLens-100k_title_en.csv")
    assert len(t) == 19_738
    assert t["item"].iloc[0] == 1 and t["title"].iloc[0] == "Gu long song gaga bad"
    ds = datasets.load_microlens(None, shared_data / "microlens-100k" / "MicroLens-100k_title_en.csv")
    assert ds.n_items == 19_738 and ds.n_users == 0


@pytest.mark.parametrize("form", ["csv-header", "tsv-plain", "tsv-recbole"])
def test_microlens_pairs_formats(shared_data: Path, tmp_path: Path, form: str) -> None:
    titles = shared_data / "microlens-100k" / "MicroLens-100k_title_en.csv"
    rng = np.random.default_rng(0)
    n = 500
    users = rng.integers(1, 60, n)
    items = rng.integers(1, 19_739, n)
    ts = rng.integers(1_600_000_000_000, 1_700_000_000_000, n)
    if form == "csv-header":
        p = tmp_path / "MicroLens-100k_pairs.csv"
        pd.DataFrame({"user": users, "item": items, "timestamp": ts}).to_csv(p, index=False)
    elif form == "tsv-plain":
        p = tmp_path / "MicroLens-100k_pairs.tsv"
        pd.DataFrame({"u": users, "i": items, "t": ts}).to_csv(p, sep="\t", index=False, header=False)
    else:
        p = tmp_path / "MicroLens-100k.inter.tsv"
        df = pd.DataFrame({"user_id:token": users, "item_id:token": items, "timestamp:float": ts})
        df.to_csv(p, sep="\t", index=False)
    ds = datasets.load_microlens(p, titles)
    assert ds.n_interactions == n and ds.n_items == 19_738
    assert ds.n_users == len(np.unique(users))
    a = ds.interactions.to_arrays()
    assert np.array_equal(ds.item_map.decode(a["items"]), items[a["rows"]])
    assert ds.items["title"].iloc[0] == "Gu long song gaga bad"
    # Without titles, items are the ones that occur.
    bare = datasets.load_microlens(p)
    assert bare.n_items == len(np.unique(items))


def test_microlens_unknown_item_names_the_line(shared_data: Path, tmp_path: Path) -> None:
    p = tmp_path / "pairs.csv"
    p.write_text("user,item,timestamp\n1,5,10\n2,99999,11\n")
    titles = shared_data / "microlens-100k" / "MicroLens-100k_title_en.csv"
    with pytest.raises(DataError, match=r"pairs.csv, line 3: item 99999 is not in the titles file"):
        datasets.load_microlens(p, titles)
    bad_titles = tmp_path / "titles.csv"
    bad_titles.write_text("1, ok\nx, bad id\n")
    with pytest.raises(DataError, match=r"titles.csv, line 2: item id 'x' is not an integer"):
        datasets.load_microlens_titles(bad_titles)


def test_amazon_kindle_csv_and_json_lines(shared_data: Path, tmp_path: Path) -> None:
    p = shared_data / "kindle-sample" / "kindle_reviews.csv"
    ds = datasets.load_amazon_reviews(p, keep_text=True)
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (4_905, 4_370, 4_444)
    ref = pd.read_csv(p)
    a = ds.interactions.to_arrays()
    assert ds.item_map.decode(a["items"]) == ref["asin"].to_numpy()[a["rows"]].tolist()
    assert np.array_equal(a["ratings"], ref["overall"].to_numpy()[a["rows"]].astype(np.float32))
    assert len(ds.extra["reviews"]) == 4_905
    # The same reviews as gzipped JSON lines and as the header-less ratings-only CSV.
    js = tmp_path / "Kindle_Store_5.json.gz"
    with gzip.open(js, "wt", encoding="utf-8") as f:
        for r in ref[["reviewerID", "asin", "overall", "unixReviewTime"]].to_dict("records"):
            f.write(json.dumps(r) + "\n")
    assert datasets.load_amazon_reviews(js).interactions == ds.interactions
    plain = tmp_path / "ratings_Kindle_Store.csv"
    ref[["asin", "reviewerID", "overall", "unixReviewTime"]].to_csv(plain, header=False, index=False)
    assert datasets.load_amazon_reviews(plain).interactions == ds.interactions
    broken = tmp_path / "broken.json"
    broken.write_text('{"reviewerID": "a", "asin": "b", "overall": 5, "unixReviewTime": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"broken.json, line 2: not valid JSON"):
        datasets.load_amazon_reviews(broken)


def test_dataset_describe_and_kcore(shared_data: Path) -> None:
    ds = datasets.load_movielens(shared_data / "ml-latest-small")
    d = ds.describe()
    assert d["interactions"] == 100_836 and d["per_user_min"] == 20
    assert sum(d["rating_counts"].values()) == 100_836
    with pytest.raises(ConfigError):
        ds.k_core(-1)

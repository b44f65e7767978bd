"""MovieLens loaders: 100k (``u.data``), 1M (``ratings.dat``), latest-small / 25M / 32M (``ratings.csv``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ._build import assemble, encode_known, item_map_from_table
from ._dataset import Dataset
from ._io import PathLike, existing, first_line, numeric, optional_int, read_csv, show

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def movielens_small() -> Dataset:
    """MovieLens latest-small (610 users, 9,742 movies, 100,836 ratings), shipped inside recforge.

    GroupLens licence (see the README.txt beside the data): research use; cite F. Maxwell Harper
    and Joseph A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 2015.
    """
    path = resources.files("recforge.datasets").joinpath("ml-latest-small")
    ds = load_movielens(Path(str(path)))
    ds.name = "ml-latest-small"
    return ds


def load_movielens(path: PathLike) -> Dataset:
    """Load a MovieLens release from its folder (or any file in it), in its original format.

    - latest / latest-small / 20M / 25M / 32M: ``ratings.csv``, ``movies.csv``, and if present
      ``links.csv`` (imdbId, tmdbId columns joined to the items) and ``tags.csv`` (``extra["tags"]``);
    - 1M: ``ratings.dat``, ``movies.dat`` and if present ``users.dat`` (``::``-separated, latin-1);
    - 100k: ``u.data``, ``u.item`` and if present ``u.user``.

    Every movie of the movie table gets an item id (also movies nobody rated); a rating of a movie
    missing from the movie table is a DataError naming the file and line.
    """
    p = existing(path, "MovieLens path")
    d = p if p.is_dir() else p.parent
    if (d / "ratings.csv").is_file():
        return _load_csv_release(d)
    if (d / "ratings.dat").is_file():
        return _load_1m(d)
    if (d / "u.data").is_file():
        return _load_100k(d)
    raise DataError(f"{d}: not a MovieLens folder (no ratings.csv, ratings.dat or u.data)")


def _load_csv_release(d: Path) -> Dataset:
    movies_path = d / "movies.csv"
    movies = read_csv(movies_path, required=["movieId", "title", "genres"])
    movies["movieId"] = numeric(movies, "movieId", movies_path, line0=2, integer=True)
    item_map = item_map_from_table(movies["movieId"], movies_path, col="movieId", line0=2)
    stats: dict[str, int] = {}
    links_path = d / "links.csv"
    if links_path.is_file():
        links = read_csv(links_path, required=["movieId", "imdbId", "tmdbId"], dtype={"imdbId": str})
        links["movieId"] = numeric(links, "movieId", links_path, line0=2, integer=True)
        links["tmdbId"] = optional_int(links, "tmdbId", links_path, line0=2)
        movies = movies.merge(links, on="movieId", how="left")
        stats["movies_without_tmdb_id"] = int(movies["tmdbId"].isna().sum())

    ratings_path = d / "ratings.csv"
    r = read_csv(ratings_path, required=["userId", "movieId", "rating", "timestamp"])
    users = numeric(r, "userId", ratings_path, line0=2, integer=True)
    movie_ids = pd.Series(numeric(r, "movieId", ratings_path, line0=2, integer=True))
    item_dense = encode_known(
        item_map, movie_ids, ratings_path, col="movieId", line0=2, table="movies.csv"
    )
    extra = {}
    tags_path = d / "tags.csv"
    if tags_path.is_file():
        extra["tags"] = read_csv(tags_path, required=["userId", "movieId", "tag"])
    return assemble(
        d.name,
        user_raw=pd.Series(users),
        item_dense=item_dense,
        item_map=item_map,
        items=movies,
        ratings=numeric(r, "rating", ratings_path, line0=2),
        timestamps=numeric(r, "timestamp", ratings_path, line0=2, integer=True),
        user_col="userId",
        stats=stats,
        extra=extra,
    )


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    existing(path, "file")
    raw = path.read_bytes().replace(b"::", b"\t")
    return read_csv(
        path, sep="\t", header=None, names=names, encoding="latin-1", source=raw, dtype=str
    )


def _load_1m(d: Path) -> Dataset:
    movies_path = d / "movies.dat"
    movies = _read_dat(movies_path, ["movieId", "title", "genres"])
    movies["movieId"] = numeric(movies, "movieId", movies_path, line0=1, integer=True)
    item_map = item_map_from_table(movies["movieId"], movies_path, col="movieId", line0=1)
    ratings_path = d / "ratings.dat"
    r = _read_dat(ratings_path, ["userId", "movieId", "rating", "timestamp"])
    users_table = None
    if (d / "users.dat").is_file():
        users_table = _read_dat(d / "users.dat", ["userId", "gender", "age", "occupation", "zip"])
        users_table["userId"] = numeric(users_table, "userId", d / "users.dat", line0=1, integer=True)
    return assemble(
        d.name,
        user_raw=pd.Series(numeric(r, "userId", ratings_path, line0=1, integer=True)),
        item_dense=encode_known(
            item_map,
            pd.Series(numeric(r, "movieId", ratings_path, line0=1, integer=True)),
            ratings_path,
            col="movieId",
            line0=1,
            table="movies.dat",
        ),
        item_map=item_map,
        items=movies,
        ratings=numeric(r, "rating", ratings_path, line0=1),
        timestamps=numeric(r, "timestamp", ratings_path, line0=1, integer=True),
        user_col="userId",
        users_table=users_table,
    )


def _genre_flags(movies: pd.DataFrame, path: Path) -> np.ndarray:
    """The 19 genre flags of ``u.item`` as a 0/1 matrix. Every row must have all of them: a
    truncated row (missing trailing fields) or a flag other than 0/1 is a DataError naming the
    line, never read as "not of that genre"."""
    flags = movies[ML100K_GENRES]
    missing = flags.isna().to_numpy()
    if missing.any():
        i, j = (int(v) for v in np.argwhere(missing)[0])
        raise DataError(
            f"{path}, line {i + 1}: genre flag {ML100K_GENRES[j]!r} is missing (a truncated "
            f"row? each row has {5 + len(ML100K_GENRES)} '|'-separated fields, the last "
            f"{len(ML100K_GENRES)} of them genre flags)"
        )
    values = flags.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{path}, line {i + 1}: genre flag {ML100K_GENRES[j]!r} is {show(flags.iloc[i, j])}, "
            "not 0 or 1"
        )
    return values.astype(np.int64)


def _load_100k(d: Path) -> Dataset:
    item_path = d / "u.item"
    names = ["movieId", "title", "release_date", "video_release_date", "imdb_url"] + ML100K_GENRES
    movies = read_csv(item_path, sep="|", header=None, names=names, encoding="latin-1")
    movies["movieId"] = numeric(movies, "movieId", item_path, line0=1, integer=True)
    flags = _genre_flags(movies, item_path)
    movies["genres"] = ["|".join(g for g, f in zip(ML100K_GENRES, row) if f) for row in flags]
    movies = movies.drop(columns=ML100K_GENRES)
    item_map = item_map_from_table(movies["movieId"], item_path, col="movieId", line0=1)
    data_path = d / "u.data"
    r = read_csv(
        data_path, sep="\t", header=None, names=["userId", "movieId", "rating", "timestamp"]
    )
    users_table = None
    if (d / "u.user").is_file():
        users_table = read_csv(
            d / "u.user",
            sep="|",
            header=None,
            names=["userId", "age", "gender", "occupation", "zip"],
            encoding="latin-1",
        )
        users_table["userId"] = numeric(users_table, "userId", d / "u.user", line0=1, integer=True)
    line0 = first_line(None)
    return assemble(
        d.name,
        user_raw=pd.Series(numeric(r, "userId", data_path, line0=line0, integer=True)),
        item_dense=encode_known(
            item_map,
            pd.Series(numeric(r, "movieId", data_path, line0=line0, integer=True)),
            data_path,
            col="movieId",
            line0=line0,
            table="u.item",
        ),
        item_map=item_map,
        items=movies,
        ratings=numeric(r, "rating", data_path, line0=line0),
        timestamps=numeric(r, "timestamp", data_path, line0=line0, integer=True),
        user_col="userId",
        users_table=users_table,
    )

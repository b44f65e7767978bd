"""TMDB 5000 movies (``tmdb_5000_movies.csv``, plain or zipped) and its join to MovieLens."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from .._native import IdMap, Interactions
from ..errors import DataError, StorageError
from ._build import item_map_from_table
from ._dataset import Dataset
from ._io import PathLike, existing, numeric, read_csv

JSON_LIST_COLUMNS = ("genres", "keywords", "production_companies", "production_countries",
                     "spoken_languages")  # fmt: skip


def _names(cell: object, path: object, line: int, col: str) -> list[str]:
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    try:
        values = json.loads(str(cell))
    except json.JSONDecodeError:
        raise DataError(f"{path}, line {line}: column {col!r} is not a JSON list") from None
    if not isinstance(values, list):
        raise DataError(f"{path}, line {line}: column {col!r} is not a JSON list")
    names = []
    for v in values:
        # TMDB's own form is a list of {"id": ..., "name": ...}; a plain list of names is
        # accepted as it is. Anything else is an error, never silently dropped.
        if isinstance(v, dict) and isinstance(v.get("name"), str):
            names.append(v["name"])
        elif isinstance(v, str):
            names.append(v)
        else:
            raise DataError(
                f"{path}, line {line}: column {col!r} holds {json.dumps(v)[:80]}, neither a "
                'name nor an object with a "name"'
            )
    return names


def _zip_member(p: Path) -> bytes:
    """The bytes of ``tmdb_5000_movies.csv`` inside the zip ``p``; a file that is not a zip, or a
    truncated or corrupt one, is a DataError naming it."""
    try:
        with zipfile.ZipFile(p) as z:
            members = [
                m for m in z.namelist()
                if m.endswith("tmdb_5000_movies.csv") and not m.startswith("__MACOSX")
            ]  # fmt: skip
            if not members:
                raise DataError(f"{p}: the zip holds no tmdb_5000_movies.csv")
            return z.read(members[0])
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise DataError(f"{p}: not a readable zip file ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise StorageError(f"{p}: cannot read: {e}") from None


def load_tmdb(path: PathLike) -> Dataset:
    """TMDB 5000 movies as a Dataset of items (no users): ``items`` has one row per movie with the
    JSON-list columns (``genres``, ``keywords``, ...) parsed into lists of names. ``path`` is the
    CSV, the zip that holds it, or a folder with either. Join it to MovieLens with
    :func:`attach_tmdb`."""
    p = existing(path, "TMDB path")
    if p.is_dir():
        for cand in ("tmdb_5000_movies.csv", "tmdb_5000_movies.csv.zip"):
            if (p / cand).is_file():
                p = p / cand
                break
        else:
            raise DataError(f"{p}: no tmdb_5000_movies.csv or tmdb_5000_movies.csv.zip")
    if p.suffix == ".zip":
        df = read_csv(p, source=_zip_member(p), required=["id", "title"])
    else:
        df = read_csv(p, required=["id", "title"])
    df["id"] = numeric(df, "id", p, line0=2, integer=True)
    for col in JSON_LIST_COLUMNS:
        if col in df.columns:
            df[col] = [_names(c, p, i + 2, col) for i, c in enumerate(df[col].tolist())]
    item_map = item_map_from_table(df["id"], p, col="id", line0=2)
    x = Interactions.from_arrays(
        np.zeros(0, np.int64), np.zeros(0, np.int64), n_users=0, n_items=len(item_map)
    )
    return Dataset(
        name="tmdb-5000",
        interactions=x,
        items=df.reset_index(drop=True),
        users=pd.DataFrame({"user": []}),
        user_map=IdMap.from_unique(np.zeros(0, np.int64)),
        item_map=item_map,
        stats={"rows_read": len(df), "interactions": 0},
    )


def attach_tmdb(
    movielens: Dataset,
    tmdb: Dataset,
    columns: tuple[str, ...] = ("overview", "genres", "keywords"),
) -> Dataset:
    """MovieLens with TMDB columns joined to its items through ``links.csv``'s ``tmdbId``.

    The new columns are prefixed ``tmdb_``; movies without a TMDB match get missing values (lists
    become empty lists). The counts are in ``stats["tmdb_matched"]`` and ``stats["tmdb_unmatched"]``.
    """
    if "tmdbId" not in movielens.items.columns:
        raise DataError(
            f"{movielens.name}: items have no tmdbId column (load a MovieLens folder with links.csv)"
        )
    missing = [c for c in columns if c not in tmdb.items.columns]
    if missing:
        raise DataError(f"{tmdb.name}: no column(s) {missing} to attach")
    right = tmdb.items[["id", *columns]].rename(columns={c: f"tmdb_{c}" for c in columns})
    right = right.assign(id=right["id"].astype("Int64"))
    items = movielens.items.merge(right, left_on="tmdbId", right_on="id", how="left")
    items = items.drop(columns=["id"])
    if len(items) != len(movielens.items):
        raise DataError(f"{tmdb.name}: an id appears twice, the join would duplicate movies")
    matched = int(items[f"tmdb_{columns[0]}"].notna().sum()) if columns else 0
    for c in columns:
        if c in JSON_LIST_COLUMNS:
            col = f"tmdb_{c}"
            items[col] = [v if isinstance(v, list) else [] for v in items[col]]
    stats = dict(movielens.stats)
    stats["tmdb_matched"] = matched
    stats["tmdb_unmatched"] = len(items) - matched
    return Dataset(
        name=movielens.name,
        interactions=movielens.interactions,
        items=items,
        users=movielens.users,
        user_map=movielens.user_map,
        item_map=movielens.item_map,
        stats=stats,
        extra=movielens.extra,
    )

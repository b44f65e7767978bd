"""MicroLens loaders: interaction pairs (user, item, timestamp) and English item titles."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .._native import IdMap, Interactions
from ..errors import DataError, StorageError
from ._build import assemble, encode_known, item_map_from_table
from ._dataset import Dataset
from ._io import PathLike, existing, numeric, read_csv

_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_ALIASES = {"user": "user", "user_id": "user", "item": "item", "item_id": "item",
            "timestamp": "timestamp", "time": "timestamp"}  # fmt: skip


def load_microlens_titles(path: PathLike) -> pd.DataFrame:
    """``MicroLens-100k_title_en.csv``: no header, ``item_id, title`` per line (the title is
    everything after the first comma). Returns columns ``item``, ``title``."""
    p = existing(path, "MicroLens titles file")
    items, titles = [], []
    for line_no, line in enumerate(_text_lines(p), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            raise DataError(f"{p}, line {line_no}: empty line")
        head, sep, title = line.partition(",")
        if not sep:
            raise DataError(f"{p}, line {line_no}: expected 'item_id, title', got {line!r}")
        try:
            item = int(head)
        except ValueError:
            raise DataError(f"{p}, line {line_no}: item id {head!r} is not an integer") from None
        if not _INT64_MIN <= item <= _INT64_MAX:
            raise DataError(f"{p}, line {line_no}: item id {head.strip()} is too large for int64")
        items.append(item)
        titles.append(title.strip())
    if not items:
        raise DataError(f"{p}: file is empty")
    return pd.DataFrame({"item": np.asarray(items, dtype=np.int64), "title": titles})


def _text_lines(p: Path) -> Iterator[str]:
    """The lines of a UTF-8 file; invalid UTF-8 is a DataError naming the line."""
    try:
        with open(p, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{p}, line {line_no}: not valid UTF-8 text ({e.reason} at byte {e.start})"
                    ) from None
    except OSError as e:
        raise StorageError(f"{p}: cannot read: {e}") from None


def _read_pairs(p: Path) -> pd.DataFrame:
    sep = "\t" if p.suffix == ".tsv" else ","
    first = next(iter(_text_lines(p)), "")
    fields = [c.strip().split(":")[0] for c in first.rstrip("\r\n").split(sep)]
    has_header = not fields[0].lstrip("-").isdigit()
    if has_header:
        df = read_csv(p, sep=sep)
        df.columns = [str(c).strip().split(":")[0] for c in df.columns]
        df = df.rename(columns={c: _ALIASES[c] for c in df.columns if c in _ALIASES})
        missing = [c for c in ("user", "item", "timestamp") if c not in df.columns]
        if missing:
            raise DataError(f"{p}: missing column(s) {missing} (found {list(df.columns)})")
        return df
    df = read_csv(p, sep=sep, header=None)
    if df.shape[1] < 3:
        raise DataError(f"{p}: expected 3 columns (user, item, timestamp), found {df.shape[1]}")
    df = df.iloc[:, :3]
    df.columns = ["user", "item", "timestamp"]
    df.attrs["line0"] = 1
    return df


def load_microlens(pairs: PathLike | None, titles: PathLike | None = None) -> Dataset:
    """MicroLens interactions from ``MicroLens-100k_pairs.csv`` / ``.tsv`` (user, item, timestamp;
    with or without a header, RecBole-style ``user_id:token`` headers accepted) and optionally the
    English titles file.

    With titles, every titled item gets an id and a pair whose item has no title is a DataError
    naming the line; without titles, items are numbered as they first appear. ``pairs=None`` gives a
    dataset of the titles alone (no users), e.g. for encoding item text.
    """
    title_df = load_microlens_titles(titles) if titles is not None else None
    item_map = None
    if title_df is not None:
        item_map = item_map_from_table(title_df["item"], Path(titles), col="item", line0=1)  # type: ignore[arg-type]
    if pairs is None:
        if title_df is None or item_map is None:
            raise DataError("load_microlens needs a pairs file, a titles file, or both")
        x = Interactions.from_arrays(
            np.zeros(0, np.int64), np.zeros(0, np.int64), n_users=0, n_items=len(item_map)
        )
        empty = IdMap.from_unique(np.zeros(0, np.int64))
        return Dataset("microlens", x, title_df, pd.DataFrame({"user": []}), empty, item_map,
                       stats={"rows_read": 0, "interactions": 0})  # fmt: skip
    p = existing(pairs, "MicroLens pairs file")
    df = _read_pairs(p)
    line0 = int(df.attrs.get("line0", 2))
    users = pd.Series(numeric(df, "user", p, line0=line0, integer=True))
    items = pd.Series(numeric(df, "item", p, line0=line0, integer=True))
    ts = numeric(df, "timestamp", p, line0=line0, integer=True)
    if item_map is None or title_df is None:
        item_map, _ = IdMap.fit(items.to_numpy())
        item_table = pd.DataFrame({"item": item_map.raw()})
    else:
        item_table = title_df
    dense = encode_known(item_map, items, p, col="item", line0=line0, table="the titles file")
    return assemble(
        "microlens",
        user_raw=users,
        item_dense=dense,
        item_map=item_map,
        items=item_table,
        ratings=None,
        timestamps=ts,
        user_col="user",
    )

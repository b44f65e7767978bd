"""Amazon review loaders: 5-core JSON lines (optionally gzipped) and the CSV forms."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..errors import DataError, StorageError
from ._build import assemble
from ._dataset import Dataset
from ._io import PathLike, existing, numeric, not_blank, read_csv

_FIELDS = ["reviewerID", "asin", "overall", "unixReviewTime"]


def _lines(p: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line; invalid UTF-8 is a DataError naming the line, and a
    truncated or corrupt ``.gz`` one naming the file."""
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:  # type: ignore[operator]
            for line_no, raw in enumerate(f, start=1):
                try:
                    yield line_no, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{p}, line {line_no}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{p}: truncated or corrupt gzip file ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise StorageError(f"{p}: cannot read: {e}") from None


def _read_json_lines(p: Path) -> pd.DataFrame:
    cols: dict[str, list[object]] = {k: [] for k in _FIELDS}
    for line_no, line in _lines(p):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}, line {line_no}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{p}, line {line_no}: expected a JSON object, got {type(rec).__name__}")
        for k in _FIELDS:
            if k not in rec:
                raise DataError(f"{p}, line {line_no}: missing field {k!r}")
            cols[k].append(rec[k])
    if not cols["asin"]:
        raise DataError(f"{p}: file is empty")
    return pd.DataFrame(cols)


def load_amazon_reviews(path: PathLike, *, keep_text: bool = False) -> Dataset:
    """Amazon reviews (e.g. the Kindle Store 5-core) as a Dataset.

    Accepts the JSON-lines form (``.json``, ``.jsonl``, ``.json.gz``: one review per line with
    ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``), the CSV form with those columns as
    a header (the Kaggle ``kindle_reviews.csv``), and the header-less ratings-only CSV
    ``item,user,rating,timestamp``. Users and items are numbered in order of first appearance.
    With ``keep_text=True`` the review columns (``reviewText``, ``summary``) are kept in
    ``extra["reviews"]`` in input row order.
    """
    p = existing(path, "Amazon reviews file")
    name = p.name.lower()
    line0 = 2
    if name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
        df = _read_json_lines(p)
        line0 = 1
    else:
        with open(p, encoding="utf-8", errors="replace") as f:
            header = f.readline()
        if all(k in header for k in _FIELDS):
            df = read_csv(p, required=_FIELDS)
        else:
            df = read_csv(p, header=None, names=["asin", "reviewerID", "overall", "unixReviewTime"])
            line0 = 1
    users = not_blank(df, "reviewerID", p, line0=line0)
    items = not_blank(df, "asin", p, line0=line0)
    from .._native import IdMap

    item_map, item_dense = IdMap.fit(items.to_numpy(dtype=object))
    extra = {}
    if keep_text:
        keep = [c for c in ("reviewText", "summary") if c in df.columns]
        extra["reviews"] = df[keep].reset_index(drop=True)
    return assemble(
        "amazon-reviews",
        user_raw=users,
        item_dense=np.asarray(item_dense),
        item_map=item_map,
        items=pd.DataFrame({"asin": item_map.raw()}),
        ratings=numeric(df, "overall", p, line0=line0),
        timestamps=numeric(df, "unixReviewTime", p, line0=line0, integer=True),
        user_col="reviewerID",
        extra=extra,
    )

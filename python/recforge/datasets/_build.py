"""Turning raw id columns into a Dataset (shared by the loaders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._native import IdMap, Interactions
from ..errors import DataError
from ._dataset import Dataset
from ._io import show


def item_map_from_table(ids: pd.Series, path: Path, *, col: str, line0: int) -> IdMap:
    """An IdMap over an item table's id column; a repeated id is a DataError naming its line."""
    dup = ids.duplicated().to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        raise DataError(f"{path}, line {i + line0}: {col} {show(ids.iloc[i])} appears twice")
    return IdMap.from_unique(ids.to_numpy())


def encode_known(
    imap: IdMap, raw: pd.Series, path: Path, *, col: str, line0: int, table: str
) -> np.ndarray:
    """Dense ids of ``raw``; an id missing from ``imap`` is a DataError naming file, line, id and
    the table it should have been in."""
    known = pd.Index(imap.raw())
    ok = raw.isin(known).to_numpy()
    if not ok.all():
        i = int(np.argmax(~ok))
        n_bad = int((~ok).sum())
        raise DataError(
            f"{path}, line {i + line0}: {col} {show(raw.iloc[i])} is not in {table} "
            f"({n_bad} row(s) refer to unknown ids)"
        )
    return imap.encode(raw.to_numpy())


def assemble(
    name: str,
    *,
    user_raw: pd.Series,
    item_dense: np.ndarray,
    item_map: IdMap,
    items: pd.DataFrame,
    ratings: np.ndarray | None,
    timestamps: np.ndarray | None,
    user_col: str,
    users_table: pd.DataFrame | None = None,
    stats: dict[str, int] | None = None,
    extra: dict[str, pd.DataFrame] | None = None,
) -> Dataset:
    """Build the Dataset: users numbered by first appearance, items by ``item_map``."""
    user_map, user_dense = IdMap.fit(user_raw.to_numpy())
    x = Interactions.from_arrays(
        user_dense,
        item_dense,
        ratings=None if ratings is None else ratings.astype(np.float32),
        timestamps=timestamps,
        n_users=len(user_map),
        n_items=len(item_map),
    )
    users = pd.DataFrame({user_col: user_map.raw()})
    if users_table is not None:
        users = users.merge(users_table, on=user_col, how="left")
    s = {"rows_read": len(user_raw), "interactions": x.n_interactions}
    s.update(stats or {})
    return Dataset(
        name=name,
        interactions=x,
        items=items.reset_index(drop=True),
        users=users,
        user_map=user_map,
        item_map=item_map,
        stats=s,
        extra=extra or {},
    )

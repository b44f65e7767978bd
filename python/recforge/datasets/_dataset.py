"""The ``Dataset`` returned by every loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._native import IdMap, Interactions
from .. import split as _split


@dataclass
class Dataset:
    """Interactions plus the tables and id maps that give them meaning.

    Attributes:
        name: a short name (``"ml-latest-small"``, ``"microlens"``, ...).
        interactions: user-item interactions over dense ids (``recforge.Interactions``).
        items: one row per dense item id (row ``j`` describes item ``j``), with the raw id column.
        users: one row per dense user id, with the raw id column.
        user_map / item_map: raw id <-> dense id (:class:`recforge.IdMap`).
        stats: counts of what the loader read, kept and dropped (nothing is dropped silently).
        extra: further tables of the source (e.g. MovieLens ``tags``), keyed by name.
    """

    name: str
    interactions: Interactions
    items: pd.DataFrame
    users: pd.DataFrame
    user_map: IdMap
    item_map: IdMap
    stats: dict[str, int] = field(default_factory=dict)
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.interactions.n_users)

    @property
    def n_items(self) -> int:
        return int(self.interactions.n_items)

    @property
    def n_interactions(self) -> int:
        return int(self.interactions.n_interactions)

    def describe(self) -> dict[str, Any]:
        """Summary statistics: sizes, density, interactions per user/item, rating distribution."""
        x = self.interactions
        udeg = x.user_degrees()
        ideg = x.item_degrees()
        n_cells = max(1, self.n_users * self.n_items)
        out: dict[str, Any] = {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / n_cells,
            "items_with_interactions": int((ideg > 0).sum()),
            "per_user_min": int(udeg.min()) if len(udeg) else 0,
            "per_user_median": float(np.median(udeg)) if len(udeg) else 0.0,
            "per_user_max": int(udeg.max()) if len(udeg) else 0,
            "per_item_median": float(np.median(ideg[ideg > 0])) if (ideg > 0).any() else 0.0,
        }
        a = x.to_arrays()
        if a["ratings"] is not None and len(a["ratings"]):
            r = a["ratings"]
            out["rating_mean"] = float(r.mean())
            values, counts = np.unique(r, return_counts=True)
            out["rating_counts"] = {float(v): int(c) for v, c in zip(values, counts)}
        if a["timestamps"] is not None and len(a["timestamps"]):
            out["time_min"] = int(a["timestamps"].min())
            out["time_max"] = int(a["timestamps"].max())
        return out

    def k_core(self, user_k: int, item_k: int | None = None) -> "Dataset":
        """The k-core of this dataset, with tables and id maps re-indexed to match."""
        x, kept_users, kept_items = _split.k_core(self.interactions, user_k, item_k)
        stats = dict(self.stats)
        stats["kcore_dropped_users"] = self.n_users - len(kept_users)
        stats["kcore_dropped_items"] = self.n_items - len(kept_items)
        stats["kcore_dropped_interactions"] = self.n_interactions - x.n_interactions
        return Dataset(
            name=f"{self.name}-{user_k}core",
            interactions=x,
            items=self.items.iloc[kept_items].reset_index(drop=True),
            users=self.users.iloc[kept_users].reset_index(drop=True),
            user_map=self.user_map.subset(kept_users),
            item_map=self.item_map.subset(kept_items),
            stats=stats,
            extra=self.extra,
        )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}: {self.n_users} users, {self.n_items} items, "
            f"{self.n_interactions} interactions)"
        )

"""The most-popular baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from .._native import Interactions
from ..errors import ConfigError, DataError
from ._base import Recommender


class Popularity(Recommender):
    """Scores every item by its number of training interactions, the same for every user."""

    def fit(self, train: Interactions, valid: Interactions | None = None, **_: object) -> "Popularity":
        if not isinstance(train, Interactions):
            raise ConfigError(f"train must be recforge.Interactions, got {type(train).__name__}")
        self._train = train
        self.n_users, self.n_items = train.n_users, train.n_items
        self._pop = torch.from_numpy(train.item_degrees().astype(np.float32))
        return self

    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return self._pop.numpy()[np.asarray(items, dtype=np.int64)]

    def score_all(self, users: npt.ArrayLike) -> torch.Tensor:
        n = len(np.atleast_1d(np.asarray(users)))
        return self._pop.unsqueeze(0).expand(n, -1)

    def save(self, path: str | Path) -> None:
        """Write the item counts (``popularity.npy``) and sizes (``state.json``) into folder ``path``."""
        if not hasattr(self, "_pop"):
            raise ConfigError("Popularity is not fitted yet: call fit() or load()")
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        np.save(p / "popularity.npy", self._pop.numpy())
        state = {"model": "Popularity", "n_users": self.n_users, "n_items": self.n_items}
        (p / "state.json").write_text(json.dumps(state))

    @classmethod
    def load(cls, path: str | Path) -> "Popularity":
        """Load a model written by :meth:`save` (it cannot exclude seen items: no training data)."""
        p = Path(path)
        if not (p / "state.json").is_file() or not (p / "popularity.npy").is_file():
            raise DataError(f"{p}: not a saved Popularity model (needs state.json and popularity.npy)")
        state = json.loads((p / "state.json").read_text())
        if state.get("model") != "Popularity":
            raise DataError(f"{p} holds a {state.get('model')}, not a Popularity")
        m = cls()
        m.n_users, m.n_items = int(state["n_users"]), int(state["n_items"])
        m._pop = torch.from_numpy(np.load(p / "popularity.npy"))
        return m

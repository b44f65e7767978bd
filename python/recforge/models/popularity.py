"""The most-popular baseline."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from .._native import Interactions
from ..errors import ConfigError
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

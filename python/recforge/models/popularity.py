"""The most-popular baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .._native import Interactions
from ..errors import ConfigError, DataError
from ._base import Recommender, _ids, _interactions


class Popularity(Recommender):
    """Scores every item by its number of training interactions, the same for every user."""

    def __init__(self) -> None:
        self._pop: torch.Tensor | None = None
        self._train: Interactions | None = None

    def __repr__(self) -> str:
        return "Popularity()"

    def fit(self, train: Interactions, valid: Interactions | None = None) -> "Popularity":
        """Count each item's training interactions (``valid`` is accepted for the common
        signature and not used)."""
        train = _interactions(train, "train")
        if valid is not None:
            _interactions(valid, "valid")
        self._train = train
        self.n_users, self.n_items = train.n_users, train.n_items
        self._pop = torch.from_numpy(train.item_degrees().astype(np.float32))
        return self

    def _require_fit(self) -> torch.Tensor:
        if self._pop is None:
            raise ConfigError("Popularity is not fitted yet: call fit() or load()")
        return self._pop

    @property
    def train_interactions(self) -> Interactions | None:
        return self._train

    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> npt.NDArray[np.float32]:
        pop = self._require_fit()
        u, i = _ids(users, self.n_users, "user"), _ids(items, self.n_items, "item")
        if len(u) != len(i):
            raise DataError(f"users has {len(u)} entries but items has {len(i)}")
        return pop.numpy()[i]

    def score_all(self, users: npt.ArrayLike) -> torch.Tensor:
        pop = self._require_fit()
        u = _ids(users, self.n_users, "user")
        return pop.unsqueeze(0).expand(len(u), -1)

    def save(self, path: str | Path) -> None:
        """Write the item counts (``popularity.npy``), the training interactions
        (``train.npz``, so a loaded model still skips seen items) and ``state.json``."""
        pop = self._require_fit()
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        np.save(p / "popularity.npy", pop.numpy())
        if self._train is not None:
            a = self._train.to_arrays()
            np.savez(p / "train.npz", users=a["users"], items=a["items"])
        state = {"model": "Popularity", "n_users": self.n_users, "n_items": self.n_items}
        (p / "state.json").write_text(json.dumps(state))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Popularity":
        """Load a model written by :meth:`save` (``device`` is accepted for the common signature:
        the counts live on the CPU)."""
        p = Path(path)
        if not (p / "state.json").is_file() or not (p / "popularity.npy").is_file():
            raise DataError(f"{p}: not a saved Popularity model (needs state.json and popularity.npy)")
        try:
            state: Any = json.loads((p / "state.json").read_bytes().decode("utf-8"))
            model, n_users, n_items = state["model"], int(state["n_users"]), int(state["n_items"])
            pop = np.load(p / "popularity.npy", allow_pickle=False)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise DataError(f"{p}: corrupt Popularity model files ({type(e).__name__}: {e})") from e
        if model != "Popularity":
            raise DataError(f"{p} holds a {model}, not a Popularity")
        if pop.shape != (n_items,) or pop.dtype != np.float32 or not np.isfinite(pop).all() or n_users < 1:
            raise DataError(f"{p}: popularity.npy does not hold {n_items} finite float32 counts")
        m = cls()
        m.n_users, m.n_items = n_users, n_items
        m._pop = torch.from_numpy(pop)
        if (p / "train.npz").is_file():
            try:
                with np.load(p / "train.npz", allow_pickle=False) as z:
                    users, items = z["users"], z["items"]
                m._train = Interactions.from_arrays(users, items, n_users=n_users, n_items=n_items)
            except (ValueError, KeyError, OSError) as e:
                raise DataError(f"{p}: corrupt train.npz ({type(e).__name__}: {e})") from e
        return m

"""Negative sampling in the Rust core: uniform or popularity-weighted (alias method), never an item
the user interacted with, reproducible from a seed for any number of threads."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import numpy.typing as npt

from . import _native
from ._native import Interactions
from .errors import ConfigError, DataError

Strategy = Literal["uniform", "popularity"]


def _weights(
    strategy: str, popularity: npt.ArrayLike | Interactions | None, parts: Sequence[Interactions]
) -> np.ndarray | None:
    if strategy != "popularity":
        if popularity is not None:
            raise ConfigError("popularity weights are only used with strategy='popularity'")
        return None
    if popularity is None:
        return np.sum([p.item_degrees() for p in parts], axis=0).astype(np.float64)
    if isinstance(popularity, Interactions):
        return popularity.item_degrees().astype(np.float64)
    w = np.asarray(popularity)
    if w.dtype.kind not in "iuf":
        raise DataError(f"popularity must be numbers (one weight per item), got dtype {w.dtype}")
    if w.ndim != 1:
        raise DataError(f"popularity must be one weight per item, got shape {w.shape}")
    return w.astype(np.float64)  # never narrowed: a tiny weight must not become 0


def _check(x: object, name: str) -> Interactions:
    if not isinstance(x, Interactions):
        raise ConfigError(f"{name} must be recforge.Interactions, got {type(x).__name__}")
    return x


def eval_negatives(
    test: Interactions,
    exclude: Sequence[Interactions] = (),
    *,
    n: int = 100,
    strategy: Strategy = "uniform",
    seed: int = 0,
    popularity: npt.ArrayLike | Interactions | None = None,
) -> npt.NDArray[np.int64]:
    """``n`` distinct negatives for each user with a test item, as ``[n_users, n]`` int64 (rows
    of users without a test item are ``-1``). A negative is never an item the user has in
    ``test`` or in any ``exclude`` set (pass train and valid). ``strategy="popularity"`` draws
    proportionally to ``popularity`` (an array of item weights or an Interactions whose item
    degrees are used; default: the degrees over test and ``exclude``). A user with fewer than ``n``
    eligible items is a DataError naming the user."""
    test = _check(test, "test")
    exclude = [_check(x, "exclude") for x in exclude]
    # n and seed are checked (type and range, as ConfigErrors naming them) by the Rust binding.
    w = _weights(strategy, popularity, [test, *exclude])
    return _native._eval_negatives(test, exclude, n, strategy, w, seed)


def training_negatives(
    train: Interactions,
    k: int = 1,
    *,
    strategy: Strategy = "uniform",
    seed: int = 0,
    epoch: int = 0,
    replace: bool = True,
    popularity: npt.ArrayLike | Interactions | None = None,
) -> npt.NDArray[np.int64]:
    """``k`` negatives for every training interaction, as ``[n_interactions, k]`` int64 aligned with
    ``train.to_arrays()`` (for BPR-style losses). Never one of the user's training items. With
    ``replace=False`` the ``k`` negatives of one interaction are distinct. Pass the epoch number
    to draw fresh negatives each epoch from one seed."""
    train = _check(train, "train")
    # k, seed and epoch are checked (type and range) by the Rust binding.
    w = _weights(strategy, popularity, [train])
    return _native._training_negatives(train, k, strategy, w, replace, seed, epoch)


__all__ = ["eval_negatives", "training_negatives"]

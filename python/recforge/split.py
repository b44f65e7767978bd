"""Train / validation / test splits over one id space (computed in the Rust core).

Every function returns a :class:`SplitResult`, which unpacks as ``train, valid, test`` and carries
``.report``: how many interactions went to each part and how many users were short of interactions
(and, with ``short_users="drop"``, how many users and interactions were dropped). Nothing is dropped
without being counted there.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import numpy.typing as npt

from . import _native
from ._native import Interactions
from .errors import ConfigError

ShortUsers = Literal["train", "drop", "raise"]


class SplitResult(tuple):  # type: ignore[type-arg]
    """``(train, valid, test)`` with the split's counts in ``.report``."""

    train: Interactions
    valid: Interactions
    test: Interactions
    report: dict[str, int]

    def __new__(
        cls, train: Interactions, valid: Interactions, test: Interactions, report: dict[str, int]
    ) -> "SplitResult":
        self = super().__new__(cls, (train, valid, test))
        self.train, self.valid, self.test, self.report = train, valid, test, dict(report)
        return self

    def __repr__(self) -> str:
        return f"SplitResult(train={self.train!r}, valid={self.valid!r}, test={self.test!r}, report={self.report})"


def _check(x: object) -> Interactions:
    if not isinstance(x, Interactions):
        raise ConfigError(f"expected recforge.Interactions, got {type(x).__name__}")
    return x


def leave_one_out(interactions: Interactions, *, short_users: ShortUsers = "train") -> SplitResult:
    """Leave-one-out by time: each user's last interaction is the test item, the second last the
    validation item, the rest train.

    Order within a user is by timestamp, ties broken by the original row order (without
    timestamps, row order is the time order), so equal timestamps never make the split depend on
    sort internals. Users with fewer than 3 interactions are ``short_users``: kept whole in train
    (``"train"``, the default), removed (``"drop"``, counted in ``.report``) or a
    :class:`~recforge.errors.SplitError` (``"raise"``).
    """
    return SplitResult(*_native.leave_one_out(_check(interactions), short_users))


def ratio(
    interactions: Interactions,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    *,
    order: Literal["random", "time"] = "random",
    by_user: bool = True,
    seed: int = 0,
    short_users: ShortUsers = "train",
) -> SplitResult:
    """Split by fractions, e.g. ``(0.8, 0.1, 0.1)``; a pair ``(0.8, 0.2)`` means no validation part.

    With ``by_user=True`` each user's interactions are split separately: valid and test get
    ``floor(n * fraction)``, train the rest, and a part whose expected size is between 0 and 1 gets
    one interaction while train keeps more than one (RecBole's rule). Users with fewer interactions
    than parts are ``short_users``. ``order="time"`` puts the earliest interactions in train;
    ``order="random"`` uses a permutation drawn from ``seed`` (independent of the thread count).
    With ``by_user=False`` all interactions are split as one list.
    """
    try:
        f = [float(v) for v in fractions]
    except (TypeError, ValueError):
        raise ConfigError(f"fractions must be 2 or 3 numbers, got {fractions!r}") from None
    if len(f) == 2:
        f = [f[0], 0.0, f[1]]
    if len(f) != 3:
        raise ConfigError(f"fractions must have 2 or 3 values, got {len(f)}")
    if seed is None:
        raise ConfigError("seed must be an integer, got None")
    # Its type and range (0..2**64) are checked by the Rust binding.
    return SplitResult(
        *_native.ratio_split(_check(interactions), f, order, by_user, seed, short_users)
    )


def k_core(
    interactions: Interactions, user_k: int, item_k: int | None = None
) -> tuple[Interactions, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """k-core filter: ``(filtered, kept_users, kept_items)``; the filtered interactions are
    re-indexed so that new id ``j`` is old id ``kept_users[j]`` (resp. ``kept_items[j]``).

    Use :meth:`recforge.Dataset.k_core` to keep the id maps and tables in step."""
    # user_k / item_k are checked (integers in 0..2**32) by the Rust binding.
    x, users, items = _native.k_core(
        _check(interactions), user_k, user_k if item_k is None else item_k
    )
    return x, users, items


__all__ = ["SplitResult", "k_core", "leave_one_out", "ratio"]

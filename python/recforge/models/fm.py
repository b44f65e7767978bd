"""Factorization Machines and Neural Factorization Machines over user, item and side features."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .._native import Interactions
from ..errors import ConfigError, DataError
from ._base import DEFAULT_PATIENCE, Callback, LrSchedule, TorchModel

#: Per-entity side features: for each user (or item) a list of feature ids, or a mapping
#: ``{feature id: value}``; feature ids are 0-based within that side.
SideFeatures = Sequence[Sequence[int] | Mapping[int, float]]


def _feature_id(k: object, name: str, e: int) -> int:
    """A side-feature id: an integer (bools, fractions and non-numbers are refused, never cut)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer, float, np.floating)):
        raise DataError(f"{name}[{e}] has feature id {k!r}: feature ids must be integers")
    if isinstance(k, (float, np.floating)) and not float(k).is_integer():
        raise DataError(f"{name}[{e}] has feature id {k!r}: feature ids must be integers")
    f = int(k)
    if f < 0:
        raise DataError(f"{name}[{e}] has a negative feature id {f}")
    return f


def _rows(
    n: int, id_offset: int, side: SideFeatures | None, side_offset: int, name: str
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Padded ``[n, width]`` (indices, values) rows: the entity's id feature, then its side
    features. Returns ``(idx, val, width, number of side features)``."""
    if side is None:
        idx = (np.arange(n, dtype=np.int64) + id_offset)[:, None]
        return idx, np.ones_like(idx, dtype=np.float32), 1, 0
    if len(side) != n:
        raise DataError(f"{name} has {len(side)} rows for {n} entities")
    pairs: list[tuple[list[int], list[float]]] = []
    n_side = 0
    for e, row in enumerate(side):
        if isinstance(row, Mapping):
            f = [_feature_id(k, name, e) for k in row]
            v = [float(x) for x in row.values()]
        elif isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
            raise DataError(f"{name}[{e}] must be a list of feature ids or a {{feature id: value}} mapping, got {row!r}")
        else:
            f = [_feature_id(k, name, e) for k in row]
            v = [1.0] * len(f)
        if not all(np.isfinite(v)):
            raise DataError(f"{name}[{e}] has a value that is not a finite number")
        n_side = max(n_side, max(f, default=-1) + 1)
        pairs.append((f, v))
    width = 1 + max((len(f) for f, _ in pairs), default=0)
    idx = np.zeros((n, width), dtype=np.int64)
    val = np.zeros((n, width), dtype=np.float32)
    idx[:, 0] = np.arange(n) + id_offset
    val[:, 0] = 1.0
    for e, (f, v) in enumerate(pairs):
        idx[e, 1 : 1 + len(f)] = np.asarray(f, dtype=np.int64) + side_offset
        val[e, 1 : 1 + len(v)] = v
        idx[e, 1 + len(f) :] = id_offset + e  # padding points at the id feature with value 0
    return idx, val, width, n_side


class FM(TorchModel):
    """Factorization Machine (Rendle 2010) over the user id, the item id and optional multi-hot
    side features (genres, keywords, ...), for ratings (``loss="mse"``) or top-K ranking
    (``loss="bpr"`` or ``"bce"`` with one sampled negative item per positive, fresh every epoch).

    Pass side features to :meth:`fit` as ``item_features=[[feature ids of item 0], ...]`` (or
    ``{feature id: value}`` mappings), likewise ``user_features``. They belong to that ``fit``
    alone and are saved once, with the weights (``features.item.idx`` / ``.val``).
    """

    default_hidden: tuple[int, ...] = ()
    loss: str

    def __init__(
        self,
        dim: int = 64,
        *,
        loss: str = "bpr",
        hidden: Sequence[int] | None = None,
        dropout: float = 0.0,
        batch_norm: bool = False,
        epochs: int = 20,
        batch_size: int = 1024,
        lr: float = 0.005,
        reg: float = 1e-4,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        clip_grad_norm: float = 0.0,
        lr_schedule: LrSchedule = None,
        init_std: float = 0.1,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        values = dict(locals())
        values["hidden"] = list(self.default_hidden if hidden is None else hidden)
        self._init_spec(values)

    def _spec_set(self) -> None:
        # The validation metric: RMSE for loss="mse", NDCG@10 otherwise.
        self.monitor, self.higher_is_better = ("rmse", False) if self.loss == "mse" else ("ndcg@10", True)

    def fit(  # type: ignore[override]
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_features: SideFeatures | None = None,
        item_features: SideFeatures | None = None,
        epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        patience: int | None = DEFAULT_PATIENCE,
        progress: bool = True,
    ) -> "FM":
        """Train as :meth:`TorchModel.fit`, over the user / item ids plus the given side features."""
        if not isinstance(train, Interactions):
            raise ConfigError(f"train must be recforge.Interactions, got {type(train).__name__}")
        features = None
        if user_features is not None or item_features is not None:
            features = self._feature_rows(train.n_users, train.n_items, user_features, item_features)
        self._fit(train, valid, epochs=epochs, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
                  resume=resume, patience=patience, progress=progress, features=features)  # fmt: skip
        return self

    @staticmethod
    def _feature_rows(
        n_users: int, n_items: int, user_features: SideFeatures | None, item_features: SideFeatures | None
    ) -> tuple[Any, ...]:
        ui, uv, uw, n_user_side = _rows(n_users, 0, user_features, 0, "user_features")
        # Layout: user ids | item ids | item side features | user side features.
        ii, iv, iw, n_item_side = _rows(n_items, n_users, item_features, n_users + n_items, "item_features")
        if user_features is not None:
            side = n_users + n_items + n_item_side
            ui, uv, uw, _ = _rows(n_users, 0, user_features, side, "user_features")
        n_features = n_users + n_items + n_item_side + n_user_side
        return (ui.ravel(), uv.ravel(), uw, ii.ravel(), iv.ravel(), iw, n_features)


class NFM(FM):
    """Neural Factorization Machine (He & Chua 2017): FM's bi-interaction pooling followed by an
    MLP (ReLU, dropout; ``batch_norm=True`` adds batch normalisation after the pooling and each
    hidden layer, as in the paper). Defaults follow the MicroLens NFM baseline: embedding 64, one hidden
    layer of 64, dropout 0.2, Adam lr 0.005, one uniform negative per positive (BCE loss), early
    stopping on validation NDCG@10."""

    default_hidden = (64,)

    def __init__(self, dim: int = 64, *, loss: str = "bce", dropout: float = 0.2, **kwargs: Any) -> None:
        super().__init__(dim, loss=loss, dropout=dropout, **kwargs)

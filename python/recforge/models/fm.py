"""Factorization Machines and Neural Factorization Machines over user, item and side features."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .. import _native
from .._native import Interactions
from ..errors import ConfigError, DataError
from ._base import FactorModel, LrSchedule, ranking_logs, rmse_logs

#: Per-entity side features: for each user (or item) a list of feature ids, or a mapping
#: ``{feature id: value}``; feature ids are 0-based within that side.
SideFeatures = Sequence[Sequence[int] | Mapping[int, float]]


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
            f, v = [int(k) for k in row], [float(x) for x in row.values()]
        else:
            f, v = [int(k) for k in row], [1.0] * len(row)
        if any(k < 0 for k in f):
            raise DataError(f"{name}[{e}] has a negative feature id")
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


class FM(FactorModel):
    """Factorization Machine (Rendle 2010) over the user id, the item id and optional multi-hot
    side features (genres, keywords, ...), for ratings (``loss="mse"``) or top-K ranking
    (``loss="bpr"`` or ``"bce"`` with one sampled negative item per positive, fresh every epoch).

    Pass side features to :meth:`fit` as ``item_features=[[feature ids of item 0], ...]`` (or
    ``{feature id: value}`` mappings), likewise ``user_features``.
    """

    default_hidden: tuple[int, ...] = ()
    data_attributes = ("user_features", "item_features")
    _extra = ("loss", "hidden", "dropout", "batch_norm", "user_features", "item_features")

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
        self._set_hparams(locals())
        if loss not in ("mse", "bpr", "bce"):
            raise ConfigError(f"loss must be 'mse', 'bpr' or 'bce', got {loss!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.loss, self.dropout = loss, float(dropout)
        self.hidden = list(self.default_hidden if hidden is None else hidden)
        if batch_norm and not self.hidden:
            raise ConfigError("batch_norm applies to the MLP: it needs hidden layers (an NFM)")
        self.batch_norm = bool(batch_norm)
        self.monitor, self.higher_is_better = ("rmse", False) if loss == "mse" else ("ndcg@10", True)
        self.user_features: SideFeatures | None = None
        self.item_features: SideFeatures | None = None

    def fit(  # type: ignore[override]
        self,
        train: Interactions,
        valid: Interactions | None = None,
        *,
        user_features: SideFeatures | None = None,
        item_features: SideFeatures | None = None,
        **kwargs: Any,
    ) -> "FM":
        if user_features is not None or item_features is not None:
            self.user_features = [list(r) if not isinstance(r, Mapping) else dict(r) for r in user_features] if user_features is not None else None  # type: ignore[misc]
            self.item_features = [list(r) if not isinstance(r, Mapping) else dict(r) for r in item_features] if item_features is not None else None  # type: ignore[misc]
        return super().fit(train, valid, **kwargs)  # type: ignore[return-value]

    def _build(self, n_users: int, n_items: int) -> Any:
        ui, uv, uw, n_user_side = _rows(n_users, 0, self.user_features, 0, "user_features")
        # Layout: user ids | item ids | item side features | user side features.
        ii, iv, iw, n_item_side = _rows(n_items, n_users, self.item_features, n_users + n_items, "item_features")
        if self.user_features is not None:
            side = n_users + n_items + n_item_side
            ui, uv, uw, _ = _rows(n_users, 0, self.user_features, side, "user_features")
        n_features = n_users + n_items + n_item_side + n_user_side
        return _native._Factorization.fm(
            self.loss, ui.ravel(), uv.ravel(), uw, ii.ravel(), iv.ravel(), iw, n_features, self.dim,
            self.hidden, self.dropout, self.init_std, self.seed, self.device, self.optimizer,
            self.lr, self.weight_decay, self.clip_grad_norm, self.reg, self.batch_size,
            self.batch_norm,
        )  # fmt: skip

    def _validate(self, valid: Interactions) -> dict[str, float]:
        return rmse_logs(self, valid) if self.loss == "mse" else ranking_logs(self, valid)


class NFM(FM):
    """Neural Factorization Machine (He & Chua 2017): FM's bi-interaction pooling followed by an
    MLP (ReLU, dropout; ``batch_norm=True`` adds batch normalisation after the pooling and each
    hidden layer, as in the paper). Defaults follow the MicroLens NFM baseline: embedding 64, one hidden
    layer of 64, dropout 0.2, Adam lr 0.005, one uniform negative per positive (BCE loss), early
    stopping on validation NDCG@10."""

    default_hidden = (64,)

    def __init__(self, dim: int = 64, *, loss: str = "bce", dropout: float = 0.2, **kwargs: Any) -> None:
        super().__init__(dim, loss=loss, dropout=dropout, **kwargs)

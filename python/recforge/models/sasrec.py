"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .. import _native
from .._native import Interactions
from ..errors import ConfigError, DataError
from ._base import LrSchedule, TorchModel, _check_schedule, ranking_logs


class SASRec(TorchModel):
    """Causal self-attention over each user's items in time order; the hidden state after the last
    item scores every item as the next one.

    Training follows the paper: every position of a user's training sequence predicts the next
    item, with one uniformly sampled negative per position and binary cross-entropy
    (``loss="bce"``), or a softmax over all items (``loss="ce"``, the default here: it converges in
    fewer epochs on small data, as in RecBole). Sequences keep the last ``max_len`` items.

    :meth:`score_all` reads each user's history from the training interactions, or from
    ``history=`` (e.g. train + validation interactions when scoring the test items of a
    leave-one-out split).

    Args:
        dim: hidden size (64).
        n_layers: self-attention blocks (2).
        n_heads: attention heads (1; must divide ``dim``).
        max_len: longest sequence (50; older items are cut).
        dropout: dropout on embeddings, attention and block outputs (0.2).
        loss: ``"ce"`` (default) or ``"bce"``.
        epochs, batch_size (users per batch, 128), lr (0.001), optimizer (Adam, betas 0.9/0.98),
        weight_decay, clip_grad_norm, lr_schedule, init_std (0.02), seed, device: as for the other
        models.
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        n_layers: int = 2,
        n_heads: int = 1,
        max_len: int = 50,
        dropout: float = 0.2,
        loss: str = "ce",
        epochs: int = 100,
        batch_size: int = 128,
        lr: float = 0.001,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        clip_grad_norm: float = 0.0,
        lr_schedule: LrSchedule = None,
        init_std: float = 0.02,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        super().__init__(epochs=epochs, batch_size=batch_size, seed=seed, device=device)
        self._check_hparams(dim, lr, 0.0, optimizer)
        if n_layers < 1 or n_heads < 1 or dim % n_heads != 0:
            raise ConfigError(f"need n_layers >= 1 and n_heads dividing dim; got {n_layers}, {n_heads}, dim {dim}")
        if max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if loss not in ("ce", "bce"):
            raise ConfigError(f"loss must be 'ce' or 'bce', got {loss!r}")
        if not (init_std > 0 and math.isfinite(init_std)):
            raise ConfigError(f"init_std must be a positive number, got {init_std}")
        self.dim, self.n_layers, self.n_heads, self.max_len = int(dim), int(n_layers), int(n_heads), int(max_len)
        self.dropout, self.loss, self.lr, self.optimizer = float(dropout), loss, float(lr), optimizer
        self.weight_decay, self.clip_grad_norm = float(weight_decay), float(clip_grad_norm)
        self.lr_schedule = _check_schedule(lr_schedule)
        self.init_std = float(init_std)

    def _build(self, n_users: int, n_items: int) -> Any:
        return _native._Factorization.sasrec(
            self.loss, n_items, self.dim, self.n_layers, self.n_heads, self.max_len, self.dropout,
            self.init_std, self.seed, self.device, self.optimizer, self.lr, self.weight_decay,
            self.clip_grad_norm, self.batch_size,
        )  # fmt: skip

    def _validate(self, valid: Interactions) -> dict[str, float]:
        return ranking_logs(self, valid)

    def config(self) -> dict[str, Any]:
        keys = ("dim", "n_layers", "n_heads", "max_len", "dropout", "loss", "epochs", "batch_size",
                "lr", "optimizer", "weight_decay", "clip_grad_norm", "lr_schedule", "init_std", "seed")  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    def score_all(self, users: npt.ArrayLike, history: Interactions | None = None) -> torch.Tensor:
        """``[len(users), n_items]`` next-item scores from each user's last ``max_len`` items in
        ``history`` (default: the training interactions); a user without history gets the scores
        of an empty sequence."""
        if history is not None and not isinstance(history, Interactions):
            raise ConfigError(f"history must be recforge.Interactions, got {type(history).__name__}")
        return self._require_fit().score_all(np.atleast_1d(np.asarray(users)), history)

    def save(self, path: str | Path) -> None:
        """Write the model and its users' training histories (``history.npz``) into ``path``, so
        the loaded model recommends for them (and skips their seen items) at once."""
        super().save(path)
        h = self._train
        if h is not None:
            np.savez(Path(path) / "history.npz", indptr=h.indptr, indices=h.indices,
                     n_users=h.n_users, n_items=h.n_items)  # fmt: skip

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Any:
        """Load a model written by :meth:`save`, with its users' histories when saved."""
        model = super().load(path, device)
        f = Path(path) / "history.npz"
        if f.is_file():
            with np.load(f) as z:
                indptr, indices = z["indptr"], z["indices"]
                n_users, n_items = int(z["n_users"]), int(z["n_items"])
            if len(indptr) != n_users + 1 or n_items != model.n_items:
                raise DataError(f"{f} does not match the model ({n_items} items, expected {model.n_items})")
            users = np.repeat(np.arange(n_users), np.diff(indptr))
            hist = Interactions.from_arrays(users, indices, timestamps=np.arange(len(indices)),
                                            n_users=n_users, n_items=n_items)  # fmt: skip
            model._native.set_train(hist)
            model._train = hist
        return model

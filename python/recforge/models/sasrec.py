"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from .._native import Interactions
from ..errors import ConfigError
from ._base import LrSchedule, TorchModel


class SASRec(TorchModel):
    """Causal self-attention over each user's items in time order; the hidden state after the last
    item scores every item as the next one.

    Training follows the paper: every position of a user's training sequence predicts the next
    item, with one uniformly sampled negative per position and binary cross-entropy
    (``loss="bce"``), or a softmax over all items (``loss="ce"``, the default here: it converges in
    fewer epochs on small data, as in RecBole). Sequences keep the last ``max_len`` items.

    :meth:`score_all` reads each user's history from the training interactions, or from
    ``history=`` (e.g. train + validation interactions when scoring the test items of a
    leave-one-out split). A saved model keeps its training interactions, so a loaded one
    recommends for those users (and skips their seen items) at once.

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
        self._init_spec(locals())

    def score_all(self, users: npt.ArrayLike, history: Interactions | None = None) -> torch.Tensor:
        """``[len(users), n_items]`` next-item scores from each user's last ``max_len`` items in
        ``history`` (default: the training interactions); a user without history gets the scores
        of an empty sequence."""
        if history is not None and not isinstance(history, Interactions):
            raise ConfigError(f"history must be recforge.Interactions, got {type(history).__name__}")
        return self._require_fit().score_all(np.atleast_1d(np.asarray(users)), history)

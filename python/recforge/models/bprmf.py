"""BPR-MF: matrix factorisation trained with the Bayesian personalised ranking loss."""

from __future__ import annotations

from typing import Any

from .. import _native
from .._native import Interactions
from ._base import FactorModel, LrSchedule, ranking_logs


class BPRMF(FactorModel):
    """``score(u, i) = p_u . q_i``, trained so each observed item scores above one uniformly
    sampled unobserved item (fresh negatives every epoch), with L2 regularisation.

    Validation (``monitor="ndcg@10"``) is full-ranking NDCG@10 with the training items masked.
    Defaults: dim 64, 30 epochs, batch 1024, Adam lr 0.005, reg 1e-4.
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        epochs: int = 30,
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

    def _build(self, n_users: int, n_items: int) -> Any:
        return _native._Factorization(
            "bpr", n_users, n_items, self.dim, False, self.init_std, self.seed, self.device,
            self.optimizer, self.lr, self.weight_decay, 0.0, self.clip_grad_norm, self.reg,
            self.batch_size,
        )  # fmt: skip

    def _validate(self, valid: Interactions) -> dict[str, float]:
        return ranking_logs(self, valid)

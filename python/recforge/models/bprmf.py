"""BPR-MF: matrix factorisation trained with the Bayesian personalised ranking loss."""

from __future__ import annotations

from ._base import LrSchedule, TorchModel


class BPRMF(TorchModel):
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
        self._init_spec(locals())

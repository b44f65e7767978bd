"""BPR-MF: matrix factorisation trained with the Bayesian personalised ranking loss."""

from __future__ import annotations

from ._base import LrSchedule, TorchModel


class BPRMF(TorchModel):
    """``score(u, i) = p_u . q_i``, trained so each observed item scores above one uniformly
    sampled unobserved item (fresh negatives every epoch), with optional L2 regularisation.

    Validation (``monitor="ndcg@10"``) is full-ranking NDCG@10 with the training items masked.
    Defaults (chosen by ``benchmarks/sweep_bprmf.py``, RecBole's BPR settings plus a smaller
    initialisation): dim 64, Adam lr 0.001, batch 2048, no L2, factors drawn with std 0.05, up to
    200 epochs. With ``fit(train, valid)`` training stops once more than 10 epochs bring no
    validation gain (after 25-110 epochs on ml-latest-small) and keeps the best
    epoch; without ``valid`` all ``epochs`` are trained, so pass a smaller ``epochs`` there.
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        epochs: int = 200,
        batch_size: int = 2048,
        lr: float = 0.001,
        reg: float = 0.0,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        clip_grad_norm: float = 0.0,
        lr_schedule: LrSchedule = None,
        init_std: float = 0.05,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self._init_spec(locals())

"""Biased matrix factorisation for ratings ("SVD", as in Funk SVD and Surprise)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._base import LrSchedule, TorchModel


class SVD(TorchModel):
    """``r_hat = mu + b_u + b_i + p_u . q_i``, trained on squared error with L2 regularisation.

    Args:
        dim: factor dimension (64).
        epochs: training epochs (25); with ``valid`` the best epoch's weights are kept.
        batch_size: ratings per mini-batch (512).
        lr: learning rate (0.005).
        reg: L2 weight on the factors and biases each rating touches (0.1).
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sparse_adam"`` (lazy Adam on embedding rows,
            as ``torch.optim.SparseAdam``), ``"sgd"`` or ``"adagrad"``.
        lr_schedule: ``None`` (constant), ``"linear"``, ``"cosine"``, ``"step"`` or a dict such as
            ``{"name": "cosine", "warmup_epochs": 1, "end": 0.1}`` (see ``recforge.models.LrSchedule``).
        init_std: standard deviation of the initial factors (0.1).
        seed: initialisation and shuffling seed (0): the same seed gives the same model on CPU.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    On ml-latest-small (80/10/10 random split) it reaches test RMSE 0.858, against 0.881 for the
    user/item-bias baseline and 1.050 for the global mean.
    """

    monitor = "rmse"
    higher_is_better = False

    def __init__(
        self,
        dim: int = 64,
        *,
        epochs: int = 25,
        batch_size: int = 512,
        lr: float = 0.005,
        reg: float = 0.1,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        clip_grad_norm: float = 0.0,
        lr_schedule: LrSchedule = None,
        init_std: float = 0.1,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self._init_spec(locals())

    def fold_in(
        self, items: npt.ArrayLike, ratings: npt.ArrayLike, reg: float | None = None
    ) -> npt.NDArray[np.float32]:
        """Predicted ratings of every item for a new user who rated ``items`` with ``ratings``:
        the user's bias and factors are fitted exactly (ridge regression) with the item side
        frozen, so a person who rates a few movies gets recommendations at once."""
        r = self._require_fit().fold_in(
            np.asarray(items), np.asarray(ratings), self.reg if reg is None else float(reg)
        )
        return r.cpu().numpy()

    def recommend_new_user(
        self, items: npt.ArrayLike, ratings: npt.ArrayLike, k: int = 10
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-``k`` unrated items and predicted ratings for a new user (see :meth:`fold_in`)."""
        scores = self.fold_in(items, ratings)
        scores[np.asarray(items, dtype=np.int64)] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return top.astype(np.int64), scores[top]

"""SoftTokenRec: user and item embeddings fed as soft tokens into a causal language model
(CLLM4Rec-style; the S2 reference system)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import numpy.typing as npt
import torch

from .._native import Interactions
from ..errors import ConfigError
from ._base import LrSchedule, TorchModel


def _backbone_arg(backbone: Any) -> str | dict[str, Any]:
    from ..text import CausalLM

    if isinstance(backbone, CausalLM):
        return os.fspath(backbone.source.resolve()) if backbone.source is not None else backbone.config
    if isinstance(backbone, Mapping):
        return dict(backbone)
    if isinstance(backbone, (str, os.PathLike)):
        p = Path(backbone)
        if not p.exists():
            raise ConfigError(f"SoftTokenRec: backbone {os.fspath(p)!r} does not exist (a model folder, a .gguf file, a config dict or a recforge.text.CausalLM)")
        return os.fspath(p.resolve())
    raise ConfigError(f"SoftTokenRec: backbone must be a model folder, a .gguf file, a config dict or a recforge.text.CausalLM, got {type(backbone).__name__}")


class SoftTokenRec(TorchModel):
    """Collaborative soft tokens (S2, CLLM4Rec-style): a user table and an item table beside a
    causal language model, never in its vocabulary.

    Each user's training sequence ``[user, item_1, ..., item_T]`` is projected into the backbone's
    hidden size (``proj_in_user``, ``proj_in_item``) and enters it as ``inputs_embeds``
    (left-padded; positions follow the mask). Each output state is projected back to ``dim``
    (``proj_out``) and scored by a dot product with the whole item table, so all items are ranked
    without an output vocabulary. The output after item ``t`` predicts item ``t + 1``.

    Losses, weighted and each switchable: all-item cross-entropy (``ce_weight``; computed in
    chunks of ``ce_chunk`` items; the chunks' exponentials are kept between its two passes
    while they fit in 256 MiB, else recomputed, so memory does not grow with
    ``batch x length x items`` beyond that),
    context-item BPR (``bpr_weight``: the projected state against the positive and
    ``n_negatives`` uniformly drawn items; a negative equal to the positive is skipped),
    user-item BPR (``user_bpr_weight``: the user's table row against the same items) and L2 on
    the batch's user rows and target-item rows (``lambda_c``). Defaults follow S2's config.

    Args:
        backbone: a Hugging Face folder (GPT-2, Llama, Qwen2, SmolLM2), a ``.gguf`` file, a
            config dict (random weights) or a :class:`recforge.text.CausalLM` (its source).
        backbone_mode: ``"full"`` (everything trains, S2's default), ``"frozen"`` (backbone
            weights fixed; gradients flow through it) or ``"random"`` (the architecture,
            freshly initialised, trained).
        backbone_layers: keep only the backbone's first N transformer blocks (its embeddings and
            final norm kept: what ``transformers`` builds from the same weights with
            ``num_hidden_layers=N``); default all. A frozen pretrained backbone's middle layers
            can serve a recommender better than its last (see the README), and run faster.
        precision: ``"fp32"`` (default) or ``"bf16"``: mixed precision. The backbone's
            transformer blocks run their linear layers in bfloat16 (the AMX / AVX-512 BF16 units
            of recent x86 CPUs, tensor cores on CUDA) while the weights, the optimiser state, the
            residual stream, attention, the norms and the losses stay float32: what
            ``torch.autocast(dtype=torch.bfloat16)`` does to a ``transformers`` model, attention
            aside. Scores move by about bfloat16's precision (3 significant digits); see the
            README for speed, and for the quality it cost a frozen pretrained backbone.
        dim: size of the user and item vectors (128).
        max_len: longest input: the user token plus the last ``max_len - 1`` items (50).
        dropout: dropout on the soft tokens (the projected user and item vectors) in training
            (0.1; the backbone's own layers run without dropout).
        backbone_lr, backbone_weight_decay: the backbone's own rate and decay (default: ``lr``,
            ``weight_decay``).
        epochs (10), batch_size (users per batch, 32), lr (5e-4), optimizer (``"adamw"``),
        weight_decay (1e-3), clip_grad_norm (1.0), lr_schedule, init_std (0.02), seed, device: as
        for the other models.

    :meth:`score_all` reads each user's history from the training interactions or ``history=``.
    ``state_dict()`` names: ``user_emb.weight``, ``item_emb.weight``, ``proj_in_user.*``,
    ``proj_in_item.*``, ``proj_out.*``, ``backbone.`` + the backbone's Hugging Face names.
    """

    def __init__(
        self,
        backbone: Any,
        *,
        backbone_mode: str = "full",
        backbone_layers: int | None = None,
        precision: str = "fp32",
        dim: int = 128,
        max_len: int = 50,
        n_negatives: int = 30,
        ce_weight: float = 1.0,
        bpr_weight: float = 1.0,
        user_bpr_weight: float = 1.0,
        lambda_c: float = 0.0,
        ce_chunk: int = 8192,
        dropout: float = 0.1,
        backbone_lr: float | None = None,
        backbone_weight_decay: float | None = None,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 5e-4,
        optimizer: str = "adamw",
        weight_decay: float = 1e-3,
        clip_grad_norm: float = 1.0,
        lr_schedule: LrSchedule = None,
        init_std: float = 0.02,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        values = dict(locals())
        values["backbone"] = _backbone_arg(backbone)
        group: dict[str, Any] = {"prefix": "backbone."}
        if backbone_lr is not None:
            group["lr"] = backbone_lr
        if backbone_weight_decay is not None:
            group["weight_decay"] = backbone_weight_decay
        del values["backbone_lr"], values["backbone_weight_decay"]
        values["param_groups"] = [group] if len(group) > 1 else []
        self._init_spec(values)

    @property
    def backbone_lr(self) -> float:
        """The backbone's learning rate."""
        for g in self._spec.get("param_groups", []):
            if g.get("prefix") == "backbone." and g.get("lr") is not None:
                return float(g["lr"])
        return float(self.lr)

    def score_all(self, users: npt.ArrayLike, history: Interactions | None = None) -> torch.Tensor:
        """``[len(users), n_items]`` next-item scores after each user's last ``max_len - 1``
        items in ``history`` (default: the training interactions); a user without history is
        scored from the user token alone."""
        if history is not None and not isinstance(history, Interactions):
            raise ConfigError(f"history must be recforge.Interactions, got {type(history).__name__}")
        return self._require_fit().score_all(np.atleast_1d(np.asarray(users)), history)

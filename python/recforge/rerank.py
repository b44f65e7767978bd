"""The LLM steps of the reference systems, each a whole batch in one call: build the prompts
(:mod:`recforge.prompts`), send them with one ``Client.chat_batch``, validate every answer
(:mod:`recforge.parsing`), re-ask only the items whose answers were invalid (a bounded number of
times), and report what happened.

```python
from recforge.llm import Client
from recforge import rerank
client = Client("http://127.0.0.1:8000/v1", "local", cache="runs/llm-cache.jsonl")
out = rerank.rerank(client, histories, candidates, max_retries=1)
out[0]            # the first user's candidate ids, best first (None if it failed)
out.report        # {'requests': .., 'ok': .., 'repaired': .., 'failed': .., 'retried': .., ...}
out.errors[0]     # why it failed (None if it did not)
```

Nothing is guessed silently: an item whose answers stay invalid is ``None`` in the output, its
reason is in ``errors`` and it is counted under ``failed``. A ranking that names only some of
the candidates (or invents ids) is repaired as :func:`recforge.parsing.permutation_of` says, and
counted under ``repaired`` (with totals of ``hallucinated``, ``duplicate`` and ``missing`` ids).

Re-asks: an invalid answer is sent back to the model with the reason
(:data:`recforge.prompts.REASK_TEMPLATE`) at a temperature raised by
``retry_temperature_step`` per round, so the response cache (whose key includes the temperature
and the messages) cannot return the same bad answer. Requests that fail at the HTTP level were
already retried by the client and are not re-asked (counted under ``llm_errors``).

Common keyword arguments: ``max_retries`` (re-ask rounds, 1), ``temperature`` (0.0),
``retry_temperature_step`` (0.2), ``max_tokens``, ``response_format`` (e.g.
:data:`recforge.prompts.JSON_OBJECT` where the server supports it), ``template`` / ``system`` /
``examples`` (prompt overrides, see :mod:`recforge.prompts`), ``reask`` (False: re-send the
original prompt without the bad answer and the reason), ``progress`` (a progress bar).

Every report has: ``requests`` (items), ``ok``, ``failed``, ``sent`` (items that needed the
LLM), ``retried`` (items re-asked at least once), ``reasks`` (re-asked requests in all),
``invalid_answers``, ``llm_errors``, ``llm_calls``, ``cache_hits``, ``prompt_tokens``,
``completion_tokens``; plus the counts of the step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, Mapping, Optional, Sequence, TypeVar

from . import prompts as P
from .errors import ConfigError, DataError
from .llm import Client
from .parsing import keyword_list, permutation_of, text_answer, unit_float

if TYPE_CHECKING:
    from .titles import match_titles

__all__ = [
    "Results",
    "describe_items",
    "generate_keywords",
    "match_titles",
    "rerank",
    "score_similarity",
    "summarize_users",
]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

_MAX_TEMPERATURE = 2.0


class Results(list[Optional[T]], Generic[T]):
    """One value per input item, in input order (None where the step failed, and for
    :func:`recforge.titles.match_titles` also where nothing matched), plus:

    Attributes:
        report: counts (see the module docs).
        errors: per item, why it failed (None where it did not).
        details: per item, step-specific information (the repairs of a ranking, how a title
            was matched, whether a description was kept or generated).
    """

    report: dict[str, int]
    errors: list[str | None]
    details: list[Any]

    def __init__(self, n: int) -> None:
        super().__init__([None] * n)
        self.errors = [None] * n
        self.details = [None] * n
        self.report = {}

    @property
    def failed(self) -> list[int]:
        """The positions of the items that failed."""
        return [k for k, e in enumerate(self.errors) if e is not None]


@dataclass
class _Options:
    max_retries: int
    temperature: float
    retry_temperature_step: float
    max_tokens: int | None
    response_format: Mapping[str, Any] | None
    reask: bool
    progress: bool

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if not 0.0 <= self.temperature <= _MAX_TEMPERATURE or self.retry_temperature_step < 0:
            raise ConfigError("temperature must be in [0, 2] and retry_temperature_step >= 0")


@dataclass
class _Job(Generic[T]):
    index: int
    messages: list[P.Message]
    validate: Callable[[str], T]
    schema: dict[str, Any] | None = None
    """The answer's JSON schema, enforced by clients that decode under constraints
    (``supports_constraints``, the in-process :class:`recforge.llm.LocalClient`)."""


def answer_schema(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """``response_format`` for an answer ``{name: value}`` (``value`` a JSON-schema subset; see
    :class:`recforge.llm.LocalClient`)."""
    schema = {"type": "object", "properties": {name: dict(value)}, "required": [name]}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def _string(max_length: int = 2000) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


_ENGINE_KEYS = (
    "requests", "ok", "failed", "sent", "retried", "reasks", "invalid_answers", "llm_errors",
    "llm_calls", "cache_hits", "prompt_tokens", "completion_tokens",
)  # fmt: skip


def _new_report(n: int) -> dict[str, int]:
    report = dict.fromkeys(_ENGINE_KEYS, 0)
    report["requests"] = n
    return report


def _ask(client: Client | None, jobs: Sequence[_Job[T]], out: Results[T], opts: _Options) -> None:
    """Send ``jobs``, validate, re-ask the invalid ones; fill ``out`` (values, errors, counts)."""
    rep = out.report
    rep["sent"] += len(jobs)
    if not jobs:
        return
    if client is None:
        for job in jobs:
            out.errors[job.index] = "needs the LLM, and no client was given"
        return
    # Clients that decode under constraints get each job's schema (unless the caller set one).
    constrained = bool(getattr(client, "supports_constraints", False)) and opts.response_format is None
    pending = [(job, job.messages) for job in jobs]
    retried: set[int] = set()
    for attempt in range(opts.max_retries + 1):
        if not pending:
            break
        t = min(_MAX_TEMPERATURE, opts.temperature + attempt * opts.retry_temperature_step)
        if attempt:
            rep["reasks"] += len(pending)
            retried.update(job.index for job, _ in pending)
        requests: list[Any] = [
            {"messages": m, "response_format": job.schema} if constrained and job.schema is not None else m
            for job, m in pending
        ]
        batch = client.chat_batch(
            requests, temperature=t, max_tokens=opts.max_tokens,
            response_format=opts.response_format, progress=opts.progress,
        )  # fmt: skip
        rep["llm_calls"] += len(pending)
        again: list[tuple[_Job[T], list[P.Message]]] = []
        for (job, _), res in zip(pending, batch):
            rep["cache_hits"] += int(res.cached)
            if res.usage:
                rep["prompt_tokens"] += res.usage.get("prompt_tokens", 0)
                rep["completion_tokens"] += res.usage.get("completion_tokens", 0)
            if not res.ok or res.text is None:
                rep["llm_errors"] += 1
                out.errors[job.index] = f"LLM request failed: {res.error}"
                continue
            try:
                out[job.index] = job.validate(res.text)
            except DataError as e:
                rep["invalid_answers"] += 1
                tries = attempt + 1
                out.errors[job.index] = f"invalid answer after {tries} {'try' if tries == 1 else 'tries'}: {e}"
                if attempt < opts.max_retries:
                    msgs = P.reask_messages(job.messages, res.text, str(e)) if opts.reask else job.messages
                    again.append((job, msgs))
            else:
                out.errors[job.index] = None
        pending = again
    rep["retried"] += len(retried)


def _finish(out: Results[T]) -> Results[T]:
    out.report["failed"] = len(out.failed)
    out.report["ok"] = len(out) - out.report["failed"]
    return out


def _same_length(**seqs: Sequence[Any] | None) -> int:
    lengths = {name: len(s) for name, s in seqs.items() if s is not None}
    if len(set(lengths.values())) > 1:
        raise ConfigError("lengths differ: " + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    return next(iter(lengths.values()))


def _no_str(name: str, value: object) -> None:
    if isinstance(value, str):
        raise ConfigError(f"{name} must be a list, got one string")


# --------------------------------------------------------------------------------------------
# (1) List re-ranking


def rerank(
    client: Client,
    histories: Sequence[Sequence[str]],
    candidates: Sequence[Sequence[tuple[K, str]]],
    *,
    max_retries: int = 1,
    min_valid: float = 0.5,
    temperature: float = 0.0,
    retry_temperature_step: float = 0.2,
    max_tokens: int | None = None,
    response_format: Mapping[str, Any] | None = None,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[P.Example] | None = None,
    reask: bool = True,
    progress: bool = True,
) -> Results[list[K]]:
    """Re-rank each user's candidates with the LLM.

    Args:
        histories: per user, the titles of the history (oldest first).
        candidates: per user, ``(id, title)`` pairs; ids unique within a user.
        min_valid: the share of a user's candidate ids an answer must name to count as a
            ranking (then repaired) rather than as invalid (then re-asked).

    Returns:
        Per user, a permutation of the candidate ids, best first (None if it failed); in
        ``details`` the repairs ``{"hallucinated", "duplicate", "missing"}``. Report extras:
        ``repaired`` (users whose ranking was repaired) and the totals of the three repairs.
    """
    _no_str("histories", histories)
    n = _same_length(histories=histories, candidates=candidates)
    opts = _Options(max_retries, temperature, retry_temperature_step, max_tokens, response_format, reask, progress)
    raw: Results[tuple[list[K], dict[str, int]]] = Results(n)
    raw.report = _new_report(n)
    jobs = []
    for u in range(n):
        cands = list(candidates[u])
        ids = [i for i, _ in cands]
        validate = permutation_of(ids, titles=[t for _, t in cands], min_valid=min_valid)
        if not cands:
            raw[u] = ([], {"hallucinated": 0, "duplicate": 0, "missing": 0})
            continue
        msgs = P.rerank_messages(histories[u], cands, template=template, system=system, examples=examples)
        scalar = all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in ids)
        schema = answer_schema("ranking", {"type": "array", "x-permutation": ids}) if scalar else None
        jobs.append(_Job(u, msgs, validate, schema))
    _ask(client, jobs, raw, opts)
    out: Results[list[K]] = Results(n)
    out.errors, out.report = raw.errors, raw.report
    totals: Counter[str] = Counter()
    repaired = 0
    for u, value in enumerate(raw):
        if value is not None and out.errors[u] is None:
            out[u], out.details[u] = value
            totals.update(value[1])
            repaired += any(value[1].values())
    out.report.update(repaired=repaired, hallucinated=totals["hallucinated"], duplicate=totals["duplicate"], missing=totals["missing"])
    return _finish(out)


# --------------------------------------------------------------------------------------------
# (2) User preference summaries


def summarize_users(
    client: Client,
    top_rated: Sequence[Sequence[str]],
    *,
    min_words: int = 5,
    max_words: int = 200,
    max_retries: int = 1,
    temperature: float = 0.0,
    retry_temperature_step: float = 0.2,
    max_tokens: int | None = None,
    response_format: Mapping[str, Any] | None = None,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[P.Example] | None = None,
    reask: bool = True,
    progress: bool = True,
) -> Results[str]:
    """A preference summary per user from their top-rated titles (``min_words`` to
    ``max_words`` words; a refusal is invalid). A user without titles fails without a request."""
    _no_str("top_rated", top_rated)
    opts = _Options(max_retries, temperature, retry_temperature_step, max_tokens, response_format, reask, progress)
    out: Results[str] = Results(len(top_rated))
    out.report = _new_report(len(top_rated))
    validate = text_answer("summary", min_words=min_words, max_words=max_words)
    jobs = []
    for u, titles in enumerate(top_rated):
        _no_str(f"top_rated[{u}]", titles)
        if not titles:
            out.errors[u] = "no titles to summarise"
            continue
        msgs = P.summary_messages(titles, template=template, system=system, examples=examples)
        jobs.append(_Job(u, msgs, validate, answer_schema("summary", _string())))
    _ask(client, jobs, out, opts)
    return _finish(out)


# --------------------------------------------------------------------------------------------
# (3) Similarity scores


def score_similarity(
    client: Client,
    summaries: Sequence[str | None],
    descriptions: Sequence[str | None],
    *,
    max_retries: int = 1,
    temperature: float = 0.0,
    retry_temperature_step: float = 0.2,
    max_tokens: int | None = None,
    response_format: Mapping[str, Any] | None = None,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[P.Example] | None = None,
    reask: bool = True,
    progress: bool = True,
) -> Results[float]:
    """A score in [0, 1] per (summary, description) pair: how well the item fits the
    preferences. A pair with a missing (None or empty) side fails without a request, so the
    failures of :func:`summarize_users` carry over; a score outside [0, 1] is invalid, never
    clipped."""
    n = _same_length(summaries=summaries, descriptions=descriptions)
    opts = _Options(max_retries, temperature, retry_temperature_step, max_tokens, response_format, reask, progress)
    out: Results[float] = Results(n)
    out.report = _new_report(n)
    jobs = []
    for k in range(n):
        s, d = summaries[k], descriptions[k]
        if not isinstance(s, str) or not s.strip():
            out.errors[k] = "no summary to compare"
            continue
        if not isinstance(d, str) or not d.strip():
            out.errors[k] = "no description to compare"
            continue
        msgs = P.similarity_messages(s, d, template=template, system=system, examples=examples)
        jobs.append(_Job(k, msgs, unit_float, answer_schema("score", {"type": "number", "minimum": 0, "maximum": 1})))
    _ask(client, jobs, out, opts)
    return _finish(out)


# --------------------------------------------------------------------------------------------
# (4) Fuzzy title matching: recforge.titles.match_titles (built on the helpers above)


# --------------------------------------------------------------------------------------------
# (5) Item descriptions


def describe_items(
    client: Client,
    titles: Sequence[str],
    *,
    years: Sequence[int | None] | None = None,
    genres: Sequence[str | Sequence[str] | None] | None = None,
    existing: Sequence[str | None] | None = None,
    min_words: int = 10,
    max_words: int = 200,
    max_retries: int = 1,
    temperature: float = 0.0,
    retry_temperature_step: float = 0.2,
    max_tokens: int | None = None,
    response_format: Mapping[str, Any] | None = None,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[P.Example] | None = None,
    reask: bool = True,
    progress: bool = True,
) -> Results[str]:
    """A description per item where the catalogue has none: items whose ``existing``
    description is a non-blank string keep it (``details`` ``"existing"``, report ``kept``),
    the others are generated (``"generated"``, report ``generated``) from the title, year and
    genres (a list, or a MovieLens ``"A|B"`` string). Refusals and answers outside
    ``min_words``..``max_words`` words are invalid."""
    _no_str("titles", titles)
    n = _same_length(titles=titles, years=years, genres=genres, existing=existing)
    opts = _Options(max_retries, temperature, retry_temperature_step, max_tokens, response_format, reask, progress)
    out: Results[str] = Results(n)
    out.report = _new_report(n)
    validate = text_answer("description", min_words=min_words, max_words=max_words)
    jobs = []
    for k in range(n):
        old = existing[k] if existing is not None else None
        if isinstance(old, str) and old.strip():
            out[k], out.details[k] = old, "existing"
            continue
        out.details[k] = "generated"
        msgs = P.description_messages(
            titles[k], years[k] if years is not None else None, genres[k] if genres is not None else None,
            template=template, system=system, examples=examples,
        )  # fmt: skip
        jobs.append(_Job(k, msgs, validate, answer_schema("description", _string())))
    _ask(client, jobs, out, opts)
    out.report["kept"] = n - len(jobs)
    out.report["generated"] = sum(1 for job in jobs if out.errors[job.index] is None)
    return _finish(out)


# --------------------------------------------------------------------------------------------
# (6) Thematic keywords


def generate_keywords(
    client: Client,
    titles: Sequence[str],
    overviews: Sequence[str | None],
    *,
    min_n: int = 5,
    max_n: int = 15,
    max_words: int | None = 5,
    max_retries: int = 1,
    temperature: float = 0.0,
    retry_temperature_step: float = 0.2,
    max_tokens: int | None = None,
    response_format: Mapping[str, Any] | None = None,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[P.Example] | None = None,
    reask: bool = True,
    progress: bool = True,
) -> Results[list[str]]:
    """``min_n`` to ``max_n`` thematic keywords per movie from its plot overview, one movie per
    prompt (see :func:`recforge.parsing.keyword_list`). A movie without an overview fails
    without a request."""
    _no_str("titles", titles)
    n = _same_length(titles=titles, overviews=overviews)
    opts = _Options(max_retries, temperature, retry_temperature_step, max_tokens, response_format, reask, progress)
    validate = keyword_list(min_n, max_n, max_words=max_words)
    out: Results[list[str]] = Results(n)
    out.report = _new_report(n)
    jobs = []
    for k in range(n):
        overview = overviews[k]
        if not isinstance(overview, str) or not overview.strip():
            out.errors[k] = "no plot overview"
            continue
        msgs = P.keywords_messages(
            titles[k], overview, min_n=min_n, max_n=max_n, template=template, system=system, examples=examples
        )
        words = {"type": "string", "minLength": 2, "maxLength": 40}
        schema = answer_schema("keywords", {"type": "array", "items": words, "minItems": min_n, "maxItems": max_n})
        jobs.append(_Job(k, msgs, validate, schema))
    _ask(client, jobs, out, opts)
    return _finish(out)


def __getattr__(name: str) -> Any:
    """``match_titles`` lives in :mod:`recforge.titles` (which builds on this module); it is
    still importable from here."""
    if name == "match_titles":
        from .titles import match_titles

        return match_titles
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

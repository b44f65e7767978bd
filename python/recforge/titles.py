"""Matching user-typed titles to a catalogue (one of the LLM steps of :mod:`recforge.rerank`):
simple matching first, the LLM only for what it cannot settle.

```python
from recforge.titles import match_titles
out = match_titles(client, ["the american president", "Jumanjii"], items.set_index("movieId").title)
out          # [11, 2]: catalogue ids (None where nothing matched or the step failed)
out.details  # ["normalised", "llm"]: how each was matched
out.report   # the counts of recforge.rerank, plus exact / normalised / llm / unmatched
```

:func:`match_titles` is also importable from :mod:`recforge.rerank`, where it used to live. The
matching without the LLM (exact titles, :func:`~recforge.parsing.normalise_title` keys,
alternative titles in parentheses, character-trigram shortlists) is in :class:`TitleIndex`.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from typing import Any, Mapping, Sequence, overload

from . import prompts as P
from .errors import ConfigError
from .llm import Client
from .parsing import choice_of, normalise_title, title_year
from .rerank import K, Results, _ask, _finish, _Job, _new_report, _no_str, _Options, answer_schema

__all__ = ["TitleIndex", "match_titles"]


def _grams(key: str) -> set[str]:
    s = f"  {key} "
    return {s[i : i + 3] for i in range(len(s) - 2)}


def _aliases(title: str) -> set[str]:
    """Other normalised names of a title: without its parenthesised parts, and each part
    (``"Seven (a.k.a. Se7en) (1995)"`` -> ``seven``, ``se7en``)."""
    base = re.sub(r"\(\s*\d{4}(?:\s*[-\u2013]\s*(?:\d{4})?)?\s*\)\s*$", "", title).strip()
    parts = re.findall(r"\(([^()]*)\)", base)
    names = {re.sub(r"\s*\([^()]*\)", " ", base)}
    names.update(re.sub(r"^\s*(?:a\.?k\.?a\.?|aka)\s+", "", p, flags=re.I) for p in parts)
    keys = {normalise_title(n) for n in names}
    return {k for k in keys if k and not k.isdigit()}


class TitleIndex:
    """Exact, normalised, alias and trigram look-ups over catalogue titles (a title string
    given more than once counts once: its first position).

    Attributes:
        titles: the titles, by position.
        first: title -> its first position.
        primary: normalised title -> positions.
        alias: normalised alternative title (a part in parentheses, or the title without them)
            -> positions.
    """

    def __init__(self, titles: Sequence[str]) -> None:
        self.titles = list(titles)
        self.first: dict[str, int] = {}
        for p, t in enumerate(self.titles):
            self.first.setdefault(t, p)
        self.primary: dict[str, list[int]] = {}
        self.alias: dict[str, list[int]] = {}
        self.grams: dict[str, list[int]] = {}
        self.sizes: dict[int, int] = {}
        for t, p in self.first.items():
            key = normalise_title(t)
            self.primary.setdefault(key, []).append(p)
            for a in _aliases(t) - {key}:
                self.alias.setdefault(a, []).append(p)
            g = _grams(key)
            self.sizes[p] = len(g)
            for x in g:
                self.grams.setdefault(x, []).append(p)

    def similar(self, key: str, k: int, min_score: float = 0.15) -> list[int]:
        """Up to ``k`` positions whose normalised titles share the most trigrams with ``key``."""
        q = _grams(key)
        shared: Counter[int] = Counter()
        for x in q:
            shared.update(self.grams.get(x, ()))
        scored = ((c / (len(q) + self.sizes[p] - c), -p) for p, c in shared.items())
        return [-negp for s, negp in heapq.nlargest(k, scored) if s >= min_score]


@overload
def match_titles(
    client: Client | None,
    queries: Sequence[str],
    catalogue: Mapping[K, str],
    *,
    shortlist: int = 10,
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
) -> Results[K]: ...
@overload
def match_titles(
    client: Client | None,
    queries: Sequence[str],
    catalogue: Sequence[str],
    *,
    shortlist: int = 10,
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
) -> Results[int]: ...
def match_titles(
    client: Client | None,
    queries: Sequence[str],
    catalogue: Mapping[Any, str] | Sequence[str],
    *,
    shortlist: int = 10,
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
) -> Results[Any]:
    """Match user-typed titles to catalogue titles; the LLM sees only what simple matching
    cannot settle.

    1. exact: the query (stripped) is a catalogue title;
    2. normalised: exactly one catalogue title has the query's :func:`~recforge.parsing.normalise_title`
       (or, failing that, as an alternative title in parentheses, e.g. ``a.k.a.``), and the
       year agrees where the query gives one in parentheses;
    3. the LLM: picks among the normalised matches (when several, or the year disagrees) and
       the ``shortlist`` most similar titles (character trigrams), or says none fits.

    Args:
        catalogue: id -> title (a pandas Series works too: its index gives the ids), or a list
            of titles (ids are positions). A title listed twice matches its first id.
        client: may be None when no query needs the LLM (those that do fail).

    Returns:
        Per query, the catalogue id, or None: ``errors`` says whether it failed or the LLM (or
        an empty shortlist) found no match. ``details``: ``"exact"``, ``"normalised"``,
        ``"llm"``, ``"unmatched"`` or ``"failed"``; the report counts each.
    """
    _no_str("queries", queries)
    if shortlist < 1:
        raise ConfigError(f"shortlist must be >= 1, got {shortlist}")
    if isinstance(catalogue, Mapping) or (hasattr(catalogue, "index") and hasattr(catalogue, "items") and not isinstance(catalogue, Sequence)):
        pairs = list(catalogue.items())
        ids: list[Any] = [k for k, _ in pairs]
        titles = [str(t) for _, t in pairs]
    else:
        _no_str("catalogue", catalogue)
        titles = [str(t) for t in catalogue]
        ids = list(range(len(titles)))
    opts = _Options(max_retries, temperature, retry_temperature_step, max_tokens, response_format, reask, progress)
    index = TitleIndex(titles)
    n = len(queries)
    picked: Results[int | None] = Results(n)  # the option chosen by the LLM
    picked.report = _new_report(n)
    out: Results[Any] = Results(n)
    how = out.details
    options: dict[int, list[int]] = {}
    jobs = []
    for q, query in enumerate(queries):
        text = query.strip()
        if text in index.first:
            out[q], how[q] = ids[index.first[text]], "exact"
            continue
        key, year = normalise_title(text), title_year(text)
        found = index.primary.get(key) or index.alias.get(key) or []
        agree = [p for p in found if year is None or title_year(titles[p]) == year]
        if len(agree) == 1:
            out[q], how[q] = ids[agree[0]], "normalised"
            continue
        near = agree or found
        opts_q = near + [p for p in index.similar(key, shortlist) if p not in near]
        opts_q = opts_q[: max(shortlist, len(near))]
        if not opts_q:
            how[q] = "unmatched"
            continue
        options[q] = opts_q
        option_titles = [titles[p] for p in opts_q]
        msgs = P.title_match_messages(text, option_titles, template=template, system=system, examples=examples)
        pick = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": len(option_titles)}, {"type": "null"}]}
        jobs.append(_Job(q, msgs, choice_of(option_titles), answer_schema("match", pick)))
    _ask(client, jobs, picked, opts)
    out.report, out.errors = picked.report, picked.errors
    for q, opts_q in options.items():
        if out.errors[q] is not None:
            how[q] = "failed"
        elif picked[q] is None:
            how[q] = "unmatched"
        else:
            out[q], how[q] = ids[opts_q[picked[q]]], "llm"  # type: ignore[index]
    counts = Counter(how)
    out.report.update({k: counts[k] for k in ("exact", "normalised", "llm", "unmatched")})
    return _finish(out)

"""Prompt templates of the reference systems, with few-shot examples.

Six tasks, each a system prompt, a user-message template and few-shot examples (module-level
constants), and a builder that returns the chat messages::

    system, (example user, example answer)..., user

Templates are :class:`string.Template` strings (``$name`` placeholders; JSON braces need no
escaping; ``$$`` is a literal dollar). Override per call (``template=``, ``system=``,
``examples=``; ``examples=[]`` for zero-shot) or for the whole process by reassigning the
constants (builders read them at call time)::

    import recforge.prompts as P
    P.RERANK_TEMPLATE = Path("my_rerank.txt").read_text()
    msgs = P.rerank_messages(["Heat (1995)"], [(6, "Casino (1995)"), (10, "GoldenEye (1995)")])

Every template asks for one JSON object, so the answers also work with
``response_format=JSON_OBJECT`` on servers that support it (llama.cpp's server, vLLM, OpenAI);
:mod:`recforge.parsing` reads plain-text answers too.

=================  ==========================================  ===============================
task               placeholders                                answer
=================  ==========================================  ===============================
re-ranking         ``$history $candidates $n``                 ``{"ranking": [id, ...]}``
user summary       ``$titles``                                 ``{"summary": "..."}``
similarity         ``$summary $description``                   ``{"score": 0.0-1.0}``
title matching     ``$query $options``                         ``{"match": n or null}``
item description   ``$title $details``                         ``{"description": "..."}``
keywords           ``$title $overview $min_n $max_n``          ``{"keywords": [...]}``
=================  ==========================================  ===============================
"""

from __future__ import annotations

from string import Template
from typing import Any, Callable, Hashable, Mapping, Sequence

from .errors import ConfigError

__all__ = [
    "DESCRIPTION_EXAMPLES",
    "DESCRIPTION_SYSTEM",
    "DESCRIPTION_TEMPLATE",
    "JSON_OBJECT",
    "KEYWORDS_EXAMPLES",
    "KEYWORDS_SYSTEM",
    "KEYWORDS_TEMPLATE",
    "REASK_TEMPLATE",
    "RERANK_EXAMPLES",
    "RERANK_SYSTEM",
    "RERANK_TEMPLATE",
    "SIMILARITY_EXAMPLES",
    "SIMILARITY_SYSTEM",
    "SIMILARITY_TEMPLATE",
    "SUMMARY_EXAMPLES",
    "SUMMARY_SYSTEM",
    "SUMMARY_TEMPLATE",
    "TITLE_MATCH_EXAMPLES",
    "TITLE_MATCH_SYSTEM",
    "TITLE_MATCH_TEMPLATE",
    "Example",
    "Message",
    "description_messages",
    "keywords_messages",
    "reask_messages",
    "render",
    "rerank_messages",
    "similarity_messages",
    "summary_messages",
    "title_match_messages",
]

Message = dict[str, str]
Example = tuple[Mapping[str, Any], str]
"""A few-shot example: the builder's arguments (by name) and the answer to show."""

JSON_OBJECT: dict[str, Any] = {"type": "json_object"}
"""``response_format`` for servers with a JSON mode (pass to the functions of recforge.rerank)."""

# --------------------------------------------------------------------------------------------
# (1) List re-ranking

RERANK_SYSTEM = (
    "You are a movie recommender. You re-rank candidate movies for one user from the movies the "
    "user watched. Answer with one JSON object and nothing else."
)

RERANK_TEMPLATE = """\
The user watched these movies, oldest first:
$history

Rank these $n candidate movies from most to least likely to be watched next. Each line is [id] title:
$candidates

Answer with {"ranking": [ids]}: every candidate id exactly once, no other ids, best first."""

RERANK_EXAMPLES: list[Example] = [
    (
        {
            "history_titles": [
                "Toy Story (1995)",
                "Aladdin (1992)",
                "Lion King, The (1994)",
                "Beauty and the Beast (1991)",
            ],
            "candidates": [
                (101, "Heat (1995)"),
                (102, "Toy Story 2 (1999)"),
                (103, "Seven (a.k.a. Se7en) (1995)"),
                (104, "Mulan (1998)"),
                (105, "Casino (1995)"),
            ],
        },
        '{"ranking": [102, 104, 101, 105, 103]}',
    ),
]

# --------------------------------------------------------------------------------------------
# (2) User preference summary

SUMMARY_SYSTEM = (
    "You describe a user's movie taste for a recommender system. Answer with one JSON object "
    "and nothing else."
)

SUMMARY_TEMPLATE = """\
These are the movies the user rated highest:
$titles

Summarise the user's preferences (genres, themes, moods, eras, styles) in 2 to 4 sentences, \
without listing the titles again. Answer with {"summary": "..."}."""

SUMMARY_EXAMPLES: list[Example] = [
    (
        {
            "top_rated_titles": [
                "Alien (1979)",
                "Blade Runner (1982)",
                "Terminator, The (1984)",
                "Matrix, The (1999)",
                "2001: A Space Odyssey (1968)",
            ],
        },
        '{"summary": "The user loves science fiction, especially dark, atmospheric films about '
        'artificial intelligence, technology and survival. They favour influential classics from '
        'the late 1960s to the 1990s with striking visual worlds and a sense of dread."}',
    ),
]

# --------------------------------------------------------------------------------------------
# (3) Similarity between a preference summary and an item

SIMILARITY_SYSTEM = (
    "You judge how well a movie fits a user's taste. Answer with one JSON object and nothing else."
)

SIMILARITY_TEMPLATE = """\
User preferences: $summary

Movie: $description

How well does the movie match these preferences? Answer with {"score": s} where s is a number \
from 0 (not at all) to 1 (perfectly)."""

SIMILARITY_EXAMPLES: list[Example] = [
    (
        {
            "summary": "The user enjoys light-hearted animated family films with music and humour.",
            "description": "Aladdin (1992): a Disney animated musical comedy about a street urchin, "
            "a princess and a wish-granting genie.",
        },
        '{"score": 0.9}',
    ),
    (
        {
            "summary": "The user enjoys light-hearted animated family films with music and humour.",
            "description": "Seven (a.k.a. Se7en) (1995): two detectives hunt a serial killer whose "
            "murders are modelled on the seven deadly sins.",
        },
        '{"score": 0.05}',
    ),
]

# --------------------------------------------------------------------------------------------
# (4) Fuzzy title matching

TITLE_MATCH_SYSTEM = (
    "You match movie titles typed by users to a movie catalogue. Answer with one JSON object and "
    "nothing else."
)

TITLE_MATCH_TEMPLATE = """\
A user typed: "$query"

Which of these catalogue movies did the user mean?
$options

Answer with {"match": n} where n is the number of the option, or {"match": null} if none of \
them is that movie. Allow for typos, translations, missing articles and missing years."""

TITLE_MATCH_EXAMPLES: list[Example] = [
    (
        {
            "query": "the godfather 2",
            "options": ["Godfather, The (1972)", "Godfather: Part II, The (1974)", "Godfather: Part III, The (1990)"],
        },
        '{"match": 2}',
    ),
    (
        {
            "query": "Jurasic park 4",
            "options": ["Jurassic Park (1993)", "Lost World: Jurassic Park, The (1997)", "Jurassic Park III (2001)"],
        },
        '{"match": null}',
    ),
]

# --------------------------------------------------------------------------------------------
# (5) Item description

DESCRIPTION_SYSTEM = (
    "You write short, factual movie descriptions for a recommender system. Answer with one JSON "
    "object and nothing else."
)

DESCRIPTION_TEMPLATE = """\
Movie: $title
$details

Describe the movie in 2 to 4 sentences: premise, genre, tone and what kind of viewer would \
enjoy it. Do not invent cast or plot details you are unsure of. Answer with {"description": "..."}."""

DESCRIPTION_EXAMPLES: list[Example] = [
    (
        {"title": "Jumanji (1995)", "year": 1995, "genres": "Adventure|Children|Fantasy"},
        '{"description": "Two children discover a magical board game that unleashes jungle '
        "animals and hazards into their town, and they must finish it with the man trapped "
        "inside the game for decades. A fast-paced fantasy adventure with comedy and peril, it "
        'suits families and fans of imaginative, effects-driven adventures."}',
    ),
]

# --------------------------------------------------------------------------------------------
# (6) Thematic keywords from a plot overview

KEYWORDS_SYSTEM = (
    "You tag movies with thematic keywords for a recommender system. Answer with one JSON object "
    "and nothing else."
)

KEYWORDS_TEMPLATE = """\
Movie: $title
Plot overview: $overview

Give $min_n to $max_n thematic keywords for this movie (themes, motifs, settings, moods; one to \
three words each; no actor names, no genres alone). Answer with {"keywords": [...]}."""

KEYWORDS_EXAMPLES: list[Example] = [
    (
        {
            "title": "Heat (1995)",
            "overview": "Obsessive master thief Neil McCauley leads a top-notch crew on various "
            "daring heists throughout Los Angeles while determined detective Vincent Hanna "
            "pursues him without rest.",
            "min_n": 5,
            "max_n": 15,
        },
        '{"keywords": ["bank heist", "cat and mouse", "obsession", "los angeles", '
        '"professional criminals", "police detective", "loyalty", "tragic fate"]}',
    ),
]

# --------------------------------------------------------------------------------------------
# Re-asking after an invalid answer

REASK_TEMPLATE = """\
Your answer could not be used: $error
Answer the request above again, with only the JSON object asked for."""


# --------------------------------------------------------------------------------------------
# Builders


def render(template: str, **values: Any) -> str:
    """``template`` with its ``$name`` placeholders filled.

    Raises:
        ConfigError: a placeholder with no value, or a bad ``$`` (write ``$$`` for a dollar).
    """
    try:
        return Template(template).substitute({k: str(v) for k, v in values.items()})
    except KeyError as e:
        raise ConfigError(
            f"template placeholder ${e.args[0]} has no value (available: {', '.join('$' + k for k in values)})"
        ) from None
    except ValueError as e:
        raise ConfigError(f"bad template: {e} (write $$ for a literal $)") from None


def _messages(
    system: str,
    template: str,
    examples: Sequence[Example],
    variables: Callable[..., dict[str, str]],
    real: Mapping[str, str],
) -> list[Message]:
    msgs: list[Message] = [{"role": "system", "content": system}]
    for k, (args, answer) in enumerate(examples):
        try:
            shown = variables(**args)
        except TypeError as e:
            raise ConfigError(f"few-shot example {k}: {e}") from None
        msgs.append({"role": "user", "content": render(template, **shown)})
        msgs.append({"role": "assistant", "content": answer})
    msgs.append({"role": "user", "content": render(template, **real)})
    return msgs


def _pick(value: str | None, default: str) -> str:
    return default if value is None else value


def _lines(titles: Sequence[str], bullet: str = "- ") -> str:
    if isinstance(titles, str):
        raise ConfigError("expected a list of titles, got one string")
    return "\n".join(f"{bullet}{t}" for t in titles) if titles else "(none)"


def _rerank_vars(history_titles: Sequence[str], candidates: Sequence[tuple[Hashable, str]]) -> dict[str, str]:
    return {
        "history": _lines(history_titles),
        "candidates": "\n".join(f"[{i}] {t}" for i, t in candidates),
        "n": str(len(candidates)),
    }


def rerank_messages(
    history_titles: Sequence[str],
    candidates: Sequence[tuple[Hashable, str]],
    *,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[Example] | None = None,
) -> list[Message]:
    """Messages asking to rank ``candidates`` (``(id, title)`` pairs, shown as ``[id] title``)
    for a user who watched ``history_titles`` (oldest first); answer ``{"ranking": [ids]}``."""
    return _messages(
        _pick(system, RERANK_SYSTEM), _pick(template, RERANK_TEMPLATE),
        RERANK_EXAMPLES if examples is None else examples, _rerank_vars,
        _rerank_vars(history_titles, candidates),
    )  # fmt: skip


def _summary_vars(top_rated_titles: Sequence[str]) -> dict[str, str]:
    return {"titles": _lines(top_rated_titles)}


def summary_messages(
    top_rated_titles: Sequence[str],
    *,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[Example] | None = None,
) -> list[Message]:
    """Messages asking for a summary of a user's preferences from their top-rated titles;
    answer ``{"summary": "..."}``."""
    return _messages(
        _pick(system, SUMMARY_SYSTEM), _pick(template, SUMMARY_TEMPLATE),
        SUMMARY_EXAMPLES if examples is None else examples, _summary_vars,
        _summary_vars(top_rated_titles),
    )  # fmt: skip


def _similarity_vars(summary: str, description: str) -> dict[str, str]:
    return {"summary": summary.strip(), "description": description.strip()}


def similarity_messages(
    summary: str,
    description: str,
    *,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[Example] | None = None,
) -> list[Message]:
    """Messages asking how well an item (its description, title included) fits a preference
    summary; answer ``{"score": s}`` with s in [0, 1]."""
    return _messages(
        _pick(system, SIMILARITY_SYSTEM), _pick(template, SIMILARITY_TEMPLATE),
        SIMILARITY_EXAMPLES if examples is None else examples, _similarity_vars,
        _similarity_vars(summary, description),
    )  # fmt: skip


def _title_match_vars(query: str, options: Sequence[str]) -> dict[str, str]:
    return {"query": query.strip(), "options": "\n".join(f"{k}. {t}" for k, t in enumerate(options, 1))}


def title_match_messages(
    query: str,
    options: Sequence[str],
    *,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[Example] | None = None,
) -> list[Message]:
    """Messages asking which of ``options`` (numbered from 1) a user-typed title means; answer
    ``{"match": n}`` or ``{"match": null}``."""
    return _messages(
        _pick(system, TITLE_MATCH_SYSTEM), _pick(template, TITLE_MATCH_TEMPLATE),
        TITLE_MATCH_EXAMPLES if examples is None else examples, _title_match_vars,
        _title_match_vars(query, options),
    )  # fmt: skip


def _description_vars(
    title: str, year: int | None = None, genres: str | Sequence[str] | None = None
) -> dict[str, str]:
    details = []
    if year is not None:
        details.append(f"Year: {year}")
    if genres:
        names = genres.split("|") if isinstance(genres, str) else list(genres)
        names = [g.strip() for g in names if g.strip() and g.strip() != "(no genres listed)"]
        if names:
            details.append(f"Genres: {', '.join(names)}")
    return {"title": title.strip(), "details": "\n".join(details)}


def description_messages(
    title: str,
    year: int | None = None,
    genres: str | Sequence[str] | None = None,
    *,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[Example] | None = None,
) -> list[Message]:
    """Messages asking for a short description of an item the catalogue has none for
    (``genres`` as a list or MovieLens ``"A|B"`` string); answer ``{"description": "..."}``."""
    return _messages(
        _pick(system, DESCRIPTION_SYSTEM), _pick(template, DESCRIPTION_TEMPLATE),
        DESCRIPTION_EXAMPLES if examples is None else examples, _description_vars,
        _description_vars(title, year, genres),
    )  # fmt: skip


def _keywords_vars(title: str, overview: str, min_n: int = 5, max_n: int = 15) -> dict[str, str]:
    return {"title": title.strip(), "overview": " ".join(overview.split()), "min_n": str(min_n), "max_n": str(max_n)}


def keywords_messages(
    title: str,
    overview: str,
    *,
    min_n: int = 5,
    max_n: int = 15,
    template: str | None = None,
    system: str | None = None,
    examples: Sequence[Example] | None = None,
) -> list[Message]:
    """Messages asking for ``min_n``..``max_n`` thematic keywords of one movie from its plot
    overview; answer ``{"keywords": [...]}``."""
    return _messages(
        _pick(system, KEYWORDS_SYSTEM), _pick(template, KEYWORDS_TEMPLATE),
        KEYWORDS_EXAMPLES if examples is None else examples, _keywords_vars,
        _keywords_vars(title, overview, min_n, max_n),
    )  # fmt: skip


def reask_messages(
    messages: Sequence[Message], answer: str, error: str, *, template: str | None = None
) -> list[Message]:
    """``messages`` followed by the model's invalid ``answer`` and a request to answer again
    that says what was wrong (``$error``)."""
    return [
        *messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": render(_pick(template, REASK_TEMPLATE), error=error)},
    ]

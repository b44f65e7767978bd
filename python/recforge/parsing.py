"""Robust parsing and validation of LLM answers.

Models wrap JSON in code fences, put prose around it, answer with a numbered list instead of the
JSON asked for, or invent ids. The functions here take the text of an answer and either return a
value of the promised shape or raise :class:`recforge.errors.DataError` saying why the answer
cannot be used; nothing is guessed silently (a repaired ranking says what was repaired).

A *validator* is a callable ``(text) -> value`` that raises ``DataError``; :mod:`recforge.rerank`
re-asks the model when one fails::

    from recforge.parsing import extract_json, parse_list, permutation_of, unit_float, keyword_list
    extract_json('Sure! ```json\\n{"score": 0.7}\\n```')        # {'score': 0.7}
    parse_list("1. Heat (1995)\\n2) Casino (1995)")              # ['Heat (1995)', 'Casino (1995)']
    order, repairs = permutation_of([10, 11, 12])("[12, 99, 10]")
    # order == [12, 10, 11]; repairs == {'hallucinated': 1, 'duplicate': 0, 'missing': 1}
    unit_float("Score: 0.7")                                    # 0.7
    keyword_list(5, 15)('{"keywords": ["heist", "betrayal", ...]}')
"""

from __future__ import annotations

import ast
import json
import math
import re
import unicodedata
from typing import Any, Callable, Hashable, Mapping, Sequence, TypeVar

from .errors import ConfigError, DataError

__all__ = [
    "Validator",
    "choice_of",
    "extract_json",
    "keyword_list",
    "normalise_title",
    "parse_list",
    "permutation_of",
    "strip_fences",
    "text_answer",
    "title_year",
    "unit_float",
]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

Validator = Callable[[str], T]
"""Takes the text of an answer, returns the parsed value or raises ``DataError``."""

_PREVIEW = 160


def _preview(text: str) -> str:
    """The start of ``text`` on one line, for error messages."""
    one = " ".join(text.split())
    return repr(one if len(one) <= _PREVIEW else one[:_PREVIEW] + "...")


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise DataError(f"expected the text of an answer, got {type(text).__name__}")
    if not text.strip():
        raise DataError("the answer is empty")
    return text


# --------------------------------------------------------------------------------------------
# JSON

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n`]*\n?(.*?)(?:```|\Z)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})


def strip_fences(text: str) -> str:
    """The content of the first Markdown code fence in ``text`` (a ``json`` fence preferred; an
    unterminated fence runs to the end), or ``text`` itself when there is none."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    if not blocks:
        return text
    for lang, body in blocks:
        if lang == "json":
            return body.strip()
    return blocks[0][1].strip()


def _balanced_end(s: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (double-quoted strings skipped); -1 on
    a mismatched closing bracket, -2 when the text ends first."""
    stack: list[str] = []
    in_str = False
    i = start
    while i < len(s):
        c = s[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
        elif c in "}]":
            if c != stack[-1]:
                return -1
            stack.pop()
            if not stack:
                return i
        i += 1
    return -2


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of JSON types only (what ``ast.literal_eval`` may also give)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _loads_lenient(span: str) -> Any:
    """``json.loads``, then with trailing commas and curly quotes fixed, then as a Python literal
    (single quotes, True/None). Raises ValueError when none of them reads it."""
    try:
        return json.loads(span)
    except ValueError:
        pass
    fixed = _TRAILING_COMMA.sub(r"\1", span.translate(_SMART_QUOTES))
    try:
        return json.loads(fixed)
    except ValueError:
        pass
    if len(span) <= 100_000:
        try:
            value = ast.literal_eval(fixed)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
        else:
            if isinstance(value, tuple):
                value = list(value)
            if isinstance(value, (dict, list)) and _plain(value):
                return value
    raise ValueError("not JSON")


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer.

    Reads, in order: the whole answer; the content of a Markdown code fence; the first balanced
    ``{...}`` or ``[...]`` inside prose. Trailing commas, curly quotes and Python-style literals
    (single quotes, ``True``/``None``) are tolerated.

    Raises:
        DataError: no JSON value in the answer, or the JSON is cut off.
    """
    text = _check_text(text)
    candidates = [text]
    fenced = strip_fences(text)
    if fenced is not text:
        candidates.insert(0, fenced)
    cut_off = False
    for cand in candidates:
        s = cand.strip()
        try:
            return json.loads(s)
        except ValueError:
            pass
        for m in re.finditer(r"[{\[]", s):
            end = _balanced_end(s, m.start())
            if end == -2:
                # Everything after an unclosed bracket is inside it: its parts are fragments.
                cut_off = True
                break
            if end == -1:
                continue
            try:
                return _loads_lenient(s[m.start() : end + 1])
            except ValueError:
                continue
    if cut_off:
        raise DataError(f"the JSON in the answer is not closed (output cut off?): {_preview(text)}")
    raise DataError(f"no JSON object or array in the answer: {_preview(text)}")


# --------------------------------------------------------------------------------------------
# Lists

_ITEM_LINE = re.compile(r"^\s*(?:\d{1,4}\s*[.)]|\(\d{1,4}\)|#\d{1,4}[.)]?|[-*\u2022+])\s+(.*\S)\s*$")
_TAGGED_LINE = re.compile(r"^\s*\[[^\]\s]+\]\s+\S")
_LABEL = re.compile(r"^\s*[A-Za-z][\w ]{0,30}:\s+(.*\S)\s*$")
_LIST_KEYS = ("ranking", "ranked", "ids", "items", "order", "keywords", "list", "result", "results", "answer")
_ELEMENT_KEYS = ("id", "item_id", "item", "keyword", "title", "name")


def _clean_item(s: str) -> str:
    s = s.strip()
    s = re.sub(r"^\*\*(.*)\*\*$", r"\1", s).strip()  # Markdown bold
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'`":
        s = s[1:-1].strip()
    return s


def _element(value: Any, k: int) -> str:
    if isinstance(value, bool) or value is None:
        raise DataError(f"list element {k} is {json.dumps(value)}, not an id or a string")
    if isinstance(value, str):
        return _clean_item(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dict):
        for key in _ELEMENT_KEYS:
            for name, v in value.items():
                if name.lower() == key and not isinstance(v, (dict, list)):
                    return _element(v, k)
    raise DataError(f"list element {k} is {json.dumps(value)[:80]}, not an id or a string")


def _json_list(value: Any) -> list[Any] | None:
    """The list in a JSON answer: the array itself, or the one list in an object (else the list
    under a usual key such as ``ranking`` or ``keywords``)."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = {k: v for k, v in value.items() if isinstance(v, list)}
        if len(lists) == 1:
            return next(iter(lists.values()))
        for key in _LIST_KEYS:
            for name, v in lists.items():
                if name.lower() == key:
                    return v
    return None


def parse_list(text: str) -> list[str]:
    """The items of a list answer, as stripped strings.

    Accepts a JSON array (also fenced or inside prose), a JSON object holding one list (e.g.
    ``{"ranking": [...]}``), numbered or bulleted lines (``1. x``, ``2) y``, ``(3) z``, ``- z``,
    ``* z``; other lines are ignored), lines that start with a bracketed id (``[12] Heat``), or
    comma/semicolon-separated values on one line
    (``Keywords: a, b, c``); otherwise one item per line, headers ending in ``:`` dropped.

    Raises:
        DataError: the answer holds no list.
    """
    text = _check_text(text)
    body = strip_fences(text).strip()
    items: list[Any] | None = None
    try:
        items = _json_list(_loads_lenient(body))  # the whole (fenced) answer is JSON
    except ValueError:
        pass
    if items is None:
        lines = [ln for ln in body.splitlines() if ln.strip()]
        bullets = [m.group(1) for m in map(_ITEM_LINE.match, lines) if m]
        tagged = [ln.strip() for ln in lines if _TAGGED_LINE.match(ln)]
        if bullets:
            items = bullets
        elif len(tagged) >= 2:
            items = tagged
        else:
            try:
                items = _json_list(extract_json(text))
            except DataError:
                items = None
            if items is None:
                rows = [ln for ln in lines if not ln.rstrip().endswith(":")]
                if len(rows) == 1:
                    row = rows[0]
                    label = _LABEL.match(row)
                    if label and re.search(r"[,;]", label.group(1)):
                        row = label.group(1)
                    items = re.split(r"\s*[,;]\s*", row) if re.search(r"[,;]", row) else [row]
                else:
                    items = rows
    out = [_element(v, k) for k, v in enumerate(items)]
    out = [s for s in out if s]
    if not out:
        raise DataError(f"no list items in the answer: {_preview(text)}")
    return out


# --------------------------------------------------------------------------------------------
# Validators


def _id_key(value: object) -> str:
    return str(value).strip().casefold()


def permutation_of(
    ids: Sequence[K],
    *,
    titles: Mapping[K, str] | Sequence[str] | None = None,
    min_valid: float = 0.5,
) -> Callable[[str], tuple[list[K], dict[str, int]]]:
    """A validator for a ranking of ``ids``, returning ``(order, repairs)``.

    Each list item (see :func:`parse_list`) names an id as itself, as ``[id] ...``, as
    ``id: ...`` / ``id - ...``, or (when ``titles`` are given: a mapping id -> title, or titles
    in the order of ``ids``) by its title up to :func:`normalise_title`. Unknown ids are dropped
    and counted as ``hallucinated``, repeats are dropped and counted as ``duplicate``, and the
    ids never named are appended in their original order and counted as ``missing``.

    Raises (from the validator):
        DataError: no list, or fewer than ``min_valid`` of the ids named (at least one): that is
            not a ranking to repair but an unusable answer.
    """
    ids = list(ids)
    by_key: dict[str, K] = {}
    for i in ids:
        key = _id_key(i)
        if key in by_key:
            raise ConfigError(f"permutation_of: id {i!r} is given twice")
        by_key[key] = i
    if not 0.0 <= min_valid <= 1.0:
        raise ConfigError(f"min_valid must be in [0, 1], got {min_valid}")
    by_title: dict[str, K | None] = {}
    if titles is not None:
        pairs = list(titles.items()) if isinstance(titles, Mapping) else list(zip(ids, titles))
        if not isinstance(titles, Mapping) and len(titles) != len(ids):
            raise ConfigError(f"permutation_of: {len(titles)} titles for {len(ids)} ids")
        for i, t in pairs:
            for key in {t.strip().casefold(), normalise_title(t)}:
                by_title[key] = None if by_title.get(key, i) != i else i  # ambiguous: None
    needed = max(1, math.ceil(min_valid * len(ids))) if ids else 0

    def match(item: str) -> K | None:
        s = item.strip()
        hit = by_key.get(_id_key(s))
        if hit is not None:
            return hit
        m = re.search(r"\[\s*([^\]\s]+)\s*\]", s)
        if m and _id_key(m.group(1)) in by_key:
            return by_key[_id_key(m.group(1))]
        m = re.match(r"^(?:id\s*[:#=]?\s*)?[\[(]?([^\s:,;\])]+?)[\])]?(?:\s*[:.)\-\u2013]\s+|\s+|$)", s, re.I)
        if m and _id_key(m.group(1)) in by_key:
            return by_key[_id_key(m.group(1))]
        if by_title:
            for key in (s.casefold(), normalise_title(s)):
                if key in by_title:
                    return by_title[key]
        return None

    def validate(text: str) -> tuple[list[K], dict[str, int]]:
        items = parse_list(text)
        seen: set[K] = set()
        order: list[K] = []
        hallucinated = duplicate = 0
        for item in items:
            hit = match(item)
            if hit is None:
                hallucinated += 1
            elif hit in seen:
                duplicate += 1
            else:
                seen.add(hit)
                order.append(hit)
        if len(order) < needed:
            raise DataError(
                f"the answer names {len(order)} of the {len(ids)} candidate ids (at least {needed} "
                f"needed; {hallucinated} unknown, {duplicate} repeated): {_preview(text)}"
            )
        missing = [i for i in ids if i not in seen]
        return order + missing, {"hallucinated": hallucinated, "duplicate": duplicate, "missing": len(missing)}

    return validate


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SCORE_KEYS = ("score", "similarity", "probability", "relevance", "value", "rating", "likelihood")


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(rf"\s*({_NUMBER})\s*(%?)\s*", value)
        if m:
            return float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    return None


def _json_number(value: Any) -> float | None:
    n = _as_number(value)
    if n is not None:
        return n
    if isinstance(value, list) and len(value) == 1:
        return _as_number(value[0])
    if isinstance(value, dict):
        for key in _SCORE_KEYS:
            for name, v in value.items():
                if name.lower() == key and _as_number(v) is not None:
                    return _as_number(v)
        numbers = [n for n in map(_as_number, value.values()) if n is not None]
        if len(numbers) == 1:
            return numbers[0]
    return None


def unit_float(text: str) -> float:
    """A number in [0, 1] from an answer: plain (``0.7``, ``70%``), JSON (``0.7``,
    ``{"score": 0.7}``, also fenced or in prose), labelled (``Score: 0.7``), or the only number
    in a sentence.

    Raises:
        DataError: no number, several unlabelled numbers, or a number outside [0, 1] (never
            clipped), NaN or infinite.
    """
    text = _check_text(text)
    value: float | None = None
    try:
        value = _json_number(extract_json(text))
    except DataError:
        pass
    if value is None:
        labelled = re.search(rf"\b(?:{'|'.join(_SCORE_KEYS)})\b\s*(?:is|=|:)?\s*({_NUMBER})\s*(%?)", text, re.I)
        if labelled:
            value = float(labelled.group(1)) / (100.0 if labelled.group(2) else 1.0)
        else:
            found = re.findall(rf"(?<![\w.])({_NUMBER})(?!\w|\.\d)\s*(%?)", strip_fences(text))
            if len(found) == 1:
                value = float(found[0][0]) / (100.0 if found[0][1] else 1.0)
            elif len(found) > 1:
                raise DataError(f"several numbers and no labelled score in the answer: {_preview(text)}")
    if value is None:
        raise DataError(f"no score in the answer: {_preview(text)}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise DataError(f"score {value} is outside [0, 1]: {_preview(text)}")
    return value


def keyword_list(
    min_n: int = 5, max_n: int = 15, *, max_words: int | None = 5
) -> Callable[[str], list[str]]:
    """A validator for a list of ``min_n``..``max_n`` keywords (see :func:`parse_list`; a
    ``{"keywords": [...]}`` object too). Keywords are stripped of quotes, ``#`` and final
    periods, and repeats (ignoring case) are dropped before counting.

    Raises (from the validator):
        DataError: no list, too few or too many keywords, or a keyword of more than
            ``max_words`` words (a sentence is not a keyword).
    """
    if not 1 <= min_n <= max_n:
        raise ConfigError(f"keyword_list needs 1 <= min_n <= max_n, got {min_n}, {max_n}")

    def validate(text: str) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        for item in parse_list(text):
            kw = _clean_item(item.strip().lstrip("#").rstrip(".").strip())
            if kw and kw.casefold() not in seen:
                seen.add(kw.casefold())
                out.append(kw)
        if max_words is not None:
            long = [kw for kw in out if len(kw.split()) > max_words]
            if long:
                raise DataError(f"{len(long)} keywords are longer than {max_words} words, e.g. {long[0][:80]!r}")
        if not min_n <= len(out) <= max_n:
            raise DataError(f"{len(out)} distinct keywords, {min_n} to {max_n} asked for: {_preview(text)}")
        return out

    return validate


_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry[,!.]|as an ai\b|i (?:can ?not|can't|cannot|am unable|'m unable|"
    r"do not have|don't have|do not know|don't know)\b)",
    re.I,
)


def text_answer(key: str, *, min_words: int = 3, max_words: int = 400) -> Callable[[str], str]:
    """A validator for a free-text answer: the string under ``key`` in a JSON object (or the
    object's only string), a JSON string, or else the answer's text with fences and a leading
    ``key:`` label removed.

    Raises (from the validator):
        DataError: a JSON object without that string, fewer than ``min_words`` or more than
            ``max_words`` words, or a refusal ("I'm sorry", "As an AI", "I don't know ...").
    """

    def validate(text: str) -> str:
        text = _check_text(text)
        try:
            value: Any = extract_json(text)
        except DataError:
            value = None
        out: str | None = None
        if isinstance(value, dict):
            strings = {k: v for k, v in value.items() if isinstance(v, str)}
            for name, v in strings.items():
                if name.lower() == key.lower():
                    out = v
            if out is None and len(strings) == 1:
                out = next(iter(strings.values()))
            if out is None:
                raise DataError(f"the JSON answer has no string {key!r}: {_preview(text)}")
        elif isinstance(value, str):
            out = value
        else:
            out = re.sub(rf"^\s*\**{re.escape(key)}\**\s*:\s*", "", strip_fences(text).strip(), flags=re.I)
        out = out.strip()
        if _REFUSAL.match(out):
            raise DataError(f"the model declined: {_preview(out)}")
        n = len(out.split())
        if not min_words <= n <= max_words:
            raise DataError(f"{n} words, {min_words} to {max_words} asked for: {_preview(out)}")
        return out

    return validate


_CHOICE_KEYS = ("match", "choice", "option", "answer", "index", "number")
_NONE_WORDS = {"none", "null", "no match", "no", "n/a", "none of them", "nothing", "no option"}


def choice_of(options: Sequence[str]) -> Callable[[str], int | None]:
    """A validator for the choice of one of ``options`` (numbered from 1 in the prompt): returns
    the 0-based index, or None where the model says none fits (``null``, ``"none"``).

    Accepts ``{"match": 2}``, ``2``, ``"Option 2"``, or an option's title (exact or up to
    :func:`normalise_title`).

    Raises (from the validator):
        DataError: a number outside 1..len(options), or text that is neither a number, a title
            of the options nor "none".
    """
    titles = list(options)
    norm = [normalise_title(t) for t in titles]

    def pick(value: Any, text: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise DataError(f"expected an option number, got {json.dumps(value)}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            if not 1 <= value <= len(titles):
                raise DataError(f"option {value} does not exist (options are 1 to {len(titles)})")
            return value - 1
        if isinstance(value, str):
            s = _clean_item(value)
            if s.casefold().rstrip(".") in _NONE_WORDS:
                return None
            m = re.fullmatch(r"(?:option|number|no\.?|#)?\s*(\d+)[.)]?(?:\s+.*)?", s, re.I | re.S)
            if m:
                return pick(int(m.group(1)), text)
            if s in titles:
                return titles.index(s)
            if normalise_title(s) in norm:
                return norm.index(normalise_title(s))
        raise DataError(f"the answer names no option (1 to {len(titles)}) and not 'none': {_preview(text)}")

    def validate(text: str) -> int | None:
        text = _check_text(text)
        try:
            value: Any = extract_json(text)
        except DataError:
            return pick(strip_fences(text).strip(), text)
        if isinstance(value, dict):
            for key in _CHOICE_KEYS:
                for name, v in value.items():
                    if name.lower() == key:
                        return pick(v, text)
            if len(value) == 1:
                return pick(next(iter(value.values())), text)
            raise DataError(f"the JSON answer has no 'match': {_preview(text)}")
        if isinstance(value, list):
            if len(value) == 1:
                return pick(value[0], text)
            raise DataError(f"expected one option, got a list: {_preview(text)}")
        return pick(value, text)

    return validate


# --------------------------------------------------------------------------------------------
# Titles

_YEAR = re.compile(r"\(\s*(\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\s*\)\s*$")
_ENGLISH_ARTICLES = ("the", "a", "an")
_ARTICLES = ("the", "a", "an", "les", "la", "le", "l'", "il", "el", "los", "las", "das", "der", "die", "den", "det", "lo", "i", "gli")
_TRAILING_ARTICLE = re.compile(r"^(.*?),\s*(" + "|".join(re.escape(a) for a in _ARTICLES) + r")(?=\s*(?:\(|$))(.*)$", re.S)


def title_year(title: str) -> int | None:
    """The year in parentheses at the end of a title (``"Heat (1995)"`` -> 1995), else None."""
    m = _YEAR.search(title)
    return int(m.group(1)) if m else None


def normalise_title(title: str) -> str:
    """A title reduced for matching: accents removed, casefolded, the year in parentheses at the
    end dropped, a MovieLens-style trailing article moved back (``"Usual Suspects, The"`` ->
    ``"usual suspects"``, ``"Misérables, Les"`` -> ``"les miserables"``), a leading English
    article dropped, ``&`` read as ``and``, punctuation turned into spaces."""
    s = unicodedata.normalize("NFKD", title)
    s = "".join(c for c in s if not unicodedata.combining(c)).casefold().strip()
    s = _YEAR.sub("", s).strip()
    m = _TRAILING_ARTICLE.match(s)
    if m:
        main, article, rest = m.group(1), m.group(2), m.group(3)
        s = (main if article in _ENGLISH_ARTICLES else f"{article} {main}") + rest
    s = s.replace("&", " and ")
    s = re.sub(r"[^\w]+", " ", s).replace("_", " ")
    s = " ".join(s.split())
    for a in _ENGLISH_ARTICLES:
        if s.startswith(a + " ") and len(s) > len(a) + 1:
            s = s[len(a) + 1 :]
            break
    return s

"""recforge.parsing: every parser and validator on hand-written answers (fenced JSON, prose
around JSON, numbered lists, hallucinated / missing / repeated ids, out-of-range scores, too few
keywords) and the title normalisation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from recforge.errors import ConfigError, DataError
from recforge.parsing import (
    choice_of,
    extract_json,
    keyword_list,
    normalise_title,
    parse_list,
    permutation_of,
    strip_fences,
    text_answer,
    title_year,
    unit_float,
)

# --------------------------------------------------------------------------------------------
# extract_json / strip_fences / parse_list


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"score": 0.7}', {"score": 0.7}),
        ('```json\n{"ranking": [3, 1, 2]}\n```', {"ranking": [3, 1, 2]}),
        ("```\n[1, 2]\n```", [1, 2]),
        ('Sure! Here is the ranking:\n```json\n{"ranking": [2, 1]}\n```\nLet me know!', {"ranking": [2, 1]}),
        ('Here you go: {"summary": "Likes {dark} films, [noir] too"} Hope this helps.', {"summary": "Likes {dark} films, [noir] too"}),
        ('The ranking is [5, 4, 3] as asked.', [5, 4, 3]),
        ('{"keywords": ["heist", "obsession",],}', {"keywords": ["heist", "obsession"]}),
        ("{'match': None, 'sure': True}", {"match": None, "sure": True}),
        ("\u201cnot\u201d {\u201cscore\u201d: 0.5}", {"score": 0.5}),
        ("Thinking (step 1) ... done.\n```json\n[\"a\"]", ["a"]),  # unterminated fence
        ("0.25", 0.25),
    ],
)
def test_extract_json_reads_json_wherever_it_is(text: str, value: Any) -> None:
    assert extract_json(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("I would rank Heat first.", "no JSON"),
        ('{"ranking": [3, 1, 2', "not closed"),
        ("   ", "empty"),
        ("[see below] {not json}", "no JSON"),
    ],
)
def test_extract_json_says_why_it_found_nothing(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        extract_json(text)


def test_strip_fences_prefers_the_json_block() -> None:
    assert strip_fences("no fence") == "no fence"
    assert strip_fences("```python\nx = 1\n```\n```json\n[1]\n```") == "[1]"
    assert strip_fences("```text\nhello\n```") == "hello"


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ('["Heat (1995)", "Casino (1995)"]', ["Heat (1995)", "Casino (1995)"]),
        ('{"ranking": [12, 7.0, "x"]}', ["12", "7", "x"]),
        ('[{"id": 3, "title": "Heat"}, {"id": 4}]', ["3", "4"]),
        ("Here is my list:\n1. Heat (1995)\n2) Casino (1995)\n(3) Sabrina (1995)\nHope it helps", ["Heat (1995)", "Casino (1995)", "Sabrina (1995)"]),
        ("- heist\n* **obsession**\n\u2022 'Los Angeles'", ["heist", "obsession", "Los Angeles"]),
        ("Keywords: heist, obsession; los angeles", ["heist", "obsession", "los angeles"]),
        ("heist, obsession, los angeles", ["heist", "obsession", "los angeles"]),
        ("Keywords:\nheist\nobsession", ["heist", "obsession"]),
        ("```\n1. [3] Heat\n2. [1] Toy Story\n```", ["[3] Heat", "[1] Toy Story"]),
        ("Sure: [4, 2, 9]", ["4", "2", "9"]),
        ("[REC] (2007)", ["[REC] (2007)"]),
        ("My ranking:\n[12] Toy Story (1995)\n[5] Heat (1995)", ["[12] Toy Story (1995)", "[5] Heat (1995)"]),
        ("2001: A Space Odyssey (1968)\nHeat (1995)", ["2001: A Space Odyssey (1968)", "Heat (1995)"]),
    ],
)
def test_parse_list_accepts_json_numbered_bulleted_and_comma_lists(text: str, items: list[str]) -> None:
    assert parse_list(text) == items


def test_parse_list_rejects_what_is_no_list() -> None:
    with pytest.raises(DataError, match="empty"):
        parse_list("\n\n")
    with pytest.raises(DataError, match="not an id or a string"):
        parse_list('[[1, 2], 3]')
    with pytest.raises(DataError, match="no list items"):
        parse_list('[]')


# --------------------------------------------------------------------------------------------
# Validators


def test_permutation_of_keeps_a_valid_ranking() -> None:
    order, rep = permutation_of([10, 11, 12])('{"ranking": [12, 10, 11]}')
    assert order == [12, 10, 11] and rep == {"hallucinated": 0, "duplicate": 0, "missing": 0}


def test_permutation_of_repairs_and_counts_hallucinated_duplicate_and_missing_ids() -> None:
    validate = permutation_of([10, 11, 12, 13, 14])
    order, rep = validate("[13, 99, 10, 13, 11, 1000]")
    assert order == [13, 10, 11, 12, 14]  # 12 and 14 appended in their original order
    assert rep == {"hallucinated": 2, "duplicate": 1, "missing": 2}
    order, rep = validate("1. [14] Heat (1995)\n2. 12: Casino (1995)\n3. ID 10 - Sabrina\n4. [77] Made Up")
    assert order == [14, 12, 10, 11, 13] and rep == {"hallucinated": 1, "duplicate": 0, "missing": 2}
    order, rep = validate("[12] Casino (1995)\n[14] Heat (1995)\n[11] Sabrina (1995)\n[10] Jumanji (1995)\n[13] Balto (1995)")
    assert order == [12, 14, 11, 10, 13] and rep == {"hallucinated": 0, "duplicate": 0, "missing": 0}


def test_permutation_of_matches_string_ids_and_titles() -> None:
    titles = ["Heat (1995)", "Casino (1995)", "Usual Suspects, The (1995)", "Sabrina (1995)"]
    validate = permutation_of(["a1", "b2", "c3", "d4"], titles=titles)
    order, rep = validate('["The Usual Suspects", "A1", "casino (1995)", "Toy Story"]')
    assert order == ["c3", "a1", "b2", "d4"] and rep == {"hallucinated": 1, "duplicate": 0, "missing": 1}
    by_map = permutation_of([1, 2], titles={1: "Heat (1995)", 2: "Casino (1995)"})
    assert by_map("Casino\nHeat")[0] == [2, 1]


def test_permutation_of_rejects_answers_that_are_no_ranking() -> None:
    validate = permutation_of(list(range(1, 21)))
    with pytest.raises(DataError, match="names 0 of the 20"):
        validate("[101, 102, 103]")
    with pytest.raises(DataError, match=r"names 9 of the 20 candidate ids \(at least 10"):
        validate(json.dumps(list(range(1, 10))))
    assert permutation_of(list(range(1, 21)), min_valid=0.0)("[5]")[0][:2] == [5, 1]
    with pytest.raises(DataError, match="empty"):
        validate("")
    with pytest.raises(ConfigError, match="twice"):
        permutation_of([1, 1])
    with pytest.raises(ConfigError, match="titles"):
        permutation_of([1, 2], titles=["x"])


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.7", 0.7),
        ("1", 1.0),
        ('{"score": 0.35}', 0.35),
        ('```json\n{"similarity": "0.4"}\n```', 0.4),
        ("Score: 0.9", 0.9),
        ("similarity = .25", 0.25),
        ("70%", 0.7),
        ("I'd say 0.85.", 0.85),
        ('Reasoning first. {"reason": "fits well", "score": 0.8}', 0.8),
        ("[0.6]", 0.6),
    ],
)
def test_unit_float_reads_scores(text: str, value: float) -> None:
    assert unit_float(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5", "outside"),
        ('{"score": -0.2}', "outside"),
        ("Score: 7", "outside"),
        ("NaN", "outside"),
        ("high", "no score"),
        ('{"score": "high"}', "no score"),
        ("true", "no score"),
        ("between 0.3 and 0.4", "several numbers"),
    ],
)
def test_unit_float_rejects_out_of_range_and_unclear_answers(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        unit_float(text)


def test_keyword_list_counts_distinct_keywords_and_rejects_sentences() -> None:
    validate = keyword_list(5, 15)
    kws = ["bank heist", "obsession", "los angeles", "cat and mouse", "loyalty", "Obsession"]
    assert validate(json.dumps({"keywords": kws})) == kws[:5]
    assert validate("- #heist\n- betrayal.\n- \"crime\"\n- city\n- night") == ["heist", "betrayal", "crime", "city", "night"]
    with pytest.raises(DataError, match="4 distinct keywords, 5 to 15"):
        validate('["heist", "betrayal", "crime", "Crime", "city"]')
    with pytest.raises(DataError, match="16 distinct keywords"):
        validate(json.dumps([f"theme {k}" for k in range(16)]))
    with pytest.raises(DataError, match="longer than 5 words"):
        validate(json.dumps(kws[:4] + ["a thief who wants to retire after one last job"]))
    with pytest.raises(ConfigError):
        keyword_list(5, 3)


def test_text_answer_takes_json_or_plain_text_and_rejects_refusals() -> None:
    validate = text_answer("summary", min_words=3, max_words=20)
    assert validate('{"summary": "Loves dark science fiction."}') == "Loves dark science fiction."
    assert validate('```json\n{"text": "Loves dark science fiction."}\n```') == "Loves dark science fiction."
    assert validate("Summary: Loves dark science fiction.") == "Loves dark science fiction."
    with pytest.raises(DataError, match="declined"):
        validate("I'm sorry, but I cannot summarise these movies.")
    with pytest.raises(DataError, match="1 words"):
        validate('{"summary": "Sci-fi."}')
    with pytest.raises(DataError, match="no string 'summary'"):
        validate('{"a": "one two three", "b": "four five six"}')


def test_choice_of_reads_numbers_titles_and_none() -> None:
    validate = choice_of(["Jumanji (1995)", "Heat (1995)", "Usual Suspects, The (1995)"])
    assert validate('{"match": 2}') == 1
    assert validate('{"match": "3"}') == 2
    assert validate("Option 1") == 0
    assert validate("the usual suspects") == 2
    assert validate('{"match": null}') is None and validate("None.") is None
    for bad, message in [('{"match": 4}', "does not exist"), ('{"match": 0}', "does not exist"), ("maybe", "names no option"), ('{"match": true}', "option number")]:
        with pytest.raises(DataError, match=message):
            validate(bad)


@pytest.mark.parametrize(
    ("title", "key", "year"),
    [
        ("Toy Story (1995)", "toy story", 1995),
        ("American President, The (1995)", "american president", 1995),
        ("The American President", "american president", None),
        ("Misérables, Les (1995)", "les miserables", 1995),
        ("Les Miserables", "les miserables", None),
        ("L.A. Confidential (1997)", "l a confidential", 1997),
        ("Death Note: Desu nôto (2006\u20132007)", "death note desu noto", 2006),
        ("Romeo & Juliet", "romeo and juliet", None),
        ("A Beautiful Mind", "beautiful mind", None),
        ("Die Hard (1988)", "die hard", 1988),
    ],
)
def test_normalise_title(title: str, key: str, year: int | None) -> None:
    assert normalise_title(title) == key and title_year(title) == year

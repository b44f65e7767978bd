"""recforge.prompts: the prompt builders with real MovieLens titles, their few-shot examples
(each passes its own validator) and their overrides."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from llm_fixtures import ids_in, items, ml, users  # noqa: F401 (fixtures)

import recforge.prompts as P
from recforge.errors import ConfigError
from recforge.parsing import choice_of, keyword_list, permutation_of, text_answer, unit_float

def test_rerank_messages_hold_history_candidates_and_the_few_shot_example(users: list[Any]) -> None:
    history, cands = users[0]
    msgs = P.rerank_messages(history, cands)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == P.RERANK_SYSTEM
    assert msgs[2]["content"] == P.RERANK_EXAMPLES[0][1] and "[102] Toy Story 2 (1999)" in msgs[1]["content"]
    last = msgs[-1]["content"]
    assert all(f"- {t}" in last for t in history) and ids_in(last) == [i for i, _ in cands]
    assert all(f"[{i}] {t}" in last for i, t in cands) and "Rank these 20 candidate" in last
    assert len(P.rerank_messages(history, cands, examples=[])) == 2


def test_every_builder_puts_its_inputs_in_the_prompt(items: pd.DataFrame) -> None:
    titles = [str(t) for t in items.title[:5]]
    m = P.summary_messages(titles)
    assert [x["role"] for x in m] == ["system", "user", "assistant", "user"]
    assert all(t in m[-1]["content"] for t in titles) and "Blade Runner (1982)" in m[1]["content"]
    m = P.similarity_messages("Likes animated films.", "Toy Story (1995): toys come alive.")
    assert len(m) == 1 + 2 * len(P.SIMILARITY_EXAMPLES) + 1
    assert "User preferences: Likes animated films." in m[-1]["content"] and "Movie: Toy Story (1995): toys" in m[-1]["content"]
    m = P.title_match_messages("jumanjii", ["Jumanji (1995)", "Jumper (2008)"])
    assert 'A user typed: "jumanjii"' in m[-1]["content"] and "1. Jumanji (1995)\n2. Jumper (2008)" in m[-1]["content"]
    assert '{"match": null}' in [x["content"] for x in m if x["role"] == "assistant"]
    m = P.description_messages("Balto (1995)", 1995, str(items.genres[12]))
    assert "Movie: Balto (1995)\nYear: 1995\nGenres: Adventure, Animation, Children" in m[-1]["content"]
    assert "Jumanji" in m[1]["content"] and "Genres: Adventure, Children, Fantasy" in m[1]["content"]
    assert "Year" not in P.description_messages("Balto (1995)", genres="(no genres listed)")[-1]["content"]
    m = P.keywords_messages("Heat (1995)", "A thief\nand a  detective.", min_n=3, max_n=8)
    assert "Plot overview: A thief and a detective." in m[-1]["content"] and "Give 3 to 8 thematic" in m[-1]["content"]
    assert "Give 5 to 15" in m[1]["content"]
    r = P.reask_messages(m, "bad", "too few keywords")
    assert r[:-2] == m and r[-2] == {"role": "assistant", "content": "bad"} and "too few keywords" in r[-1]["content"]


def test_few_shot_answers_pass_their_own_validators() -> None:
    for args, answer in P.RERANK_EXAMPLES:
        ids = [i for i, _ in args["candidates"]]
        assert sorted(permutation_of(ids)(answer)[0]) == sorted(ids)
        assert permutation_of(ids)(answer)[1] == {"hallucinated": 0, "duplicate": 0, "missing": 0}
    for args, answer in P.SUMMARY_EXAMPLES:
        text_answer("summary", min_words=5)(answer)
    for args, answer in P.SIMILARITY_EXAMPLES:
        unit_float(answer)
    for args, answer in P.TITLE_MATCH_EXAMPLES:
        choice_of(args["options"])(answer)
    for args, answer in P.DESCRIPTION_EXAMPLES:
        text_answer("description", min_words=10)(answer)
    for args, answer in P.KEYWORDS_EXAMPLES:
        keyword_list(args["min_n"], args["max_n"])(answer)


def test_templates_can_be_overridden_per_call_or_by_reassigning_the_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    m = P.summary_messages(["Heat (1995)"], template="Titles:\n$titles\nJSON please, costs $$0.", system="S", examples=[])
    assert m == [{"role": "system", "content": "S"}, {"role": "user", "content": "Titles:\n- Heat (1995)\nJSON please, costs $0."}]
    monkeypatch.setattr(P, "KEYWORDS_TEMPLATE", "K[$title|$overview|$min_n-$max_n]")
    m = P.keywords_messages("Heat (1995)", "Thieves.")
    assert m[-1]["content"] == "K[Heat (1995)|Thieves.|5-15]" and m[1]["content"].startswith("K[Heat (1995)|Obsessive")
    with pytest.raises(ConfigError, match=r"\$plot has no value"):
        P.keywords_messages("Heat", "x", template="$plot")
    with pytest.raises(ConfigError, match="literal"):
        P.summary_messages(["Heat"], template="costs $5")
    with pytest.raises(ConfigError, match="few-shot example 0"):
        P.summary_messages(["Heat"], examples=[({"titles": ["x"]}, "{}")])
    with pytest.raises(ConfigError, match="one string"):
        P.summary_messages("Heat (1995)")

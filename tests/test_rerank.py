"""recforge.rerank: the LLM flows end to end against a scripted OpenAI-compatible server
(re-asks, repairs, failures that are reported, the cache), with real MovieLens titles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from llm_fixtures import Serve, client, ids_in, is_reask, items, ml, serve, task, users  # noqa: F401 (fixtures)

import recforge.prompts as P
from recforge.errors import ConfigError
from recforge.rerank import describe_items, generate_keywords, rerank, score_similarity, summarize_users

def test_rerank_repairs_reasks_and_reports_failures(serve: Serve, users: list[Any], tmp_path: Path) -> None:
    histories = [h for h, _ in users]
    candidates = [c for _, c in users]
    first = {h[0]: k for k, h in enumerate(histories)}

    def answer(body: dict[str, Any]) -> str:
        prompt = task(body)
        ids = ids_in(prompt)
        user = first[re.search(r"^- (.*)$", prompt, re.M).group(1)]  # type: ignore[union-attr]
        if user == 0:  # valid, in a fence with prose around
            return "Here is the ranking:\n```json\n" + json.dumps({"ranking": ids[::-1]}) + "\n```\nEnjoy!"
        if user == 1:  # a numbered list with an invented id and a repeat, 5 ids left out
            lines = [f"[{i}] some title" for i in ids[:15]] + ["[999999] Not In The List (2020)", f"[{ids[0]}] again"]
            return "\n".join(f"{k}. {x}" for k, x in enumerate(lines, 1))
        if user == 2:  # prose first; a valid answer once told what was wrong
            return json.dumps({"ranking": ids}) if is_reask(body) else "I think they would enjoy the first one."
        return "Sorry, I can't rank movies."  # user 3: never usable

    server = serve(answer)
    c = client(server, cache=tmp_path / "cache.jsonl")
    out = rerank(c, histories, candidates, response_format=P.JSON_OBJECT, progress=False)
    ids = [[i for i, _ in cands] for cands in candidates]
    assert out[0] == ids[0][::-1] and out.details[0] == {"hallucinated": 0, "duplicate": 0, "missing": 0}
    assert out[1] == ids[1][:15] + ids[1][15:] and out.details[1] == {"hallucinated": 1, "duplicate": 1, "missing": 5}
    assert out[2] == ids[2] and out.errors[2] is None
    assert out[3] is None and out.failed == [3]
    assert "invalid answer after 2 tries" in (out.errors[3] or "") and "Sorry, I can't rank movies." in (out.errors[3] or "")
    rep = out.report
    assert rep["requests"] == 4 and rep["ok"] == 3 and rep["failed"] == 1 and rep["repaired"] == 1
    assert rep["retried"] == 2 and rep["reasks"] == 2 and rep["invalid_answers"] == 3 and rep["llm_calls"] == 6
    assert (rep["hallucinated"], rep["duplicate"], rep["missing"]) == (1, 1, 5)
    assert rep["llm_errors"] == 0 and rep["cache_hits"] == 0 and rep["prompt_tokens"] == 60
    # Only the two invalid items were re-sent: with the bad answer, the reason, and a raised temperature.
    assert len(server.bodies) == 6
    reasks = [b for b in server.bodies if is_reask(b)]
    assert len(reasks) == 2 and all(b["temperature"] == pytest.approx(0.2) for b in reasks)
    assert all(b["temperature"] == 0 for b in server.bodies if not is_reask(b))
    r2 = next(b for b in reasks if first[re.search(r"^- (.*)$", task(b), re.M).group(1)] == 2)  # type: ignore[union-attr]
    assert r2["messages"][-2] == {"role": "assistant", "content": "I think they would enjoy the first one."}
    assert "names 0 of the 20 candidate ids" in r2["messages"][-1]["content"]
    assert all(b["response_format"] == {"type": "json_object"} for b in server.bodies)
    assert [m["role"] for m in server.bodies[0]["messages"][:3]] == ["system", "user", "assistant"]
    # The same run again is answered from the cache, re-asks included, with the same results.
    again = rerank(client(server, cache=tmp_path / "cache.jsonl"), histories, candidates, response_format=P.JSON_OBJECT, progress=False)
    assert len(server.bodies) == 6 and again.report["cache_hits"] == 6
    assert list(again) == list(out) and again.errors == out.errors
    # max_retries=0: nothing is re-asked.
    none = rerank(c, histories, candidates, max_retries=0, temperature=0.5, progress=False)
    assert none.report["reasks"] == 0 and none.failed == [2, 3] and len(server.bodies) == 10


def test_rerank_input_checks(serve: Serve) -> None:
    server = serve(lambda body: "[]")
    c = client(server)
    empty: list[list[tuple[int, str]]] = [[]]
    out = rerank(c, [["Heat (1995)"]], empty, progress=False)
    assert out[0] == [] and out.report["sent"] == 0 and server.bodies == []
    with pytest.raises(ConfigError, match="lengths differ"):
        rerank(c, [["Heat (1995)"]], [], progress=False)
    with pytest.raises(ConfigError, match="max_retries"):
        rerank(c, [["Heat (1995)"]], [[(1, "x")]], max_retries=-1, progress=False)


def test_keywords_reask_too_few_and_fail_what_stays_invalid(serve: Serve, items: pd.DataFrame) -> None:
    titles = [str(items.title[j]) for j in (5, 15, 9, 31)]  # Heat, Casino, GoldenEye, Twelve Monkeys
    assert titles[0] == "Heat (1995)" and titles[1] == "Casino (1995)"
    overviews: list[str | None] = [
        "A master thief and an obsessive detective circle each other across Los Angeles.",
        "A casino boss in Las Vegas watches his empire, marriage and friendship fall apart.",
        None,
        "A convict is sent back in time to gather information about a man-made virus.",
    ]

    def answer(body: dict[str, Any]) -> str:
        prompt = task(body)
        assert prompt.count("Plot overview:") == 1  # one movie per prompt
        if "Heat" in prompt:
            return '```json\n{"keywords": ["heist", "obsession", "los angeles", "cat and mouse", "loyalty", "crime"]}\n```'
        if "Casino" in prompt:
            if is_reask(body):
                return "1. las vegas\n2. mafia\n3. greed\n4. betrayal\n5. marriage\n6. downfall\n7. 1970s"
            return '{"keywords": ["las vegas", "mafia", "greed"]}'
        return '{"keywords": ["time travel", "virus", "apocalypse", "mental asylum", "memory", "a very long sentence that is not a keyword at all"]}'

    server = serve(answer)
    out = generate_keywords(client(server), titles, overviews, max_retries=2, progress=False)
    assert out[0] == ["heist", "obsession", "los angeles", "cat and mouse", "loyalty", "crime"]
    assert out[1] == ["las vegas", "mafia", "greed", "betrayal", "marriage", "downfall", "1970s"]
    assert out[2] is None and out.errors[2] == "no plot overview"
    assert out[3] is None and "longer than 5 words" in (out.errors[3] or "") and "after 3 tries" in (out.errors[3] or "")
    rep = out.report
    assert (rep["ok"], rep["failed"], rep["sent"], rep["retried"], rep["reasks"], rep["invalid_answers"]) == (2, 2, 3, 2, 3, 4)
    casino = [b for b in server.bodies if "Casino" in task(b)]
    assert "3 distinct keywords, 5 to 15 asked for" in casino[1]["messages"][-1]["content"]
    monkeys = sorted(b["temperature"] for b in server.bodies if "Monkeys" in task(b))
    assert monkeys == pytest.approx([0.0, 0.2, 0.4])


def test_summaries_similarity_and_descriptions(serve: Serve, items: pd.DataFrame) -> None:
    def answer(body: dict[str, Any]) -> str | tuple[int, str]:
        prompt = task(body)
        system = body["messages"][0]["content"]
        if system == P.SUMMARY_SYSTEM:
            return '{"summary": "Enjoys family adventures and animated comedies from the nineties."}'
        if system == P.SIMILARITY_SYSTEM:
            if "Jumanji" in prompt:
                return "Score: 0.8"
            return '{"score": 0.6}' if is_reask(body) else '{"score": 1.7}'
        if "Balto" in prompt:
            return (400, "model does not exist")
        if "Sabrina" in prompt and not is_reask(body):
            return "I'm sorry, I don't know this movie."
        return "```json\n" + json.dumps({"description": f"A film called {prompt.splitlines()[0][7:]} with a story worth telling to any viewer."}) + "\n```"

    server = serve(answer)
    c = client(server)
    top = [[str(t) for t in items.title[:4]], []]
    s = summarize_users(c, top, progress=False)
    assert s[0] == "Enjoys family adventures and animated comedies from the nineties."
    assert s[1] is None and s.errors[1] == "no titles to summarise" and s.report["sent"] == 1
    sims = score_similarity(c, [s[0], s[0], s[1]], ["Jumanji (1995): a magic board game.", "Heat (1995): a heist thriller.", "x"], progress=False)
    assert sims[:2] == [0.8, 0.6] and sims[2] is None and sims.errors[2] == "no summary to compare"
    assert sims.report["retried"] == 1 and sims.report["invalid_answers"] == 1
    heat = [b for b in server.bodies if "Heat (1995): a heist" in task(b)]
    assert len(heat) == 2 and "outside [0, 1]" in heat[1]["messages"][-1]["content"]
    titles = [str(items.title[j]) for j in (0, 6, 12)]  # Toy Story, Sabrina, Balto
    d = describe_items(c, titles, years=[1995, 1995, 1995], genres=list(items.genres[[0, 6, 12]]), existing=["Toys come alive.", float("nan"), None], progress=False)  # type: ignore[list-item]
    assert d[0] == "Toys come alive." and d[1] == "A film called Sabrina (1995) with a story worth telling to any viewer."
    assert d[2] is None and "HTTP 400" in (d.errors[2] or "") and d.details == ["existing", "generated", "generated"]
    rep = d.report
    assert (rep["kept"], rep["generated"], rep["failed"], rep["llm_errors"], rep["retried"]) == (1, 1, 1, 1, 1)
    assert sum("Balto" in task(b) for b in server.bodies) == 1  # an HTTP failure is not re-asked
    sabrina = [b for b in server.bodies if "Sabrina" in task(b)]
    assert "Genres: Comedy, Romance" in task(sabrina[0]) and "declined" in sabrina[1]["messages"][-1]["content"]

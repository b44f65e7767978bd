"""recforge.parsing, recforge.prompts and recforge.rerank: every parser and validator on
hand-written answers (fenced JSON, prose around JSON, numbered lists, hallucinated / missing /
repeated ids, out-of-range scores, too few keywords), the prompt builders and their overrides,
and the LLM flows end to end against a scripted OpenAI-compatible server (re-asks, repairs,
failures that are reported, the cache), with real MovieLens titles."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pytest

import recforge.prompts as P
from recforge.datasets import Dataset, movielens_small
from recforge.errors import ConfigError, DataError
from recforge.llm import Client
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
from recforge.rerank import (
    describe_items,
    generate_keywords,
    match_titles,
    rerank,
    score_similarity,
    summarize_users,
)

# --------------------------------------------------------------------------------------------
# Real titles


@pytest.fixture(scope="module")
def ml() -> Dataset:
    return movielens_small()


@pytest.fixture(scope="module")
def items(ml: Dataset) -> pd.DataFrame:
    return ml.items


@pytest.fixture(scope="module")
def users(ml: Dataset, items: pd.DataFrame) -> list[tuple[list[str], list[tuple[int, str]]]]:
    """Four real users: the titles of their first 8 ratings, and 20 candidates (``(movieId,
    title)``): 5 of their later movies and 15 movies they never rated."""
    a = ml.interactions.to_arrays()
    rng = np.random.default_rng(7)
    out = []
    for u in (0, 1, 2, 3):
        mine = a["items"][a["users"] == u][np.argsort(a["timestamps"][a["users"] == u], kind="stable")]
        others = rng.choice(np.setdiff1d(np.arange(len(items)), mine), 15, replace=False)
        cands = [int(j) for j in mine[8:13]] + [int(j) for j in others]
        rng.shuffle(cands)
        history = [str(items.title[j]) for j in mine[:8]]
        out.append((history, [(int(items.movieId[j]), str(items.title[j])) for j in cands]))
    return out


# --------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server


class FakeLLM(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, answer: Callable[[dict[str, Any]], str | tuple[int, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeLLM

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append(body)
        out = self.server.answer(body)
        code, content = out if isinstance(out, tuple) else (200, out)
        reply = {
            "choices": [{"message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        data = json.dumps(reply if code == 200 else {"error": content}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


Serve = Callable[[Callable[[dict[str, Any]], "str | tuple[int, str]"]], FakeLLM]


@pytest.fixture()
def serve() -> Iterator[Serve]:
    """Start fake servers answering with a script ``body -> content`` (or ``(status, error)``)."""
    started: list[tuple[FakeLLM, threading.Thread]] = []

    def start(answer: Callable[[dict[str, Any]], str | tuple[int, str]]) -> FakeLLM:
        s = FakeLLM(answer)
        t = threading.Thread(target=s.serve_forever, daemon=True)
        t.start()
        started.append((s, t))
        return s

    yield start
    for s, t in started:
        s.shutdown()
        s.server_close()
        t.join()


def client(server: FakeLLM, **kw: Any) -> Client:
    return Client(server.url, "fake", api_key="none", max_retries=0, timeout=10.0, **kw)


REASK_START = P.REASK_TEMPLATE.split("$")[0]


def is_reask(body: dict[str, Any]) -> bool:
    return bool(body["messages"][-1]["content"].startswith(REASK_START))


def task(body: dict[str, Any]) -> str:
    """The real task of a request (not a few-shot example, not the re-ask note)."""
    return str(body["messages"][-3 if is_reask(body) else -1]["content"])


def ids_in(prompt: str) -> list[int]:
    return [int(x) for x in re.findall(r"^\[(\d+)\] ", prompt, re.M)]


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


# --------------------------------------------------------------------------------------------
# Prompt builders


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


# --------------------------------------------------------------------------------------------
# Flows against the scripted server


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


def test_match_titles_tries_exact_then_normalised_then_the_llm(serve: Serve, items: pd.DataFrame) -> None:
    catalogue = dict(zip(items.movieId.astype(int), items.title.astype(str)))
    mid = {t: m for m, t in reversed(list(catalogue.items()))}  # a title's first movieId
    sent: list[str] = []

    def answer(body: dict[str, Any]) -> str:
        prompt = task(body)
        query = re.search(r'A user typed: "(.*)"', prompt).group(1)  # type: ignore[union-attr]
        options = re.findall(r"^(\d+)\. (.*)$", prompt, re.M)
        sent.append(query)
        if query == "Jumanjii":
            return json.dumps({"match": next(int(k) for k, t in options if t == "Jumanji (1995)")})
        if query == "War of the Worlds":
            return next(f"Option {k}" for k, t in options if "1953" in t)
        if query == "The Lion Kng" and not is_reask(body):
            return "Probably the animated one!"
        if query == "The Lion Kng":
            return json.dumps({"match": next(int(k) for k, t in options if t == "Lion King, The (1994)")})
        return '{"match": null}'

    server = serve(answer)
    queries = [
        "Toy Story (1995)",  # exact
        "  the american president ",  # normalised
        "Usual Suspects",  # normalised
        "Twelve Monkeys",  # normalised, by the a.k.a. title
        "emma (1996)",  # normalised; the year picks it, the duplicate entry counts once
        "Jumanjii",  # typo: the LLM
        "War of the Worlds",  # two films: the LLM
        "Heat (1986)",  # the year disagrees with every Heat: the LLM says none
        "The Lion Kng",  # a typo: the LLM, after a re-ask
        "qwv",  # nothing similar: unmatched without a request
    ]
    out = match_titles(client(server), queries, catalogue, progress=False)
    assert out[:5] == [1, 11, 50, 32, mid["Emma (1996)"]]
    assert out[5] == 2 and out[6] == mid["War of the Worlds, The (1953)"] and out[8] == mid["Lion King, The (1994)"]
    assert out[7] is None and out[9] is None and out.errors == [None] * 10
    assert out.details == ["exact", "normalised", "normalised", "normalised", "normalised", "llm", "llm", "unmatched", "llm", "unmatched"]
    rep = out.report
    assert (rep["exact"], rep["normalised"], rep["llm"], rep["unmatched"], rep["failed"]) == (1, 4, 3, 2, 0)
    assert rep["sent"] == 4 and rep["retried"] == 1 and rep["ok"] == 10
    assert sorted(sent) == sorted(["Jumanjii", "War of the Worlds", "Heat (1986)", "The Lion Kng", "The Lion Kng"])
    heat = next(b for b in server.bodies if "Heat (1986)" in task(b))
    assert re.search(r"^1\. Heat \(1995\)\n2\. Heat, The \(2013\)$", task(heat), re.M)
    # A Series catalogue gives its index as ids; without a client only the LLM cases fail.
    series = items.set_index("movieId").title
    off = match_titles(None, ["Heat (1995)", "Jumanjii"], series, progress=False)
    assert off[0] == 6 and off[1] is None and off.details == ["exact", "failed"] and "no client" in (off.errors[1] or "")
    assert off.report["failed"] == 1 and off.report["ok"] == 1
    listed = match_titles(None, ["heat, the (2013)"], list(items.title[:8000].astype(str)) + ["Heat, The (2013)"], progress=False)
    assert listed[0] == 8000 and listed.details == ["normalised"]


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

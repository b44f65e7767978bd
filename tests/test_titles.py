"""recforge.titles: matching typed titles to the real MovieLens catalogue, exact, normalised,
by alternative title, and by the LLM (a scripted server) for what simple matching cannot settle."""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd
from llm_fixtures import Serve, client, is_reask, items, ml, serve, task  # noqa: F401 (fixtures)

import recforge.rerank
import recforge.titles
from recforge.titles import TitleIndex, match_titles

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


def test_the_index_and_the_old_import_path(items: pd.DataFrame) -> None:
    assert recforge.rerank.match_titles is recforge.titles.match_titles
    from recforge.rerank import match_titles as old

    assert old is match_titles and "match_titles" in recforge.rerank.__all__
    index = TitleIndex([str(t) for t in items.title])
    assert index.primary["heat"][0] == index.first["Heat (1995)"]
    assert [index.titles[p] for p in index.similar("jumanjii", 2)] == ["Jumanji (1995)", "Jumper (2008)"]
    assert index.first["Twelve Monkeys (a.k.a. 12 Monkeys) (1995)"] in index.alias["12 monkeys"]

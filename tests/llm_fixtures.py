"""Shared by the tests of recforge.prompts, recforge.rerank and recforge.titles: real MovieLens
titles and a scripted OpenAI-compatible server. Test modules import the fixtures they use."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pytest

import recforge.prompts as P
from recforge.datasets import Dataset, movielens_small
from recforge.llm import Client

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

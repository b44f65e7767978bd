"""recforge.llm against a local fault-injecting OpenAI-compatible server: retries (429 with
Retry-After, 500, timeouts, truncated and non-JSON bodies, dropped connections), no retry on 400,
the cache (a rerun sends nothing; a batch cut short and rerun sends only what is missing),
bounded concurrency, input order, and the API key kept out of every message."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from recforge.errors import ConfigError
from recforge.llm import Client

KEY = "sk-test-SECRET-1234567890"


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.auth: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _leave(self) -> None:
        """This request stops counting as in flight (before its response is written, so the
        client's next request cannot overlap it in the count)."""
        if getattr(self, "_counted", False):
            with self.server.lock:
                self.server.in_flight -= 1
            self._counted = False

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None) -> None:
        self._leave()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/embeddings"):
            return self._embeddings(body)
        prompt = body["messages"][-1]["content"]
        with s.lock:
            s.calls[prompt] += 1
            n = s.calls[prompt]
            s.in_flight += 1
            self._counted = True
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
            s.auth.add(self.headers.get("Authorization", ""))
        try:
            kind = prompt.split(":")[0]
            if kind == "slowok":
                time.sleep(0.05)
            if kind == "r429" and n == 1:
                return self._send(429, b'{"error": "rate limited"}', {"Retry-After": "0.2"})
            if kind == "r500" and n <= 2:
                return self._send(500, b'{"error": "boom"}')
            if kind == "timeout" and n == 1:
                time.sleep(1.5)
            if kind == "trunc" and n == 1:
                return self._send(200, b'{"choices": [{"message": {"cont')
            if kind == "notjson" and n == 1:
                return self._send(200, b"<html>gateway</html>")
            if kind == "reset" and n == 1:
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            if kind == "nofmt" and "response_format" in body:
                return self._send(400, b'{"error": "response_format is not supported"}')
            if kind == "bad400":
                return self._send(400, f'{{"error": "bad request; you sent {self.headers.get("Authorization")}"}}'.encode())
            answer = {
                "choices": [{"message": {"role": "assistant", "content": f"echo {prompt} t={body['temperature']}"}}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": 3, "total_tokens": len(prompt) + 3},
            }
            self._send(200, json.dumps(answer).encode())
        finally:
            self._leave()


def _vec(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 97), 1.0]


def _embeddings_handler(self: Handler, body: dict[str, Any]) -> None:
    s = self.server
    inputs = body["input"]
    key = "|".join(inputs)
    with s.lock:
        s.calls["emb:" + key] += 1
        n = s.calls["emb:" + key]
    if any(t.startswith("flaky") for t in inputs) and n == 1:
        return self._send(503, b'{"error": "busy"}')
    if any(t.startswith("short") for t in inputs):  # one vector too few: never a valid answer
        inputs = inputs[1:]
    data = [{"object": "embedding", "index": i, "embedding": _vec(t)} for i, t in enumerate(inputs)]
    self._send(200, json.dumps({"data": data[::-1], "usage": {"prompt_tokens": 3, "total_tokens": 3}}).encode())


Handler._embeddings = _embeddings_handler  # type: ignore[attr-defined]


@pytest.fixture()
def server() -> Iterator[FaultServer]:
    s = FaultServer()
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": text}]


def test_rejected_response_format_is_dropped_once(server: FaultServer, tmp_path: Path) -> None:
    """A server that rejects ``response_format`` with 400 is asked once more without it; a 400 that
    persists without it fails after exactly two calls, saying so; the answer is cached under the
    request as asked, so the rerun sends nothing."""
    c = Client(server.url, "tiny", max_retries=3, backoff=0.01, cache=tmp_path / "c.jsonl")
    fmt = {"type": "json_object"}
    out = c.chat_batch([msgs("nofmt:a"), msgs("bad400:b"), msgs("ok:c")], response_format=fmt, progress=False)
    assert [r.ok for r in out] == [True, False, True]
    assert out[0].text == "echo nofmt:a t=0.0" and out[0].attempts == 2
    assert server.calls["nofmt:a"] == 2 and server.calls["bad400:b"] == 2 and server.calls["ok:c"] == 1
    assert out[1].error is not None and "without response_format" in out[1].error
    before = sum(server.calls.values())
    again = c.chat_batch([msgs("nofmt:a")], response_format=fmt, progress=False)
    assert again[0].cached and sum(server.calls.values()) == before


def test_every_fault_is_retried_and_results_keep_input_order(server: FaultServer, tmp_path: Path) -> None:
    c = Client(server.url, "tiny", api_key=KEY, timeout=1.0, max_retries=4, backoff=0.05, cache=tmp_path / "c.jsonl")
    prompts = ["ok:1", "r429:a", "r500:b", "timeout:c", "trunc:d", "notjson:e", "reset:f", "bad400:g", "ok:2"]
    out = c.chat_batch([msgs(p) for p in prompts], progress=False)
    assert [r.ok for r in out] == [True] * 7 + [False, True]
    for p, r in zip(prompts, out):
        if r.ok:
            assert r.text == f"echo {p} t=0.0" and not r.cached
    assert server.calls["r429:a"] == 2 and server.calls["r500:b"] == 3 and server.calls["timeout:c"] == 2
    assert server.calls["trunc:d"] == 2 and server.calls["notjson:e"] == 2 and server.calls["reset:f"] == 2
    assert server.calls["bad400:g"] == 1  # a 4xx other than 429 is not retried
    bad = out[7]
    assert bad.error is not None and "HTTP 400" in bad.error and KEY not in bad.error and "***" in bad.error
    assert server.auth == {f"Bearer {KEY}"}
    rep = out.report
    assert rep["requests"] == 9 and rep["ok"] == 8 and rep["failed"] == 1 and rep["cache_misses"] == 9
    assert rep["retries"] == sum(r.attempts - 1 for r in out) >= 1 + 2 + 1 + 1 + 1 + 1
    assert rep["prompt_tokens"] == sum(len(p) for p, r in zip(prompts, out) if r.ok)
    assert 0 < rep["latency_p50"] <= rep["latency_p99"]
    # The same batch again: answers from the cache, only the failed request is sent again.
    before = sum(server.calls.values())
    again = Client(server.url, "tiny", api_key=KEY, cache=tmp_path / "c.jsonl", max_retries=0).chat_batch(
        [msgs(p) for p in prompts], progress=False
    )
    assert sum(server.calls.values()) - before == 1 and again.report["cache_hits"] == 8
    assert [r.text for r in again] == [r.text for r in out]
    # Each answer is in the cache file once, and the key is nowhere in it.
    text = (tmp_path / "c.jsonl").read_text()
    assert len(text.splitlines()) == 8 and KEY not in text
    assert KEY not in repr(c)


def test_gives_up_after_max_retries_and_reports_the_error(server: FaultServer) -> None:
    c = Client(server.url, "tiny", max_retries=1, backoff=0.01)
    out = c.chat_batch([msgs("r500:z")], progress=False)
    assert not out[0].ok and "HTTP 500" in (out[0].error or "") and "after 2 attempts" in (out[0].error or "")
    assert server.calls["r500:z"] == 2
    dead = Client("http://127.0.0.1:9/v1", "tiny", max_retries=1, backoff=0.01, timeout=2.0)
    r = dead.chat_batch([msgs("x")], progress=False)[0]
    assert not r.ok and "connect" in (r.error or "")


def test_a_batch_cut_short_resumes_with_only_the_missing_requests(server: FaultServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    prompts = [f"ok:{i}" for i in range(60)]
    Client(server.url, "tiny", cache=cache).chat_batch([msgs(p) for p in prompts[:25]], progress=False)
    # A crash while writing the next answer leaves a torn line at the end of the file.
    with cache.open("a") as f:
        f.write('{"key": "abc", "text": "half an ans')
    sent = Counter(server.calls)
    out = Client(server.url, "tiny", cache=cache).chat_batch([msgs(p) for p in prompts], progress=False)
    assert all(r.ok for r in out) and [r.cached for r in out] == [True] * 25 + [False] * 35
    assert all(server.calls[p] - sent[p] == (0 if i < 25 else 1) for i, p in enumerate(prompts))
    # Temperature is part of the key: a different setting is a different request.
    t = Client(server.url, "tiny", cache=cache).chat_batch([msgs("ok:0")], temperature=0.7, progress=False)
    assert not t[0].cached and t[0].text == "echo ok:0 t=0.7"


def test_concurrency_is_bounded_and_rate_limit_spaces_requests(server: FaultServer) -> None:
    c = Client(server.url, "tiny", max_concurrency=4)
    out = c.chat_batch([msgs(f"slowok:{i}") for i in range(40)], progress=False)
    assert all(r.ok for r in out) and [r.text for r in out] == [f"echo slowok:{i} t=0.0" for i in range(40)]
    assert 1 < server.max_in_flight <= 4
    t0 = time.perf_counter()
    Client(server.url, "tiny", requests_per_minute=600).chat_batch([msgs(f"ok:rl{i}") for i in range(6)], progress=False)
    assert time.perf_counter() - t0 >= 0.45  # 6 starts 0.1 s apart


def test_per_request_options_and_bad_input(server: FaultServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = Client(server.url, "tiny")
    out = c.chat_batch([{"messages": msgs("ok:x"), "temperature": 0.5}, msgs("ok:y")], progress=True)
    assert out.texts == ["echo ok:x t=0.5", "echo ok:y t=0.0"]
    with pytest.raises(ConfigError, match="request 0"):
        c.chat_batch([[{"role": "user"}]])
    with pytest.raises(ConfigError, match="unknown keys"):
        c.chat_batch([{"messages": msgs("a"), "temp": 1}])
    with pytest.raises(ConfigError, match="base_url"):
        Client("localhost:8000", "m")
    monkeypatch.delenv("RECFORGE_LLM_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="RECFORGE_LLM_BASE_URL"):
        Client(model="m")
    (tmp_path / ".env").write_text(f"RECFORGE_LLM_BASE_URL={server.url}\nRECFORGE_LLM_MODEL=tiny\nOPENAI_API_KEY='{KEY}'\n")
    monkeypatch.delenv("RECFORGE_LLM_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    env_client = Client()
    assert env_client.chat_batch([msgs("ok:env")], progress=False)[0].ok
    assert f"Bearer {KEY}" in server.auth and KEY not in repr(env_client)


def test_async_chat_shares_limits_retries_and_cache(server: FaultServer, tmp_path: Path) -> None:
    c = Client(server.url, "tiny", max_concurrency=3, backoff=0.01, cache=tmp_path / "a.jsonl")

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(c.chat(msgs(f"slowok:a{i}")) for i in range(12)), c.chat(msgs("r500:async"))))

    out = asyncio.run(go())
    assert [r.text for r in out[:12]] == [f"echo slowok:a{i} t=0.0" for i in range(12)]
    assert out[12].ok and out[12].attempts == 3 and server.max_in_flight <= 3
    again = asyncio.run(c.chat(msgs("slowok:a5")))
    assert again.cached and again.text == "echo slowok:a5 t=0.0"


def test_tokens_per_minute_bucket_delays_requests(server: FaultServer) -> None:
    # A bucket of 6,000 tokens refilled at 100/s. Each request is charged ~2,100 up front
    # (max_tokens) and then its reported usage (~11 tokens), so 8 answered requests pass at once.
    c = Client(server.url, "tiny", tokens_per_minute=6000)
    t0 = time.perf_counter()
    out = c.chat_batch([msgs(f"ok:tpm{i}") for i in range(8)], max_tokens=2100, progress=False)
    assert all(r.ok for r in out) and time.perf_counter() - t0 < 2.0
    # Failed requests report no usage and keep their full charge: three of them need ~6,330
    # tokens, ~400 more than the bucket holds, so the third waits ~4 s for the refill.
    t0 = time.perf_counter()
    out = c.chat_batch([msgs(f"bad400:tpm{i}") for i in range(3)], max_tokens=2100, progress=False)
    waited = time.perf_counter() - t0
    assert not any(r.ok for r in out) and 2.5 < waited < 15
    with pytest.raises(ConfigError, match="tokens_per_minute"):
        Client(server.url, "tiny", tokens_per_minute=0.5)


def test_embeddings_in_batches_with_retries_and_cache(server: FaultServer, tmp_path: Path) -> None:
    import numpy as np

    texts = [f"title {i}" for i in range(10)] + ["flaky one", "short a", "short b"]
    c = Client(server.url, "emb", backoff=0.01, max_retries=2, cache=tmp_path / "e.jsonl")
    r = c.embed(texts, batch_size=4, progress=False)
    # Batches: 0-3, 4-7, 8-9 + "flaky one" + "short a" (5th item cut by the server), "short b".
    assert r.vectors.shape == (13, 3) and r.report["requests"] == 4
    for i in range(8):
        assert np.array_equal(r.vectors[i], _vec(texts[i])) and r.errors[i] is None
    bad = [i for i, e in enumerate(r.errors) if e is not None]
    assert bad == [8, 9, 10, 11, 12] and np.isnan(r.vectors[bad]).all() and not r.ok
    assert "no valid answer" in (r.errors[12] or "")
    ok = Client(server.url, "emb", backoff=0.01, cache=tmp_path / "e.jsonl").embed(texts[:8] + ["flaky two"], batch_size=3, progress=False)
    assert ok.ok and ok.report["requests"] == 3 and ok.report["retries"] == 1
    again = Client(server.url, "emb", cache=tmp_path / "e.jsonl").embed(texts[:8] + ["flaky two"], batch_size=3, progress=False)
    assert again.report["cache_hits"] == 3 and np.array_equal(again.vectors, ok.vectors)

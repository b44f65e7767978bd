"""recforge.llm against misbehaving servers and careless settings (issue 13: 3, 4, 11, 12): the
API key and a URL password never show (redacted before an error body is cut, masked in ``repr``,
never cached from an answer that echoes them), a cache file torn inside a multi-byte character
stays readable, a reply that is not UTF-8 is counted, a huge ``Retry-After`` cannot stall a batch,
settings out of range are ConfigErrors (never a Rust panic), and Ctrl-C stops a batch with
``KeyboardInterrupt`` while what was answered stays in the cache."""

from __future__ import annotations

import _thread
import base64
import inspect
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from recforge.errors import ConfigError, StorageError
from recforge.llm import Client

KEY = "sk-hostile-0123456789abcdefghijkl"  # 33 characters, as in the issue
PASSWORD = "pw-Hunter2-SECRET"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: Counter[str] = Counter()
        self.auth: list[str] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def _answer(content: str | bytes) -> bytes:
    """A chat completion whose content is ``content`` (bytes are put in as they are)."""
    raw = content if isinstance(content, bytes) else json.dumps(content)[1:-1].encode()
    head = b'{"choices": [{"message": {"role": "assistant", "content": "'
    return head + raw + b'"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        auth = self.headers.get("Authorization", "")
        with s.lock:
            s.calls[prompt] += 1
            n = s.calls[prompt]
            s.auth.append(auth)
        kind, _, arg = prompt.partition(":")
        if kind == "echo401":  # `arg` filler characters, then the credential the client sent
            return self._send(401, ("x" * int(arg) + auth + " is not valid").encode())
        if kind == "echo200":
            return self._send(200, _answer(f"Your credential is {auth}; noted."))
        if kind == "echo500":
            return self._send(500, f'{{"error": "upstream rejected {auth}"}}'.encode())
        if kind == "text":
            return self._send(200, _answer(arg))
        if kind == "latin1":  # a reply that is not UTF-8: "café" in Latin-1
            return self._send(200, _answer(b"caf\xe9 cr\xe8me"))
        if kind == "wait" and (arg == "always" or n == 1):
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "100000"})
        if kind == "huge":
            return self._send(429, b'{"error": "slow down"}', {"Retry-After": "1e300"})
        if kind == "slow":
            time.sleep(0.4)
        self._send(200, _answer(f"echo {prompt}"))


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()
    t.join()


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def pieces(secret: str, n: int = 6) -> list[str]:
    """Every run of ``n`` characters of ``secret``."""
    return [secret[i : i + n] for i in range(len(secret) - n + 1)]


def assert_hidden(text: str | None, *secrets: str) -> None:
    assert text is not None
    for secret in secrets:
        leaked = [p for p in pieces(secret) if p in text]
        assert not leaked, f"{leaked[:3]} of a secret in {text!r}"


# --------------------------------------------------------------------------------------------
# (3) The key and the URL password never show


def test_a_key_straddling_the_200_character_cut_is_redacted_whole(server: Server) -> None:
    """The issue's case (161 filler characters, then ``Bearer <key>``) and every offset around
    the cut: the error is cut after redaction, so not even part of the key survives."""
    c = Client(server.url, "m", api_key=KEY, max_retries=0)
    offsets = [161, *range(150, 201, 5), 0, 199]
    out = c.chat_batch([ask(f"echo401:{k}") for k in offsets], progress=False)
    for r in out:
        assert not r.ok and r.error is not None and "HTTP 401" in r.error
        assert_hidden(r.error, KEY)
    assert "***" in (out[0].error or "")
    # Retried errors (5xx) are redacted the same way.
    r = Client(server.url, "m", api_key=KEY, max_retries=1, backoff=0.01).chat_batch([ask("echo500:x")], progress=False)[0]
    assert "HTTP 500" in (r.error or "") and "after 2 attempts" in (r.error or "")
    assert_hidden(r.error, KEY)


def test_a_password_in_the_base_url_is_used_but_never_shown(server: Server, tmp_path: Path) -> None:
    url = f"http://ann:{PASSWORD}@127.0.0.1:{server.port}/v1"
    c = Client(url, "m", max_retries=0, cache=tmp_path / "c.jsonl")
    assert_hidden(repr(c), PASSWORD)
    assert "ann:***@127.0.0.1" in repr(c)
    out = c.chat_batch([ask("text:hello"), ask("echo401:190"), ask("echo200:x")], progress=False)
    basic = "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode()
    assert basic in server.auth  # the password is sent (as basic auth) ...
    assert out[0].ok and out[0].text == "hello"
    assert_hidden(out[1].error, PASSWORD, basic[6:])  # ... and a server echoing it shows nothing of it
    assert out[2].ok and out[2].redacted and "***" in (out[2].text or "")
    assert_hidden(out[2].text, PASSWORD, basic[6:])
    assert_hidden((tmp_path / "c.jsonl").read_text(), PASSWORD, basic[6:])
    # Transport errors name the URL: without the password.
    dead = Client(f"http://ann:{PASSWORD}@127.0.0.1:9/v1", "m", max_retries=0, timeout=2.0)
    r = dead.chat_batch([ask("x")], progress=False)[0]
    assert not r.ok and "connect" in (r.error or "")
    assert_hidden(r.error, PASSWORD)
    with pytest.raises(ConfigError, match="base_url") as e:
        Client(f"ftp://ann:{PASSWORD}@host/v1", "m")
    assert_hidden(str(e.value), PASSWORD)


def test_a_key_echoed_in_an_answer_is_not_cached(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    c = Client(server.url, "m", api_key=KEY, cache=cache)
    out = c.chat_batch([ask("echo200:x"), ask("text:plain")], progress=False)
    assert out[0].ok and out[0].text == "Your credential is Bearer ***; noted." and out[0].redacted
    assert out[1].text == "plain" and not out[1].redacted
    assert out.report["redacted"] == 1
    assert KEY not in cache.read_text() and "Bearer ***" in cache.read_text()
    again = Client(server.url, "m", api_key=KEY, cache=cache).chat_batch([ask("echo200:x")], progress=False)
    assert again[0].cached and again[0].text == out[0].text
    # A placeholder key of a local server (shorter than 8 characters) never rewrites answers.
    short = Client(server.url, "m", api_key="none").chat_batch([ask("text:none of these fit")], progress=False)
    assert short[0].text == "none of these fit" and short.report["redacted"] == 0


# --------------------------------------------------------------------------------------------
# (4) One bad byte does not make the cache unreadable


def test_a_cache_torn_inside_a_multibyte_character_stays_readable(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    texts = ["Amélie", "東京物語", "Ёжик в тумане", "plain"]
    first = Client(server.url, "m", cache=cache).chat_batch([ask(f"text:{t}") for t in texts], progress=False)
    assert [r.text for r in first] == texts
    # A crash while writing "千と千尋" leaves a last line that ends inside "千" (E5 8D 83), and a
    # line elsewhere holds a stray byte.
    data = cache.read_bytes().split(b"\n")
    torn = '{"key": "abc", "text": "千'.encode()[:-1]
    cache.write_bytes(b"\n".join(data[:2] + [b'{"key": "x", "text": "\xff"}'] + data[2:-1]) + b"\n" + torn)
    c = Client(server.url, "m", cache=cache)
    assert c.cache_size == 4 and c.cache_skipped_lines == 2
    sent = sum(server.calls.values())
    again = c.chat_batch([ask(f"text:{t}") for t in texts + ["千と千尋"]], progress=False)
    assert [r.text for r in again] == texts + ["千と千尋"] and [r.cached for r in again] == [True] * 4 + [False]
    assert sum(server.calls.values()) == sent + 1
    # The file stays readable after the next write.
    reopened = Client(server.url, "m", cache=cache)
    assert reopened.cache_size == 5 and reopened.cache_skipped_lines == 2


# --------------------------------------------------------------------------------------------
# (11) A reply that is not UTF-8 is counted, not passed silently


def test_a_reply_that_is_not_utf8_is_flagged_and_counted(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    out = Client(server.url, "m", cache=cache).chat_batch([ask("latin1:x"), ask("text:café")], progress=False)
    assert out[0].ok and out[0].text == "caf\ufffd cr\ufffdme" and out[0].invalid_utf8
    assert out[1].text == "café" and not out[1].invalid_utf8
    assert out.report["invalid_utf8"] == 1
    # The flag is kept with the cached answer.
    again = Client(server.url, "m", cache=cache).chat_batch([ask("latin1:x")], progress=False)
    assert again[0].cached and again[0].invalid_utf8 and again.report["invalid_utf8"] == 1


# --------------------------------------------------------------------------------------------
# (12) Retry-After is honoured up to max_retry_wait


def test_a_huge_retry_after_is_cut_to_max_retry_wait_and_reported(server: Server) -> None:
    assert inspect.signature(Client).parameters["max_retry_wait"].default == 60.0
    c = Client(server.url, "m", timeout=2.0, max_retries=1, backoff=0.01, max_retry_wait=0.3)
    t0 = time.perf_counter()
    out = c.chat_batch([ask("wait:once"), ask("wait:always"), ask("huge:x")], progress=False)
    assert time.perf_counter() - t0 < 10
    assert out[0].ok and out[0].attempts == 2 and out[0].capped_waits == 1
    assert not out[1].ok and out[1].capped_waits == 1 and "after 2 attempts" in (out[1].error or "")
    assert "100000 s" in (out[1].error or "") and "max_retry_wait = 0.3 s" in (out[1].error or "")
    assert not out[2].ok and out[2].capped_waits == 1
    assert out.report["capped_waits"] == 3


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_retry_wait": -1.0}, "max_retry_wait"),
        ({"max_retry_wait": float("nan")}, "max_retry_wait"),
        ({"max_retry_wait": 1e300}, "max_retry_wait"),
        ({"timeout": 1e300}, "timeout"),
        ({"timeout": 0.0}, "timeout"),
        ({"backoff": float("inf")}, "backoff"),
        ({"requests_per_minute": 1e-300}, "requests_per_minute"),
        ({"max_concurrency": 2**70}, "max_concurrency"),
        ({"max_retries": 2**40}, "max_retries"),
    ],
)
def test_settings_out_of_range_are_config_errors(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Client("http://127.0.0.1:9/v1", "m", **kwargs)


# --------------------------------------------------------------------------------------------
# Interruption (issue 12, item 5)


def test_ctrl_c_stops_a_batch_and_the_rerun_sends_only_what_is_missing(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    prompts = [f"slow:{i}" for i in range(8)]
    c = Client(server.url, "m", max_concurrency=1, cache=cache)
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            c.chat_batch([ask(p) for p in prompts], progress=False)
    finally:
        timer.cancel()
    assert time.perf_counter() - t0 < 2.5  # at once, not after the 3.2 s the batch needs
    time.sleep(0.6)  # the request in flight finishes in the background and reaches the cache
    answered = sum(server.calls.values())
    assert 1 < answered < len(prompts)
    out = Client(server.url, "m", cache=cache).chat_batch([ask(p) for p in prompts], progress=False)
    assert all(r.ok for r in out) and out.report["cache_hits"] == answered
    assert all(server.calls[p] == 1 for p in prompts)


def test_the_storage_error_of_an_unreadable_cache_path_is_kept(tmp_path: Path) -> None:
    """Reading line by line does not turn real I/O failures into skipped lines."""
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(StorageError, match="dir.jsonl"):
        Client("http://127.0.0.1:9/v1", "m", cache=tmp_path / "dir.jsonl")

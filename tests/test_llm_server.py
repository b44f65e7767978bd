"""recforge.llm against a real OpenAI-compatible server: llama.cpp's (llama-cpp-python) running a
1.7 MB random-weight llama model on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from recforge.llm import Client

pytestmark = pytest.mark.llm_server


def test_a_thousand_requests_with_concurrency_32(llama_server: str, tmp_path: Path) -> None:
    client = Client(llama_server, "tiny", max_concurrency=32, cache=tmp_path / "cache.jsonl", timeout=60)
    requests = [[{"role": "user", "content": f"Item {i}: say something."}] for i in range(1000)]
    out = client.chat_batch(requests, max_tokens=4, progress=False)
    assert len(out) == 1000 and all(r.ok for r in out), [r.error for r in out if not r.ok][:3]
    assert all(isinstance(r.text, str) for r in out)
    rep = out.report
    assert rep["ok"] == 1000 and rep["cache_misses"] == 1000 and rep["completion_tokens"] > 0
    print(f"1000 requests: {rep['seconds']:.1f} s, p50 {rep['latency_p50'] * 1000:.0f} ms, retries {rep['retries']}")
    # Greedy decoding is deterministic: asked alone, an item gets the answer it got in the batch,
    # so the batch returned the answers in input order.
    fresh = Client(llama_server, "tiny")
    for i in (0, 517, 999):
        alone = fresh.chat_batch([requests[i]], max_tokens=4, progress=False)[0]
        assert alone.ok and alone.text == out[i].text and not alone.cached
    # The rerun is served from the cache entirely.
    again = Client(llama_server, "tiny", cache=tmp_path / "cache.jsonl").chat_batch(requests, max_tokens=4, progress=False)
    assert again.report["cache_hits"] == 1000 and [r.text for r in again] == [r.text for r in out]

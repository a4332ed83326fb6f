#!/usr/bin/env python3
"""Perplexity of a GGUF model in llama.cpp itself (through llama-cpp-python), with the protocol of
docs/spec.md §10 that `fasp-engine eval` uses: the token ids of a .npy (2-D [windows, seqlen], or a
1-D stream cut into non-overlapping windows of --seqlen, the last partial one dropped), no BOS
inserted, each window evaluated from an empty KV cache, the NLL of the L-1 predicted tokens from a
log-softmax of llama.cpp's f32 logits, summed in f64; ppl = exp(sum NLL / (windows * (L-1))).

Prints one JSON object (ppl, nll_sum, seqlen, windows, predicted_tokens, and what ran it).
Run by scripts/llama-cpp-check.sh with the cached llama-cpp-python venv (scripts/llama-cpp-venv.sh).

  llama_cpp_ppl.py --model X.gguf --tokens IDS.npy [--seqlen L] [--max-windows N] [--threads T]
                   [--text TEXT]   also report whether llama.cpp's own tokenizer gives the same ids
                                   from the head of TEXT (information only)
"""
import argparse
import json
import math
import os
import sys

import numpy as np


def die(msg):
    print(f"llama_cpp_ppl: error: {msg}", file=sys.stderr)
    sys.exit(2)


def load_windows(path, seqlen, max_windows):
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        die(f"cannot read {path}: {e}")
    if a.dtype.kind not in "iu":
        die(f"{path} holds {a.dtype}, not integer token ids")
    if a.ndim == 2:
        if seqlen is not None and seqlen != a.shape[1]:
            die(f"--seqlen {seqlen} differs from the windows of {path} ({a.shape[1]})")
        seqlen = a.shape[1]
        flat = a.reshape(-1)
    elif a.ndim == 1:
        if seqlen is None:
            die(f"{path} is a 1-D stream: give --seqlen")
        flat = a
    else:
        die(f"{path} is {a.ndim}-D; expected a 1-D stream or 2-D windows")
    if seqlen < 2:
        die(f"seqlen must be at least 2, got {seqlen}")
    n = len(flat) // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        die(f"{len(flat)} tokens make no window of {seqlen}")
    return flat[: n * seqlen].astype(np.int64).reshape(n, seqlen), seqlen


def window_nll(logits, ids):
    """sum_t -log softmax(logits[t])[ids[t+1]] over one window: f32 logits, f64 sums (§10)."""
    n = len(ids) - 1
    rows = logits[:n].astype(np.float32)
    m = rows.max(axis=1)
    s = np.exp((rows - m[:, None]).astype(np.float64)).sum(axis=1)
    tgt = rows[np.arange(n), ids[1:]]
    return float(np.sum(np.log(s) - (tgt - m).astype(np.float64)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--seqlen", type=int)
    ap.add_argument("--max-windows", type=int)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--text")
    a = ap.parse_args()
    if not os.path.isfile(a.model):
        die(f"no such model file: {a.model}")
    win, seqlen = load_windows(a.tokens, a.seqlen, a.max_windows)

    import llama_cpp
    from llama_cpp import Llama

    try:
        llm = Llama(model_path=a.model, n_ctx=seqlen, n_batch=seqlen, n_ubatch=seqlen, logits_all=True,
                    n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    except Exception as e:  # noqa: BLE001
        die(f"llama.cpp could not load {a.model}: {e}")
    vocab = llm.n_vocab()
    if int(win.max()) >= vocab or int(win.min()) < 0:
        die(f"token ids outside llama.cpp's vocabulary of {vocab} in {a.tokens}")
    nll = 0.0
    for w in range(win.shape[0]):
        llm.reset()
        llm._ctx.kv_cache_clear()  # every window starts from an empty cache
        ids = win[w].tolist()
        llm.eval(ids)
        logits = np.asarray(llm.scores[:seqlen], dtype=np.float32)
        if not np.isfinite(logits).all():
            die(f"non-finite logits from llama.cpp in window {w}")
        nll += window_nll(logits, win[w])
    pred = win.shape[0] * (seqlen - 1)
    out = {"ppl": math.exp(nll / pred), "nll_sum": nll, "seqlen": seqlen, "windows": int(win.shape[0]),
           "predicted_tokens": pred, "n_vocab": vocab, "threads": a.threads,
           "llama_cpp_python": llama_cpp.__version__}
    if a.text:
        with open(a.text, encoding="utf-8") as f:
            text = f.read(20_000)
        flat = win.reshape(-1)
        # the head of the text cut at a line break, as tests/real_smollm2.rs cuts it
        cut = text.rfind("\n")
        ids = llm.tokenize(text[: cut if cut > 0 else len(text)].encode("utf-8"), add_bos=False, special=False)
        same = 0
        for x, y in zip(ids, flat.tolist()):
            if x != y:
                break
            same += 1
        out["llama_cpp_tokenizer_agrees_on"] = f"{same} of {len(flat)} ids"
    print(json.dumps(out))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Independent reference for the dense SmolLM2-135M perplexity (issue #4).

Loads the GGUF with transformers' own GGUF loader (its own dequantization and Q/K un-permutation)
and its own tokenizer, tokenizes the evaluation text, takes the first WINDOWS windows of SEQLEN
tokens and computes perplexity exactly as docs/spec.md §10 (fp32 logits, log-softmax, fp64 sums).
Writes tests/fixtures/smollm2/{eval_ids.npy,reference.json}. Run once, by scripts/make-fixtures.sh's
venv:  .venv-fixtures/bin/python scripts/reference_smollm2.py
"""
import json, os, sys, pathlib
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SEQLEN, WINDOWS = 512, 4
home = pathlib.Path(os.environ.get("FASP_HOME", pathlib.Path.home() / ".cache/fasp-engine"))
gguf_dir = home / "smollm2-135m"
gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
text = (home / "text/eval.txt").read_text()
out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/smollm2"
out.mkdir(parents=True, exist_ok=True)

tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
ids = tok(text, add_special_tokens=False)["input_ids"]
# only the head of the text is needed; tokenizing the head alone gives the same ids as long as we
# stop at a paragraph boundary, which the check below confirms
assert len(ids) >= SEQLEN * WINDOWS
win = torch.tensor(ids[: SEQLEN * WINDOWS], dtype=torch.long).view(WINDOWS, SEQLEN)
nll = 0.0
with torch.no_grad():
    for w in range(WINDOWS):
        logits = model(win[w : w + 1]).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        tgt = win[w, 1:]
        nll += float(-logp[:-1].gather(1, tgt[:, None]).double().sum())
pred = WINDOWS * (SEQLEN - 1)
ppl = float(np.exp(nll / pred))
np.save(out / "eval_ids.npy", win.numpy().astype(np.int32))
ref = {"source": "transformers %s GGUF loader, torch %s, fp32, eager attention" % (
           __import__("transformers").__version__, torch.__version__),
       "text": "FASP_HOME/text/eval.txt (first %d tokens)" % (SEQLEN * WINDOWS),
       "seqlen": SEQLEN, "windows": WINDOWS, "predicted_tokens": pred, "nll_sum": nll, "ppl": ppl,
       "num_parameters": sum(p.numel() for p in model.parameters())}
(out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
print(json.dumps(ref, indent=1))

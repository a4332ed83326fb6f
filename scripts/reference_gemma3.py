#!/usr/bin/env python3
"""Independent reference for the Gemma-3 270M Q4_K_M GGUF (issue #12): tokenizer ids and dense perplexity.

Token ids: SentencePiece itself on the GGUF's vocabulary (scripts/gemma3_spm_ids.py rebuilds Gemma's
BPE model proto from it), over the whole evaluation text without BOS. transformers' GGUF tokenizer is
not used for the ids: for Gemma it builds a Unigram model over the BPE ranks (GGUFGemmaConverter),
which segments differently (1,240,415 tokens on this text where SentencePiece gives far fewer).
Perplexity: transformers' own GGUF loader (its own dequantization, its own `(1+w)` norm shift, its own
Gemma-3 config defaults), fp32, eager attention, on the first WINDOWS windows of SEQLEN of those ids
(SEQLEN > the 512-token sliding window, so sliding layers differ from global ones), exactly as
docs/spec.md §10 (fp32 logits, log-softmax, fp64 sums).
Writes tests/fixtures/gemma3/{eval_ids.npy,reference.json}; reference.json also holds the count and
a position-weighted sum (Σ (i+1)·id mod 2^64) of the ids of the whole text, which tests/gguf_gemma.rs
checks. Run with the fixtures venv (scripts/make-fixtures.sh's pins plus gguf==0.19.0,
sentencepiece==0.2.3, accelerate==1.15.0):  .venv-fixtures/bin/python scripts/reference_gemma3.py
"""
import json, os, pathlib, sys, time
import numpy as np
import sentencepiece
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gemma3_spm_ids import build  # noqa: E402

SEQLEN, WINDOWS = int(os.environ.get("SEQLEN", 1024)), int(os.environ.get("WINDOWS", 1))
home = pathlib.Path(os.environ.get("FASP_HOME", pathlib.Path.home() / ".cache/fasp-engine"))
gguf_dir = home / "gemma3-270m"
gguf_file = "gemma-3-270m-q4_k_m.gguf"
text = (home / "text/eval.txt").read_text()
out = pathlib.Path(os.environ.get("OUT", pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/gemma3"))
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(int(os.environ.get("THREADS", 2)))

t0 = time.time()
spm_version = sentencepiece.__version__
sp = build(str(gguf_dir / gguf_file))
ids = sp.EncodeAsIds(text)
all_ids = np.asarray(ids, dtype=np.uint64)
weighted = int((all_ids * np.arange(1, len(ids) + 1, dtype=np.uint64)).sum(dtype=np.uint64))
print(f"tokenized {len(text)} chars into {len(ids)} tokens in {time.time() - t0:.1f}s")
assert len(ids) >= SEQLEN * WINDOWS

model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, torch_dtype=torch.float32,
                                             attn_implementation="eager").eval()
c = model.config
print("config:", {k: getattr(c, k, None) for k in ["model_type", "query_pre_attn_scalar", "rope_theta",
      "rope_local_base_freq", "sliding_window", "layer_types", "final_logit_softcapping", "rms_norm_eps", "head_dim"]})
win = torch.tensor(ids[: SEQLEN * WINDOWS], dtype=torch.long).view(WINDOWS, SEQLEN)
nll = 0.0
with torch.no_grad():
    for w in range(WINDOWS):
        logits = model(win[w : w + 1]).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        tgt = win[w, 1:]
        nll += float(-logp[:-1].gather(1, tgt[:, None]).double().sum())
        del logits, logp
pred = WINDOWS * (SEQLEN - 1)
ppl = float(np.exp(nll / pred))
np.save(out / "eval_ids.npy", win.numpy().astype(np.int32))
ref = {"source": "transformers %s GGUF loader, torch %s, fp32, eager attention" % (
           __import__("transformers").__version__, torch.__version__),
       "text": "FASP_HOME/text/eval.txt (first %d tokens)" % (SEQLEN * WINDOWS),
       "seqlen": SEQLEN, "windows": WINDOWS, "predicted_tokens": pred, "nll_sum": nll, "ppl": ppl,
       "num_parameters": sum(p.numel() for p in model.parameters()),
       "text_tokens": int(len(ids)), "text_ids_weighted_sum": weighted,
       "tokenizer": "sentencepiece %s on the GGUF vocabulary (scripts/gemma3_spm_ids.py)" % spm_version}
(out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
print(json.dumps(ref, indent=1), f"\n{time.time() - t0:.0f}s")

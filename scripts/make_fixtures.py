#!/usr/bin/env python3
"""Deterministic generation of the fasp-engine test fixtures (tests/fixtures/).

Creates tiny random-weight HF models (OPT, LLaMA MHA, LLaMA GQA, and one per further
family of docs/spec.md §11: llama with llama3 rope scaling and an explicit head_dim,
mistral, qwen2, qwen3, gemma3_text), a tiny byte-level BPE tokenizer, calibration / eval
text, and reference values computed with transformers (dense logits) and with an
independent torch implementation of FASP as pinned in docs/spec.md §2-§7 and §11.

With --roundtrip BIN (scripts/make-fixtures.sh does this after building the engine), the
family fixtures are also pruned by the engine binary BIN with several methods, the written
HF directories are loaded with transformers, and transformers' logits of them are stored
(reference tensors `hf_<method>_logits`): tests/families.rs checks that the engine's own
forward gives the same logits on its own output.

Run through scripts/make-fixtures.sh (which pins the Python environment).
"""
import json
import math
import os
import random
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
import subprocess
import tempfile

from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
VOCAB = 320
SPARSITY = 0.25
DAMP = 0.01

torch.set_num_threads(1)  # determinism of CPU reductions
torch.use_deterministic_algorithms(True)

# --------------------------------------------------------------------------- text

NOUNS = """river mountain village lantern harbor garden library engine window bridge forest
teacher farmer sailor painter child traveler merchant baker doctor student
morning evening winter summer storm cloud island valley meadow orchard
letter story song map compass clock candle basket wagon boat
question answer idea promise secret journey market festival kitchen workshop""".split()
ADJS = """quiet bright old young small large careful gentle distant golden
silver narrow wide cold warm patient curious hidden ancient simple
busy calm green heavy light strange familiar steady clever honest""".split()
VERBS_T = """carried found opened followed painted repaired watched remembered
described built visited crossed measured planted borrowed counted
shared explored cleaned mended studied noticed""".split()
VERBS_I = """waited laughed rested wandered listened worked slept sang
returned paused smiled travelled hurried lingered""".split()
ADVS = """slowly quietly carefully gladly often rarely suddenly patiently
happily early late together alone again""".split()
PLACES = """near the river|beside the old bridge|in the small village|under the tall trees|
at the edge of the forest|inside the busy market|along the narrow road|on the distant island|
behind the quiet library|across the green valley|by the warm kitchen fire|at the top of the hill""".replace(
    "\n", "").split("|")
CONNECT = ["and then", "because", "while", "although", "so", "but", "after", "before"]
TIMES = ["In the morning", "Later that day", "Every winter", "Long ago", "One evening",
         "At noon", "By the end of the week", "Once", "Some years later", "That summer"]


def _np(r):
    return f"the {r.choice(ADJS)} {r.choice(NOUNS)}" if r.random() < 0.6 else f"the {r.choice(NOUNS)}"


def _clause(r):
    k = r.random()
    if k < 0.45:
        return f"{_np(r)} {r.choice(VERBS_T)} {_np(r)}"
    if k < 0.75:
        return f"{_np(r)} {r.choice(VERBS_I)} {r.choice(ADVS)} {r.choice(PLACES)}"
    return f"{_np(r)} {r.choice(VERBS_T)} {_np(r)} {r.choice(PLACES)}"


def _sentence(r):
    k = r.random()
    if k < 0.3:
        s = f"{r.choice(TIMES)}, {_clause(r)}"
    elif k < 0.6:
        s = f"{_clause(r)} {r.choice(CONNECT)} {_clause(r)}"
    elif k < 0.7:
        s = f"Why {r.choice(['had', 'did', 'was'])} {_np(r)} {r.choice(VERBS_I)} {r.choice(PLACES)}"
        return s[0].upper() + s[1:] + "?"
    else:
        s = _clause(r)
    return s[0].upper() + s[1:] + "."


def make_text(seed, target_bytes):
    r = random.Random(seed)
    paras, size = [], 0
    while size < target_bytes:
        p = " ".join(_sentence(r) for _ in range(r.randint(4, 8)))
        paras.append(p)
        size += len(p) + 2
    return "\n\n".join(paras) + "\n"


# --------------------------------------------------------------------------- tokenizer

def make_tokenizer(calib_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train([calib_path], trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return tok


# --------------------------------------------------------------------------- models

def opt_config():
    return OPTConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
        max_position_embeddings=64, do_layer_norm_before=True, word_embed_proj_dim=64,
        enable_bias=True, layer_norm_elementwise_affine=True, tie_word_embeddings=True,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
        activation_function="relu", dtype="float32")


def llama_mha_config():
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=96, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        max_position_embeddings=64, hidden_act="silu", dtype="float32")


def llama_gqa_config():
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=96, rope_theta=100000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        max_position_embeddings=64, hidden_act="silu", dtype="float32")


# The families of docs/spec.md §11. Sliding windows (6) are shorter than the fixture's
# sequences (calibration 16, logits 24), so they matter.
WINDOW = 6


def llama3_config():
    """Llama-3.x rope scaling, an explicit head_dim (4*24 != hidden 64), one KV head."""
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=24, intermediate_size=96, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        max_position_embeddings=64, hidden_act="silu", dtype="float32")


def mistral_config():
    return MistralConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=96, rope_theta=10000.0,
        sliding_window=WINDOW, rms_norm_eps=1e-5, tie_word_embeddings=False,
        max_position_embeddings=64, hidden_act="silu", dtype="float32")


def qwen2_config():
    """q/k/v biases (none on o); layer 1 uses the sliding window (max_window_layers = 1)."""
    return Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, rope_theta=1000000.0,
        use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=64,
        hidden_act="silu", dtype="float32")


def qwen3_config():
    """Per-head q_norm / k_norm, explicit head_dim 16."""
    return Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=96, rope_theta=1000000.0,
        attention_bias=False, use_sliding_window=False, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=64, hidden_act="silu", dtype="float32")


def gemma3_config():
    """(1+w) RMSNorm with pre/post norms, q/k norms, GELU-tanh GLU, embeddings * sqrt(d),
    interleaved sliding (local rope base) and global layers, query_pre_attn_scalar != head_dim,
    final logit soft-cap small enough to bend the logits, and an attention soft-cap that
    transformers does not apply for Gemma-3 (docs/spec.md §11), small enough to show if applied."""
    return Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=96, query_pre_attn_scalar=24,
        rope_theta=1000000.0, rope_local_base_freq=10000.0, sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        final_logit_softcapping=4.0, attn_logit_softcapping=2.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=64,
        hidden_activation="gelu_pytorch_tanh", dtype="float32")


def init_weights(model, seed, std=0.1, unit_sigma=1.0):
    """Seeded N(0, std) weights, 1 + 0.1 N(0,1) norm weights, 0.1 N(0,1) biases.

    Then every prunable unit's W1 rows (v_proj rows; fc1 / up_proj rows, with their biases)
    are scaled by a log-normal factor exp(unit_sigma * N(0,1)), so units differ in importance
    as in trained models: pruning 25% then changes the logits without destroying them, and
    the score ranking has clear margins (robust to fp32-vs-fp64 differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied params appear once
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name and name.endswith("weight"):
                # Gemma's RMSNorm scales by (1 + w): the stored weight is an offset
                p.copy_((0.0 if is_gemma(model) else 1.0) + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(std * noise)
        for layer in layers_of(model):
            w1s = ([attn_mods(layer)[1]], [layer.fc1] if is_opt(model) else [layer.mlp.up_proj])
            for group in w1s:
                scale = torch.exp(unit_sigma * torch.randn(group[0].weight.shape[0], generator=g))
                for lin in group:
                    lin.weight.mul_(scale[:, None])
                    if lin.bias is not None:
                        lin.bias.mul_(scale)


def is_opt(model):
    return model.config.model_type == "opt"


def is_gemma(model):
    return model.config.model_type.startswith("gemma")


def layers_of(model):
    return model.model.decoder.layers if is_opt(model) else model.model.layers


def attn_mods(layer):
    a = layer.self_attn
    return (a.out_proj if hasattr(a, "out_proj") else a.o_proj), a.v_proj


def mlp_w2(layer):
    return layer.fc2 if hasattr(layer, "fc2") else layer.mlp.down_proj


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


# --------------------------------------------------------------------------- FASP reference

class _Stop(Exception):
    pass


def capture_layer_inputs(model, ids):
    """Hidden states entering layer 0, plus per layer the extra args the model passes to it
    (masks and rotary tables differ between sliding and global layers)."""
    store = {}
    layers = layers_of(model)

    def hook(i):
        def pre(mod, args, kwargs):
            store[i] = (args, kwargs)
            if i == len(layers) - 1:
                raise _Stop
        return pre

    hs = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in hs:
            h.remove()
    inps, extra = None, []
    for i in range(len(layers)):
        args, kwargs = store[i][0], dict(store[i][1])
        if args:
            x, rest = args[0], args[1:]
        else:
            x, rest = kwargs.pop("hidden_states"), ()
        if i == 0:
            inps = x
        extra.append((rest, kwargs))
    return inps, extra


def run_layer(layer, inps, rest, kwargs):
    with torch.no_grad():
        out = layer(inps, *rest, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def input_gram(layer, module, inps, rest, kwargs):
    """H = sum over tokens of x x^T (float64) where x is the input of `module`."""
    acc = {}

    def pre(mod, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        acc["H"] = acc.get("H", 0) + x.T @ x
        acc["X"] = x

    h = module.register_forward_pre_hook(pre)
    try:
        run_layer(layer, inps, rest, kwargs)
    finally:
        h.remove()
    return acc["H"], acc["X"]


def n_pruned(n, s):
    return int(math.floor(n * s + 0.5))


def select(unit_scores, k, what):
    if not all(math.isfinite(x) for x in unit_scores):
        raise ValueError(f"non-finite score in {what}")
    order = sorted(range(len(unit_scores)), key=lambda i: (-unit_scores[i], i))
    kept = sorted(order[:k])
    gap = None
    if k < len(order):
        a, b = unit_scores[order[k - 1]], unit_scores[order[k]]
        gap = (a - b) / max(abs(a), 1e-30)
    return kept, gap


def restore(W2, H, S, P, damp=DAMP, max_retries=3):
    """W2' = W2[:,S] + W2[:,P] H[P,S] (H[S,S] + lam I)^-1, float64, Cholesky w/ damping escalation."""
    W2 = W2.double()
    S_t, P_t = torch.tensor(S, dtype=torch.long), torch.tensor(P, dtype=torch.long)
    if len(P) == 0:
        return W2[:, S_t], 0.0, damp, 0
    HSS = H[S_t][:, S_t]
    HSP = H[S_t][:, P_t]  # = H[P,S]^T
    mean_diag = torch.diagonal(HSS).mean().item()
    for retry in range(max_retries + 1):
        lam = damp * mean_diag
        L, info = torch.linalg.cholesky_ex(HSS + lam * torch.eye(len(S), dtype=torch.float64))
        if int(info) == 0 and torch.isfinite(L).all():
            # (H_SS + lam I) M = H_SP W2_P^T  ->  W2' = W2_S + M^T
            M = torch.cholesky_solve(HSP @ W2[:, P_t].T, L)
            return W2[:, S_t] + M.T, lam, damp, retry
        damp *= 10.0
    raise RuntimeError("Cholesky failed after retries")


def check_recon(W2, W2n, X, S, what):
    """Restoration must not increase ||W2 X - W2' X_S||_F on the calibration tokens."""
    S_t = torch.tensor(S, dtype=torch.long)
    ref = X @ W2.T
    e_rest = (ref - X[:, S_t] @ W2n.T).norm().item()
    e_none = (ref - X[:, S_t] @ W2[:, S_t].T).norm().item()
    assert e_rest <= e_none * (1 + 1e-9), (what, e_rest, e_none)
    return e_rest, e_none


def new_linear(weight, bias):
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def fasp_prune(model, calib_ids, sparsity):
    cfg = model.config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    G = heads // kv
    inps, layer_args = capture_layer_inputs(model, calib_ids)
    record, extra = [], {}
    for li, layer in enumerate(layers_of(model)):
        rest, kwargs = layer_args[li]
        # ---- attention pair
        o_proj, v_proj = attn_mods(layer)
        H, X = input_gram(layer, o_proj, inps, rest, kwargs)
        W2 = o_proj.weight.detach().double()
        colscore = torch.sqrt(torch.diagonal(H)) * W2.abs().sum(0)
        n = kv * hd
        unit_cols = [[h * hd + (c % hd) for h in range((c // hd) * G, (c // hd) * G + G)] for c in range(n)]
        scores = [float(sum(colscore[j].item() for j in cols)) for cols in unit_cols]
        k = n - n_pruned(n, sparsity)
        assert k >= 1
        akept, agap = select(scores, k, f"layer {li} attn")
        S = sorted(j for c in akept for j in unit_cols[c])
        P = sorted(set(range(heads * hd)) - set(S))
        W2n, alam, adamp, aretry = restore(W2, H, S, P)
        check_recon(W2, W2n, X, S, f"layer {li} attn")
        with torch.no_grad():
            Wd = torch.zeros_like(o_proj.weight)
            Wd[:, torch.tensor(S)] = W2n.float()
            o_proj.weight.copy_(Wd)
            pr = torch.tensor(sorted(set(range(n)) - set(akept)), dtype=torch.long)
            if len(pr):
                v_proj.weight[pr, :] = 0
                if v_proj.bias is not None:
                    v_proj.bias[pr] = 0
        # independent check of the unit -> column mapping: the o_proj input must now be
        # exactly zero in the pruned columns P (through HF's own repeat_kv) and only there
        _, Xp = input_gram(layer, o_proj, inps, rest, kwargs)
        if len(P):
            assert torch.all(Xp[:, torch.tensor(P)] == 0), f"layer {li}: GQA mapping mismatch"
        assert torch.all(Xp[:, torch.tensor(S)].abs().sum(0) > 0), f"layer {li}: kept column dead"
        if li == 0:
            extra["l0_attn_hdiag"] = torch.diagonal(H).float().clone()
            extra["l0_o_proj_restored"] = o_proj.weight.detach().float().clone()
        # ---- MLP pair
        w2mod = mlp_w2(layer)
        H, X = input_gram(layer, w2mod, inps, rest, kwargs)
        W2 = w2mod.weight.detach().double()
        colscore = torch.sqrt(torch.diagonal(H)) * W2.abs().sum(0)
        n = W2.shape[1]
        k = n - n_pruned(n, sparsity)
        assert k >= 1
        mkept, mgap = select([float(x) for x in colscore.tolist()], k, f"layer {li} mlp")
        P = sorted(set(range(n)) - set(mkept))
        W2n, mlam, mdamp, mretry = restore(W2, H, mkept, P)
        check_recon(W2, W2n, X, mkept, f"layer {li} mlp")
        Sk = torch.tensor(mkept, dtype=torch.long)
        down = new_linear(W2n.float(), None if w2mod.bias is None else w2mod.bias.detach())
        if is_opt(model):
            fc1 = layer.fc1
            layer.fc1 = new_linear(fc1.weight.detach()[Sk], None if fc1.bias is None else fc1.bias.detach()[Sk])
            layer.fc2 = down
        else:
            mlp = layer.mlp
            for nm in ("gate_proj", "up_proj"):
                m = getattr(mlp, nm)
                setattr(mlp, nm, new_linear(m.weight.detach()[Sk], None if m.bias is None else m.bias.detach()[Sk]))
            mlp.down_proj = down
            mlp.intermediate_size = k
        if li == 0:
            extra["l0_mlp_hdiag"] = torch.diagonal(H).float().clone()
            extra["l0_down_restored"] = down.weight.detach().float().clone()
        record.append({"attn_kept_units": akept, "mlp_kept_units": mkept,
                       "attn_lambda": alam, "mlp_lambda": mlam,
                       "_diag": {"attn_gap": agap, "mlp_gap": mgap, "attn_retries": aretry,
                                 "mlp_retries": mretry}})
        # ---- output of the pruned layer
        inps = run_layer(layer, inps, rest, kwargs)
    if is_opt(model):
        cfg.ffn_dim = k
    else:
        cfg.intermediate_size = k
    return record, extra


# --------------------------------------------------------------------------- driver

def build(name, cls, cfg, seed, tok):
    out = os.path.join(FIX, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    torch.manual_seed(seed)
    model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, seed)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    gc = os.path.join(out, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    tok.save(os.path.join(out, "tokenizer.json"))

    def load():
        m = cls.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
        return m.eval()

    g = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, VOCAB, (2, 24), generator=g, dtype=torch.int64)
    calib_ids = torch.randint(0, VOCAB, (4, 16), generator=g, dtype=torch.int64)

    dense = load()
    logits = logits_of(dense, input_ids)
    assert torch.equal(logits, logits_of(model, input_ids)), "saved model differs from in-memory one"
    assert torch.isfinite(logits).all()
    probs = torch.softmax(logits, -1)
    print(f"[{name}] logits std {logits.std():.3f}  mean max-prob {probs.max(-1).values.mean():.3f}  "
          f"distinct argmax {logits.argmax(-1).unique().numel()}")
    assert logits.std() > 0.3 and probs.max(-1).values.mean() < 0.9

    # s = 0 must reproduce the dense logits exactly
    m0 = load()
    fasp_prune(m0, calib_ids, 0.0)
    assert torch.equal(logits_of(m0, input_ids), logits), "s=0 FASP does not reproduce dense logits"

    mp = load()
    record, extra = fasp_prune(mp, calib_ids, SPARSITY)
    fasp_logits = logits_of(mp, input_ids)
    assert torch.isfinite(fasp_logits).all()
    rel = ((fasp_logits - logits).norm() / logits.norm()).item()
    agree = (fasp_logits.argmax(-1) == logits.argmax(-1)).float().mean().item()
    print(f"[{name}] FASP s={SPARSITY}: rel logit diff {rel:.4f}, argmax agreement {agree:.3f}")
    assert 1e-4 < rel < 1.0, rel
    for li, r in enumerate(record):
        d = r.pop("_diag")
        print(f"[{name}]   layer {li}: attn kept {len(r['attn_kept_units'])} lam {r['attn_lambda']:.4g} "
              f"gap {d['attn_gap']:.2e} retries {d['attn_retries']} | mlp kept {len(r['mlp_kept_units'])} "
              f"lam {r['mlp_lambda']:.4g} gap {d['mlp_gap']:.2e} retries {d['mlp_retries']}")

    tensors = {"input_ids": input_ids, "logits": logits.contiguous(), "calib_ids": calib_ids,
               "fasp_logits": fasp_logits.contiguous()}
    tensors.update({k: v.contiguous() for k, v in extra.items()})
    save_file(tensors, os.path.join(out, "reference.safetensors"), metadata={"format": "pt"})
    np.save(os.path.join(out, "calib_ids.npy"), calib_ids.numpy())
    with open(os.path.join(out, "fasp_reference.json"), "w") as f:
        json.dump({"sparsity": SPARSITY, "damp": DAMP, "layers": record}, f, indent=1)
        f.write("\n")


FAMILIES = [
    ("llama3", LlamaForCausalLM, llama3_config, 400),
    ("mistral", MistralForCausalLM, mistral_config, 500),
    ("qwen2", Qwen2ForCausalLM, qwen2_config, 600),
    ("qwen3", Qwen3ForCausalLM, qwen3_config, 700),
    ("gemma3", Gemma3ForCausalLM, gemma3_config, 800),
]
# methods whose written output transformers reloads in --roundtrip (flap adds biases)
ROUNDTRIP_METHODS = ["fasp", "flap"]


def load_written(cls, path):
    """transformers' model of an engine output directory: the family's class, or the
    directory's own code where its config maps one (FLAP biases the class has no slot for)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    if "AutoModelForCausalLM" in cfg.get("auto_map", {}):
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="eager",
                                                 dtype=torch.float32)
    else:
        m = cls.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    return m.eval()


def roundtrip(binary):
    """Prunes every family fixture with the engine, reloads the outputs in transformers and
    stores transformers' logits of them in the fixture's reference.safetensors."""
    from safetensors.torch import load_file
    for name, cls, _, _ in FAMILIES:
        fix = os.path.join(FIX, name)
        ref_path = os.path.join(fix, "reference.safetensors")
        ref = load_file(ref_path)
        ref = {k: v for k, v in ref.items() if not k.startswith("hf_")}
        ids = ref["input_ids"]
        with tempfile.TemporaryDirectory() as tmp:
            for method in ROUNDTRIP_METHODS:
                out = os.path.join(tmp, method)
                cmd = [binary, "prune", "--model", fix, "--calib", os.path.join(fix, "calib_ids.npy"),
                       "--sparsity", str(SPARSITY), "--method", method, "--device", "cpu", "--out", out]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                model = load_written(cls, out)
                # every tensor of the written file is a parameter of the loaded model (nothing dropped)
                from safetensors import safe_open
                with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
                    written = set(f.keys())
                params = set(model.state_dict().keys())
                dropped = written - params
                assert not dropped, f"{name} {method}: transformers dropped {sorted(dropped)[:4]}"
                logits = logits_of(model, ids)
                assert torch.isfinite(logits).all()
                rel = ((logits - ref["logits"]).norm() / ref["logits"].norm()).item()
                print(f"[{name}] {method}: written output reloaded in transformers, rel logit diff to dense {rel:.4f}")
                ref[f"hf_{method.replace('-', '_')}_logits"] = logits.contiguous()
        save_file(ref, ref_path, metadata={"format": "pt"})


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--roundtrip":
        roundtrip(sys.argv[2])
        return 0
    os.makedirs(FIX, exist_ok=True)
    calib_path = os.path.join(FIX, "calib.txt")
    with open(calib_path, "w") as f:
        f.write(make_text(1234, 30000))
    with open(os.path.join(FIX, "eval.txt"), "w") as f:
        f.write(make_text(5678, 7000))
    tok = make_tokenizer(calib_path)
    build("opt-tiny", OPTForCausalLM, opt_config(), 100, tok)
    build("llama-mha", LlamaForCausalLM, llama_mha_config(), 200, tok)
    build("llama-gqa", LlamaForCausalLM, llama_gqa_config(), 300, tok)
    for name, cls, cfg, seed in FAMILIES:
        build(name, cls, cfg(), seed, tok)
    total = 0
    for dp, _, fs in sorted(os.walk(FIX)):
        for fn in sorted(fs):
            p = os.path.join(dp, fn)
            sz = os.path.getsize(p)
            total += sz
            print(f"{sz:>9}  {os.path.relpath(p, ROOT)}")
    print(f"{total:>9}  total bytes")
    assert total < 8 * 1024 * 1024
    for name, _, _, _ in FAMILIES:  # each family fixture stays small (with --roundtrip's logits: +123 KB)
        d = os.path.join(FIX, name)
        assert sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) < 800 * 1024, name


if __name__ == "__main__":
    sys.exit(main())

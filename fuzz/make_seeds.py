#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus into fuzz/seeds/<target>/ (standard library only; the
output is committed, so this runs only when the seeds change). Every seed is a small valid input
of its format (a few malformed ones too), so the fuzzer starts from the accepted paths."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

# A tiny LLaMA: hidden 8, 2 heads of 4, 1 KV head, ffn 16, vocab 16, 1 layer, tied head.
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 4, "hidden_act": "silu", "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "vocab_size": 16, "max_position_embeddings": 64, "tie_word_embeddings": True}
H, F, V, Q, KV = 8, 16, 16, 8, 4
TENSORS = [("model.embed_tokens.weight", [V, H]), ("model.norm.weight", [H]),
           ("model.layers.0.input_layernorm.weight", [H]), ("model.layers.0.post_attention_layernorm.weight", [H]),
           ("model.layers.0.self_attn.q_proj.weight", [Q, H]), ("model.layers.0.self_attn.k_proj.weight", [KV, H]),
           ("model.layers.0.self_attn.v_proj.weight", [KV, H]), ("model.layers.0.self_attn.o_proj.weight", [H, Q]),
           ("model.layers.0.mlp.gate_proj.weight", [F, H]), ("model.layers.0.mlp.up_proj.weight", [F, H]),
           ("model.layers.0.mlp.down_proj.weight", [H, F])]


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def safetensors(tensors, dtype, meta=None):
    size = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    header, data = {}, b""
    for i, (name, shape) in enumerate(tensors):
        n = numel(shape)
        if dtype == "F32":
            raw = b"".join(struct.pack("<f", ((j * 7 + i) % 11 - 5) / 50) for j in range(n))
        elif dtype == "F16":
            raw = b"".join(struct.pack("<e", ((j * 7 + i) % 11 - 5) / 50) for j in range(n))
        else:  # bf16: the high half of the f32
            raw = b"".join(struct.pack("<f", ((j * 7 + i) % 11 - 5) / 50)[2:] for j in range(n))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n * size]}
        data += raw
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


# --- gguf -------------------------------------------------------------------------------------
GG = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22),
      "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
      "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210), "BF16": (30, 1, 2)}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(v):
    """(type id, bytes) of a metadata value."""
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, int):
        return (4, struct.pack("<I", v)) if v >= 0 else (5, struct.pack("<i", v))
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, gstr(v)
    if isinstance(v, tuple):  # (type id, payload) given explicitly
        return v
    if isinstance(v, list):
        t = gval(v[0])[0] if v else 4
        return 9, struct.pack("<IQ", t, len(v)) + b"".join(gval(x)[1] for x in v)
    raise TypeError(v)


def gguf(meta, tensors, align=32):
    """tensors: (name, dims ne0-first, type name)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for k, v in meta.items():
        t, b = gval(v)
        out += gstr(k) + struct.pack("<I", t) + b
    data = b""
    infos = b""
    for name, dims, ty in tensors:
        tid, be, bb = GG[ty]
        n = numel(dims)
        nbytes = n // be * bb
        data += b"\0" * (-len(data) % align)
        infos += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", tid, len(data))
        if ty == "F32":
            data += b"".join(struct.pack("<f", ((j * 5) % 9 - 4) / 40) for j in range(n))
        elif ty == "F16":
            data += b"".join(struct.pack("<e", ((j * 5) % 9 - 4) / 40) for j in range(n))
        else:  # 0x11 bytes: small finite scales and nibbles in every block format
            data += b"\x11" * nbytes
    out += infos
    out += b"\0" * (-len(out) % align)
    return out + data


def llama_gguf(hidden, ffn, types):
    vocab = ["a", "b", "c", "ab", "bc", "abc", "Ġ", "Ġa", "1", "2", "<s>", "</s>", "d", "e", "f", "g"]
    meta = {"general.architecture": "llama", "general.name": "fuzz-seed", "general.alignment": 32,
            "llama.context_length": 64, "llama.embedding_length": hidden, "llama.feed_forward_length": ffn,
            "llama.block_count": 1, "llama.attention.head_count": 2, "llama.attention.head_count_kv": 1,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.rope.freq_base": 10000.0,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": vocab,
            "tokenizer.ggml.token_type": [1] * 10 + [3, 3] + [1] * 4, "tokenizer.ggml.merges": ["a b", "b c", "ab c", "Ġ a"],
            "tokenizer.ggml.bos_token_id": 10, "tokenizer.ggml.eos_token_id": 11}
    hd = hidden // 2
    t = [("token_embd.weight", [hidden, 16], types[0]), ("output_norm.weight", [hidden], "F32"),
         ("blk.0.attn_norm.weight", [hidden], "F32"), ("blk.0.ffn_norm.weight", [hidden], "F32"),
         ("blk.0.attn_q.weight", [hidden, hidden], types[1]), ("blk.0.attn_k.weight", [hidden, hd], types[2]),
         ("blk.0.attn_v.weight", [hidden, hd], types[3]), ("blk.0.attn_output.weight", [hidden, hidden], types[4]),
         ("blk.0.ffn_gate.weight", [hidden, ffn], types[5]), ("blk.0.ffn_up.weight", [hidden, ffn], types[6]),
         ("blk.0.ffn_down.weight", [ffn, hidden], types[7])]
    return gguf(meta, t)


def main():
    # config.json
    put("config", "tiny_llama.json", json.dumps(TINY))
    with open(os.path.join(SEEDS, "tiny_config.json"), "w") as f:
        json.dump(TINY, f, indent=1)
    opt = {"model_type": "opt", "hidden_size": 8, "ffn_dim": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "vocab_size": 16, "max_position_embeddings": 64, "do_layer_norm_before": True, "word_embed_proj_dim": 8,
           "activation_function": "relu", "enable_bias": True}
    put("config", "tiny_opt.json", json.dumps(opt))
    l3 = dict(TINY, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    put("config", "llama3_rope.json", json.dumps(l3))
    put("config", "mistral.json", json.dumps(dict(TINY, model_type="mistral", sliding_window=16)))
    put("config", "qwen2.json", json.dumps(dict(TINY, model_type="qwen2", use_sliding_window=False)))
    put("config", "qwen3.json", json.dumps(dict(TINY, model_type="qwen3")))
    g3 = dict(TINY, model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=4,
              sliding_window=16, layer_types=["sliding_attention"], final_logit_softcapping=30.0,
              rope_local_base_freq=10000.0)
    put("config", "gemma3.json", json.dumps(g3))
    put("config", "wrong_type.json", json.dumps(dict(TINY, tie_word_embeddings="yes")))

    # safetensors (beside the tiny config) and the sharded index
    put("safetensors", "tiny_f32.safetensors", safetensors(TENSORS, "F32"))
    put("safetensors", "tiny_f16.safetensors", safetensors(TENSORS, "F16", {"format": "pt"}))
    put("safetensors", "tiny_bf16.safetensors", safetensors(TENSORS, "BF16"))
    put("safetensors", "truncated.safetensors", safetensors(TENSORS, "F16")[:-7])
    index = {"metadata": {"total_size": 16}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                                            "b.weight": "model-00002-of-00002.safetensors"}}
    put("safetensors_index", "two_shards.json", json.dumps(index))
    put("safetensors_index", "bad_name.json", json.dumps({"weight_map": {"a.weight": "../x.safetensors"}}))

    # gguf: the tiny llama in several tensor types, and one tensor of every K-quant
    put("gguf", "tiny_llama_mixed.gguf", llama_gguf(32, 32, ["Q8_0", "F16", "Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q5_1", "F32"]))
    put("gguf", "tiny_llama_f16.gguf", llama_gguf(32, 32, ["F16"] * 8))
    put("gguf", "tiny_llama_bf16.gguf", llama_gguf(32, 32, ["BF16"] * 8))
    for k in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        put("gguf", f"one_{k}.gguf", gguf({"general.architecture": "llama"}, [("blk.0.ffn_down.weight", [256, 1], k)]))
    kinds = {"u8": (0, b"\x01"), "i8": (1, b"\xff"), "u16": (2, b"\x01\x00"), "i16": (3, b"\xff\xff"),
             "u64": (10, struct.pack("<Q", 7)), "i64": (11, struct.pack("<q", -7)), "f64": (12, struct.pack("<d", 0.5)),
             "nested": (9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 2) + struct.pack("<II", 1, 2))}
    put("gguf", "metadata_types.gguf", gguf(kinds, []))

    # .npy token ids: 1-D and 2-D, several integer dtypes
    def npy(descr, shape, values, fortran=False):
        hdr = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, repr(tuple(shape)))
        hdr += " " * (-(10 + len(hdr) + 1) % 64) + "\n"
        fmt = {"<i8": "<q", "<i4": "<i", "<u2": "<H", "<u8": "<Q", "<i2": "<h", "<u4": "<I", "<f4": "<f"}[descr]
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + b"".join(struct.pack(fmt, v) for v in values)
    put("npy", "stream_i64.npy", npy("<i8", [12], list(range(12))))
    put("npy", "windows_i32.npy", npy("<i4", [3, 4], list(range(12))))
    put("npy", "stream_u16.npy", npy("<u2", [6], [1, 2, 3, 4, 5, 6]))
    put("npy", "windows_u8bytes.npy", npy("<u8", [2, 2], [1, 2, 3, 4]))
    put("npy", "fortran.npy", npy("<i2", [2, 2], [1, 2, 3, 4], fortran=True))
    put("npy", "float.npy", npy("<f4", [2], [1.0, 2.0]))

    # report: sweep CSVs
    head = "method,sparsity,eval,ppl,windows,seqlen,params,prune_seconds\n"
    put("report_csv", "sweep.csv", head + "dense,0,wiki,26.8,8,256,134515008,0\nfasp,0.2,wiki,41.5,8,256,106634304,12.5\n"
        "fasp-no-restore,0.2,wiki,44.1,8,256,106634304,9.1\nwanda-sp,0.1,news,30.2,4,256,120000000,3.0\n")
    put("report_csv", "header_only.csv", head)
    put("report_csv", "bad_field.csv", head + "fasp,0.2,wiki,nan,8,256,1,1\n")

    # fasp.json records: a prune's and a bench --write's
    rec = {"engine": "fasp-engine", "version": "0.1.0", "model": "m.gguf", "model_type": "llama", "method": "fasp",
           "settings": {"sparsity": 0.2, "damp": 0.01, "restore": True, "skip_attn": False, "seed": 0, "compact": False,
                        "dtype": "f16", "device": "auto"},
           "backend": "cpu", "calibration": {"path": "calib.txt", "kind": "text", "stream_tokens": 5000, "nsamples": 8,
                                             "seqlen": 64, "seed": 0, "sampler": "chacha8-uniform-start"},
           "params": {"original": 1000, "dense_equivalent": 900, "compact": 800},
           "phases_seconds": {"embed": 0.1, "load_weights": 0.2}, "prune_seconds": 1.0, "total_seconds": 2.0,
           "eval": {"path": "eval.txt", "seconds_in_pipeline": 0.5, "dense": {"ppl": 10.0, "nll_sum": 100.0, "seqlen": 64,
                    "windows": 4, "predicted_tokens": 252}, "pruned": {"ppl": 12.0, "nll_sum": 110.0, "seqlen": 64,
                    "windows": 4, "predicted_tokens": 252}},
           "layers": [{"layer": 0, "attn_kept_units": [0, 2, 3], "mlp_kept_units": [1, 2, 4, 5]},
                      {"layer": 1, "attn_kept_units": [1, 2, 3], "mlp_kept_units": [0, 1, 2]}]}
    put("fasp_json", "prune.json", json.dumps(rec))
    bench = {"engine": "fasp-engine", "version": "0.1.0", "model": "synthetic:tiny", "synthetic_seed": 0, "method": "fasp",
             "settings": {"sparsity": 0.2, "nsamples": 4, "seqlen": 32, "device": "cpu"}, "backend": "cpu",
             "layers": [{"layer": 0, "attn_units": 4, "attn_kept": 3, "mlp_units": 8, "mlp_kept": 6}]}
    put("fasp_json", "bench.json", json.dumps(bench))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""SentencePiece's own encoding of a text with the Gemma-3 GGUF vocabulary (issue #12).

The GGUF carries Gemma's SentencePiece vocabulary (tokenizer.ggml.model = llama): pieces, scores
(-rank) and types. This rebuilds the SentencePiece model proto from it (model type BPE, byte
fallback, identity normalization without a dummy prefix, whitespace escaped as U+2581: Gemma's
settings) and encodes with the `sentencepiece` library itself: the reference for the engine's
tokenizer. llama.cpp stores user-defined whitespace pieces with spaces; they are spelled with U+2581
again here. Usage: gemma3_spm_ids.py GGUF TEXT OUT.npy  (writes all ids as int32)
"""
import sys
import numpy as np
import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb


def build(gguf_path):
    r = gguf.GGUFReader(gguf_path)
    f = r.fields
    def arr(k):
        fl = f[k]
        return [fl.contents(i) for i in range(len(fl.data))] if hasattr(fl, "contents") else [fl.parts[j] for j in fl.data]
    tokens = f["tokenizer.ggml.tokens"].contents()
    scores = f["tokenizer.ggml.scores"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.unk_id = int(f["tokenizer.ggml.unknown_token_id"].contents())
    m.trainer_spec.bos_id = int(f["tokenizer.ggml.bos_token_id"].contents())
    m.trainer_spec.eos_id = int(f["tokenizer.ggml.eos_token_id"].contents())
    m.trainer_spec.pad_id = int(f["tokenizer.ggml.padding_token_id"].contents())
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for t, s, ty in zip(tokens, scores, types):
        p = m.pieces.add()
        p.piece = t.replace(" ", "\u2581") if ty == 4 else t
        p.score = float(s)
        p.type = int(ty)
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp


if __name__ == "__main__":
    sp = build(sys.argv[1])
    text = open(sys.argv[2], encoding="utf-8").read()
    ids = sp.EncodeAsIds(text)
    np.save(sys.argv[3], np.asarray(ids, dtype=np.int32))
    print(f"{len(text)} chars -> {len(ids)} tokens")

#!/usr/bin/env python3
"""Test vectors for the GGUF block dequantizers (src/gguf.rs), made once with the `gguf` Python
package's own dequantizer, so that CI needs no Python for tests/gguf_quants.rs.

For each type it writes tests/fixtures/gguf_quants/<TYPE>.bin:
    magic b"FQV1", u32 type id, u32 number of blocks, u32 block bytes, u32 block elems,
    then the raw blocks, then the expected f32 values (little-endian).
The blocks are seeded random bytes (every bit pattern of the quants, scales and masks) whose f16
scale fields are replaced by finite random halves, plus two edge blocks (all quant bits 0 and
all quant bits 1). Run with the pinned venv:
    python3 -m venv .venv-gguf && .venv-gguf/bin/pip install gguf==0.19.0 numpy==2.3.5
    .venv-gguf/bin/python scripts/make_quant_vectors.py
"""
import pathlib
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/gguf_quants"
N_RANDOM = 30

# Byte offsets of the f16 scale fields inside one block (ggml's block layouts).
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],  # scales[16], qs[64], d, dmin
    T.Q3_K: [108],  # hmask[32], qs[64], scales[12], d
    T.Q4_K: [0, 2],  # d, dmin, scales[12], qs[128]
    T.Q5_K: [0, 2],  # d, dmin, scales[12], qh[32], qs[128]
    T.Q6_K: [208],  # ql[128], qh[64], scales[16], d
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261202)
    for ty, fields in F16_FIELDS.items():
        elems, nbytes = GGML_QUANT_SIZES[ty]
        blocks = rng.integers(0, 256, size=(N_RANDOM + 2, nbytes), dtype=np.uint8)
        blocks[N_RANDOM] = 0
        blocks[N_RANDOM + 1] = 0xFF
        for off in fields:
            # finite halves of both signs over several magnitudes, never inf/nan
            vals = (rng.standard_normal(N_RANDOM + 2) * 10.0 ** rng.integers(-4, 1, N_RANDOM + 2)).astype(np.float16)
            vals[N_RANDOM:] = [np.float16(0.0625), np.float16(-1.5)]
            blocks[:, off : off + 2] = vals.view(np.uint8).reshape(-1, 2)
        raw = blocks.reshape(-1)
        want = dequantize(raw, ty).astype(np.float32).reshape(-1)
        assert want.size == blocks.shape[0] * elems and np.isfinite(want).all(), ty.name
        hdr = b"FQV1" + struct.pack("<IIII", int(ty), blocks.shape[0], nbytes, elems)
        path = OUT / f"{ty.name}.bin"
        path.write_bytes(hdr + raw.tobytes() + want.astype("<f4").tobytes())
        print(f"{path.name}: {blocks.shape[0]} blocks, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()

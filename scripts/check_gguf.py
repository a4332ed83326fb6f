#!/usr/bin/env python3
"""Checks a GGUF file written by fasp-engine with the `gguf` Python package (gguf-py, llama.cpp's
own reader and quantizer), against expectations given as JSON. Called by tests/gguf_export.rs.

    check_gguf.py EXPECT.json

EXPECT.json:
  file        the GGUF to check
  tensors     [{"name", "shape" (ne0 first), "type" (e.g. "F32", "Q8_0")}]: exactly the file's tensors
  metadata    {key: value}: each key present with this value (floats to 1e-6 relative)
  reference   optional: a GGUF with the same tensors in F32; every Q8_0 / F16 / BF16 tensor of `file`
              must be byte-equal to gguf-py's quantization of the reference's data (zero-padded to
              the tensor's shape, as the MLP is padded for Q8_0)
  q8_pairs    optional: [[f32 name, q8_0 name]] inside `file`: the Q8_0 bytes equal gguf-py's
              quantization of the F32 tensor
Prints one line per check and exits 1 on the first mismatch.
"""
import json
import sys

import numpy as np
import gguf
from gguf.quants import quantize


def fail(msg):
    print(f"check_gguf: FAIL: {msg}")
    sys.exit(1)


def field_value(field):
    return field.contents()


def same(a, b):
    if isinstance(b, float) or isinstance(a, float):
        return abs(float(a) - float(b)) <= 1e-6 * max(abs(float(b)), 1e-30)
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def tensor_map(reader):
    return {t.name: t for t in reader.tensors}


def encoded(ref, qtype, shape_rows, shape_cols):
    """gguf-py's encoding of a float32 [rows, cols] array, zero-padded to the target shape."""
    ref = np.asarray(ref, dtype=np.float32).reshape(-1, ref.shape[-1]) if ref.ndim > 1 else np.asarray(ref, np.float32)[None, :]
    pad = [(0, shape_rows - ref.shape[0]), (0, shape_cols - ref.shape[1])]
    if any(p[1] < 0 for p in pad):
        fail(f"reference is larger than the tensor: {ref.shape} vs {(shape_rows, shape_cols)}")
    ref = np.pad(ref, pad)
    if qtype == gguf.GGMLQuantizationType.F16:
        return ref.astype(np.float16).view(np.uint8).reshape(-1)
    return np.asarray(quantize(ref, qtype)).view(np.uint8).reshape(-1)


def main():
    if len(sys.argv) != 2:
        fail("usage: check_gguf.py EXPECT.json")
    with open(sys.argv[1]) as f:
        exp = json.load(f)
    reader = gguf.GGUFReader(exp["file"])
    tensors = tensor_map(reader)

    want = {t["name"]: t for t in exp.get("tensors", [])}
    if want:
        missing = sorted(set(want) - set(tensors))
        extra = sorted(set(tensors) - set(want))
        if missing or extra:
            fail(f"tensor names differ: missing {missing[:10]}, unexpected {extra[:10]}")
        for name, t in want.items():
            got = tensors[name]
            shape = [int(x) for x in got.shape]
            if shape != t["shape"]:
                fail(f"{name}: shape {shape}, expected {t['shape']}")
            if got.tensor_type.name != t["type"]:
                fail(f"{name}: type {got.tensor_type.name}, expected {t['type']}")
        print(f"check_gguf: {len(want)} tensors with the expected names, shapes and types")

    meta = exp.get("metadata", {})
    for key, value in meta.items():
        field = reader.fields.get(key)
        if field is None:
            fail(f"metadata key {key} is missing")
        got = field_value(field)
        if not same(got, value):
            fail(f"metadata {key} = {got!r}, expected {value!r}")
    if meta:
        print(f"check_gguf: {len(meta)} metadata keys with the expected values")

    if exp.get("reference"):
        ref = tensor_map(gguf.GGUFReader(exp["reference"]))
        n = 0
        for name, t in tensors.items():
            if t.tensor_type not in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16):
                continue
            if name not in ref:
                fail(f"{name}: not in the reference file")
            rows = int(np.prod([int(x) for x in t.shape[1:]])) if len(t.shape) > 1 else 1
            cols = int(t.shape[0])
            want_bytes = encoded(np.asarray(ref[name].data), t.tensor_type, rows, cols)
            got_bytes = np.asarray(t.data).view(np.uint8).reshape(-1)
            if want_bytes.shape != got_bytes.shape or not np.array_equal(want_bytes, got_bytes):
                bad = int(np.argmax(want_bytes != got_bytes)) if want_bytes.shape == got_bytes.shape else -1
                fail(f"{name} ({t.tensor_type.name}): bytes differ from gguf-py's encoding of the reference (first at byte {bad})")
            n += 1
        print(f"check_gguf: {n} Q8_0/F16 tensors byte-equal to gguf-py's quantization of the F32 reference")

    for f32_name, q_name in exp.get("q8_pairs", []):
        src, q = tensors[f32_name], tensors[q_name]
        if q.tensor_type != gguf.GGMLQuantizationType.Q8_0:
            fail(f"{q_name}: type {q.tensor_type.name}, expected Q8_0")
        data = np.asarray(src.data, dtype=np.float32)
        want_bytes = encoded(data, q.tensor_type, data.reshape(-1, data.shape[-1]).shape[0], data.shape[-1])
        got_bytes = np.asarray(q.data).view(np.uint8).reshape(-1)
        if not np.array_equal(want_bytes, got_bytes):
            fail(f"{q_name}: Q8_0 bytes differ from gguf-py's quantization of {f32_name}")
    if exp.get("q8_pairs"):
        print(f"check_gguf: {len(exp['q8_pairs'])} seeded Q8_0 tensors byte-equal to gguf-py's quantizer")
    print("check_gguf: ok")


if __name__ == "__main__":
    main()

//! Block-by-block check of every GGUF dequantizer against the `gguf` Python package's own
//! dequantizer (gguf==0.19.0). The vectors in tests/fixtures/gguf_quants/ were made once by
//! scripts/make_quant_vectors.py: seeded random blocks (every bit pattern of quants, scales and
//! masks, finite f16 scales) plus an all-zero-bits and an all-one-bits block per type.

use std::path::PathBuf;

use fasp_engine::gguf::{dequantize, ggml_type};

struct Vectors {
    type_id: u32,
    n_blocks: usize,
    block_bytes: usize,
    block_elems: usize,
    raw: Vec<u8>,
    want: Vec<f32>,
}

fn load(name: &str) -> Vectors {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_quants").join(format!("{name}.bin"));
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..4], b"FQV1", "{name}: magic");
    let u = |i: usize| u32::from_le_bytes(b[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize;
    let (type_id, n_blocks, block_bytes, block_elems) = (u(0) as u32, u(1), u(2), u(3));
    let raw_end = 20 + n_blocks * block_bytes;
    let raw = b[20..raw_end].to_vec();
    let want: Vec<f32> = b[raw_end..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(want.len(), n_blocks * block_elems, "{name}: expected values");
    Vectors { type_id, n_blocks, block_bytes, block_elems, raw, want }
}

/// Dequantizes the whole run and then each block alone; both must equal gguf's values bit for bit.
fn check(name: &str) {
    let v = load(name);
    let ty = ggml_type(v.type_id).unwrap();
    assert_eq!(ty.name, name);
    assert_eq!((ty.block_bytes as usize, ty.block_elems as usize), (v.block_bytes, v.block_elems), "{name}: geometry");
    let all = dequantize(&v.raw, ty, v.n_blocks * v.block_elems).unwrap_or_else(|| panic!("{name}: not supported"));
    for k in 0..v.n_blocks {
        let one = dequantize(&v.raw[k * v.block_bytes..(k + 1) * v.block_bytes], ty, v.block_elems).unwrap();
        let want = &v.want[k * v.block_elems..(k + 1) * v.block_elems];
        for (j, ((&a, &b), &w)) in all[k * v.block_elems..].iter().zip(&one).zip(want).enumerate() {
            assert!(a.to_bits() == w.to_bits() && b.to_bits() == w.to_bits(), "{name} block {k} weight {j}: got {a} / {b}, gguf says {w}");
        }
    }
    // The vectors are not degenerate: the values vary and the edge blocks differ.
    let distinct: std::collections::HashSet<u32> = v.want.iter().map(|x| x.to_bits()).collect();
    assert!(distinct.len() > v.block_elems.min(64), "{name}: only {} distinct values", distinct.len());
}

#[test]
fn q4_0() {
    check("Q4_0");
}
#[test]
fn q4_1() {
    check("Q4_1");
}
#[test]
fn q5_0() {
    check("Q5_0");
}
#[test]
fn q5_1() {
    check("Q5_1");
}
#[test]
fn q8_0() {
    check("Q8_0");
}
#[test]
fn q2_k() {
    check("Q2_K");
}
#[test]
fn q3_k() {
    check("Q3_K");
}
#[test]
fn q4_k() {
    check("Q4_K");
}
#[test]
fn q5_k() {
    check("Q5_K");
}
#[test]
fn q6_k() {
    check("Q6_K");
}

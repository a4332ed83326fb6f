//! Checks against the real Gemma-3 270M Q4_K_M GGUF fetched by scripts/fetch-assets.sh: every
//! tensor of every storage type in it (Q4_K, Q5_0, Q6_K, Q8_0, F32) dequantizes to finite
//! weights of a plausible size; the file resolves to the gemma3_text description with Gemma-3's
//! defaults; its tokenizer gives the `sentencepiece` library's ids on the whole evaluation text; its
//! dense perplexity matches transformers' (tests/fixtures/gemma3, from scripts/reference_gemma3.py).
//! Skips (with a message) when the assets are not there.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

use fasp_engine::calib::{self, Tokens};
use fasp_engine::gguf::GgufFile;
use fasp_engine::model::{Family, Model};

fn home() -> Option<PathBuf> {
    std::env::var_os("FASP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fasp-engine")))
}

fn model_path() -> Option<PathBuf> {
    let p = home()?.join("gemma3-270m/gemma-3-270m-q4_k_m.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIP: {} not found (run scripts/fetch-assets.sh)", p.display());
        None
    }
}

fn eval_text() -> Option<String> {
    let p = home()?.join("text/eval.txt");
    match std::fs::read_to_string(&p) {
        Ok(t) => Some(t),
        Err(_) => {
            eprintln!("SKIP: {} not found (run scripts/fetch-assets.sh)", p.display());
            None
        }
    }
}

fn reference() -> serde_json::Value {
    read_json(&fixture("gemma3/reference.json"))
}

fn eval_ids() -> (Vec<u32>, usize) {
    match calib::read_npy(&fixture("gemma3/eval_ids.npy"), calib::Role::Evaluation).unwrap() {
        Tokens::Windows { ids, seqlen, .. } => (ids, seqlen),
        Tokens::Stream(_) => panic!("eval_ids.npy is 2-D"),
    }
}

/// `Σ (i+1)·id mod 2^64` over the ids (the reference script's check of the whole text).
fn weighted_sum(ids: &[u32]) -> u64 {
    ids.iter().enumerate().fold(0u64, |h, (i, &id)| h.wrapping_add((i as u64 + 1).wrapping_mul(id as u64)))
}

#[test]
fn gemma3_tensors_dequantize() {
    let Some(path) = model_path() else { return };
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.metadata("general.architecture").unwrap().as_str(), Some("gemma3"));
    let mut types = BTreeMap::new();
    for t in g.tensor_infos() {
        *types.entry(t.ty.name).or_insert(0) += 1;
    }
    let want: BTreeMap<&str, i32> = [("F32", 109), ("Q4_K", 27), ("Q5_0", 81), ("Q6_K", 9), ("Q8_0", 10)].into_iter().collect();
    assert_eq!(types, want);
    let mut params = 0usize;
    for t in g.tensor_infos() {
        params += t.n_elements as usize;
        if t.name == "token_embd.weight" {
            continue; // 168M weights of Q8_0, a type the block tests already cover
        }
        let (shape, w) = g.tensor_f32(&t.name).unwrap();
        assert_eq!(w.len(), shape.iter().product::<usize>(), "{}", t.name);
        assert!(w.iter().all(|x| x.is_finite()), "{}", t.name);
        let rms = (w.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / w.len() as f64).sqrt();
        assert!(rms > 1e-3 && rms < 1000.0, "{} ({}): rms {rms}", t.name, t.ty.name);
    }
    assert_eq!(params, 268_098_176);
}

#[test]
fn gemma3_resolves_to_its_description() {
    let Some(path) = model_path() else { return };
    let m = Model::open(&path).unwrap();
    let c = &m.cfg;
    assert_eq!(c.family, Family::Gemma3);
    assert_eq!((c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim, c.ffn, c.vocab), (18, 640, 4, 1, 256, 2048, 262_144));
    // every 6th layer global, the others sliding over 512 tokens with their own rope base
    let globals: Vec<usize> = (0..18).filter(|&l| c.window(l).is_none()).collect();
    assert_eq!(globals, vec![5, 11, 17]);
    assert!((0..18).filter(|l| !globals.contains(l)).all(|l| c.window(l) == Some(512)));
    assert_eq!(c.layer_rope(0).unwrap().theta, 10000.0);
    assert_eq!(c.layer_rope(5).unwrap().theta, 1_000_000.0);
    assert_eq!(c.attn_scale, 1.0 / 16.0); // query_pre_attn_scalar 256
    assert_eq!(c.final_logit_softcap, None);
    assert_eq!(c.norm_eps, 1e-6);
    assert!(m.head_is_tied());
    assert_eq!(m.param_count(), 268_098_176);
    // the GGUF stores (1 + w) for every norm; the model sees w
    let g = GgufFile::open(&path).unwrap();
    for (gguf, hf) in [
        ("blk.3.attn_norm.weight", "model.layers.3.input_layernorm.weight"),
        ("blk.3.attn_k_norm.weight", "model.layers.3.self_attn.k_norm.weight"),
        ("blk.3.post_ffw_norm.weight", "model.layers.3.post_feedforward_layernorm.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ] {
        let raw = g.tensor_f32(gguf).unwrap().1;
        let w = m.load(hf).unwrap();
        assert!(raw.iter().zip(&w).all(|(r, w)| *w == r - 1.0), "{hf}");
    }
}

#[test]
fn gemma3_tokenizer_matches_sentencepiece_on_the_eval_text() {
    let (Some(path), Some(text)) = (model_path(), eval_text()) else { return };
    let m = Model::open(&path).unwrap();
    let tok = m.tokenizer().unwrap().expect("the GGUF carries a tokenizer");
    assert_eq!(tok.get_vocab_size(true), 262_144);
    let r = reference();
    let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    let (head, _) = eval_ids();
    let same = ids.iter().zip(&head).take_while(|(a, b)| a == b).count();
    assert!(same >= head.len(), "tokenizers diverge at token {same} of {}", head.len());
    assert_eq!(ids.len() as u64, r["text_tokens"].as_u64().unwrap());
    assert_eq!(weighted_sum(&ids), r["text_ids_weighted_sum"].as_u64().unwrap(), "ids of the whole text differ from SentencePiece's");
    // spaces, byte fallback and control tokens
    let enc = tok.encode("Hello  world\t🦀<bos>", false).unwrap();
    assert_eq!(enc.get_ids().last(), Some(&2), "{:?}", enc.get_tokens());
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), "Hello  world\t🦀<bos>");
    // with special tokens, BOS (id 2) comes first, as add_bos_token says
    assert_eq!(tok.encode("Hello", true).unwrap().get_ids()[0], 2);
}

#[test]
fn gemma3_dense_perplexity_matches_transformers() {
    let Some(path) = model_path() else { return };
    let model = Model::open(&path).unwrap();
    let r = reference();
    let (ids, seqlen) = eval_ids();
    let p = fasp_engine::eval::perplexity(&model, &ids, seqlen, |_| {}).unwrap();
    let want = r["ppl"].as_f64().unwrap();
    println!("Gemma-3 270M dense ppl: engine {:.5}, transformers {want:.5} ({} windows of {seqlen})", p.ppl, p.windows);
    assert_eq!(p.predicted_tokens as u64, r["predicted_tokens"].as_u64().unwrap());
    assert!((p.ppl / want - 1.0).abs() <= 1e-3, "engine {} vs transformers {want}", p.ppl);
}

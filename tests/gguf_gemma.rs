//! Checks against the real Gemma-3 270M Q4_K_M GGUF fetched by scripts/fetch-assets.sh: every
//! tensor of every storage type in it (Q4_K, Q5_0, Q6_K, Q8_0, F32) dequantizes to finite
//! weights of a plausible size. Skips (with a message) when the file is not there.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fasp_engine::gguf::GgufFile;

fn model_path() -> Option<PathBuf> {
    let home = std::env::var_os("FASP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fasp-engine")))?;
    let p = home.join("gemma3-270m/gemma-3-270m-q4_k_m.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found (run scripts/fetch-assets.sh)", p.display());
        None
    }
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

//! Checks against the real SmolLM2-135M-Instruct Q4_1 GGUF fetched by scripts/fetch-assets.sh.
//! Skips (with a message) when the file is not there.

use std::path::PathBuf;

use fasp_engine::gguf::GgufFile;

fn model_path() -> Option<PathBuf> {
    let home = std::env::var_os("FASP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fasp-engine")))?;
    let p = home.join("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found (run scripts/fetch-assets.sh)", p.display());
        None
    }
}

#[test]
fn smollm2_config_tensors_and_tokenizer() {
    let Some(path) = model_path() else { return };
    let g = GgufFile::open(&path).unwrap();

    let cfg = g.hf_config().unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["num_hidden_layers"], 30);
    assert_eq!(cfg["hidden_size"], 576);
    assert_eq!(cfg["intermediate_size"], 1536);
    assert_eq!(cfg["num_attention_heads"], 9);
    assert_eq!(cfg["num_key_value_heads"], 3);
    assert_eq!(cfg["head_dim"], 64);
    assert_eq!(cfg["vocab_size"], 49152);
    assert_eq!(cfg["max_position_embeddings"], 8192);
    assert_eq!(cfg["rope_theta"], 100000.0);
    assert_eq!(cfg["rms_norm_eps"], 1e-5);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["bos_token_id"], 1);
    assert_eq!(cfg["eos_token_id"], 2);

    let names = g.hf_tensor_names();
    assert_eq!(names.len(), 30 * 9 + 2);
    let params: usize = names.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(params, 134_515_008);
    let shape = |n: &str| names.iter().find(|(m, _)| m == n).map(|(_, s)| s.clone()).unwrap();
    assert_eq!(shape("model.embed_tokens.weight"), vec![49152, 576]);
    assert_eq!(shape("model.layers.0.self_attn.q_proj.weight"), vec![576, 576]);
    assert_eq!(shape("model.layers.0.self_attn.k_proj.weight"), vec![192, 576]);
    assert_eq!(shape("model.layers.29.mlp.down_proj.weight"), vec![576, 1536]);
    assert_eq!(shape("model.layers.29.mlp.gate_proj.weight"), vec![1536, 576]);
    assert!(!names.iter().any(|(n, _)| n == "lm_head.weight"));

    // Each storage type dequantizes to finite values of a plausible size.
    for n in ["model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight", "model.norm.weight"] {
        let (s, w) = g.hf_tensor_f32(n).unwrap();
        assert_eq!(w.len(), s.iter().product::<usize>());
        assert!(w.iter().all(|x| x.is_finite()), "{n}");
        let rms = (w.iter().map(|x| (x * x) as f64).sum::<f64>() / w.len() as f64).sqrt();
        assert!(rms > 1e-3 && rms < 10.0, "{n}: rms {rms}");
    }

    // Tokenizer: "Hello world 123" -> Hello, Ġworld, Ġ, 1, 2, 3 (digits split one by one).
    let tokens: Vec<&str> = g.metadata("tokenizer.ggml.tokens").unwrap().as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let id = |t: &str| tokens.iter().position(|x| *x == t).unwrap() as u32;
    let expected = vec![id("Hello"), id("Ġworld"), id("Ġ"), id("1"), id("2"), id("3")];

    let json = g.tokenizer_json().unwrap();
    let tk = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
    assert_eq!(tk.get_vocab_size(true), 49152);
    let enc = tk.encode("Hello world 123", false).unwrap();
    assert_eq!(enc.get_ids(), expected.as_slice(), "tokens {:?}", enc.get_tokens());
    // add_special_tokens=true adds no BOS either.
    assert_eq!(tk.encode("Hello world 123", true).unwrap().get_ids(), expected.as_slice());
    assert_eq!(tk.decode(&expected, false).unwrap(), "Hello world 123");
    // Special tokens are matched whole.
    let enc = tk.encode("<|im_start|>user", false).unwrap();
    assert_eq!(enc.get_ids()[0], 1);
    assert_eq!(tk.encode("12345", false).unwrap().get_ids().len(), 5);
}

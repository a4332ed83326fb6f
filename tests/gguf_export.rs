//! GGUF output (`prune --format gguf`, `convert --out X.gguf`): read back through our own GGUF
//! reader, the logits equal our evaluation of the HF output (F32: bit-identical but for Gemma's
//! stored `1 + w` norms, within 1e-6 relative; F16 and Q8_0 within the bounds below); the `gguf`
//! Python package (llama.cpp's gguf-py, pinned in scripts/fetch-assets.sh) reads every tensor with
//! the expected name, shape and type, the metadata keys, and Q8_0 bytes equal to its own
//! quantizer's; failed exports leave nothing behind; the SmolLM2 GGUF asset prunes to GGUF end to end.

mod common;

use common::{fixture, job, rel_max_err};
use fasp_engine::gguf::{GgufFile, GgufValue};
use fasp_engine::gguf_export::GgufExporter;
use fasp_engine::gguf_write::{GgufType, GgufWriter};
use fasp_engine::job::{run_convert_gguf, run_prune, OutFormat};
use fasp_engine::model::Model;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const FAMILIES: &[&str] = &["llama-gqa", "llama-mha", "llama3", "mistral", "qwen2", "qwen3", "gemma3"];

/// F16 logits against the f32 model, `max|a − b| / max|b|`: measured 6.5e-4 (llama-gqa) to 3.8e-3
/// (gemma3) on these fixtures (f16 keeps 11 significant bits).
const F16_BOUND: f64 = 1e-2;
/// Q8_0 logits against the f32 model: measured 1.4e-2 (llama-gqa) to 4.9e-2 (gemma3): 8-bit
/// weights with one scale per 32, on tiny random models whose logits are small.
const Q8_BOUND: f64 = 0.1;

fn ids(vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

const SEQLEN: usize = 16;

fn logits(path: &Path) -> Vec<f32> {
    let m = Model::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fasp_engine::eval::logits(&m, &ids(m.cfg.vocab, 2 * SEQLEN), SEQLEN).unwrap().data
}

/// A copy of the HF model `dir` as llama.cpp computes it from GGUF: Mistral's and Qwen2's sliding
/// windows dropped (GGUF's `llama` and `qwen2` architectures have none). Other families: `dir`.
fn as_llama_cpp_sees_it(dir: &Path, tmp: &Path) -> PathBuf {
    let mut cfg = common::read_json(&dir.join("config.json"));
    if !matches!(cfg["model_type"].as_str(), Some("mistral") | Some("qwen2")) {
        return dir.to_path_buf();
    }
    let out = tmp.join(format!("{}-no-window", dir.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
    }
    cfg["sliding_window"] = Value::Null;
    cfg["use_sliding_window"] = false.into();
    if let Some(o) = cfg.as_object_mut() {
        o.remove("layer_types");
    }
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

fn gguf_job(model: &str, out: &Path, ty: GgufType) -> fasp_engine::job::PruneJob {
    let mut j = job(model, out, 0.25);
    j.format = OutFormat::Gguf(Some(ty));
    j
}

#[test]
fn exports_read_back_with_the_logits_of_the_hf_output() {
    for &name in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tol_f32 = if name == "gemma3" { 1e-6 } else { 0.0 };
        // dense: the fixture converted
        let dense_ref = logits(&as_llama_cpp_sees_it(&fixture(name), d));
        let s = run_convert_gguf(&fixture(name), &d.join("dense.gguf"), Some(GgufType::F32), false).unwrap();
        assert_eq!(s.bytes, std::fs::metadata(d.join("dense.gguf")).unwrap().len());
        let e = rel_max_err(&logits(&d.join("dense.gguf")), &dense_ref);
        assert!(e <= tol_f32, "{name} dense f32: {e:e}");

        // pruned: the same prune written as HF and as GGUF
        run_prune(&job(name, &d.join("hf"), 0.25)).unwrap();
        let pruned_ref = logits(&as_llama_cpp_sees_it(&d.join("hf"), d));
        let ffn = common::read_json(&d.join("hf/config.json"))["intermediate_size"].as_u64().unwrap() as usize;
        assert!(ffn < 96, "{name}: the MLP was pruned");
        let r = run_prune(&gguf_job(name, &d.join("p32.gguf"), GgufType::F32)).unwrap();
        assert_eq!(r.gguf.as_ref().unwrap().ffn, ffn);
        let e = rel_max_err(&logits(&d.join("p32.gguf")), &pruned_ref);
        assert!(e <= tol_f32, "{name} pruned f32: {e:e}");
        // the run record travels as metadata
        let g = GgufFile::open(&d.join("p32.gguf")).unwrap();
        let rec: Value = serde_json::from_str(g.metadata("fasp.json").unwrap().as_str().unwrap()).unwrap();
        assert_eq!(rec["method"], "fasp");

        // convert of the HF output, F16; and the prune straight to Q8_0 (MLP padded to 32)
        run_convert_gguf(&d.join("hf"), &d.join("p16.gguf"), Some(GgufType::F16), false).unwrap();
        let e16 = rel_max_err(&logits(&d.join("p16.gguf")), &pruned_ref);
        assert!(e16 > 0.0 && e16 <= F16_BOUND, "{name} pruned f16: {e16:e}");
        let r = run_prune(&gguf_job(name, &d.join("p8.gguf"), GgufType::Q8_0)).unwrap();
        let s8 = r.gguf.unwrap();
        assert_eq!((s8.ffn_pruned, s8.ffn), (ffn, ffn.next_multiple_of(32)));
        assert!(s8.f16_fallback.is_empty(), "{name}: {:?}", s8.f16_fallback);
        let e8 = rel_max_err(&logits(&d.join("p8.gguf")), &pruned_ref);
        assert!(e8 > 0.0 && e8 <= Q8_BOUND, "{name} pruned q8_0: {e8:e}");
        eprintln!("{name}: f16 {e16:.2e}, q8_0 {e8:.2e} (relative max logit error)");
        if name == "llama-gqa" {
            // the compact form converts to the same (dense-equivalent) GGUF model
            let mut j = job(name, &d.join("compact"), 0.25);
            j.compact = true;
            run_prune(&j).unwrap();
            run_convert_gguf(&d.join("compact"), &d.join("c32.gguf"), Some(GgufType::F32), false).unwrap();
            assert_eq!(logits(&d.join("c32.gguf")), logits(&d.join("p32.gguf")));
        }
    }
}

/// The venv python of scripts/fetch-assets.sh (with gguf and numpy); the test fails without it.
fn python() -> PathBuf {
    let home = std::env::var_os("FASP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/fasp-engine"));
    let py = home.join("venv/bin/python");
    assert!(py.is_file(), "{} is missing: run scripts/fetch-assets.sh (it installs gguf and numpy there)", py.display());
    py
}

fn check_with_gguf_py(expect: &Value, tmp: &Path) {
    let path = tmp.join(format!("expect-{}.json", rand_name(expect)));
    std::fs::write(&path, expect.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_gguf.py");
    let out = Command::new(python()).arg(&script).arg(&path).output().expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprint!("{text}");
    assert!(out.status.success() && text.contains("check_gguf: ok"), "{text}");
}

fn rand_name(v: &Value) -> String {
    v["file"].as_str().unwrap_or("x").rsplit('/').next().unwrap_or("x").to_string()
}

/// The tensors a GGUF of this (HF) config must hold: names, dims ne0 first, type.
fn expected_tensors(cfg: &Value, ty: GgufType) -> Vec<Value> {
    let u = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let family = cfg["model_type"].as_str().unwrap();
    let (d, layers, heads, vocab) = (u("hidden_size"), u("num_hidden_layers"), u("num_attention_heads"), u("vocab_size"));
    let kv = cfg["num_key_value_heads"].as_u64().map_or(heads, |v| v as usize);
    let hd = cfg["head_dim"].as_u64().map_or(d / heads, |v| v as usize);
    let mut f = u("intermediate_size");
    if ty == GgufType::Q8_0 {
        f = f.next_multiple_of(32);
    }
    let (nq, nk) = (heads * hd, kv * hd);
    let m = ty.name().to_uppercase();
    let mut t = vec![
        json!({"name": "token_embd.weight", "shape": [d, vocab], "type": m}),
        json!({"name": "output_norm.weight", "shape": [d], "type": "F32"}),
    ];
    if cfg["tie_word_embeddings"] == false {
        t.push(json!({"name": "output.weight", "shape": [d, vocab], "type": m}));
    }
    if cfg["rope_scaling"]["rope_type"] == "llama3" {
        t.push(json!({"name": "rope_freqs.weight", "shape": [hd / 2], "type": "F32"}));
    }
    let attn_bias = cfg["attention_bias"] == true || family == "qwen2";
    let mlp_bias = cfg["mlp_bias"] == true;
    for l in 0..layers {
        let mut add = |s: &str, shape: Vec<usize>| {
            let ty = if shape.len() == 1 { "F32".to_string() } else { m.clone() };
            t.push(json!({"name": format!("blk.{l}.{s}"), "shape": shape, "type": ty}));
        };
        add("attn_norm.weight", vec![d]);
        add("attn_q.weight", vec![d, nq]);
        add("attn_k.weight", vec![d, nk]);
        add("attn_v.weight", vec![d, nk]);
        add("attn_output.weight", vec![nq, d]);
        if attn_bias {
            add("attn_q.bias", vec![nq]);
            add("attn_k.bias", vec![nk]);
            add("attn_v.bias", vec![nk]);
            if family == "llama" {
                add("attn_output.bias", vec![d]);
            }
        }
        if family == "qwen3" || family == "gemma3_text" {
            add("attn_q_norm.weight", vec![hd]);
            add("attn_k_norm.weight", vec![hd]);
        }
        if family == "gemma3_text" {
            add("post_attention_norm.weight", vec![d]);
            add("post_ffw_norm.weight", vec![d]);
        }
        add("ffn_norm.weight", vec![d]);
        add("ffn_gate.weight", vec![d, f]);
        add("ffn_up.weight", vec![d, f]);
        add("ffn_down.weight", vec![f, d]);
        if mlp_bias {
            add("ffn_gate.bias", vec![f]);
            add("ffn_up.bias", vec![f]);
            add("ffn_down.bias", vec![d]);
        }
    }
    t
}

/// The metadata a llama.cpp loader reads, from the HF config.
fn expected_metadata(cfg: &Value, ty: GgufType) -> Value {
    let family = cfg["model_type"].as_str().unwrap();
    let arch = match family {
        "llama" | "mistral" => "llama",
        "gemma3_text" => "gemma3",
        f => f,
    };
    let u = |k: &str| cfg[k].as_u64().unwrap();
    let heads = u("num_attention_heads");
    let hd = cfg["head_dim"].as_u64().unwrap_or(u("hidden_size") / heads);
    let mut f = u("intermediate_size");
    if ty == GgufType::Q8_0 {
        f = f.next_multiple_of(32);
    }
    let mut m = json!({
        "general.architecture": arch,
        "general.alignment": 32,
        "general.file_type": ty.file_type(),
        format!("{arch}.block_count"): u("num_hidden_layers"),
        format!("{arch}.context_length"): u("max_position_embeddings"),
        format!("{arch}.embedding_length"): u("hidden_size"),
        format!("{arch}.feed_forward_length"): f,
        format!("{arch}.attention.head_count"): heads,
        format!("{arch}.attention.head_count_kv"): cfg["num_key_value_heads"].as_u64().unwrap_or(heads),
        format!("{arch}.attention.key_length"): hd,
        format!("{arch}.attention.value_length"): hd,
        format!("{arch}.rope.dimension_count"): hd,
        format!("{arch}.rope.freq_base"): cfg["rope_theta"].as_f64().unwrap(),
        format!("{arch}.attention.layer_norm_rms_epsilon"): cfg["rms_norm_eps"].as_f64().unwrap(),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
    });
    if family == "gemma3_text" {
        m[format!("{arch}.attention.sliding_window")] = cfg["sliding_window"].clone();
        m[format!("{arch}.final_logit_softcapping")] = cfg["final_logit_softcapping"].clone();
    }
    m
}

#[test]
fn the_gguf_package_reads_every_tensor_key_and_q8_0_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for &name in FAMILIES {
        run_prune(&job(name, &d.join(format!("{name}-hf")), 0.25)).unwrap();
        let cfg = common::read_json(&d.join(format!("{name}-hf/config.json")));
        let f32_file = d.join(format!("{name}-f32.gguf"));
        run_prune(&gguf_job(name, &f32_file, GgufType::F32)).unwrap();
        let types: &[GgufType] = if name == "llama-gqa" {
            &[GgufType::F32, GgufType::F16, GgufType::BF16, GgufType::Q8_0]
        } else {
            &[GgufType::F32, GgufType::F16, GgufType::Q8_0]
        };
        for &ty in types {
            let file = d.join(format!("{name}-{}.gguf", ty.name()));
            if ty != GgufType::F32 {
                run_prune(&gguf_job(name, &file, ty)).unwrap();
            }
            let mut expect = json!({
                "file": file,
                "tensors": expected_tensors(&cfg, ty),
                "metadata": expected_metadata(&cfg, ty),
            });
            if ty != GgufType::F32 {
                expect["reference"] = json!(f32_file);
            }
            check_with_gguf_py(&expect, d);
        }
    }

    // seeded data with the quantizer's edge cases: an all-zero block, exact halves, a negative
    // maximum, tiny and huge scales
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
    };
    let mut x: Vec<f32> = (0..32 * 64).map(|_| next()).collect();
    x[..32].fill(0.0);
    // d = 127 / 127 = 1 exactly: the others are exact halves, rounded away from zero
    for (i, v) in x[32..64].iter_mut().enumerate() {
        *v = i as f32 - 16.5;
    }
    x[32] = 127.0;
    x[64] = -3.0;
    for v in &mut x[96..128] {
        *v *= 1e-6;
    }
    for v in &mut x[128..160] {
        *v *= 6e4;
    }
    let file = d.join("seeded.gguf");
    let mut w = GgufWriter::create(&file).unwrap();
    w.tensor("x.f32", &[64, 32], &x, GgufType::F32).unwrap();
    w.tensor("x.q8", &[64, 32], &x, GgufType::Q8_0).unwrap();
    w.finish().unwrap();
    check_with_gguf_py(&json!({"file": file, "q8_pairs": [["x.f32", "x.q8"]]}), d);
}

/// Names in `dir` (the outputs and their temporary files).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn a_failed_export_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("x.gguf");

    // layers of different MLP widths: refused at the layer that differs
    let model = Model::open(&fixture("llama-gqa")).unwrap();
    {
        let mut e = GgufExporter::create(&model, &out, None, GgufType::F32).unwrap();
        e.write_layer(0, &model.layer(0).unwrap()).unwrap();
        let mut l1 = model.layer(1).unwrap();
        let keep: Vec<usize> = (0..80).collect();
        l1.up.w = l1.up.w.gather_rows(&keep);
        l1.up.b = l1.up.b.map(|b| b[..80].to_vec());
        l1.gate = l1.gate.map(|mut g| {
            g.w = g.w.gather_rows(&keep);
            g.b = g.b.map(|b| b[..80].to_vec());
            g
        });
        l1.down.w = l1.down.w.gather_cols(&keep);
        let err = e.write_layer(1, &l1).unwrap_err().to_string();
        assert!(err.contains("80 MLP channels") && err.contains("96") && err.contains("feed_forward_length"), "{err}");
    }
    assert_eq!(listing(d), Vec::<String>::new());

    // a tensor that cannot be read half way through (NaNs in the last layer): nothing is left
    let bad = d.join("bad-model");
    std::fs::create_dir(&bad).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("llama-gqa").join(f), bad.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(fixture("llama-gqa").join("model.safetensors")).unwrap();
    let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let info = meta.info("model.layers.2.mlp.down_proj.weight").unwrap();
    let (a, b) = (8 + n + info.data_offsets.0, 8 + n + info.data_offsets.1);
    bytes[a..b].fill(0xff);
    std::fs::write(bad.join("model.safetensors"), bytes).unwrap();
    let before = listing(d);
    let err = run_convert_gguf(&bad, &out, None, false).unwrap_err().to_string();
    assert!(err.contains("NaN"), "{err}");
    assert_eq!(listing(d), before);

    // an --out that is a directory, a missing parent, OPT, --compact: refused before anything is written
    std::fs::create_dir(d.join("a-dir.gguf")).unwrap();
    let err = run_convert_gguf(&fixture("llama-gqa"), &d.join("a-dir.gguf"), None, true).unwrap_err().to_string();
    assert!(err.contains("is a directory"), "{err}");
    let err = run_convert_gguf(&fixture("llama-gqa"), &d.join("no/such/x.gguf"), None, false).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = run_convert_gguf(&fixture("opt-tiny"), &out, None, false).unwrap_err().to_string();
    assert!(err.contains("llama.cpp has no opt architecture"), "{err}");
    let mut j = gguf_job("llama-gqa", &out, GgufType::F16);
    j.compact = true;
    let err = run_prune(&j).unwrap_err().to_string();
    assert!(err.contains("--compact"), "{err}");
    // an existing output is kept without --force
    std::fs::write(&out, b"old").unwrap();
    let err = run_convert_gguf(&fixture("llama-gqa"), &out, None, false).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let mut after = listing(d);
    after.retain(|n| n != "a-dir.gguf" && n != "x.gguf");
    assert_eq!(after, before);
}

fn smollm2() -> PathBuf {
    let home = std::env::var_os("FASP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/fasp-engine"));
    let p = home.join("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-assets.sh", p.display());
    p
}

#[test]
fn smollm2_prunes_to_gguf_end_to_end() {
    let input = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("smol-20.gguf");
    let calib = fixture("calib.txt");
    let bin = env!("CARGO_BIN_EXE_fasp-engine");
    let run = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{args:?}: {text}");
        text
    };
    let common = ["--calib", calib.to_str().unwrap(), "--nsamples", "2", "--seqlen", "64", "--device", "cpu", "-q"];
    let mut args = vec!["prune", "--model", input.to_str().unwrap(), "--format", "gguf", "--out", out.to_str().unwrap()];
    args.extend(common);
    let text = run(&args);
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(text.contains("GGUF f16") && text.contains("feed_forward_length 1229"), "{text}");
    assert!(text.contains(&format!("{:.1} MB", size as f64 / 1e6)), "{text}");

    let g = GgufFile::open(&out).unwrap();
    let src = GgufFile::open(&input).unwrap();
    assert_eq!(g.metadata("llama.feed_forward_length").and_then(GgufValue::as_u64), Some(1229));
    let tok = |f: &GgufFile| -> Vec<(String, GgufValue)> {
        f.metadata_entries().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect()
    };
    assert_eq!(tok(&g), tok(&src), "the tokenizer keys are copied verbatim");
    for k in ["general.name", "general.license", "general.organization"] {
        assert_eq!(g.metadata(k), src.metadata(k), "{k}");
    }
    assert_eq!(g.metadata("general.file_type").and_then(GgufValue::as_u64), Some(1));
    assert!(!tok(&g).is_empty());
    assert_eq!(listing(d), vec!["smol-20.gguf".to_string()]);

    // the same prune as HF: the same perplexity through our reader (F16 both, but the GGUF keeps
    // norms in F32)
    let hf = d.join("smol-20");
    let mut args = vec!["prune", "--model", input.to_str().unwrap(), "--out", hf.to_str().unwrap()];
    args.extend(common);
    run(&args);
    let eval = |m: &Path| fasp_engine::job::run_eval(m, &fixture("eval.txt"), 64, Some(2), false).unwrap().ppl;
    let (pg, ph) = (eval(&out), eval(&hf));
    assert!(pg.is_finite() && ((pg - ph) / ph).abs() < 1e-3, "gguf {pg} vs hf {ph}");
    // inspect keeps working on the GGUF output
    let text = run(&["inspect", "--model", out.to_str().unwrap()]);
    assert!(text.contains("ffn            1229") && !text.contains("pruned         no"), "{text}");
    let text = run(&["inspect", "--model", out.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["fasp"]["method"], "fasp", "{text}");
}

#[test]
fn an_interrupted_gguf_prune_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = fixture("llama-gqa");
    let bin = env!("CARGO_BIN_EXE_fasp-engine");
    let prune = |out: &str, extra: &[&str], stop: Option<&str>| {
        let mut c = Command::new(bin);
        c.current_dir(d).args(["prune", "--model", f.to_str().unwrap(), "--calib", f.join("calib_ids.npy").to_str().unwrap()]);
        c.args(["--out", out, "--format", "gguf", "--device", "cpu", "-q"]).args(extra);
        if let Some(l) = stop {
            c.env("FASP_TEST_STOP_AFTER_LAYER", l);
        }
        c.output().unwrap()
    };
    // killed after layer 1: no output, the checkpoint kept in the temporary directory beside it
    let o = prune("x.gguf", &[], Some("1"));
    assert!(!o.status.success());
    assert!(!d.join("x.gguf").exists());
    assert!(listing(d).iter().any(|n| n.starts_with(".x.gguf.tmp-")), "{:?}", listing(d));
    let o = prune("x.gguf", &["--resume"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(listing(d), vec!["x.gguf".to_string()]);
    let g = GgufFile::open(&d.join("x.gguf")).unwrap();
    let rec: Value = serde_json::from_str(g.metadata("fasp.json").unwrap().as_str().unwrap()).unwrap();
    assert_eq!(rec["resumed_from_layer"], 2);
    assert!(prune("y.gguf", &[], None).status.success());
    assert_eq!(logits(&d.join("x.gguf")), logits(&d.join("y.gguf")));
}

#[test]
fn the_cli_picks_gguf_by_the_out_name_and_checks_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = env!("CARGO_BIN_EXE_fasp-engine");
    let f = fixture("qwen3");
    let run = |args: &[&str]| {
        let o = Command::new(bin).current_dir(d).args(args).output().unwrap();
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let (ok, text) = run(&["convert", "--model", f.to_str().unwrap(), "--out", "q.gguf"]);
    assert!(ok && text.contains("GGUF f32") && text.contains("tokenizer from tokenizer.json"), "{text}");
    assert_eq!(GgufFile::open(&d.join("q.gguf")).unwrap().metadata("general.architecture").and_then(|v| v.as_str()), Some("qwen3"));
    let (ok, text) = run(&["convert", "--model", f.to_str().unwrap(), "--out", "q8.gguf", "--gguf-type", "q8_0"]);
    assert!(ok && text.contains("GGUF q8_0"), "{text}");
    // a GGUF type for an HF output, and an unknown type, are one-line errors
    let (ok, text) = run(&["convert", "--model", f.to_str().unwrap(), "--out", "hf", "--gguf-type", "q8_0"]);
    assert!(!ok && text.contains("--gguf-type needs a GGUF output"), "{text}");
    let (ok, text) = run(&["convert", "--model", f.to_str().unwrap(), "--out", "x.gguf", "--gguf-type", "q4_k"]);
    assert!(!ok && text.contains("unknown GGUF type"), "{text}");
    let calib = f.join("calib_ids.npy");
    let (ok, text) =
        run(&["prune", "--model", f.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--out", "p", "--gguf-type", "f16"]);
    assert!(!ok && text.contains("--gguf-type needs --format gguf"), "{text}");
    let (ok, text) = run(&["prune", "--model", f.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--out", "p.gguf"]);
    assert!(!ok && text.contains("add --format gguf"), "{text}");
    assert!(!d.join("p.gguf").exists());
    // a pruned GGUF converted to Q8_0 keeps its run record
    let (ok, text) =
        run(&["prune", "--model", f.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--out", "p.gguf", "--format", "gguf"]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["convert", "--model", "p.gguf", "--out", "p8.gguf", "--gguf-type", "q8_0"]);
    assert!(ok && text.contains("GGUF q8_0"), "{text}");
    let (ok, text) = run(&["inspect", "--model", "p8.gguf", "--json"]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(ok && v["fasp"]["method"] == "fasp", "{text}");
    assert!(!d.join("hf").exists() && !d.join("x.gguf").exists() && !d.join("p").exists());
}

//! The command line end to end: the round trip of a prune with --eval, and every bad input of
//! issue #2 giving a clear one-line error, a non-zero exit, no panic and nothing left behind.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fasp-engine"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// Runs a prune that must fail, and checks the failure is clean.
fn assert_clean_failure(dir: &Path, model: &Path, extra: &[&str], expect: &str) {
    let out = dir.join("out");
    let existed = out.exists();
    let mut args: Vec<String> =
        ["prune", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "-q"].iter().map(|s| s.to_string()).collect();
    if !extra.contains(&"--calib") {
        args.push("--calib".into());
        args.push(fixture("opt-tiny").join("calib_ids.npy").display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = bin().args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{expect}: expected failure, got success");
    assert_ne!(o.status.code(), Some(101), "{expect}: panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{expect}: panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{expect}: expected one line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].to_lowercase().contains(&expect.to_lowercase()), "expected {expect:?} in {stderr:?}");
    if existed {
        assert!(out.join("keep.txt").exists(), "{expect}: the existing output was touched");
    } else {
        assert!(!out.exists(), "{expect}: output directory left behind");
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "{expect}: temporary files left behind: {leftovers:?}");
}

fn edit_config(model: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = model.join("config.json");
    let mut v = read_json(&p);
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn round_trip_eval_reproduces_the_reported_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    let model = fixture("llama-gqa");
    let text = fixture("eval.txt");
    let o = run(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--calib",
        fixture("calib.txt").to_str().unwrap(),
        "--nsamples",
        "8",
        "--seqlen",
        "32",
        "--sparsity",
        "0.2",
        "--eval",
        text.to_str().unwrap(),
        "--eval-seqlen",
        "32",
        "--eval-dense",
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("ppl pruned") && stdout.contains("ppl dense"), "{stdout}");
    let rec = read_json(&out.join("fasp.json"));
    let reported = rec["eval"]["pruned"]["ppl"].as_f64().unwrap();
    let dense = rec["eval"]["dense"]["ppl"].as_f64().unwrap();
    assert!(reported.is_finite() && dense.is_finite());
    assert_eq!(rec["calibration"]["kind"], "text");
    assert!(out.join("tokenizer.json").exists(), "tokenizer files are copied");

    let o = run(&["eval", "--model", out.to_str().unwrap(), "--text", text.to_str().unwrap(), "--seqlen", "32", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ppl = v["ppl"].as_f64().unwrap();
    assert!((ppl - reported).abs() <= 1e-6 * reported, "eval {ppl} vs reported {reported}");
    assert_eq!(v["seqlen"], 32);
    assert_eq!(v["windows"], rec["eval"]["pruned"]["windows"]);
    assert_eq!(v["predicted_tokens"].as_u64().unwrap(), v["windows"].as_u64().unwrap() * 31);

    // and the dense model evaluated on its own gives the dense number
    let o = run(&["eval", "--model", model.to_str().unwrap(), "--text", text.to_str().unwrap(), "--seqlen", "32", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((v["ppl"].as_f64().unwrap() - dense).abs() <= 1e-9 * dense);

    // inspect reads the pruned model
    let o = run(&["inspect", "--model", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ffn"], 96 - 19); // floor(96*0.2+0.5) = 19 pruned
    assert_eq!(v["kv_heads"], 2);
}

#[test]
fn version_says_whether_kernels_are_built_in() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("CUDA kernels"), "{s}");
}

#[test]
fn unknown_model_type() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture("opt-tiny", dir.path());
    edit_config(&m, |c| {
        c.insert("model_type".into(), "gpt2".into());
    });
    assert_clean_failure(dir.path(), &m, &[], "model_type \"gpt2\" is not supported");
}

#[test]
fn post_ln_opt() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture("opt-tiny", dir.path());
    edit_config(&m, |c| {
        c.insert("do_layer_norm_before".into(), false.into());
    });
    assert_clean_failure(dir.path(), &m, &[], "post-LN OPT");
}

#[test]
fn missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture("llama-mha", dir.path());
    let path = m.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = "model.layers.1.mlp.up_proj.weight";
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st.tensors().into_iter().filter(|(n, _)| n != victim).collect();
    safetensors::serialize_to_file(kept, None, &path.with_extension("new")).unwrap();
    std::fs::rename(path.with_extension("new"), &path).unwrap();
    assert_clean_failure(dir.path(), &m, &[], "model.layers.1.mlp.up_proj.weight: missing");
}

#[test]
fn tensor_shape_contradicts_config() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture("opt-tiny", dir.path());
    edit_config(&m, |c| {
        c.insert("ffn_dim".into(), 100.into());
    });
    assert_clean_failure(dir.path(), &m, &[], "contradicts the config");
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture("llama-gqa", dir.path());
    let path = m.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    assert_clean_failure(dir.path(), &m, &[], "not a valid safetensors file");
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert_clean_failure(dir.path(), &m, &[], "not a valid safetensors file");
}

#[test]
fn sparsity_out_of_range_or_k_below_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("opt-tiny");
    assert_clean_failure(dir.path(), &m, &["--sparsity", "1.0"], "sparsity must be in [0, 1)");
    assert_clean_failure(dir.path(), &m, &["--sparsity=-0.1"], "sparsity must be in [0, 1)");
    assert_clean_failure(dir.path(), &m, &["--sparsity", "nan"], "sparsity must be in [0, 1)");
    // 64 attention units: floor(64 * 0.995 + 0.5) = 64 pruned, k = 0
    assert_clean_failure(dir.path(), &m, &["--sparsity", "0.995"], "k < 1");
}

#[test]
fn empty_or_unreadable_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("opt-tiny");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_clean_failure(dir.path(), &m, &["--calib", empty.to_str().unwrap()], "empty");
    let missing = dir.path().join("nope.txt");
    assert_clean_failure(dir.path(), &m, &["--calib", missing.to_str().unwrap()], "no such file");
    let bad_npy = dir.path().join("bad.npy");
    std::fs::write(&bad_npy, b"not an npy file at all").unwrap();
    assert_clean_failure(dir.path(), &m, &["--calib", bad_npy.to_str().unwrap()], "not a valid .npy");
    let unreadable = dir.path().join("dir.txt");
    std::fs::create_dir(&unreadable).unwrap();
    assert_clean_failure(dir.path(), &m, &["--calib", unreadable.to_str().unwrap()], "dir.txt");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "just a few words").unwrap();
    assert_clean_failure(
        dir.path(),
        &m,
        &["--calib", short.to_str().unwrap(), "--seqlen", "64", "--nsamples", "2"],
        "fewer than one window",
    );
}

#[test]
fn windows_longer_than_opt_positions() {
    let dir = tempfile::tempdir().unwrap();
    let calib = fixture("calib.txt");
    assert_clean_failure(
        dir.path(),
        &fixture("opt-tiny"),
        &["--calib", calib.to_str().unwrap(), "--seqlen", "200", "--nsamples", "2"],
        "exceeds the model's 64 learned positions",
    );
}

#[test]
fn existing_out_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "precious").unwrap();
    assert_clean_failure(dir.path(), &fixture("opt-tiny"), &[], "already exists (use --force");
    // with --force it is replaced
    let o = run(&[
        "prune",
        "--model",
        fixture("opt-tiny").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--calib",
        fixture("opt-tiny").join("calib_ids.npy").to_str().unwrap(),
        "--force",
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("fasp.json").exists() && !out.join("keep.txt").exists());
}

#[test]
fn never_overwrites_the_input_model() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture("opt-tiny", dir.path());
    let before = std::fs::read(m.join("model.safetensors")).unwrap();
    let o = run(&[
        "prune",
        "--model",
        m.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        "--force",
        "--calib",
        fixture("opt-tiny").join("calib_ids.npy").to_str().unwrap(),
        "-q",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to write over the input model"));
    assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), before);
}

#[test]
fn report_merges_sweeps_and_refuses_mismatched_ones() {
    let dir = tempfile::tempdir().unwrap();
    let head = "method,sparsity,eval,ppl,windows,seqlen,params,prune_seconds\n";
    let a = dir.path().join("a.csv");
    let b = dir.path().join("b.csv");
    let c = dir.path().join("c.csv");
    std::fs::write(&a, format!("{head}dense,0,wiki,26.8,8,256,100,0\nfasp,0.1,wiki,32.0,8,256,90,4.0\n")).unwrap();
    std::fs::write(&b, format!("{head}dense,0,wiki,26.8,8,256,100,0\nflap,0.1,wiki,32.9,8,256,91,3.0\n")).unwrap();
    std::fs::write(&c, format!("{head}dense,0,wiki,27.5,8,256,100,0\n")).unwrap();
    let out_dir = dir.path().join("merged");
    let o = run(&["report", "--csv", a.to_str().unwrap(), "--csv", b.to_str().unwrap(), "--out-dir", out_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("| fasp | 32.000 |") && table.contains("| flap | 32.900 |"), "{table}");
    assert_eq!(std::fs::read_to_string(out_dir.join("sweep.csv")).unwrap().lines().count(), 4);
    assert!(std::fs::read_to_string(out_dir.join("sweep-wiki.svg")).unwrap().contains("flap"));

    let o =
        run(&["report", "--csv", a.to_str().unwrap(), "--csv", c.to_str().unwrap(), "--out-dir", dir.path().join("x").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("differs between sweeps") && !err.contains("panicked"), "{err}");
    assert!(!dir.path().join("x").join("sweep.csv").exists());
}

//! Issue 14, item 1 and 2, end to end through the binary: inputs that used to crash, lose data or
//! be accepted now fail with a clear error, a non-zero exit, no panic, nothing written and the
//! inputs untouched; and the messages say each thing once, under the right label.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fasp-engine")).args(args).output().expect("the binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A clean failure: non-zero exit, no panic, an `error:` line containing `expect`; returns stderr.
fn fails(args: &[&str], expect: &str) -> String {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?}: expected a failure, got success");
    assert_ne!(o.status.code(), Some(101), "{args:?}: panicked: {err}");
    assert!(!err.contains("panicked"), "{args:?}: panicked: {err}");
    assert!(err.starts_with("error"), "{args:?}: {err}");
    assert!(err.to_lowercase().contains(&expect.to_lowercase()), "{args:?}: expected {expect:?} in {err:?}");
    err
}

/// As `fails`, and the error is one line (the library's errors, not clap's usage errors).
fn fails_one_line(args: &[&str], expect: &str) -> String {
    let err = fails(args, expect);
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{args:?}: expected one line: {err:?}");
    err
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
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

/// A `.npy` with the given header `shape` text (e.g. "(3,)") and raw data bytes.
fn npy_raw(path: &Path, descr: &str, shape: &str, data: &[u8]) {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    b.extend_from_slice(dict.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

/// A 1-D `<i8` `.npy` of token ids.
fn npy_ids(path: &Path, ids: &[i64]) {
    let data: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy_raw(path, "<i8", &format!("({},)", ids.len()), &data);
}

fn calib() -> PathBuf {
    fixture("opt-tiny").join("calib_ids.npy")
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn eval_token_id_equal_to_the_vocabulary_size_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("opt-tiny");
    let bad = dir.path().join("eval.npy");
    let mut ids: Vec<i64> = (0..64).map(|i| i % 300).collect();
    ids[40] = 320; // the vocabulary has 320 ids: 0..=319
    npy_ids(&bad, &ids);
    let out = dir.path().join("out");
    let cal = calib();
    for extra in [&[][..], &["--eval-dense"][..]] {
        let mut args = vec!["prune", "--model", s(&m), "--out", s(&out), "--calib", s(&cal), "-q", "--eval", s(&bad)];
        args.extend_from_slice(&["--eval-seqlen", "16"]);
        args.extend_from_slice(extra);
        let err = fails_one_line(&args, "token id 320 is outside the vocabulary (320)");
        assert!(err.contains("evaluation:") && err.contains("eval.npy"), "{err}");
        assert!(!out.exists());
    }
    // `eval` says the same
    let err = fails_one_line(&["eval", "--model", s(&m), "--tokens", s(&bad), "--seqlen", "16"], "outside the vocabulary");
    assert!(err.contains("evaluation:"), "{err}");
    assert_eq!(listing(dir.path()), ["eval.npy"]);
}

#[test]
fn out_may_not_overlap_any_input_with_or_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_fixture("llama-gqa", dir.path());
    let model_before = listing(&m);
    // calibration and eval files inside the would-be output directory
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let cal = data.join("calib.npy");
    std::fs::copy(fixture("llama-gqa").join("calib_ids.npy"), &cal).unwrap();
    let ev = dir.path().join("evaldir");
    std::fs::create_dir(&ev).unwrap();
    let evf = ev.join("eval.txt");
    std::fs::copy(fixture("eval.txt"), &evf).unwrap();
    let other_cal = fixture("llama-gqa").join("calib_ids.npy");
    for force in [false, true] {
        let f: &[&str] = if force { &["--force"] } else { &[] };
        let base = |out: &Path, cal: &Path| -> Vec<String> {
            let mut v: Vec<String> =
                ["prune", "--model", s(&m), "--out", s(out), "--calib", s(cal), "-q"].iter().map(|x| x.to_string()).collect();
            v.extend(f.iter().map(|x| x.to_string()));
            v
        };
        // --out is the directory holding the calibration file
        fails_one_line(&args(&base(&data, &cal)), "contains the calibration file");
        // --out is the calibration file itself
        fails_one_line(&args(&base(&cal, &cal)), "refusing to write over the calibration file");
        // --out holds the --eval file
        let mut v = base(&ev, &other_cal);
        v.extend(["--eval".into(), s(&evf).into(), "--eval-seqlen".into(), "16".into()]);
        fails_one_line(&args(&v), "contains the evaluation file");
        // --out inside the input model, and the model itself
        fails_one_line(&args(&base(&m.join("pruned"), &other_cal)), "is inside the input model");
        fails_one_line(&args(&base(&m, &other_cal)), "refusing to write over the input model");
        // --out holds the input model
        fails_one_line(&args(&base(dir.path(), &other_cal)), "contains the input model");
        assert!(cal.exists() && evf.exists(), "an input was deleted (force {force})");
        assert_eq!(listing(&data), ["calib.npy"]);
        assert_eq!(listing(&ev), ["eval.txt"]);
        assert_eq!(listing(&m), model_before, "the input model directory changed (force {force})");
    }
    // a tokenizer reached through a symlink counts where it lives
    let tokdir = dir.path().join("tok");
    std::fs::create_dir(&tokdir).unwrap();
    std::fs::rename(m.join("tokenizer.json"), tokdir.join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink(tokdir.join("tokenizer.json"), m.join("tokenizer.json")).unwrap();
    fails_one_line(
        &["prune", "--model", s(&m), "--out", s(&tokdir), "--calib", s(&other_cal), "--force", "-q"],
        "contains the input model",
    );
    assert!(tokdir.join("tokenizer.json").exists());
    // a disjoint --out still works
    let ok = run(&["prune", "--model", s(&m), "--out", s(&dir.path().join("fine")), "--calib", s(&cal), "-q"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn npy_shape_that_overflows_or_data_that_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("opt-tiny");
    let out = dir.path().join("out");
    let data: Vec<u8> = (0..4i64).flat_map(|v| v.to_le_bytes()).collect();
    let prune = |cal: &Path, expect: &str| fails_one_line(&["prune", "--model", s(&m), "--out", s(&out), "--calib", s(cal), "-q"], expect);
    // (2^63 + 1) * 2 wraps to 2 in 64 bits
    let wrap = dir.path().join("wrap.npy");
    npy_raw(&wrap, "<i8", "(9223372036854775809, 2)", &data);
    prune(&wrap, "more elements than fit in 64 bits");
    // a huge shape that does not wrap needs more data than the file has
    let huge = dir.path().join("huge.npy");
    npy_raw(&huge, "<i8", "(1000000000000, 2)", &data);
    let err = prune(&huge, "truncated .npy");
    assert!(err.contains("needs 16000000000000 bytes"), "{err}");
    // a shape that is not decimal integers
    let hex = dir.path().join("hex.npy");
    npy_raw(&hex, "<i8", "(0x10, 2)", &data);
    prune(&hex, "not a tuple of non-negative decimal integers");
    // a truncated file says what it expected
    let cut = dir.path().join("cut.npy");
    let full = std::fs::read(calib()).unwrap();
    std::fs::write(&cut, &full[..full.len() - 10]).unwrap();
    let err = prune(&cut, "truncated .npy: shape [4, 16] of <i8 needs 512 bytes of data after the 128-byte header, but the file has 502");
    assert!(!err.contains("failed to fill whole buffer"), "{err}");
    std::fs::write(&cut, &full[..60]).unwrap();
    prune(&cut, "truncated .npy: the header needs 128 bytes, the file has 60");
    // an eval file is labelled as one
    let err = fails_one_line(&["eval", "--model", s(&m), "--tokens", s(&cut)], "truncated .npy");
    assert!(err.contains("evaluation:") && !err.contains("calibration"), "{err}");
    // and a well-formed file of one-byte ids is read
    let small = dir.path().join("u8.npy");
    npy_raw(&small, "|u1", "(64,)", &(0..64u8).collect::<Vec<_>>());
    let o = run(&["eval", "--model", s(&m), "--tokens", s(&small), "--seqlen", "16", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.exists());
}

#[test]
fn config_fields_of_the_wrong_type_are_errors_naming_them() {
    for (key, val, shown) in [
        ("tie_word_embeddings", serde_json::json!("yes"), "\"yes\""),
        ("rms_norm_eps", serde_json::json!("tiny"), "\"tiny\""),
        ("rms_norm_eps", serde_json::json!(1e-60), "1e-60"),
        ("rope_theta", serde_json::json!(1e300), "1e+300"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let m = copy_fixture("llama-gqa", dir.path());
        let p = m.join("config.json");
        let mut c = read_json(&p);
        c[key] = val;
        std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
        let out = dir.path().join("out");
        let err = fails_one_line(&["prune", "--model", s(&m), "--out", s(&out), "--calib", s(&calib()), "-q"], &format!("\"{key}\""));
        assert!(err.contains(shown) && err.contains("config.json"), "{err}");
        assert!(!out.exists());
        fails_one_line(&["inspect", "--model", s(&m)], &format!("\"{key}\""));
    }
}

#[test]
fn negative_numbers_reach_the_range_checks() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("opt-tiny");
    let out = dir.path().join("out");
    fails_one_line(
        &["prune", "--model", s(&m), "--out", s(&out), "--calib", s(&calib()), "--sparsity", "-0.1", "-q"],
        "sparsity must be in [0, 1)",
    );
    fails_one_line(&["prune", "--model", s(&m), "--out", s(&out), "--calib", s(&calib()), "--damp", "-1", "-q"], "--damp must be positive");
    let err = fails(&["prune", "--model", s(&m), "--out", s(&out), "--calib", s(&calib()), "--nsamples", "-5"], "'-5'");
    assert!(!err.contains("unexpected argument"), "{err}");
    let sweep_out = dir.path().join("sweep");
    fails_one_line(
        &["sweep", "--model", s(&m), "--calib", s(&calib()), "--eval", s(&calib()), "--sparsities", "-0.1,0.2", "--out-dir", s(&sweep_out)],
        "sparsity must be in [0, 1)",
    );
    assert!(!out.exists() && !sweep_out.exists());
}

#[test]
fn zero_eval_windows_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("opt-tiny");
    let out = dir.path().join("out");
    let text = fixture("eval.txt");
    let err = fails(
        &["prune", "--model", s(&m), "--out", s(&out), "--calib", s(&calib()), "--eval", s(&text), "--eval-windows", "0"],
        "--eval-windows",
    );
    assert!(err.contains("must be at least 1") && !err.contains("make no window"), "{err}");
    fails(&["eval", "--model", s(&m), "--text", s(&text), "--max-windows", "0"], "must be at least 1");
    assert!(!out.exists());
}

#[test]
fn a_directory_as_calibration_says_it_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    // with and without a tokenizer in the model
    let m = copy_fixture("llama-gqa", dir.path());
    let bare = copy_fixture("opt-tiny", dir.path());
    std::fs::remove_file(bare.join("tokenizer.json")).unwrap();
    let cal = dir.path().join("calib");
    std::fs::create_dir(&cal).unwrap();
    let out = dir.path().join("out");
    for model in [&m, &bare] {
        let err = fails_one_line(&["prune", "--model", s(model), "--out", s(&out), "--calib", s(&cal), "-q"], "is a directory");
        assert!(err.contains("calibration:") && !err.contains("tokenizer"), "{err}");
        let err = fails_one_line(&["eval", "--model", s(model), "--text", s(&cal)], "is a directory");
        assert!(err.contains("evaluation:"), "{err}");
    }
    assert!(!out.exists());
}

#[test]
fn eval_file_errors_are_labelled_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("llama-gqa");
    let out = dir.path().join("out");
    let missing = dir.path().join("missing.txt");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, " \n").unwrap();
    for f in [&missing, &empty] {
        let err = fails_one_line(
            &["prune", "--model", s(&m), "--out", s(&out), "--calib", s(&fixture("llama-gqa").join("calib_ids.npy")), "-q", "--eval", s(f)],
            "evaluation:",
        );
        assert!(!err.contains("calibration"), "{err}");
        let err = fails_one_line(&["eval", "--model", s(&m), "--text", s(f)], "evaluation:");
        assert!(!err.contains("calibration"), "{err}");
        let sweep_out = dir.path().join("sw");
        let err = fails_one_line(
            &[
                "sweep",
                "--model",
                s(&m),
                "--calib",
                s(&fixture("llama-gqa").join("calib_ids.npy")),
                "--eval",
                s(f),
                "--out-dir",
                s(&sweep_out),
            ],
            "evaluation:",
        );
        assert!(!err.contains("calibration"), "{err}");
    }
    assert!(!out.exists());
}

#[test]
fn errors_say_each_thing_once() {
    let dir = tempfile::tempdir().unwrap();
    // an OS error: its text once
    let d = dir.path().join("adir.csv");
    std::fs::create_dir(&d).unwrap();
    let err = fails_one_line(&["report", "--csv", s(&d), "--out-dir", s(&dir.path().join("r"))], "os error");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    assert_eq!(err.matches("adir.csv").count(), 1, "{err}");
    // GGUF errors: the path once
    let g = dir.path().join("bad.gguf");
    std::fs::write(&g, b"GGUF\x03\x00\x00\x00 too short").unwrap();
    let err = fails_one_line(&["inspect", "--model", s(&g)], "bad.gguf");
    assert_eq!(err.matches("bad.gguf").count(), 1, "{err}");
    std::fs::write(&g, b"NOPE and more bytes than a header").unwrap();
    let err = fails_one_line(&["inspect", "--model", s(&g)], "not a GGUF file");
    assert_eq!(err.matches("bad.gguf").count(), 1, "{err}");
    let out = dir.path().join("conv");
    let err = fails_one_line(&["convert", "--gguf", s(&g), "--out", s(&out)], "not a GGUF file");
    assert_eq!(err.matches("bad.gguf").count(), 1, "{err}");
    assert!(!out.exists());
}

#[test]
fn sweep_validates_before_creating_its_out_dir() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture("opt-tiny");
    let out = dir.path().join("sweep-out");
    let cal = calib();
    let base = ["sweep", "--model", s(&m), "--calib", s(&cal), "--eval", s(&cal), "--eval-seqlen", "16", "--out-dir", s(&out)];
    let with = |extra: &[&'static str]| -> Vec<String> { base.iter().chain(extra).map(|x| x.to_string()).collect() };
    for (extra, expect) in [
        (&["--methods", "fasp,bogus"][..], "unknown method"),
        (&["--sparsities", "0.1,1.5"][..], "sparsity must be in [0, 1)"),
        // k < 1 at the second sparsity: refused before the dense rows are measured
        (&["--sparsities", "0.1,0.995", "--methods", "magnitude"][..], "k < 1"),
        (&["--damp", "0"][..], "--damp must be positive"),
        (&["--eval", "/nonexistent/eval.npy"][..], "no such file"),
    ] {
        let v = with(extra);
        let args: Vec<&str> = v.iter().map(String::as_str).collect();
        fails_one_line(&args, expect);
        assert!(!out.exists(), "{extra:?}: --out-dir was created");
    }
    // an --out-dir that is a file is refused up front
    std::fs::write(&out, "x").unwrap();
    fails_one_line(&base[..], "not a directory");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "x");
}

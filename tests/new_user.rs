//! A new user's path, cheaply: `scripts/demo.sh` run from another directory (with a space in its
//! path, and HOME elsewhere) on a fixture-sized model, with the binary this test build made
//! (`FASP_BIN`, so CI compiles nothing twice); and `scripts/fasp-bin.sh` asking cargo where the
//! binary lands, which must follow `CARGO_TARGET_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

fn script(name: &str, cwd: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("scripts").join(name)).current_dir(cwd);
    c
}

#[test]
fn demo_runs_from_anywhere_and_explains_its_result() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path().join("a user dir");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = cwd.join("pruned model");
    let o = script("demo.sh", &cwd)
        .env("HOME", &cwd)
        .env("FASP_HOME", cwd.join("no assets here"))
        .env("FASP_BIN", env!("CARGO_BIN_EXE_fasp-engine"))
        .env("DEMO_MODEL", fixture("llama-gqa"))
        .env("DEMO_CALIB", fixture("calib.txt"))
        .env("DEMO_EVAL", fixture("eval.txt"))
        .env("DEMO_NSAMPLES", "4")
        .env("DEMO_SEQLEN", "16")
        .env("DEMO_EVAL_SEQLEN", "16")
        .env("DEMO_OUT", &out)
        .arg("-q")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "demo failed: {stdout}\n{stderr}");
    for want in ["ppl dense", "ppl pruned", "ppl change:", "docs/accuracy.md", "demo: done in"] {
        assert!(stdout.contains(want), "demo output lacks {want:?}:\n{stdout}");
    }
    for f in ["config.json", "model.safetensors", "fasp.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "demo output lacks {f}");
    }
    assert!(!cwd.join("no assets here").exists(), "the demo fetched assets although its inputs were given");
}

#[test]
fn fasp_bin_follows_cargo_target_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("a clean target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_dir = Path::new(&cargo).parent().map(Path::to_path_buf).unwrap_or_default();
    let path = format!("{}:{}", cargo_dir.display(), std::env::var("PATH").unwrap_or_default());
    let o = script("fasp-bin.sh", tmp.path())
        .arg("--no-build")
        .env("CARGO_TARGET_DIR", &target)
        .env("PATH", path)
        .env_remove("FASP_BIN")
        .env_remove("FASP_PROFILE")
        .output()
        .expect("bash runs");
    assert!(o.status.success(), "fasp-bin.sh --no-build failed: {}", String::from_utf8_lossy(&o.stderr));
    let got = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(PathBuf::from(&got), target.join("release").join("fasp-engine"), "stdout {got:?}");

    // FASP_BIN must name an executable: a clear error otherwise
    let o = script("fasp-bin.sh", tmp.path()).env("FASP_BIN", tmp.path().join("missing")).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not an executable file"));
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fasp-engine"))
}

/// Runs the binary; it must succeed. Returns stdout.
fn ok(args: &[&std::ffi::OsStr]) -> String {
    let o = bin().args(args).output().expect("the binary runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

/// The dtype of every tensor in a safetensors file's header.
fn safetensors_dtypes(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut d: Vec<String> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_string())
        .collect();
    d.sort();
    d.dedup();
    d
}

/// A .npy of int64 ids, 1-D.
fn write_npy(path: &Path, ids: &[i64]) {
    let mut hdr = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}", ids.len());
    while (10 + hdr.len() + 1) % 64 != 0 {
        hdr.push(' ');
    }
    hdr.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(hdr.len() as u16).to_le_bytes());
    b.extend_from_slice(hdr.as_bytes());
    for i in ids {
        b.extend_from_slice(&i.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// The numbers of the `time:` line: (total, [(phase, seconds)]).
fn time_parts(stdout: &str) -> (f64, Vec<(String, f64)>) {
    let line = stdout.lines().find(|l| l.starts_with("time: ")).unwrap_or_else(|| panic!("no time line in {stdout}"));
    let (head, rest) = line.trim_start_matches("time: ").split_once(" s total;").expect("time: X s total; ...");
    let parts = rest
        .split(',')
        .map(|p| {
            let p = p.trim();
            let (name, t) = p.rsplit_once(' ').unwrap();
            (name.to_string(), t.parse::<f64>().unwrap())
        })
        .collect();
    (head.parse().unwrap(), parts)
}

#[test]
fn prune_follows_the_input_dtype_reports_size_time_and_what_sparsity_means() {
    let tmp = tempfile::tempdir().unwrap();
    let (f16_model, again) = (tmp.path().join("f16"), tmp.path().join("again"));
    let calib = fixture("llama-gqa").join("calib_ids.npy");
    let eval = fixture("eval.txt");
    // an explicit --dtype f16 ...
    ok(args![
        "prune",
        "--model",
        &fixture("llama-gqa"),
        "--out",
        &f16_model,
        "--calib",
        &calib,
        "--sparsity",
        "0.25",
        "--dtype",
        "f16",
        "-q"
    ]);
    assert_eq!(safetensors_dtypes(&f16_model.join("model.safetensors")), ["F16"]);
    // ... and an f16 input stays f16 by default, with every phase of the run in the time line
    let out = ok(args![
        "prune",
        "--model",
        &f16_model,
        "--out",
        &again,
        "--calib",
        &fixture("calib.txt"),
        "--nsamples",
        "4",
        "--seqlen",
        "16",
        "--sparsity",
        "0.3",
        "--eval",
        &eval,
        "--eval-seqlen",
        "16",
        "--eval-windows",
        "4",
        "--eval-dense",
        "-q"
    ]);
    assert_eq!(safetensors_dtypes(&again.join("model.safetensors")), ["F16"]);
    let last = out.lines().last().unwrap();
    let bytes = fasp_engine::output::dir_bytes(&again).unwrap();
    assert!(last.starts_with(&format!("wrote {}", again.display())) && last.contains("float16, the input's"), "{last}");
    assert!(last.contains(&format!("{:.1} kB", bytes as f64 / 1e3)), "{last} (the directory holds {bytes} bytes)");
    assert!(out.contains("--sparsity 0.3 removes that fraction of the units of every pruned pair"), "{out}");
    assert!(out.contains("embeddings, norms, the LM head and Q/K are never pruned"), "{out}");
    let (total, parts) = time_parts(&out);
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    for want in ["setup", "dense eval", "forward+stats", "restore", "eval", "write", "other"] {
        assert!(names.contains(&want), "time line lacks {want}: {names:?}");
    }
    let sum: f64 = parts.iter().map(|p| p.1).sum();
    assert!((sum - total).abs() <= 0.005 * (parts.len() + 1) as f64 + 1e-9, "phases add up to {sum}, total {total}");
    // fasp.json records the dtype it wrote
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(again.join("fasp.json")).unwrap()).unwrap();
    assert_eq!(rec["settings"]["dtype"], "float16");
}

#[test]
fn a_quantized_gguf_becomes_f16_and_inspect_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    // the fuzz corpus' tiny LLaMA: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16 and F32 tensors, a 16-token vocabulary
    let gguf = repo().join("fuzz/seeds/gguf/tiny_llama_mixed.gguf");
    let ids: Vec<i64> = (0..96).map(|i| (i * 7) % 16).collect();
    let calib = tmp.path().join("ids.npy");
    write_npy(&calib, &ids);
    let out = tmp.path().join("pruned");
    let stdout = ok(args!["prune", "--model", &gguf, "--out", &out, "--calib", &calib, "--nsamples", "4", "--seqlen", "8", "-q"]);
    assert_eq!(safetensors_dtypes(&out.join("model.safetensors")), ["F16"]);
    assert!(stdout.lines().last().unwrap().contains("float16, the input's"), "{stdout}");
    let conv = tmp.path().join("converted");
    ok(args!["convert", "--gguf", &gguf, "--out", &conv]);
    assert_eq!(safetensors_dtypes(&conv.join("model.safetensors")), ["F16"]);
    let conv32 = tmp.path().join("converted32");
    ok(args!["convert", "--gguf", &gguf, "--out", &conv32, "--dtype", "f32"]);
    assert_eq!(safetensors_dtypes(&conv32.join("model.safetensors")), ["F32"]);
    let info = ok(args!["inspect", "--model", &gguf]);
    assert!(info.contains("dtype          float16 when written (GGUF storage: ") && info.contains("Q8_0 x "), "{info}");
}

#[test]
fn inspect_summarises_how_a_model_was_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pruned");
    let calib = fixture("llama-gqa").join("calib_ids.npy");
    ok(args![
        "prune",
        "--model",
        &fixture("llama-gqa"),
        "--out",
        &out,
        "--calib",
        &calib,
        "--sparsity",
        "0.25",
        "--eval",
        &fixture("eval.txt"),
        "--eval-seqlen",
        "16",
        "--eval-windows",
        "2",
        "--eval-dense",
        "-q"
    ]);
    let text = ok(args!["inspect", "--model", &out]);
    // llama-gqa: 3 layers, 2 KV heads of 32 (64 V units), ffn 96; at 0.25 keep 48 and 72
    for want in [
        "pruned by      fasp-engine",
        "method fasp, sparsity 0.25",
        "kept per layer attention value units 48, MLP channels 72 (3 layers)",
        "of the parameters removed",
        "perplexity     dense ",
    ] {
        assert!(text.contains(want), "inspect lacks {want:?}:\n{text}");
    }
    let v: serde_json::Value = serde_json::from_str(&ok(args!["inspect", "--model", &out, "--json"])).unwrap();
    assert_eq!(v["fasp"]["method"], "fasp");
    assert_eq!(v["fasp"]["mlp_kept_units_range"], serde_json::json!([72, 72]));
    let dense = ok(args!["inspect", "--model", &fixture("llama-gqa")]);
    assert!(dense.contains("pruned         no (no fasp.json)"), "{dense}");
    // a broken record is a clear error, not a silent "no"
    std::fs::write(out.join("fasp.json"), r#"{"engine":"fasp-engine","version":"0.1.0","settings":{"sparsity":"x"}}"#).unwrap();
    let o = bin().args(args!["inspect", "--model", &out]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("fasp.json") && err.contains("invalid type"), "{err}");
}

#[test]
fn eval_and_sweep_say_what_they_need() {
    let o = bin().args(args!["eval", "--model", &fixture("llama-gqa")]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--text") && err.contains("--tokens"), "{err}");
    let help = ok(args!["sweep", "--help"]);
    let dev = help.lines().skip_while(|l| !l.trim_start().starts_with("--device")).nth(1).unwrap_or_default();
    assert!(dev.contains("Where to run"), "sweep --device has no help: {help}");
}

/// The README and the code cite only files of the repository: every `docs/…`, `scripts/…`,
/// `tests/…` path the README names exists, nothing cites the old out-of-tree FASP-SPEC.md, and
/// every `docs/spec.md §n` cited in the code is a section of docs/spec.md.
#[test]
fn readme_and_code_cite_only_files_in_the_repository() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut cited = 0;
    for word in readme.split(|c: char| c.is_whitespace() || "`()[],;:'\"".contains(c)) {
        let w = word.trim_end_matches('.');
        if ["docs/", "scripts/", "tests/", "cuda/", "src/", "fuzz/"].iter().any(|p| w.starts_with(p)) && !w.contains('*') {
            assert!(repo().join(w).exists(), "README cites {w}, which is not in the repository");
            cited += 1;
        }
    }
    assert!(cited >= 5, "the README names only {cited} repository files");
    for gone in ["FASP-SPEC", "ASSETS.md", "DESIGN.md"] {
        assert!(!readme.contains(gone), "README cites {gone}, which is not in the repository");
    }
    let spec = std::fs::read_to_string(repo().join("docs/spec.md")).unwrap();
    let mut stack = vec![repo().join("src"), repo().join("scripts")];
    let mut refs = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else { continue };
            assert!(!text.contains("FASP-SPEC"), "{} cites FASP-SPEC, which is not in the repository", p.display());
            for (i, _) in text.match_indices("docs/spec.md §") {
                let n: String = text[i + "docs/spec.md §".len()..].chars().take_while(char::is_ascii_digit).collect();
                assert!(spec.contains(&format!("\n## §{n} ")), "{} cites docs/spec.md §{n}, which has no such section", p.display());
                refs += 1;
            }
        }
    }
    assert!(refs >= 10, "only {refs} citations of docs/spec.md found");
}

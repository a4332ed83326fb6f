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

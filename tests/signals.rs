//! Signals, leftovers, locking and `--resume` (issue 14, items 3 and 4), on the binary with the
//! fixture models: SIGINT/SIGTERM stop a run cleanly (exit 130/143, nothing left behind), stale
//! temporary and `.old` directories of the same output are removed, a second run on the same
//! output is refused naming the first's PID, and a run killed after any layer and resumed writes
//! exactly what an uninterrupted run writes.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fasp-engine"));
    c.env_remove("FASP_TEST_STOP_AFTER_LAYER").env_remove("FASP_TEST_LAYER_DELAY_MS").env_remove("FASP_INTERRUPT_GRACE_MS");
    c
}

/// `prune` arguments for `model` (a fixture name or a path) into `out`.
fn prune_args(model: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["prune", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    if !extra.contains(&"--calib") {
        a.extend(["--calib".to_string(), fixture("llama-gqa").join("calib_ids.npy").display().to_string()]);
    }
    a.extend(["--sparsity", "0.25", "--device", "cpu", "-q"].iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn prune(model: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    bin().args(prune_args(model, out, extra)).envs(env.iter().copied()).output().expect("the binary runs")
}

fn spawn(model: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Child {
    bin()
        .args(prune_args(model, out, extra))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The names in `dir` that start with a dot (temporary, old, lock files).
fn hidden(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Waits until a run writing `out` has checkpointed layer `l`.
fn wait_for_layer(dir: &Path, l: usize, child: &mut Child) {
    let t0 = Instant::now();
    loop {
        let found = std::fs::read_dir(dir).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().contains(".tmp-")
                && e.path().join(".checkpoint").join(format!("layer-{l:05}.safetensors")).is_file()
        });
        if found {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run ended ({st}) before layer {l} was checkpointed");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "layer {l} was never checkpointed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn copy_model(name: &str, dir: &Path) -> PathBuf {
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// The run record without what differs between runs by nature (timings, the resume note, the
/// measured peak memory and the free memory the plan was checked against).
fn record(out: &Path) -> serde_json::Value {
    let mut v = read_json(&out.join("fasp.json"));
    let o = v.as_object_mut().unwrap();
    for k in ["phases_seconds", "prune_seconds", "total_seconds", "resumed_from_layer"] {
        o.remove(k);
    }
    if let Some(e) = o.get_mut("eval").and_then(|e| e.as_object_mut()) {
        e.remove("seconds_in_pipeline");
    }
    if let Some(m) = o.get_mut("memory").and_then(|m| m.as_object_mut()) {
        m.remove("peak_host_bytes");
        m.remove("peak_device_bytes");
    }
    if let Some(h) = o.get_mut("plan").and_then(|p| p.get_mut("host")).and_then(|h| h.as_object_mut()) {
        h.remove("limit");
        h.remove("fits");
    }
    v
}

/// Every file of the two outputs is the same, byte for byte (fasp.json: but for timings).
fn assert_same_output(a: &Path, b: &Path, what: &str) {
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b), "{what}: different files");
    for n in names(a) {
        if n == "fasp.json" {
            assert_eq!(record(a), record(b), "{what}: fasp.json differs");
        } else {
            assert!(std::fs::read(a.join(&n)).unwrap() == std::fs::read(b.join(&n)).unwrap(), "{what}: {n} differs");
        }
    }
}

#[test]
fn sigint_and_sigterm_stop_the_run_and_remove_its_output() {
    for (sig, name, code) in [(libc::SIGINT, "SIGINT", 130), (libc::SIGTERM, "SIGTERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut child = spawn(&fixture("llama-gqa"), &out, &[], &[("FASP_TEST_LAYER_DELAY_MS", "400")]);
        wait_for_layer(dir.path(), 0, &mut child);
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{name}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: one line expected: {err}");
        assert!(lines[0].starts_with(&format!("error: interrupted by {name} while pruning layer 2 of 3")), "{name}: {err}");
        assert!(lines[0].contains("the unfinished output was removed"), "{err}");
        assert!(!out.exists(), "{name}: output written");
        assert_eq!(hidden(dir.path()), Vec::<String>::new(), "{name}: leftovers");
    }
}

#[test]
fn a_step_that_ignores_the_signal_is_stopped_by_force() {
    // the test hook's sleep does not poll: after the grace period (or at once on a second
    // signal) the process removes its temporary output itself and exits
    for (grace, signals) in [("300", 1), ("60000", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let env = [("FASP_TEST_LAYER_DELAY_MS", "600000"), ("FASP_INTERRUPT_GRACE_MS", grace)];
        let mut child = spawn(&fixture("llama-gqa"), &out, &[], &env);
        wait_for_layer(dir.path(), 0, &mut child);
        let t0 = Instant::now();
        for _ in 0..signals {
            signal(&child, libc::SIGINT);
            std::thread::sleep(Duration::from_millis(100));
        }
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
        assert_eq!(o.status.code(), Some(130), "{err}");
        assert!(err.contains("interrupted by SIGINT while pruning layer 1 of 3 (stopped at once"), "{err}");
        assert!(!out.exists());
        assert_eq!(hidden(dir.path()), Vec::<String>::new(), "grace {grace}: leftovers");
    }
}

/// The PID of a process that has exited.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn stale_leftovers_of_the_same_output_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let model = fixture("llama-gqa");
    assert!(prune(&model, &out, &[], &[]).status.success());
    let dead = dead_pid();
    let stale = [format!(".out.tmp-{dead}-0"), format!(".out.old-{dead}-2"), ".out.old".to_string()];
    for s in &stale {
        std::fs::create_dir(d.join(s)).unwrap();
        std::fs::write(d.join(s).join("shard-00001.safetensors"), b"partial").unwrap();
    }
    // a live process's directory and another output's are not touched
    let live = format!(".out.tmp-{}-0", std::process::id());
    std::fs::create_dir(d.join(&live)).unwrap();
    std::fs::create_dir(d.join(format!(".other.tmp-{dead}-0"))).unwrap();

    let o = prune(&model, &out, &["--force"], &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "a stale .old must not make --force fail: {err}");
    for s in &stale {
        assert!(!d.join(s).exists(), "{s} was not removed");
        assert!(err.contains(&format!("removed {}", d.join(s).display())), "no log line for {s}: {err}");
    }
    assert!(err.contains(&format!("PID {dead}, which is no longer running")), "{err}");
    assert_eq!(hidden(d), vec![format!(".other.tmp-{dead}-0"), live]);
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn a_second_run_on_the_same_output_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = fixture("llama-gqa");
    let mut first = spawn(&model, &out, &[], &[("FASP_TEST_LAYER_DELAY_MS", "1500")]);
    wait_for_layer(dir.path(), 0, &mut first);
    for extra in [&[][..], &["--force"][..]] {
        let o = prune(&model, &out, extra, &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("is being written by another fasp-engine run (PID {})", first.id())),
            "{extra:?}: the first run's PID is not named: {err}"
        );
    }
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("model.safetensors").is_file());
    assert_eq!(hidden(dir.path()), Vec::<String>::new(), "lock or temporary files left");
    // and without --force a later run is refused as before
    let o = prune(&model, &out, &[], &[]);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
}

#[test]
fn concurrent_forced_runs_never_fail_with_directory_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = fixture("opt-tiny");
    for round in 0..6 {
        let runs: Vec<Child> = (0..2).map(|_| spawn(&model, &out, &["--force"], &[])).collect();
        let mut ok = 0;
        for c in runs {
            let o = c.wait_with_output().unwrap();
            let err = stderr(&o);
            assert!(!err.contains("os error 39") && !err.contains("not empty"), "round {round}: {err}");
            if o.status.success() {
                ok += 1;
            } else {
                assert!(err.contains("is being written by another fasp-engine run (PID "), "round {round}: {err}");
            }
        }
        assert!(ok >= 1, "round {round}: neither run succeeded");
        assert!(out.join("model.safetensors").is_file());
        assert_eq!(hidden(dir.path()), Vec::<String>::new(), "round {round}: leftovers");
    }
}

/// Runs killed after each layer in turn (the test hook SIGKILLs the process right after the
/// layer is checkpointed) and resumed give the uninterrupted run's output, byte for byte.
#[test]
fn resume_after_a_kill_at_each_layer_is_bit_identical() {
    let eval = fixture("eval.txt");
    let eval_args = ["--eval", eval.to_str().unwrap(), "--eval-seqlen", "16", "--eval-dense"];
    for (name, method, layers) in [("llama-gqa", "fasp", 3), ("opt-tiny", "flap", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let model = fixture(name);
        let mut extra = vec!["--method", method];
        extra.extend(eval_args);
        let reference = dir.path().join("reference");
        let o = prune(&model, &reference, &extra, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!reference.join(".checkpoint").exists(), "the checkpoint went into the output");
        for stop in 0..layers - 1 {
            let out = dir.path().join(format!("out{stop}"));
            let o = prune(&model, &out, &extra, &[("FASP_TEST_STOP_AFTER_LAYER", &stop.to_string())]);
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&o.status), Some(libc::SIGKILL), "{name}: {}", stderr(&o));
            assert!(!out.exists());
            let mut resume = extra.clone();
            resume.push("--resume");
            let o = prune(&model, &out, &resume, &[]);
            let err = stderr(&o);
            assert!(o.status.success(), "{name} stop {stop}: {err}");
            assert!(err.contains(&format!("{} of {layers} layers were finished by an interrupted run", stop + 1)), "{err}");
            assert_same_output(&reference, &out, &format!("{name}, killed after layer {stop}"));
            assert_eq!(read_json(&out.join("fasp.json"))["resumed_from_layer"], stop + 1);
            assert_eq!(hidden(dir.path()), Vec::<String>::new(), "leftovers");
        }
    }
}

#[test]
fn a_real_sigkill_then_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let reference = dir.path().join("reference");
    assert!(prune(&model, &reference, &[], &[]).status.success());
    let out = dir.path().join("out");
    let mut child = spawn(&model, &out, &[], &[("FASP_TEST_LAYER_DELAY_MS", "1000")]);
    wait_for_layer(dir.path(), 0, &mut child);
    child.kill().unwrap();
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL));
    assert!(!out.exists());
    let o = prune(&model, &out, &["--resume"], &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("layers were finished by an interrupted run"), "{err}");
    assert_same_output(&reference, &out, "SIGKILL after layer 0");
    assert_eq!(hidden(dir.path()), Vec::<String>::new());
}

#[test]
fn a_checkpoint_from_other_settings_or_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model("llama-gqa", dir.path());
    let out = dir.path().join("out");
    let o = prune(&model, &out, &[], &[("FASP_TEST_STOP_AFTER_LAYER", "0")]);
    assert!(!o.status.success());
    let tmp_dirs = || hidden(dir.path()).into_iter().filter(|n| n.starts_with(".out.tmp-")).count();
    assert_eq!(tmp_dirs(), 1);

    let o = prune(&model, &out, &["--resume", "--damp", "0.02"], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to resume") && err.contains("damp 0.01 there, 0.02 now"), "{err}");
    assert_eq!(tmp_dirs(), 1, "a refused checkpoint is kept");

    let other = copy_model("llama-gqa", &dir.path().join("elsewhere"));
    let o = prune(&other, &out, &["--resume"], &[]);
    let err = stderr(&o);
    assert!(err.contains("refusing to resume") && err.contains("a different input model"), "{err}");
    assert_eq!(tmp_dirs(), 1);

    let text = fixture("calib.txt");
    let o = prune(&model, &out, &["--resume", "--calib", text.to_str().unwrap(), "--nsamples", "4", "--seqlen", "16"], &[]);
    let err = stderr(&o);
    assert!(err.contains("refusing to resume") && err.contains("different calibration data"), "{err}");
    assert_eq!(tmp_dirs(), 1);

    // the same settings resume; without --resume a stale checkpoint is removed like any leftover
    let o = prune(&model, &out, &["--resume"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tmp_dirs(), 0);
}

#[test]
fn a_run_without_resume_removes_a_stale_checkpoint_and_resume_without_one_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let out = dir.path().join("out");
    let o = prune(&model, &out, &[], &[("FASP_TEST_STOP_AFTER_LAYER", "1")]);
    assert!(!o.status.success());
    let o = prune(&model, &out, &[], &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("removed ") && err.contains(".out.tmp-"), "{err}");
    assert!(read_json(&out.join("fasp.json")).get("resumed_from_layer").is_none());
    let out2 = dir.path().join("out2");
    let o = prune(&model, &out2, &["--resume"], &[]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("no checkpoint"), "{}", stderr(&o));
    assert_same_output(&out, &out2, "a --resume without a checkpoint");
}

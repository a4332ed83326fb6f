//! `fasp-engine bench` (issue #5): the shape list against the published configs, a tiny benchmark
//! through the library, the CLI's JSON record, and clean failures.

use fasp_engine::bench::{self, BenchOptions};
use fasp_engine::job::Device;
use fasp_engine::model::Model;
use fasp_engine::prune::plan::kept_count;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fasp-engine")).args(args).output().expect("the binary runs")
}

fn tiny(shape: &str) -> BenchOptions {
    BenchOptions { shape: shape.into(), device: Device::Cpu, nsamples: 3, seqlen: 24, sparsity: 0.25, ..BenchOptions::default() }
}

/// A failure that is one `error:` line mentioning `expect`, with a non-zero exit and no panic.
fn assert_clean_failure(o: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{expect}: expected failure");
    assert_ne!(o.status.code(), Some(101), "{expect}: panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{expect}: expected one line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].to_lowercase().contains(&expect.to_lowercase()), "expected {expect:?} in {stderr:?}");
}

#[test]
fn shapes_follow_the_published_configs() {
    let names = [
        "opt-125m",
        "opt-1.3b",
        "opt-2.7b",
        "opt-6.7b",
        "opt-13b",
        "opt-30b",
        "opt-66b",
        "llama-7b",
        "llama-13b",
        "llama-30b",
        "llama-65b",
    ];
    for n in names {
        bench::shape(n).unwrap();
    }
    let dims = |n: &str| {
        let s = bench::shape(n).unwrap();
        (s.hidden, s.layers, s.heads, s.ffn, s.vocab)
    };
    assert_eq!(dims("opt-125m"), (768, 12, 12, 3072, 50272));
    assert_eq!(dims("opt-66b"), (9216, 64, 72, 36864, 50272));
    assert_eq!(dims("llama-7b"), (4096, 32, 32, 11008, 32000));
    assert_eq!(dims("llama-30b"), (6656, 60, 52, 17920, 32000));
    assert_eq!(dims("llama-65b"), (8192, 80, 64, 22016, 32000));
    // the parameter counts HF reports for the real checkpoints
    assert_eq!(bench::shape("opt-125m").unwrap().param_count(), 125_239_296);
    assert_eq!(bench::shape("llama-7b").unwrap().param_count(), 6_738_415_616);
    assert_eq!(bench::shape("opt-125m").unwrap().paper_seconds, Some(17.0));
    assert_eq!(bench::shape("llama-30b").unwrap().paper_seconds, Some(900.0));
    // every shape is a valid config
    for s in bench::SHAPES {
        let cfg = s.config(s.layers).unwrap();
        assert_eq!((cfg.hidden, cfg.layers, cfg.ffn), (s.hidden, s.layers, s.ffn), "{}", s.name);
    }

    let o = run(&["bench", "--list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    for n in names.iter().chain(&["tiny"]) {
        assert!(text.lines().any(|l| l.starts_with(&format!("{n} "))), "{n} missing from --list:\n{text}");
    }
    let line = text.lines().find(|l| l.starts_with("llama-30b ")).unwrap();
    for field in ["6656", "60", "52", "17920", "32000", "900 s"] {
        assert!(line.contains(field), "{field} missing from {line:?}");
    }

    let o = run(&["bench", "--list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--list --json is JSON");
    let opt66 = v.as_array().unwrap().iter().find(|s| s["name"] == "opt-66b").expect("opt-66b listed");
    assert_eq!(opt66["hidden"], 9216);
    assert_eq!(opt66["heads"], 72);
    assert_eq!(opt66["ffn"], 36864);
}

#[test]
fn tiny_benchmark_runs_through_the_library() {
    for shape in ["tiny", "tiny-llama"] {
        let opts = tiny(shape);
        let r = bench::run_bench(&opts).unwrap();
        let p = &r.phases;
        for (name, v) in [
            ("embed", p.embed),
            ("load_weights", p.load_weights),
            ("forward_stats", p.forward_stats),
            ("score_select", p.score_select),
            ("restore", p.restore),
            ("other", p.other),
            ("write", p.write),
        ] {
            assert!(v >= 0.0 && v.is_finite(), "{shape}: phase {name} = {v}");
        }
        assert!(r.prune_seconds > 0.0);
        assert!((r.prune_seconds - p.prune_seconds()).abs() < 1e-12);
        assert!(r.process_seconds >= r.prune_seconds + r.setup_seconds - 1e-9, "{r:?}");
        assert!(r.floor_seconds > 0.0 && r.floor.flops.total > 0.0 && r.floor.weight_bytes > 0);
        assert!(r.floor.rates.gemm_flops_per_s > 0.0 && r.floor.rates.h2d_bytes_per_s > 0.0);
        assert!((r.time_over_floor - r.prune_seconds / r.floor_seconds).abs() < 1e-9);
        assert_eq!(r.peak_device_bytes, None);
        assert!(r.peak_host_bytes.is_some_and(|b| b > 0));
        assert_eq!((r.layers_run, r.layers_total), (2, 2));
        assert_eq!(r.kept.len(), 2);
        let s = bench::shape(shape).unwrap();
        let hd = s.hidden / s.heads;
        for k in &r.kept {
            assert_eq!(k.attn_units, s.kv_heads * hd);
            assert_eq!(k.attn_kept, kept_count(k.attn_units, opts.sparsity).unwrap(), "{shape}: {k:?}");
            assert_eq!(k.mlp_units, s.ffn);
            assert_eq!(k.mlp_kept, kept_count(s.ffn, opts.sparsity).unwrap(), "{shape}: {k:?}");
        }
    }
}

#[test]
fn flop_model_scales_with_the_tokens() {
    let cfg = bench::shape("llama-7b").unwrap().config(32).unwrap();
    let a = bench::prune_flops(&cfg, 64, 2048, 0.2).unwrap();
    let b = bench::prune_flops(&cfg, 128, 2048, 0.2).unwrap();
    assert!((b.projections / a.projections - 2.0).abs() < 1e-9);
    assert!((b.gram / a.gram - 2.0).abs() < 1e-9);
    assert_eq!(a.restore, b.restore);
    assert!((a.total - (a.projections + a.attention + a.gram + a.restore)).abs() <= 1e-6 * a.total);
    // about 2 FLOPs per parameter per token for the calibration forward (6.5B layer parameters)
    let per_token = b.projections / (128.0 * 2048.0);
    assert!(per_token > 1.6 * 6.47e9 && per_token < 2.0 * 6.48e9, "{per_token:e}");
    // no pruning: nothing to restore
    assert_eq!(bench::prune_flops(&cfg, 1, 16, 0.0).unwrap().restore, 0.0);
}

#[test]
fn bench_writes_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    let opts = BenchOptions { write: Some(out.clone()), ..tiny("tiny-llama") };
    let r = bench::run_bench(&opts).unwrap();
    assert_eq!(r.written.as_deref(), Some(out.display().to_string().as_str()));
    let m = Model::open(&out).unwrap();
    assert_eq!(m.cfg.ffn, kept_count(160, 0.25).unwrap());
    assert!(out.join("fasp.json").exists());
}

#[test]
fn cli_json_has_the_documented_fields() {
    let o = run(&["bench", "--shape", "tiny", "--nsamples", "2", "--seqlen", "16", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bench --json prints one JSON object");
    assert_eq!(v["shape"], "tiny");
    assert_eq!(v["device"], "auto");
    assert_eq!(v["nsamples"], 2);
    assert_eq!(v["seqlen"], 16);
    assert_eq!(v["sparsity"], 0.2);
    for phase in ["embed", "load_weights", "forward_stats", "score_select", "restore", "other", "write"] {
        assert!(v["phases"][phase].as_f64().is_some_and(|x| x >= 0.0), "phases.{phase}: {}", v["phases"]);
    }
    for field in ["prune_seconds", "process_seconds", "setup_seconds", "floor_seconds", "time_over_floor"] {
        assert!(v[field].as_f64().is_some_and(|x| x > 0.0), "{field}: {}", v[field]);
    }
    assert!(v["peak_host_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(v["peak_device_bytes"].is_null());
    assert!(v["paper_seconds"].is_null());
    for field in ["compute_seconds", "transfer_seconds", "seconds"] {
        assert!(v["floor"][field].as_f64().is_some_and(|x| x > 0.0), "floor.{field}");
    }
    assert!(v["floor"]["flops"]["total"].as_f64().is_some_and(|x| x > 0.0));
    assert!(v["floor"]["rates"]["gemm_flops_per_s"].as_f64().is_some_and(|x| x > 0.0));
    assert!(v["machine"]["cpu"].is_string());

    let o = run(&["bench", "--shape", "tiny", "--nsamples", "2", "--seqlen", "16", "-q"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("prune ") && text.contains("floor "), "{text}");
}

#[test]
fn bad_bench_inputs_fail_cleanly() {
    assert_clean_failure(&run(&["bench", "--shape", "opt-999b"]), "unknown shape");
    assert_clean_failure(&run(&["bench", "--shape", "tiny", "--device", "cuda"]), "CUDA");
    assert_clean_failure(&run(&["bench", "--shape", "tiny", "--layers", "3"]), "--layers 3");
    assert_clean_failure(&run(&["bench", "--shape", "tiny", "--layers", "0"]), "--layers 0");
    assert_clean_failure(&run(&["bench", "--shape", "tiny", "--seqlen", "4096"]), "learned positions");
    assert_clean_failure(&run(&["bench", "--shape", "tiny", "--sparsity", "1"]), "sparsity");
    assert_clean_failure(&run(&["bench", "--shape", "tiny", "--nsamples", "0"]), "nsamples");
    // clap's own usage errors (exit 2) are not panics either
    let o = run(&["bench"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
}

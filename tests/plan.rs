//! The memory plan (`src/plan.rs`): impossible sizes are one-line errors before any allocation,
//! `--plan` prints the plan and exits, over-limit settings are refused before work starts, the
//! plan's chunking is what the CUDA backend runs (on the emulated device), and the planned device
//! peak holds the emulated device's measured peak without being far above it.

mod common;
use common::*;
use fasp_engine::bench::{self, BenchOptions};
use fasp_engine::job::Device;
use fasp_engine::plan::{self, PlanRequest, Target};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fasp-engine"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

/// `args` under an address-space limit of `kib` KiB (`ulimit -v`), through bash.
fn run_limited(kib: u64, args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!("ulimit -v {kib} && exec '{}' {}", env!("CARGO_BIN_EXE_fasp-engine"), quoted.join(" "));
    Command::new("bash").args(["-c", &script]).output().expect("bash runs")
}

/// One `error:` line containing every one of `expect`, a non-zero exit, no panic or abort.
fn assert_one_line_error(o: &Output, expect: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure: {stderr}");
    assert_eq!(o.status.code(), Some(1), "exit code (101 = panic, none = signal): {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for e in expect {
        assert!(lines[0].contains(e), "{e:?} missing from {stderr:?}");
    }
    assert!(o.stdout.is_empty(), "no partial output: {}", String::from_utf8_lossy(&o.stdout));
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("stdout is JSON")
}

#[test]
fn huge_nsamples_is_a_one_line_error_before_any_allocation() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("pruned");
    let model = fixture("opt-tiny");
    let calib = model.join("calib_ids.npy");
    // 1e12 windows: 4 PB of hidden states. Under a 2 GiB address-space limit an attempt to
    // allocate would abort; the plan refuses first.
    let o = run_limited(
        2 << 20,
        &[
            "prune",
            "--model",
            model.to_str().unwrap(),
            "--calib",
            calib.to_str().unwrap(),
            "--out",
            dest.to_str().unwrap(),
            "--nsamples",
            "1000000000000",
            "--seqlen",
            "16",
            "--device",
            "cpu",
        ],
    );
    assert_one_line_error(&o, &["1000000000000 x 16", "host memory", "lower --nsamples"]);
    assert!(!dest.exists());
    let o = run_limited(2 << 20, &["bench", "--shape", "tiny", "--device", "cpu", "--nsamples", "1000000000000"]);
    assert_one_line_error(&o, &["1000000000000 x 2048", "host memory"]);
    // beyond 64 bits: an overflow error, not a wrap
    let o = run(&["bench", "--shape", "llama-65b", "--device", "cpu", "--nsamples", "18446744073709551615", "--seqlen", "2048"]);
    assert_one_line_error(&o, &["overflows 64-bit sizes"]);
}

#[test]
fn bench_under_an_address_space_limit_is_refused_up_front() {
    // llama-65b at 128 x 2048 holds 8 GiB of hidden states alone: 6 GiB of address space is not enough
    let o = run_limited(6 << 20, &["bench", "--shape", "llama-65b", "--device", "cpu", "--quiet"]);
    assert_one_line_error(&o, &["128 x 2048", "host memory", "address-space limit"]);
}

#[test]
fn bench_plan_fits_llama_30b_in_24_gib_and_65b_in_48_gib_without_a_gpu() {
    for (shape, limit) in [("llama-30b", "24GiB"), ("llama-65b", "48GiB")] {
        let v = json(&run(&["bench", "--shape", shape, "--device", "cuda", "--plan", "--max-gpu-mem", limit, "--json"]));
        let lim = plan::parse_size(limit).unwrap();
        assert_eq!(v["shape"], shape);
        assert_eq!((v["nsamples"].as_u64(), v["seqlen"].as_u64()), (Some(128), Some(2048)), "full size");
        assert_eq!(v["target"], "cuda");
        let dev = &v["device"];
        let peak = dev["peak_bytes"].as_u64().unwrap();
        assert!(peak <= lim, "{shape}: planned {peak} > {lim}");
        assert!(peak > lim / 2, "{shape}: the plan holds the hidden states and context of 262144 tokens: {peak}");
        assert_eq!(dev["fits"], true);
        assert_eq!(dev["limit"]["source"], "--max-gpu-mem");
        let ch = &v["chunking"];
        let chunk = ch["chunk_tokens"].as_u64().unwrap();
        assert!(chunk >= 2048 && chunk.is_multiple_of(2048), "{ch}");
        assert!(v["per_layer"]["h2d_bytes"].as_u64().unwrap() > 0 && v["per_layer"]["d2h_bytes"].as_u64().unwrap() > 0);
        assert!(v["host"]["peak_bytes"].as_u64().unwrap() > 0);
        // the peak's buffers add up to it
        let sum: u64 = dev["buffers"].as_array().unwrap().iter().map(|b| b["bytes"].as_u64().unwrap()).sum();
        assert_eq!(sum, peak);
    }
    // text form
    let o = run(&["bench", "--shape", "llama-30b", "--device", "cuda", "--plan", "--max-gpu-mem", "24GiB"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("peak device memory") && text.contains("fits") && text.contains("tokens per device pass"), "{text}");
    // 65b does not fit 24 GiB: --plan says so (exit 0), running refuses
    let v = json(&run(&["bench", "--shape", "llama-65b", "--device", "cuda", "--plan", "--max-gpu-mem", "24GiB", "--json"]));
    assert_eq!(v["device"]["fits"], false);
}

#[test]
fn over_limit_device_settings_are_refused_before_work() {
    // the emulated device opens, but 65b's hidden states alone exceed 8 GiB
    let o = run(&["bench", "--shape", "llama-65b", "--device", "emu", "--max-gpu-mem", "8GiB", "--quiet"]);
    assert_one_line_error(&o, &["device memory", "8.00 GiB (--max-gpu-mem)", "hidden states"]);
    // prune on a fixture with a 64 KiB device: refused, nothing written
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("pruned");
    let model = fixture("llama-gqa");
    let o = run(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--calib",
        model.join("calib_ids.npy").to_str().unwrap(),
        "--out",
        dest.to_str().unwrap(),
        "--device",
        "emu",
        "--max-gpu-mem",
        "64KiB",
        "--quiet",
    ]);
    assert_one_line_error(&o, &["device memory", "--max-gpu-mem"]);
    assert!(!dest.exists());
}

#[test]
fn prune_plan_prints_and_exits_without_output() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("pruned");
    let model = fixture("llama-gqa");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "prune".to_string(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--calib".into(),
            fixture("calib.txt").to_str().unwrap().into(),
            "--seqlen".into(),
            "32".into(),
            "--out".into(),
            dest.to_str().unwrap().into(),
            "--plan".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let o = bin().args(args(&["--device", "cpu"])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    // CPU default: 128 windows of the given 32 tokens; an estimate from a short measurement
    assert!(text.contains("plan: 128 x 32 = 4096 calibration tokens, 3 layers, on the CPU"), "{text}");
    assert!(text.contains("peak host memory") && text.contains("estimated time") && text.contains("per layer"), "{text}");
    assert!(!dest.exists(), "--plan writes nothing");

    let v: serde_json::Value = serde_json::from_slice(&bin().args(args(&["--device", "emu", "--json"])).output().unwrap().stdout).unwrap();
    assert_eq!(v["target"], "emu");
    assert_eq!(v["tokens"], 4096);
    assert!(v["device"]["peak_bytes"].as_u64().unwrap() > 0);
    assert!(v["device"]["limit"]["source"].as_str().unwrap().starts_with("free on the device"), "{v}");
    // an impossible request is reported as not fitting, still without work
    let o = bin().args(args(&["--device", "cpu", "--nsamples", "1000000000000", "--json"])).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["host"]["fits"], false);
    assert!(!dest.exists());
}

/// Tiny-llama on the emulated device: `nsamples` windows of 32 tokens.
fn emu_opts(nsamples: usize, max_gpu_mem: Option<u64>) -> BenchOptions {
    BenchOptions {
        shape: "tiny-llama".into(),
        device: Device::Emu,
        nsamples,
        seqlen: 32,
        sparsity: 0.25,
        max_gpu_mem,
        ..BenchOptions::default()
    }
}

#[test]
fn planned_device_peak_holds_the_emulated_peak_and_the_backend_runs_the_planned_chunks() {
    // default chunking: everything in one chunk
    let r = bench::run_bench(&emu_opts(16, None)).unwrap();
    let (planned, measured) = (r.planned_peak_device_bytes.unwrap(), r.peak_device_bytes.unwrap());
    assert!(measured <= planned, "measured {measured} > planned {planned}");
    assert!(planned <= measured * 3 / 2, "planned {planned} is far above the measured {measured}");
    let full = r.plan.chunking.unwrap();
    assert_eq!(full.chunk_tokens, 16 * 32);
    // the planned bytes per layer describe the device-resident data flow: what comes back is the
    // pruned W2' plus O(n), never H (measured by the emulated device's counters)
    let total = r.device_phases.as_ref().unwrap().total();
    let layers = r.plan.layers as u64;
    let (planned_d2h, planned_h2d) = (r.plan.per_layer.d2h_bytes.unwrap(), r.plan.per_layer.h2d_bytes.unwrap());
    let measured_d2h = total.d2h_bytes / layers;
    assert!(measured_d2h <= planned_d2h, "d2h per layer: measured {measured_d2h} > planned {planned_d2h}");
    assert!(planned_d2h <= 2 * measured_d2h, "d2h per layer: planned {planned_d2h} is far above the measured {measured_d2h}");
    let measured_h2d = (total.h2d_bytes - r.device_phases.as_ref().unwrap().embed.h2d_bytes) / layers;
    assert!(
        measured_h2d <= 2 * planned_h2d && planned_h2d <= 2 * measured_h2d,
        "h2d per layer: planned {planned_h2d}, measured {measured_h2d}"
    );

    // a limit between the smallest chunking's peak and the full one's: the plan chunks, the
    // backend follows, and the run stays within the limit
    let cfg = bench::shape("tiny-llama").unwrap().config(2).unwrap();
    let req = |limit: u64| PlanRequest {
        target: Target::Emu,
        nsamples: 16,
        seqlen: 32,
        sparsity: 0.25,
        eval_tokens: 0,
        device_limit: Some(plan::Limit { bytes: limit, source: "test".into() }),
        host_limit: None,
        chunk_tokens: None,
        vocab: 512,
        source_dtype_bytes: 2,
        text_bytes: 0,
        output_held_bytes: 0,
    };
    let smallest = plan::plan(&cfg, &req(1)).unwrap();
    assert_eq!(smallest.device.as_ref().unwrap().fits, Some(false));
    assert_eq!(smallest.chunking.unwrap(), plan::Chunking { chunk_tokens: 32, attn_windows: 1 });
    let min_peak = smallest.device.unwrap().peak_bytes;
    let limit = (min_peak + planned) / 2;
    assert!(min_peak < limit && limit < planned, "{min_peak} < {limit} < {planned}");
    let r = bench::run_bench(&emu_opts(16, Some(limit))).unwrap();
    let ch = r.plan.chunking.unwrap();
    assert!(ch.chunk_tokens < full.chunk_tokens, "the plan chunks under {limit}: {ch:?}");
    let (planned, measured) = (r.planned_peak_device_bytes.unwrap(), r.peak_device_bytes.unwrap());
    assert!(planned <= limit, "planned {planned} > limit {limit}");
    assert!(measured <= planned, "measured {measured} > planned {planned} with {ch:?}");
    assert!(planned <= measured * 3 / 2, "planned {planned} is far above the measured {measured}");
    // the same kept units as the unchunked run (chunking changes only the order of sums)
    assert_eq!(r.kept.len(), 2);
}

#[test]
fn fasp_json_reports_planned_and_measured_peaks() {
    let out = tempfile::tempdir().unwrap();
    for (device, on_device) in [(Device::Emu, true), (Device::Cpu, false)] {
        let dest = out.path().join(format!("{device:?}"));
        let mut j = job("llama-gqa", &dest, 0.25);
        j.device = device;
        let s = fasp_engine::job::run_prune(&j).unwrap();
        let m = &s.fasp_json["memory"];
        let planned_host = m["planned_peak_host_bytes"].as_u64().unwrap();
        assert!(planned_host > 0);
        assert!(m["peak_host_bytes"].as_u64().unwrap() > 0);
        if on_device {
            let (p, a) = (m["planned_peak_device_bytes"].as_u64().unwrap(), m["peak_device_bytes"].as_u64().unwrap());
            assert!(a <= p && p <= a * 3 / 2, "device: planned {p}, measured {a}");
        } else {
            assert!(m["planned_peak_device_bytes"].is_null() && m["peak_device_bytes"].is_null());
        }
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(dest.join("fasp.json")).unwrap()).unwrap();
        assert_eq!(written["memory"], *m);
        assert_eq!(written["plan"]["tokens"], 64, "4 windows of 16 from calib_ids.npy");
    }
}

#[test]
fn prune_states_its_cost_before_it_starts() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("pruned");
    let model = fixture("llama-mha");
    let o = run(&[
        "prune",
        "--model",
        model.to_str().unwrap(),
        "--calib",
        fixture("calib.txt").to_str().unwrap(),
        "--nsamples",
        "4",
        "--seqlen",
        "32",
        "--out",
        dest.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let plan_line = err.lines().position(|l| l.starts_with("plan: 4 x 32 = 128 calibration tokens")).expect("plan line");
    assert!(err.lines().nth(plan_line + 1).unwrap().contains("peak host memory"), "{err}");
    assert!(err.contains("estimated time"), "{err}");
    assert!(!err.contains("ETA 0s"), "{err}");
}

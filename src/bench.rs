//! `fasp-engine bench`: the prune pipeline timed on seeded synthetic weights of the published
//! OPT and LLaMA shapes, with a phase breakdown and the physical floor for the shape.
//!
//! Pruning time does not depend on the weights' values, so the timing table of the paper can be
//! reproduced without downloading any checkpoint. Before the clock starts, the bench generates
//! the synthetic weights ([`SyntheticSource`]) and the calibration token ids in host memory; the
//! timed part is the real pipeline ([`prune::prune`]) on the chosen backend, with a sink that
//! drops each pruned layer (or writes it with `--write`).
//!
//! # The floor
//!
//! `floor_seconds = max(flops / gemm_rate, weight_bytes / upload_rate)`: the unavoidable
//! arithmetic at the machine's measured GEMM rate, or the checkpoint crossing to the device at the
//! measured host→device bandwidth, whichever is longer (they can overlap). Both rates are measured
//! in the same run: on the CPU, a faer f32 GEMM of 1024³ and a 256 MiB `memcpy` (best of 3 each).
//!
//! The FLOP model, per layer, with `T = nsamples·seqlen` tokens, `L = seqlen`, `d = hidden`,
//! `nq = heads·head_dim`, `nk = kv_heads·head_dim`, `f = ffn`, `g = 2` with a gate (LLaMA) else 1,
//! and the kept widths `kc` (o_proj input columns) and `km` (MLP channels); 2 FLOPs per
//! multiply-add:
//!
//! * calibration forward: q/k/v `2·T·d·(nq + 2·nk)`; causal attention (QKᵀ and PV over the lower
//!   triangle) `2·T·L·nq`; o_proj on the kept context `2·T·kc·d`; up (and gate) `2·T·d·f·g`;
//!   down on the kept channels `2·T·km·d`. (A kernel that ignores causality does `4·T·L·nq`.)
//! * statistics: each Gram matrix `H = XᵀX` of width `n` is symmetric: `T·n·(n+1)`, for
//!   `n = nq` and `n = f`. (A plain GEMM does `2·T·n²`.)
//! * restoration of a pair with `s` kept and `p` pruned columns and `m = d` output rows:
//!   `B = W2[:,P]·H[P,S]` `2·m·p·s`, Cholesky `s³/3`, the two triangular solves `2·s²·m`.
//!
//! Not counted (so the floor stays a lower bound): scoring and selection (`O(d·n)`), norms, rotary,
//! softmax and activations (elementwise), and the reconstruction-error diagnostic.
//! `weight_bytes` is the checkpoint the prune reads: embeddings (and OPT's positions) and every
//! layer that runs, in the source dtype (f16).

use crate::backend::Backend;
use crate::error::{FaspError, Result};
use crate::job::{self, Device};
use crate::model::arch::layer_layout;
use crate::model::synthetic::{tensor_shapes, SyntheticSource};
use crate::model::{Family, LayerWeights, Model, ModelConfig};
use crate::output::ModelWriter;
use crate::plan::Plan;
use crate::prune::plan::{check_sparsity, kept_count};
use crate::prune::{self, LayerReport, PruneConfig, PruneReport};
use crate::tensor::Mat;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// A published model shape.
#[derive(Clone, Debug)]
pub struct Shape {
    pub name: &'static str,
    pub family: Family,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Prune time in the FASP paper (one RTX 4090), where the paper gives one.
    pub paper_seconds: Option<f64>,
}

const OPT_VOCAB: usize = 50272;
const LLAMA_VOCAB: usize = 32000;
/// `max_position_embeddings` of OPT and LLaMA-1.
pub const MAX_POSITIONS: usize = 2048;

const fn opt(name: &'static str, hidden: usize, layers: usize, heads: usize, ffn: usize, paper: Option<f64>) -> Shape {
    Shape { name, family: Family::Opt, hidden, layers, heads, kv_heads: heads, ffn, vocab: OPT_VOCAB, paper_seconds: paper }
}

const fn llama(name: &'static str, hidden: usize, layers: usize, heads: usize, ffn: usize, paper: Option<f64>) -> Shape {
    Shape { name, family: Family::Llama, hidden, layers, heads, kv_heads: heads, ffn, vocab: LLAMA_VOCAB, paper_seconds: paper }
}

/// The shapes of the paper's models (their HF `config.json`), and two tiny ones for tests.
pub const SHAPES: &[Shape] = &[
    opt("opt-125m", 768, 12, 12, 3072, Some(17.0)),
    opt("opt-1.3b", 2048, 24, 32, 8192, None),
    opt("opt-2.7b", 2560, 32, 32, 10240, None),
    opt("opt-6.7b", 4096, 32, 32, 16384, None),
    opt("opt-13b", 5120, 40, 40, 20480, None),
    opt("opt-30b", 7168, 48, 56, 28672, None),
    opt("opt-66b", 9216, 64, 72, 36864, None),
    llama("llama-7b", 4096, 32, 32, 11008, None),
    llama("llama-13b", 5120, 40, 40, 13824, None),
    llama("llama-30b", 6656, 60, 52, 17920, Some(900.0)),
    llama("llama-65b", 8192, 80, 64, 22016, None),
    Shape { name: "tiny", family: Family::Opt, hidden: 64, layers: 2, heads: 4, kv_heads: 4, ffn: 256, vocab: 512, paper_seconds: None },
    Shape {
        name: "tiny-llama",
        family: Family::Llama,
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        ffn: 160,
        vocab: 512,
        paper_seconds: None,
    },
];

/// The shape called `name`, or an error naming the known ones.
pub fn shape(name: &str) -> Result<&'static Shape> {
    SHAPES.iter().find(|s| s.name == name).ok_or_else(|| {
        let known: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        FaspError::Arg(format!("unknown shape {name:?} (known: {})", known.join(", ")))
    })
}

impl Shape {
    /// The HF `config.json` of this shape with `layers` decoder layers.
    pub fn config_json(&self, layers: usize) -> Value {
        match self.family {
            Family::Opt => json!({
                "model_type": "opt",
                "hidden_size": self.hidden,
                "num_hidden_layers": layers,
                "num_attention_heads": self.heads,
                "ffn_dim": self.ffn,
                "vocab_size": self.vocab,
                "max_position_embeddings": MAX_POSITIONS,
                "word_embed_proj_dim": self.hidden,
                "do_layer_norm_before": true,
                "activation_function": "relu",
                "enable_bias": true,
                "tie_word_embeddings": true,
                "torch_dtype": "float16",
            }),
            _ => json!({
                "model_type": "llama",
                "hidden_size": self.hidden,
                "num_hidden_layers": layers,
                "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads,
                "intermediate_size": self.ffn,
                "vocab_size": self.vocab,
                "max_position_embeddings": MAX_POSITIONS,
                "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0,
                "hidden_act": "silu",
                "tie_word_embeddings": false,
                "torch_dtype": "float16",
            }),
        }
    }

    pub fn config(&self, layers: usize) -> Result<ModelConfig> {
        ModelConfig::from_json(self.config_json(layers))
    }

    /// Parameters of the whole model (every tensor of the checkpoint).
    pub fn param_count(&self) -> usize {
        let cfg = self.config(self.layers).expect("built-in shapes are valid configs");
        tensor_shapes(&cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// One entry of `bench --list --json`.
    pub fn info(&self) -> Value {
        json!({
            "name": self.name,
            "family": self.family.name(),
            "hidden": self.hidden,
            "layers": self.layers,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.hidden / self.heads,
            "ffn": self.ffn,
            "vocab": self.vocab,
            "max_positions": MAX_POSITIONS,
            "params": self.param_count(),
            "paper_seconds": self.paper_seconds,
        })
    }
}

/// `bench --list` as text: one line per shape.
pub fn list_text() -> String {
    let mut s = format!(
        "{:<11} {:<6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9}  {}\n",
        "shape", "family", "hidden", "layers", "heads", "ffn", "vocab", "params", "head_dim", "paper prune time"
    );
    for sh in SHAPES {
        let params = sh.param_count() as f64;
        let params = if params >= 1e9 { format!("{:.2}B", params / 1e9) } else { format!("{:.1}M", params / 1e6) };
        let paper = sh.paper_seconds.map_or("-".to_string(), |p| format!("{p} s (1x RTX 4090)"));
        s += &format!(
            "{:<11} {:<6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9}  {}\n",
            sh.name,
            sh.family.name(),
            sh.hidden,
            sh.layers,
            sh.heads,
            sh.ffn,
            sh.vocab,
            params,
            sh.hidden / sh.heads,
            paper
        );
    }
    s
}

/// What `bench --shape` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub shape: String,
    pub device: Device,
    pub nsamples: usize,
    pub seqlen: usize,
    pub sparsity: f64,
    /// Only the first N layers (a shorter run); all of them when `None`.
    pub layers: Option<usize>,
    /// Seed of the synthetic weights and the calibration tokens.
    pub seed: u64,
    /// Write the pruned model here (as `prune` does).
    pub write: Option<PathBuf>,
    pub force: bool,
    pub progress: bool,
    /// Device memory the run may use (`--max-gpu-mem`); what the device has free when `None`.
    pub max_gpu_mem: Option<u64>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            shape: "tiny".into(),
            device: Device::Auto,
            nsamples: 128,
            seqlen: 2048,
            sparsity: 0.2,
            layers: None,
            seed: 0,
            write: None,
            force: false,
            progress: false,
            max_gpu_mem: None,
        }
    }
}

/// FLOPs of one prune, by kind (the model is in the module doc).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Flops {
    pub projections: f64,
    pub attention: f64,
    pub gram: f64,
    pub restore: f64,
    pub total: f64,
}

/// FLOPs of restoring one pair: `s` kept and `p` pruned columns, `m` output rows.
fn restore_flops(m: f64, s: f64, p: f64) -> f64 {
    if p == 0.0 {
        return 0.0;
    }
    2.0 * m * p * s + s * s * s / 3.0 + 2.0 * s * s * m
}

/// The unavoidable FLOPs of pruning every layer of `cfg` (see the module doc).
pub fn prune_flops(cfg: &ModelConfig, nsamples: usize, seqlen: usize, sparsity: f64) -> Result<Flops> {
    let t = (nsamples * seqlen) as f64;
    let (d, nq, nk, f) = (cfg.hidden as f64, cfg.ctx_width() as f64, cfg.v_width() as f64, cfg.ffn as f64);
    let g = if cfg.arch().gated() { 2.0 } else { 1.0 };
    let kc = (kept_count(cfg.v_width(), sparsity)? * cfg.group()) as f64;
    let km = kept_count(cfg.ffn, sparsity)? as f64;
    let layers = cfg.layers as f64;
    let projections = 2.0 * t * d * (nq + 2.0 * nk) + 2.0 * t * kc * d + 2.0 * t * d * f * g + 2.0 * t * km * d;
    let attention = 2.0 * t * seqlen as f64 * nq;
    let gram = t * nq * (nq + 1.0) + t * f * (f + 1.0);
    let restore = restore_flops(d, kc, nq - kc) + restore_flops(d, km, f - km);
    let per_layer = Flops { projections, attention, gram, restore, total: projections + attention + gram + restore };
    Ok(Flops {
        projections: per_layer.projections * layers,
        attention: per_layer.attention * layers,
        gram: per_layer.gram * layers,
        restore: per_layer.restore * layers,
        total: per_layer.total * layers,
    })
}

/// Bytes of the checkpoint the prune reads: embeddings (and positions) and every layer.
pub fn weight_bytes(model: &Model) -> usize {
    let numel = |name: &str| model.src.shape(name).map_or(0, |s| s.iter().product::<usize>());
    let mut n = numel(&model.names.embed());
    n += model.names.positions().map_or(0, |p| numel(&p));
    for l in 0..model.cfg.layers {
        n += layer_layout(&model.cfg, l).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>();
    }
    n * model.dtype().size()
}

/// Measured machine rates the floor is computed from.
#[derive(Clone, Debug, Serialize)]
pub struct Rates {
    pub gemm_flops_per_s: f64,
    pub h2d_bytes_per_s: f64,
    /// How they were measured.
    pub method: String,
}

/// Best-of-`reps` rate of an f32 `n³` GEMM through the same faer call as the CPU forward.
pub fn measure_gemm_rate(n: usize, reps: usize) -> f64 {
    let a = Mat::from_vec(n, n, (0..n * n).map(|i| ((i % 17) as f32 - 8.0) * 1e-2).collect());
    let b = Mat::from_vec(n, n, (0..n * n).map(|i| ((i % 13) as f32 - 6.0) * 1e-2).collect());
    std::hint::black_box(crate::tensor::linear(&a, &b, None)); // warm up threads and caches
    let best = (0..reps.max(1))
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(crate::tensor::linear(&a, &b, None));
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n as f64).powi(3) / best.max(1e-9)
}

/// Best-of-`reps` bandwidth of copying a `bytes` buffer in host memory (the CPU's "upload").
pub fn measure_copy_rate(bytes: usize, reps: usize) -> f64 {
    let src: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut dst = vec![1u8; bytes];
    let best = (0..reps.max(1))
        .map(|_| {
            let t0 = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    bytes as f64 / best.max(1e-9)
}

/// The CPU's rates: faer f32 GEMM 1024³ and a 256 MiB memcpy, best of 3 each.
pub fn measure_cpu_rates() -> Rates {
    const N: usize = 1024;
    const BYTES: usize = 256 << 20;
    Rates {
        gemm_flops_per_s: measure_gemm_rate(N, 3),
        h2d_bytes_per_s: measure_copy_rate(BYTES, 3),
        method: format!("faer f32 GEMM {N}^3 on {} threads; memcpy of {} MiB; best of 3", rayon::current_num_threads(), BYTES >> 20),
    }
}

/// The physical floor of one prune on one machine.
#[derive(Clone, Debug, Serialize)]
pub struct Floor {
    pub flops: Flops,
    pub weight_bytes: usize,
    pub rates: Rates,
    pub compute_seconds: f64,
    pub transfer_seconds: f64,
    /// `max(compute_seconds, transfer_seconds)`.
    pub seconds: f64,
}

pub fn floor(flops: Flops, weight_bytes: usize, rates: Rates) -> Floor {
    let compute_seconds = flops.total / rates.gemm_flops_per_s;
    let transfer_seconds = weight_bytes as f64 / rates.h2d_bytes_per_s;
    Floor { flops, weight_bytes, rates, compute_seconds, transfer_seconds, seconds: compute_seconds.max(transfer_seconds) }
}

/// Peak resident memory of this process so far (`VmHWM`), where the OS reports it.
pub fn peak_host_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The machine a result was measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub logical_cores: usize,
    pub threads: usize,
}

pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    Machine { cpu, logical_cores: std::thread::available_parallelism().map_or(1, |n| n.get()), threads: rayon::current_num_threads() }
}

/// Seconds per phase of the pipeline. `other` is the pipeline's wall time not inside any timed
/// phase (assembling the pruned layer), so the phases add up to `prune_seconds + write`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    pub embed: f64,
    pub load_weights: f64,
    pub forward_stats: f64,
    pub score_select: f64,
    pub restore: f64,
    pub other: f64,
    pub write: f64,
}

impl Phases {
    fn of(p: &prune::pipeline::PhaseTimes, pipeline_seconds: f64) -> Phases {
        let timed = p.embed + p.load_weights + p.forward_stats + p.score_select + p.restore;
        Phases {
            embed: p.embed,
            load_weights: p.load_weights,
            forward_stats: p.forward_stats,
            score_select: p.score_select,
            restore: p.restore,
            other: (pipeline_seconds - p.write - timed).max(0.0),
            write: p.write,
        }
    }
    /// Everything but writing.
    pub fn prune_seconds(&self) -> f64 {
        self.embed + self.load_weights + self.forward_stats + self.score_select + self.restore + self.other
    }
}

/// Units and kept units of a layer's two pairs.
#[derive(Clone, Debug, Serialize)]
pub struct LayerKept {
    pub layer: usize,
    pub attn_units: usize,
    pub attn_kept: usize,
    pub mlp_units: usize,
    pub mlp_kept: usize,
}

impl LayerKept {
    fn of(r: &LayerReport) -> LayerKept {
        LayerKept { layer: r.layer, attn_units: r.attn.units, attn_kept: r.attn.kept, mlp_units: r.mlp.units, mlp_kept: r.mlp.kept }
    }
}

/// One benchmark run: what `bench --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub shape: String,
    pub family: &'static str,
    pub device: Device,
    pub backend: String,
    pub nsamples: usize,
    pub seqlen: usize,
    pub sparsity: f64,
    pub seed: u64,
    pub layers_run: usize,
    pub layers_total: usize,
    pub phases: Phases,
    /// The pipeline's wall time without writing (the sum of the phases but `write`).
    pub prune_seconds: f64,
    /// Generating the synthetic weights and tokens (and opening `--write`), before the clock.
    pub setup_seconds: f64,
    /// The whole bench: setup, pipeline, writing; not the rate measurements of the floor.
    pub process_seconds: f64,
    pub peak_host_bytes: Option<u64>,
    pub peak_device_bytes: Option<u64>,
    /// Bytes copied host → device and device → host during the run (device backends only).
    pub h2d_bytes: Option<u64>,
    pub d2h_bytes: Option<u64>,
    /// Kernel launches and library calls (device backends only).
    pub kernel_launches: Option<u64>,
    pub library_calls: Option<u64>,
    /// h2d/d2h bytes and peak device memory per phase (device backends only).
    pub device_phases: Option<prune::pipeline::PhaseDevice>,
    pub floor: Floor,
    pub floor_seconds: f64,
    /// `prune_seconds / floor_seconds`.
    pub time_over_floor: f64,
    pub paper_seconds: Option<f64>,
    pub machine: Machine,
    pub written: Option<String>,
    pub kept: Vec<LayerKept>,
    /// The memory plan's peaks, to hold against `peak_host_bytes` / `peak_device_bytes`.
    pub planned_peak_host_bytes: u64,
    pub planned_peak_device_bytes: Option<u64>,
    pub plan: Plan,
}

/// The number of layers to run: all, or the first `n` (1 ≤ n ≤ all).
fn layers_to_run(shape: &Shape, layers: Option<usize>) -> Result<usize> {
    match layers {
        None => Ok(shape.layers),
        Some(n) if (1..=shape.layers).contains(&n) => Ok(n),
        Some(n) => Err(FaspError::Arg(format!("--layers {n}: {} has {} layers (choose 1..={})", shape.name, shape.layers, shape.layers))),
    }
}

/// Checks the settings before anything is generated.
fn check_settings(shape: &Shape, opts: &BenchOptions) -> Result<()> {
    check_sparsity(opts.sparsity)?;
    if opts.nsamples == 0 {
        return Err(FaspError::Arg("--nsamples must be at least 1".into()));
    }
    if opts.seqlen < 2 {
        return Err(FaspError::Arg(format!("--seqlen must be at least 2, got {}", opts.seqlen)));
    }
    if shape.family == Family::Opt && opts.seqlen > MAX_POSITIONS {
        return Err(FaspError::Arg(format!("--seqlen {} exceeds OPT's {MAX_POSITIONS} learned positions", opts.seqlen)));
    }
    Ok(())
}

/// A model of `shape` with its first `layers` layers, on seeded synthetic weights.
pub fn synthetic_model(shape: &Shape, layers: usize, seed: u64) -> Result<Model> {
    let cfg = shape.config(layers)?;
    let src = SyntheticSource::new(&cfg, seed, shape.name);
    Model::from_parts(PathBuf::from(format!("synthetic:{}", shape.name)), cfg, Box::new(src))
}

/// `nsamples` windows of `seqlen` seeded uniform token ids below `vocab`, flattened.
pub fn calibration_ids(vocab: usize, nsamples: usize, seqlen: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xca1b_0000);
    (0..nsamples * seqlen).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn progress_bar(layers: usize, label: &str) -> indicatif::ProgressBar {
    crate::job::progress_bar(layers, &format!("bench {label}"))
}

/// The pipeline on `model`, each pruned layer going to `writer` or dropped.
fn run_pipeline(
    model: &Model,
    ids: &[u32],
    opts: &BenchOptions,
    backend: &mut dyn Backend,
    writer: Option<&mut ModelWriter>,
) -> Result<PruneReport> {
    let prune_cfg = PruneConfig { sparsity: opts.sparsity, ..PruneConfig::default() };
    let pb = opts.progress.then(|| progress_bar(model.cfg.layers, &opts.shape));
    let mut writer = writer;
    let mut sink = |l: usize, lw: LayerWeights, _: &LayerReport| match writer.as_deref_mut() {
        Some(w) => w.write_layer(model, l, &lw),
        None => Ok(()),
    };
    let report = prune::prune(model, ids, opts.seqlen, &prune_cfg, backend, &mut sink, pb.as_ref())?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(report)
}

/// The run record written as `fasp.json` with `--write`.
fn fasp_json(opts: &BenchOptions, report: &PruneReport, plan: &Plan, peak_device_bytes: Option<u64>) -> Value {
    json!({
        "engine": "fasp-engine",
        "version": crate::VERSION,
        "model": format!("synthetic:{}", opts.shape),
        "synthetic_seed": opts.seed,
        "method": "fasp",
        "settings": {"sparsity": opts.sparsity, "nsamples": opts.nsamples, "seqlen": opts.seqlen, "device": opts.device},
        "backend": report.backend,
        "phases_seconds": report.phases,
        "memory": job::memory_json(plan, peak_device_bytes),
        "plan": plan,
        "layers": report.layers.iter().map(LayerKept::of).collect::<Vec<_>>(),
    })
}

/// The memory plan of a bench run (`bench --plan`), for the opened backend `be`, or, without
/// one, for the device `--device` names (`--device cuda` plans without a GPU).
pub fn plan_bench(opts: &BenchOptions, be: Option<&dyn Backend>) -> Result<Plan> {
    let shape = shape(&opts.shape)?;
    let layers = layers_to_run(shape, opts.layers)?;
    check_settings(shape, opts)?;
    // from the config alone: the synthetic weights are not generated for a plan
    let cfg = shape.config(layers)?;
    let target = be.map_or_else(|| job::target_of(opts.device), |b| job::backend_target(opts.device, b));
    let limit = job::device_limit(opts.max_gpu_mem, be);
    let req = job::plan_request_for_config(&cfg, target, opts.nsamples, opts.seqlen, opts.sparsity, limit);
    crate::plan::plan(&cfg, &req)
}

/// `bench --plan`: the plan, opening the device only to ask its free memory (when
/// `--max-gpu-mem` is not given and the device opens).
pub fn plan_only(opts: &BenchOptions) -> Result<Value> {
    let be = match (job::target_of(opts.device).on_device(), opts.max_gpu_mem) {
        (true, None) => job::backend(opts.device).ok(),
        _ => None,
    };
    let mut plan = plan_bench(opts, be.as_deref())?;
    let shape = shape(&opts.shape)?;
    if plan.target == crate::plan::Target::Cpu {
        plan.estimate = Some(crate::plan::estimate_cpu(&shape.config(plan.layers)?, opts.nsamples, opts.seqlen, opts.sparsity)?);
    }
    let mut v = serde_json::to_value(&plan).map_err(|e| FaspError::Arg(format!("plan as JSON: {e}")))?;
    v["shape"] = json!(shape.name);
    v["text"] = json!(plan.text());
    Ok(v)
}

/// Runs one benchmark: plan (refusing what does not fit), generate (untimed), prune (timed),
/// write (optional), then measure the machine's rates for the floor.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchResult> {
    let t_process = Instant::now();
    let shape = shape(&opts.shape)?;
    let layers = layers_to_run(shape, opts.layers)?;
    check_settings(shape, opts)?;
    // sizes are checked before anything is allocated; the device's limit once it is open
    plan_bench(opts, None)?.check()?;
    let mut backend = job::backend_announced(opts.device, opts.progress)?;
    let plan = plan_bench(opts, Some(backend.as_ref()))?;
    plan.check()?;
    job::apply_plan(&plan, backend.as_mut());
    if opts.progress {
        eprint!("{}", plan.text());
    }

    let model = synthetic_model(shape, layers, opts.seed)?;
    let ids = calibration_ids(shape.vocab, opts.nsamples, opts.seqlen, opts.seed);
    let mut writer = match &opts.write {
        Some(dir) => Some(ModelWriter::create(dir, &model, opts.force, model.dtype(), false)?),
        None => None,
    };
    let setup_seconds = t_process.elapsed().as_secs_f64();

    let t_pipeline = Instant::now();
    let report = run_pipeline(&model, &ids, opts, backend.as_mut(), writer.as_mut())?;
    let phases = Phases::of(&report.phases, t_pipeline.elapsed().as_secs_f64());
    if let (Some(w), Some(dir)) = (writer, &opts.write) {
        let peak = backend.device_counters().map(|c| c.peak_bytes);
        w.finish(&model, dir, Some(&fasp_json(opts, &report, &plan, peak)))?;
    }
    let process_seconds = t_process.elapsed().as_secs_f64();
    let peak_host_bytes = peak_host_bytes();
    let counters = backend.device_counters();

    let flops = prune_flops(&model.cfg, opts.nsamples, opts.seqlen, opts.sparsity)?;
    let floor = floor(flops, weight_bytes(&model), measure_cpu_rates());
    let prune_seconds = phases.prune_seconds();
    Ok(BenchResult {
        shape: shape.name.to_string(),
        family: shape.family.name(),
        device: opts.device,
        backend: report.backend.clone(),
        nsamples: opts.nsamples,
        seqlen: opts.seqlen,
        sparsity: opts.sparsity,
        seed: opts.seed,
        layers_run: layers,
        layers_total: shape.layers,
        phases,
        prune_seconds,
        setup_seconds,
        process_seconds,
        peak_host_bytes,
        peak_device_bytes: counters.map(|c| c.peak_bytes),
        h2d_bytes: counters.map(|c| c.h2d_bytes),
        d2h_bytes: counters.map(|c| c.d2h_bytes),
        kernel_launches: counters.map(|c| c.launches),
        library_calls: counters.map(|c| c.library_calls),
        device_phases: report.device.clone(),
        floor_seconds: floor.seconds,
        time_over_floor: prune_seconds / floor.seconds,
        floor,
        paper_seconds: shape.paper_seconds,
        machine: machine(),
        written: opts.write.as_ref().map(|d| d.display().to_string()),
        kept: report.layers.iter().map(LayerKept::of).collect(),
        planned_peak_host_bytes: plan.host.peak_bytes,
        planned_peak_device_bytes: plan.device.as_ref().map(|d| d.peak_bytes),
        plan,
    })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The human-readable report of a run.
pub fn summary(r: &BenchResult) -> String {
    let p = &r.phases;
    let f = &r.floor;
    let mut s = format!(
        "bench {} ({} layers of {}) on {} [{}], {} x {} tokens, sparsity {}\n",
        r.shape, r.layers_run, r.layers_total, r.backend, r.machine.cpu, r.nsamples, r.seqlen, r.sparsity
    );
    s += &format!(
        "phases (s): embed {:.3}, load_weights {:.3}, forward_stats {:.3}, score_select {:.3}, restore {:.3}, other {:.3}, write {:.3}\n",
        p.embed, p.load_weights, p.forward_stats, p.score_select, p.restore, p.other, p.write
    );
    s += &format!(
        "prune {:.3} s; whole process {:.3} s (setup {:.3} s); peak host memory {}\n",
        r.prune_seconds,
        r.process_seconds,
        r.setup_seconds,
        r.peak_host_bytes.map_or("unknown".into(), |b| format!("{:.2} GiB", gib(b)))
    );
    s += &format!(
        "memory: planned peak host {:.2} GiB{}\n",
        gib(r.planned_peak_host_bytes),
        match (r.planned_peak_device_bytes, r.peak_device_bytes) {
            (Some(p), Some(m)) => format!(", device planned {:.2} GiB, measured {:.2} GiB", gib(p), gib(m)),
            (Some(p), None) => format!(", device planned {:.2} GiB", gib(p)),
            _ => String::new(),
        }
    );
    s += &format!(
        "floor {:.3} s = max({:.3e} FLOP / {:.1} GFLOP/s = {:.3} s, {:.3e} B / {:.2} GB/s = {:.3} s); prune / floor = {:.1}\n",
        f.seconds,
        f.flops.total,
        f.rates.gemm_flops_per_s / 1e9,
        f.compute_seconds,
        f.weight_bytes as f64,
        f.rates.h2d_bytes_per_s / 1e9,
        f.transfer_seconds,
        r.time_over_floor
    );
    if let Some(paper) = r.paper_seconds {
        s += &format!("paper: {paper} s on one RTX 4090 (128 x 2048 calibration, all layers)\n");
    }
    if let Some(w) = &r.written {
        s += &format!("written to {w}\n");
    }
    s
}

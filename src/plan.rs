//! The plan of a prune before any work starts: calibration tokens, peak host and device memory
//! (named buffers of the phase where the peak falls), the chunk sizes the CUDA backend will use,
//! bytes moved per layer and, on the CPU, the time per layer estimated from a short measurement.
//!
//! Every size is computed in `u64` with checked arithmetic, so settings such as
//! `--nsamples 1000000000000` give a clear error instead of an allocation failure or a wrap.
//!
//! # The memory model
//!
//! The model mirrors what the backends allocate today (f32 activations and weights, f64
//! statistics). With `T = nsamples·seqlen` tokens, `d = hidden`, `nq = heads·head_dim` (context
//! width), `nk = nv = kv_heads·head_dim`, `f = ffn`, `g` = 1 with a gate, `kc`/`km` the kept
//! context columns and MLP channels, `c` tokens per chunk and `a` windows per attention sub-batch,
//! `W` one layer's weights in f32, the device holds, per phase:
//!
//! * attention statistics: hidden states `T·d`, the context `T·nq`, `W`, the chunk scratch
//!   `c·(d + nq + nk + nv)`, the per-head copies `4·a·heads·L·hd`, the scores `a·heads·L²`, and
//!   the Gram accumulator `12·nq²` bytes (f64 sum + f32 chunk);
//! * attention restoration: hidden, context, `W`, and the restoration buffers of `n = nq`;
//! * MLP statistics: hidden, context, `W` and the prefetched next layer, `o'`, the kept context
//!   of a chunk `c·kc`, the MLP scratch `c·(2d + f + g·f)` and the Gram accumulator `12·f²`;
//! * MLP restoration: hidden, both layers' weights, the restoration buffers of `n = f`;
//! * advance: hidden, both layers, the kept W1 rows and `W2'`, the MLP scratch over `km`.
//!
//! The restoration of a pair with `n` columns, `s` kept, `p` pruned and `m = d` rows holds
//! `H` (f32, `n²`), `W2` (`m·n`), `H[S,S]` and its damped copy (`2·s²`), `H[P,S]` and `Z`
//! (`2·p·s`), `W2[:,P]` (`m·p`) and three `m·s` products. The peak of the plan is the largest
//! phase; the chunk `c` (and `a`) are the largest that keep it within the device limit.

use crate::error::{FaspError, Result};
use crate::model::arch::layer_layout;
use crate::model::ModelConfig;
use crate::prune::plan::kept_count;
use serde::Serialize;

const GIB: f64 = (1u64 << 30) as f64;

/// Default calibration on the CPU: 128 windows of 256 tokens (the paper: 128 × 2048).
pub const CPU_DEFAULT: (usize, usize) = (128, 256);
/// The paper's calibration (and the default on a GPU): 128 windows of 2048 tokens.
pub const PAPER_DEFAULT: (usize, usize) = (128, 2048);
/// Largest chunk the CUDA backend uses by default (tokens).
pub const MAX_CHUNK_TOKENS: usize = 8192;
/// Budget of one attention sub-batch's score matrices.
pub const ATTN_SCORE_BYTES: u64 = 512 << 20;
/// Device memory the CUDA context, cuBLAS and cuSOLVER take beside our buffers (real GPU only).
pub const CUDA_RESERVE: u64 = 512 << 20;

/// Where the pipeline runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Cpu,
    Cuda,
    Emu,
}

impl Target {
    pub fn on_device(self) -> bool {
        self != Target::Cpu
    }
}

/// A memory limit and where it comes from.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Limit {
    pub bytes: u64,
    pub source: String,
}

/// What a plan is made from.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    pub target: Target,
    pub nsamples: usize,
    pub seqlen: usize,
    pub sparsity: f64,
    /// Tokens of `prune --eval` windows carried through the layers beside the calibration.
    pub eval_tokens: usize,
    /// Device memory the plan must fit (`--max-gpu-mem`, or what the device has free).
    pub device_limit: Option<Limit>,
    /// Host memory available (see [`host_limit`]).
    pub host_limit: Option<Limit>,
    /// Tokens per chunk fixed by the user (`FASP_CUDA_CHUNK_TOKENS`); the plan chooses otherwise.
    pub chunk_tokens: Option<usize>,
    /// Vocabulary rows of the embedding read at the start (f32 on the host).
    pub vocab: usize,
    /// Bytes per element of the checkpoint (for the bytes read per layer).
    pub source_dtype_bytes: usize,
    /// Bytes of a calibration text tokenized at the start (0 for `.npy` token ids).
    pub text_bytes: u64,
    /// Output bytes the writer holds in memory until its shard is written: the HF writer keeps up
    /// to one shard (2 GiB) of encoded tensors; the GGUF writer spools to disk and holds none.
    pub output_held_bytes: u64,
}

/// Host bytes of tokenizing one byte of text (the tokenizer's encoding: ids, token strings and
/// pre-tokenization buffers). Measured: 490 MB for the 4.9 MB calibration text (SmolLM2's
/// tokenizer, `encode_fast`), so 100 per byte.
pub const TOKENIZE_BYTES_PER_TEXT_BYTE: u64 = 100;

/// One buffer of a phase.
#[derive(Clone, Debug, Serialize)]
pub struct Buffer {
    pub name: &'static str,
    pub bytes: u64,
}

/// The largest phase of a memory model, with its buffers.
#[derive(Clone, Debug, Serialize)]
pub struct MemPlan {
    pub peak_bytes: u64,
    pub peak_phase: &'static str,
    pub buffers: Vec<Buffer>,
    pub limit: Option<Limit>,
    /// Whether `peak_bytes` fits `limit` (None without a limit).
    pub fits: Option<bool>,
}

/// The chunking of the device passes.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Chunking {
    /// Calibration tokens per device pass (whole windows).
    pub chunk_tokens: usize,
    /// Windows per attention sub-batch (score matrices `a·heads·L²`).
    pub attn_windows: usize,
}

/// Data moved per layer.
#[derive(Clone, Debug, Serialize)]
pub struct Traffic {
    /// Checkpoint bytes read for one layer (source dtype).
    pub read_bytes: u64,
    /// Host → device and device → host bytes of one layer (device targets).
    pub h2d_bytes: Option<u64>,
    pub d2h_bytes: Option<u64>,
}

/// The time estimate from a short measurement.
#[derive(Clone, Debug, Serialize)]
pub struct TimeEstimate {
    pub flops_per_layer: f64,
    pub gemm_flops_per_s: f64,
    pub seconds_per_layer: f64,
    pub seconds_total: f64,
    pub method: String,
}

/// The plan of one prune.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub target: Target,
    pub nsamples: usize,
    pub seqlen: usize,
    pub tokens: u64,
    pub layers: usize,
    pub host: MemPlan,
    pub device: Option<MemPlan>,
    pub chunking: Option<Chunking>,
    pub per_layer: Traffic,
    pub estimate: Option<TimeEstimate>,
}

fn overflow(what: &str) -> FaspError {
    FaspError::Arg(format!("{what} overflows 64-bit sizes; lower --nsamples or --seqlen"))
}

/// Checked product of `factors`.
fn prod(what: &str, factors: &[u64]) -> Result<u64> {
    factors.iter().try_fold(1u64, |a, &b| a.checked_mul(b)).ok_or_else(|| overflow(what))
}

/// A phase: named buffers whose sizes are checked products.
struct Phase {
    name: &'static str,
    bufs: Vec<Buffer>,
}

impl Phase {
    fn new(name: &'static str) -> Phase {
        Phase { name, bufs: Vec::new() }
    }
    fn add(&mut self, name: &'static str, factors: &[u64]) -> Result<&mut Phase> {
        let bytes = prod(name, factors)?;
        if bytes > 0 {
            self.bufs.push(Buffer { name, bytes });
        }
        Ok(self)
    }
    fn extend(&mut self, bufs: &[Buffer]) {
        self.bufs.extend(bufs.iter().cloned());
    }
    fn total(&self) -> Result<u64> {
        self.bufs.iter().try_fold(0u64, |a, b| a.checked_add(b.bytes)).ok_or_else(|| overflow(self.name))
    }
}

/// The largest of `phases`.
fn peak(phases: Vec<Phase>, limit: Option<Limit>) -> Result<MemPlan> {
    let mut best: Option<(u64, Phase)> = None;
    for p in phases {
        let t = p.total()?;
        if best.as_ref().is_none_or(|(b, _)| t > *b) {
            best = Some((t, p));
        }
    }
    let (bytes, p) = best.expect("at least one phase");
    let mut buffers = p.bufs;
    buffers.sort_by_key(|b| std::cmp::Reverse(b.bytes));
    let fits = limit.as_ref().map(|l| bytes <= l.bytes);
    Ok(MemPlan { peak_bytes: bytes, peak_phase: p.name, buffers, limit, fits })
}

/// The model's dimensions as u64.
struct Dims {
    t: u64,
    l: u64,
    d: u64,
    heads: u64,
    hd: u64,
    nq: u64,
    nk: u64,
    nv: u64,
    f: u64,
    gated: bool,
    kc: u64,
    km: u64,
    /// One layer's weights (all tensors), f32 bytes.
    w: u64,
    /// Elements of one layer.
    w_elems: u64,
}

fn dims(cfg: &ModelConfig, req: &PlanRequest) -> Result<Dims> {
    let t = prod("calibration tokens (nsamples x seqlen)", &[req.nsamples as u64, req.seqlen as u64])?;
    let w_elems = layer_layout(cfg, 0)
        .iter()
        .map(|(_, s)| s.iter().map(|&x| x as u64).product::<u64>())
        .try_fold(0u64, |a, b| a.checked_add(b))
        .ok_or_else(|| overflow("layer weights"))?;
    let nv = cfg.v_width() as u64;
    Ok(Dims {
        t,
        l: req.seqlen as u64,
        d: cfg.hidden as u64,
        heads: cfg.heads as u64,
        hd: cfg.head_dim as u64,
        nq: cfg.ctx_width() as u64,
        nk: (cfg.kv_heads * cfg.head_dim) as u64,
        nv,
        f: cfg.ffn as u64,
        gated: cfg.arch().gated(),
        kc: (kept_count(cfg.v_width(), req.sparsity)? * cfg.group()) as u64,
        km: kept_count(cfg.ffn, req.sparsity)? as u64,
        w: prod("layer weights", &[w_elems, 4])?,
        w_elems,
    })
}

/// Buffers of the device restoration of a pair (`n` columns, `s` kept, `m` rows of W2).
fn device_restore(x: &Dims, n: u64, s: u64) -> Result<Vec<Buffer>> {
    let (m, p) = (x.d, n - s);
    let mut ph = Phase::new("restore");
    ph.add("H (f32)", &[n, n, 4])?
        .add("W2", &[m, n, 4])?
        .add("H[S,S] and H[S,S] + λI", &[2, s, s, 4])?
        .add("H[P,S] and Z", &[2, p, s, 4])?
        .add("W2[:,P]", &[m, p, 4])?
        .add("M, Y and W2'", &[3, m, s, 4])?
        .add("S and P indices", &[n, 4])?;
    Ok(ph.bufs)
}

/// Buffers of a Gram accumulator of width `n` over chunks of `c` rows.
fn device_gram(n: u64, c: u64) -> Result<Vec<Buffer>> {
    let mut ph = Phase::new("gram");
    ph.add("Gram H (f64 sum + f32 chunk)", &[n, n, 12])?.add("column sums and ones", &[n, 12])?.add("ones", &[c, 4])?;
    Ok(ph.bufs)
}

/// The device phases for chunks of `c` tokens and attention sub-batches of `a` windows.
fn device_phases(x: &Dims, c: u64, a: u64, reserve: u64) -> Result<Vec<Phase>> {
    let base = |name: &'static str, next_layer: bool| -> Result<Phase> {
        let mut p = Phase::new(name);
        p.add("hidden states (f32, all tokens)", &[x.t, x.d, 4])?.add("layer weights (f32)", &[x.w])?;
        if next_layer {
            p.add("next layer's weights (prefetched)", &[x.w])?;
        }
        if reserve > 0 {
            p.add("CUDA context and library workspaces (reserve)", &[reserve])?;
        }
        p.add("small buffers (flags, rotary table, partial sums)", &[16 << 10])?;
        Ok(p)
    };
    let g = if x.gated { 1 } else { 0 };
    let mut attn = base("attention statistics", false)?;
    attn.add("attention context (f32, all tokens)", &[x.t, x.nq, 4])?
        .add("chunk: normed input, Q, K, V", &[c, x.d + x.nq + x.nk + x.nv, 4])?
        .add("sub-batch: Q, K, V, context heads", &[4, a, x.heads, x.l, x.hd, 4])?
        .add("sub-batch: attention scores", &[a, x.heads, x.l, x.l, 4])?;
    attn.extend(&device_gram(x.nq, c)?);

    let mut attn_restore = base("attention restoration", false)?;
    attn_restore.add("attention context (f32, all tokens)", &[x.t, x.nq, 4])?;
    attn_restore.extend(&device_restore(x, x.nq, x.kc)?);

    let mut mlp = base("MLP statistics", true)?;
    mlp.add("attention context (f32, all tokens)", &[x.t, x.nq, 4])?
        .add("o_proj' and kept-column index", &[x.d + 1, x.kc, 4])?
        .add("chunk: kept context", &[c, x.kc, 4])?
        .add("chunk: normed input, residual branch, up (and gate)", &[c, 2 * x.d + x.f * (1 + g), 4])?;
    mlp.extend(&device_gram(x.f, c)?);

    let mut mlp_restore = base("MLP restoration", true)?;
    mlp_restore.extend(&device_restore(x, x.f, x.km)?);

    let mut advance = base("layer output", true)?;
    advance
        .add("kept W1 rows and W2'", &[(2 + g) * x.d + 2, x.km, 4])?
        .add("chunk: normed input, residual branch, kept up (and gate)", &[c, 2 * x.d + x.km * (1 + g), 4])?;
    Ok(vec![attn, attn_restore, mlp, mlp_restore, advance])
}

/// The host phases. On the CPU every activation is held for all tokens; with a device the host
/// holds the embeddings at the start, and per layer the weights and the downloaded statistics.
fn host_phases(x: &Dims, req: &PlanRequest) -> Result<Vec<Phase>> {
    let e = req.eval_tokens as u64;
    let mut tokenize = Phase::new("tokenizing the calibration text");
    tokenize.add("calibration text and its encoding", &[req.text_bytes, TOKENIZE_BYTES_PER_TEXT_BYTE + 1])?;
    let mut start = Phase::new("embedding");
    start
        .add("calibration token ids", &[x.t, 4])?
        .add("embedding table (f32)", &[req.vocab as u64, x.d, 4])?
        .add("hidden states (f32, all tokens)", &[x.t, x.d, 4])?
        .add("eval windows' hidden states", &[e, x.d, 4])?;
    let common = |name: &'static str, layers: u64| -> Result<Phase> {
        let mut p = Phase::new(name);
        p.add("calibration token ids", &[x.t, 4])?.add("eval windows' hidden states", &[e, x.d, 4])?;
        p.add("layer weights (f32)", &[layers, x.w])?;
        p.add("pruned output held by the writer until its shard is written", &[req.output_held_bytes])?;
        Ok(p)
    };
    if req.target.on_device() {
        // the device keeps H, W2 and the restoration's matrices; the host holds the current
        // layer, the prefetched next layer and its pinned staging copy, the pruned layer for the
        // writer, and O(n) summaries (diag(H), Σx in f64, scores, indices)
        let mut attn = common("attention pair", 3)?;
        attn.add("O(n) summaries", &[8, x.nq, 8])?;
        let mut mlp = common("MLP pair", 4)?;
        mlp.add("O(n) summaries", &[8, x.f, 8])?;
        return Ok(vec![tokenize, start, attn, mlp]);
    }
    let g = if x.gated { 1 } else { 0 };
    let act = |p: &mut Phase, name: &'static str, w: u64| p.add(name, &[x.t, w, 4]).map(|_| ());
    // attention: input, normed input, Q, K, V, the per-head contexts and the assembled context
    let mut attn = common("attention statistics", 1)?;
    act(&mut attn, "hidden states", x.d)?;
    act(&mut attn, "normed input", x.d)?;
    act(&mut attn, "Q, K, V", x.nq + x.nk + x.nv)?;
    act(&mut attn, "attention context (per head, then assembled)", 2 * x.nq)?;
    // MLP: input, context and its kept columns, residual, normed input, up (and gate), H
    let mut mlp = common("MLP statistics", 1)?;
    act(&mut mlp, "hidden states", x.d)?;
    act(&mut mlp, "attention context and kept columns", x.nq + x.kc)?;
    act(&mut mlp, "residual stream and normed input", 2 * x.d)?;
    act(&mut mlp, "up (and gate)", x.f * (1 + g))?;
    mlp.add("H (f64) and a chunk of the input in f64", &[x.f, x.f + 4096, 8])?;
    // MLP restoration (f64): H, H[S,S], its factor, H[P,S], W2 products
    let mut restore = common("MLP restoration", 1)?;
    act(&mut restore, "hidden states and residual stream", 2 * x.d)?;
    act(&mut restore, "MLP activation", x.f)?;
    let (s, p) = (x.km, x.f - x.km);
    restore
        .add("H (f64)", &[x.f, x.f, 8])?
        .add("H[S,S] and its factor (f64)", &[2, s, s, 8])?
        .add("H[P,S], W2 products (f64)", &[p * s + x.d * (p + 2 * s), 8])?;
    // output: input, residual, activation and its kept channels, the new hidden states
    let mut out = common("layer output", 1)?;
    act(&mut out, "hidden states, residual stream, output", 3 * x.d)?;
    act(&mut out, "MLP activation and kept channels", x.f + x.km)?;
    Ok(vec![tokenize, start, attn, mlp, restore, out])
}

/// Bytes moved per layer.
fn traffic(x: &Dims, req: &PlanRequest) -> Result<Traffic> {
    let read_bytes = prod("layer bytes", &[x.w_elems, req.source_dtype_bytes as u64])?;
    if !req.target.on_device() {
        return Ok(Traffic { read_bytes, h2d_bytes: None, d2h_bytes: None });
    }
    // up: the layer (f32) once, and O(n) per pair (unit scores in f64, S and P indices);
    // down: the restored W2' of o_proj and down_proj for the writer, and O(n) per pair
    // (diag(H) and Σx in f64, column scores, kept units, error terms)
    let on = |n: u64| prod("O(n)", &[n, 24]);
    let h2d = [prod("h2d", &[x.w])?, on(x.nq)?, on(x.f)?];
    let d2h = [prod("d2h", &[x.d, x.kc + x.km, 4])?, on(x.nq)?, on(x.f)?];
    let sum = |v: &[u64]| v.iter().try_fold(0u64, |a, &b| a.checked_add(b)).ok_or_else(|| overflow("bytes per layer"));
    Ok(Traffic { read_bytes, h2d_bytes: Some(sum(&h2d)?), d2h_bytes: Some(sum(&d2h)?) })
}

/// Windows per attention sub-batch for chunks of `chunk_windows` (the backend's rule).
pub fn attn_windows_for(cfg: &ModelConfig, seqlen: usize, chunk_windows: usize, budget: u64) -> usize {
    let per_window = (cfg.heads as u64).saturating_mul(seqlen as u64).saturating_mul(seqlen as u64).saturating_mul(4).max(1);
    ((budget / per_window) as usize).clamp(1, chunk_windows.max(1))
}

/// Computes the plan. Errors only on invalid settings or sizes beyond 64 bits; whether it fits
/// is in `host.fits` / `device.fits` (see [`Plan::check`]).
pub fn plan(cfg: &ModelConfig, req: &PlanRequest) -> Result<Plan> {
    if req.nsamples == 0 || req.seqlen == 0 {
        return Err(FaspError::Arg(format!("nsamples ({}) and seqlen ({}) must be positive", req.nsamples, req.seqlen)));
    }
    let x = dims(cfg, req)?;
    let host = peak(host_phases(&x, req)?, req.host_limit.clone())?;
    let per_layer = traffic(&x, req)?;
    let (device, chunking) = if req.target.on_device() {
        let (dev, ch) = device_plan(cfg, req, &x)?;
        (Some(dev), Some(ch))
    } else {
        (None, None)
    };
    Ok(Plan {
        target: req.target,
        nsamples: req.nsamples,
        seqlen: req.seqlen,
        tokens: x.t,
        layers: cfg.layers,
        host,
        device,
        chunking,
        per_layer,
        estimate: None,
    })
}

/// The largest chunking whose peak fits the device limit (the smallest when none fits).
fn device_plan(cfg: &ModelConfig, req: &PlanRequest, x: &Dims) -> Result<(MemPlan, Chunking)> {
    let reserve = if req.target == Target::Cuda { CUDA_RESERVE } else { 0 };
    let windows = req.nsamples;
    let eval = |cw: usize, aw: usize| -> Result<MemPlan> {
        let c = prod("chunk", &[cw as u64, x.l])?;
        peak(device_phases(x, c, aw as u64, reserve)?, req.device_limit.clone())
    };
    // candidates: the user's chunk, or the default chunk halved down to one window; per chunk,
    // the backend's attention sub-batch halved down to one window
    let mut chunk_ws: Vec<usize> = match req.chunk_tokens {
        Some(t) => vec![(t / req.seqlen).clamp(1, windows)],
        None => {
            let mut v = vec![(MAX_CHUNK_TOKENS / req.seqlen).clamp(1, windows)];
            while *v.last().expect("non-empty") > 1 {
                let next = v.last().expect("non-empty") / 2;
                v.push(next.max(1));
            }
            v
        }
    };
    chunk_ws.dedup();
    let mut last = None;
    for &cw in &chunk_ws {
        let mut aw = attn_windows_for(cfg, req.seqlen, cw, ATTN_SCORE_BYTES);
        loop {
            let m = eval(cw, aw)?;
            let fits = m.fits != Some(false);
            let ch = Chunking { chunk_tokens: cw * req.seqlen, attn_windows: aw };
            if fits {
                return Ok((m, ch));
            }
            last = Some((m, ch));
            if aw == 1 {
                break;
            }
            aw /= 2;
        }
    }
    Ok(last.expect("at least one candidate"))
}

/// The CPU's time for a prune, from the FLOP model of `bench` and a short GEMM measurement
/// (a 384³ f32 GEMM, best of 2, a few milliseconds): projections and attention at the measured
/// rate, the f64 statistics and restoration at half of it.
pub fn estimate_cpu(cfg: &ModelConfig, nsamples: usize, seqlen: usize, sparsity: f64) -> Result<TimeEstimate> {
    let f = crate::bench::prune_flops(cfg, nsamples, seqlen, sparsity)?;
    let rate = crate::bench::measure_gemm_rate(384, 2);
    let layers = cfg.layers.max(1) as f64;
    let seconds_total = (f.projections + f.attention) / rate + (f.gram + f.restore) / (rate / 2.0);
    Ok(TimeEstimate {
        flops_per_layer: f.total / layers,
        gemm_flops_per_s: rate,
        seconds_per_layer: seconds_total / layers,
        seconds_total,
        method: format!("faer f32 GEMM 384^3 on {} threads, best of 2; f64 work at half the rate", rayon::current_num_threads()),
    })
}

/// `bytes` for people: GiB with two decimals from 1 GiB, else MiB or KiB.
pub fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

fn top_buffers(m: &MemPlan, n: usize) -> String {
    m.buffers.iter().take(n).map(|b| format!("{} {}", b.name, gib(b.bytes))).collect::<Vec<_>>().join(", ")
}

impl Plan {
    /// A clear one-line error when the plan does not fit the host or the device.
    pub fn check(&self) -> Result<()> {
        let hint = "lower --nsamples or --seqlen";
        if let Some(dev) = &self.device {
            if let (Some(false), Some(l)) = (dev.fits, &dev.limit) {
                return Err(FaspError::Arg(format!(
                    "{} x {} calibration tokens need at least {} of device memory even in chunks of one window ({}: {}), \
                     the limit is {} ({}); {hint}",
                    self.nsamples,
                    self.seqlen,
                    gib(dev.peak_bytes),
                    dev.peak_phase,
                    top_buffers(dev, 3),
                    gib(l.bytes),
                    l.source
                )));
            }
        }
        if let (Some(false), Some(l)) = (self.host.fits, &self.host.limit) {
            return Err(FaspError::Arg(format!(
                "{} x {} calibration tokens need {} of host memory ({}: {}), {} available ({}); {hint}{}",
                self.nsamples,
                self.seqlen,
                gib(self.host.peak_bytes),
                self.host.peak_phase,
                top_buffers(&self.host, 3),
                gib(l.bytes),
                l.source,
                if self.target.on_device() { "" } else { ", or run on a GPU (--device cuda)" }
            )));
        }
        Ok(())
    }

    /// The plan as text, a few lines.
    pub fn text(&self) -> String {
        let mut s = format!(
            "plan: {} x {} = {} calibration tokens, {} layers, on {}\n",
            self.nsamples,
            self.seqlen,
            self.tokens,
            self.layers,
            match self.target {
                Target::Cpu => "the CPU",
                Target::Cuda => "CUDA",
                Target::Emu => "the emulated device",
            }
        );
        let mem = |tag: &str, m: &MemPlan| {
            let lim = m.limit.as_ref().map_or("limit unknown".to_string(), |l| format!("{} available ({})", gib(l.bytes), l.source));
            let fits = match m.fits {
                Some(true) => "fits",
                Some(false) => "DOES NOT FIT",
                None => "not checked",
            };
            format!("  peak {tag} memory {} in {} ({}); {lim}: {fits}\n", gib(m.peak_bytes), m.peak_phase, top_buffers(m, 4))
        };
        s += &mem("host", &self.host);
        if let Some(d) = &self.device {
            s += &mem("device", d);
        }
        if let Some(c) = &self.chunking {
            s += &format!("  chunks: {} tokens per device pass, {} window(s) per attention sub-batch\n", c.chunk_tokens, c.attn_windows);
        }
        let t = &self.per_layer;
        s += &format!("  per layer: {} read from the checkpoint", gib(t.read_bytes));
        if let (Some(u), Some(d)) = (t.h2d_bytes, t.d2h_bytes) {
            s += &format!(", {} host->device, {} device->host", gib(u), gib(d));
        }
        s += "\n";
        if let Some(e) = &self.estimate {
            s += &format!(
                "  estimated time: {} per layer, {} in all ({:.3e} FLOP per layer at {:.1} GFLOP/s measured: {})\n",
                duration(e.seconds_per_layer),
                duration(e.seconds_total),
                e.flops_per_layer,
                e.gemm_flops_per_s / 1e9,
                e.method
            );
        }
        s
    }
}

/// `s` seconds as "1h02m", "3m05s" or "12s".
pub fn duration(s: f64) -> String {
    if !s.is_finite() {
        return "?".into();
    }
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Parses a memory size: `24GiB`, `24G`, `512MiB`, `1.5TiB`, or plain bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 24GiB, 512MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, TiB)")),
    };
    let bytes = v * mult as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is not a positive size below 16 EiB"));
    }
    Ok(bytes as u64)
}

/// The host memory this process may still use: the least of `MemAvailable`, the cgroup's
/// `memory.max − memory.current`, and the address-space limit minus the current `VmSize`.
pub fn host_limit() -> Option<Limit> {
    let mut best: Option<Limit> = None;
    let mut take = |bytes: u64, source: &str| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Limit { bytes, source: source.into() });
        }
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    if let Some(kb) = meminfo.as_deref().and_then(|m| kib_field(m, "MemAvailable:")) {
        take(kb * 1024, "MemAvailable");
    }
    let read_u64 = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let (Some(max), Some(cur)) = (read_u64("/sys/fs/cgroup/memory.max"), read_u64("/sys/fs/cgroup/memory.current")) {
        take(max.saturating_sub(cur), "cgroup memory.max");
    }
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let vm_size = status.as_deref().and_then(|s| kib_field(s, "VmSize:")).map(|k| k * 1024);
    if let (Some(limit), Some(size)) = (address_space_limit(), vm_size) {
        take(limit.saturating_sub(size), "address-space limit (ulimit -v)");
    }
    best
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// The soft `RLIMIT_AS` from `/proc/self/limits`, when not unlimited.
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..].split_whitespace().next()?.parse().ok()
}

/// Remaining time of a run from the work done so far, never "0" while nothing has finished.
///
/// `done`/`total` are work units (calibration tokens × layers); `prior` is the plan's estimate
/// of the whole run in seconds, used (less the time elapsed) until some work has finished.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Eta {
    /// Seconds left, from the measured rate.
    Measured(f64),
    /// Seconds left, from the plan's estimate (nothing finished yet).
    Estimated(f64),
    /// Nothing finished and no estimate, or the estimate is used up.
    Unknown,
    Done,
}

impl Eta {
    pub fn of(done: u64, total: u64, elapsed: f64, prior: Option<f64>) -> Eta {
        if total > 0 && done >= total {
            return Eta::Done;
        }
        if done == 0 || elapsed <= 0.0 {
            return match prior {
                Some(p) if p.is_finite() && p - elapsed >= 1.0 => Eta::Estimated(p - elapsed),
                _ => Eta::Unknown,
            };
        }
        let left = elapsed * (total - done) as f64 / done as f64;
        Eta::Measured(left.max(1.0))
    }

    pub fn text(self) -> String {
        match self {
            Eta::Measured(s) => duration(s),
            Eta::Estimated(s) => format!("~{} (estimate)", duration(s)),
            Eta::Unknown => "estimating…".into(),
            Eta::Done => "done".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("24GiB").unwrap(), 24 << 30);
        assert_eq!(parse_size("24G").unwrap(), 24 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1GiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn eta_is_never_zero_before_work_is_done() {
        // nothing done, no estimate: unknown, not 0s
        assert_eq!(Eta::of(0, 100, 5.0, None), Eta::Unknown);
        assert_eq!(Eta::of(0, 100, 5.0, None).text(), "estimating…");
        // nothing done, an estimate of 60 s, 5 s elapsed: 55 s, marked as an estimate
        assert_eq!(Eta::of(0, 100, 5.0, Some(60.0)), Eta::Estimated(55.0));
        assert!(Eta::of(0, 100, 5.0, Some(60.0)).text().starts_with("~55s"));
        // the estimate used up: unknown rather than 0
        assert_eq!(Eta::of(0, 100, 70.0, Some(60.0)), Eta::Unknown);
        // a quarter done in 10 s: 30 s left, from the work done
        assert_eq!(Eta::of(25, 100, 10.0, Some(1000.0)), Eta::Measured(30.0));
        // almost done: at least a second until it is done
        assert_eq!(Eta::of(999_999, 1_000_000, 0.5, None), Eta::Measured(1.0));
        assert_eq!(Eta::of(100, 100, 10.0, None), Eta::Done);
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(185.0), "3m05s");
    }
}

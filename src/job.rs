//! The prune job as the CLI runs it: open and validate everything first, then prune layer by
//! layer into the writer, then write `fasp.json` and rename the output into place.

use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend};
use crate::calib;
use crate::error::{FaspError, Result};
use crate::gguf_export::{ExportSummary, GgufExporter};
use crate::gguf_write::GgufType;
use crate::model::{DType, Model};
use crate::output::{self, ModelWriter};
use crate::plan::{self, Plan, PlanRequest, Target};
use crate::prune::{self, PruneConfig, PruneReport};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when kernels are built in and a GPU is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
    /// The emulated device: the CUDA kernels and host code on the CPU, with checked memory and
    /// stream ordering. For testing: slow, same semantics. `auto` never picks it.
    Emu,
}

/// What `prune` writes: an HF directory (dense-equivalent or compact) or one GGUF file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutFormat {
    #[default]
    Hf,
    /// A `.gguf` file of this tensor type (the input's, as for `--dtype`, when `None`).
    Gguf(Option<GgufType>),
}

#[derive(Clone, Debug)]
pub struct PruneJob {
    pub model: PathBuf,
    pub out: PathBuf,
    pub calib: PathBuf,
    pub nsamples: Option<usize>,
    pub seqlen: Option<usize>,
    pub calib_seed: u64,
    pub prune: PruneConfig,
    pub device: Device,
    /// Output dtype; the input's when `None`.
    pub dtype: Option<DType>,
    pub compact: bool,
    pub force: bool,
    pub progress: bool,
    /// Evaluate perplexity of the pruned model (and optionally the dense one) during the run.
    pub eval: Option<EvalSpec>,
    /// `--resume`: continue an interrupted run on the same `--out` from its checkpoint.
    pub resume: bool,
    /// `--format`: an HF directory (default) or a GGUF file.
    pub format: OutFormat,
}

/// `prune --eval FILE`: perplexity of the pruned model, computed layer by layer alongside the
/// prune (the eval windows pass through each layer right after it is pruned).
#[derive(Clone, Debug)]
pub struct EvalSpec {
    pub path: PathBuf,
    pub seqlen: usize,
    pub max_windows: Option<usize>,
    /// Also evaluate the dense model first, for the before/after comparison.
    pub dense: bool,
}

#[derive(Debug)]
pub struct PruneSummary {
    pub report: PruneReport,
    pub params_original: usize,
    pub params_dense_equivalent: usize,
    pub params_compact: usize,
    /// Wall time up to writing `fasp.json` (the final write of the output comes after).
    pub seconds_total: f64,
    /// Opening the model and reading the calibration and eval token files, before the pipeline.
    pub setup_seconds: f64,
    /// `--eval-dense`: the dense model's perplexity, before pruning.
    pub dense_eval_seconds: f64,
    /// `--eval`: the eval windows' forward through each pruned layer and the final NLL.
    pub eval_seconds: f64,
    pub fasp_json: serde_json::Value,
    pub ppl_dense: Option<crate::eval::Perplexity>,
    pub ppl_pruned: Option<crate::eval::Perplexity>,
    /// What the GGUF export wrote (`--format gguf`).
    pub gguf: Option<ExportSummary>,
}

/// An evaluation set: windows of token ids.
#[derive(Clone, Debug)]
pub struct EvalSet {
    pub name: String,
    pub path: PathBuf,
    pub ids: Vec<u32>,
    pub seqlen: usize,
}

impl EvalSet {
    pub fn load(model: &Model, name: &str, path: &Path, seqlen: usize, max_windows: Option<usize>) -> Result<EvalSet> {
        model.check_seqlen(seqlen)?;
        Ok(EvalSet { name: name.into(), path: path.into(), ids: eval_ids(model, path, seqlen, max_windows)?, seqlen })
    }
}

/// What `prune_and_eval` gives back.
pub struct PrunedRun {
    pub report: PruneReport,
    /// Perplexity of the pruned model on each eval set.
    pub ppl: Vec<crate::eval::Perplexity>,
    pub eval_seconds: f64,
}

/// A progress bar over layers (or, with `unit = "window"`, evaluation windows), with an ETA.
pub fn progress_bar(len: usize, msg: &str) -> indicatif::ProgressBar {
    progress_bar_of(len, msg, "layer")
}

pub fn progress_bar_of(len: usize, msg: &str, unit: &str) -> indicatif::ProgressBar {
    progress_bar_eta(len, msg, unit, None)
}

/// A progress bar whose ETA comes from the work done ([`plan::Eta`]): each step is the same work
/// (a layer over every calibration token), and before the first step ends the ETA is the plan's
/// `estimate` of the whole run (seconds) less the time elapsed, or "estimating…", never "0s".
pub fn progress_bar_eta(len: usize, msg: &str, unit: &str, estimate: Option<f64>) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {unit} {{pos}}/{{len}} {{elapsed_precise}} ETA {{work_eta}}"
        ))
        .expect("valid template")
        .with_key("work_eta", move |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let eta = plan::Eta::of(st.pos(), st.len().unwrap_or(0), st.elapsed().as_secs_f64(), estimate);
            let _ = w.write_str(&eta.text());
        })
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Prunes `model` and, alongside, passes each eval set through every layer right after it is
/// pruned, so the pruned model's perplexity comes without a second pass over the weights.
/// `write` receives each pruned layer (compact form).
pub fn prune_and_eval(
    model: &Model,
    windows: &calib::Windows,
    opts: &PruneConfig,
    backend: &mut dyn Backend,
    evals: &[EvalSet],
    progress: Option<&indicatif::ProgressBar>,
    write: &mut dyn FnMut(usize, &crate::model::LayerWeights) -> Result<()>,
) -> Result<PrunedRun> {
    prune_and_eval_resumed(model, windows, opts, backend, evals, None, progress, &mut |l, lw, _| write(l, lw))
}

/// `prune_and_eval` after the layers an interrupted run finished (`prune::prune_resumed`);
/// `write` also receives each layer's record.
#[allow(clippy::too_many_arguments)]
pub fn prune_and_eval_resumed(
    model: &Model,
    windows: &calib::Windows,
    opts: &PruneConfig,
    backend: &mut dyn Backend,
    evals: &[EvalSet],
    resume: Option<prune::Resume<'_>>,
    progress: Option<&indicatif::ProgressBar>,
    write: &mut dyn FnMut(usize, &crate::model::LayerWeights, &prune::LayerReport) -> Result<()>,
) -> Result<PrunedRun> {
    let cfg = &model.cfg;
    let (emb, pos) = (model.embedding()?, model.positions()?);
    let mut hidden: Vec<crate::tensor::Mat> =
        evals.iter().map(|e| crate::forward::embed(cfg, &emb, pos.as_ref(), &e.ids, e.seqlen)).collect();
    drop(emb);
    let mut eval_seconds = 0.0;
    let mut report = prune::prune_resumed(
        model,
        &windows.ids,
        windows.seqlen,
        opts,
        backend,
        resume,
        &mut |l, lw, r| {
            let t0 = Instant::now();
            for (h, e) in hidden.iter_mut().zip(evals) {
                *h = crate::forward::layer(cfg, &lw, h, e.seqlen);
            }
            eval_seconds += t0.elapsed().as_secs_f64();
            write(l, &lw, r)
        },
        progress,
    )?;
    // the sink's time includes the eval windows' forward; report it apart from writing
    report.phases.write -= eval_seconds;
    let t_nll = Instant::now();
    let (fnorm, head) = (model.final_norm()?, model.lm_head()?);
    let ppl = hidden
        .iter()
        .zip(evals)
        .map(|(h, e)| {
            let nll = crate::eval::hidden_nll(cfg, &fnorm, &head, h, &e.ids, e.seqlen, |_| {})?;
            Ok(crate::eval::Perplexity::from_nll(nll, e.ids.len() / e.seqlen, e.seqlen))
        })
        .collect::<Result<_>>()?;
    if !evals.is_empty() {
        eval_seconds += t_nll.elapsed().as_secs_f64();
    }
    Ok(PrunedRun { report, ppl, eval_seconds })
}

/// Eval windows of a text or `.npy` file (a 2-D array is read row after row).
pub fn eval_ids(model: &Model, path: &Path, seqlen: usize, max_windows: Option<usize>) -> Result<Vec<u32>> {
    let tok = if calib::is_npy(path) { None } else { model.tokenizer()? };
    let stream = match calib::load_tokens(path, tok.as_ref(), calib::Role::Evaluation)? {
        calib::Tokens::Stream(s) => s,
        calib::Tokens::Windows { ids, .. } => ids,
    };
    // checked here, not in the forward pass: `prune --eval` embeds the windows before any perplexity
    calib::check_vocab(&stream, model.cfg.vocab, path, calib::Role::Evaluation)?;
    crate::eval::windows(&stream, seqlen, max_windows)
}

/// Picks the backend for `--device`: `cuda` opens the GPU or fails with a clear error; `emu` opens
/// the emulated device; `auto` takes CUDA when the kernels are built in and a device is usable,
/// else the CPU (never the emulated device), and says which and why (logged; see `backend_announced`).
pub fn backend(device: Device) -> Result<Box<dyn Backend>> {
    backend_announced(device, false)
}

/// As `backend`; with `announce`, `auto` also says on stderr which device it chose and why.
pub fn backend_announced(device: Device, announce: bool) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Box::new(CpuBackend::new())),
        Device::Cuda => Ok(Box::new(CudaBackend::new()?)),
        Device::Emu => Ok(Box::new(CudaBackend::emu()?)),
        Device::Auto => match crate::backend::cuda::cuda_usable().and_then(|()| CudaBackend::new()) {
            Ok(b) => {
                let msg = format!("--device auto: using {} (a CUDA device is usable)", b.name());
                if announce {
                    eprintln!("{msg}");
                }
                tracing::info!("{msg}");
                Ok(Box::new(b))
            }
            Err(e) => {
                let msg = format!("--device auto: using the CPU ({e})");
                if announce {
                    eprintln!("{msg}");
                }
                tracing::info!("{msg}");
                Ok(Box::new(CpuBackend::new()))
            }
        },
    }
}

/// Test hooks, read from the environment: `FASP_TEST_STOP_AFTER_LAYER=n` kills the process
/// (SIGKILL) right after layer n is checkpointed; `FASP_TEST_LAYER_DELAY_MS=t` sleeps t ms after
/// each layer (so a test can signal a run mid-way).
struct TestHooks {
    stop_after: Option<usize>,
    delay: Option<std::time::Duration>,
}

impl TestHooks {
    fn from_env() -> TestHooks {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        TestHooks {
            stop_after: num("FASP_TEST_STOP_AFTER_LAYER").map(|n| n as usize),
            delay: num("FASP_TEST_LAYER_DELAY_MS").map(std::time::Duration::from_millis),
        }
    }
    fn after_layer(&self, l: usize) {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        if self.stop_after == Some(l) {
            // SAFETY: kill(2) on this process; nothing runs after it.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            std::process::abort();
        }
    }
}

/// Settings of the memory plan of a prune (`--max-gpu-mem`, `--paper`).
#[derive(Clone, Debug, Default)]
pub struct PlanSettings {
    /// Device memory the run may use; what the device has free when `None`.
    pub max_gpu_mem: Option<u64>,
    /// The paper's calibration defaults (128 × 2048) on the CPU too.
    pub paper: bool,
}

/// Where `device` runs before a backend is opened: `auto` is CUDA when a device is usable.
pub fn target_of(device: Device) -> Target {
    match device {
        Device::Cpu => Target::Cpu,
        Device::Cuda => Target::Cuda,
        Device::Emu => Target::Emu,
        Device::Auto if crate::backend::cuda::cuda_usable().is_ok() => Target::Cuda,
        Device::Auto => Target::Cpu,
    }
}

/// Where an opened backend runs.
pub fn backend_target(device: Device, be: &dyn Backend) -> Target {
    match (device, be.device_memory()) {
        (_, None) => Target::Cpu,
        (Device::Emu, Some(_)) => Target::Emu,
        _ => Target::Cuda,
    }
}

/// Calibration windows and tokens per window of a text or stream when not given: the paper's
/// 128 × 2048 on a device or with `--paper`, a CPU-sized 128 × 256 on the CPU.
pub fn default_calibration(target: Target, paper: bool) -> (usize, usize) {
    if paper || target.on_device() {
        plan::PAPER_DEFAULT
    } else {
        plan::CPU_DEFAULT
    }
}

/// The device memory limit: `--max-gpu-mem`, else what the opened device has free.
pub fn device_limit(max_gpu_mem: Option<u64>, be: Option<&dyn Backend>) -> Option<plan::Limit> {
    match (max_gpu_mem, be.and_then(|b| b.device_memory())) {
        (Some(bytes), _) => Some(plan::Limit { bytes, source: "--max-gpu-mem".into() }),
        (None, Some((free, total))) => Some(plan::Limit { bytes: free, source: format!("free on the device, of {}", plan::gib(total)) }),
        (None, None) => None,
    }
}

/// `FASP_CUDA_CHUNK_TOKENS` when set to a positive number (the plan then keeps it).
pub fn env_chunk_tokens() -> Option<usize> {
    std::env::var("FASP_CUDA_CHUNK_TOKENS").ok().and_then(|v| v.trim().parse().ok()).filter(|&n: &usize| n > 0)
}

/// A plan request for `model` with `nsamples × seqlen` calibration tokens.
#[allow(clippy::too_many_arguments)]
pub fn plan_request(
    model: &Model,
    target: Target,
    nsamples: usize,
    seqlen: usize,
    sparsity: f64,
    eval_tokens: usize,
    device_limit: Option<plan::Limit>,
) -> PlanRequest {
    PlanRequest {
        target,
        nsamples,
        seqlen,
        sparsity,
        eval_tokens,
        device_limit,
        host_limit: plan::host_limit(),
        chunk_tokens: env_chunk_tokens(),
        vocab: model.cfg.vocab,
        source_dtype_bytes: model.dtype().size(),
        text_bytes: 0,
        output_held_bytes: 0,
    }
}

/// The plan's view of the job's files: the calibration text tokenized at the start, and the
/// output the HF writer holds until its shard (at most 2 GiB) is written (the GGUF writer spools
/// to disk).
fn with_job_files(mut req: PlanRequest, model: &Model, job: &PruneJob) -> PlanRequest {
    if !calib::is_npy(&job.calib) {
        req.text_bytes = std::fs::metadata(&job.calib).map_or(0, |m| m.len());
    }
    if job.format == OutFormat::Hf {
        let dtype = job.dtype.unwrap_or_else(|| model.dtype());
        req.output_held_bytes = (model.param_count() as u64).saturating_mul(dtype.size() as u64).min(output::SHARD_BYTES as u64);
    }
    req
}

/// [`plan_request`] for a model known by its config only (`bench`: f16 checkpoint).
pub fn plan_request_for_config(
    cfg: &crate::model::ModelConfig,
    target: Target,
    nsamples: usize,
    seqlen: usize,
    sparsity: f64,
    device_limit: Option<plan::Limit>,
) -> PlanRequest {
    PlanRequest {
        target,
        nsamples,
        seqlen,
        sparsity,
        eval_tokens: 0,
        device_limit,
        host_limit: plan::host_limit(),
        chunk_tokens: env_chunk_tokens(),
        vocab: cfg.vocab,
        source_dtype_bytes: 2,
        text_bytes: 0,
        output_held_bytes: 0,
    }
}

/// Hands the plan's chunking to the backend (unless `FASP_CUDA_CHUNK_TOKENS` fixes it).
pub fn apply_plan(plan: &Plan, be: &mut dyn Backend) {
    if let (Some(c), None) = (plan.chunking, env_chunk_tokens()) {
        be.set_chunking(c.chunk_tokens, c.attn_windows);
    }
}

/// The plan from `--nsamples`/`--seqlen` alone (defaults for the one not given), before the
/// calibration file is read: `None` when neither is given (the file then decides).
fn early_plan(model: &Model, job: &PruneJob, target: Target, settings: &PlanSettings) -> Result<Option<Plan>> {
    if job.nsamples.is_none() && job.seqlen.is_none() {
        return Ok(None);
    }
    let (dn, dl) = default_calibration(target, settings.paper);
    let req = plan_request(
        model,
        target,
        job.nsamples.unwrap_or(dn),
        job.seqlen.unwrap_or(dl),
        job.prune.sparsity,
        0,
        settings.max_gpu_mem.map(|bytes| plan::Limit { bytes, source: "--max-gpu-mem".into() }),
    );
    let req = with_job_files(req, model, job);
    plan::plan(&model.cfg, &req).map(Some)
}

/// `prune --plan`: the plan of `job` without computing anything. Reads the calibration (and eval)
/// files only when the flags fit in memory; opens the device only to ask its free memory.
pub fn plan_prune(job: &PruneJob, settings: &PlanSettings) -> Result<Plan> {
    let model = Model::open(&job.model)?;
    let target0 = target_of(job.device);
    if let Some(p) = early_plan(&model, job, target0, settings)? {
        if p.host.fits == Some(false) {
            return Ok(p);
        }
    }
    let tok = if calib::is_npy(&job.calib) { None } else { model.tokenizer()? };
    let defaults = default_calibration(target0, settings.paper);
    let windows =
        calib::calibration_with_defaults(&job.calib, tok.as_ref(), job.nsamples, job.seqlen, defaults, job.calib_seed, model.cfg.vocab)?;
    let eval_tokens = match &job.eval {
        Some(e) => EvalSet::load(&model, "eval", &e.path, e.seqlen, e.max_windows)?.ids.len(),
        None => 0,
    };
    let be = if target0.on_device() && settings.max_gpu_mem.is_none() { backend(job.device).ok() } else { None };
    let target = be.as_deref().map_or(target0, |b| backend_target(job.device, b));
    let limit = device_limit(settings.max_gpu_mem, be.as_deref());
    let req = plan_request(&model, target, windows.n, windows.seqlen, job.prune.sparsity, eval_tokens, limit);
    let mut p = plan::plan(&model.cfg, &with_job_files(req, &model, job))?;
    if target == Target::Cpu {
        p.estimate = Some(plan::estimate_cpu(&model.cfg, p.nsamples, p.seqlen, job.prune.sparsity)?);
    }
    Ok(p)
}

pub fn run_prune(job: &PruneJob) -> Result<PruneSummary> {
    run_prune_with(job, &PlanSettings::default())
}

/// [`run_prune`] with the plan's settings: the plan is checked before any work, its chunking is
/// handed to the backend, and it is printed (with a time estimate on the CPU) when `job.progress`.
/// An interrupted run says what was removed.
pub fn run_prune_with(job: &PruneJob, settings: &PlanSettings) -> Result<PruneSummary> {
    run_prune_inner(job, settings).map_err(|e| match e {
        crate::FaspError::Interrupted { signal, code, during } => crate::FaspError::Interrupted {
            signal,
            code,
            during: format!("{during}; the unfinished output was removed and {} was not written", job.out.display()),
        },
        other => other,
    })
}

fn run_prune_inner(job: &PruneJob, settings: &PlanSettings) -> Result<PruneSummary> {
    let t_start = Instant::now();
    crate::interrupt::stage("reading the model and calibration data");
    let mut inputs: Vec<(&str, &Path)> = vec![("input model", job.model.as_path()), ("calibration file", job.calib.as_path())];
    if let Some(e) = &job.eval {
        inputs.push(("evaluation file", e.path.as_path()));
    }
    output::check_out_vs_inputs(&job.out, &inputs)?;
    if job.compact && job.format != OutFormat::Hf {
        return Err(FaspError::Arg(
            "--compact cannot be written as GGUF (llama.cpp holds one value width per model); drop --compact".into(),
        ));
    }
    let model = Model::open(&job.model)?;
    let kind = if job.format == OutFormat::Hf { output::OutKind::Dir } else { output::OutKind::File };
    // the lock on --out is held from here until the output is in place
    let claim = output::OutClaim::acquire_kind(&job.out, &job.model, job.force, job.resume, kind)?;
    let target0 = target_of(job.device);
    // sizes from the flags are checked before the calibration is sampled
    if let Some(p) = early_plan(&model, job, target0, settings)? {
        p.check()?;
    }
    let tok = if calib::is_npy(&job.calib) { None } else { model.tokenizer()? };
    let defaults = default_calibration(target0, settings.paper);
    let windows =
        calib::calibration_with_defaults(&job.calib, tok.as_ref(), job.nsamples, job.seqlen, defaults, job.calib_seed, model.cfg.vocab)?;
    tracing::info!(windows = windows.n, seqlen = windows.seqlen, "calibration ready");

    let evals: Vec<EvalSet> = match &job.eval {
        Some(e) => vec![EvalSet::load(&model, "eval", &e.path, e.seqlen, e.max_windows)?],
        None => Vec::new(),
    };
    // chosen once the inputs are known to be good, so a bad input still gets one error line
    let mut be = backend_announced(job.device, job.progress)?;
    let target = backend_target(job.device, be.as_ref());
    let eval_tokens = evals.iter().map(|e| e.ids.len()).sum();
    let limit = device_limit(settings.max_gpu_mem, Some(be.as_ref()));
    let req = plan_request(&model, target, windows.n, windows.seqlen, job.prune.sparsity, eval_tokens, limit);
    let mut run_plan = plan::plan(&model.cfg, &with_job_files(req, &model, job))?;
    run_plan.check()?;
    apply_plan(&run_plan, be.as_mut());
    if job.progress {
        // the commonest bad setting is refused before the plan is printed
        model.check_seqlen(windows.seqlen)?;
        if target == Target::Cpu {
            run_plan.estimate = plan::estimate_cpu(&model.cfg, windows.n, windows.seqlen, job.prune.sparsity).ok();
        }
        eprint!("{}", run_plan.text());
        if target == Target::Cpu
            && !settings.paper
            && job.nsamples.is_none()
            && job.seqlen.is_none()
            && windows.source["kind"] != "npy-windows"
        {
            eprintln!(
                "  (CPU default calibration {} x {}; the paper uses {} x {}: add --paper, or set --nsamples/--seqlen)",
                windows.n,
                windows.seqlen,
                plan::PAPER_DEFAULT.0,
                plan::PAPER_DEFAULT.1
            );
        }
    }
    let setup_seconds = t_start.elapsed().as_secs_f64();
    let t_dense = Instant::now();
    let ppl_dense = match (&job.eval, evals.first()) {
        (Some(e), Some(set)) if e.dense => Some(crate::eval::perplexity(&model, &set.ids, set.seqlen, |_| {})?),
        _ => None,
    };

    let dense_eval_seconds = t_dense.elapsed().as_secs_f64();
    crate::interrupt::check()?;

    let dtype = job.dtype.unwrap_or_else(|| model.dtype());
    let fingerprint = crate::checkpoint::fingerprint(&model, &windows, &job.prune, &be.name())?;
    let (tmp, ckpt) = match claim.resumable().first().cloned() {
        Some(dir) if job.resume => {
            // refused (and left in place) unless it was made by the same run
            crate::checkpoint::Checkpoint::open(&dir, &fingerprint)?;
            let tmp = claim.adopt(&dir)?;
            let ckpt = crate::checkpoint::Checkpoint::open(tmp.path(), &fingerprint)?;
            let msg = format!(
                "--resume: {} of {} layers were finished by an interrupted run ({}); continuing from layer {}",
                ckpt.done(),
                model.cfg.layers,
                dir.display(),
                ckpt.done()
            );
            tracing::warn!("{msg}");
            (tmp, ckpt)
        }
        _ => {
            if job.resume {
                tracing::warn!("--resume: no checkpoint of {} found; starting from the first layer", job.out.display());
            }
            let tmp = claim.create_tmp()?;
            let ckpt = crate::checkpoint::Checkpoint::create(tmp.path(), &fingerprint)?;
            (tmp, ckpt)
        }
    };
    let resumed_from = ckpt.done();
    let mut writer = match job.format {
        OutFormat::Hf => Sink::Hf(ModelWriter::with_tmp(tmp, dtype, job.compact)),
        OutFormat::Gguf(ty) => {
            let ty = ty.unwrap_or(gguf_type_of(dtype));
            let exporter = GgufExporter::create(&model, &job.out, Some(tmp.path()), ty)?;
            Sink::Gguf { exporter: Box::new(exporter), _tmp: tmp, params: (0, 0) }
        }
    };
    let hooks = TestHooks::from_env();
    let estimate = run_plan.estimate.as_ref().map(|e| e.seconds_total);
    let pb = job.progress.then(|| progress_bar_eta(model.cfg.layers, &format!("pruning ({})", job.prune.method.name()), "layer", estimate));
    let run = {
        let ckpt = &ckpt;
        let mut load = |l: usize| ckpt.load(&model, l);
        let resume = (resumed_from > 0).then_some(prune::Resume { done: resumed_from, load: &mut load });
        prune_and_eval_resumed(&model, &windows, &job.prune, be.as_mut(), &evals, resume, pb.as_ref(), &mut |l, lw, r| {
            writer.write_layer(&model, l, lw)?;
            if l >= resumed_from {
                ckpt.save(l, lw, r)?;
                hooks.after_layer(l);
            }
            Ok(())
        })
    }?;
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let (report, eval_seconds) = (run.report, run.eval_seconds);
    let ppl_pruned = run.ppl.into_iter().next();
    let (dense_eq, compact) = writer.param_counts(&model);
    let original = model.param_count();
    let seconds_total = t_start.elapsed().as_secs_f64();
    let layers: Vec<serde_json::Value> = report
        .layers
        .iter()
        .map(|r| {
            json!({
                "layer": r.layer,
                "attn_kept_units": r.attn.kept_units,
                "mlp_kept_units": r.mlp.kept_units,
                "attn": r.attn,
                "mlp": r.mlp,
            })
        })
        .collect();
    let fasp_json = json!({
        "engine": "fasp-engine",
        "version": crate::VERSION,
        "model": job.model.display().to_string(),
        "model_type": model.cfg.family.name(),
        "method": job.prune.method.name(),
        "settings": {
            "sparsity": job.prune.sparsity,
            "damp": job.prune.damp,
            "restore": job.prune.restore,
            "skip_attn": job.prune.skip_attn,
            "seed": job.prune.seed,
            "compact": job.compact,
            "dtype": dtype.name(),
            "device": job.device,
        },
        "backend": report.backend,
        "calibration": windows.source,
        "params": {"original": original, "dense_equivalent": dense_eq, "compact": compact},
        "phases_seconds": report.phases,
        "prune_seconds": report.phases.load_weights + report.phases.forward_stats + report.phases.score_select + report.phases.restore + report.phases.embed,
        "total_seconds": seconds_total,
        "eval": job.eval.as_ref().map(|e| json!({
            "path": e.path.display().to_string(),
            "seconds_in_pipeline": eval_seconds,
            "dense": ppl_dense,
            "pruned": ppl_pruned,
        })),
        "memory": memory_json(&run_plan, be.device_counters().map(|c| c.peak_bytes)),
        "plan": run_plan,
        "layers": layers,
    });
    let mut fasp_json = fasp_json;
    if resumed_from > 0 {
        fasp_json["resumed_from_layer"] = resumed_from.into();
    }
    crate::interrupt::check()?;
    crate::interrupt::stage("writing the output");
    let gguf = writer.finish(&model, &job.out, &fasp_json)?;
    Ok(PruneSummary {
        report,
        params_original: original,
        params_dense_equivalent: dense_eq,
        params_compact: compact,
        seconds_total,
        setup_seconds,
        dense_eval_seconds,
        eval_seconds,
        fasp_json,
        ppl_dense,
        ppl_pruned,
        gguf,
    })
}

/// The GGUF type matching an HF dtype.
pub fn gguf_type_of(dtype: DType) -> GgufType {
    match dtype {
        DType::F32 => GgufType::F32,
        DType::F16 => GgufType::F16,
        DType::BF16 => GgufType::BF16,
    }
}

/// Where the pruned layers go: the HF writer, or the GGUF exporter with the temporary directory
/// (checkpoint, lock and the file being assembled) it works in.
enum Sink {
    Hf(ModelWriter),
    Gguf { exporter: Box<GgufExporter>, _tmp: output::TempDir, params: (usize, usize) },
}

impl Sink {
    fn write_layer(&mut self, model: &Model, l: usize, lw: &crate::model::LayerWeights) -> Result<()> {
        match self {
            Sink::Hf(w) => w.write_layer(model, l, lw),
            Sink::Gguf { exporter, params, .. } => {
                let (v, o) = output::dense_equivalent_attn(&model.cfg, lw);
                params.0 += crate::model::LayerWeights { v, o, ..lw.clone() }.param_count();
                params.1 += lw.param_count();
                exporter.write_layer(l, lw)
            }
        }
    }

    fn param_counts(&self, model: &Model) -> (usize, usize) {
        match self {
            Sink::Hf(w) => w.param_counts(model),
            Sink::Gguf { params, .. } => {
                let other = model.non_layer_param_count();
                (params.0 + other, params.1 + other)
            }
        }
    }

    /// Finishes the output; a GGUF carries the run record as the metadata key `fasp.json`.
    fn finish(self, model: &Model, out: &Path, fasp_json: &serde_json::Value) -> Result<Option<ExportSummary>> {
        match self {
            Sink::Hf(w) => w.finish(model, out, Some(fasp_json)).map(|()| None),
            Sink::Gguf { mut exporter, _tmp: tmp, .. } => {
                exporter.meta("fasp.json", crate::gguf::GgufValue::String(fasp_json.to_string()));
                let s = exporter.finish(model)?;
                // the temporary directory (checkpoint, lock) goes now that the file is in place
                drop(tmp);
                Ok(Some(s))
            }
        }
    }
}

/// Planned and measured peaks for the run record: host (VmHWM) and device (the device counters).
pub fn memory_json(plan: &Plan, peak_device_bytes: Option<u64>) -> serde_json::Value {
    json!({
        "planned_peak_host_bytes": plan.host.peak_bytes,
        "planned_peak_device_bytes": plan.device.as_ref().map(|d| d.peak_bytes),
        "peak_host_bytes": crate::bench::peak_host_bytes(),
        "peak_device_bytes": peak_device_bytes,
    })
}

/// Perplexity of a model on a text or `.npy` token file.
pub fn run_eval(
    model_path: &Path,
    tokens: &Path,
    seqlen: usize,
    max_windows: Option<usize>,
    progress: bool,
) -> Result<crate::eval::Perplexity> {
    let model = Model::open(model_path)?;
    let ids = eval_ids(&model, tokens, seqlen, max_windows)?;
    let n = ids.len() / seqlen;
    let pb = progress.then(|| progress_bar_of(n, "eval", "window"));
    let r = crate::eval::perplexity(&model, &ids, seqlen, |w| {
        if let Some(pb) = &pb {
            pb.set_position(w as u64)
        }
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok(r)
}

/// `convert --out X.gguf`: writes a model (an HF directory, our pruned output, or a `.gguf`) as
/// one GGUF file of type `ty` (the input's when `None`), under the same `--out` rules as `prune`:
/// not over an input, `--force` to replace, locked, assembled in a temporary directory beside it
/// and renamed into place.
pub fn run_convert_gguf(input: &Path, out: &Path, ty: Option<GgufType>, force: bool) -> Result<ExportSummary> {
    output::check_out_vs_inputs(out, &[("input model", input)])?;
    let model = Model::open(input)?;
    let tmp = output::OutClaim::acquire_kind(out, input, force, false, output::OutKind::File)?.create_tmp()?;
    let ty = ty.unwrap_or_else(|| crate::gguf_export::default_type(&model));
    let s = crate::gguf_export::export_model(&model, out, Some(tmp.path()), ty)?;
    drop(tmp);
    Ok(s)
}

/// `convert`: writes a model (e.g. a `.gguf`) as a dense HF directory, unchanged but for the dtype.
pub fn run_convert(input: &Path, out: &Path, dtype: Option<DType>, force: bool) -> Result<usize> {
    output::check_out_vs_inputs(out, &[("input model", input)])?;
    let model = Model::open(input)?;
    let mut writer = ModelWriter::create(out, &model, force, dtype.unwrap_or_else(|| model.dtype()), false)?;
    for l in 0..model.cfg.layers {
        crate::interrupt::stage(format!("converting layer {} of {}", l + 1, model.cfg.layers));
        crate::interrupt::check()?;
        writer.write_layer(&model, l, &model.layer(l)?)?;
    }
    let params = writer.param_counts(&model).0;
    writer.finish(&model, out, None)?;
    Ok(params)
}

//! The `fasp-engine` command line. All logic lives in the library (`fasp_engine::job` and
//! friends) so that tests reach it; this file parses flags, sets up logging and prints.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fasp_engine::gguf_write::GgufType;
use fasp_engine::job::{self, Device, PruneJob};
use fasp_engine::model::{DType, Model};
use fasp_engine::prune::{Method, PruneConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fasp-engine",
    version = fasp_engine::build_info(),
    about = "FASP structured pruning for OPT and LLaMA models (arXiv 2501.09412)",
    long_about = "Removes whole channels from OPT and LLaMA models without retraining: the coupled \
        columns of o_proj/out_proj (with v_proj rows) and of fc2/down_proj (with fc1 or gate/up rows) \
        are scored with ||X_j||_2 * sum_i |W[i,j]|, the lowest go, and the kept columns are re-fit \
        by least squares. Layers are processed in order, each seeing the already-pruned layers.\n\n\
        Logging: set RUST_LOG (e.g. RUST_LOG=info)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    // allow_negative_numbers: `--sparsity -0.1` reaches the range check instead of being taken for a flag
    /// Prune a model and write a dense-equivalent HF directory (or the compact form) with fasp.json,
    /// or a GGUF file (--format gguf).
    #[command(allow_negative_numbers = true)]
    Prune(PruneArgs),
    /// Perplexity of a model (dense, pruned dense-equivalent, or compact) on a text or .npy token file.
    #[command(allow_negative_numbers = true)]
    Eval(EvalArgs),
    /// Print a model's architecture, shapes, dtype and parameter counts; for a pruned model, how it was
    /// pruned (fasp.json).
    Inspect(InspectArgs),
    /// Methods x sparsities on the same data: a perplexity table, a CSV and an SVG plot.
    #[command(allow_negative_numbers = true)]
    Sweep(SweepArgs),
    /// Merge the CSVs of several sweeps run with the same settings: tables, one CSV and the plots.
    Report(ReportArgs),
    /// Write a .gguf model as a dense HF directory (config.json, model.safetensors, tokenizer.json), or
    /// an HF directory (e.g. a pruned output) or .gguf as a GGUF file (--out X.gguf).
    Convert(ConvertArgs),
    /// Time the prune pipeline on seeded synthetic weights of a published OPT/LLaMA shape, with a
    /// phase breakdown and the physical floor.
    #[command(long_about = BENCH_ABOUT)]
    #[command(allow_negative_numbers = true)]
    Bench(BenchArgs),
}

#[derive(Args)]
struct SweepArgs {
    /// Model: an HF directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Evaluation set, as NAME=FILE or FILE (repeatable; text or .npy).
    #[arg(long = "eval", required = true)]
    evals: Vec<String>,
    /// Comma-separated: fasp, fasp-no-restore, wanda-sp, flap, magnitude, random.
    #[arg(long, default_value = "fasp,fasp-no-restore,wanda-sp,flap,magnitude,random")]
    methods: String,
    /// Comma-separated sparsities in [0, 1).
    #[arg(long, default_value = "0.1,0.2,0.3", allow_hyphen_values = true)]
    sparsities: String,
    #[command(flatten)]
    calib: CalibArgs,
    /// Evaluation window length.
    #[arg(long, default_value_t = 2048)]
    eval_seqlen: usize,
    /// At most this many evaluation windows per set.
    #[arg(long, value_parser = at_least_one)]
    eval_windows: Option<usize>,
    /// Where to write sweep.csv and one sweep-NAME.svg per evaluation set.
    #[arg(long, default_value = "sweep-out")]
    out_dir: PathBuf,
    /// Where to run: auto picks CUDA when kernels are built in and a GPU is usable, else the CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
}

fn sweep(a: SweepArgs) -> Result<()> {
    use fasp_engine::sweep::{self, SweepMethod, SweepSpec};
    let methods = a.methods.split(',').map(|m| SweepMethod::parse(m.trim())).collect::<Result<Vec<_>, _>>()?;
    let sparsities = a
        .sparsities
        .split(',')
        .map(|s| s.trim().parse::<f64>().with_context(|| format!("bad sparsity {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    let evals = a
        .evals
        .iter()
        .map(|e| match e.split_once('=') {
            Some((n, p)) => (n.to_string(), PathBuf::from(p)),
            None => (PathBuf::from(e).file_stem().map_or("eval".into(), |s| s.to_string_lossy().into_owned()), PathBuf::from(e)),
        })
        .collect::<Vec<_>>();
    let spec = SweepSpec {
        model: a.model,
        calib: a.calib.calib,
        nsamples: a.calib.nsamples,
        seqlen: a.calib.seqlen,
        seed: a.calib.seed,
        damp: a.calib.damp,
        methods,
        sparsities,
        evals,
        eval_seqlen: a.eval_seqlen,
        eval_windows: a.eval_windows,
        device: a.device,
    };
    if a.out_dir.exists() && !a.out_dir.is_dir() {
        anyhow::bail!("--out-dir {}: exists and is not a directory", a.out_dir.display());
    }
    // The CSV is rewritten after every row, so an interrupted sweep keeps what it measured
    // (`fasp-engine report` merges it with a later sweep of the remaining methods). The directory
    // is made with the first row, once every argument and input has been validated.
    let csv = a.out_dir.join("sweep.csv");
    let mut so_far = Vec::new();
    let mut csv_err = None;
    let rows = sweep::run(&spec, |r| {
        eprintln!("{:<16} s={:<5} {:<10} ppl {:.4}", r.method, r.sparsity, r.eval, r.ppl);
        so_far.push(r.clone());
        let written = std::fs::create_dir_all(&a.out_dir)
            .map_err(|e| fasp_engine::error::FaspError::io(&a.out_dir, e))
            .and_then(|()| sweep::write_csv(&so_far, &csv));
        if let Err(e) = written {
            csv_err.get_or_insert(e);
        }
    })?;
    // every row is in the CSV already (written above, the last time with all of them)
    if let Some(e) = csv_err {
        return Err(e.into());
    }
    tables_and_plots(&rows, &a.out_dir)
}

/// One table per evaluation set on stdout and one `sweep-NAME.svg` per set in `out_dir`.
fn tables_and_plots(rows: &[fasp_engine::sweep::SweepRow], out_dir: &Path) -> Result<()> {
    use fasp_engine::sweep;
    let mut seen: Vec<&str> = Vec::new();
    for r in rows {
        if seen.contains(&r.eval.as_str()) {
            continue;
        }
        seen.push(&r.eval);
        println!("{} (seqlen {}, windows {}):", r.eval, r.seqlen, r.windows);
        println!("{}", sweep::table(rows, &r.eval));
        sweep::plot_svg(rows, &r.eval, &out_dir.join(format!("sweep-{}.svg", r.eval)))?;
    }
    println!("wrote {}", out_dir.display());
    Ok(())
}

#[derive(Args)]
struct ReportArgs {
    /// A sweep.csv (repeatable). Rows measured twice must agree, so sweeps with different settings
    /// are refused rather than mixed.
    #[arg(long = "csv", required = true)]
    csvs: Vec<PathBuf>,
    /// Where to write the merged sweep.csv and one sweep-NAME.svg per evaluation set.
    #[arg(long, default_value = "sweep-out")]
    out_dir: PathBuf,
}

fn report(a: ReportArgs) -> Result<()> {
    use fasp_engine::sweep;
    let sets = a.csvs.iter().map(|p| sweep::read_csv(p)).collect::<Result<Vec<_>, _>>()?;
    let rows = sweep::merge(sets)?;
    std::fs::create_dir_all(&a.out_dir).map_err(|e| fasp_engine::error::FaspError::io(&a.out_dir, e))?;
    sweep::write_csv(&rows, &a.out_dir.join("sweep.csv"))?;
    tables_and_plots(&rows, &a.out_dir)
}

#[derive(Args)]
struct ConvertArgs {
    /// Input model: a .gguf file (its tensors are dequantized), or an HF directory (e.g. a pruned
    /// output) to write as GGUF.
    #[arg(long, visible_alias = "gguf")]
    model: PathBuf,
    /// Output: an HF directory, or a .gguf file (written to a temporary path beside it, then renamed).
    #[arg(long)]
    out: PathBuf,
    /// Output format; by default gguf when --out ends in .gguf, else hf.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Output tensor dtype (f32, f16, bf16). By default the input's: f32, f16 and bf16 stay as they
    /// are; quantized tensors are written as f16.
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    /// GGUF tensor type of the matrices (f32, f16, bf16, q8_0; norms and biases stay f32). Default:
    /// --dtype, else the input's (a quantized input gives f16).
    #[arg(long, value_parser = parse_gguf_type)]
    gguf_type: Option<GgufType>,
    /// Replace an existing --out.
    #[arg(long)]
    force: bool,
}

/// The output format of `prune` and `convert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// A Hugging Face directory (config.json, safetensors, tokenizer).
    Hf,
    /// One .gguf file that llama.cpp loads (attention at full width with zeroed pruned units).
    Gguf,
}

fn parse_gguf_type(s: &str) -> Result<GgufType, String> {
    GgufType::parse(s).ok_or_else(|| format!("unknown GGUF type {s:?} (f32, f16, bf16, q8_0)"))
}

/// The GGUF type asked for by --gguf-type or --dtype (None: the input's).
fn gguf_type(gguf_type: Option<GgufType>, dtype: Option<DType>) -> Option<GgufType> {
    gguf_type.or(dtype.map(job::gguf_type_of))
}

/// One line on a written GGUF: size, type, and the matrices Q8_0 could not hold.
fn gguf_line(out: &Path, s: &fasp_engine::gguf_export::ExportSummary) -> String {
    let padded =
        if s.ffn != s.ffn_pruned { format!(" (MLP width {} padded with zero channels for Q8_0)", s.ffn_pruned) } else { String::new() };
    let mut line = format!(
        "wrote {} ({}, GGUF {}, feed_forward_length {}{padded}, tokenizer from {})",
        out.display(),
        human_bytes(s.bytes),
        s.ty.name(),
        s.ffn,
        s.tokenizer
    );
    if !s.f16_fallback.is_empty() {
        line.push_str(&format!("; {} matrices with rows not a multiple of 32 written as f16", s.f16_fallback.len()));
    }
    line
}

fn convert(a: ConvertArgs) -> Result<()> {
    let is_gguf_path = a.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    match a.format.unwrap_or(if is_gguf_path { Format::Gguf } else { Format::Hf }) {
        Format::Gguf => {
            let s = job::run_convert_gguf(&a.model, &a.out, gguf_type(a.gguf_type, a.dtype), a.force)?;
            println!("{}", gguf_line(&a.out, &s));
        }
        Format::Hf => {
            if a.gguf_type.is_some() {
                anyhow::bail!("--gguf-type needs a GGUF output (--format gguf or an --out ending in .gguf)");
            }
            let n = job::run_convert(&a.model, &a.out, a.dtype, a.force)?;
            let size = fasp_engine::output::dir_bytes(&a.out).map_or_else(|e| format!("size unknown: {e}"), human_bytes);
            println!("wrote {} ({n} parameters, {size})", a.out.display());
        }
    }
    Ok(())
}

const BENCH_ABOUT: &str = "Time the prune pipeline on seeded synthetic weights of a published OPT/LLaMA shape.\n\n\
    The synthetic weights (f16 ~N(0, 0.02), norms ~1) and the calibration token ids are generated in host memory \
    before the clock starts; then the real pipeline runs on the chosen backend and each pruned layer is dropped \
    (or written with --write). Pruning time does not depend on the weights' values.\n\n\
    Reported: seconds per phase, prune_seconds (the pipeline without writing), process_seconds (the whole bench \
    but the floor's rate measurements), peak host memory (VmHWM), and the physical floor\n\
    floor = max(FLOPs / measured GEMM rate, weight bytes / measured upload bandwidth),\n\
    with both rates measured in the same run (CPU: faer f32 GEMM 1024^3 and a 256 MiB memcpy).\n\n\
    FLOP model per layer (T = nsamples*seqlen tokens, L = seqlen, d = hidden, nq = heads*head_dim, \
    nk = kv_heads*head_dim, f = ffn, g = 2 with a gate (LLaMA) else 1, kc / km = kept o_proj columns / MLP \
    channels, 2 FLOPs per multiply-add):\n\
    - calibration forward: q/k/v 2*T*d*(nq+2*nk); causal attention 2*T*L*nq (QK^T and PV over the lower \
    triangle); o_proj on the kept context 2*T*kc*d; up (and gate) 2*T*d*f*g; down on kept channels 2*T*km*d;\n\
    - Gram matrices H = X^T X (symmetric): T*n*(n+1) for n = nq and n = f;\n\
    - restoration of a pair with s kept, p pruned columns, m = d rows: 2*m*p*s + s^3/3 (Cholesky) + 2*s^2*m (solves).\n\
    Scoring, selection, norms, rotary, softmax and the reconstruction-error diagnostic are not counted, so the \
    floor is a lower bound. Weight bytes: embeddings (and positions) and every layer run, in f16.";

/// Calibration and FASP settings shared by `prune` and `sweep`.
#[derive(Args)]
struct CalibArgs {
    /// Calibration data: a text file (tokenized with the model's tokenizer.json), or a .npy of
    /// integer token ids: 2-D [N, L] windows used as they are, or a 1-D stream to sample from.
    #[arg(long)]
    calib: PathBuf,
    /// Number of calibration windows sampled from a text or 1-D stream [default: 128].
    #[arg(long)]
    nsamples: Option<usize>,
    /// Calibration window length in tokens [default: 2048].
    #[arg(long)]
    seqlen: Option<usize>,
    /// Seed of the calibration sampler (and of the random method).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Relative damping: lambda = damp * mean(diag(H[S,S])). Multiplied by 10 (at most 3 times)
    /// when the Cholesky factorisation fails.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
}

#[derive(Args)]
struct PruneArgs {
    /// Input model: an HF directory (config.json + model.safetensors or a sharded index) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Output directory (or .gguf file with --format gguf). Written to a temporary directory beside
    /// it and renamed into place at the end. It may not be, contain or lie inside an input (model,
    /// calibration or --eval file).
    #[arg(long)]
    out: PathBuf,
    /// Output format: hf (a directory) or gguf (one file that llama.cpp loads; attention keeps its
    /// full width with the pruned value units zeroed).
    #[arg(long, value_enum, default_value_t = Format::Hf)]
    format: Format,
    /// With --format gguf: the tensor type of the matrices (f32, f16, bf16, q8_0; norms and biases
    /// stay f32). Default: --dtype, else the input's (a quantized input gives f16).
    #[arg(long, value_parser = parse_gguf_type)]
    gguf_type: Option<GgufType>,
    /// Fraction of the units of every pair to remove, in [0, 1). Pruned p = floor(n*s + 0.5).
    #[arg(long, default_value_t = 0.2)]
    sparsity: f64,
    #[command(flatten)]
    calib: CalibArgs,
    /// Ablation: keep W2[:,S] as it is, without the least-squares restoration.
    #[arg(long)]
    no_restore: bool,
    /// Prune the MLP pairs only; attention is left whole.
    #[arg(long)]
    skip_attn: bool,
    /// Pruning method. fasp (default); wanda-sp: mean|W|*sqrt(mean x^2), whole heads, no update;
    /// flap: var(x)*sum W^2, whole heads, bias compensation; magnitude: column L1 norm; random: seeded.
    #[arg(long, value_enum, default_value_t = Method::Fasp)]
    method: Method,
    /// Where to run: auto picks CUDA when kernels are built in and a GPU is usable, else the CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Output tensor dtype (f32, f16, bf16). By default the input's: f32, f16 and bf16 stay as they
    /// are; a quantized GGUF is written as f16.
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    /// Write the truly compact form (per-KV-head value widths differ); only fasp-engine runs it.
    #[arg(long)]
    compact: bool,
    /// Replace an existing --out directory.
    #[arg(long)]
    force: bool,
    /// Continue an interrupted prune to the same --out from its last finished layer (every finished
    /// layer is checkpointed in the temporary directory beside --out). The checkpoint must come
    /// from the same model, calibration data, settings and backend, or it is refused. Without a
    /// checkpoint the prune starts from the first layer.
    #[arg(long)]
    resume: bool,
    /// Also report the perplexity of the pruned model on this text or .npy file (computed during
    /// the run, layer by layer); with --eval-dense, of the dense model too.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Window length of --eval.
    #[arg(long, default_value_t = 2048)]
    eval_seqlen: usize,
    /// At most this many --eval windows.
    #[arg(long, value_parser = at_least_one)]
    eval_windows: Option<usize>,
    /// With --eval, evaluate the dense model first and print the comparison.
    #[arg(long)]
    eval_dense: bool,
    /// Print the run record (fasp.json) on stdout instead of a summary.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    plan: PlanArgs,
    /// The paper's calibration (128 x 2048) when --nsamples/--seqlen are not given. Without it a
    /// text calibration on the CPU defaults to 128 x 256 (a GPU uses 128 x 2048 either way).
    #[arg(long)]
    paper: bool,
}

/// The memory plan: print it, or bound the device memory it plans for.
#[derive(Args)]
struct PlanArgs {
    /// Print the plan (calibration tokens, peak host and device memory, chunk sizes, bytes moved
    /// per layer, estimated time on the CPU) and exit without computing; with --json as JSON.
    #[arg(long = "plan")]
    plan_only: bool,
    /// Device memory the run may use, e.g. 24GiB; chunk sizes are planned to fit it. Default:
    /// what the device has free. Settings that cannot fit are refused before any work.
    #[arg(long, value_parser = parse_size)]
    max_gpu_mem: Option<u64>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "tokens"])))]
struct EvalArgs {
    /// Model: an HF directory (dense, pruned or compact) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Evaluation text, tokenized with the model's tokenizer.json.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Evaluation token ids as .npy (1-D stream, or 2-D read row after row).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Window length: the stream is cut into non-overlapping windows; the last partial one is dropped.
    #[arg(long, default_value_t = 2048)]
    seqlen: usize,
    /// Evaluate at most this many windows (the first ones).
    #[arg(long, value_parser = at_least_one)]
    max_windows: Option<usize>,
    /// Print one JSON object: ppl, nll_sum, seqlen, windows, predicted_tokens.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// Model: an HF directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// List every tensor with its shape and dtype.
    #[arg(long)]
    tensors: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// List the available shapes (published configs) and exit.
    #[arg(long, conflicts_with = "shape")]
    list: bool,
    /// The shape to run (see --list), e.g. opt-125m, llama-7b, tiny.
    #[arg(long, required_unless_present = "list")]
    shape: Option<String>,
    /// Where to run: auto picks CUDA when kernels are built in and a GPU is usable, else the CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    nsamples: usize,
    /// Calibration window length in tokens.
    #[arg(long, default_value_t = 2048)]
    seqlen: usize,
    /// Fraction of the units of every pair to remove, in [0, 1).
    #[arg(long, default_value_t = 0.2)]
    sparsity: f64,
    /// Run only the first N layers (a shorter run).
    #[arg(long)]
    layers: Option<usize>,
    /// Seed of the synthetic weights and calibration tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the pruned model to this directory (timed as the `write` phase).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Replace an existing --write directory.
    #[arg(long)]
    force: bool,
    /// Print one JSON object (with --list: the shapes as a JSON array).
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    plan: PlanArgs,
}

fn parse_size(s: &str) -> Result<u64, String> {
    fasp_engine::plan::parse_size(s)
}

/// A count of windows: 0 would leave nothing to evaluate.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 windows leave nothing to evaluate)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s).ok_or_else(|| format!("unknown dtype {s:?} (f32, f16, bf16)"))
}

fn prune(a: PruneArgs) -> Result<()> {
    if a.format == Format::Hf && a.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        // an HF directory named X.gguf would be taken for a GGUF file by every later command
        anyhow::bail!("--out {} names a GGUF file: add --format gguf (or choose a directory name)", a.out.display());
    }
    let format = match (a.format, a.gguf_type) {
        (Format::Hf, Some(_)) => anyhow::bail!("--gguf-type needs --format gguf"),
        (Format::Hf, None) => job::OutFormat::Hf,
        (Format::Gguf, t) => job::OutFormat::Gguf(gguf_type(t, a.dtype)),
    };
    let job = PruneJob {
        model: a.model,
        out: a.out,
        calib: a.calib.calib,
        nsamples: a.calib.nsamples,
        seqlen: a.calib.seqlen,
        calib_seed: a.calib.seed,
        prune: PruneConfig {
            sparsity: a.sparsity,
            damp: a.calib.damp,
            restore: !a.no_restore,
            skip_attn: a.skip_attn,
            method: a.method,
            seed: a.calib.seed,
        },
        device: a.device,
        dtype: a.dtype,
        compact: a.compact,
        force: a.force,
        progress: !a.quiet && !a.json,
        eval: a.eval.map(|path| job::EvalSpec { path, seqlen: a.eval_seqlen, max_windows: a.eval_windows, dense: a.eval_dense }),
        resume: a.resume,
        format,
    };
    let settings = job::PlanSettings { max_gpu_mem: a.plan.max_gpu_mem, paper: a.paper };
    if a.plan.plan_only {
        let p = job::plan_prune(&job, &settings)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            print!("{}", p.text());
        }
        return Ok(());
    }
    let t_wall = std::time::Instant::now();
    let s = job::run_prune_with(&job, &settings)?;
    let wall = t_wall.elapsed().as_secs_f64();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s.fasp_json)?);
        return Ok(());
    }
    println!(
        "pruned {} -> {} ({}, sparsity {}, backend {})",
        job.model.display(),
        job.out.display(),
        job.prune.method.name(),
        job.prune.sparsity,
        s.report.backend
    );
    println!(
        "parameters: original {}, dense-equivalent {}, compact {} ({:.1}% removed)",
        s.params_original,
        s.params_dense_equivalent,
        s.params_compact,
        100.0 * (1.0 - s.params_compact as f64 / s.params_original as f64)
    );
    println!(
        "  (--sparsity {} removes that fraction of the units of every pruned pair{}; embeddings, norms, the \
         LM head and Q/K are never pruned, so fewer parameters go{})",
        job.prune.sparsity,
        if job.prune.skip_attn { " (MLP channels only)" } else { " (attention value units and MLP channels)" },
        if job.compact { "" } else { "; the dense-equivalent form keeps attention's shapes with zeros" }
    );
    let err = |f: &dyn Fn(&fasp_engine::prune::LayerReport) -> (f64, f64)| {
        s.report.layers.iter().map(f).fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (ar, an) = err(&|r| (r.attn.recon_error, r.attn.recon_error_no_restore));
    let (mr, mn) = err(&|r| (r.mlp.recon_error, r.mlp.recon_error_no_restore));
    println!("reconstruction error (sum over layers): attention {ar:.4e} (no restore {an:.4e}), mlp {mr:.4e} (no restore {mn:.4e})");
    println!("{}", time_line(&s, wall));
    let show = |tag: &str, p: &fasp_engine::eval::Perplexity| {
        println!("ppl {tag:<7} {:.4}  (seqlen {}, windows {}, predicted tokens {})", p.ppl, p.seqlen, p.windows, p.predicted_tokens)
    };
    if let Some(p) = &s.ppl_dense {
        show("dense", p);
    }
    if let Some(p) = &s.ppl_pruned {
        show("pruned", p);
    }
    if let (Some(d), Some(p)) = (&s.ppl_dense, &s.ppl_pruned) {
        println!("ppl change: {:+.2}%", 100.0 * (p.ppl / d.ppl - 1.0));
    }
    if let Some(g) = &s.gguf {
        println!("{}", gguf_line(&job.out, g));
        return Ok(());
    }
    let dtype = job
        .dtype
        .map_or_else(|| format!("{}, the input's", s.fasp_json["settings"]["dtype"].as_str().unwrap_or("?")), |d| d.name().to_string());
    match fasp_engine::output::dir_bytes(&job.out) {
        Ok(bytes) => println!("wrote {} ({}, {})", job.out.display(), human_bytes(bytes), dtype),
        Err(e) => println!("wrote {} (size unknown: {e})", job.out.display()),
    }
    Ok(())
}

/// `1.23 GB`, `456.7 MB`, `12.0 kB` (decimal units, as `ls -h --si` and file managers show).
fn human_bytes(b: u64) -> String {
    let b = b as f64;
    match b {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b} bytes"),
    }
}

/// The `time:` line: every phase of the run, so that they add up to the wall time (`other` is
/// what no phase measured: the progress bar, freeing memory, ...).
fn time_line(s: &job::PruneSummary, wall: f64) -> String {
    let ph = &s.report.phases;
    let final_write = (wall - s.seconds_total).max(0.0);
    let parts = [
        ("setup", s.setup_seconds),
        ("dense eval", s.dense_eval_seconds),
        ("embed", ph.embed),
        ("weights", ph.load_weights),
        ("forward+stats", ph.forward_stats),
        ("score+select", ph.score_select),
        ("restore", ph.restore),
        ("eval", s.eval_seconds),
        ("write", ph.write + final_write),
    ];
    let other = wall - parts.iter().map(|p| p.1).sum::<f64>();
    let mut line = format!("time: {wall:.2} s total;");
    for (name, t) in parts.iter().filter(|(n, t)| *t > 0.0 || !matches!(*n, "dense eval" | "eval")) {
        line.push_str(&format!(" {name} {t:.2},"));
    }
    line.push_str(&format!(" other {:.2}", other.max(0.0)));
    line
}

fn eval(a: EvalArgs) -> Result<()> {
    let path = a.text.or(a.tokens).context("--text or --tokens is required")?;
    let r = job::run_eval(&a.model, &path, a.seqlen, a.max_windows, !a.quiet && !a.json)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "ppl {:.4}  (seqlen {}, windows {}, predicted tokens {}) {}",
            r.ppl,
            r.seqlen,
            r.windows,
            r.predicted_tokens,
            a.model.display()
        );
    }
    Ok(())
}

/// `Q4_1 x 210, F32 x 61` for a `.gguf` (the storage types; the engine computes in f32).
fn gguf_types(path: &Path) -> Option<String> {
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return None;
    }
    let f = fasp_engine::gguf::GgufFile::open(path).ok()?;
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for t in f.tensor_infos() {
        *counts.entry(t.ty.name).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Some(v.iter().map(|(t, n)| format!("{t} x {n}")).collect::<Vec<_>>().join(", "))
}

fn inspect(a: InspectArgs) -> Result<()> {
    let m = Model::open(&a.model)?;
    let record = fasp_engine::record::FaspRecord::of_dir(&a.model)?;
    let gguf = gguf_types(&a.model);
    let c = &m.cfg;
    let mut tensors = m.src.tensors();
    tensors.sort();
    // the family a .gguf file resolved to is named by its own architecture too
    let gguf_arch = a.model.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")).then(|| c.family.arch().gguf_arch);
    let info = serde_json::json!({
        "path": a.model.display().to_string(),
        "source": m.src.describe(),
        "model_type": c.family.name(),
        "family": c.family.name(),
        "gguf_architecture": gguf_arch,
        "hidden_size": c.hidden,
        "layers": c.layers,
        "heads": c.heads,
        "kv_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "ffn": c.ffn,
        "vocab": c.vocab,
        "attn_bias": c.attn_bias,
        "mlp_bias": c.mlp_bias,
        "tied_lm_head": m.head_is_tied(),
        "dtype": m.dtype().name(),
        "parameters": m.param_count(),
        "fasp_compact": c.compact_v_units.is_some(),
        "tokenizer": m.tokenizer_json()?.is_some(),
    });
    if a.json {
        let mut v = info;
        if let Some(t) = &gguf {
            v["gguf_tensor_types"] = t.as_str().into();
        }
        v["fasp"] = record.as_ref().map_or(serde_json::Value::Null, |r| r.summary_json());
        if a.tensors {
            v["tensors"] = tensors.iter().map(|(n, s)| serde_json::json!({"name": n, "shape": s})).collect();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}  ({})", a.model.display(), m.src.describe());
    let from_gguf = gguf_arch.map(|g| format!(" (GGUF architecture '{g}')")).unwrap_or_default();
    println!("  family         {}{from_gguf}{}", c.family.name(), if c.compact_v_units.is_some() { " (FASP compact)" } else { "" });
    println!("  hidden         {}", c.hidden);
    println!("  layers         {}", c.layers);
    println!("  heads          {} (kv {}, head_dim {}, group {})", c.heads, c.kv_heads, c.head_dim, c.group());
    println!("  ffn            {}", c.ffn);
    println!("  vocab          {}", c.vocab);
    println!("  biases         attention {}, mlp {}", c.attn_bias, c.mlp_bias);
    println!("  lm_head        {}", if m.head_is_tied() { "tied to the embedding" } else { "separate" });
    match &gguf {
        Some(t) => println!("  dtype          {} when written (GGUF storage: {t})", m.dtype().name()),
        None => println!("  dtype          {}", m.dtype().name()),
    }
    println!("  parameters     {}", m.param_count());
    match &record {
        Some(r) => r.summary_lines().iter().for_each(|l| println!("  {l}")),
        None => println!("  pruned         no (no fasp.json)"),
    }
    if a.tensors {
        for (n, s) in tensors {
            println!("  {n:<60} {s:?} {}", m.src.dtype(&n).map_or("?", |d| d.name()));
        }
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    if a.list {
        if a.json {
            let shapes: Vec<serde_json::Value> = fasp_engine::bench::SHAPES.iter().map(|s| s.info()).collect();
            println!("{}", serde_json::to_string_pretty(&shapes)?);
        } else {
            print!("{}", fasp_engine::bench::list_text());
        }
        return Ok(());
    }
    let opts = fasp_engine::bench::BenchOptions {
        shape: a.shape.context("--shape is required")?,
        device: a.device,
        nsamples: a.nsamples,
        seqlen: a.seqlen,
        sparsity: a.sparsity,
        layers: a.layers,
        seed: a.seed,
        write: a.write,
        force: a.force,
        progress: !a.quiet && !a.json,
        max_gpu_mem: a.plan.max_gpu_mem,
    };
    if a.plan.plan_only {
        let v = fasp_engine::bench::plan_only(&opts)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", v["text"].as_str().unwrap_or_default());
        }
        return Ok(());
    }
    let r = fasp_engine::bench::run_bench(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", fasp_engine::bench::summary(&r));
    }
    Ok(())
}

/// The error and its causes on one line, each said once: a cause whose text the line already holds
/// (a message that quotes its source, as `PATH: OS error` does) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    // SIGINT / SIGTERM stop the run between steps, removing its temporary output (exit 130 / 143)
    if let Err(e) = fasp_engine::interrupt::install() {
        tracing::warn!("cannot handle SIGINT/SIGTERM: {e}");
    }
    let r = match cli.cmd {
        Cmd::Prune(a) => prune(a),
        Cmd::Eval(a) => eval(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Sweep(a) => sweep(a),
        Cmd::Report(a) => report(a),
        Cmd::Convert(a) => convert(a),
        Cmd::Bench(a) => bench(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            match e.downcast_ref::<fasp_engine::FaspError>() {
                Some(fasp_engine::FaspError::Interrupted { code, .. }) => ExitCode::from(*code),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

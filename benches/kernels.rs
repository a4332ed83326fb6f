//! Kernel benchmarks (criterion).
//!
//! - `cpu/...`: the CPU reference (score, top-k, restore, Gram accumulation) at OPT-125M shapes
//!   (d = 768, ffn = 3072, 2048 tokens); they run anywhere.
//! - `gpu/<shape>/...`: every kernel family at OPT-125M (768/3072), LLaMA-7B (4096/11008) and
//!   LLaMA-30B (6656/17920) shapes, timed on the GPU with CUDA events around the launches (not
//!   the host-side launch time), with throughput in bytes/s (memory-bound kernels) or elements/s
//!   where one element is one flop (GEMM-like kernels: read "Gelem/s" as GFLOP/s). Baselines: a
//!   plain device-to-device copy of the same bytes next to scoring and compaction, and cuSOLVER
//!   spotrf next to our blocked Cholesky. Without a GPU they print one SKIP line.
//!
//! `FASP_BENCH_QUICK=1`: short warm-up and measurement (scripts/gpu-check.sh).
//! `FASP_BENCH_SHAPES=opt125m,llama7b,llama30b`: which GPU shapes (default all).
//! Run only the GPU part with `cargo bench --bench kernels -- gpu/`.

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use fasp_engine::backend::cuda::{blas, cholesky, compact, forward as fw, score, stats, topk, Gpu};
use fasp_engine::prune::{restore, score as cscore, select};
use fasp_engine::tensor::{Gram, Mat};
use std::hint::black_box;
use std::time::Duration;

fn quick() -> bool {
    std::env::var("FASP_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn config() -> Criterion {
    let c = Criterion::default().sample_size(10);
    if quick() {
        c.warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_millis(300)).nresamples(5000).without_plots()
    } else {
        c.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2))
    }
}

/// Fast deterministic uniform values in [-1, 1) (xorshift; large matrices in well under a second).
fn randv(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn randm(rows: usize, cols: usize, seed: u64) -> Mat {
    Mat::from_vec(rows, cols, randv(rows * cols, seed))
}

// ---------------------------------------------------------------------------------------------
// CPU reference

fn cpu_benches(c: &mut Criterion) {
    let (d, ffn, tokens) = (768usize, 3072usize, 2048usize);
    let mut g = c.benchmark_group("cpu/opt125m");
    g.sampling_mode(SamplingMode::Flat);

    let w2 = randm(d, ffn, 1);
    let hdiag: Vec<f64> = randv(ffn, 2).iter().map(|v| (v.abs() + 0.1) as f64).collect();
    g.throughput(Throughput::Bytes((d * ffn * 4) as u64));
    g.bench_function("score fc2 768x3072", |b| b.iter(|| black_box(cscore::column_scores(&w2, &hdiag))));

    let scores = cscore::column_scores(&w2, &hdiag);
    let k = ffn - restore_pruned(ffn);
    g.throughput(Throughput::Elements(ffn as u64));
    g.bench_function("top_k 3072", |b| b.iter(|| black_box(select::top_k(&scores, k).unwrap())));

    // Gram accumulation H += XᵀX (f64), flops = 2·t·n²
    let x = randm(tokens, d, 3);
    g.throughput(Throughput::Elements((2 * tokens * d * d) as u64));
    g.bench_function("gram 2048x768 (flop)", |b| {
        b.iter(|| {
            let mut h = Gram::zeros(d);
            h.accumulate(&x);
            black_box(h.data[0])
        })
    });

    // restoration of the attention pair (o_proj 768x768, 20% pruned)
    let mut h = Gram::zeros(d);
    h.accumulate(&x);
    let wo = randm(d, d, 4);
    let s: Vec<usize> = (0..d).filter(|i| i % 5 != 0).collect();
    let p = select::complement(&s, d);
    let ns = s.len();
    g.throughput(Throughput::Elements((ns * ns * ns / 3 + 2 * d * p.len() * ns + 2 * d * ns * ns) as u64));
    g.bench_function("restore o_proj 768 s=0.2 (flop)", |b| b.iter(|| black_box(restore::restore(&wo, &h, &s, &p, 0.01).unwrap())));

    if !quick() {
        let xf = randm(tokens, ffn, 5);
        g.throughput(Throughput::Elements((2 * tokens * ffn * ffn) as u64));
        g.bench_function("gram 2048x3072 (flop)", |b| {
            b.iter(|| {
                let mut h = Gram::zeros(ffn);
                h.accumulate(&xf);
                black_box(h.data[0])
            })
        });
        let mut hf = Gram::zeros(ffn);
        hf.accumulate(&xf);
        let s: Vec<usize> = (0..ffn).filter(|i| i % 5 != 0).collect();
        let p = select::complement(&s, ffn);
        let ns = s.len();
        g.throughput(Throughput::Elements((ns * ns * ns / 3 + 2 * d * p.len() * ns + 2 * d * ns * ns) as u64));
        g.bench_function("restore fc2 3072 s=0.2 (flop)", |b| b.iter(|| black_box(restore::restore(&w2, &hf, &s, &p, 0.01).unwrap())));
    }
    g.finish();
}

fn restore_pruned(n: usize) -> usize {
    fasp_engine::prune::plan::pruned_count(n, 0.2)
}

// ---------------------------------------------------------------------------------------------
// GPU

struct Shape {
    name: &'static str,
    d: usize,
    ffn: usize,
    heads: usize,
}

const SHAPES: &[Shape] = &[
    Shape { name: "opt125m", d: 768, ffn: 3072, heads: 12 },
    Shape { name: "llama7b", d: 4096, ffn: 11008, heads: 32 },
    Shape { name: "llama30b", d: 6656, ffn: 17920, heads: 52 },
];

/// GPU time of `iters` calls of `f`, measured with events on the compute stream.
fn gpu_time(gpu: &Gpu, iters: u64, mut f: impl FnMut()) -> Duration {
    let (a, b) = (gpu.timing_event().unwrap(), gpu.timing_event().unwrap());
    a.record(&gpu.stream).unwrap();
    for _ in 0..iters {
        f();
    }
    b.record(&gpu.stream).unwrap();
    Duration::from_secs_f64(a.elapsed_ms(&b).unwrap() as f64 / 1e3)
}

/// GPU time of `iters` runs of `f`, each preceded by an untimed `setup` (e.g. restoring the
/// matrix a factorisation overwrites).
fn gpu_time_each<S: ?Sized>(gpu: &Gpu, iters: u64, state: &mut S, mut setup: impl FnMut(&mut S), mut f: impl FnMut(&mut S)) -> Duration {
    let mut total = 0.0f64;
    for _ in 0..iters {
        setup(state);
        let (a, b) = (gpu.timing_event().unwrap(), gpu.timing_event().unwrap());
        a.record(&gpu.stream).unwrap();
        f(state);
        b.record(&gpu.stream).unwrap();
        total += a.elapsed_ms(&b).unwrap() as f64 / 1e3;
    }
    Duration::from_secs_f64(total)
}

fn bench<M: criterion::measurement::Measurement<Value = Duration>>(
    g: &mut BenchmarkGroup<'_, M>,
    gpu: &Gpu,
    name: &str,
    thrpt: Throughput,
    mut f: impl FnMut(),
) {
    g.throughput(thrpt);
    g.bench_function(name, |b| b.iter_custom(|iters| gpu_time(gpu, iters, &mut f)));
}

fn gpu_benches(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("SKIP GPU benches (no CUDA device): {e}");
            return;
        }
    };
    let t0 = std::time::Instant::now();
    gpu.load_all().unwrap();
    println!("GPU: {}; PTX JIT of all modules {:.1} ms", gpu.describe(), t0.elapsed().as_secs_f64() * 1e3);
    let wanted = std::env::var("FASP_BENCH_SHAPES").unwrap_or_default();
    for sh in SHAPES {
        if !wanted.is_empty() && !wanted.split(',').any(|w| w.trim() == sh.name) {
            continue;
        }
        gpu_shape(c, &gpu, sh);
    }
}

fn gpu_shape(c: &mut Criterion, gpu: &Gpu, sh: &Shape) {
    let (d, ffn, tokens, l) = (sh.d, sh.ffn, 2048usize, 2048usize);
    let mut g = c.benchmark_group(format!("gpu/{}", sh.name));
    g.sampling_mode(SamplingMode::Flat);
    let up = |v: &[f32], what: &str| gpu.upload(v, what).unwrap();

    // --- score: one pass over W2 (fc2/down [d][ffn], o_proj [d][d]) vs a copy of the same bytes
    let w2 = up(&randv(d * ffn, 1), "W2");
    let hd = up(&randv(ffn, 2).iter().map(|v| v.abs() + 0.1).collect::<Vec<_>>(), "hdiag");
    let mut cs = gpu.alloc::<f32>(ffn, "colscore").unwrap();
    let bytes = (d * ffn * 4) as u64;
    let path = score::choose_path(gpu, d, ffn);
    bench(&mut g, gpu, "score fc2 f32", Throughput::Bytes(bytes), || score::column_scores(gpu, &w2, d, ffn, &hd, &mut cs, path).unwrap());
    let mut w2b = gpu.alloc::<fasp_engine::backend::cuda::Bf16>(d * ffn, "W2 bf16").unwrap();
    fw::to_bf16(gpu, &w2, &mut w2b, d * ffn).unwrap();
    bench(&mut g, gpu, "score fc2 bf16", Throughput::Bytes(bytes / 2), || {
        score::column_scores_bf16(gpu, &w2b, d, ffn, &hd, &mut cs, path).unwrap()
    });
    drop(w2b);
    let wo = up(&randv(d * d, 3), "o_proj");
    let pth = score::choose_path(gpu, d, d);
    bench(&mut g, gpu, &format!("score o_proj f32 ({pth:?})"), Throughput::Bytes((d * d * 4) as u64), || {
        score::column_scores(gpu, &wo, d, d, &hd, &mut cs, pth).unwrap()
    });
    let mut copy = gpu.alloc::<f32>(d * ffn, "copy").unwrap();
    bench(&mut g, gpu, "copy d2d (W2 bytes, read+write)", Throughput::Bytes(2 * bytes), || gpu.stream.memcpy_dtod(&w2, &mut copy).unwrap());
    drop(copy);

    // --- top-k over the ffn unit scores (20% pruned)
    let n = ffn;
    let k = n - fasp_engine::prune::plan::pruned_count(n, 0.2);
    let sc = up(&randv(n, 4), "scores");
    let (mut kept, mut mask, mut status) =
        (gpu.alloc::<i32>(k, "kept").unwrap(), gpu.alloc::<u8>(n, "mask").unwrap(), gpu.alloc::<i32>(1, "status").unwrap());
    for p in [topk::TopkPath::Select, topk::TopkPath::MultiBlock] {
        bench(&mut g, gpu, &format!("topk {n} {p:?}"), Throughput::Elements(n as u64), || {
            topk::select(gpu, &sc, n, k, &mut kept, &mut mask, &mut status, p).unwrap()
        });
    }

    // --- compaction: W2[:,S], W1 rows, H[S,S] vs a copy of the output bytes
    let s: Vec<usize> = (0..ffn).filter(|i| i % 5 != 0).collect();
    let ns = s.len();
    let ds = compact::upload_idx(gpu, &s, "S").unwrap();
    let mut out = gpu.alloc::<f32>(d * ns, "W2[:,S]").unwrap();
    bench(&mut g, gpu, "gather_cols W2[:,S]", Throughput::Bytes((2 * d * ns * 4) as u64), || {
        compact::gather_cols(gpu, &w2, d, ffn, &ds, ns, &mut out).unwrap()
    });
    let mut out2 = gpu.alloc::<f32>(d * ns, "W1[S]").unwrap();
    bench(&mut g, gpu, "gather_rows W1[S]", Throughput::Bytes((2 * d * ns * 4) as u64), || {
        compact::gather_rows(gpu, &w2, ffn, d, &ds, ns, &mut out2).unwrap()
    });
    bench(&mut g, gpu, "copy d2d (W2[:,S] bytes)", Throughput::Bytes((2 * d * ns * 4) as u64), || {
        gpu.stream.memcpy_dtod(&out, &mut out2).unwrap()
    });
    drop((out, out2));

    // --- statistics: H = XᵀX over 2048 tokens (ssyrk), and the whole accumulator step
    let x = up(&randv(tokens * ffn, 5), "X");
    let mut h = gpu.alloc::<f32>(ffn * ffn, "H").unwrap();
    bench(&mut g, gpu, "syrk H=XtX 2048 tok (flop)", Throughput::Elements((tokens * ffn * ffn) as u64), || {
        blas::syrk_xtx(gpu, &x, &mut h, tokens, ffn, 0.0).unwrap()
    });
    {
        let mut acc = stats::GramAccumulator::new(gpu, ffn, tokens).unwrap();
        bench(&mut g, gpu, "gram accumulate step 2048 tok (flop)", Throughput::Elements((tokens * ffn * ffn) as u64), || {
            acc.add(gpu, &x, tokens).unwrap()
        });
    }
    bench(&mut g, gpu, "symmetrize H", Throughput::Bytes((ffn * ffn * 4) as u64), || {
        stats::symmetrize(gpu, &mut h, ffn, ffn, true).unwrap()
    });
    let mut dg = gpu.alloc::<f32>(ffn, "diag").unwrap();
    bench(&mut g, gpu, "diag H", Throughput::Bytes((ffn * 4) as u64), || stats::diag(gpu, &h, ffn, ffn, &mut dg).unwrap());
    // make H SPD for the factorisation: H/t + I
    {
        let mut hh = gpu.alloc::<f32>(ffn * ffn, "H").unwrap();
        blas::syrk_xtx(gpu, &x, &mut hh, tokens, ffn, 0.0).unwrap();
        stats::symmetrize(gpu, &mut hh, ffn, ffn, true).unwrap();
        cholesky::add_diag(gpu, &mut hh, cholesky::Batch::dense(ffn, 1), tokens as f32).unwrap();
        h = hh;
    }
    drop(x);
    let mut hss = gpu.alloc::<f32>(ns * ns, "H[S,S]").unwrap();
    bench(&mut g, gpu, "gather_submatrix H[S,S]", Throughput::Bytes((2 * ns * ns * 4) as u64), || {
        compact::gather_submatrix(gpu, &h, ffn, &ds, ns, &ds, ns, &mut hss).unwrap()
    });
    drop(h);

    // --- Cholesky of H[S,S] (n = 0.8·ffn): ours (kernel / cuBLAS trailing) vs cuSOLVER spotrf
    let mut a = gpu.alloc::<f32>(ns * ns, "A").unwrap();
    let mut info = gpu.alloc::<i32>(1, "info").unwrap();
    let shape = cholesky::Batch::dense(ns, 1);
    let flops = (ns as u64).pow(3) / 3;
    for tr in [cholesky::Trailing::Kernel, cholesky::Trailing::Cublas] {
        g.throughput(Throughput::Elements(flops));
        g.bench_function(format!("cholesky n={ns} {tr:?} (flop)"), |b| {
            b.iter_custom(|iters| {
                gpu_time_each(
                    gpu,
                    iters,
                    &mut a,
                    |a| gpu.stream.memcpy_dtod(&hss, a).unwrap(),
                    |a| cholesky::factor(gpu, a, shape, &mut info, tr).unwrap(),
                )
            })
        });
    }
    match cholesky::Potrf::new(gpu, &mut a, ns) {
        Ok(mut pf) => {
            g.throughput(Throughput::Elements(flops));
            g.bench_function(format!("cusolver spotrf n={ns} (flop)"), |b| {
                b.iter_custom(|iters| {
                    gpu_time_each(gpu, iters, &mut a, |a| gpu.stream.memcpy_dtod(&hss, a).unwrap(), |a| pf.factor(gpu, a).unwrap())
                })
            });
        }
        Err(e) => println!("SKIP cusolver spotrf: {e}"),
    }
    // triangular solves for the d rows of M (2·n²·d flops for both)
    gpu.stream.memcpy_dtod(&hss, &mut a).unwrap();
    cholesky::factor(gpu, &mut a, shape, &mut info, cholesky::Trailing::Cublas).unwrap();
    let mut m = up(&randv(d * ns, 6), "M");
    bench(&mut g, gpu, &format!("solve lower+upper n={ns} nrhs={d} (flop)"), Throughput::Elements((2 * ns * ns * d) as u64), || {
        cholesky::solve_lower(gpu, &a, shape, &mut m, d, ns, 0).unwrap();
        cholesky::solve_upper(gpu, &a, shape, &mut m, d, ns, 0).unwrap();
    });
    drop((a, hss, m));

    // --- forward kernels over 2048 tokens
    let xs = up(&randv(tokens * d, 7), "x");
    let mut ys = gpu.alloc::<f32>(tokens * d, "y").unwrap();
    let gm = up(&randv(d, 8), "gamma");
    let bt = up(&randv(d, 9), "beta");
    let nb = (2 * tokens * d * 4) as u64;
    bench(&mut g, gpu, "layernorm", Throughput::Bytes(nb), || {
        fw::layernorm(gpu, &xs, Some(&gm), Some(&bt), &mut ys, tokens, d, 1e-5).unwrap()
    });
    bench(&mut g, gpu, "rmsnorm", Throughput::Bytes(nb), || fw::rmsnorm(gpu, &xs, Some(&gm), &mut ys, tokens, d, 1e-5).unwrap());
    let hdim = d / sh.heads;
    let hdim = hdim - hdim % 2;
    bench(&mut g, gpu, "rope q", Throughput::Bytes(nb), || fw::rope(gpu, &mut ys, tokens, sh.heads, hdim, d, l, 10000.0, None).unwrap());
    bench(&mut g, gpu, "add (in place)", Throughput::Bytes((3 * tokens * d * 4) as u64), || {
        fw::add_assign(gpu, &mut ys, &xs, tokens * d).unwrap()
    });
    bench(&mut g, gpu, "add_bias", Throughput::Bytes(nb), || fw::add_bias(gpu, &mut ys, &bt, tokens, d).unwrap());
    bench(&mut g, gpu, "check_finite", Throughput::Bytes((tokens * d * 4) as u64), || {
        fw::check_finite(gpu, &xs, tokens * d, &mut info).unwrap()
    });
    let mut qh = gpu.alloc::<f32>(tokens * sh.heads * hdim, "heads").unwrap();
    bench(&mut g, gpu, "split_heads", Throughput::Bytes((2 * tokens * sh.heads * hdim * 4) as u64), || {
        fw::split_heads(gpu, &xs, &mut qh, 1, l, sh.heads, hdim, d, 0, 1).unwrap()
    });
    bench(&mut g, gpu, "merge_heads", Throughput::Bytes((2 * tokens * sh.heads * hdim * 4) as u64), || {
        fw::merge_heads(gpu, &qh, &mut ys, 1, l, sh.heads, hdim).unwrap()
    });
    {
        let mut sm = up(&randv(sh.heads * l * l, 10), "scores");
        bench(&mut g, gpu, "softmax causal (1 window)", Throughput::Bytes((2 * sh.heads * l * l * 4) as u64), || {
            fw::softmax_causal(gpu, &mut sm, sh.heads, l, 0.125).unwrap()
        });
        let kh = up(&randv(tokens * sh.heads * hdim, 11), "k heads");
        bench(&mut g, gpu, "attention QKt (1 window, flop)", Throughput::Elements((2 * sh.heads * l * l * hdim) as u64), || {
            blas::attn_scores(gpu, &qh, &kh, &mut sm, sh.heads, l, hdim, 0.125).unwrap()
        });
    }
    let a1 = up(&randv(tokens * ffn, 12), "gate");
    let mut a2 = up(&randv(tokens * ffn, 13), "up");
    bench(&mut g, gpu, "silu_mul", Throughput::Bytes((2 * tokens * ffn * 4) as u64), || {
        fw::silu_mul_into_up(gpu, &a1, &mut a2, tokens * ffn).unwrap()
    });
    bench(&mut g, gpu, "relu", Throughput::Bytes((2 * tokens * ffn * 4) as u64), || fw::relu(gpu, &mut a2, tokens * ffn).unwrap());
    let mut wdn = gpu.alloc::<f32>(tokens * d, "down out").unwrap();
    bench(&mut g, gpu, "linear down 2048 tok (flop)", Throughput::Elements((2 * tokens * ffn * d) as u64), || {
        blas::linear(gpu, &a2, &w2, &mut wdn, tokens, ffn, d).unwrap()
    });
    drop((a1, a2, wdn));
    let vocab = 32000;
    let table = up(&randv(vocab * d, 14), "embedding");
    let ids = gpu.upload(&(0..tokens).map(|i| ((i * 7919) % vocab) as i32).collect::<Vec<_>>(), "ids").unwrap();
    bench(&mut g, gpu, "embed gather", Throughput::Bytes(nb), || fw::embed_gather(gpu, &ids, &table, &mut ys, tokens, vocab, d).unwrap());
    g.finish();
    gpu.sync().unwrap();
}

criterion_group! {
    name = benches;
    config = config();
    targets = cpu_benches, gpu_benches
}
criterion_main!(benches);

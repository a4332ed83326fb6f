//! The emulated device itself: the C++ per-family kernel checks, and every misuse it promises to
//! catch (argument lists, bounds, use after free, unwritten memory, stream ordering, pinned
//! memory), each shown to fail. The pipeline on the emulated device against the CPU is in
//! tests/gpu.rs (`emu::*`) and below (chunking, a single window, the CLI).

mod common;
use common::*;
use fasp_engine::backend::cuda::context::{cfg, Gpu, PinnedBuf};
use fasp_engine::backend::cuda::device::{emu, Device, DevicePtr, KArg};
use fasp_engine::backend::cuda::{forward as fw, CudaBackend};
use fasp_engine::backend::{cpu::CpuBackend, Backend, PairJob, Scoring};
use fasp_engine::forward;
use fasp_engine::job::{self, Device as JobDevice};
use fasp_engine::model::arch::attn_unit_columns;
use fasp_engine::model::Model;
use fasp_engine::prune::{self, PruneConfig};
use std::sync::Arc;

/// Launches through the packed argument array, as the backend's `launch!` does.
macro_rules! launch {
    ($gpu:expr, $module:expr, $name:expr, $cfg:expr, [$($arg:ident),* $(,)?]) => {{
        let args = [$( KArg::of(&$arg) ),*];
        $gpu.launch($module, $name, &$cfg, &args)
    }};
}

fn gpu() -> Arc<Gpu> {
    Gpu::emu().unwrap()
}

fn err_of<T>(r: fasp_engine::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn emu_kernel_families_match_double_precision_references() {
    let (passed, failed) = emu::selftest(None);
    assert_eq!(failed, 0, "kernel families failed under emulation (see the output above)");
    assert_eq!(passed, 10, "all ten kernel families ran");
}

#[test]
fn emu_registry_holds_every_kernel_with_its_signature() {
    let k = emu::kernels();
    let relu = &k["fasp_relu_f32"];
    assert_eq!(relu.module, "elementwise");
    assert_eq!(relu.sizes, vec![8, 8], "float* x, long long n");
    assert_eq!(relu.kinds, vec![2, 0]);
    let add = &k["fasp_add_f32"];
    assert_eq!(add.kinds, vec![1, 1, 2, 0], "two const inputs, one output, a count");
}

#[test]
fn wrong_argument_count_or_size_fails() {
    let g = gpu();
    let x = g.upload(&[1.0f32, -2.0], "x").unwrap();
    let px = x.addr();
    let n = 2i64;
    let extra = 0i32;
    let e = err_of(launch!(g, "elementwise", "fasp_relu_f32", cfg((1, 1, 1), (32, 1, 1)), [px, n, extra]));
    assert!(e.contains("takes 2 arguments") && e.contains("passes 3"), "{e}");
    let n32 = 2i32; // the kernel takes a long long
    let e = err_of(launch!(g, "elementwise", "fasp_relu_f32", cfg((1, 1, 1), (32, 1, 1)), [px, n32]));
    assert!(e.contains("argument 1") && e.contains("takes 8 bytes") && e.contains("passes 4"), "{e}");
    let e = err_of(launch!(g, "norm", "fasp_relu_f32", cfg((1, 1, 1), (32, 1, 1)), [px, n]));
    assert!(e.contains("cuda/elementwise.cu"), "{e}");
    let e = err_of(launch!(g, "elementwise", "fasp_relu_f32", cfg((1, 1, 1), (2048, 1, 1)), [px, n]));
    assert!(e.contains("invalid launch configuration"), "{e}");
    // the correct call works
    launch!(g, "elementwise", "fasp_relu_f32", cfg((1, 1, 1), (32, 1, 1)), [px, n]).unwrap();
    assert_eq!(g.download(&x, 2, "x").unwrap(), vec![1.0, 0.0]);
}

#[test]
fn out_of_bounds_copies_and_kernel_writes_fail() {
    let g = gpu();
    let mut small = g.alloc::<f32>(4, "small buffer").unwrap();
    let e = err_of(g.stream.memcpy_htod(&[0.0f32; 5], &mut small));
    assert!(e.contains("5 values") || e.contains("upload of 5"), "{e}");
    // below the typed layer: a raw copy past the end
    let raw = unsafe { g.dev.htod(small.addr() + 8, [0u8; 16].as_ptr(), 16, g.stream.id) };
    let e = raw.unwrap_err().to_string();
    assert!(e.contains("out of bounds") && e.contains("small buffer"), "{e}");
    // a kernel told the buffer is longer than it is
    let ones = g.upload(&[1.0f32; 12], "ones").unwrap();
    let (pa, ps) = (ones.addr(), small.addr());
    let n = 12i64;
    let e = err_of(launch!(g, "elementwise", "fasp_add_f32", cfg((1, 1, 1), (32, 1, 1)), [pa, pa, ps, n]));
    assert!(e.contains("fasp_add_f32 wrote out of bounds") && e.contains("small buffer"), "{e}");
}

#[test]
fn use_after_free_and_foreign_pointers_fail() {
    let g = gpu();
    let x = g.upload(&[1.0f32; 8], "freed buffer").unwrap();
    let px = x.addr();
    drop(x);
    let n = 8i64;
    let e = err_of(launch!(g, "elementwise", "fasp_relu_f32", cfg((1, 1, 1), (32, 1, 1)), [px, n]));
    assert!(e.contains("use after free") && e.contains("freed buffer"), "{e}");
    let host = [1.0f32; 8];
    let ph = host.as_ptr() as u64;
    let e = err_of(launch!(g, "elementwise", "fasp_relu_f32", cfg((1, 1, 1), (32, 1, 1)), [ph, n]));
    assert!(e.contains("not device memory") || e.contains("not inside any allocation"), "{e}");
}

#[test]
fn reading_memory_never_written_fails() {
    let g = gpu();
    let mut x = g.alloc::<f32>(16, "scratch").unwrap();
    let e = err_of(g.download(&x, 16, "scratch"));
    assert!(e.contains("never written") && e.contains("scratch"), "{e}");
    // half written: the first unwritten element is named
    g.upload_into(&[2.0f32; 8], &mut x, "half").unwrap();
    assert_eq!(g.download(&x, 8, "front").unwrap(), vec![2.0; 8]);
    let e = err_of(g.download(&x, 16, "all"));
    assert!(e.contains("element 8"), "{e}");
    // a kernel's output counts as written
    let mut y = g.alloc::<f32>(8, "kernel output").unwrap();
    fw::add(&g, &x.slice(0..8), &x.slice(0..8), &mut y, 8).unwrap();
    assert_eq!(g.download(&y, 8, "y").unwrap(), vec![4.0; 8]);
}

#[test]
fn cross_stream_use_needs_an_event_wait() {
    let g = gpu();
    let mut w = g.alloc::<f32>(64, "weights").unwrap();
    // the copy stream must be ordered after the allocation on the compute stream
    let e = err_of(g.copy.memcpy_htod(&[1.0f32; 64], &mut w));
    assert!(e.contains("stream 1") && e.contains("without an event wait"), "{e}");
    let ready = g.event().unwrap();
    g.stream.record(&ready).unwrap();
    g.copy.wait(&ready).unwrap();
    g.copy.memcpy_htod(&[1.0f32; 64], &mut w).unwrap();
    // the compute stream reads what the copy stream wrote: a race without a wait
    let e = err_of(g.download(&w, 64, "weights"));
    assert!(e.contains("written on stream 1") && e.contains("weights"), "{e}");
    let done = g.event().unwrap();
    g.copy.record(&done).unwrap();
    g.stream.wait(&done).unwrap();
    assert_eq!(g.download(&w, 64, "weights").unwrap(), vec![1.0; 64]);
    // and a write on the copy stream while the compute stream may still read it
    let e = err_of(g.copy.memcpy_htod(&[2.0f32; 64], &mut w));
    assert!(e.contains("may still be reading"), "{e}");
}

#[test]
fn rewriting_pinned_memory_before_its_copy_finished_fails() {
    let g = gpu();
    let mut d = g.alloc::<f32>(32, "dst").unwrap();
    let mut pin = PinnedBuf::<f32>::new(&g.dev, 32).unwrap();
    pin.write(&[1.0; 32]).unwrap();
    g.stream.memcpy_htod_pinned(&pin, &mut d).unwrap();
    let e = pin.write(&[2.0; 32]).unwrap_err().to_string();
    assert!(e.contains("pinned memory") && e.contains("still be reading"), "{e}");
    let done = g.event().unwrap();
    g.stream.record(&done).unwrap();
    done.synchronize().unwrap();
    pin.write(&[2.0; 32]).unwrap();
}

#[test]
fn chunk_smaller_than_a_window_is_a_clear_error() {
    let model = Model::open(&fixture("llama-gqa")).unwrap();
    let (shape, ids) = reference_ids("llama-gqa", "calib_ids");
    let seqlen = shape[1];
    let inps = forward::embed(&model.cfg, &model.embedding().unwrap(), model.positions().unwrap().as_ref(), &ids, seqlen);
    let mut b = CudaBackend::emu().unwrap();
    b.chunk_tokens = seqlen - 1;
    let e = err_of(b.begin(inps, seqlen));
    assert!(e.contains("FASP_CUDA_CHUNK_TOKENS") && e.contains(&seqlen.to_string()), "{e}");
}

/// Layer by layer on the emulated device with awkward chunkings, against the CPU backend.
#[test]
fn uneven_chunks_and_a_single_window_match_cpu() {
    let model = Model::open(&fixture("llama-gqa")).unwrap();
    let cfg = &model.cfg;
    let (shape, ids) = reference_ids("llama-gqa", "calib_ids");
    let seqlen = shape[1];
    let nwin = shape[0];
    assert!(nwin >= 3, "the fixture has {nwin} windows");
    for (windows, chunk_windows) in [(nwin, 2usize), (1, 1)] {
        assert!(windows == 1 || (windows * seqlen) % (chunk_windows * seqlen + seqlen / 2) != 0, "an uneven last chunk");
        let ids = &ids[..windows * seqlen];
        let inps = forward::embed(cfg, &model.embedding().unwrap(), model.positions().unwrap().as_ref(), ids, seqlen);
        let mut cpu = CpuBackend::new();
        let mut gb = CudaBackend::emu().unwrap();
        gb.chunk_tokens = chunk_windows * seqlen + seqlen / 2; // not a multiple of the window
        let ic = cpu.begin(inps.clone(), seqlen).unwrap();
        let ig = gb.begin(inps, seqlen).unwrap();
        let lw = model.layer(0).unwrap();
        let (hc, hg) = (cpu.attn_stats(ic, cfg, &lw).unwrap(), gb.attn_stats(ig, cfg, &lw).unwrap());
        let scale = hc.summary.hdiag.iter().cloned().fold(0.0, f64::max);
        for (a, b) in hg.summary.hdiag.iter().zip(&hc.summary.hdiag) {
            assert!((a - b).abs() <= 1e-5 * scale + 1e-4 * b.abs(), "windows {windows}: diag(H) {a} vs {b}");
        }
        for (a, b) in hg.summary.col_sum.iter().zip(&hc.summary.col_sum) {
            assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "windows {windows}: Σx {a} vs {b}");
        }
        assert_eq!(hg.summary.tokens, windows * seqlen);
        // the pair pruned on each backend's own statistics (the whole H of the chunked
        // accumulation is used by the restoration): the same units and W2'
        let units: Vec<Vec<usize>> = (0..cfg.v_width()).map(|u| attn_unit_columns(cfg, u)).collect();
        let job = PairJob { layer: 0, w2: &lw.o, unit_cols: &units, k: units.len() / 2, scoring: Scoring::Fasp, restore: true, damp: 0.01 };
        let (pc, pg) = (cpu.prune_attn(hc, &job).unwrap(), gb.prune_attn(hg, &job).unwrap());
        assert_eq!(pg.pair.kept_units, pc.pair.kept_units, "windows {windows}");
        let num: f64 = pg.pair.w2.data.iter().zip(&pc.pair.w2.data).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = pc.pair.w2.data.iter().map(|b| (*b as f64).powi(2)).sum();
        assert!((num / den).sqrt() <= 1e-3, "windows {windows}: W2' rel err {}", (num / den).sqrt());
    }
}

#[test]
fn cli_prune_on_the_emulated_device_agrees_with_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama-mha");
    let run = |device: &str| {
        let out = dir.path().join(device);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_fasp-engine"))
            .args(["prune", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .args(["--calib", model.join("calib_ids.npy").to_str().unwrap(), "--sparsity", "0.25", "--device", device, "-q"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{device}: {}", String::from_utf8_lossy(&o.stderr));
        read_json(&out.join("fasp.json"))
    };
    let (c, e) = (run("cpu"), run("emu"));
    assert!(e["backend"].as_str().unwrap().starts_with("emu"), "{}", e["backend"]);
    let layers = |r: &serde_json::Value| r["layers"].as_array().unwrap().clone();
    assert_eq!(layers(&c).len(), layers(&e).len());
    assert!(!layers(&c).is_empty());
    for (lc, le) in layers(&c).iter().zip(layers(&e)) {
        for key in ["attn_kept_units", "mlp_kept_units"] {
            let (a, b) = (lc[key].as_array().expect(key), le[key].as_array().expect(key));
            assert!(!a.is_empty(), "{key}");
            assert_eq!(a, b, "{key}");
        }
    }
}

/// The device owns the data: pruning a fixture on the emulated device brings back (device →
/// host) at most the pruned weights `W2'` plus O(n) per pair — never `H`, W2 or any other
/// matrix — and keeps exactly the CPU's units.
#[test]
fn pruning_on_the_device_downloads_only_pruned_weights_and_o_n() {
    for name in ["llama-gqa", "opt-tiny"] {
        let model = Model::open(&fixture(name)).unwrap();
        let cfg = &model.cfg;
        let (shape, ids) = reference_ids(name, "calib_ids");
        let opts = PruneConfig { sparsity: 0.25, ..Default::default() };
        let run = |backend: &mut dyn Backend| {
            let mut pruned_bytes = Vec::new();
            let mut sink = |_l: usize, lw: fasp_engine::model::LayerWeights, _r: &prune::LayerReport| {
                pruned_bytes.push(4 * (lw.o.w.data.len() + lw.down.w.data.len()) as u64);
                Ok(())
            };
            let report = prune::prune(&model, &ids, shape[1], &opts, backend, &mut sink, None).unwrap();
            (report, pruned_bytes)
        };
        let (cpu, _) = run(&mut CpuBackend::new());
        let mut gb = CudaBackend::emu().unwrap();
        let before = gb.device_counters().unwrap();
        let (emu, pruned_bytes) = run(&mut gb);
        let after = gb.device_counters().unwrap();
        let d2h = after.d2h_bytes - before.d2h_bytes;
        // O(n) per pair: diag(H) and Σx (f64), column scores (f32), kept indices, flags and a few
        // scalars (λ's checks, the error terms)
        let (n_attn, n_mlp) = (cfg.heads * cfg.head_dim, cfg.ffn);
        let per_layer_o_n = 32 * (n_attn + n_mlp) as u64 + 512;
        let bound: u64 = pruned_bytes.iter().map(|b| b + per_layer_o_n).sum();
        println!(
            "{name}: d2h {d2h} bytes, bound {bound} (pruned weights {} + O(n) {per_layer_o_n} per layer)",
            pruned_bytes.iter().sum::<u64>()
        );
        assert!(d2h <= bound, "{name}: {d2h} bytes came back, more than the pruned weights plus O(n) ({bound})");
        // the bound is tight enough to catch a download of either H
        let h_bytes = 4 * (n_attn * n_attn).min(n_mlp * n_mlp) as u64;
        assert!(per_layer_o_n < h_bytes, "{name}: the O(n) allowance {per_layer_o_n} would hide an H of {h_bytes} bytes");
        assert!(d2h >= pruned_bytes.iter().sum::<u64>(), "{name}: the pruned weights themselves come back");
        // the per-phase counters of the report add up to the device's, and each phase did what
        // it should: the pairs bring back the pruned weights, the forward only O(n) flags
        let dev = emu.device.clone().expect("a device backend reports per-phase counters");
        assert!(cpu.device.is_none());
        let total = dev.total();
        assert_eq!((total.h2d_bytes, total.d2h_bytes), (after.h2d_bytes - before.h2d_bytes, d2h), "{name}: {dev:?}");
        assert!(total.peak_bytes <= after.peak_bytes && total.peak_bytes > 0, "{name}: {dev:?}");
        assert!(dev.prune_pairs.d2h_bytes >= pruned_bytes.iter().sum::<u64>(), "{name}: {dev:?}");
        assert!(dev.forward_stats.d2h_bytes <= per_layer_o_n * cfg.layers as u64, "{name}: {dev:?}");
        assert!(dev.embed.h2d_bytes >= (4 * ids.len() * cfg.hidden) as u64, "{name}: the embedded windows go up: {dev:?}");
        assert!(dev.forward_stats.peak_bytes > 0 && dev.prune_pairs.peak_bytes > 0, "{name}: {dev:?}");
        println!("{name}: per phase {dev:?}");
        for (lc, le) in cpu.layers.iter().zip(&emu.layers) {
            assert_eq!(lc.attn.kept_units, le.attn.kept_units, "{name} l{}", lc.layer);
            assert_eq!(lc.mlp.kept_units, le.mlp.kept_units, "{name} l{}", lc.layer);
            for (a, b) in [(&lc.attn, &le.attn), (&lc.mlp, &le.mlp)] {
                assert!(
                    (a.recon_error - b.recon_error).abs() <= 1e-2 * a.recon_error_no_restore + 1e-9,
                    "{name} l{}: {a:?} vs {b:?}",
                    lc.layer
                );
            }
        }
    }
}

#[test]
fn device_auto_never_picks_the_emulator() {
    let b = job::backend(JobDevice::Auto).unwrap();
    assert!(!b.name().starts_with("emu"), "{}", b.name());
    let b = job::backend(JobDevice::Emu).unwrap();
    assert!(b.name().starts_with("emu"), "{}", b.name());
}

#[test]
fn library_calls_match_faer_semantics_of_cublas() {
    // a 3x2 · 2x4 product through the column-major interface, checked by hand
    let g = gpu();
    let a = g.upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], "A").unwrap(); // row-major 2x3
    let b = g.upload(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], "B").unwrap(); // row-major 3x2
    let mut c = g.alloc::<f32>(4, "C").unwrap();
    fasp_engine::backend::cuda::blas::matmul(&g, &a, &b, &mut c, 2, 3, 2).unwrap();
    assert_eq!(g.download(&c, 4, "C").unwrap(), vec![4.0, 5.0, 10.0, 11.0]);
    let counters = g.counters();
    assert!(counters.library_calls >= 1 && counters.h2d_bytes >= 48 && counters.d2h_bytes >= 16, "{counters:?}");
    let _: &dyn Device = &*g.dev;
}

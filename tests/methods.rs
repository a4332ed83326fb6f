//! The baselines run through the same pipeline: their defining properties on the fixtures.

mod common;
use common::*;
use fasp_engine::job::run_prune;
use fasp_engine::model::Model;
use fasp_engine::prune::Method;

fn kept(rec: &serde_json::Value, l: usize, key: &str) -> Vec<u64> {
    rec["layers"][l][key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

fn run(name: &str, method: Method, dir: &std::path::Path, tag: &str, seed: u64) -> (serde_json::Value, Model) {
    let out = dir.join(tag);
    let mut j = job(name, &out, 0.5);
    j.prune.method = method;
    j.prune.seed = seed;
    run_prune(&j).unwrap();
    (read_json(&out.join("fasp.json")), Model::open(&out).unwrap())
}

#[test]
fn head_methods_remove_whole_kv_groups() {
    let dir = tempfile::tempdir().unwrap();
    for (name, hd, kv) in [("llama-gqa", 32u64, 2u64), ("opt-tiny", 16, 4)] {
        for m in [Method::WandaSp, Method::Flap] {
            let (rec, _) = run(name, m, dir.path(), &format!("{name}-{}", m.name()), 0);
            for l in 0..rec["layers"].as_array().unwrap().len() {
                let units = kept(&rec, l, "attn_kept_units");
                // sparsity 0.5 of `kv` groups: floor(kv/2 + 0.5) pruned
                let groups_kept = kv - (kv as f64 * 0.5 + 0.5).floor() as u64;
                assert_eq!(units.len() as u64, groups_kept * hd, "{name} {} layer {l}", m.name());
                for chunk in units.chunks(hd as usize) {
                    assert_eq!(chunk[0] % hd, 0);
                    assert!(chunk.windows(2).all(|w| w[1] == w[0] + 1), "whole heads only");
                }
            }
        }
    }
}

#[test]
fn flap_compensates_the_bias_and_writes_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    // llama-mha has no biases: FLAP must add o_proj/down_proj biases and say so in config.json
    let (rec, m) = run("llama-mha", Method::Flap, dir.path(), "flap", 0);
    assert!(m.cfg.attn_bias && m.cfg.mlp_bias, "bias flags set in the written config");
    let lw = m.layer(0).unwrap();
    assert!(lw.down.b.as_ref().unwrap().iter().any(|&b| b != 0.0), "down_proj bias holds the compensation");
    assert!(lw.q.b.as_ref().unwrap().iter().all(|&b| b == 0.0), "q bias written as zeros");
    assert_eq!(rec["method"], "flap");
    let (shape, ids) = reference_ids("llama-mha", "input_ids");
    let logits = fasp_engine::eval::logits(&m, &ids, shape[1]).unwrap();
    assert!(logits.is_finite());
}

#[test]
fn magnitude_ignores_calibration_and_random_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = run("opt-tiny", Method::Magnitude, dir.path(), "mag", 0);
    // magnitude on layer 0: the units with the largest column L1 norms of the dense weights
    let dense = Model::open(&fixture("opt-tiny")).unwrap().layer(0).unwrap();
    let l1: Vec<f64> = (0..dense.down.w.cols)
        .map(|j| (0..dense.down.w.rows).map(|i| dense.down.w.data[i * dense.down.w.cols + j].abs() as f64).sum())
        .collect();
    let want = fasp_engine::prune::select::top_k(&l1, kept(&a, 0, "mlp_kept_units").len()).unwrap();
    assert_eq!(kept(&a, 0, "mlp_kept_units"), want.iter().map(|&x| x as u64).collect::<Vec<_>>());

    let (r1, _) = run("opt-tiny", Method::Random, dir.path(), "r1", 7);
    let (r2, _) = run("opt-tiny", Method::Random, dir.path(), "r2", 7);
    let (r3, _) = run("opt-tiny", Method::Random, dir.path(), "r3", 8);
    assert_eq!(r1["layers"], r2["layers"], "same seed, same units");
    assert_ne!(kept(&r1, 0, "mlp_kept_units"), kept(&r3, 0, "mlp_kept_units"), "another seed, other units");
    assert!(r1["layers"][0]["mlp"]["lambda"].is_null(), "baselines do not restore");
}

#[test]
fn sweep_writes_a_table_csv_and_plot() {
    use fasp_engine::sweep::{self, SweepMethod, SweepSpec};
    let dir = tempfile::tempdir().unwrap();
    let spec = SweepSpec {
        model: fixture("llama-gqa"),
        calib: fixture("calib.txt"),
        nsamples: Some(8),
        seqlen: Some(32),
        seed: 0,
        damp: 0.01,
        methods: ["fasp", "fasp-no-restore", "flap"].iter().map(|m| SweepMethod::parse(m).unwrap()).collect(),
        sparsities: vec![0.1, 0.3],
        evals: vec![("eval".into(), fixture("eval.txt"))],
        eval_seqlen: 32,
        eval_windows: Some(8),
        device: fasp_engine::job::Device::Cpu,
    };
    let rows = sweep::run(&spec, |_| {}).unwrap();
    assert_eq!(rows.len(), 1 + 3 * 2, "dense once, then methods x sparsities");
    assert!(rows.iter().all(|r| r.ppl.is_finite() && r.windows == 8 && r.seqlen == 32));
    // more sparsity, fewer parameters
    let p = |m: &str, s: f64| rows.iter().find(|r| r.method == m && r.sparsity == s).unwrap().params;
    assert!(p("fasp", 0.3) < p("fasp", 0.1) && p("fasp", 0.1) < rows[0].params);
    sweep::write_csv(&rows, &dir.path().join("s.csv")).unwrap();
    let csv = std::fs::read_to_string(dir.path().join("s.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + rows.len());
    assert!(csv.starts_with("method,sparsity,eval,ppl"));
    sweep::plot_svg(&rows, "eval", &dir.path().join("s.svg")).unwrap();
    let svg = std::fs::read_to_string(dir.path().join("s.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("fasp-no-restore"), "one labelled line per method");
    let table = sweep::table(&rows, "eval");
    assert!(table.contains("| fasp |") && table.contains("10%") && table.contains("30%"));
    assert!(SweepMethod::parse("sparsegpt").is_err());
}

fn row(method: &str, sparsity: f64, eval: &str, ppl: f64, windows: usize) -> fasp_engine::sweep::SweepRow {
    fasp_engine::sweep::SweepRow {
        method: method.into(),
        sparsity,
        eval: eval.into(),
        ppl,
        windows,
        seqlen: 256,
        params: 1000 - (sparsity * 100.0) as usize,
        prune_seconds: 1.5,
    }
}

#[test]
fn sweep_csvs_round_trip_and_merge_only_when_they_agree() {
    use fasp_engine::sweep;
    let dir = tempfile::tempdir().unwrap();
    let a = vec![row("dense", 0.0, "wiki", 26.825899, 8), row("flap", 0.1, "wiki", 32.933925, 8), row("fasp", 0.1, "wiki", 32.031032, 8)];
    let b = vec![row("dense", 0.0, "wiki", 26.825899, 8), row("fasp", 0.2, "wiki", 41.5, 8), row("fasp", 0.1, "wiki", 32.031032, 8)];
    sweep::write_csv(&a, &dir.path().join("a.csv")).unwrap();
    let back = sweep::read_csv(&dir.path().join("a.csv")).unwrap();
    assert_eq!(back.len(), 3);
    assert!(back
        .iter()
        .zip(&a)
        .all(|(x, y)| x.method == y.method && x.sparsity == y.sparsity && (x.ppl - y.ppl).abs() < 1e-6 && x.params == y.params));
    assert!(!dir.path().join("a.csv.tmp").exists(), "the temporary file is renamed into place");

    let m = sweep::merge(vec![a.clone(), b.clone()]).unwrap();
    let keys: Vec<(String, f64)> = m.iter().map(|r| (r.method.clone(), r.sparsity)).collect();
    assert_eq!(
        keys,
        vec![("dense".into(), 0.0), ("fasp".into(), 0.1), ("fasp".into(), 0.2), ("flap".into(), 0.1)],
        "one row per measurement, in method order"
    );

    // the same measurement with another result: the sweeps did not use the same settings
    let mut c = b.clone();
    c[2].ppl = 33.0;
    assert!(sweep::merge(vec![a.clone(), c]).unwrap_err().to_string().contains("differs between sweeps"));
    let mut d = b.clone();
    d[0].ppl = 27.0;
    assert!(sweep::merge(vec![a.clone(), d]).is_err(), "another dense perplexity means other evaluation windows");
    let e: Vec<_> = b.iter().map(|r| fasp_engine::sweep::SweepRow { windows: 16, ..r.clone() }).collect();
    assert!(sweep::merge(vec![a, e]).unwrap_err().to_string().contains("windows"));

    // malformed files are refused with the line
    for (name, text, expect) in [
        ("h.csv", "a,b\n", "not a sweep CSV"),
        ("f.csv", "method,sparsity,eval,ppl,windows,seqlen,params,prune_seconds\nfasp,0.1,wiki\n", ":2: expected 8 fields"),
        ("n.csv", "method,sparsity,eval,ppl,windows,seqlen,params,prune_seconds\nfasp,0.1,wiki,NaN,8,256,10,1.0\n", "bad perplexity"),
        ("w.csv", "method,sparsity,eval,ppl,windows,seqlen,params,prune_seconds\nfasp,0.1,wiki,30,-8,256,10,1.0\n", "bad window count"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let err = sweep::read_csv(&p).unwrap_err().to_string();
        assert!(err.contains(expect), "{name}: {err}");
    }
    assert!(sweep::read_csv(&dir.path().join("missing.csv")).is_err());
}

//! Pruning semantics on the fixtures: agreement with the independent torch reference of FASP
//! (scripts/make_fixtures.py), identity at s = 0, restoration, damping, compact form, and the
//! sequential order of statistics.

mod common;
use common::*;
use fasp_engine::backend::PairStats;
use fasp_engine::forward;
use fasp_engine::job::run_prune;
use fasp_engine::model::arch::attn_columns;
use fasp_engine::model::Model;
use fasp_engine::prune::{restore, select::complement};

fn units(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

#[test]
fn matches_the_independent_torch_reference() {
    for name in MODELS {
        assert_matches_fasp_reference(name);
    }
}

#[test]
fn sparsity_zero_is_the_identity() {
    for name in MODELS {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("s0");
        run_prune(&job(name, &out, 0.0)).unwrap();
        let dense = Model::open(&fixture(name)).unwrap();
        let pruned = Model::open(&out).unwrap();
        for l in 0..dense.cfg.layers {
            let (a, b) = (dense.layer(l).unwrap(), pruned.layer(l).unwrap());
            assert_eq!(a.o.w, b.o.w, "{name} layer {l}: o_proj changed at s = 0");
            assert_eq!(a.down.w, b.down.w, "{name} layer {l}: down changed at s = 0");
            assert_eq!(a.up.w, b.up.w);
            assert_eq!(a.v.w, b.v.w);
        }
        let (shape, ids) = reference_ids(name, "input_ids");
        let (_, want) = reference(name, "logits");
        let got = fasp_engine::eval::logits(&pruned, &ids, shape[1]).unwrap();
        assert!(rel_max_err(&got.data, &want) <= 1e-5);
        let rec = read_json(&out.join("fasp.json"));
        assert_eq!(rec["params"]["original"], rec["params"]["compact"]);
    }
}

#[test]
fn restoration_lowers_the_reconstruction_error_of_every_pair() {
    for name in MODELS {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p");
        run_prune(&job(name, &out, 0.3)).unwrap();
        let rec = read_json(&out.join("fasp.json"));
        for layer in rec["layers"].as_array().unwrap() {
            for pair in ["attn", "mlp"] {
                let r = layer[pair]["recon_error"].as_f64().unwrap();
                let n = layer[pair]["recon_error_no_restore"].as_f64().unwrap();
                assert!(r < n, "{name} layer {} {pair}: restored {r} vs not {n}", layer["layer"]);
            }
        }
        // --no-restore records equal errors and no lambda
        let out2 = dir.path().join("nr");
        let mut j = job(name, &out2, 0.3);
        j.prune.restore = false;
        run_prune(&j).unwrap();
        let rec2 = read_json(&out2.join("fasp.json"));
        // layer 0's attention sees no earlier restoration, so its selection is the same
        assert_eq!(rec["layers"][0]["attn_kept_units"], rec2["layers"][0]["attn_kept_units"]);
        for b in rec2["layers"].as_array().unwrap() {
            assert!(b["mlp"]["lambda"].is_null());
            assert_eq!(b["mlp"]["recon_error"], b["mlp"]["recon_error_no_restore"]);
        }
    }
}

#[test]
fn huge_damp_equals_no_restore() {
    let name = "llama-gqa";
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("damp"), dir.path().join("norestore"));
    let mut j = job(name, &a, 0.25);
    j.prune.damp = 1e12;
    run_prune(&j).unwrap();
    let mut j = job(name, &b, 0.25);
    j.prune.restore = false;
    run_prune(&j).unwrap();
    let (ma, mb) = (Model::open(&a).unwrap(), Model::open(&b).unwrap());
    for l in 0..ma.cfg.layers {
        let (x, y) = (ma.layer(l).unwrap(), mb.layer(l).unwrap());
        assert!(rel_max_err(&x.o.w.data, &y.o.w.data) < 1e-6, "layer {l} o_proj");
        assert!(rel_max_err(&x.down.w.data, &y.down.w.data) < 1e-6, "layer {l} down");
    }
}

#[test]
fn compact_forward_equals_dense_equivalent_forward() {
    for name in MODELS {
        let dir = tempfile::tempdir().unwrap();
        let (dense_eq, compact) = (dir.path().join("de"), dir.path().join("c"));
        run_prune(&job(name, &dense_eq, 0.25)).unwrap();
        let mut j = job(name, &compact, 0.25);
        j.compact = true;
        run_prune(&j).unwrap();
        let (md, mc) = (Model::open(&dense_eq).unwrap(), Model::open(&compact).unwrap());
        assert!(mc.cfg.compact_v_units.is_some() && md.cfg.compact_v_units.is_none());
        assert!(mc.param_count() < md.param_count(), "the compact form is smaller");
        let rec = read_json(&compact.join("fasp.json"));
        assert_eq!(rec["params"]["compact"].as_u64().unwrap() as usize, mc.param_count());
        let (shape, ids) = reference_ids(name, "input_ids");
        let a = fasp_engine::eval::logits(&md, &ids, shape[1]).unwrap();
        let b = fasp_engine::eval::logits(&mc, &ids, shape[1]).unwrap();
        let e = rel_max_err(&b.data, &a.data);
        assert!(e <= 1e-5, "{name}: compact vs dense-equivalent logits {e:.2e}");
    }
}

/// Layer l's statistics come from the already-pruned layers before it, and a layer's MLP
/// statistics from its own pruned attention: the recorded no-restore errors (which depend only on
/// the statistics and the kept set) match a recomputation with pruned prefixes, and not one with
/// dense prefixes.
#[test]
fn statistics_are_sequential() {
    let name = "llama-gqa";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p");
    run_prune(&job(name, &out, 0.3)).unwrap();
    let rec = read_json(&out.join("fasp.json"));
    let dense = Model::open(&fixture(name)).unwrap();
    let pruned = Model::open(&out).unwrap();
    let cfg = &dense.cfg;
    let (shape, ids) = reference_ids(name, "calib_ids");
    let seqlen = shape[1];
    let embed = |m: &Model| forward::embed(&m.cfg, &m.embedding().unwrap(), None, &ids, seqlen);

    let no_restore_err = |w2: &fasp_engine::tensor::Mat, x: &fasp_engine::tensor::Mat, kept_cols: &[usize]| {
        let st = PairStats::of(x);
        restore::recon_error(w2, &w2.gather_cols(kept_cols), kept_cols, &st.h)
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-12);

    // Attention of layer 1: inputs through pruned layer 0 vs through dense layer 0.
    let l1 = &rec["layers"][1];
    let s_attn = attn_columns(cfg, &units(&l1["attn_kept_units"]));
    let recorded = l1["attn"]["recon_error_no_restore"].as_f64().unwrap();
    let w1 = dense.layer(1).unwrap();
    let h_pruned = forward::layer(cfg, &pruned.layer(0).unwrap(), &embed(&dense), seqlen);
    let h_dense = forward::layer(cfg, &dense.layer(0).unwrap(), &embed(&dense), seqlen);
    let e_pruned = no_restore_err(&w1.o.w, &forward::attn_context(cfg, &w1, &h_pruned, seqlen), &s_attn);
    let e_dense = no_restore_err(&w1.o.w, &forward::attn_context(cfg, &w1, &h_dense, seqlen), &s_attn);
    assert!(close(recorded, e_pruned), "recorded {recorded} vs pruned-prefix {e_pruned}");
    assert!(!close(recorded, e_dense), "layer 1 must not see the dense layer 0 ({e_dense})");

    // MLP of layer 0: with its own pruned attention vs with the dense attention.
    let l0 = &rec["layers"][0];
    let s_mlp = units(&l0["mlp_kept_units"]);
    let recorded = l0["mlp"]["recon_error_no_restore"].as_f64().unwrap();
    let (d0, p0) = (dense.layer(0).unwrap(), pruned.layer(0).unwrap());
    let x = embed(&dense);
    let mid_pruned = forward::add_linear(&x, &p0.o, &forward::attn_context(cfg, &p0, &x, seqlen));
    let mid_dense = forward::add_linear(&x, &d0.o, &forward::attn_context(cfg, &d0, &x, seqlen));
    let e_pruned = no_restore_err(&d0.down.w, &forward::mlp_act(cfg, &d0, &mid_pruned), &s_mlp);
    let e_dense = no_restore_err(&d0.down.w, &forward::mlp_act(cfg, &d0, &mid_dense), &s_mlp);
    assert!(close(recorded, e_pruned), "recorded {recorded} vs pruned-attention {e_pruned}");
    assert!(!close(recorded, e_dense), "the MLP must not see the dense attention ({e_dense})");
    assert_eq!(complement(&s_mlp, cfg.ffn).len() + s_mlp.len(), cfg.ffn);
}

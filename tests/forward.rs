//! The CPU forward pass against transformers' logits on the fixtures (seeded random weights).

mod common;
use common::*;
use fasp_engine::model::Model;

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        let model = Model::open(&fixture(name)).unwrap();
        let (shape, ids) = reference_ids(name, "input_ids");
        let (_, want) = reference(name, "logits");
        let got = fasp_engine::eval::logits(&model, &ids, shape[1]).unwrap();
        let err = rel_max_err(&got.data, &want);
        println!("{name}: max|Δ|/max|ref| = {err:.3e}");
        assert!(err <= 1e-5, "{name}: logits differ from transformers: {err:.3e}");
    }
}

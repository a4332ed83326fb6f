//! Reading `fasp.json`, the run record a prune writes beside the pruned model (docs/spec.md §9),
//! for `inspect`. Only the fields the summary needs are typed; everything else in the record is
//! ignored, so records of older versions and of `bench --write` read as well. A field that is
//! present with the wrong type is an error naming the field.

use crate::error::{FaspError, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
pub struct FaspRecord {
    pub engine: String,
    pub version: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub calibration: Option<Calibration>,
    #[serde(default)]
    pub params: Option<Params>,
    #[serde(default)]
    pub total_seconds: Option<f64>,
    #[serde(default)]
    pub eval: Option<EvalRecord>,
    #[serde(default)]
    pub layers: Vec<LayerRecord>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub sparsity: Option<f64>,
    #[serde(default)]
    pub restore: Option<bool>,
    #[serde(default)]
    pub skip_attn: Option<bool>,
    #[serde(default)]
    pub compact: Option<bool>,
    #[serde(default)]
    pub dtype: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Calibration {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub nsamples: Option<u64>,
    #[serde(default)]
    pub seqlen: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Params {
    pub original: u64,
    pub dense_equivalent: u64,
    pub compact: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EvalRecord {
    #[serde(default)]
    pub dense: Option<PplRecord>,
    #[serde(default)]
    pub pruned: Option<PplRecord>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PplRecord {
    pub ppl: f64,
    #[serde(default)]
    pub windows: Option<u64>,
    #[serde(default)]
    pub seqlen: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LayerRecord {
    pub layer: u64,
    /// Kept attention value units (prune's record; `bench` writes counts instead).
    #[serde(default)]
    pub attn_kept_units: Option<Vec<u64>>,
    #[serde(default)]
    pub mlp_kept_units: Option<Vec<u64>>,
}

/// The smallest and largest count over the layers.
pub type Range = Option<(usize, usize)>;

impl FaspRecord {
    /// Parses a record from its JSON text; `what` names it in errors (usually the path).
    pub fn from_slice(bytes: &[u8], what: &Path) -> Result<FaspRecord> {
        let r: FaspRecord = serde_json::from_slice(bytes)
            .map_err(|e| FaspError::Weights { path: what.into(), msg: format!("not a valid fasp.json: {e}") })?;
        if r.engine != "fasp-engine" {
            return Err(FaspError::Weights { path: what.into(), msg: format!("not a fasp-engine record (engine {:?})", r.engine) });
        }
        Ok(r)
    }

    /// `dir/fasp.json` if the directory has one; for a `.gguf` file, its `fasp.json` metadata key
    /// (what `prune --format gguf` writes) if it has one.
    pub fn of_dir(dir: &Path) -> Result<Option<FaspRecord>> {
        if dir.is_file() && dir.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let g = crate::gguf::GgufFile::open(dir)?;
            return match g.metadata("fasp.json").and_then(|v| v.as_str()) {
                Some(text) => FaspRecord::from_slice(text.as_bytes(), dir).map(Some),
                None => Ok(None),
            };
        }
        let path = dir.join("fasp.json");
        if !dir.is_dir() || !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|e| FaspError::io(&path, e))?;
        FaspRecord::from_slice(&bytes, &path).map(Some)
    }

    /// (min, max) kept units over the layers for attention and the MLP, when recorded.
    pub fn kept_range(&self) -> (Range, Range) {
        let range = |f: &dyn Fn(&LayerRecord) -> Option<usize>| {
            self.layers.iter().filter_map(f).fold(None, |acc: Range, n| match acc {
                None => Some((n, n)),
                Some((lo, hi)) => Some((lo.min(n), hi.max(n))),
            })
        };
        (range(&|l| l.attn_kept_units.as_ref().map(Vec::len)), range(&|l| l.mlp_kept_units.as_ref().map(Vec::len)))
    }

    /// The lines `inspect` prints for a pruned model (no trailing newline on the last).
    pub fn summary_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let s = &self.settings;
        let mut how = format!("{} {}", self.engine, self.version);
        if let Some(m) = &self.method {
            how.push_str(&format!(", method {m}"));
        }
        if let Some(sp) = s.sparsity {
            how.push_str(&format!(", sparsity {sp}"));
        }
        if s.restore == Some(false) {
            how.push_str(", no restoration");
        }
        if s.skip_attn == Some(true) {
            how.push_str(", MLP only");
        }
        if s.compact == Some(true) {
            how.push_str(", compact form");
        }
        if let Some(b) = &self.backend {
            how.push_str(&format!(", backend {b}"));
        }
        out.push(format!("pruned by      {how}"));
        if let Some(c) = &self.calibration {
            let mut line = String::from("calibration    ");
            match (c.nsamples, c.seqlen) {
                (Some(n), Some(l)) => line.push_str(&format!("{n} x {l} tokens")),
                _ => line.push('?'),
            }
            if let Some(p) = &c.path {
                line.push_str(&format!(" from {p}"));
            }
            out.push(line);
        }
        let (attn, mlp) = self.kept_range();
        let show = |r: Range| match r {
            Some((lo, hi)) if lo == hi => format!("{lo}"),
            Some((lo, hi)) => format!("{lo}..{hi}"),
            None => "?".into(),
        };
        if !self.layers.is_empty() && (attn.is_some() || mlp.is_some()) {
            out.push(format!(
                "kept per layer attention value units {}, MLP channels {} ({} layers)",
                show(attn),
                show(mlp),
                self.layers.len()
            ));
        }
        if let Some(p) = &self.params {
            let removed = if p.original > 0 { 100.0 * (1.0 - p.compact as f64 / p.original as f64) } else { 0.0 };
            out.push(format!(
                "params record  original {}, dense-equivalent {}, compact {} ({removed:.1}% of the parameters removed)",
                p.original, p.dense_equivalent, p.compact
            ));
        }
        if let Some(e) = &self.eval {
            let ppl = |p: &PplRecord| match (p.windows, p.seqlen) {
                (Some(w), Some(l)) => format!("{:.4} ({w} windows of {l})", p.ppl),
                _ => format!("{:.4}", p.ppl),
            };
            match (&e.dense, &e.pruned) {
                (Some(d), Some(p)) => out.push(format!("perplexity     dense {} -> pruned {}", ppl(d), ppl(p))),
                (None, Some(p)) => out.push(format!("perplexity     pruned {}", ppl(p))),
                _ => {}
            }
        }
        out
    }

    /// The summary as JSON for `inspect --json`.
    pub fn summary_json(&self) -> serde_json::Value {
        let (attn, mlp) = self.kept_range();
        let range = |r: Range| r.map(|(lo, hi)| serde_json::json!([lo, hi]));
        serde_json::json!({
            "engine": self.engine,
            "version": self.version,
            "method": self.method,
            "sparsity": self.settings.sparsity,
            "restore": self.settings.restore,
            "compact": self.settings.compact,
            "backend": self.backend,
            "calibration": self.calibration.as_ref().map(|c| serde_json::json!({"nsamples": c.nsamples, "seqlen": c.seqlen, "path": c.path})),
            "layers": self.layers.len(),
            "attn_kept_units_range": range(attn),
            "mlp_kept_units_range": range(mlp),
            "params": self.params.as_ref().map(|p| serde_json::json!({"original": p.original, "dense_equivalent": p.dense_equivalent, "compact": p.compact})),
            "ppl_dense": self.eval.as_ref().and_then(|e| e.dense.as_ref()).map(|p| p.ppl),
            "ppl_pruned": self.eval.as_ref().and_then(|e| e.pruned.as_ref()).map(|p| p.ppl),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_prune_record_and_summarises_it() {
        let text = br#"{"engine":"fasp-engine","version":"0.1.0","method":"fasp",
            "settings":{"sparsity":0.2,"restore":true,"skip_attn":false,"compact":false,"dtype":"f16","device":"cpu"},
            "backend":"cpu","calibration":{"path":"c.txt","nsamples":8,"seqlen":64,"seed":0},
            "params":{"original":1000,"dense_equivalent":900,"compact":800},
            "eval":{"dense":{"ppl":10.0,"windows":4,"seqlen":64},"pruned":{"ppl":12.5,"windows":4,"seqlen":64}},
            "layers":[{"layer":0,"attn_kept_units":[0,1,2],"mlp_kept_units":[0,1,2,3]},
                      {"layer":1,"attn_kept_units":[0,1],"mlp_kept_units":[0,1,2,3]}],
            "unknown_field":[1,2,3]}"#;
        let r = FaspRecord::from_slice(text, Path::new("fasp.json")).unwrap();
        assert_eq!(r.kept_range(), (Some((2, 3)), Some((4, 4))));
        let lines = r.summary_lines().join("\n");
        assert!(lines.contains("method fasp, sparsity 0.2"), "{lines}");
        assert!(lines.contains("8 x 64 tokens from c.txt"), "{lines}");
        assert!(lines.contains("attention value units 2..3, MLP channels 4 (2 layers)"), "{lines}");
        assert!(lines.contains("20.0% of the parameters removed"), "{lines}");
        assert!(lines.contains("dense 10.0000 (4 windows of 64) -> pruned 12.5000"), "{lines}");
        assert_eq!(r.summary_json()["ppl_pruned"], 12.5);
    }

    #[test]
    fn a_wrong_type_or_another_engine_is_an_error_naming_it() {
        let e = FaspRecord::from_slice(
            br#"{"engine":"fasp-engine","version":"0.1.0","settings":{"sparsity":"high"}}"#,
            Path::new("x/fasp.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x/fasp.json") && e.contains("invalid type"), "{e}");
        let e = FaspRecord::from_slice(br#"{"engine":"other","version":"1"}"#, Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("not a fasp-engine record"), "{e}");
        assert!(FaspRecord::from_slice(b"\xff\x00", Path::new("f")).is_err());
    }
}

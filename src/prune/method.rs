//! Pruning methods over the same pipeline, so that they are compared on exactly the same data.
//! FASP is the default; the others are baselines (see `--help` and the README).

use crate::backend::StatsSummary;
use crate::tensor::Mat;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// FASP: `‖X_j‖₂ · Σ_i |W2[i,j]|` per channel (attention: per V row), least-squares restoration.
    Fasp,
    /// Wanda-SP as in FLAP's repository: `mean_i |W2[i,j]| · sqrt(mean_t x_j²)`, whole heads
    /// (GQA: whole KV groups with their query heads) for attention, no weight update.
    WandaSp,
    /// FLAP: fluctuation `var_t(x_j) · Σ_i W2[i,j]²`, whole heads for attention, bias compensation
    /// `b += W2[:,P] · mean(X_P)`, the same uniform ratio in every layer.
    Flap,
    /// Column L1 norm of W2 only (per FASP unit), no weight update.
    Magnitude,
    /// Seeded random units (per FASP unit), no weight update.
    Random,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Fasp => "fasp",
            Method::WandaSp => "wanda-sp",
            Method::Flap => "flap",
            Method::Magnitude => "magnitude",
            Method::Random => "random",
        }
    }
    /// Attention is pruned in whole heads (KV groups) rather than V rows.
    pub fn whole_heads(self) -> bool {
        matches!(self, Method::WandaSp | Method::Flap)
    }
    /// Uses least-squares restoration (FASP only, unless `--no-restore`).
    pub fn restores(self) -> bool {
        self == Method::Fasp
    }
    pub fn bias_compensation(self) -> bool {
        self == Method::Flap
    }

    /// Column scores of `W2` for this method from the O(n) summary of the statistics (the
    /// pipeline has FASP's computed by the backend instead, on its own data).
    pub fn column_scores(self, w2: &Mat, stats: &StatsSummary, seed: u64) -> Vec<f64> {
        let n = w2.cols;
        let t = stats.tokens.max(1) as f64;
        let col = |f: &dyn Fn(f32) -> f64| -> Vec<f64> {
            let mut acc = vec![0.0f64; n];
            for r in 0..w2.rows {
                for (a, &w) in acc.iter_mut().zip(w2.row(r)) {
                    *a += f(w);
                }
            }
            acc
        };
        match self {
            Method::Fasp => super::score::column_scores(w2, &stats.hdiag),
            Method::WandaSp => {
                let l1 = col(&|w| w.abs() as f64);
                (0..n).map(|j| l1[j] / w2.rows as f64 * (stats.hdiag[j].max(0.0) / t).sqrt()).collect()
            }
            Method::Flap => {
                let l2 = col(&|w| (w as f64) * (w as f64));
                (0..n)
                    .map(|j| {
                        let mean = stats.col_sum[j] / t;
                        let var = (stats.hdiag[j] / t - mean * mean).max(0.0);
                        var * l2[j]
                    })
                    .collect()
            }
            Method::Magnitude => col(&|w| w.abs() as f64),
            Method::Random => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                (0..n).map(|_| rng.random::<f64>()).collect()
            }
        }
    }
}

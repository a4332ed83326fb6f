//! How many units a pair keeps (docs/spec.md §3), and the names of the two pairs.

use crate::error::{FaspError, Result};

/// The two coupled structures of a decoder layer (docs/spec.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairKind {
    /// o_proj/out_proj columns with v_proj rows.
    Attn,
    /// fc2/down_proj columns with fc1 or gate/up rows.
    Mlp,
}

impl PairKind {
    pub fn name(self) -> &'static str {
        match self {
            PairKind::Attn => "attention",
            PairKind::Mlp => "mlp",
        }
    }
}

/// Pruned units: `floor(n*s + 0.5)`, in double precision.
pub fn pruned_count(n: usize, sparsity: f64) -> usize {
    ((n as f64) * sparsity + 0.5).floor() as usize
}

/// Kept units `k = n - p`; checks `s` in [0, 1) and `k >= 1`.
pub fn kept_count(n: usize, sparsity: f64) -> Result<usize> {
    check_sparsity(sparsity)?;
    let p = pruned_count(n, sparsity).min(n);
    if n - p < 1 {
        return Err(FaspError::Arg(format!("sparsity {sparsity} keeps no unit of a pair with {n} units (k < 1)")));
    }
    Ok(n - p)
}

pub fn check_sparsity(sparsity: f64) -> Result<()> {
    if !(0.0..1.0).contains(&sparsity) || !sparsity.is_finite() {
        return Err(FaspError::Arg(format!("sparsity must be in [0, 1), got {sparsity}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn counts_round_half_up() {
        assert_eq!(pruned_count(10, 0.25), 3); // 2.5 -> 3
        assert_eq!(pruned_count(10, 0.24), 2);
        assert_eq!(kept_count(3072, 0.2).unwrap(), 3072 - 614);
        assert_eq!(kept_count(4, 0.0).unwrap(), 4);
        assert!(kept_count(1, 0.6).is_err()); // k = 0
        assert!(kept_count(8, 1.0).is_err());
        assert!(kept_count(8, -0.1).is_err());
        assert!(kept_count(8, f64::NAN).is_err());
    }
}

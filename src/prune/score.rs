//! The FASP metric (docs/spec.md §5): `colscore_j = sqrt(H_jj) * Σ_i |W2[i,j]|`; a unit's score is
//! the sum of its columns' scores.

use crate::tensor::Mat;

/// Column scores of the later matrix `W2` `[out, n]` from `diag(H)`.
pub fn column_scores(w2: &Mat, hdiag: &[f64]) -> Vec<f64> {
    assert_eq!(w2.cols, hdiag.len());
    let mut l1 = vec![0.0f64; w2.cols];
    for r in 0..w2.rows {
        for (acc, &w) in l1.iter_mut().zip(w2.row(r)) {
            *acc += w.abs() as f64;
        }
    }
    l1.iter().zip(hdiag).map(|(&a, &h)| h.max(0.0).sqrt() * a).collect()
}

/// Unit scores: the sum over each unit's columns.
pub fn unit_scores(colscore: &[f64], unit_columns: &[Vec<usize>]) -> Vec<f64> {
    unit_columns.iter().map(|cols| cols.iter().map(|&c| colscore[c]).sum()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn metric_is_norm_times_l1() {
        let w = Mat::from_vec(2, 3, vec![1.0, -2.0, 0.5, -3.0, 1.0, 0.5]);
        let s = column_scores(&w, &[4.0, 1.0, 9.0]);
        assert_eq!(s, vec![2.0 * 4.0, 1.0 * 3.0, 3.0 * 1.0]);
        assert_eq!(unit_scores(&s, &[vec![0, 2], vec![1]]), vec![11.0, 3.0]);
    }
}

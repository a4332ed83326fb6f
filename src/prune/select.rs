//! Selection (docs/spec.md §5): keep the `k` highest scores, ties to the lower index.

use crate::error::Result;

/// The kept indices in increasing order. Order is `(-score, index)`: among equal scores the
/// lower index wins. A non-finite score is an error (the caller adds layer and pair).
pub fn top_k(scores: &[f64], k: usize) -> Result<Vec<usize>, String> {
    if let Some(j) = scores.iter().position(|s| !s.is_finite()) {
        return Err(format!("non-finite score {} at unit {j}", scores[j]));
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order.into_iter().take(k).collect();
    kept.sort_unstable();
    Ok(kept)
}

/// The complement of `kept` in `0..n` (increasing).
pub fn complement(kept: &[usize], n: usize) -> Vec<usize> {
    let mut mask = vec![false; n];
    for &k in kept {
        mask[k] = true;
    }
    (0..n).filter(|&j| !mask[j]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ties_go_to_the_lower_index() {
        let s = [1.0, 3.0, 2.0, 3.0, 2.0, 0.5];
        assert_eq!(top_k(&s, 2).unwrap(), vec![1, 3]);
        assert_eq!(top_k(&s, 3).unwrap(), vec![1, 2, 3]); // 2 beats 4 on the tie
        assert_eq!(top_k(&[5.0; 6], 4).unwrap(), vec![0, 1, 2, 3]);
        assert!(top_k(&[1.0, f64::NAN], 1).is_err());
        assert!(top_k(&[1.0, f64::INFINITY], 1).is_err());
        assert_eq!(complement(&[1, 3], 5), vec![0, 2, 4]);
    }
}

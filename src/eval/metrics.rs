//! Task metrics: accuracy (rank classification), exact match and ROUGE-L.

/// Whitespace- and case-insensitive exact match.
pub fn exact_match(prediction: &str, target: &str) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    norm(prediction) == norm(target)
}

/// ROUGE-L F-measure over whitespace tokens (longest common subsequence).
pub fn rouge_l(prediction: &str, target: &str) -> f64 {
    let p: Vec<String> = prediction.split_whitespace().map(str::to_lowercase).collect();
    let t: Vec<String> = target.split_whitespace().map(str::to_lowercase).collect();
    if p.is_empty() || t.is_empty() {
        return if p.is_empty() && t.is_empty() { 1.0 } else { 0.0 };
    }
    let mut dp = vec![vec![0usize; t.len() + 1]; p.len() + 1];
    for i in 1..=p.len() {
        for j in 1..=t.len() {
            dp[i][j] = if p[i - 1] == t[j - 1] {
                dp[i - 1][j - 1] + 1
            } else {
                dp[i - 1][j].max(dp[i][j - 1])
            };
        }
    }
    let lcs = dp[p.len()][t.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (prec, rec) = (lcs / p.len() as f64, lcs / t.len() as f64);
    2.0 * prec * rec / (prec + rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics() {
        assert!(exact_match(" A  b ", "a b"));
        assert!(!exact_match("a b c", "a b"));
        assert_eq!(rouge_l("a b c", "a b c"), 1.0);
        // LCS("a x c", "a b c") = 2: P = R = 2/3.
        assert!((rouge_l("a x c", "a b c") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rouge_l("x", "a"), 0.0);
    }
}

//! Label-smoothed cross entropy over rows of logits [n, classes].

/// log Σ exp of one row, stable.
fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, super::nan_max) as f64;
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// mean_i [ −(1−ε)·logp_i[y_i] − ε/C · Σ_c logp_i[c] ].
pub(super) fn cross_entropy(logits: &[f32], labels: &[u32], classes: usize, eps: f32) -> f32 {
    let eps = eps as f64;
    let total: f64 = logits
        .chunks(classes)
        .zip(labels)
        .map(|(row, &y)| {
            let lse = logsumexp(row);
            let nll = lse - row[y as usize] as f64;
            if eps == 0.0 {
                // Not 0·(smoothing term): a −inf logit makes that term +inf, and PyTorch skips it.
                return nll;
            }
            let mean_neg_logp = lse - row.iter().map(|&v| v as f64).sum::<f64>() / classes as f64;
            (1.0 - eps) * nll + eps * mean_neg_logp
        })
        .sum();
    (total / labels.len() as f64) as f32
}

/// dlogits = scale/n · (softmax − ((1−ε)·onehot + ε/C)).
pub(super) fn cross_entropy_backward(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    eps: f32,
    scale: f32,
) -> Vec<f32> {
    let k = scale as f64 / labels.len() as f64;
    let eps = eps as f64;
    let mut d = vec![0.0; logits.len()];
    for ((drow, row), &y) in d
        .chunks_mut(classes)
        .zip(logits.chunks(classes))
        .zip(labels)
    {
        let lse = logsumexp(row);
        for (c, (dv, &v)) in drow.iter_mut().zip(row).enumerate() {
            let target = eps / classes as f64 + if c == y as usize { 1.0 - eps } else { 0.0 };
            *dv = (k * ((v as f64 - lse).exp() - target)) as f32;
        }
    }
    d
}

//! Cross entropy over logits [N, classes] with integer labels, mean over the batch, optional label
//! smoothing (PyTorch's: target = (1 − ε)·onehot + ε / classes).

use crate::autograd::{needs_grad, record};
use crate::error::{arg_bail, shape_bail, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

/// Mean cross entropy of `logits` [N, C] against `labels` (N entries in 0..C) → shape [1].
pub fn cross_entropy(logits: &Tensor, labels: &[usize], label_smoothing: f32) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    same_device(OP, &[logits])?;
    let s = logits.shape();
    if s.len() != 2 || s[0] == 0 || s[1] == 0 {
        shape_bail!(OP, "logits must be [N, classes], got {s:?}");
    }
    let (n, c) = (s[0], s[1]);
    if labels.len() != n {
        shape_bail!(OP, "{} labels for logits {s:?}", labels.len());
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= c) {
        arg_bail!(
            OP,
            "label {l} at position {i} is out of range for {c} classes"
        );
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        arg_bail!(
            OP,
            "label_smoothing must be in [0, 1], got {label_smoothing}"
        );
    }
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let be = logits.backend();
    let y = logits.sibling(
        be.cross_entropy_forward(logits.buf(), &labels, c, label_smoothing)?,
        vec![1],
    );
    if !needs_grad(&[logits]) {
        return Ok(y);
    }
    let ld = logits.detach();
    Ok(record(
        OP,
        &[logits],
        y,
        Box::new(move |gy| {
            let g = gy.backend().cross_entropy_backward(
                ld.buf(),
                &labels,
                c,
                label_smoothing,
                gy.buf(),
            )?;
            Ok(vec![Some(ld.sibling(g, ld.shape().to_vec()))])
        }),
    ))
}

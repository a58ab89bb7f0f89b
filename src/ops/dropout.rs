//! Inverted dropout with a seeded counter-based mask: the same (seed, element) always gives the same
//! decision on every backend, so the backward re-derives the mask instead of storing it.

use crate::autograd::{needs_grad, record};
use crate::error::{arg_bail, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

/// Training: zero each element with probability p and scale the rest by 1/(1−p). Eval: identity.
pub fn dropout(x: &Tensor, p: f32, training: bool, seed: u64) -> Result<Tensor> {
    same_device("dropout", &[x])?;
    if !(0.0..=1.0).contains(&p) {
        arg_bail!("dropout", "probability must be in [0, 1], got {p}");
    }
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    let y = x.sibling(x.backend().dropout(x.buf(), p, seed)?, x.shape().to_vec());
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    Ok(record(
        "dropout",
        &[x],
        y,
        Box::new(move |gy| {
            let gx = gy.backend().dropout(gy.buf(), p, seed)?;
            Ok(vec![Some(gy.sibling(gx, gy.shape().to_vec()))])
        }),
    ))
}

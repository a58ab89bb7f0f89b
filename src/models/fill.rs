//! Deterministic weights for the model checks: every tensor of a state dict filled from a seed by a
//! counter-based generator implemented identically here and in `tools/reference/fill.py`, so the
//! PyTorch fixtures need to store no weights, only the outputs and gradients to compare.
//!
//! Tensor `name` of `shape` gets stream s = mix(seed, fnv1a(name)) and u_i = uniform(s, i) (see
//! [`crate::rng`]); then, all in f32:
//! - `*.num_batches_tracked`: 0; `*.running_mean`: 0.2·u − 0.1; `*.running_var`: 0.5 + u;
//! - rank ≥ 2 (conv / linear weights): (2u − 1)·√(6 / fan_in), fan_in = Π shape[1..] (He-uniform);
//! - other `*.weight` (batch-norm γ): 0.5 + u; everything else (biases, β): 0.2·u − 0.1.
//!
//! Inputs: (2u − 1) on stream mix(seed, fnv1a("input")).

use crate::error::Result;
use crate::exec::Network;
use crate::rng;
use crate::tensor::Tensor;

pub use crate::rng::fnv1a;

/// The values of tensor `name` of `shape` for `seed` (see the module docs).
pub fn fill_values(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let s = rng::mix(seed, fnv1a(name));
    let u = (0..n as u64).map(move |i| rng::uniform(s, i));
    if name.ends_with("num_batches_tracked") {
        vec![0.0; n]
    } else if name.ends_with("running_mean") {
        u.map(|u| 0.2 * u - 0.1).collect()
    } else if name.ends_with("running_var") {
        u.map(|u| 0.5 + u).collect()
    } else if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        let scale = (6.0f32 / fan_in as f32).sqrt();
        u.map(|u| (2.0 * u - 1.0) * scale).collect()
    } else if name.ends_with("weight") {
        u.map(|u| 0.5 + u).collect()
    } else {
        u.map(|u| 0.2 * u - 0.1).collect()
    }
}

/// An input tensor: (2u − 1) from stream mix(seed, fnv1a("input")).
pub fn fill_input(seed: u64, shape: &[usize], device: crate::Device) -> Result<Tensor> {
    let s = rng::mix(seed, fnv1a("input"));
    let n: usize = shape.iter().product();
    Tensor::from_vec(
        (0..n as u64)
            .map(|i| 2.0 * rng::uniform(s, i) - 1.0)
            .collect(),
        shape,
        device,
    )
}

/// Overwrite every parameter and buffer of `net` with [`fill_values`].
pub fn fill_network(net: &Network, seed: u64) -> Result<()> {
    for (name, t) in net.state_dict() {
        let v = Tensor::from_vec(fill_values(seed, &name, t.shape()), t.shape(), t.device())?;
        t.assign(&v)?;
    }
    Ok(())
}

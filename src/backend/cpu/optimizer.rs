//! Fused optimiser updates: SGD and AdamW in one parallel pass over a parameter, its gradient and its
//! state (the CPU side of kernels/optimizer.cu). Each product is rounded on its own and summed as
//! `a·x + b·y`, the rounding of the chains of `axpby`s they replace, so results are unchanged bit for
//! bit; the chains read and wrote every tensor three or four times (ECO-Lite's SGD step took 127 ms
//! of a 3 s training step on two cores, docs/PERFORMANCE.md).

use rayon::prelude::*;

use super::elementwise::CHUNK;
use super::{read, storage_key, with_values_mut, CpuRead};
use crate::backend::{AdamWCoeffs, BackendBuffer, SgdUpdate};
use crate::error::{Error, Result};

pub(super) fn sgd_step(
    w: &dyn BackendBuffer,
    grad: &dyn BackendBuffer,
    momentum_buf: Option<&dyn BackendBuffer>,
    u: &SgdUpdate,
) -> Result<()> {
    let mut state: Vec<&dyn BackendBuffer> = momentum_buf.into_iter().collect();
    if u.momentum != 0.0 && state.is_empty() {
        return Err(op_error("sgd_step", "momentum without a momentum buffer"));
    }
    let g = read_grad("sgd_step", w, grad, &state)?;
    with_values_mut(w, |w| match state.pop() {
        Some(buf) => with_values_mut(buf, |buf| sgd_momentum(w, &g, buf, u)),
        None => {
            sgd_plain(w, &g, u);
            Ok(())
        }
    })?
}

pub(super) fn adamw_step(
    w: &dyn BackendBuffer,
    grad: &dyn BackendBuffer,
    m: &dyn BackendBuffer,
    v: &dyn BackendBuffer,
    c: &AdamWCoeffs,
) -> Result<()> {
    let g = read_grad("adamw_step", w, grad, &[m, v])?;
    // (the buffers are distinct, read_grad checked: nesting their locks cannot deadlock)
    with_values_mut(w, |w| {
        with_values_mut(m, |m| with_values_mut(v, |v| adamw(w, &g, m, v, c)))?
    })?
}

fn op_error(op: &str, msg: &str) -> Error {
    Error::Device(format!("{op}: {msg}"))
}

/// The gradient, read — copied where it shares values with the parameter or a state buffer, which
/// are then written — after checking that every buffer has the parameter's length and that the
/// parameter and its state buffers are distinct.
fn read_grad<'a>(
    op: &str,
    w: &dyn BackendBuffer,
    grad: &'a dyn BackendBuffer,
    state: &[&dyn BackendBuffer],
) -> Result<CpuRead<'a>> {
    let n = w.len();
    for (what, b) in std::iter::once(("gradient", grad)).chain(state.iter().map(|&b| ("state", b)))
    {
        if b.len() != n {
            return Err(Error::Shape {
                op: "optimizer step",
                msg: format!(
                    "{op}: a {what} buffer of {} values for a parameter of {n}",
                    b.len()
                ),
            });
        }
    }
    let written: Vec<_> = std::iter::once(w)
        .chain(state.iter().copied())
        .map(storage_key)
        .collect::<Result<_>>()?;
    if (1..written.len()).any(|i| written[..i].contains(&written[i])) {
        return Err(op_error(
            op,
            "the parameter and its state buffers share storage",
        ));
    }
    let g = read(grad)?;
    Ok(if written.contains(&storage_key(grad)?) {
        let copy = g.to_vec();
        super::count_alloc(copy.len()); // CpuRead::Gathered uncounts it when dropped
        CpuRead::Gathered(copy)
    } else {
        g
    })
}

/// The chunks of a parameter, its gradient and its state buffers, in parallel.
macro_rules! par_zip {
    ($first:expr $(, $rest:expr)*) => {
        $first.par_chunks_mut(CHUNK)$(.zip($rest.par_chunks_mut(CHUNK)))*
    };
}

fn sgd_plain(w: &mut [f32], g: &[f32], u: &SgdUpdate) {
    let (lr, wd) = (u.lr, u.weight_decay);
    w.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .for_each(|(w, g)| {
            with_avx2!(for (w, &g) in w.iter_mut().zip(g) {
                // d = wd·w + g only where wd ≠ 0 (0·Inf would be NaN)
                let d = if wd != 0.0 { wd * *w + g } else { g };
                *w += -lr * d;
            })
        });
}

fn sgd_momentum(w: &mut [f32], g: &[f32], buf: &mut [f32], u: &SgdUpdate) {
    let SgdUpdate {
        lr,
        momentum,
        dampening,
        weight_decay: wd,
        nesterov,
        first,
    } = *u;
    let keep = 1.0 - dampening;
    par_zip!(w, buf)
        .zip(g.par_chunks(CHUNK))
        .for_each(|((w, buf), g)| {
            with_avx2!(
                for ((w, b), &g) in w.iter_mut().zip(buf.iter_mut()).zip(g) {
                    let d = if wd != 0.0 { wd * *w + g } else { g };
                    *b = if first { d } else { keep * d + momentum * *b };
                    let d = if nesterov { momentum * *b + d } else { *b };
                    *w += -lr * d;
                }
            )
        });
}

fn adamw(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &AdamWCoeffs) {
    par_zip!(w, m, v)
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((w, m), v), g)| {
            with_avx2!(for (((w, m), v), &g) in
                w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g)
            {
                *m = c.a1 * g + c.b1 * *m;
                *v = c.a2 * (g * g) + c.b2 * *v;
                let denom = v.sqrt() * c.inv_sqrt_bc2 + c.eps;
                *w = c.neg_step * (*m / denom) + c.decay * *w;
            })
        });
}

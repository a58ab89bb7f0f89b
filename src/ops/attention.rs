//! The non-local attention primitive, channel-first as in PySlowFast's `Nonlocal`:
//! q (θ) [B, C, N], k (φ) [B, C, M], v (g) [B, Cv, M] → y [B, Cv, N] with
//! y[b, :, n] = Σ_m softmax_m(scale · θ[b, :, n]·φ[b, :, m]) g[b, :, m].
//!
//! The forward keeps only the per-query log-sum-exp; the backward recomputes the attention weights from
//! it (flash-attention's scheme), so a backend may fuse the forward without materialising N × M scores.

use crate::autograd::{needs_grad, record};
use crate::backend::AttentionGeom;
use crate::error::{shape_bail, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

/// softmax(qᵀk · scale) applied to v, see the module docs for layouts.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    const OP: &str = "attention";
    same_device(OP, &[q, k, v])?;
    let (sq, sk, sv) = (q.shape(), k.shape(), v.shape());
    if sq.len() != 3
        || sk.len() != 3
        || sv.len() != 3
        || sq[0] != sk[0]
        || sk[0] != sv[0]
        || sq[1] != sk[1]
        || sk[2] != sv[2]
        || sq.contains(&0)
        || sk.contains(&0)
        || sv.contains(&0)
    {
        shape_bail!(
            OP,
            "need q [B,C,N], k [B,C,M], v [B,Cv,M]; got q {sq:?}, k {sk:?}, v {sv:?}"
        );
    }
    let g = AttentionGeom {
        batch: sq[0],
        c: sq[1],
        n: sq[2],
        m: sk[2],
        cv: sv[1],
        scale,
    };
    let (ybuf, lse) = q
        .backend()
        .attention_forward(q.buf(), k.buf(), v.buf(), g)?;
    let y = q.sibling(ybuf, vec![g.batch, g.cv, g.n]);
    if !needs_grad(&[q, k, v]) {
        return Ok(y);
    }
    let (qd, kd, vd, yd) = (q.detach(), k.detach(), v.detach(), y.detach());
    Ok(record(
        OP,
        &[q, k, v],
        y,
        Box::new(move |gy| {
            let gr = gy.backend().attention_backward(
                qd.buf(),
                kd.buf(),
                vd.buf(),
                yd.buf(),
                &*lse,
                gy.buf(),
                g,
            )?;
            Ok(vec![
                Some(qd.sibling(gr.dq, qd.shape().to_vec())),
                Some(kd.sibling(gr.dk, kd.shape().to_vec())),
                Some(vd.sibling(gr.dv, vd.shape().to_vec())),
            ])
        }),
    ))
}

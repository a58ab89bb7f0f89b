//! matmul / batched matmul and linear (x·Wᵀ + b).

use crate::autograd::{needs_grad, record};
use crate::backend::{AxisGeom, MatmulGeom};
use crate::error::{shape_bail, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

/// [M, K] × [K, N] → [M, N], or batched [B, M, K] × [B, K, N] → [B, M, N].
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("matmul", &[a, b])?;
    let (sa, sb) = (a.shape(), b.shape());
    let ok = (sa.len() == 2 && sb.len() == 2 && sa[1] == sb[0])
        || (sa.len() == 3 && sb.len() == 3 && sa[0] == sb[0] && sa[2] == sb[1]);
    if !ok {
        shape_bail!(
            "matmul",
            "cannot multiply {sa:?} by {sb:?} (need [M,K]×[K,N] or [B,M,K]×[B,K,N])"
        );
    }
    let batched = sa.len() == 3;
    let batch = if batched { sa[0] } else { 1 };
    let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    let geom = move |m, k, n, trans_a, trans_b| MatmulGeom {
        batch,
        m,
        k,
        n,
        trans_a,
        trans_b,
    };
    let ybuf = a
        .backend()
        .matmul(a.buf(), b.buf(), geom(m, k, n, false, false))?;
    let yshape = if batched {
        vec![batch, m, n]
    } else {
        vec![m, n]
    };
    let y = a.sibling(ybuf, yshape);
    if !needs_grad(&[a, b]) {
        return Ok(y);
    }
    let (ad, bd) = (a.detach(), b.detach());
    let (need_a, need_b) = (a.requires_grad(), b.requires_grad());
    Ok(record(
        "matmul",
        &[a, b],
        y,
        Box::new(move |gy| {
            let be = gy.backend();
            // dA = dY · Bᵀ, dB = Aᵀ · dY
            let ga = need_a
                .then(|| be.matmul(gy.buf(), bd.buf(), geom(m, n, k, false, true)))
                .transpose()?
                .map(|buf| ad.sibling(buf, ad.shape().to_vec()));
            let gb = need_b
                .then(|| be.matmul(ad.buf(), gy.buf(), geom(k, m, n, true, false)))
                .transpose()?
                .map(|buf| bd.sibling(buf, bd.shape().to_vec()));
            Ok(vec![ga, gb])
        }),
    ))
}

/// y = x · wᵀ + b for x [..., in], w [out, in], b [out].
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut all = vec![x, w];
    all.extend(bias);
    same_device("linear", &all)?;
    let (sx, sw) = (x.shape(), w.shape());
    if sw.len() != 2 || sx[sx.len() - 1] != sw[1] {
        shape_bail!(
            "linear",
            "input {sx:?} does not fit weight {sw:?} (need [..., in] and [out, in])"
        );
    }
    let (fin, fout) = (sw[1], sw[0]);
    if let Some(b) = bias {
        if b.shape() != [fout] {
            shape_bail!(
                "linear",
                "bias {:?} must be [{fout}] for weight {sw:?}",
                b.shape()
            );
        }
    }
    let m = x.numel() / fin;
    let be = x.backend();
    let mut ybuf = be.matmul(
        x.buf(),
        w.buf(),
        MatmulGeom {
            batch: 1,
            m,
            k: fin,
            n: fout,
            trans_a: false,
            trans_b: true,
        },
    )?;
    let axis = AxisGeom {
        outer: m,
        axis: fout,
        inner: 1,
    };
    if let Some(b) = bias {
        ybuf = be.add_axis_bias(&*ybuf, b.buf(), axis)?;
    }
    let mut yshape = sx.to_vec();
    *yshape.last_mut().unwrap() = fout;
    let y = x.sibling(ybuf, yshape);
    if !needs_grad(&all) {
        return Ok(y);
    }
    let (xd, wd) = (x.detach(), w.detach());
    let (need_x, need_w) = (x.requires_grad(), w.requires_grad());
    let b_state = bias.map(|b| b.requires_grad());
    Ok(record(
        "linear",
        &all,
        y,
        Box::new(move |gy| {
            let be = gy.backend();
            let geom = move |m, k, n, trans_a| MatmulGeom {
                batch: 1,
                m,
                k,
                n,
                trans_a,
                trans_b: false,
            };
            // dX = dY · W, dW = dYᵀ · X, db = Σ_rows dY
            let gx = need_x
                .then(|| be.matmul(gy.buf(), wd.buf(), geom(m, fout, fin, false)))
                .transpose()?
                .map(|buf| xd.sibling(buf, xd.shape().to_vec()));
            let gw = need_w
                .then(|| be.matmul(gy.buf(), xd.buf(), geom(fout, m, fin, true)))
                .transpose()?
                .map(|buf| wd.sibling(buf, wd.shape().to_vec()));
            let mut out = vec![gx, gw];
            if let Some(need_b) = b_state {
                out.push(
                    need_b
                        .then(|| be.sum_to_axis(gy.buf(), axis))
                        .transpose()?
                        .map(|buf| gy.sibling(buf, vec![fout])),
                );
            }
            Ok(out)
        }),
    ))
}

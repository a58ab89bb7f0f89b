//! Attention (kernels/attention.cu): a fused forward; the backward recomputes the probabilities and
//! runs on the batched GEMM.

use super::gemm::gemm_into;
// Attention's products stay FP32 (the CPU backend's attention does not round yet).
use super::launch::blocks;
use super::{i32_of, out, ptr, CudaBackend, LaunchConfig};
use crate::backend::{AttentionGeom, AttentionGrads, BackendBuffer, BufferRef, MatmulGeom};
use crate::error::{Error, Result};
use crate::math_mode::MathMode;

pub(super) fn forward(
    be: &CudaBackend,
    q: &dyn BackendBuffer,
    k: &dyn BackendBuffer,
    v: &dyn BackendBuffer,
    g: AttentionGeom,
) -> Result<(BufferRef, BufferRef)> {
    i32_of(g.batch * g.c * g.n.max(g.m), "attention input")?;
    i32_of(g.batch * g.cv * g.n.max(g.m), "attention values")?;
    if g.m == 0 && g.batch * g.n > 0 {
        // A softmax over no keys (the ops reject it; the CPU backend cannot take it either).
        return Err(Error::Device("cuda: attention over zero keys".into()));
    }
    let y = be.alloc(g.batch * g.cv * g.n)?;
    let lse = be.alloc(g.batch * g.n)?;
    // cv == 0 still launches (one column tile, every y store masked): lse must be written.
    if g.batch > 0 && g.n > 0 && g.m > 0 {
        if g.batch > 65535 || g.cv.div_ceil(64) > 65535 {
            return Err(Error::Device("cuda: attention grid too large".into()));
        }
        be.launch(
            "attention",
            "attn_forward",
            LaunchConfig::new(
                (blocks(g.n, 64), blocks(g.cv, 64), g.batch as u32),
                (256, 1, 1),
            ),
            kargs![
                y.ptr,
                lse.ptr,
                ptr(q)?,
                ptr(k)?,
                ptr(v)?,
                g.c as i32,
                g.cv as i32,
                g.n as i32,
                g.m as i32,
                g.scale
            ],
        )?;
    }
    Ok((out(y), out(lse)))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    be: &CudaBackend,
    q: &dyn BackendBuffer,
    k: &dyn BackendBuffer,
    v: &dyn BackendBuffer,
    y: &dyn BackendBuffer,
    lse: &dyn BackendBuffer,
    dy: &dyn BackendBuffer,
    g: AttentionGeom,
) -> Result<AttentionGrads> {
    let (b, n, m, c, cv) = (g.batch, g.n, g.m, g.c, g.cv);
    let dq = be.zeros(b * c * n)?;
    let dk = be.zeros(b * c * m)?;
    let dv = be.zeros(b * cv * m)?;
    if b == 0 || n == 0 || m == 0 {
        return Ok(AttentionGrads {
            dq: out(dq),
            dk: out(dk),
            dv: out(dv),
        });
    }
    // The saved lse is not used: like the CPU backend, P is renormalised with each row's own max
    // and sum (exp(s − lse) with an f32 lse is off by a factor e^ulp(lse) when |s| is large).
    let _ = lse;
    let (qp, kp, vp, yp, dyp) = (ptr(q)?, ptr(k)?, ptr(v)?, ptr(y)?, ptr(dy)?);
    let rows = b * n;
    i32_of(rows * m, "attention scores")?;
    // P = softmax_m(scale·qᵀk)   [B, N, M]
    let p = be.alloc(rows * m)?;
    gemm_into(
        be,
        p.ptr,
        qp,
        kp,
        MatmulGeom {
            batch: b,
            m: n,
            k: c,
            n: m,
            trans_a: true,
            trans_b: false,
        },
        MathMode::Fp32,
    )?;
    be.launch1(
        "attention",
        "attn_probs",
        rows * 32,
        kargs![p.ptr, rows as i32, m as i32, g.scale],
    )?;
    // dv = dy·P                   [B, Cv, M]
    gemm_into(
        be,
        dv.ptr,
        dyp,
        p.ptr,
        MatmulGeom {
            batch: b,
            m: cv,
            k: n,
            n: m,
            trans_a: false,
            trans_b: false,
        },
        MathMode::Fp32,
    )?;
    // dP = dyᵀ·v                  [B, N, M], then dS in place
    let ds = be.alloc(rows * m)?;
    gemm_into(
        be,
        ds.ptr,
        dyp,
        vp,
        MatmulGeom {
            batch: b,
            m: n,
            k: cv,
            n: m,
            trans_a: true,
            trans_b: false,
        },
        MathMode::Fp32,
    )?;
    let d = be.alloc(rows)?;
    be.launch1(
        "attention",
        "attn_rowdot",
        rows,
        kargs![d.ptr, dyp, yp, b as i32, cv as i32, n as i32],
    )?;
    be.launch1(
        "attention",
        "attn_dscores",
        rows * m,
        kargs![ds.ptr, p.ptr, d.ptr, rows as i32, m as i32, g.scale],
    )?;
    // dq = k·dSᵀ, dk = q·dS
    gemm_into(
        be,
        dq.ptr,
        kp,
        ds.ptr,
        MatmulGeom {
            batch: b,
            m: c,
            k: m,
            n,
            trans_a: false,
            trans_b: true,
        },
        MathMode::Fp32,
    )?;
    gemm_into(
        be,
        dk.ptr,
        qp,
        ds.ptr,
        MatmulGeom {
            batch: b,
            m: c,
            k: n,
            n: m,
            trans_a: false,
            trans_b: false,
        },
        MathMode::Fp32,
    )?;
    Ok(AttentionGrads {
        dq: out(dq),
        dk: out(dk),
        dv: out(dv),
    })
}

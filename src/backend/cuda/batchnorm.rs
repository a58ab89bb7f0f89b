//! Batch normalisation (kernels/batchnorm.cu): split per-channel statistics, then elementwise passes.
//! The fused BN → ReLU (training) applies ReLU in `bn_forward` and masks dy in both backward passes,
//! by the saved output or by v = x·scale + shift recomputed from x (`MaskFrom::Input`). The forward's
//! y and the backward's dy may be rows of a wider buffer (a concat's output and its gradient, the
//! executor's concat without copies): both kernels take the distance between rows.

use super::launch::{channel_splits, BLOCK};
use super::{opt_ptr, out, ptr, rows, CudaBackend, LaunchConfig};
use crate::backend::{AxisGeom, BackendBuffer, BnGrads, BnStats, BufferRef, MaskFrom};
use crate::error::Result;

pub(super) fn train(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    weight: Option<&dyn BackendBuffer>,
    bias: Option<&dyn BackendBuffer>,
    g: AxisGeom,
    eps: f32,
    relu: bool,
) -> Result<(BufferRef, BnStats)> {
    let y = be.alloc(x.len())?;
    let row = g.axis * g.inner;
    let stats = train_into(be, x, weight, bias, g, eps, relu, (y.ptr, row))?;
    Ok((out(y), stats))
}

/// [`train`] with y written to `y` = (the address of row 0, the distance between rows in values):
/// its own block, or a producer's slice of a concat's output (a [`super::CudaView`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn train_into(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    weight: Option<&dyn BackendBuffer>,
    bias: Option<&dyn BackendBuffer>,
    g: AxisGeom,
    eps: f32,
    relu: bool,
    (yp, ldy): (u64, usize),
) -> Result<BnStats> {
    let n = x.len();
    let (mean, var) = (be.alloc(g.axis)?, be.alloc(g.axis)?);
    if g.axis == 0 {
        return Ok(BnStats {
            mean: out(mean),
            var: out(var),
        });
    }
    let count = g.outer * g.inner;
    let s = channel_splits(g.axis, count, be.sm_count);
    // (count, mean, M2, non-finite flags) per (channel, split)
    let ws = be.alloc(4 * g.axis * s as usize)?;
    let (o, a, i) = (g.outer as i32, g.axis as i32, g.inner as i32);
    let xp = ptr(x)?;
    be.launch(
        "batchnorm",
        "bn_stats_partial",
        LaunchConfig::new((g.axis as u32, s, 1), (BLOCK, 1, 1)),
        kargs![xp, o, a, i, ws.ptr],
    )?;
    be.launch1(
        "batchnorm",
        "bn_stats_final",
        g.axis,
        kargs![ws.ptr, a, s as i32, mean.ptr, var.ptr],
    )?;
    if n > 0 {
        let (wp, bp) = (opt_ptr(weight)?, opt_ptr(bias)?);
        be.launch1(
            "batchnorm",
            "bn_forward",
            n,
            kargs![
                yp,
                ldy as i32,
                xp,
                wp,
                bp,
                mean.ptr,
                var.ptr,
                n as i32,
                a,
                i,
                eps,
                relu as i32
            ],
        )?;
    }
    Ok(BnStats {
        mean: out(mean),
        var: out(var),
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn eval(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    weight: Option<&dyn BackendBuffer>,
    bias: Option<&dyn BackendBuffer>,
    mean: &dyn BackendBuffer,
    var: &dyn BackendBuffer,
    g: AxisGeom,
    eps: f32,
) -> Result<BufferRef> {
    let n = x.len();
    let y = be.alloc(n)?;
    if n > 0 {
        let (wp, bp) = (opt_ptr(weight)?, opt_ptr(bias)?);
        be.launch1(
            "batchnorm",
            "bn_forward",
            n,
            kargs![
                y.ptr,
                (g.axis * g.inner) as i32,
                ptr(x)?,
                wp,
                bp,
                ptr(mean)?,
                ptr(var)?,
                n as i32,
                g.axis as i32,
                g.inner as i32,
                eps,
                0i32
            ],
        )?;
    }
    Ok(out(y))
}

/// Gradients of either mode ([`crate::backend::Backend::batch_norm_backward`]), dy masked for a fused
/// ReLU as `mask` says.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    be: &CudaBackend,
    dy: &dyn BackendBuffer,
    x: &dyn BackendBuffer,
    weight: Option<&dyn BackendBuffer>,
    (mean, var): (&dyn BackendBuffer, &dyn BackendBuffer),
    g: AxisGeom,
    eps: f32,
    batch_stats: bool,
    mask: MaskFrom,
) -> Result<BnGrads> {
    let n = x.len();
    let (dw, db) = (be.zeros(g.axis)?, be.zeros(g.axis)?);
    let dx = be.alloc(n)?;
    let count = g.outer * g.inner;
    if g.axis > 0 && count > 0 {
        let s = channel_splits(g.axis, count, be.sm_count);
        let ws = be.alloc(4 * g.axis * s as usize)?;
        let (o, a, i) = (g.outer as i32, g.axis as i32, g.inner as i32);
        // dy may be a piece of a written concat's gradient: read in place, rows ld_dy apart
        let (dyp, ld_dy) = rows(dy, g.outer, g.axis * g.inner)?;
        let (xp, mp, vp, wp) = (ptr(x)?, ptr(mean)?, ptr(var)?, opt_ptr(weight)?);
        let ld_dy = ld_dy as i32;
        // The kernels' mask arguments: the saved output, or x's mask flag and the forward's bias.
        let (ryp, mask_x, bp) = match mask {
            MaskFrom::Nothing => (0, 0i32, 0),
            MaskFrom::Output(y) => (ptr(y)?, 0, 0),
            MaskFrom::Input(bias) => (0, 1, opt_ptr(bias)?),
        };
        be.launch(
            "batchnorm",
            "bn_backward_partial",
            LaunchConfig::new((g.axis as u32, s, 1), (BLOCK, 1, 1)),
            kargs![dyp, ld_dy, xp, mp, ryp, wp, bp, vp, eps, mask_x, o, a, i, ws.ptr],
        )?;
        be.launch1(
            "batchnorm",
            "bn_backward_final",
            g.axis,
            kargs![ws.ptr, vp, a, s as i32, eps, dw.ptr, db.ptr],
        )?;
        be.launch1(
            "batchnorm",
            "bn_backward_dx",
            n,
            kargs![
                dx.ptr,
                dyp,
                ld_dy,
                ryp,
                xp,
                wp,
                bp,
                mask_x,
                mp,
                vp,
                dw.ptr,
                db.ptr,
                n as i32,
                a,
                i,
                eps,
                count as f32,
                batch_stats as i32
            ],
        )?;
    }
    Ok(BnGrads {
        dx: out(dx),
        dweight: out(dw),
        dbias: out(db),
    })
}

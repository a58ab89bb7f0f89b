//! Matrix products (kernels/gemm.cu): one batched, 64×64-tiled GEMM with either operand transposed, in
//! FP32 or (per the math mode) on TF32/BF16 tensor cores.

use super::launch::gemm_tiles;
use super::{i32_of, out, ptr, CudaBackend, LaunchConfig};
use crate::backend::{BackendBuffer, BufferRef, MatmulGeom};
use crate::error::{Error, Result};
use crate::math_mode::{math_mode_on, Hardware, MathMode};

/// Batched C = op(A)·op(B) into an existing buffer (see kernels/gemm.cu).
/// `mode` picks the kernel: FP32 on CUDA cores, or TF32/BF16 on tensor cores (same block tiles).
pub(super) fn gemm_into(
    be: &CudaBackend,
    c: u64,
    a: u64,
    b: u64,
    g: MatmulGeom,
    mode: MathMode,
) -> Result<()> {
    let MatmulGeom {
        batch,
        m,
        k,
        n,
        trans_a,
        trans_b,
    } = g;
    if batch == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // C holds batch·m·n floats.
        return be.driver.memset_d8(c, 0, batch * m * n * 4);
    }
    i32_of(batch * m * k, "matmul lhs")?;
    i32_of(batch * k * n, "matmul rhs")?;
    i32_of(batch * m * n, "matmul output")?;
    let (mi, ni, ki, ta, tb) = (m as i32, n as i32, k as i32, trans_a as i32, trans_b as i32);
    let tiles = gemm_tiles(m, n)
        .ok_or_else(|| Error::Device(format!("cuda: matmul of {m}×{n} has too many tiles")))?;
    let (kernel, threads) = match mode {
        MathMode::Fp32 => ("gemm_batched", 256),
        MathMode::Tf32 => ("gemm_batched_tf32", 128),
        MathMode::Bf16 => ("gemm_batched_bf16", 128),
    };
    let mut b0 = 0;
    while b0 < batch {
        let nb = (batch - b0).min(65535);
        let (cp, ap, bp) = (
            c + (b0 * m * n * 4) as u64,
            a + (b0 * m * k * 4) as u64,
            b + (b0 * k * n * 4) as u64,
        );
        be.launch(
            "gemm",
            kernel,
            LaunchConfig::new((tiles, 1, nb as u32), (threads, 1, 1)),
            kargs![cp, ap, bp, mi, ni, ki, ta, tb],
        )?;
        b0 += nb;
    }
    Ok(())
}

pub(super) fn matmul(
    be: &CudaBackend,
    a: &dyn BackendBuffer,
    b: &dyn BackendBuffer,
    g: MatmulGeom,
) -> Result<BufferRef> {
    let c = be.alloc(g.batch * g.m * g.n)?;
    gemm_into(
        be,
        c.ptr,
        ptr(a)?,
        ptr(b)?,
        g,
        math_mode_on(Hardware::Cuda)?,
    )?;
    Ok(out(c))
}

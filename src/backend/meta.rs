//! The meta backend: buffers with a length and no data, kernels that only compute output lengths.
//!
//! Running the ordinary ops on meta tensors performs every shape check and infers every shape of a
//! network without touching data, through exactly the code that real execution uses (see `graph`).

use std::any::Any;
use std::sync::Arc;

use super::*;
use crate::error::{Error, Result};

#[derive(Debug)]
struct MetaBuffer(usize);

impl BackendBuffer for MetaBuffer {
    fn len(&self) -> usize {
        self.0
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn buf(len: usize) -> Result<BufferRef> {
    Ok(Arc::new(MetaBuffer(len)))
}

/// Shape-only backend; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetaBackend;

impl Backend for MetaBackend {
    fn name(&self) -> String {
        "meta".into()
    }
    fn memory_in_use(&self) -> usize {
        0
    }
    fn memory_peak(&self) -> usize {
        0
    }
    fn reset_memory_peak(&self) {}

    fn from_host(&self, data: &[f32]) -> Result<BufferRef> {
        buf(data.len())
    }
    fn to_host(&self, _x: &dyn BackendBuffer) -> Result<Vec<f32>> {
        Err(Error::Device(
            "meta tensors carry shapes only; there are no values to read".into(),
        ))
    }
    fn full(&self, len: usize, _value: f32) -> Result<BufferRef> {
        buf(len)
    }
    fn copy(&self, x: &dyn BackendBuffer) -> Result<BufferRef> {
        buf(x.len())
    }
    fn copy_into(&self, _dst: &dyn BackendBuffer, _src: &dyn BackendBuffer) -> Result<()> {
        Ok(())
    }
    fn unary(&self, x: &dyn BackendBuffer, _op: UnaryOp) -> Result<BufferRef> {
        buf(x.len())
    }
    fn binary(
        &self,
        a: &dyn BackendBuffer,
        _b: &dyn BackendBuffer,
        _op: BinaryOp,
    ) -> Result<BufferRef> {
        buf(a.len())
    }
    fn relu_backward(&self, y: &dyn BackendBuffer, _dy: &dyn BackendBuffer) -> Result<BufferRef> {
        buf(y.len())
    }
    fn relu_in_place(&self, _x: &dyn BackendBuffer) -> Result<()> {
        Ok(())
    }
    fn add_relu_in_place(&self, _a: &dyn BackendBuffer, _b: &dyn BackendBuffer) -> Result<()> {
        Ok(())
    }
    fn sgd_step(
        &self,
        _w: &dyn BackendBuffer,
        _grad: &dyn BackendBuffer,
        _momentum_buf: Option<&dyn BackendBuffer>,
        _u: &SgdUpdate,
    ) -> Result<()> {
        Ok(())
    }
    fn adamw_step(
        &self,
        _w: &dyn BackendBuffer,
        _grad: &dyn BackendBuffer,
        _m: &dyn BackendBuffer,
        _v: &dyn BackendBuffer,
        _c: &AdamWCoeffs,
    ) -> Result<()> {
        Ok(())
    }
    fn axpby(
        &self,
        _y: &dyn BackendBuffer,
        _a: f32,
        _x: &dyn BackendBuffer,
        _b: f32,
    ) -> Result<()> {
        Ok(())
    }
    fn sum_all(&self, _x: &dyn BackendBuffer) -> Result<BufferRef> {
        buf(1)
    }
    fn broadcast_scalar(
        &self,
        _s: &dyn BackendBuffer,
        len: usize,
        _scale: f32,
    ) -> Result<BufferRef> {
        buf(len)
    }
    fn sum_to_axis(&self, _x: &dyn BackendBuffer, g: AxisGeom) -> Result<BufferRef> {
        buf(g.axis)
    }
    fn add_axis_bias(
        &self,
        x: &dyn BackendBuffer,
        _b: &dyn BackendBuffer,
        _g: AxisGeom,
    ) -> Result<BufferRef> {
        buf(x.len())
    }
    fn dropout(&self, x: &dyn BackendBuffer, _p: f32, _seed: u64) -> Result<BufferRef> {
        buf(x.len())
    }
    fn conv_forward(
        &self,
        _x: &dyn BackendBuffer,
        _w: &dyn BackendBuffer,
        _b: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        buf(g.n * g.c_out * g.output_volume())
    }
    fn conv_forward_relu(
        &self,
        _x: &dyn BackendBuffer,
        _w: &dyn BackendBuffer,
        _b: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        buf(g.n * g.c_out * g.output_volume())
    }
    fn conv_backward_data(
        &self,
        _dy: &dyn BackendBuffer,
        _w: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        buf(g.n * g.c_in * g.input_volume())
    }
    fn conv_backward_weight(
        &self,
        _x: &dyn BackendBuffer,
        _dy: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        buf(g.c_out * g.in_per_group() * g.kernel_volume())
    }
    fn batch_norm_train(
        &self,
        x: &dyn BackendBuffer,
        _w: Option<&dyn BackendBuffer>,
        _b: Option<&dyn BackendBuffer>,
        g: AxisGeom,
        _eps: f32,
        _relu: bool,
    ) -> Result<(BufferRef, BnStats)> {
        Ok((
            buf(x.len())?,
            BnStats {
                mean: buf(g.axis)?,
                var: buf(g.axis)?,
            },
        ))
    }
    fn batch_norm_eval(
        &self,
        x: &dyn BackendBuffer,
        _w: Option<&dyn BackendBuffer>,
        _b: Option<&dyn BackendBuffer>,
        _mean: &dyn BackendBuffer,
        _var: &dyn BackendBuffer,
        _g: AxisGeom,
        _eps: f32,
    ) -> Result<BufferRef> {
        buf(x.len())
    }
    fn batch_norm_backward(
        &self,
        _dy: &dyn BackendBuffer,
        x: &dyn BackendBuffer,
        _w: Option<&dyn BackendBuffer>,
        _mean: &dyn BackendBuffer,
        _var: &dyn BackendBuffer,
        g: AxisGeom,
        _eps: f32,
        _batch_stats: bool,
        _relu_y: Option<&dyn BackendBuffer>,
    ) -> Result<BnGrads> {
        Ok(BnGrads {
            dx: buf(x.len())?,
            dweight: buf(g.axis)?,
            dbias: buf(g.axis)?,
        })
    }
    fn max_pool_forward(&self, _x: &dyn BackendBuffer, g: &PoolGeom) -> Result<BufferRef> {
        buf(g.planes * g.output.iter().product::<usize>())
    }
    fn max_pool_forward_argmax(
        &self,
        _x: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<(BufferRef, BufferRef)> {
        Ok((buf(g.output_len())?, buf(g.argmax_words())?))
    }
    fn max_pool_backward(
        &self,
        _argmax: &dyn BackendBuffer,
        _dy: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<BufferRef> {
        buf(g.planes * g.input.iter().product::<usize>())
    }
    fn avg_pool_forward(
        &self,
        _x: &dyn BackendBuffer,
        g: &PoolGeom,
        _cip: bool,
    ) -> Result<BufferRef> {
        buf(g.planes * g.output.iter().product::<usize>())
    }
    fn avg_pool_backward(
        &self,
        _dy: &dyn BackendBuffer,
        g: &PoolGeom,
        _cip: bool,
    ) -> Result<BufferRef> {
        buf(g.planes * g.input.iter().product::<usize>())
    }
    fn adaptive_avg_pool_forward(
        &self,
        _x: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef> {
        buf(g.planes * g.output.iter().product::<usize>())
    }
    fn adaptive_avg_pool_backward(
        &self,
        _dy: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef> {
        buf(g.planes * g.input.iter().product::<usize>())
    }
    fn upsample_trilinear_forward(
        &self,
        _x: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef> {
        buf(g.planes * g.output.iter().product::<usize>())
    }
    fn upsample_trilinear_backward(
        &self,
        _dy: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef> {
        buf(g.planes * g.input.iter().product::<usize>())
    }
    fn softmax_forward(
        &self,
        x: &dyn BackendBuffer,
        _g: AxisGeom,
        _log: bool,
    ) -> Result<BufferRef> {
        buf(x.len())
    }
    fn softmax_backward(
        &self,
        y: &dyn BackendBuffer,
        _dy: &dyn BackendBuffer,
        _g: AxisGeom,
        _log: bool,
    ) -> Result<BufferRef> {
        buf(y.len())
    }
    fn cross_entropy_forward(
        &self,
        _l: &dyn BackendBuffer,
        _labels: &[u32],
        _c: usize,
        _s: f32,
    ) -> Result<BufferRef> {
        buf(1)
    }
    fn cross_entropy_backward(
        &self,
        logits: &dyn BackendBuffer,
        _labels: &[u32],
        _c: usize,
        _s: f32,
        _dloss: &dyn BackendBuffer,
    ) -> Result<BufferRef> {
        buf(logits.len())
    }
    fn matmul(
        &self,
        _a: &dyn BackendBuffer,
        _b: &dyn BackendBuffer,
        g: MatmulGeom,
    ) -> Result<BufferRef> {
        buf(g.batch * g.m * g.n)
    }
    fn attention_forward(
        &self,
        _q: &dyn BackendBuffer,
        _k: &dyn BackendBuffer,
        _v: &dyn BackendBuffer,
        g: AttentionGeom,
    ) -> Result<(BufferRef, BufferRef)> {
        Ok((buf(g.batch * g.cv * g.n)?, buf(g.batch * g.n)?))
    }
    fn attention_backward(
        &self,
        q: &dyn BackendBuffer,
        k: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        _y: &dyn BackendBuffer,
        _lse: &dyn BackendBuffer,
        _dy: &dyn BackendBuffer,
        _g: AttentionGeom,
    ) -> Result<AttentionGrads> {
        Ok(AttentionGrads {
            dq: buf(q.len())?,
            dk: buf(k.len())?,
            dv: buf(v.len())?,
        })
    }
    fn permute(
        &self,
        x: &dyn BackendBuffer,
        _shape: &[usize],
        _perm: &[usize],
    ) -> Result<BufferRef> {
        buf(x.len())
    }
    fn concat(
        &self,
        _xs: &[&dyn BackendBuffer],
        outer: usize,
        inners: &[usize],
    ) -> Result<BufferRef> {
        buf(outer * inners.iter().sum::<usize>())
    }
    fn split(&self, _x: &BufferRef, outer: usize, inners: &[usize]) -> Result<Vec<BufferRef>> {
        inners.iter().map(|&i| buf(outer * i)).collect()
    }
}

//! One kernel call at one geometry: its input buffers and the backend calls of each pass, made exactly
//! as the ops make them (src/ops/*.rs), straight on the [`Backend`] so nothing but the kernels is timed.

use vidgrad::backend::{AxisGeom, Backend, BinaryOp, BufferRef, MatmulGeom, UnaryOp};
use vidgrad::bench::{Kernel, Pass};
use vidgrad::Result;

/// Host-side pseudo-random values (uniform in [-1, 1)), cycled from a fixed pool so that filling
/// gigabytes of inputs stays cheap.
pub struct Noise {
    pool: Vec<f32>,
    pos: usize,
}

impl Noise {
    pub fn new(seed: u64) -> Noise {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let pool = (0..(1 << 20) + 7)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Noise { pool, pos: 0 }
    }

    /// `len` values a·u + b.
    pub fn take(&mut self, len: usize, a: f32, b: f32) -> Vec<f32> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let start = self.pos % self.pool.len();
            let n = (len - v.len()).min(self.pool.len() - start);
            v.extend(self.pool[start..start + n].iter().map(|u| a * u + b));
            self.pos = start + n + 7; // a different phase next time
        }
        v
    }
}

/// The buffers one run of a kernel reads.
pub struct Set {
    bufs: Vec<BufferRef>,
    labels: Vec<u32>,
}

impl Set {
    pub fn bytes(&self) -> usize {
        self.bufs.iter().map(|b| b.len() * 4).sum()
    }
    /// An independent copy on the device (for input rotation).
    pub fn copy(&self, be: &dyn Backend) -> Result<Set> {
        Ok(Set {
            bufs: self
                .bufs
                .iter()
                .map(|b| be.copy(&**b))
                .collect::<Result<_>>()?,
            labels: self.labels.clone(),
        })
    }
    fn b(&self, i: usize) -> &dyn vidgrad::backend::BackendBuffer {
        &*self.bufs[i]
    }
}

const DROPOUT_SEED: u64 = 7;

/// Make the inputs of `k` (and, where a backward reads the forward's results, run the forward once).
pub fn make_set(be: &dyn Backend, k: &Kernel, noise: &mut Noise) -> Result<Set> {
    let mut up = |len: usize, a: f32, b: f32| be.from_host(&noise.take(len, a, b));
    let mut labels = vec![];
    let bufs = match k {
        Kernel::Conv { g, bias, .. } => {
            let mut v = vec![
                up(g.n * g.c_in * g.input_volume(), 1.0, 0.0)?,
                up(g.c_out * g.in_per_group() * g.kernel_volume(), 0.05, 0.0)?,
                up(g.n * g.c_out * g.output_volume(), 1.0, 0.0)?,
            ];
            if *bias {
                v.push(up(g.c_out, 0.1, 0.0)?);
            }
            v
        }
        Kernel::BatchNorm { g, .. } => vec![
            up(g.numel(), 1.0, 0.0)?,
            up(g.axis, 0.1, 1.0)?,
            up(g.axis, 0.1, 0.0)?,
            up(g.axis, 0.1, 0.0)?,
            up(g.axis, 0.25, 1.0)?, // variance > 0
            up(g.numel(), 1.0, 0.0)?,
        ],
        Kernel::MaxPool { g, .. } => {
            let x = up(g.planes * g.input.iter().product::<usize>(), 1.0, 0.0)?;
            let dy = up(g.output_len(), 1.0, 0.0)?;
            let (_, argmax) = be.max_pool_forward_argmax(&*x, g)?;
            vec![x, dy, argmax]
        }
        Kernel::AvgPool { g, .. } => vec![
            up(g.planes * g.input.iter().product::<usize>(), 1.0, 0.0)?,
            up(g.planes * g.output.iter().product::<usize>(), 1.0, 0.0)?,
        ],
        Kernel::AdaptiveAvgPool { g, .. } => vec![
            up(g.planes * g.input.iter().product::<usize>(), 1.0, 0.0)?,
            up(g.planes * g.output.iter().product::<usize>(), 1.0, 0.0)?,
        ],
        Kernel::Relu { n } => {
            let x = up(*n, 1.0, 0.0)?;
            let y = be.unary(&*x, UnaryOp::Relu)?;
            vec![x, y, up(*n, 1.0, 0.0)?]
        }
        Kernel::Add { n } => vec![up(*n, 1.0, 0.0)?, up(*n, 1.0, 0.0)?],
        Kernel::Scale { n, .. } | Kernel::Dropout { n, .. } => vec![up(*n, 1.0, 0.0)?],
        Kernel::Softmax { g, .. } => {
            let x = up(g.numel(), 2.0, 0.0)?;
            let y = be.softmax_forward(&*x, *g, false)?;
            vec![x, y, up(g.numel(), 1.0, 0.0)?]
        }
        Kernel::Linear { m, k, n, bias } => {
            let mut v = vec![
                up(m * k, 1.0, 0.0)?,
                up(n * k, 0.05, 0.0)?,
                up(m * n, 1.0, 0.0)?,
            ];
            if *bias {
                v.push(up(*n, 0.1, 0.0)?);
            }
            v
        }
        Kernel::MatMul(g) => vec![
            up(g.batch * g.m * g.k, 1.0, 0.0)?,
            up(g.batch * g.k * g.n, 1.0, 0.0)?,
            up(g.batch * g.m * g.n, 1.0, 0.0)?,
        ],
        Kernel::Attention(g) => {
            let q = up(g.batch * g.c * g.n, 1.0, 0.0)?;
            let kk = up(g.batch * g.c * g.m, 1.0, 0.0)?;
            let v = up(g.batch * g.cv * g.m, 1.0, 0.0)?;
            let (y, lse) = be.attention_forward(&*q, &*kk, &*v, *g)?;
            let dy = up(g.batch * g.cv * g.n, 1.0, 0.0)?;
            vec![q, kk, v, y, lse, dy]
        }
        Kernel::Upsample(g) => vec![
            up(g.planes * g.input.iter().product::<usize>(), 1.0, 0.0)?,
            up(g.planes * g.output.iter().product::<usize>(), 1.0, 0.0)?,
        ],
        Kernel::Concat { outer, inners, .. } => {
            let mut v: Vec<BufferRef> = inners
                .iter()
                .map(|i| up(outer * i, 1.0, 0.0))
                .collect::<Result<_>>()?;
            let refs: Vec<&dyn vidgrad::backend::BackendBuffer> = v.iter().map(|b| &**b).collect();
            let y = be.concat(&refs, *outer, inners)?;
            v.push(y);
            v
        }
        Kernel::Permute { shape, .. } => {
            let n = shape.iter().product();
            vec![up(n, 1.0, 0.0)?, up(n, 1.0, 0.0)?]
        }
        Kernel::CrossEntropy { n, classes } => {
            labels = (0..*n).map(|i| ((i * 7919) % classes) as u32).collect();
            vec![up(n * classes, 2.0, 0.0)?, be.full(1, 1.0)?]
        }
    };
    Ok(Set { bufs, labels })
}

/// Run one pass of `k` on `s`; outputs are dropped (returned to the allocator) at once.
pub fn run(be: &dyn Backend, k: &Kernel, s: &Set, pass: Pass) -> Result<()> {
    use Pass::*;
    match (k, pass) {
        (Kernel::Conv { g, bias, .. }, Fwd) => {
            let b = bias.then(|| s.b(3));
            be.conv_forward(s.b(0), s.b(1), b, g)?;
        }
        (Kernel::Conv { g, .. }, Dgrad) => {
            be.conv_backward_data(s.b(2), s.b(1), g)?;
        }
        (Kernel::Conv { g, bias, .. }, Wgrad) => {
            be.conv_backward_weight(s.b(0), s.b(2), g)?;
            if *bias {
                let ag = AxisGeom {
                    outer: g.n,
                    axis: g.c_out,
                    inner: g.output_volume(),
                };
                be.sum_to_axis(s.b(2), ag)?;
            }
        }
        (Kernel::BatchNorm { g, eps, .. }, Fwd) => {
            be.batch_norm_train(s.b(0), Some(s.b(1)), Some(s.b(2)), *g, *eps, false)?;
        }
        (Kernel::BatchNorm { g, eps, .. }, FwdEval) => {
            be.batch_norm_eval(s.b(0), Some(s.b(1)), Some(s.b(2)), s.b(3), s.b(4), *g, *eps)?;
        }
        (Kernel::BatchNorm { g, eps, .. }, Bwd) => {
            be.batch_norm_backward(
                s.b(5),
                s.b(0),
                Some(s.b(1)),
                s.b(3),
                s.b(4),
                *g,
                *eps,
                true,
                None,
            )?;
        }
        (Kernel::MaxPool { g, .. }, Fwd) => {
            be.max_pool_forward_argmax(s.b(0), g)?;
        }
        (Kernel::MaxPool { g, .. }, FwdEval) => {
            be.max_pool_forward(s.b(0), g)?;
        }
        (Kernel::MaxPool { g, .. }, Bwd) => {
            be.max_pool_backward(s.b(2), s.b(1), g)?;
        }
        (
            Kernel::AvgPool {
                g,
                count_include_pad,
                ..
            },
            Fwd,
        ) => {
            be.avg_pool_forward(s.b(0), g, *count_include_pad)?;
        }
        (
            Kernel::AvgPool {
                g,
                count_include_pad,
                ..
            },
            Bwd,
        ) => {
            be.avg_pool_backward(s.b(1), g, *count_include_pad)?;
        }
        (Kernel::AdaptiveAvgPool { g, .. }, Fwd) => {
            be.adaptive_avg_pool_forward(s.b(0), g)?;
        }
        (Kernel::AdaptiveAvgPool { g, .. }, Bwd) => {
            be.adaptive_avg_pool_backward(s.b(1), g)?;
        }
        (Kernel::Relu { .. }, Fwd) => {
            be.unary(s.b(0), UnaryOp::Relu)?;
        }
        (Kernel::Relu { .. }, Bwd) => {
            be.relu_backward(s.b(1), s.b(2))?;
        }
        (Kernel::Add { .. }, Fwd) => {
            be.binary(s.b(0), s.b(1), BinaryOp::Add)?;
        }
        (Kernel::Scale { s: f, .. }, Fwd) => {
            be.unary(s.b(0), UnaryOp::Scale(*f))?;
        }
        (Kernel::Dropout { p, .. }, Fwd) => {
            be.dropout(s.b(0), *p, DROPOUT_SEED)?;
        }
        (Kernel::Softmax { g, .. }, Fwd) => {
            be.softmax_forward(s.b(0), *g, false)?;
        }
        (Kernel::Softmax { g, .. }, Bwd) => {
            be.softmax_backward(s.b(1), s.b(2), *g, false)?;
        }
        (Kernel::Linear { m, k, n, bias }, Fwd) => {
            let y = be.matmul(s.b(0), s.b(1), mm(*m, *k, *n, false, true))?;
            if *bias {
                let ag = AxisGeom {
                    outer: *m,
                    axis: *n,
                    inner: 1,
                };
                be.add_axis_bias(&*y, s.b(3), ag)?;
            }
        }
        (Kernel::Linear { m, k, n, .. }, Dgrad) => {
            // dX = dY · W
            be.matmul(s.b(2), s.b(1), mm(*m, *n, *k, false, false))?;
        }
        (Kernel::Linear { m, k, n, bias }, Wgrad) => {
            // dW = dYᵀ · X, db = Σ_rows dY
            be.matmul(s.b(2), s.b(0), mm(*n, *m, *k, true, false))?;
            if *bias {
                let ag = AxisGeom {
                    outer: *m,
                    axis: *n,
                    inner: 1,
                };
                be.sum_to_axis(s.b(2), ag)?;
            }
        }
        (Kernel::MatMul(g), Fwd) => {
            be.matmul(s.b(0), s.b(1), *g)?;
        }
        (Kernel::MatMul(g), Bwd) => {
            let geom = |m, k, n, trans_a, trans_b| MatmulGeom {
                batch: g.batch,
                m,
                k,
                n,
                trans_a,
                trans_b,
            };
            be.matmul(s.b(2), s.b(1), geom(g.m, g.n, g.k, false, true))?;
            be.matmul(s.b(0), s.b(2), geom(g.k, g.m, g.n, true, false))?;
        }
        (Kernel::Attention(g), Fwd) => {
            be.attention_forward(s.b(0), s.b(1), s.b(2), *g)?;
        }
        (Kernel::Attention(g), Bwd) => {
            be.attention_backward(s.b(0), s.b(1), s.b(2), s.b(3), s.b(4), s.b(5), *g)?;
        }
        (Kernel::Upsample(g), Fwd) => {
            be.upsample_trilinear_forward(s.b(0), g)?;
        }
        (Kernel::Upsample(g), Bwd) => {
            be.upsample_trilinear_backward(s.b(1), g)?;
        }
        (Kernel::Concat { outer, inners, .. }, Fwd) => {
            let refs: Vec<&dyn vidgrad::backend::BackendBuffer> =
                (0..inners.len()).map(|i| s.b(i)).collect();
            be.concat(&refs, *outer, inners)?;
        }
        (Kernel::Concat { outer, inners, .. }, Bwd) => {
            be.split(&s.bufs[inners.len()], *outer, inners)?;
        }
        (Kernel::Permute { shape, perm }, Fwd) => {
            be.permute(s.b(0), shape, perm)?;
        }
        (Kernel::Permute { shape, perm }, Bwd) => {
            let yshape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            be.permute(s.b(1), &yshape, &inverse)?;
        }
        (Kernel::CrossEntropy { classes, .. }, Fwd) => {
            be.cross_entropy_forward(s.b(0), &s.labels, *classes, 0.0)?;
        }
        (Kernel::CrossEntropy { classes, .. }, Bwd) => {
            be.cross_entropy_backward(s.b(0), &s.labels, *classes, 0.0, s.b(1))?;
        }
        (k, p) => {
            return Err(vidgrad::Error::InvalidArgument {
                op: "bench",
                msg: format!("{} has no pass {}", k.family(), p.name()),
            })
        }
    }
    Ok(())
}

fn mm(m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool) -> MatmulGeom {
    MatmulGeom {
        batch: 1,
        m,
        k,
        n,
        trans_a,
        trans_b,
    }
}

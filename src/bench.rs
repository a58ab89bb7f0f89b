//! Benchmark support (benches/suite.rs, tools/bench/torch_side_by_side.py): the kernel calls a model
//! makes, read off its [`Graph`].
//!
//! [`kernel_shapes`] walks a graph's nodes in execution order and resolves each into the backend call
//! its op makes, with the geometry the op itself computes (the same `conv_geom` / `pool_geom` code the
//! ops run), then deduplicates identical calls and counts how often each occurs. Views (reshape,
//! flatten) launch no kernel and are left out; the loss the training step adds after the graph's output
//! is appended as one cross-entropy entry. [`bench_models`] is the list of models and input shapes the
//! benchmarks time: every entry of [`crate::models::MODELS`], the three at their stated inputs.

use serde_json::{json, Value};

use crate::backend::{
    AdaptivePoolGeom, AttentionGeom, AxisGeom, ConvGeom, MatmulGeom, PoolGeom, UpsampleGeom,
};
use crate::error::Result;
use crate::graph::{Graph, Op};
use crate::models::{self, ModelOptions};
use crate::ops::conv::conv_geom;
use crate::ops::pool::pool_geom;
use crate::ops::{pad3, resolve_dim, spatial3};

/// One backend call (a kernel family at one geometry).
#[derive(Debug, Clone, PartialEq)]
pub enum Kernel {
    /// `dims`: 2 (Conv2d) or 3 (Conv3d); the geometry is always 3-d.
    Conv {
        g: ConvGeom,
        bias: bool,
        dims: usize,
    },
    /// `x`: the input's shape ([N, C, ...]), which the geometry flattens to [N, C, inner].
    BatchNorm {
        g: AxisGeom,
        eps: f32,
        x: Vec<usize>,
    },
    MaxPool {
        g: PoolGeom,
        ceil_mode: bool,
        dims: usize,
    },
    AvgPool {
        g: PoolGeom,
        ceil_mode: bool,
        count_include_pad: bool,
        dims: usize,
    },
    AdaptiveAvgPool {
        g: AdaptivePoolGeom,
        dims: usize,
    },
    Relu {
        n: usize,
    },
    Add {
        n: usize,
    },
    Scale {
        n: usize,
        s: f32,
    },
    Dropout {
        n: usize,
        p: f32,
    },
    Softmax {
        g: AxisGeom,
        dim: usize,
    },
    /// y[m, n] = x[m, k] · w[n, k]ᵀ (+ b[n]).
    Linear {
        m: usize,
        k: usize,
        n: usize,
        bias: bool,
    },
    MatMul(MatmulGeom),
    Attention(AttentionGeom),
    Upsample(UpsampleGeom),
    Concat {
        outer: usize,
        inners: Vec<usize>,
        dim: usize,
    },
    Permute {
        shape: Vec<usize>,
        perm: Vec<usize>,
    },
    CrossEntropy {
        n: usize,
        classes: usize,
    },
}

/// Which call of a kernel family is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// Forward (batch norm: training mode, batch statistics).
    Fwd,
    /// Batch norm's inference forward (running statistics).
    FwdEval,
    /// The whole backward of the op (every input gradient it produces).
    Bwd,
    /// Data gradient of conv / linear.
    Dgrad,
    /// Weight (and bias) gradient of conv / linear.
    Wgrad,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::FwdEval => "fwd_eval",
            Pass::Bwd => "bwd",
            Pass::Dgrad => "dgrad",
            Pass::Wgrad => "wgrad",
        }
    }
}

/// What a pass is measured in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    /// Floating-point operations (2 per multiply-add).
    Flops(f64),
    /// Bytes that must be read and written at least once (f32).
    Bytes(f64),
}

const F: f64 = 4.0;

impl Kernel {
    /// The kernel family's name (the op's).
    pub fn family(&self) -> &'static str {
        match self {
            Kernel::Conv { .. } => "conv",
            Kernel::BatchNorm { .. } => "batch_norm",
            Kernel::MaxPool { .. } => "max_pool",
            Kernel::AvgPool { .. } => "avg_pool",
            Kernel::AdaptiveAvgPool { .. } => "adaptive_avg_pool",
            Kernel::Relu { .. } => "relu",
            Kernel::Add { .. } => "add",
            Kernel::Scale { .. } => "mul_scalar",
            Kernel::Dropout { .. } => "dropout",
            Kernel::Softmax { .. } => "softmax",
            Kernel::Linear { .. } => "linear",
            Kernel::MatMul(_) => "matmul",
            Kernel::Attention(_) => "attention",
            Kernel::Upsample(_) => "upsample_trilinear",
            Kernel::Concat { .. } => "concat",
            Kernel::Permute { .. } => "permute",
            Kernel::CrossEntropy { .. } => "cross_entropy",
        }
    }

    /// Whether the math mode (`crate::math_mode`) changes this call's products: convolutions other than
    /// depthwise (`ConvGeom::math_mode`), linear and matmul. Attention's products and every other family
    /// stay FP32 in every mode, so their rows are timed once.
    pub fn uses_math_mode(&self) -> bool {
        match self {
            Kernel::Conv { g, .. } => !g.is_depthwise(),
            Kernel::Linear { .. } | Kernel::MatMul(_) => true,
            _ => false,
        }
    }

    /// The passes a training step runs for this call. Ops whose backward is the identity (add) or the
    /// forward kernel again (mul_scalar, dropout) list only the forward.
    pub fn passes(&self) -> &'static [Pass] {
        use Pass::*;
        match self {
            Kernel::Conv { .. } | Kernel::Linear { .. } => &[Fwd, Dgrad, Wgrad],
            // max pool: the training forward saves the argmax, the inference one does not
            Kernel::BatchNorm { .. } | Kernel::MaxPool { .. } => &[Fwd, FwdEval, Bwd],
            Kernel::Add { .. } | Kernel::Scale { .. } | Kernel::Dropout { .. } => &[Fwd],
            _ => &[Fwd, Bwd],
        }
    }

    /// The work of one pass: FLOPs for conv, linear, matmul and attention (2·multiply-adds; each of
    /// conv's and linear's two gradients costs what the forward does; attention's backward counts the
    /// four products dV, dP, dQ, dK, i.e. twice the forward, not the recomputation of the scores), bytes
    /// read + written once for the memory-bound rest.
    pub fn work(&self, pass: Pass) -> Work {
        let bwd = matches!(pass, Pass::Bwd);
        match self {
            Kernel::Conv { g, .. } => Work::Flops(2.0 * g.macs() as f64),
            Kernel::Linear { m, k, n, .. } => Work::Flops(2.0 * (m * k * n) as f64),
            Kernel::MatMul(g) => {
                let f = 2.0 * (g.batch * g.m * g.k * g.n) as f64;
                Work::Flops(if bwd { 2.0 * f } else { f })
            }
            Kernel::Attention(g) => {
                let f = 2.0 * (g.batch * g.n * g.m * (g.c + g.cv)) as f64;
                Work::Flops(if bwd { 2.0 * f } else { f })
            }
            Kernel::BatchNorm { g, .. } => {
                let n = g.numel() as f64;
                // forward: x in, y out; backward: dy and x in, dx out
                Work::Bytes(F * n * if bwd { 3.0 } else { 2.0 })
            }
            Kernel::MaxPool { g, .. } => {
                let (i, o) = (pool_in(g), pool_out(g));
                let argmax = (g.argmax_bytes() as f64 / F) * o;
                match pass {
                    // argmax and dy in, dx out
                    Pass::Bwd => Work::Bytes(F * (argmax + o + i)),
                    // x in, y (and in training the argmax) out
                    Pass::Fwd => Work::Bytes(F * (i + o + argmax)),
                    _ => Work::Bytes(F * (i + o)),
                }
            }
            Kernel::AvgPool { g, .. } => Work::Bytes(F * (pool_in(g) + pool_out(g))),
            Kernel::AdaptiveAvgPool { g, .. } => {
                let v = |s: [usize; 3]| (g.planes * s.iter().product::<usize>()) as f64;
                Work::Bytes(F * (v(g.input) + v(g.output)))
            }
            Kernel::Relu { n } => Work::Bytes(F * *n as f64 * if bwd { 3.0 } else { 2.0 }),
            Kernel::Softmax { g, .. } => {
                Work::Bytes(F * g.numel() as f64 * if bwd { 3.0 } else { 2.0 })
            }
            Kernel::Add { n } => Work::Bytes(F * 3.0 * *n as f64),
            Kernel::Scale { n, .. } | Kernel::Dropout { n, .. } => Work::Bytes(F * 2.0 * *n as f64),
            Kernel::Upsample(g) => {
                let v = |s: [usize; 3]| (g.planes * s.iter().product::<usize>()) as f64;
                Work::Bytes(F * (v(g.input) + v(g.output)))
            }
            Kernel::Concat { outer, inners, .. } => {
                Work::Bytes(F * 2.0 * (outer * inners.iter().sum::<usize>()) as f64)
            }
            Kernel::Permute { shape, .. } => {
                Work::Bytes(F * 2.0 * shape.iter().product::<usize>() as f64)
            }
            Kernel::CrossEntropy { n, classes } => {
                // forward: logits in; backward: logits in, dlogits out
                Work::Bytes(F * (n * classes) as f64 * if bwd { 2.0 } else { 1.0 })
            }
        }
    }

    /// A compact human-readable description of the call's shapes.
    pub fn describe(&self) -> String {
        let l = |v: &[usize]| {
            v.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x")
        };
        let tail = |v: [usize; 3], dims: usize| l(&v[3 - dims..]);
        match self {
            Kernel::Conv { g, bias, dims } => {
                let mut s = format!(
                    "{}->{} k{} s{} p{}",
                    g.c_in,
                    g.c_out,
                    tail(g.kernel, *dims),
                    tail(g.stride, *dims),
                    tail(g.padding, *dims)
                );
                if g.dilation != [1, 1, 1] {
                    s += &format!(" d{}", tail(g.dilation, *dims));
                }
                if g.groups > 1 {
                    s += &format!(" g{}", g.groups);
                }
                if *bias {
                    s += " +b";
                }
                format!("{s} on {}x{}", g.n, tail(g.input, *dims))
            }
            Kernel::BatchNorm { x, .. } => format!("{x:?}"),
            Kernel::MaxPool { g, dims, .. } | Kernel::AvgPool { g, dims, .. } => format!(
                "k{} s{} p{} on {}x{}",
                tail(g.kernel, *dims),
                tail(g.stride, *dims),
                tail(g.padding, *dims),
                g.planes,
                tail(g.input, *dims)
            ),
            Kernel::AdaptiveAvgPool { g, dims } => format!(
                "{}x{} -> {}",
                g.planes,
                tail(g.input, *dims),
                tail(g.output, *dims)
            ),
            Kernel::Relu { n } | Kernel::Add { n } | Kernel::Scale { n, .. } => format!("n={n}"),
            Kernel::Dropout { n, p } => format!("n={n} p={p}"),
            Kernel::Softmax { g, .. } => {
                format!("[{}, {}, {}] along {}", g.outer, g.axis, g.inner, g.axis)
            }
            Kernel::Linear { m, k, n, bias } => {
                format!(
                    "[{m}, {k}] x [{n}, {k}]^T{}",
                    if *bias { " +b" } else { "" }
                )
            }
            Kernel::MatMul(g) => format!("{} x [{}, {}] x [{}, {}]", g.batch, g.m, g.k, g.k, g.n),
            Kernel::Attention(g) => format!("B{} C{} Cv{} N{} M{}", g.batch, g.c, g.cv, g.n, g.m),
            Kernel::Upsample(g) => format!("{}x{} -> {}", g.planes, l(&g.input), l(&g.output)),
            Kernel::Concat { outer, inners, .. } => format!("{outer} x {inners:?}"),
            Kernel::Permute { shape, perm } => format!("[{}] by {perm:?}", l(shape)),
            Kernel::CrossEntropy { n, classes } => format!("[{n}, {classes}]"),
        }
    }

    /// Everything needed to rebuild the call elsewhere (the PyTorch script), as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Kernel::Conv { g, bias, dims } => {
                let d = 3 - dims;
                let mut x = vec![g.n, g.c_in];
                x.extend_from_slice(&g.input[d..]);
                let mut w = vec![g.c_out, g.in_per_group()];
                w.extend_from_slice(&g.kernel[d..]);
                let mut y = vec![g.n, g.c_out];
                y.extend_from_slice(&g.output[d..]);
                json!({"x": x, "w": w, "y": y, "bias": bias, "stride": &g.stride[d..],
                       "padding": &g.padding[d..], "dilation": &g.dilation[d..], "groups": g.groups})
            }
            Kernel::BatchNorm { eps, x, .. } => json!({"x": x, "eps": eps}),
            Kernel::MaxPool { g, ceil_mode, dims } => {
                let d = 3 - dims;
                json!({"x": pool_x(g.planes, &g.input[d..]), "kernel": &g.kernel[d..],
                       "stride": &g.stride[d..], "padding": &g.padding[d..], "ceil_mode": ceil_mode,
                       "y": pool_x(g.planes, &g.output[d..])})
            }
            Kernel::AvgPool {
                g,
                ceil_mode,
                count_include_pad,
                dims,
            } => {
                let d = 3 - dims;
                json!({"x": pool_x(g.planes, &g.input[d..]), "kernel": &g.kernel[d..],
                       "stride": &g.stride[d..], "padding": &g.padding[d..], "ceil_mode": ceil_mode,
                       "count_include_pad": count_include_pad,
                       "y": pool_x(g.planes, &g.output[d..])})
            }
            Kernel::AdaptiveAvgPool { g, dims } => {
                let d = 3 - dims;
                json!({"x": pool_x(g.planes, &g.input[d..]), "output": &g.output[d..]})
            }
            Kernel::Relu { n } | Kernel::Add { n } => json!({"n": n}),
            Kernel::Scale { n, s } => json!({"n": n, "s": s}),
            Kernel::Dropout { n, p } => json!({"n": n, "p": p}),
            Kernel::Softmax { g, .. } => json!({"x": [g.outer, g.axis, g.inner], "dim": 1}),
            Kernel::Linear { m, k, n, bias } => json!({"m": m, "k": k, "n": n, "bias": bias}),
            Kernel::MatMul(g) => json!({"batch": g.batch, "m": g.m, "k": g.k, "n": g.n}),
            Kernel::Attention(g) => json!({"batch": g.batch, "c": g.c, "cv": g.cv, "n": g.n,
                                           "m": g.m, "scale": g.scale}),
            Kernel::Upsample(g) => json!({"x": [g.planes, 1, g.input[0], g.input[1], g.input[2]],
                                          "size": g.output, "align_corners": g.align_corners}),
            Kernel::Concat { outer, inners, .. } => json!({"outer": outer, "inners": inners}),
            Kernel::Permute { shape, perm } => json!({"shape": shape, "perm": perm}),
            Kernel::CrossEntropy { n, classes } => json!({"n": n, "classes": classes}),
        }
    }
}

fn pool_x(planes: usize, sp: &[usize]) -> Vec<usize> {
    // PyTorch pools [N, C, ...]; only N·C matters: N = 1, C = planes
    let mut v = vec![1, planes];
    v.extend_from_slice(sp);
    v
}
fn pool_in(g: &PoolGeom) -> f64 {
    (g.planes * g.input.iter().product::<usize>()) as f64
}
fn pool_out(g: &PoolGeom) -> f64 {
    (g.planes * g.output.iter().product::<usize>()) as f64
}

/// A distinct kernel call of a model with how often the model makes it.
#[derive(Debug, Clone)]
pub struct KernelShape {
    pub kernel: Kernel,
    /// Number of graph nodes (or loss calls) making this exact call in one forward pass.
    pub count: usize,
    /// The first node making it (e.g. `layer2.0.conv1.0.0`).
    pub example: String,
}

impl KernelShape {
    pub fn to_json(&self) -> Value {
        let k = &self.kernel;
        let passes: Vec<Value> = k
            .passes()
            .iter()
            .map(|&p| match k.work(p) {
                Work::Flops(f) => json!({"pass": p.name(), "flops": f}),
                Work::Bytes(b) => json!({"pass": p.name(), "bytes": b}),
            })
            .collect();
        json!({"family": k.family(), "shape": k.describe(), "count": self.count,
               "example": self.example, "args": k.to_json(), "passes": passes})
    }
}

/// The distinct kernel calls of one forward (+ backward) pass of `g`, in first-use order, with counts.
/// A rank-2 graph output [N, classes] adds the training step's cross-entropy loss.
pub fn kernel_shapes(g: &Graph) -> Result<Vec<KernelShape>> {
    let mut out: Vec<KernelShape> = vec![];
    let mut add = |kernel: Kernel, name: &str| {
        if let Some(e) = out.iter_mut().find(|e| e.kernel == kernel) {
            e.count += 1;
        } else {
            out.push(KernelShape {
                kernel,
                count: 1,
                example: name.to_string(),
            });
        }
    };
    for node in &g.nodes {
        let shape = |i: usize| g.values[node.inputs[i]].shape.as_slice();
        let x = shape(0);
        let numel: usize = x.iter().product();
        let dims = x.len().saturating_sub(2);
        let k = match &node.op {
            Op::Conv(p) => {
                let w = &g.params[node.params[0]].shape;
                let b = node.params.get(1).map(|&i| g.params[i].shape.as_slice());
                let op = if x.len() == 4 { "conv2d" } else { "conv3d" };
                Kernel::Conv {
                    g: conv_geom(op, x, w, b, p)?,
                    bias: b.is_some(),
                    dims,
                }
            }
            Op::BatchNorm { eps, .. } => Kernel::BatchNorm {
                g: AxisGeom {
                    outer: x[0],
                    axis: x[1],
                    inner: x[2..].iter().product(),
                },
                eps: *eps,
                x: x.to_vec(),
            },
            Op::MaxPool(p) => Kernel::MaxPool {
                g: pool_geom("max_pool", x, p)?,
                ceil_mode: p.ceil_mode,
                dims,
            },
            Op::AvgPool {
                pool,
                count_include_pad,
            } => Kernel::AvgPool {
                g: pool_geom("avg_pool", x, pool)?,
                ceil_mode: pool.ceil_mode,
                count_include_pad: *count_include_pad,
                dims,
            },
            Op::AdaptiveAvgPool(o) => Kernel::AdaptiveAvgPool {
                g: AdaptivePoolGeom {
                    planes: x[0] * x[1],
                    input: spatial3(x),
                    output: pad3(o, 1),
                },
                dims,
            },
            Op::Relu => Kernel::Relu { n: numel },
            Op::Add => Kernel::Add { n: numel },
            Op::MulScalar(s) => Kernel::Scale { n: numel, s: *s },
            Op::Dropout { p } => {
                if *p == 0.0 {
                    continue;
                }
                Kernel::Dropout { n: numel, p: *p }
            }
            Op::Softmax { dim } => {
                let d = resolve_dim("softmax", *dim, x)?;
                Kernel::Softmax {
                    g: AxisGeom {
                        outer: x[..d].iter().product(),
                        axis: x[d],
                        inner: x[d + 1..].iter().product(),
                    },
                    dim: d,
                }
            }
            Op::Linear => {
                let w = &g.params[node.params[0]].shape;
                Kernel::Linear {
                    m: numel / w[1],
                    k: w[1],
                    n: w[0],
                    bias: node.params.len() > 1,
                }
            }
            Op::MatMul => {
                let b = shape(1);
                let batch = if x.len() == 3 { x[0] } else { 1 };
                Kernel::MatMul(MatmulGeom {
                    batch,
                    m: x[x.len() - 2],
                    k: x[x.len() - 1],
                    n: b[b.len() - 1],
                    trans_a: false,
                    trans_b: false,
                })
            }
            Op::Attention { scale } => {
                let (k, v) = (shape(1), shape(2));
                Kernel::Attention(AttentionGeom {
                    batch: x[0],
                    c: x[1],
                    n: x[2],
                    m: k[2],
                    cv: v[1],
                    scale: *scale,
                })
            }
            Op::Upsample {
                size,
                align_corners,
            } => Kernel::Upsample(UpsampleGeom {
                planes: x[0] * x[1],
                input: spatial3(x),
                output: *size,
                align_corners: *align_corners,
            }),
            Op::Concat { dim } => {
                let d = resolve_dim("concat", *dim, x)?;
                let tail: usize = x[d + 1..].iter().product();
                Kernel::Concat {
                    outer: x[..d].iter().product(),
                    inners: (0..node.inputs.len()).map(|i| shape(i)[d] * tail).collect(),
                    dim: d,
                }
            }
            Op::Permute(perm) => Kernel::Permute {
                shape: x.to_vec(),
                perm: perm.clone(),
            },
            // views: no kernel
            Op::Reshape(_) | Op::Flatten { .. } => continue,
        };
        add(k, &node.name);
    }
    if let Some(&o) = g.outputs.first() {
        if let [n, classes] = g.values[o].shape[..] {
            add(Kernel::CrossEntropy { n, classes }, "loss");
        }
    }
    Ok(out)
}

/// A model as the benchmarks run it.
#[derive(Debug, Clone)]
pub struct BenchModel {
    pub name: &'static str,
    pub opts: ModelOptions,
    /// Input at the benchmark batch (16), in the model's native layout.
    pub input: Vec<usize>,
    /// One of the three models (ECO-Lite, seed 000's C2D-NL-R50, R(2+1)D-18): timed by default.
    pub primary: bool,
}

impl BenchModel {
    /// The input with batch `b`.
    pub fn input_at(&self, b: usize) -> Vec<usize> {
        let mut s = self.input.clone();
        s[0] = b;
        s
    }
    /// Build the graph for an input of batch `b`.
    pub fn graph(&self, b: usize) -> Result<Graph> {
        models::build(self.name, &self.opts, &self.input_at(b))
    }
}

/// Every model of [`models::MODELS`] with its benchmark input at batch 16: ECO-Lite 16 × 224²,
/// C2D-NL-R50 (seed 000, 2 classes) 8 × 224², R(2+1)D-18 16 × 112²; the other ResNet-50s 8 × 224²,
/// CT-sep 16 × 112², and any model added later its layout's default (16 × 112² for [B, 3, T, H, W],
/// 16 × 224² for [B, T, 3, H, W]).
pub fn bench_models() -> Vec<BenchModel> {
    models::MODELS
        .iter()
        .map(|&(name, _)| {
            let mut opts = ModelOptions::default();
            let (input, primary) = match name {
                "eco-lite" => (vec![16, 16, 3, 224, 224], true),
                "c2d-nl-r50" => {
                    opts.classes = Some(2);
                    (vec![16, 3, 8, 224, 224], true)
                }
                "r2plus1d-18" => (vec![16, 3, 16, 112, 112], true),
                "i3d-r50" | "i3d-nl-r50" | "resnet3d" => (vec![16, 3, 8, 224, 224], false),
                // a model added later: the 3D CNN layout if it builds, else ECO's
                _ => {
                    let btchw = vec![16, 16, 3, 224, 224];
                    let bcthw = vec![16, 3, 16, 112, 112];
                    let ok = models::build(name, &opts, &bcthw).is_ok();
                    (if ok { bcthw } else { btchw }, false)
                }
            };
            BenchModel {
                name,
                opts,
                input,
                primary,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel list accounts for every multiply-add the graph counts, and for every node that
    /// launches a kernel.
    #[test]
    fn kernel_shapes_cover_the_graph() {
        for m in bench_models() {
            let g = m.graph(2).unwrap();
            let shapes = kernel_shapes(&g).unwrap();
            let macs: f64 = shapes
                .iter()
                .map(|s| match s.kernel.work(Pass::Fwd) {
                    Work::Flops(f) => s.count as f64 * f / 2.0,
                    Work::Bytes(_) => 0.0,
                })
                .sum();
            assert_eq!(macs, g.macs() as f64, "{}", m.name);
            let calls: usize = shapes
                .iter()
                .filter(|s| s.example != "loss")
                .map(|s| s.count)
                .sum();
            let nodes = g
                .nodes
                .iter()
                .filter(|n| match n.op {
                    Op::Reshape(_) | Op::Flatten { .. } => false,
                    Op::Dropout { p } => p != 0.0,
                    _ => true,
                })
                .count();
            assert_eq!(calls, nodes, "{}", m.name);
            assert!(shapes.iter().any(|s| s.kernel.family() == "conv"));
        }
    }
}

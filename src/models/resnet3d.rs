//! mmaction2's I3D recogniser (seed 004): the `ResNet3d` backbone
//! (`mmaction/models/backbones/resnet3d.py`, built from mmcv `ConvModule`s, with mmcv `NonLocal3d`
//! blocks) and `I3DHead` (`mmaction/models/heads/i3d_head.py`), under the names of mmaction2's
//! `Recognizer3D`, so a checkpoint it saved loads unchanged:
//!
//! | module                                 | type          | layers                                                        |
//! |----------------------------------------|---------------|---------------------------------------------------------------|
//! | `backbone.conv1`                       | ConvModule    | `conv` (kt,7,7) s(conv1_stride_t,2,2) p((k−1)/2), `bn`, `activate` |
//! | `backbone.maxpool`                     | MaxPool3d     | (1,3,3) s(pool1_stride_t,2,2) p(0,1,1)                        |
//! | `backbone.layer1` … `layer4`           | Sequential    | blocks `0`, `1`, … (BasicBlock3d or Bottleneck3d)             |
//! | `backbone.pool2`                       | MaxPool3d     | (2,1,1) s(2,1,1), after layer1 when `with_pool2`              |
//! | `cls_head`                             | I3DHead       | `avg_pool` AdaptiveAvgPool3d(1), `dropout`, `fc_cls`          |
//!
//! Bottleneck3d (expansion 4): `conv1` → `conv2` → `conv3` (ConvModules; conv3 without ReLU), the
//! `downsample` ConvModule (1×1×1, stride (st, ss, ss), BN, no ReLU) on the first block of a stage when
//! the spatial stride is not 1 or the channels change, the sum, `relu`, then `non_local_block` where
//! asked. Kernels: inflated '3x1x1' conv1 (3,1,1) p(1,0,0) and conv2 (1,3,3); inflated '3x3x3' conv1
//! 1×1×1 and conv2 (3,3,3); not inflated conv1 1×1×1 and conv2 (1,3,3). 'pytorch' style puts both
//! strides on conv2, 'caffe' on conv1; the dilation is on conv2. BasicBlock3d (expansion 1): conv1 (3,3,3)
//! or (1,3,3) with both strides and the dilation whatever the style, conv2 the same kernel, stride 1.
//! No convolution of the backbone has a bias.
//!
//! NonLocal3d (inter channels C' = C / reduction): `g`, `theta`, `phi` 1×1×1 ConvModules with bias (no
//! norm); with `sub_sample` `g` and `phi` are `Sequential(ConvModule, MaxPool3d((1,2,2)))` — the pool
//! comes after the conv, and the names become `g.0.conv.weight`. Pairwise weights over the N = T·H·W
//! queries and M pooled keys: embedded_gaussian softmax(θᵀφ · s) with s = C'^−½ only with `use_scale`;
//! dot_product θᵀφ / M; gaussian softmax(xᵀ·pool(x)) with no θ/φ convs. y = pairwise·g, then
//! out = x + `conv_out`(y), conv_out a 1×1×1 ConvModule C'→C with BN and no bias when `norm`
//! (`conv_out.bn`), with bias and no BN otherwise.
//!
//! `with_cp` marks every block for gradient checkpointing (mmaction2 checkpoints the convolutions and
//! the sum; here the block's ReLU and non-local block are recomputed with them; the values and gradients
//! are the same, and a recomputation does not update the BN running statistics a second time).
//!
//! Presets (`--opt preset=…`): `i3d-r50` (configs/_base_/models/i3d_r50.py: conv1 (5,7,7) stride_t 2,
//! pool1 stride_t 2, pool2, inflate ((1,1,1),(1,0,1,0),(1,0,1,0,1,0),(0,1,0)) 3x1x1: 28,043,472
//! parameters at 400 classes), `i3d-r50-heavy` (all inflated, stride_t 1), `i3d-r50-nl-dot-product`,
//! `i3d-r50-nl-embedded-gaussian` (non-local after blocks 1, 3 of layer2 and 1, 3, 5 of layer3,
//! sub_sample, no scale, BN: 35,397,840), `i3d-r50-nl-gaussian` (31,723,728) and `seed004` (seed 004's
//! printed network: i3d-r50 with every block inflated (3,1,1)). Without a preset the options take
//! mmaction2's `ResNet3d` defaults (conv1 (3,7,7), strides_t 1, everything inflated).
//!
//! Input [B, C, T, H, W], already normalised (mmaction2's data preprocessor: RGB 0–255, mean
//! (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375)).

use crate::error::{arg_bail, Result};
use crate::graph::{BatchNorm, Conv, Graph, GraphBuilder, Init, Linear, ValueId};
use crate::models::ModelOptions;
use crate::ops::PoolParams;

const MODEL: &str = "resnet3d";

/// Where a Bottleneck3d puts its strides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// On conv2 (the 3×3 conv): mmaction2's default.
    Pytorch,
    /// On conv1.
    Caffe,
}

/// Kernels of an inflated Bottleneck3d.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateStyle {
    /// conv1 (3,1,1), conv2 (1,3,3).
    T3x1x1,
    /// conv1 1×1×1, conv2 (3,3,3).
    T3x3x3,
}

/// mmcv NonLocal3d's pairwise function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonLocalMode {
    Gaussian,
    EmbeddedGaussian,
    DotProduct,
}

/// mmcv NonLocal3d's arguments (`non_local_cfg`); the defaults are mmcv's.
#[derive(Debug, Clone, PartialEq)]
pub struct NonLocalConfig {
    pub mode: NonLocalMode,
    /// Scale the embedded-gaussian scores by C'^−½.
    pub use_scale: bool,
    /// Max-pool (1,2,2) after the φ and g convs.
    pub sub_sample: bool,
    /// `norm_cfg=BN3d` for conv_out (then conv_out has no bias).
    pub norm: bool,
    pub reduction: usize,
}

impl Default for NonLocalConfig {
    fn default() -> Self {
        NonLocalConfig {
            mode: NonLocalMode::EmbeddedGaussian,
            use_scale: true,
            sub_sample: false,
            norm: false,
            reduction: 2,
        }
    }
}

/// mmaction2 `ResNet3d` + `I3DHead` arguments. Per-block flags are per stage: one entry per block, or a
/// single entry for every block of the stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNet3dConfig {
    /// 18, 34 (BasicBlock3d), 50, 101, 152 (Bottleneck3d).
    pub depth: usize,
    pub base_channels: usize,
    pub conv1_kernel: [usize; 3],
    pub conv1_stride_s: usize,
    pub conv1_stride_t: usize,
    pub pool1_stride_s: usize,
    pub pool1_stride_t: usize,
    pub with_pool1: bool,
    pub with_pool2: bool,
    pub style: Style,
    pub inflate: Vec<Vec<bool>>,
    pub inflate_style: InflateStyle,
    pub spatial_strides: [usize; 4],
    pub temporal_strides: [usize; 4],
    pub dilations: [usize; 4],
    pub non_local: Vec<Vec<bool>>,
    pub non_local_cfg: NonLocalConfig,
    /// Gradient checkpointing of every block.
    pub with_cp: bool,
    /// Zero γ of each block's last BN at initialisation (mmaction2's default; the I3D configs turn it off).
    pub zero_init_residual: bool,
    pub classes: usize,
    /// I3DHead's dropout_ratio (no Dropout module at 0, as there).
    pub dropout: f32,
}

impl Default for ResNet3dConfig {
    /// mmaction2's defaults of `ResNet3d` and `I3DHead` (400 classes).
    fn default() -> Self {
        ResNet3dConfig {
            depth: 50,
            base_channels: 64,
            conv1_kernel: [3, 7, 7],
            conv1_stride_s: 2,
            conv1_stride_t: 1,
            pool1_stride_s: 2,
            pool1_stride_t: 1,
            with_pool1: true,
            with_pool2: true,
            style: Style::Pytorch,
            inflate: vec![vec![true]; 4],
            inflate_style: InflateStyle::T3x1x1,
            spatial_strides: [1, 2, 2, 2],
            temporal_strides: [1, 1, 1, 1],
            dilations: [1, 1, 1, 1],
            non_local: vec![vec![false]; 4],
            non_local_cfg: NonLocalConfig::default(),
            with_cp: false,
            zero_init_residual: true,
            classes: 400,
            dropout: 0.5,
        }
    }
}

/// The presets' names.
pub const PRESETS: &[&str] = &[
    "i3d-r50",
    "i3d-r50-heavy",
    "i3d-r50-nl-dot-product",
    "i3d-r50-nl-embedded-gaussian",
    "i3d-r50-nl-gaussian",
    "seed004",
];

fn flags(stages: &[&[u8]]) -> Vec<Vec<bool>> {
    stages
        .iter()
        .map(|s| s.iter().map(|&v| v == 1).collect())
        .collect()
}

impl ResNet3dConfig {
    /// A preset (see the module docs).
    pub fn preset(name: &str) -> Result<Self> {
        let i3d = ResNet3dConfig {
            conv1_kernel: [5, 7, 7],
            conv1_stride_t: 2,
            pool1_stride_t: 2,
            inflate: flags(&[&[1, 1, 1], &[1, 0, 1, 0], &[1, 0, 1, 0, 1, 0], &[0, 1, 0]]),
            zero_init_residual: false,
            ..Default::default()
        };
        let nl = |mode| ResNet3dConfig {
            non_local: flags(&[&[0, 0, 0], &[0, 1, 0, 1], &[0, 1, 0, 1, 0, 1], &[0, 0, 0]]),
            non_local_cfg: NonLocalConfig {
                mode,
                use_scale: false,
                sub_sample: true,
                norm: true,
                reduction: 2,
            },
            ..i3d.clone()
        };
        Ok(match name {
            "i3d-r50" => i3d,
            "i3d-r50-heavy" => ResNet3dConfig {
                inflate: vec![vec![true]; 4],
                conv1_stride_t: 1,
                pool1_stride_t: 1,
                ..i3d
            },
            "i3d-r50-nl-dot-product" => nl(NonLocalMode::DotProduct),
            "i3d-r50-nl-embedded-gaussian" => nl(NonLocalMode::EmbeddedGaussian),
            "i3d-r50-nl-gaussian" => nl(NonLocalMode::Gaussian),
            "seed004" => ResNet3dConfig {
                inflate: vec![vec![true]; 4],
                ..i3d
            },
            _ => arg_bail!(
                MODEL,
                "unknown preset '{name}' (known: {})",
                PRESETS.join(", ")
            ),
        })
    }

    /// The block type and blocks per stage of `depth`.
    fn arch(&self) -> Result<(bool, [usize; 4])> {
        Ok(match self.depth {
            18 => (false, [2, 2, 2, 2]),
            34 => (false, [3, 4, 6, 3]),
            50 => (true, [3, 4, 6, 3]),
            101 => (true, [3, 4, 23, 3]),
            152 => (true, [3, 8, 36, 3]),
            d => arg_bail!(MODEL, "depth must be 18, 34, 50, 101 or 152, got {d}"),
        })
    }
}

/// The options `--opt KEY=VALUE` knows.
pub const OPTIONS: &[&str] = &[
    "preset",
    "depth",
    "base_channels",
    "conv1_kernel",
    "conv1_stride_s",
    "conv1_stride_t",
    "pool1_stride_s",
    "pool1_stride_t",
    "with_pool1",
    "with_pool2",
    "style",
    "inflate",
    "inflate_style",
    "spatial_strides",
    "temporal_strides",
    "dilations",
    "non_local",
    "non_local_mode",
    "non_local_use_scale",
    "non_local_sub_sample",
    "non_local_norm",
    "non_local_reduction",
    "with_cp",
    "zero_init_residual",
];

fn bad(key: &str, v: &str, want: &str) -> crate::Error {
    crate::Error::arg(MODEL, format!("option {key}={v}: expected {want}"))
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "True" => Ok(true),
        "false" | "0" | "False" => Ok(false),
        _ => Err(bad(key, v, "true or false")),
    }
}

/// A list of integers: `5,7,7`, `(5, 7, 7)`.
fn parse_ints(key: &str, v: &str) -> Result<Vec<usize>> {
    v.trim_matches(|c| c == '(' || c == ')' || c == '[' || c == ']')
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(key, v, "integers")))
        .collect()
}

fn parse_4(key: &str, v: &str) -> Result<[usize; 4]> {
    let xs = parse_ints(key, v)?;
    match xs[..] {
        [a] => Ok([a; 4]),
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(bad(key, v, "one value or one per stage (4)")),
    }
}

/// Per-stage, per-block 0/1 flags: stages separated by `;` (`1,1,1;1,0,1,0;1,0,1,0,1,0;0,1,0`), or
/// mmaction2's tuple syntax (`((1,1,1),(1,0,1,0),(1,0,1,0,1,0),(0,1,0))`); without `;` one value per stage
/// (`1,1,1,1`) or one for all (`1`).
fn parse_flags(key: &str, v: &str) -> Result<Vec<Vec<bool>>> {
    let s: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    let s = s.replace("),(", ";");
    let s = s.trim_matches(|c| c == '(' || c == ')');
    let one = |t: &str| -> Result<Vec<bool>> {
        let xs = parse_ints(key, t)?;
        if xs.is_empty() || xs.iter().any(|&x| x > 1) {
            return Err(bad(key, v, "0/1 flags"));
        }
        Ok(xs.into_iter().map(|x| x == 1).collect())
    };
    if s.contains(';') {
        let stages = s.split(';').map(one).collect::<Result<Vec<_>>>()?;
        if stages.len() != 4 {
            return Err(bad(key, v, "4 stages separated by ';'"));
        }
        Ok(stages)
    } else {
        let xs = one(s)?;
        match xs.len() {
            1 => Ok(vec![xs; 4]),
            4 => Ok(xs.into_iter().map(|x| vec![x]).collect()),
            _ => Err(bad(
                key,
                v,
                "one flag, one per stage, or stages separated by ';'",
            )),
        }
    }
}

impl ResNet3dConfig {
    /// The configuration `opts` describe: the preset (or mmaction2's defaults), then each option.
    pub fn from_options(opts: &ModelOptions) -> Result<Self> {
        opts.check_known(MODEL, OPTIONS)?;
        let mut c = match opts.extra.get("preset") {
            Some(p) => Self::preset(p)?,
            None => Self::default(),
        };
        for (k, v) in &opts.extra {
            let (k, v) = (k.as_str(), v.as_str());
            let int = || v.parse::<usize>().map_err(|_| bad(k, v, "an integer"));
            match k {
                "preset" => {}
                "depth" => c.depth = int()?,
                "base_channels" => c.base_channels = int()?,
                "conv1_kernel" => {
                    c.conv1_kernel = match parse_ints(k, v)?[..] {
                        [a] => [a; 3],
                        [a, b, d] => [a, b, d],
                        _ => return Err(bad(k, v, "one or three integers")),
                    }
                }
                "conv1_stride_s" => c.conv1_stride_s = int()?,
                "conv1_stride_t" => c.conv1_stride_t = int()?,
                "pool1_stride_s" => c.pool1_stride_s = int()?,
                "pool1_stride_t" => c.pool1_stride_t = int()?,
                "with_pool1" => c.with_pool1 = parse_bool(k, v)?,
                "with_pool2" => c.with_pool2 = parse_bool(k, v)?,
                "style" => {
                    c.style = match v {
                        "pytorch" => Style::Pytorch,
                        "caffe" => Style::Caffe,
                        _ => return Err(bad(k, v, "pytorch or caffe")),
                    }
                }
                "inflate" => c.inflate = parse_flags(k, v)?,
                "inflate_style" => {
                    c.inflate_style = match v {
                        "3x1x1" => InflateStyle::T3x1x1,
                        "3x3x3" => InflateStyle::T3x3x3,
                        _ => return Err(bad(k, v, "3x1x1 or 3x3x3")),
                    }
                }
                "spatial_strides" => c.spatial_strides = parse_4(k, v)?,
                "temporal_strides" => c.temporal_strides = parse_4(k, v)?,
                "dilations" => c.dilations = parse_4(k, v)?,
                "non_local" => c.non_local = parse_flags(k, v)?,
                "non_local_mode" => {
                    c.non_local_cfg.mode = match v {
                        "gaussian" => NonLocalMode::Gaussian,
                        "embedded_gaussian" => NonLocalMode::EmbeddedGaussian,
                        "dot_product" => NonLocalMode::DotProduct,
                        _ => return Err(bad(k, v, "gaussian, embedded_gaussian or dot_product")),
                    }
                }
                "non_local_use_scale" => c.non_local_cfg.use_scale = parse_bool(k, v)?,
                "non_local_sub_sample" => c.non_local_cfg.sub_sample = parse_bool(k, v)?,
                "non_local_norm" => c.non_local_cfg.norm = parse_bool(k, v)?,
                "non_local_reduction" => c.non_local_cfg.reduction = int()?,
                "with_cp" => c.with_cp = parse_bool(k, v)?,
                "zero_init_residual" => c.zero_init_residual = parse_bool(k, v)?,
                _ => unreachable!("checked by check_known"),
            }
        }
        if let Some(n) = opts.classes {
            c.classes = n;
        }
        if let Some(p) = opts.dropout {
            c.dropout = p;
        }
        Ok(c)
    }
}

/// mmcv ConvModule: `conv`, then `bn` with `norm`, then `activate` (ReLU) with `act`.
fn conv_module(
    g: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    conv: Conv,
    norm: bool,
    act: bool,
) -> Result<ValueId> {
    g.module(name, "ConvModule", x, |g, x| {
        let x = g.conv("conv", x, conv)?;
        let x = if norm {
            g.batch_norm("bn", x, BatchNorm::new())?
        } else {
            x
        };
        if act {
            g.relu("activate", x)
        } else {
            Ok(x)
        }
    })
}

/// One residual block's arguments (make_res_layer's per-block values).
struct Block {
    bottleneck: bool,
    planes: usize,
    spatial_stride: usize,
    temporal_stride: usize,
    dilation: usize,
    downsample: bool,
    inflate: bool,
    non_local: bool,
}

fn bottleneck3d(
    g: &mut GraphBuilder,
    x: ValueId,
    b: &Block,
    cfg: &ResNet3dConfig,
) -> Result<ValueId> {
    let (p, d) = (b.planes, b.dilation);
    let st = [b.temporal_stride, b.spatial_stride, b.spatial_stride];
    let (s1, s2) = match cfg.style {
        Style::Pytorch => ([1, 1, 1], st),
        Style::Caffe => (st, [1, 1, 1]),
    };
    let (k1, p1, k2, p2) = match (b.inflate, cfg.inflate_style) {
        (true, InflateStyle::T3x1x1) => ([3, 1, 1], [1, 0, 0], [1, 3, 3], [0, d, d]),
        (true, InflateStyle::T3x3x3) => ([1, 1, 1], [0, 0, 0], [3, 3, 3], [1, d, d]),
        (false, _) => ([1, 1, 1], [0, 0, 0], [1, 3, 3], [0, d, d]),
    };
    let out = conv_module(
        g,
        "conv1",
        x,
        Conv::new(p, &k1).stride(&s1).padding(&p1).no_bias(),
        true,
        true,
    )?;
    let out = conv_module(
        g,
        "conv2",
        out,
        Conv::new(p, &k2)
            .stride(&s2)
            .padding(&p2)
            .dilation(&[1, d, d])
            .no_bias(),
        true,
        true,
    )?;
    conv_module(
        g,
        "conv3",
        out,
        Conv::new(4 * p, &[1, 1, 1]).no_bias(),
        true,
        false,
    )
}

fn basic_block3d(g: &mut GraphBuilder, x: ValueId, b: &Block) -> Result<ValueId> {
    let (p, d) = (b.planes, b.dilation);
    let (k, p1, p2) = if b.inflate {
        ([3, 3, 3], [1, d, d], [1, 1, 1])
    } else {
        ([1, 3, 3], [0, d, d], [0, 1, 1])
    };
    let out = conv_module(
        g,
        "conv1",
        x,
        Conv::new(p, &k)
            .stride(&[b.temporal_stride, b.spatial_stride, b.spatial_stride])
            .padding(&p1)
            .dilation(&[1, d, d])
            .no_bias(),
        true,
        true,
    )?;
    conv_module(
        g,
        "conv2",
        out,
        Conv::new(p, &k).padding(&p2).no_bias(),
        true,
        false,
    )
}

/// A 1×1×1 projection of NonLocal3d (ConvModule with bias, no norm), followed by the (1,2,2) max-pool
/// inside a Sequential when `pool`.
fn nl_proj(g: &mut GraphBuilder, name: &str, x: ValueId, ci: usize, pool: bool) -> Result<ValueId> {
    if pool {
        g.module(name, "Sequential", x, |g, x| {
            let y = conv_module(g, "0", x, Conv::new(ci, &[1, 1, 1]), false, false)?;
            g.max_pool("1", y, PoolParams::new(&[1, 2, 2]))
        })
    } else {
        conv_module(g, name, x, Conv::new(ci, &[1, 1, 1]), false, false)
    }
}

/// [B, C, T, H, W] → [B, C, T·H·W].
fn flat(g: &mut GraphBuilder, x: ValueId) -> Result<(ValueId, usize)> {
    let s = g.shape(x).to_vec();
    let n: usize = s[2..].iter().product();
    Ok((g.reshape(x, &[-1, s[1] as isize, n as isize])?, n))
}

/// mmcv NonLocal3d (module docs): `g` first, then θ and φ, the pairwise function, `conv_out`, the sum.
fn non_local3d(g: &mut GraphBuilder, x: ValueId, c: &NonLocalConfig) -> Result<ValueId> {
    g.module("non_local_block", "NonLocal3d", x, |g, x| {
        let s = g.shape(x).to_vec();
        let ci = (s[1] / c.reduction.max(1)).max(1);
        let gx = nl_proj(g, "g", x, ci, c.sub_sample)?;
        let (gx, m) = flat(g, gx)?;
        let y = match c.mode {
            NonLocalMode::Gaussian => {
                let (q, _) = flat(g, x)?;
                let k = if c.sub_sample {
                    let k = g.max_pool("phi", x, PoolParams::new(&[1, 2, 2]))?;
                    flat(g, k)?.0
                } else {
                    q
                };
                g.attention(q, k, gx, 1.0)?
            }
            NonLocalMode::EmbeddedGaussian | NonLocalMode::DotProduct => {
                let th = nl_proj(g, "theta", x, ci, false)?;
                let (th, _) = flat(g, th)?;
                let ph = nl_proj(g, "phi", x, ci, c.sub_sample)?;
                let (ph, _) = flat(g, ph)?;
                if c.mode == NonLocalMode::EmbeddedGaussian {
                    let scale = if c.use_scale {
                        1.0 / (ci as f32).sqrt()
                    } else {
                        1.0
                    };
                    g.attention(th, ph, gx, scale)?
                } else {
                    // pairwiseᵀ = φᵀθ / M  [B, M, N];  y = g · pairwiseᵀ  [B, C', N]
                    let pht = g.permute(ph, &[0, 2, 1])?;
                    let pw = g.matmul(pht, th)?;
                    let pw = g.mul_scalar(pw, 1.0 / m as f32)?;
                    g.matmul(gx, pw)?
                }
            }
        };
        let y = g.reshape(
            y,
            &[-1, ci as isize, s[2] as isize, s[3] as isize, s[4] as isize],
        )?;
        let y = conv_module(
            g,
            "conv_out",
            y,
            Conv::new(s[1], &[1, 1, 1]).bias(!c.norm),
            c.norm,
            false,
        )?;
        g.add(x, y)
    })
}

fn block(
    g: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    b: &Block,
    cfg: &ResNet3dConfig,
) -> Result<ValueId> {
    let ty = if b.bottleneck {
        "Bottleneck3d"
    } else {
        "BasicBlock3d"
    };
    g.module_checkpointed(name, ty, x, cfg.with_cp, |g, x| {
        let out = if b.bottleneck {
            bottleneck3d(g, x, b, cfg)?
        } else {
            basic_block3d(g, x, b)?
        };
        let identity = if b.downsample {
            let cout = if b.bottleneck { 4 * b.planes } else { b.planes };
            conv_module(
                g,
                "downsample",
                x,
                Conv::new(cout, &[1, 1, 1])
                    .stride(&[b.temporal_stride, b.spatial_stride, b.spatial_stride])
                    .no_bias(),
                true,
                false,
            )?
        } else {
            x
        };
        let out = g.add(out, identity)?;
        let out = g.relu("relu", out)?;
        if b.non_local {
            non_local3d(g, out, &cfg.non_local_cfg)
        } else {
            Ok(out)
        }
    })
}

/// Expand per-stage flags to `n` blocks.
fn stage_flags(what: &str, f: &[bool], stage: usize, n: usize) -> Result<Vec<bool>> {
    match f.len() {
        1 => Ok(vec![f[0]; n]),
        l if l == n => Ok(f.to_vec()),
        l => arg_bail!(
            MODEL,
            "{what} of layer{} has {l} entries for {n} blocks",
            stage + 1
        ),
    }
}

fn backbone(g: &mut GraphBuilder, x: ValueId, cfg: &ResNet3dConfig) -> Result<ValueId> {
    let (bottleneck, blocks) = cfg.arch()?;
    let expansion = if bottleneck { 4 } else { 1 };
    let k = cfg.conv1_kernel;
    let x = conv_module(
        g,
        "conv1",
        x,
        Conv::new(cfg.base_channels, &k)
            .stride(&[cfg.conv1_stride_t, cfg.conv1_stride_s, cfg.conv1_stride_s])
            .padding(&[(k[0] - 1) / 2, (k[1] - 1) / 2, (k[2] - 1) / 2])
            .no_bias(),
        true,
        true,
    )?;
    let mut x = if cfg.with_pool1 {
        g.max_pool(
            "maxpool",
            x,
            PoolParams::new(&[1, 3, 3])
                .stride(&[cfg.pool1_stride_t, cfg.pool1_stride_s, cfg.pool1_stride_s])
                .padding(&[0, 1, 1]),
        )?
    } else {
        x
    };
    let mut inplanes = cfg.base_channels;
    for (i, &n) in blocks.iter().enumerate() {
        let planes = cfg.base_channels << i;
        let inflate = stage_flags("inflate", &cfg.inflate[i], i, n)?;
        let non_local = stage_flags("non_local", &cfg.non_local[i], i, n)?;
        let (ss, ts) = (cfg.spatial_strides[i], cfg.temporal_strides[i]);
        let downsample = ss != 1 || inplanes != planes * expansion;
        x = g.module(&format!("layer{}", i + 1), "Sequential", x, |g, mut x| {
            for j in 0..n {
                let first = j == 0;
                let b = Block {
                    bottleneck,
                    planes,
                    spatial_stride: if first { ss } else { 1 },
                    temporal_stride: if first { ts } else { 1 },
                    dilation: cfg.dilations[i],
                    downsample: first && downsample,
                    inflate: inflate[j],
                    non_local: non_local[j],
                };
                x = block(g, &j.to_string(), x, &b, cfg)?;
            }
            Ok(x)
        })?;
        inplanes = planes * expansion;
        if i == 0 && cfg.with_pool2 {
            x = g.max_pool("pool2", x, PoolParams::new(&[2, 1, 1]).stride(&[2, 1, 1]))?;
        }
    }
    Ok(x)
}

/// Initialisation as mmaction2 builds the model from scratch: backbone convs kaiming-normal (fan_out,
/// ReLU), BN γ 1 (0 on each block's last BN with `zero_init_residual`); NonLocal3d's own init (g, θ, φ
/// N(0, 0.01²) with zero bias, conv_out's BN γ — or conv_out itself without BN — zero); fc_cls N(0, 0.01²),
/// zero bias.
fn init(graph: &mut Graph, cfg: &ResNet3dConfig, bottleneck: bool) {
    let last_bn = if bottleneck {
        ".conv3.bn.weight"
    } else {
        ".conv2.bn.weight"
    };
    for p in &mut graph.params {
        let n = p.name.as_str();
        if n.contains(".non_local_block.") {
            let out = n.contains(".conv_out.");
            if !out && n.ends_with(".conv.weight") {
                p.init = Init::Normal { std: 0.01 };
            } else if (!out && n.ends_with(".conv.bias"))
                || (out && (n.ends_with(".bn.weight") || !cfg.non_local_cfg.norm))
            {
                p.init = Init::Const(0.0);
            }
        } else if n.starts_with("backbone.") && n.ends_with(".conv.weight") {
            let fan_out: usize = p.shape[0] * p.shape[2..].iter().product::<usize>();
            p.init = Init::Normal {
                std: (2.0 / fan_out as f32).sqrt(),
            };
        } else if cfg.zero_init_residual && n.starts_with("backbone.layer") && n.ends_with(last_bn)
        {
            p.init = Init::Const(0.0);
        } else if n == "cls_head.fc_cls.weight" {
            p.init = Init::Normal { std: 0.01 };
        } else if n == "cls_head.fc_cls.bias" {
            p.init = Init::Const(0.0);
        }
    }
}

/// The recogniser for inputs of `input_shape` [B, C, T, H, W].
pub fn resnet3d(cfg: &ResNet3dConfig, input_shape: &[usize]) -> Result<Graph> {
    let [_, c, _, _, _] = input_shape[..] else {
        arg_bail!(
            MODEL,
            "input shape must be [B, C, T, H, W], got {input_shape:?}"
        );
    };
    let (bottleneck, _) = cfg.arch()?;
    if c == 0 || cfg.classes == 0 || cfg.base_channels == 0 {
        arg_bail!(
            MODEL,
            "channels, base_channels and classes must be positive"
        );
    }
    if cfg.inflate.len() != 4 || cfg.non_local.len() != 4 {
        arg_bail!(MODEL, "inflate and non_local need one entry per stage (4)");
    }
    let mut g = GraphBuilder::new("Recognizer3D");
    let x = g.input("input", input_shape)?;
    let x = g.module("backbone", "ResNet3d", x, |g, x| backbone(g, x, cfg))?;
    let y = g.module("cls_head", "I3DHead", x, |g, x| {
        let x = g.adaptive_avg_pool("avg_pool", x, &[1, 1, 1])?;
        let x = if cfg.dropout != 0.0 {
            g.dropout("dropout", x, cfg.dropout)?
        } else {
            x
        };
        let x = g.flatten(x, 1, -1)?;
        g.linear("fc_cls", x, Linear::new(cfg.classes))
    })?;
    let mut graph = g.finish(&[y])?;
    init(&mut graph, cfg, bottleneck);
    Ok(graph)
}

/// `vidgrad` entry point: the configuration from `opts`, the graph for `input_shape`.
pub fn build(opts: &ModelOptions, input_shape: &[usize]) -> Result<Graph> {
    resnet3d(&ResNet3dConfig::from_options(opts)?, input_shape)
}

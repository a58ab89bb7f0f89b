//! PySlowFast's single-pathway ResNet (`slowfast/models/video_model_builder.py::ResNet`) in its C2D and
//! I3D forms, with or without non-local blocks (seed 000; Wang et al., "Non-local Neural Networks",
//! CVPR 2018). Module tree, module types and state_dict names are PySlowFast's, so a checkpoint it
//! exported loads unchanged:
//!
//! | module                        | PySlowFast type     | layers                                                    |
//! |-------------------------------|---------------------|-----------------------------------------------------------|
//! | `s1.pathway0_stem`            | ResNetBasicStem     | conv (kt,7,7) s(1,2,2) p(kt/2,3,3), bn, relu, pool_layer (1,3,3) s(1,2,2) p(0,1,1) |
//! | `s2` … `s5`                   | ResStage            | `pathway0_res{i}`: ResBlock; `pathway0_nonlocal{i}`: Nonlocal |
//! | `pathway0_pool`               | MaxPool3d           | (2,1,1) s(2,1,1), after s2                                 |
//! | `head`                        | ResNetBasicHead     | pathway0_avgpool, permute to channels-last, dropout, projection, [act] |
//!
//! ResBlock: `branch2` (BottleneckTransform: `a` (kt,1,1) → `a_bn` → ReLU → `b` (1,3,3) with the spatial
//! stride → `b_bn` → ReLU → `c` 1×1×1 → `c_bn`), then on the first block of a stage the projection
//! shortcut `branch1` (1×1×1, spatial stride) + `branch1_bn`, the sum, ReLU. Convolutions have no bias.
//!
//! Nonlocal (instantiation "softmax", after blocks 1, 3 of res3 and 1, 3, 5 of res4): θ = `conv_theta`(x);
//! x pooled by `pool` (1,2,2) *before* `conv_phi` and `conv_g` (all 1×1×1 with bias, C → C/2);
//! y = softmax(θᵀφ · (C/2)^−½) g, one fused `attention` op; out = x + `bn`(`conv_out`(y)).
//!
//! Presets (PySlowFast's `_TEMPORAL_KERNEL_BASIS`): C2D has temporal kernel 1 everywhere; I3D has a
//! 5-frame stem and 3-frame `a` convs in res2 [3,3,3], res3 [3,1,3,1], res4 [3,1,3,1,3,1], res5 [1,3,1].
//! Input [B, 3, T, H, W] (T even: `pathway0_pool` halves it). Parameters at ResNet-50: C2D+NL with 2
//! classes 30,870,594 (seed 000's table); I3D 28,043,472, I3D+NL 35,401,936 at 400 classes.
//!
//! The head's softmax (`act`, dim 4) is what PySlowFast applies at inference only; the graph has one
//! form for both modes, so it is left out by default (logits for training with cross entropy) and
//! included with `softmax: true`. PySlowFast's pool kernel is (NUM_FRAMES/2, CROP/32, CROP/32); here it
//! is the res5 feature map's full size, the same at the training size.

use crate::error::{arg_bail, Result};
use crate::graph::{BatchNorm, Conv, Graph, GraphBuilder, Init, Linear, Op, ValueId};
use crate::ops::PoolParams;

/// Which of PySlowFast's `MODEL.ARCH` temporal-kernel presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// `c2d`: all temporal kernels 1 (a 2D ResNet applied per frame, with one temporal max pool).
    C2d,
    /// `i3d`: inflated temporal kernels (stem 5, bottleneck `a` convs 3 on alternating blocks).
    I3d,
}

impl std::str::FromStr for Preset {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        match s {
            "c2d" => Ok(Preset::C2d),
            "i3d" => Ok(Preset::I3d),
            _ => Err(()),
        }
    }
}

impl Preset {
    /// Temporal kernel of the stem conv.
    fn stem_kt(self) -> usize {
        match self {
            Preset::C2d => 1,
            Preset::I3d => 5,
        }
    }

    /// Temporal kernel of the `a` conv of block `i` of stage `stage` (2..=5): PySlowFast repeats the
    /// stage's basis list over the blocks.
    fn block_kt(self, stage: usize, i: usize) -> usize {
        match self {
            Preset::C2d => 1,
            Preset::I3d => {
                let basis: &[usize] = match stage {
                    2 => &[3],
                    3 | 4 => &[3, 1],
                    _ => &[1, 3],
                };
                basis[i % basis.len()]
            }
        }
    }
}

/// Options of PySlowFast's ResNet (a config's `MODEL.ARCH`, `RESNET.DEPTH`, `NONLOCAL.LOCATION`,
/// `MODEL.NUM_CLASSES`, `MODEL.DROPOUT_RATE`, `MODEL.HEAD_ACT`, `MODEL.ACT_CHECKPOINT`).
#[derive(Debug, Clone, PartialEq)]
pub struct SlowFastResNetConfig {
    pub preset: Preset,
    /// 50 or 101 (`_MODEL_STAGE_DEPTH`).
    pub depth: usize,
    /// Non-local blocks after blocks 1, 3 of res3 and 1, 3, 5 of res4 (the NLN configs' LOCATION).
    pub nonlocal: bool,
    pub classes: usize,
    /// Dropout before the projection (0.5 in PySlowFast; no Dropout module at 0, as there).
    pub dropout: f32,
    /// End with the head's Softmax (PySlowFast's inference-time `act`) instead of logits.
    pub softmax: bool,
    /// Gradient checkpointing of `s1` and `s2` (PySlowFast's `MODEL.ACT_CHECKPOINT`).
    pub checkpoint: bool,
}

impl Default for SlowFastResNetConfig {
    fn default() -> Self {
        SlowFastResNetConfig {
            preset: Preset::C2d,
            depth: 50,
            nonlocal: true,
            classes: 400,
            dropout: 0.5,
            softmax: false,
            checkpoint: false,
        }
    }
}

/// `_MODEL_STAGE_DEPTH`: blocks per stage res2..res5.
fn stage_depths(depth: usize) -> Option<[usize; 4]> {
    match depth {
        50 => Some([3, 4, 6, 3]),
        101 => Some([3, 4, 23, 3]),
        _ => None,
    }
}

/// `NONLOCAL.LOCATION` of the NLN configs: block indices followed by a Nonlocal, per stage res2..res5.
fn nonlocal_after(stage: usize) -> &'static [usize] {
    match stage {
        3 => &[1, 3],
        4 => &[1, 3, 5],
        _ => &[],
    }
}

/// ResNetBasicStem: conv → bn → relu → pool_layer.
fn stem(g: &mut GraphBuilder, x: ValueId, kt: usize) -> Result<ValueId> {
    let x = g.conv(
        "conv",
        x,
        Conv::new(64, &[kt, 7, 7])
            .stride(&[1, 2, 2])
            .padding(&[kt / 2, 3, 3])
            .no_bias(),
    )?;
    let x = g.batch_norm("bn", x, BatchNorm::new())?;
    let x = g.relu("relu", x)?;
    g.max_pool(
        "pool_layer",
        x,
        PoolParams::new(&[1, 3, 3])
            .stride(&[1, 2, 2])
            .padding(&[0, 1, 1]),
    )
}

/// BottleneckTransform: a (kt,1,1) → b (1,3,3) carrying the spatial stride → c 1×1×1; `c_bn` is
/// zero-initialised (the configs' ZERO_INIT_FINAL_BN).
fn bottleneck(
    g: &mut GraphBuilder,
    x: ValueId,
    kt: usize,
    inner: usize,
    out: usize,
    stride: usize,
) -> Result<ValueId> {
    let x = g.conv(
        "a",
        x,
        Conv::new(inner, &[kt, 1, 1])
            .padding(&[kt / 2, 0, 0])
            .no_bias(),
    )?;
    let x = g.batch_norm("a_bn", x, BatchNorm::new())?;
    let x = g.relu("a_relu", x)?;
    let x = g.conv(
        "b",
        x,
        Conv::new(inner, &[1, 3, 3])
            .stride(&[1, stride, stride])
            .padding(&[0, 1, 1])
            .no_bias(),
    )?;
    let x = g.batch_norm("b_bn", x, BatchNorm::new())?;
    let x = g.relu("b_relu", x)?;
    let x = g.conv("c", x, Conv::new(out, &[1, 1, 1]).no_bias())?;
    g.batch_norm("c_bn", x, BatchNorm::new().zero_init())
}

/// ResBlock: relu(branch2(x) + shortcut), the shortcut being `branch1_bn(branch1(x))` when channels or
/// stride change. branch2 runs first, as in PySlowFast's forward.
fn res_block(
    g: &mut GraphBuilder,
    x: ValueId,
    kt: usize,
    inner: usize,
    out: usize,
    stride: usize,
) -> Result<ValueId> {
    let cin = g.shape(x)[1];
    let f_x = g.module("branch2", "BottleneckTransform", x, |g, x| {
        bottleneck(g, x, kt, inner, out, stride)
    })?;
    let shortcut = if cin != out || stride != 1 {
        let s = g.conv(
            "branch1",
            x,
            Conv::new(out, &[1, 1, 1])
                .stride(&[1, stride, stride])
                .no_bias(),
        )?;
        g.batch_norm("branch1_bn", s, BatchNorm::new())?
    } else {
        x
    };
    let y = g.add(shortcut, f_x)?;
    g.relu("relu", y)
}

/// Nonlocal (softmax instantiation, pool (1,2,2) before φ and g): x + bn(conv_out(attention)).
fn nonlocal(g: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let s = g.shape(x).to_vec();
    let (c, t, h, w) = (s[1], s[2], s[3], s[4]);
    let ci = c / 2;
    let c1 = |n: usize| Conv::new(n, &[1, 1, 1]);
    let theta = g.conv("conv_theta", x, c1(ci))?;
    let pooled = g.max_pool("pool", x, PoolParams::new(&[1, 2, 2]).stride(&[1, 2, 2]))?;
    let phi = g.conv("conv_phi", pooled, c1(ci))?;
    let gv = g.conv("conv_g", pooled, c1(ci))?;
    let ci = ci as isize;
    let theta = g.reshape(theta, &[-1, ci, (t * h * w) as isize])?;
    let m = g.shape(phi)[2..].iter().product::<usize>() as isize;
    let phi = g.reshape(phi, &[-1, ci, m])?;
    let gv = g.reshape(gv, &[-1, ci, m])?;
    let y = g.attention(theta, phi, gv, (ci as f32).powf(-0.5))?;
    let y = g.reshape(y, &[-1, ci, t as isize, h as isize, w as isize])?;
    let p = g.conv("conv_out", y, c1(c))?;
    let p = g.batch_norm("bn", p, BatchNorm::new().zero_init())?;
    g.add(x, p)
}

/// ResStage `s{stage}` (2..=5): `blocks` ResBlocks `pathway0_res{i}`, Nonlocal `pathway0_nonlocal{i}`
/// after the blocks in `nl`.
#[allow(clippy::too_many_arguments)]
fn res_stage(
    g: &mut GraphBuilder,
    x: ValueId,
    cfg: &SlowFastResNetConfig,
    stage: usize,
    blocks: usize,
    inner: usize,
    stride: usize,
) -> Result<ValueId> {
    let nl = if cfg.nonlocal {
        nonlocal_after(stage)
    } else {
        &[]
    };
    let mut x = x;
    for i in 0..blocks {
        let kt = cfg.preset.block_kt(stage, i);
        let s = if i == 0 { stride } else { 1 };
        x = g.module(&format!("pathway0_res{i}"), "ResBlock", x, |g, x| {
            res_block(g, x, kt, inner, 4 * inner, s)
        })?;
        if nl.contains(&i) {
            x = g.module(&format!("pathway0_nonlocal{i}"), "Nonlocal", x, nonlocal)?;
        }
    }
    Ok(x)
}

/// ResNetBasicHead: pathway0_avgpool over the whole feature map (stride 1) → permute to [B,1,1,1,C]
/// → dropout → projection → [act: Softmax(dim 4)] → view [B, classes].
fn head(g: &mut GraphBuilder, x: ValueId, cfg: &SlowFastResNetConfig) -> Result<ValueId> {
    let s = g.shape(x).to_vec();
    let x = g.avg_pool(
        "pathway0_avgpool",
        x,
        PoolParams::new(&s[2..]).stride(&[1, 1, 1]),
        true,
    )?;
    let x = g.permute(x, &[0, 2, 3, 4, 1])?;
    let x = if cfg.dropout > 0.0 {
        g.dropout("dropout", x, cfg.dropout)?
    } else {
        x
    };
    let x = g.linear("projection", x, Linear::new(cfg.classes))?;
    let x = if cfg.softmax {
        g.softmax("act", x, 4)?
    } else {
        x
    };
    g.reshape(x, &[-1, cfg.classes as isize])
}

/// PySlowFast's weight init (`init_helper.init_weights`): convs c2_msra_fill (He normal over fan-out,
/// bias 0), batch norm γ 1 (0 where zero-initialised) and β 0, the projection N(0, 0.01²) with bias 0.
fn pyslowfast_init(graph: &mut Graph) {
    for n in &graph.nodes {
        match n.op {
            Op::Conv(_) => {
                let w = &graph.params[n.params[0]].shape;
                let fan_out: usize = w[0] * w[2..].iter().product::<usize>();
                let std = (2.0 / fan_out as f32).sqrt();
                graph.params[n.params[0]].init = Init::Normal { std };
                if let Some(&b) = n.params.get(1) {
                    graph.params[b].init = Init::Const(0.0);
                }
            }
            Op::Linear => {
                graph.params[n.params[0]].init = Init::Normal { std: 0.01 };
                if let Some(&b) = n.params.get(1) {
                    graph.params[b].init = Init::Const(0.0);
                }
            }
            _ => {}
        }
    }
}

/// The network for an input [B, 3, T, H, W].
pub fn slowfast_resnet(cfg: &SlowFastResNetConfig, input_shape: &[usize]) -> Result<Graph> {
    const M: &str = "slowfast-resnet";
    let [b, c, t, h, w] = input_shape[..] else {
        arg_bail!(
            M,
            "input shape must be [B, 3, T, H, W], got {input_shape:?}"
        );
    };
    if c != 3 {
        arg_bail!(M, "input must have 3 channels, got {input_shape:?}");
    }
    if t < 2 || t % 2 != 0 {
        arg_bail!(M, "T must be even (pathway0_pool halves it), got {t}");
    }
    if h < 32 || w < 32 {
        arg_bail!(M, "H and W must be at least 32, got {h}x{w}");
    }
    if cfg.classes == 0 {
        arg_bail!(M, "classes must be positive");
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        arg_bail!(M, "dropout must be in [0, 1), got {}", cfg.dropout);
    }
    let Some(depths) = stage_depths(cfg.depth) else {
        arg_bail!(M, "depth must be 50 or 101, got {}", cfg.depth);
    };
    let mut g = GraphBuilder::new("ResNet");
    let x = g.input("input", &[b, c, t, h, w])?;
    let kt = cfg.preset.stem_kt();
    let x = g.module_checkpointed("s1", "VideoModelStem", x, cfg.checkpoint, |g, x| {
        g.module("pathway0_stem", "ResNetBasicStem", x, |g, x| stem(g, x, kt))
    })?;
    let x = g.module_checkpointed("s2", "ResStage", x, cfg.checkpoint, |g, x| {
        res_stage(g, x, cfg, 2, depths[0], 64, 1)
    })?;
    let x = g.max_pool(
        "pathway0_pool",
        x,
        PoolParams::new(&[2, 1, 1]).stride(&[2, 1, 1]),
    )?;
    let x = g.module("s3", "ResStage", x, |g, x| {
        res_stage(g, x, cfg, 3, depths[1], 128, 2)
    })?;
    let x = g.module("s4", "ResStage", x, |g, x| {
        res_stage(g, x, cfg, 4, depths[2], 256, 2)
    })?;
    let x = g.module("s5", "ResStage", x, |g, x| {
        res_stage(g, x, cfg, 5, depths[3], 512, 2)
    })?;
    let y = g.module("head", "ResNetBasicHead", x, |g, x| head(g, x, cfg))?;
    let mut graph = g.finish(&[y])?;
    pyslowfast_init(&mut graph);
    Ok(graph)
}

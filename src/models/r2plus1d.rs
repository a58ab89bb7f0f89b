//! R(2+1)D-18 (Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition",
//! CVPR 2018) as torchvision builds it (`torchvision.models.video.r2plus1d_18`, `VideoResNet` with
//! `Conv2Plus1D`; seed 001 quotes its `Conv2Plus1D`).
//!
//! | module | layers | output at 16×112² |
//! |---|---|---|
//! | `stem` | conv 3→45 (1,7,7) s(1,2,2) p(0,3,3), BN, ReLU, conv 45→64 (3,1,1) p(1,0,0), BN, ReLU | 64×16×56² |
//! | `layer1` | 2 BasicBlocks 64 | 64×16×56² |
//! | `layer2` | 2 BasicBlocks 128, first stride 2 (T, H, W) | 128×8×28² |
//! | `layer3` | 2 BasicBlocks 256, first stride 2 | 256×4×14² |
//! | `layer4` | 2 BasicBlocks 512, first stride 2 | 512×2×7² |
//! | `avgpool`, `fc` | AdaptiveAvgPool3d(1), Linear(512, classes) | classes |
//!
//! BasicBlock: `conv1` = Sequential(Conv2Plus1D(in, planes, mid, stride), BN, ReLU), `conv2` =
//! Sequential(Conv2Plus1D(planes, planes, mid), BN); out = ReLU(conv2(conv1(x)) + downsample(x)), the
//! downsample (1×1×1 conv stride (s,s,s) + BN) on the first block of layers 2–4. Conv2Plus1D(in, out,
//! mid, s) = Sequential(conv (1,3,3) s(1,s,s) p(0,1,1), BN, ReLU, conv (3,1,1) s(s,1,1) p(1,0,0)); mid =
//! (inplanes·planes·27) // (inplanes·9 + 3·planes) is computed once per block from its (inplanes, planes)
//! and used by both of its Conv2Plus1D (so conv2's mid also follows the block's inplanes). No conv has a
//! bias. Names are torchvision's state_dict names: `stem.0.weight`, `layer1.0.conv1.0.0.weight`,
//! `layer1.0.conv1.0.1.running_mean`, `layer1.0.conv1.0.3.weight`, `layer1.0.conv1.1.weight`,
//! `layer2.0.downsample.0.weight`, `fc.bias`. 31,505,325 parameters at 400 classes; 40.5 GMAC per
//! 16×112² clip.

use crate::error::{arg_bail, Result};
use crate::graph::{BatchNorm, Conv, Graph, GraphBuilder, Linear, ValueId};

/// R(2+1)D-18's options.
#[derive(Debug, Clone, PartialEq)]
pub struct R2Plus1dConfig {
    pub classes: usize,
    /// Dropout before `fc` (torchvision has none: 0).
    pub dropout: f32,
}

impl Default for R2Plus1dConfig {
    fn default() -> Self {
        R2Plus1dConfig {
            classes: 400,
            dropout: 0.0,
        }
    }
}

/// torchvision's `midplanes` of a BasicBlock: the width that gives the (2+1)D factorisation the
/// parameter count of a full 3×3×3 conv from `inplanes` to `planes`.
pub fn midplanes(inplanes: usize, planes: usize) -> usize {
    (inplanes * planes * 27) / (inplanes * 9 + 3 * planes)
}

/// The bias-free 3-d conv used everywhere in VideoResNet.
pub(crate) fn conv3d(out: usize, k: [usize; 3], s: [usize; 3], p: [usize; 3]) -> Conv {
    Conv::new(out, &k).stride(&s).padding(&p).no_bias()
}

/// `R2Plus1dStem`: (1,7,7) spatial conv to 45 channels, then (3,1,1) temporal conv to 64.
pub(crate) fn stem(g: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let x = g.conv("0", x, conv3d(45, [1, 7, 7], [1, 2, 2], [0, 3, 3]))?;
    let x = g.batch_norm("1", x, BatchNorm::new())?;
    let x = g.relu("2", x)?;
    let x = g.conv("3", x, conv3d(64, [3, 1, 1], [1, 1, 1], [1, 0, 0]))?;
    let x = g.batch_norm("4", x, BatchNorm::new())?;
    g.relu("5", x)
}

/// `Conv2Plus1D(in, out, mid, stride)`: `0` (1,3,3) conv, `1` BN, `2` ReLU, `3` (3,1,1) conv.
fn conv2plus1d(
    g: &mut GraphBuilder,
    x: ValueId,
    out: usize,
    mid: usize,
    s: usize,
) -> Result<ValueId> {
    let x = g.conv("0", x, conv3d(mid, [1, 3, 3], [1, s, s], [0, 1, 1]))?;
    let x = g.batch_norm("1", x, BatchNorm::new())?;
    let x = g.relu("2", x)?;
    g.conv("3", x, conv3d(out, [3, 1, 1], [s, 1, 1], [1, 0, 0]))
}

/// The 1×1×1 stride-(s,s,s) conv + BN shortcut (`downsample.0`, `downsample.1`), shared with CT-sep.
pub(crate) fn downsample(
    g: &mut GraphBuilder,
    x: ValueId,
    planes: usize,
    s: usize,
) -> Result<ValueId> {
    g.module("downsample", "Sequential", x, |g, x| {
        let x = g.conv("0", x, conv3d(planes, [1, 1, 1], [s, s, s], [0, 0, 0]))?;
        g.batch_norm("1", x, BatchNorm::new())
    })
}

/// torchvision's `BasicBlock` with the Conv2Plus1D builder.
fn basic_block(
    g: &mut GraphBuilder,
    x: ValueId,
    inplanes: usize,
    planes: usize,
    stride: usize,
) -> Result<ValueId> {
    let mid = midplanes(inplanes, planes);
    let out = g.module("conv1", "Sequential", x, |g, x| {
        let x = g.module("0", "Conv2Plus1D", x, |g, x| {
            conv2plus1d(g, x, planes, mid, stride)
        })?;
        let x = g.batch_norm("1", x, BatchNorm::new())?;
        g.relu("2", x)
    })?;
    let out = g.module("conv2", "Sequential", out, |g, x| {
        let x = g.module("0", "Conv2Plus1D", x, |g, x| {
            conv2plus1d(g, x, planes, mid, 1)
        })?;
        g.batch_norm("1", x, BatchNorm::new())
    })?;
    let residual = if stride != 1 || inplanes != planes {
        downsample(g, x, planes, stride)?
    } else {
        x
    };
    let out = g.add(out, residual)?;
    g.relu("relu", out)
}

/// VideoResNet's `_make_layer`: `blocks` BasicBlocks of width `planes`, the first with `stride`.
/// `block(g, x, inplanes, planes, stride)` builds one block inside its scope `{index}`.
pub(crate) fn make_layer<F>(
    g: &mut GraphBuilder,
    x: ValueId,
    inplanes: usize,
    planes: usize,
    blocks: usize,
    stride: usize,
    block: F,
) -> Result<ValueId>
where
    F: Fn(&mut GraphBuilder, ValueId, usize, usize, usize) -> Result<ValueId>,
{
    let mut x = x;
    for i in 0..blocks {
        let (cin, s) = if i == 0 {
            (inplanes, stride)
        } else {
            (planes, 1)
        };
        x = g.module(&i.to_string(), "BasicBlock", x, |g, x| {
            block(g, x, cin, planes, s)
        })?;
    }
    Ok(x)
}

/// The four stages 64/128/256/512 (strides 1, 2, 2, 2) of `blocks` each, then `avgpool`, optional
/// `dropout` and `fc` — VideoResNet's body, shared by R(2+1)D-18 and CT-sep.
pub(crate) fn stages_and_head<F>(
    g: &mut GraphBuilder,
    x: ValueId,
    blocks: [usize; 4],
    classes: usize,
    dropout: f32,
    block: F,
) -> Result<ValueId>
where
    F: Fn(&mut GraphBuilder, ValueId, usize, usize, usize) -> Result<ValueId> + Copy,
{
    let mut x = x;
    let mut inplanes = 64;
    for (i, (planes, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)]
        .into_iter()
        .enumerate()
    {
        x = g.module(&format!("layer{}", i + 1), "Sequential", x, |g, x| {
            make_layer(g, x, inplanes, planes, blocks[i], stride, block)
        })?;
        inplanes = planes;
    }
    let x = g.adaptive_avg_pool("avgpool", x, &[1, 1, 1])?;
    let x = g.flatten(x, 1, -1)?;
    let x = if dropout > 0.0 {
        g.dropout("dropout", x, dropout)?
    } else {
        x
    };
    g.linear("fc", x, Linear::new(classes))
}

/// Checks shared by the VideoResNet-style models: input [B, 3, T, H, W], positive classes.
pub(crate) fn check_input(model: &'static str, shape: &[usize], classes: usize) -> Result<()> {
    let [b, c, t, h, w] = shape[..] else {
        arg_bail!(model, "input shape must be [B, 3, T, H, W], got {shape:?}");
    };
    if c != 3 || b == 0 || t == 0 || h == 0 || w == 0 {
        arg_bail!(model, "input shape must be [B, 3, T, H, W], got {shape:?}");
    }
    if classes == 0 {
        arg_bail!(model, "classes must be positive");
    }
    Ok(())
}

/// The R(2+1)D-18 graph for an input of `input_shape` = [B, 3, T, H, W] (16×112² in torchvision).
pub fn r2plus1d_18(cfg: &R2Plus1dConfig, input_shape: &[usize]) -> Result<Graph> {
    check_input("r2plus1d-18", input_shape, cfg.classes)?;
    let mut g = GraphBuilder::new("VideoResNet");
    let x = g.input("input", input_shape)?;
    let x = g.module("stem", "R2Plus1dStem", x, stem)?;
    let y = stages_and_head(
        &mut g,
        x,
        [2, 2, 2, 2],
        cfg.classes,
        cfg.dropout,
        basic_block,
    )?;
    g.finish(&[y])
}

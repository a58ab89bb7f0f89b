//! ECO-Lite (Zolfaghari et al., ECCV 2018) as written in the book "PyTorchによる発展ディープラーニング"
//! ch. 9 (`utils/eco.py`; seeds 002/003): a BN-Inception 2D part applied to every frame, then a 3D
//! ResNet over the stacked feature maps, global average pooling and one linear layer.
//!
//! Input [B, T, 3, H, W] (T a multiple of 4; H, W multiples of 32, 224 in the book). Parameter names are
//! the book's (`eco_2d.basic_conv.conv1_7x7_s2.weight`, ..., `fc_final.bias`). 37,503,856 parameters at
//! 400 classes.

use crate::error::{arg_bail, Result};
use crate::graph::{BatchNorm, Conv, Graph, GraphBuilder, Linear, ValueId};
use crate::ops::PoolParams;

/// ECO-Lite's options.
#[derive(Debug, Clone, PartialEq)]
pub struct EcoLiteConfig {
    pub classes: usize,
    pub frames: usize,
    /// Frame height and width.
    pub size: usize,
    /// Dropout before `fc_final`: 0 in the book, 0.3 in the official ECO code.
    pub dropout: f32,
}

impl Default for EcoLiteConfig {
    fn default() -> Self {
        EcoLiteConfig {
            classes: 400,
            frames: 16,
            size: 224,
            dropout: 0.0,
        }
    }
}

/// conv → BN → ReLU with the book's naming: `{name}`, `{name}_bn`, `{relu}`.
fn conv_bn_relu(
    g: &mut GraphBuilder,
    x: ValueId,
    name: &str,
    relu: &str,
    conv: Conv,
) -> Result<ValueId> {
    let x = g.conv(name, x, conv)?;
    let x = g.batch_norm(&format!("{name}_bn"), x, BatchNorm::new())?;
    g.relu(relu, x)
}

/// 2-d k×k conv with padding k/2 (stride 1), as every Inception conv here.
fn c2(out: usize, k: usize) -> Conv {
    Conv::new(out, &[k, k]).padding(&[k / 2, k / 2])
}

/// 3×3×3 conv, padding 1.
fn c3(out: usize, stride: usize) -> Conv {
    Conv::new(out, &[3, 3, 3])
        .stride(&[stride; 3])
        .padding(&[1, 1, 1])
}

fn basic_conv(g: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let pool = || PoolParams::new(&[3, 3]).stride(&[2, 2]).ceil_mode(true);
    let x = conv_bn_relu(
        g,
        x,
        "conv1_7x7_s2",
        "conv1_relu_7x7",
        Conv::new(64, &[7, 7]).stride(&[2, 2]).padding(&[3, 3]),
    )?;
    let x = g.max_pool("pool1_3x3_s2", x, pool())?;
    let x = conv_bn_relu(g, x, "conv2_3x3_reduce", "conv2_relu_3x3_reduce", c2(64, 1))?;
    let x = conv_bn_relu(g, x, "conv2_3x3", "conv2_relu_3x3", c2(192, 3))?;
    g.max_pool("pool2_3x3_s2", x, pool())
}

/// Inception block `tag` ("3a", "3b"): [1×1] [3×3_reduce → 3×3] [double_3x3_reduce → double_3x3_1 →
/// double_3x3_2] [avg pool 3×3 (count_include_pad) → pool_proj], concatenated along channels.
fn inception(g: &mut GraphBuilder, x: ValueId, tag: &str, c: [usize; 6]) -> Result<ValueId> {
    let n = |s: &str| format!("inception_{tag}_{s}");
    let r = |s: &str| format!("inception_{tag}_relu_{s}");
    let out1 = conv_bn_relu(g, x, &n("1x1"), &r("1x1"), c2(c[0], 1))?;
    let out2 = conv_bn_relu(g, x, &n("3x3_reduce"), &r("3x3_reduce"), c2(c[1], 1))?;
    let out2 = conv_bn_relu(g, out2, &n("3x3"), &r("3x3"), c2(c[2], 3))?;
    let out3 = conv_bn_relu(
        g,
        x,
        &n("double_3x3_reduce"),
        &r("double_3x3_reduce"),
        c2(c[3], 1),
    )?;
    let out3 = conv_bn_relu(g, out3, &n("double_3x3_1"), &r("double_3x3_1"), c2(c[4], 3))?;
    let out3 = conv_bn_relu(g, out3, &n("double_3x3_2"), &r("double_3x3_2"), c2(c[4], 3))?;
    let out4 = g.avg_pool(
        &n("pool"),
        x,
        PoolParams::new(&[3, 3]).stride(&[1, 1]).padding(&[1, 1]),
        true,
    )?;
    let out4 = conv_bn_relu(g, out4, &n("pool_proj"), &r("pool_proj"), c2(c[5], 1))?;
    g.concat(&[out1, out2, out3, out4], 1)
}

fn eco_2d(g: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let x = g.module("basic_conv", "BasicConv", x, basic_conv)?;
    let x = g.module("inception_a", "InceptionA", x, |g, x| {
        inception(g, x, "3a", [64, 64, 64, 64, 96, 32])
    })?;
    let x = g.module("inception_b", "InceptionB", x, |g, x| {
        inception(g, x, "3b", [64, 64, 96, 64, 96, 64])
    })?;
    g.module("inception_c", "InceptionC", x, |g, x| {
        let x = conv_bn_relu(
            g,
            x,
            "inception_3c_double_3x3_reduce",
            "inception_3c_relu_double_3x3_reduce",
            c2(64, 1),
        )?;
        conv_bn_relu(
            g,
            x,
            "inception_3c_double_3x3_1",
            "inception_3c_relu_double_3x3_1",
            c2(96, 3),
        )
    })
}

/// res_3d_3: residual = res3a_2(x); out = res3b_2(relu(bn(res3b_1(relu(bn(residual)))))) + residual;
/// then BN and ReLU. The additions use the pre-BN tensors, as in the book's forward.
fn res_3d_3(g: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let residual = g.conv("res3a_2", x, c3(128, 1))?;
    let out = g.batch_norm("res3a_bn", residual, BatchNorm::new())?;
    let out = g.relu("res3a_relu", out)?;
    let out = conv_bn_relu(g, out, "res3b_1", "res3b_1_relu", c3(128, 1))?;
    let out = g.conv("res3b_2", out, c3(128, 1))?;
    let out = g.add(out, residual)?;
    let out = g.batch_norm("res3b_bn", out, BatchNorm::new())?;
    g.relu("res3b_relu", out)
}

/// res_3d_4 / res_3d_5 (`s` = "4" or "5"): a stride-2 3×3×3 shortcut (`res{s}a_down`) summed with
/// res{s}a_1 → BN → ReLU → res{s}a_2, then a second residual unit on that sum.
fn res_3d_down(g: &mut GraphBuilder, x: ValueId, s: &str, ch: usize) -> Result<ValueId> {
    let n = |part: &str| format!("res{s}{part}");
    let residual = g.conv(&n("a_down"), x, c3(ch, 2))?;
    let out = conv_bn_relu(g, x, &n("a_1"), &n("a_1_relu"), c3(ch, 2))?;
    let out = g.conv(&n("a_2"), out, c3(ch, 1))?;
    let residual2 = g.add(out, residual)?;
    let out = g.batch_norm(&n("a_bn"), residual2, BatchNorm::new())?;
    let out = g.relu(&n("a_relu"), out)?;
    let out = conv_bn_relu(g, out, &n("b_1"), &n("b_1_relu"), c3(ch, 1))?;
    let out = g.conv(&n("b_2"), out, c3(ch, 1))?;
    let out = g.add(out, residual2)?;
    let out = g.batch_norm(&n("b_bn"), out, BatchNorm::new())?;
    g.relu(&n("b_relu"), out)
}

/// The ECO-Lite graph for a batch of `batch` clips.
pub fn eco_lite(cfg: &EcoLiteConfig, batch: usize) -> Result<Graph> {
    let EcoLiteConfig {
        classes,
        frames,
        size,
        dropout,
    } = *cfg;
    if frames == 0 || frames % 4 != 0 {
        arg_bail!(
            "eco-lite",
            "frames must be a positive multiple of 4 (the 3D part halves T twice), got {frames}"
        );
    }
    if size == 0 || size % 32 != 0 {
        arg_bail!(
            "eco-lite",
            "input size must be a positive multiple of 32, got {size}"
        );
    }
    if classes == 0 {
        arg_bail!("eco-lite", "classes must be positive");
    }
    let mut g = GraphBuilder::new("ECO_Lite");
    let x = g.input("input", &[batch, frames, 3, size, size])?;
    // Frames go through the 2D part as one batch of B·T images.
    let x = g.reshape(x, &[-1, 3, size as isize, size as isize])?;
    let x = g.module("eco_2d", "ECO_2D", x, eco_2d)?;
    let f = (size / 8) as isize;
    let x = g.reshape(x, &[-1, frames as isize, 96, f, f])?;
    let x = g.module("eco_3d", "ECO_3D", x, |g, x| {
        let x = g.permute(x, &[0, 2, 1, 3, 4])?; // [B, 96, T, 28, 28]
        let x = g.module("res_3d_3", "Resnet_3D_3", x, res_3d_3)?;
        let x = g.module("res_3d_4", "Resnet_3D_4", x, |g, x| {
            res_3d_down(g, x, "4", 256)
        })?;
        let x = g.module("res_3d_5", "Resnet_3D_5", x, |g, x| {
            res_3d_down(g, x, "5", 512)
        })?;
        let k = size / 32;
        let x = g.avg_pool(
            "global_pool",
            x,
            PoolParams::new(&[frames / 4, k, k]).stride(&[1, 1, 1]),
            true,
        )?;
        g.flatten(x, 1, -1)
    })?;
    let x = if dropout > 0.0 {
        g.dropout("dropout", x, dropout)?
    } else {
        x
    };
    let y = g.linear("fc_final", x, Linear::new(classes))?;
    g.finish(&[y])
}

//! CT-sep: seed 001's unfinished "CT-separable" network, completed. Seed 001 combines the two
//! separations it quotes — R(2+1)D's spatio-temporal one ((1,3,3) then (3,1,1)) and Xception's
//! channel one (depthwise then pointwise) — into one 3D conv inside residual blocks, and stops after
//! `self.spacewise = nn.Conv3d(in_channels, in_channels, ...)`. Here that conv is:
//!
//! `CTSeparableConv3d(in, out, s)`: `depthwise_spatial` (1,3,3) s(1,s,s) p(0,1,1) groups=in → `bn_spatial`
//! → ReLU (`relu_spatial`) → `depthwise_temporal` (3,1,1) s(s,1,1) p(1,0,0) groups=in → `pointwise`
//! 1×1×1 in→out; no biases (every one is followed by a BN).
//!
//! BasicBlock(in, planes, s): `conv1` = CTSeparableConv3d(in, planes, s) → `bn1` → ReLU → `conv2` =
//! CTSeparableConv3d(planes, planes, 1) → `bn2`; out = ReLU(that + shortcut), shortcut `downsample` (1×1×1
//! conv stride (s,s,s) + BN, `downsample.0` / `downsample.1`) on the first block of layers 2–4.
//! Stem, stages and head are R(2+1)D-18's: stem `stem.0`–`stem.5`, layers [2,2,2,2] of widths
//! 64/128/256/512 (strides 1, 2, 2, 2), AdaptiveAvgPool3d(1), `fc`. The PyTorch definition with the same
//! names is tools/reference/models/ct_sep.py. Names: `layer1.0.conv1.depthwise_spatial.weight`,
//! `layer1.0.conv1.bn_spatial.running_var`, `layer1.0.conv1.depthwise_temporal.weight`,
//! `layer1.0.conv1.pointwise.weight`, `layer1.0.bn1.weight`, `layer2.0.downsample.0.weight`, `fc.weight`.
//! 1,670,273 parameters at 400 classes; 2.51 GMAC per 16×112² clip (0.77 of them in the stem).

use super::r2plus1d::{check_input, conv3d, downsample, stages_and_head, stem};
use crate::error::Result;
use crate::graph::{BatchNorm, Graph, GraphBuilder, ValueId};

/// CT-sep's options.
#[derive(Debug, Clone, PartialEq)]
pub struct CtSepConfig {
    pub classes: usize,
    /// Dropout before `fc` (0 by default).
    pub dropout: f32,
    /// Blocks per stage (R(2+1)D-18's [2, 2, 2, 2] by default).
    pub layers: [usize; 4],
}

impl Default for CtSepConfig {
    fn default() -> Self {
        CtSepConfig {
            classes: 400,
            dropout: 0.0,
            layers: [2, 2, 2, 2],
        }
    }
}

/// `CTSeparableConv3d(in, out, s)`: spatial depthwise → BN → ReLU → temporal depthwise → pointwise.
fn ct_separable_conv3d(g: &mut GraphBuilder, x: ValueId, out: usize, s: usize) -> Result<ValueId> {
    let c = g.shape(x)[1];
    let x = g.conv(
        "depthwise_spatial",
        x,
        conv3d(c, [1, 3, 3], [1, s, s], [0, 1, 1]).groups(c),
    )?;
    let x = g.batch_norm("bn_spatial", x, BatchNorm::new())?;
    let x = g.relu("relu_spatial", x)?;
    let x = g.conv(
        "depthwise_temporal",
        x,
        conv3d(c, [3, 1, 1], [s, 1, 1], [1, 0, 0]).groups(c),
    )?;
    g.conv("pointwise", x, conv3d(out, [1, 1, 1], [1, 1, 1], [0, 0, 0]))
}

/// A residual block of two CT-separable convs.
fn basic_block(
    g: &mut GraphBuilder,
    x: ValueId,
    inplanes: usize,
    planes: usize,
    stride: usize,
) -> Result<ValueId> {
    let out = g.module("conv1", "CTSeparableConv3d", x, |g, x| {
        ct_separable_conv3d(g, x, planes, stride)
    })?;
    let out = g.batch_norm("bn1", out, BatchNorm::new())?;
    let out = g.relu("relu1", out)?;
    let out = g.module("conv2", "CTSeparableConv3d", out, |g, x| {
        ct_separable_conv3d(g, x, planes, 1)
    })?;
    let out = g.batch_norm("bn2", out, BatchNorm::new())?;
    let residual = if stride != 1 || inplanes != planes {
        downsample(g, x, planes, stride)?
    } else {
        x
    };
    let out = g.add(out, residual)?;
    g.relu("relu2", out)
}

/// The CT-sep graph for an input of `input_shape` = [B, 3, T, H, W] (16×112² like R(2+1)D-18).
pub fn ct_sep(cfg: &CtSepConfig, input_shape: &[usize]) -> Result<Graph> {
    check_input("ct-sep", input_shape, cfg.classes)?;
    if cfg.layers.contains(&0) {
        crate::error::arg_bail!(
            "ct-sep",
            "every stage needs at least one block, got {:?}",
            cfg.layers
        );
    }
    let mut g = GraphBuilder::new("CTSepNet");
    let x = g.input("input", input_shape)?;
    let x = g.module("stem", "R2Plus1dStem", x, stem)?;
    let y = stages_and_head(&mut g, x, cfg.layers, cfg.classes, cfg.dropout, basic_block)?;
    g.finish(&[y])
}

/// `ct-sep` from the command line: `--classes`, `--dropout`, `--opt layers=2,2,2,2`.
pub fn build(opts: &super::ModelOptions, input_shape: &[usize]) -> Result<Graph> {
    opts.check_known("ct-sep", &["layers"])?;
    let d = CtSepConfig::default();
    let layers = match opts.extra.get("layers") {
        None => d.layers,
        Some(v) => {
            let bad = || {
                crate::Error::arg(
                    "ct-sep",
                    format!("option layers={v}: need 4 block counts, e.g. layers=2,2,2,2"),
                )
            };
            let n: Vec<usize> = v
                .split(',')
                .map(|s| s.trim().parse().map_err(|_| bad()))
                .collect::<Result<_>>()?;
            n.try_into().map_err(|_| bad())?
        }
    };
    ct_sep(
        &CtSepConfig {
            classes: opts.classes.unwrap_or(d.classes),
            dropout: opts.dropout.unwrap_or(d.dropout),
            layers,
        },
        input_shape,
    )
}

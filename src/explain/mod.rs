//! 3D Grad-CAM (seed 000): which parts of a clip, in space and time, a 3D CNN's decision rests on.
//!
//! For a clip, a class c and a 5-D feature map A = [1, C, T', H', W'] of a chosen layer:
//!
//! ```text
//! α_k = mean over T', H', W' of ∂y_c/∂A_k        y_c: the logit of c (pre-softmax)
//! cam = ReLU(Σ_k α_k A_k)                         [T', H', W']
//! cam ↑ trilinear (align_corners = False) to the input's T × H × W, then min–max normalised to [0, 1]
//! ```
//!
//! Everything is computed with vidgrad ops on the network's device (CPU or CUDA): the forward pass
//! ([`forward::forward_to_layer`], inference semantics with a tape from A on), `backward_with` a
//! one-hot gradient of the logits, α = `global_avg_pool`(∂y/∂A), Σ_k α_k A_k as one `matmul`, `relu`,
//! `upsample_trilinear`; only the final min–max normalisation runs on the host. A cam that is zero
//! everywhere (no positive evidence for c in the layer) normalises to all zeros rather than to NaN; so
//! does a constant one.
//!
//! Layers: any node or module name ([`crate::graph::Graph::value_by_name`]) whose value is 5-D
//! [1, C, T', H', W']. A 4-D value is accepted only for models with a [B, T, 3, H, W] input (ECO-Lite's
//! 2D part, whose maps are per frame, [T, C, H', W']): the frames are then stacked into
//! [1, C, T, H', W'] and α averages over all of them. Other 4-D values, and every other rank, are
//! errors that say so. [`DEFAULT_LAYERS`] gives each zoo model's default: its last 3D stage.
//!
//! [`render`] writes the overlays (PNG per frame, animated GIF, contact sheet with the top-5).
//! docs/EXPLAIN.md describes the command (`vidgrad explain`) and the checks.

pub mod forward;
pub mod render;

use crate::data::Layout;
use crate::error::{Error, Result};
use crate::exec::Network;
use crate::tensor::Tensor;

/// Each zoo model's default Grad-CAM layer: the output of its last 3D stage (the deepest map that still
/// has T', H', W' extent).
pub const DEFAULT_LAYERS: &[(&str, &str)] = &[
    ("c2d-nl-r50", "s5"),
    ("i3d-r50", "s5"),
    ("i3d-nl-r50", "s5"),
    ("eco-lite", "eco_3d.res_3d_5"),
    ("r2plus1d-18", "layer4"),
    ("ct-sep", "layer4"),
    ("resnet3d", "backbone.layer4"),
];

/// The default layer of zoo model `model` (see [`DEFAULT_LAYERS`]).
pub fn default_layer(model: &str) -> Result<&'static str> {
    DEFAULT_LAYERS
        .iter()
        .find(|(m, _)| *m == model)
        .map(|(_, l)| *l)
        .ok_or_else(|| {
            Error::arg(
                "explain",
                format!("no default Grad-CAM layer for model '{model}': pass --layer"),
            )
        })
}

/// One Grad-CAM result.
#[derive(Debug, Clone)]
pub struct GradCam {
    /// The class explained.
    pub class: usize,
    /// The layer whose map was used.
    pub layer: String,
    /// The clip's class scores (logits; pre-softmax even when the graph ends in a softmax).
    pub logits: Vec<f32>,
    /// [C, T', H', W'] of the feature map (for per-frame 4-D maps: after stacking the frames).
    pub feature_shape: [usize; 4],
    /// α_k, one per channel.
    pub weights: Vec<f32>,
    /// ReLU(Σ α_k A_k) at the feature map's resolution, [T', H', W'] row-major.
    pub cam_features: Vec<f32>,
    /// The upsampled cam before normalisation, [T, H, W].
    pub cam_raw: Vec<f32>,
    /// The upsampled cam min–max normalised to [0, 1] (all zeros when the cam is flat), [T, H, W].
    pub cam: Vec<f32>,
    /// (T, H, W) of the input clip.
    pub size: [usize; 3],
}

impl GradCam {
    /// Softmax of the logits.
    pub fn probabilities(&self) -> Vec<f32> {
        crate::train::metrics::softmax(&self.logits)
    }
}

/// (T, H, W) of a one-clip input in `layout`.
pub fn clip_size(shape: &[usize], layout: Layout) -> Result<[usize; 3]> {
    match (shape, layout) {
        ([1, t, 3, h, w], Layout::BTCHW) | ([1, 3, t, h, w], Layout::BCTHW) => Ok([*t, *h, *w]),
        _ => Err(Error::shape(
            "explain",
            format!(
                "Grad-CAM takes one clip: input [1, {}, H, W], got {shape:?}",
                if layout == Layout::BTCHW {
                    "T, 3"
                } else {
                    "3, T"
                }
            ),
        )),
    }
}

/// Grad-CAM of one clip (`input`: [1, ...] in the model's native `layout`) for `class` (default: the
/// predicted one) at `layer`. The network's parameters and mode are left untouched.
pub fn grad_cam(
    net: &Network,
    input: &Tensor,
    layout: Layout,
    layer: &str,
    class: Option<usize>,
) -> Result<GradCam> {
    let size = clip_size(input.shape(), layout)?;
    let fw = forward::forward_to_layer(net, &[input], layer)?;
    let logits = crate::no_grad(|| fw.score.to_vec())?;
    let n = logits.len();
    let class = match class {
        Some(c) if c >= n => {
            return Err(Error::arg(
                "explain",
                format!("class {c} is out of range: the model has {n} classes"),
            ))
        }
        Some(c) => c,
        None => crate::train::metrics::top_k(&logits, 1)[0],
    };
    let mut onehot = vec![0f32; n];
    onehot[class] = 1.0;
    let g = Tensor::from_vec(onehot, fw.score.shape(), fw.score.device())?;
    fw.score.backward_with(&g)?;
    let a = fw.features.detach();
    let da = fw.features.grad().ok_or_else(|| {
        Error::Autograd(format!(
            "no gradient reached layer '{layer}' from the class score"
        ))
    })?;
    drop(fw);
    crate::no_grad(|| cam_from(&a, &da, layout, size, layer, class, logits))
}

/// Stack a per-frame 4-D map [T, C, h, w] of a [1, T, 3, H, W] model into [1, C, T, h, w].
fn to_5d(x: &Tensor, layout: Layout, t: usize, layer: &str) -> Result<Tensor> {
    let s = x.shape().to_vec();
    match s.len() {
        5 if s[0] == 1 => Ok(x.clone()),
        4 if layout == Layout::BTCHW && s[0] == t => x
            .reshape(&[1, t, s[1], s[2], s[3]])?
            .permute(&[0, 2, 1, 3, 4]),
        4 => Err(Error::shape(
            "explain",
            format!(
                "layer '{layer}' is a 2D feature map {s:?}, not a 3D one: Grad-CAM needs a 5-D \
                 [1, C, T, H, W] map (4-D maps only as the per-frame maps [T, C, H, W] of a model \
                 with a [B, T, 3, H, W] input, such as ECO-Lite's 2D part)"
            ),
        )),
        _ => Err(Error::shape(
            "explain",
            format!(
                "layer '{layer}' has shape {s:?}: Grad-CAM needs a 5-D [1, C, T, H, W] feature map"
            ),
        )),
    }
}

/// The cam from a feature map and its gradient (both as the layer produced them).
fn cam_from(
    a: &Tensor,
    da: &Tensor,
    layout: Layout,
    size: [usize; 3],
    layer: &str,
    class: usize,
    logits: Vec<f32>,
) -> Result<GradCam> {
    let a = to_5d(a, layout, size[0], layer)?;
    let da = to_5d(da, layout, size[0], layer)?;
    let s = a.shape().to_vec();
    let (c, tf, hf, wf) = (s[1], s[2], s[3], s[4]);
    // α_k = mean over T', H', W' of ∂y/∂A_k
    let alpha = da.global_avg_pool()?.reshape(&[1, c])?;
    // Σ_k α_k A_k as [1, C] × [C, T'H'W']
    let cam_f = alpha
        .matmul(&a.reshape(&[c, tf * hf * wf])?)?
        .relu()?
        .reshape(&[1, 1, tf, hf, wf])?;
    let up = cam_f.upsample_trilinear(size, false)?;
    let cam_raw = up.to_vec()?;
    Ok(GradCam {
        class,
        layer: layer.to_string(),
        logits,
        feature_shape: [c, tf, hf, wf],
        weights: alpha.to_vec()?,
        cam_features: cam_f.to_vec()?,
        cam: min_max_normalise(&cam_raw),
        cam_raw,
        size,
    })
}

/// (v − min) / (max − min); all zeros when max − min is not positive (a flat or all-zero cam) or not
/// finite.
pub fn min_max_normalise(v: &[f32]) -> Vec<f32> {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    let range = hi - lo;
    let spread = range.is_finite() && range > 0.0;
    if !spread {
        return vec![0.0; v.len()];
    }
    v.iter().map(|&x| (x - lo) / range).collect()
}

//! The model zoo. Each model file reads like its source's layer table and builds a [`Graph`].

pub mod ct_sep;
pub mod eco_lite;
pub mod fill;
pub mod r2plus1d;
pub mod resnet3d;
pub mod slowfast_resnet;

pub use ct_sep::{ct_sep, CtSepConfig};
pub use eco_lite::{eco_lite, EcoLiteConfig};
pub use r2plus1d::{r2plus1d_18, R2Plus1dConfig};
pub use slowfast_resnet::{slowfast_resnet, Preset, SlowFastResNetConfig};

use crate::error::{arg_bail, Result};
use crate::graph::Graph;

/// The models `vidgrad` knows by name, with the source each follows.
pub const MODELS: &[(&str, &str)] = &[
    (
        "c2d-nl-r50",
        "C2D ResNet-50 + 5 non-local blocks, PySlowFast video_model_builder.ResNet (seed 000)",
    ),
    (
        "i3d-r50",
        "I3D ResNet-50, PySlowFast video_model_builder.ResNet, preset i3d (seed 000)",
    ),
    (
        "i3d-nl-r50",
        "I3D ResNet-50 + 5 non-local blocks, PySlowFast video_model_builder.ResNet (seed 000)",
    ),
    (
        "eco-lite",
        "ECO-Lite, the book's utils/eco.py (seeds 002/003)",
    ),
    (
        "r2plus1d-18",
        "R(2+1)D-18, torchvision models/video/resnet.py r2plus1d_18 (seed 001)",
    ),
    (
        "ct-sep",
        "CT-sep: seed 001's channel- and spatio-temporally separable residual net, completed",
    ),
    (
        "resnet3d",
        "mmaction2 ResNet3d + I3DHead (Recognizer3D; presets i3d-r50, i3d-r50-nl-*, seed004) (seed 004)",
    ),
];

/// The input layout a model takes: ECO-Lite [B, T, 3, H, W], the 3D CNNs [B, 3, T, H, W].
pub fn native_layout(name: &str) -> Result<crate::data::Layout> {
    check_name(name)?;
    Ok(if name == "eco-lite" {
        crate::data::Layout::BTCHW
    } else {
        crate::data::Layout::BCTHW
    })
}

/// The input normalisation a model was trained with in its source: ECO's BGR 0–255 with means
/// 104/117/128, torchvision's R(2+1)D statistics, mmaction2's ImageNet statistics (PySlowFast's
/// models here use the same).
pub fn native_normalization(name: &str) -> Result<crate::data::Normalization> {
    use crate::data::Normalization;
    check_name(name)?;
    Ok(match name {
        "eco-lite" => Normalization::Eco,
        "r2plus1d-18" | "ct-sep" => Normalization::R2plus1d,
        _ => Normalization::Mmaction2,
    })
}

fn check_name(name: &str) -> Result<()> {
    if MODELS.iter().any(|m| m.0 == name) {
        Ok(())
    } else {
        let known: Vec<&str> = MODELS.iter().map(|m| m.0).collect();
        arg_bail!(
            "models",
            "unknown model '{name}' (known: {})",
            known.join(", ")
        )
    }
}

/// Options from the command line (`--classes`, `--dropout`, `--opt key=value`): what is not given takes
/// the model's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelOptions {
    pub classes: Option<usize>,
    pub dropout: Option<f32>,
    /// Model-specific options, e.g. `preset=i3d`, `depth=50`, `inflate_style=3x3x3`.
    pub extra: std::collections::BTreeMap<String, String>,
}

impl ModelOptions {
    /// A model-specific option parsed as `T`, or `default` when absent.
    pub fn get<T: std::str::FromStr>(
        &self,
        model: &'static str,
        key: &str,
        default: T,
    ) -> Result<T> {
        match self.extra.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                crate::Error::arg(model, format!("option {key}={v} could not be parsed"))
            }),
        }
    }

    /// Fail on options the model does not know (a typo must not be silently ignored).
    pub fn check_known(&self, model: &'static str, known: &[&str]) -> Result<()> {
        for k in self.extra.keys() {
            if !known.contains(&k.as_str()) {
                arg_bail!(model, "unknown option '{k}' (known: {})", known.join(", "));
            }
        }
        Ok(())
    }
}

/// Build model `name` for an input of `input_shape` in the model's native layout.
pub fn build(name: &str, opts: &ModelOptions, input_shape: &[usize]) -> Result<Graph> {
    match name {
        "c2d-nl-r50" | "i3d-r50" | "i3d-nl-r50" => {
            const M: &str = "slowfast-resnet";
            opts.check_known(M, &["preset", "nonlocal", "depth", "softmax", "checkpoint"])?;
            let d = SlowFastResNetConfig::default();
            let preset = if name == "c2d-nl-r50" { "c2d" } else { "i3d" };
            let preset: String = opts.get(M, "preset", preset.to_string())?;
            let Ok(preset) = preset.parse::<Preset>() else {
                arg_bail!(M, "preset must be c2d or i3d, got '{preset}'");
            };
            slowfast_resnet(
                &SlowFastResNetConfig {
                    preset,
                    depth: opts.get(M, "depth", d.depth)?,
                    nonlocal: opts.get(M, "nonlocal", name != "i3d-r50")?,
                    classes: opts.classes.unwrap_or(d.classes),
                    dropout: opts.dropout.unwrap_or(d.dropout),
                    softmax: opts.get(M, "softmax", d.softmax)?,
                    checkpoint: opts.get(M, "checkpoint", d.checkpoint)?,
                },
                input_shape,
            )
        }
        "eco-lite" => {
            opts.check_known("eco-lite", &[])?;
            let [b, t, c, h, w] = input_shape[..] else {
                arg_bail!(
                    "eco-lite",
                    "input shape must be [B, T, 3, H, W], got {input_shape:?}"
                );
            };
            if c != 3 || h != w {
                arg_bail!(
                    "eco-lite",
                    "input shape must be [B, T, 3, S, S], got {input_shape:?}"
                );
            }
            let d = EcoLiteConfig::default();
            eco_lite(
                &EcoLiteConfig {
                    classes: opts.classes.unwrap_or(d.classes),
                    frames: t,
                    size: h,
                    dropout: opts.dropout.unwrap_or(d.dropout),
                },
                b,
            )
        }
        "r2plus1d-18" => {
            opts.check_known("r2plus1d-18", &[])?;
            let d = R2Plus1dConfig::default();
            r2plus1d::r2plus1d_18(
                &R2Plus1dConfig {
                    classes: opts.classes.unwrap_or(d.classes),
                    dropout: opts.dropout.unwrap_or(d.dropout),
                },
                input_shape,
            )
        }
        "ct-sep" => ct_sep::build(opts, input_shape),
        "resnet3d" => resnet3d::build(opts, input_shape),
        _ => {
            let known: Vec<&str> = MODELS.iter().map(|m| m.0).collect();
            arg_bail!(
                "models",
                "unknown model '{name}' (known: {})",
                known.join(", ")
            )
        }
    }
}

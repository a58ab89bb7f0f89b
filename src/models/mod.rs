//! The model zoo. Each model file reads like its source's layer table and builds a [`Graph`].

pub mod ct_sep;
pub mod eco_lite;
pub mod fill;
pub mod r2plus1d;

pub use ct_sep::{ct_sep, CtSepConfig};
pub use eco_lite::{eco_lite, EcoLiteConfig};
pub use r2plus1d::{r2plus1d_18, R2Plus1dConfig};

use crate::error::{arg_bail, Result};
use crate::graph::Graph;

/// The models `vidgrad` knows by name, with the source each follows.
pub const MODELS: &[(&str, &str)] = &[
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
];

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

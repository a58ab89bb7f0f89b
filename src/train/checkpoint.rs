//! Training checkpoints: one safetensors file holding the model's state dict under its PyTorch names,
//! the optimiser's state under `optimizer.` and, in the metadata, everything else a resume needs
//! (epoch, step, the network's forward count — its dropout RNG state —, best accuracy, class names,
//! model and options). Written atomically (temp file + rename) by `vidgrad::io`. The weights load
//! anywhere a state dict does: [`load_weights`] drops the optimiser entries.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::io::{load_safetensors, save_safetensors, StateDict};
use crate::optim::OptimizerState;

const OPT_PREFIX: &str = "optimizer.";
const META_KEY: &str = "vidgrad_checkpoint";

/// A loaded checkpoint.
pub struct Checkpoint {
    pub weights: StateDict,
    pub optimizer: OptimizerState,
    /// The training state: `epoch` (last finished), `step`, `forward_count`, `best_top1`, `classes`,
    /// `model`, `options`, optimiser scalars.
    pub meta: Value,
}

/// Write weights, optimiser state and `meta` to `path` atomically.
pub fn save(
    path: &Path,
    weights: &StateDict,
    optimizer: &OptimizerState,
    meta: &Value,
) -> Result<()> {
    let mut all = weights.clone();
    for (k, t) in &optimizer.tensors {
        all.insert(format!("{OPT_PREFIX}{k}"), t.clone());
    }
    let mut meta = meta.clone();
    meta["optimizer_scalars"] = optimizer
        .scalars
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(*v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let md: BTreeMap<String, String> = [(META_KEY.to_string(), meta.to_string())]
        .into_iter()
        .collect();
    save_safetensors(path, &all, Some(&md))
}

/// Read a checkpoint written by [`save`].
pub fn load(path: &Path, device: Device) -> Result<Checkpoint> {
    let (all, md) = load_safetensors(path, device)?;
    let meta: Value = md
        .get(META_KEY)
        .ok_or_else(|| Error::Safetensors {
            path: path.display().to_string(),
            msg: "not a vidgrad training checkpoint (no training state in its metadata)".into(),
        })
        .and_then(|s| parse_meta(path, s))?;
    let mut weights = StateDict::new();
    let mut tensors = vec![];
    for (k, t) in all {
        match k.strip_prefix(OPT_PREFIX) {
            Some(rest) => tensors.push((rest.to_string(), t)),
            None => {
                weights.insert(k, t);
            }
        }
    }
    let scalars = meta["optimizer_scalars"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Checkpoint {
        weights,
        optimizer: OptimizerState { tensors, scalars },
        meta,
    })
}

/// The training metadata of a checkpoint, read from the file's header only: `None` for a plain state
/// dict; an error naming the file when it cannot be read or its header or metadata is corrupt.
pub fn read_meta(path: &Path) -> Result<Option<Value>> {
    use std::io::Read;
    let io = |e| Error::Io {
        path: path.display().to_string(),
        source: e,
    };
    let corrupt = |msg: String| Error::Safetensors {
        path: path.display().to_string(),
        msg,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| corrupt("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(corrupt(format!(
            "header length {n} is not plausible: not a safetensors file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|_| corrupt(format!("truncated: the header of {n} bytes is incomplete")))?;
    let header: Value = serde_json::from_slice(&header)
        .map_err(|e| corrupt(format!("the header is not valid JSON: {e}")))?;
    header["__metadata__"][META_KEY]
        .as_str()
        .map(|s| parse_meta(path, s))
        .transpose()
}

/// The training metadata stored under [`META_KEY`]; corrupt metadata is an error saying so.
fn parse_meta(path: &Path, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Safetensors {
        path: path.display().to_string(),
        msg: format!(
            "a vidgrad checkpoint whose training metadata is corrupt ({e}): the file was damaged or edited"
        ),
    })
}

/// The model weights of a checkpoint or of a plain state-dict file, and the checkpoint's metadata if
/// it is one (class names for `predict`).
pub fn load_weights(path: &Path, device: Device) -> Result<(StateDict, Option<Value>)> {
    let (mut sd, md) = load_safetensors(path, device)?;
    let meta = md.get(META_KEY).map(|s| parse_meta(path, s)).transpose()?;
    if meta.is_some() {
        sd.retain(|k, _| !k.starts_with(OPT_PREFIX));
    }
    Ok((sd, meta))
}

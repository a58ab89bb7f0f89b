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

/// How the clips of a run were made, as stored in its checkpoints under `transform`: enough for
/// inference to cut equivalent clips from a video of any resolution. `resize_short` is the short side
/// the training frames had before the crop: the run's `--resize-short`, else (no resize) the frames'
/// own short side — the synthetic set's render size, or the first training video's.
pub fn transform_json(clip: &crate::data::ClipSpec, train: &crate::data::Dataset) -> Value {
    let (resize, source) = if clip.resize_short > 0 {
        (clip.resize_short, "resize_short")
    } else {
        match train.frame_size(0) {
            Ok((w, h)) if train.synth_config().is_some() => (w.min(h), "synthetic frame size"),
            Ok((w, h)) => (w.min(h), "first training video's frame size"),
            Err(_) => (0, "unknown"),
        }
    };
    serde_json::json!({
        "frames": clip.segments,
        "sampling": "tsn_segments",
        "resize_short": resize,
        "resize_source": source,
        "crop": clip.size,
        "train_crop": format!("{:?}", clip.crop),
        "flip": clip.flip,
        "normalization": clip.norm.name(),
        "layout": format!("{:?}", clip.layout),
    })
}

/// The test-time clip of a checkpoint (`meta`: its metadata, `None` for a plain state dict) for
/// `model`: frames, resize, crop and normalisation as trained, each overridden by a flag given
/// (`frames`, `size`, `resize_short`); centre crop, one clip. Also returns a line saying what it is
/// and where each value came from, for the command to print once.
pub fn inference_clip(
    meta: Option<&Value>,
    model: &str,
    frames: Option<usize>,
    size: Option<usize>,
    resize_short: Option<usize>,
) -> Result<(crate::data::ClipSpec, String)> {
    use crate::data::{ClipSpec, CropMode, Normalization};
    let null = Value::Null;
    let meta = meta.unwrap_or(&null);
    let (t, cfg, settings) = (&meta["transform"], &meta["config"], &meta["settings"]);
    let num = |v: &Value| v.as_u64().map(|v| v as usize);
    // where a value comes from: a flag, the stored transform, the older `config`, or the default
    let pick = |flag: Option<usize>, name: &str, stored: Option<usize>, default: usize| match (
        flag, stored,
    ) {
        (Some(v), _) => (v, format!("--{name}")),
        (None, Some(v)) => (v, "checkpoint".to_string()),
        (None, None) => (default, "default".to_string()),
    };
    let (segments, seg_from) = pick(
        frames,
        "frames",
        num(&t["frames"]).or(num(&cfg["segments"])),
        16,
    );
    let (crop, crop_from) = pick(size, "size", num(&t["crop"]).or(num(&cfg["size"])), 224);
    // Checkpoints written before the transform was stored: a run on the synthetic set without a
    // resize saw whole frames of its render size.
    let old_resize = match num(&cfg["resize_short"]) {
        Some(0) if settings["data"] == "synthetic" => {
            num(&settings["synth_size"]).or(num(&cfg["size"]))
        }
        r => r,
    };
    let (mut resize, mut resize_from) = pick(
        resize_short,
        "resize-short",
        num(&t["resize_short"]).or(old_resize),
        256,
    );
    let norm = match t["normalization"].as_str() {
        Some(n) => Normalization::from_name(n).ok_or_else(|| {
            Error::arg(
                "checkpoint",
                format!("the stored normalisation '{n}' is unknown to this version"),
            )
        })?,
        None => crate::models::native_normalization(model)?,
    };
    if resize != 0 && resize < crop {
        resize = crop;
        resize_from = format!("raised to the crop size {crop}");
    }
    let spec = ClipSpec {
        segments,
        size: crop,
        resize_short: resize,
        train: false,
        clips_per_video: 1,
        crop: CropMode::Center,
        flip: false,
        norm,
        layout: crate::models::native_layout(model)?,
    };
    let resize_text = if resize == 0 {
        format!("no resize ({resize_from}: frames are cropped at their own size; pass --resize-short to resize them)")
    } else {
        format!("short side resized to {resize} ({resize_from})")
    };
    let line = format!(
        "preprocessing: {segments} frames ({seg_from}; the centre frame of each of {segments} equal segments), {resize_text}, centre crop {crop}×{crop} ({crop_from}), normalisation {}, layout {:?}",
        norm.describe(),
        spec.layout
    );
    Ok((spec, line))
}

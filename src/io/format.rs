//! The safetensors file format, read and written with PyTorch's conventions.
//!
//! Load: F32, F64, F16, BF16, I64 and I32 tensors become f32 tensors; 0-d tensors become shape `[1]`.
//! Save: f32 little-endian, except keys ending in `num_batches_tracked`, which are written as int64
//! (shape `[1]` as 0-d), as PyTorch stores them. The header is JSON with sorted keys, so equal state
//! dicts give byte-identical files.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use super::{is_counter_key, write_atomic, StateDict};
use crate::tensor::MAX_RANK;
use crate::{Device, Error, Result, Tensor};

fn st_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Safetensors {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// Read a safetensors file into a state dict on `device`, with the file's `__metadata__`.
///
/// Every tensor becomes f32 (see the module docs for the dtypes accepted); errors name the file and,
/// where one is at fault, the key.
pub fn load_safetensors(
    path: impl AsRef<Path>,
    device: Device,
) -> Result<(StateDict, BTreeMap<String, String>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let invalid = |e| st_err(path, format!("not a valid safetensors file: {e}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let file = SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let metadata = header.metadata().clone().unwrap_or_default();

    let mut sd = StateDict::new();
    for (key, view) in file.iter() {
        let values = decode(view.dtype(), view.data()).ok_or_else(|| {
            st_err(
                path,
                format!(
                    "tensor '{key}': dtype {:?} is not supported (F32, F64, F16, BF16, I64 and I32 load as f32)",
                    view.dtype()
                ),
            )
        })?;
        let shape = match view.shape() {
            [] => vec![1],
            s if s.len() <= MAX_RANK => s.to_vec(),
            s => {
                return Err(st_err(
                    path,
                    format!("tensor '{key}': shape {s:?} has rank {}, vidgrad handles ranks up to {MAX_RANK}", s.len()),
                ))
            }
        };
        let t = Tensor::from_vec(values, &shape, device)
            .map_err(|e| st_err(path, format!("tensor '{key}': {e}")))?;
        sd.insert(key.to_string(), t);
    }
    Ok((sd, metadata.into_iter().collect()))
}

/// Write `sd` (and `metadata` as `__metadata__`) to `path` atomically; see [`super::write_atomic`].
/// Validation happens before anything touches the disk.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    sd: &StateDict,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_safetensors_bytes(sd, metadata).map_err(|e| match e {
        Error::Safetensors { msg, .. } => st_err(path, msg),
        e => e,
    })?;
    write_atomic(path, &bytes)
}

/// The bytes of the safetensors file [`save_safetensors`] writes.
///
/// Data is laid out int64 tensors first, then f32, each group in name order, so every tensor is
/// aligned to its element size.
pub fn to_safetensors_bytes(
    sd: &StateDict,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let err = |msg: String| st_err(Path::new("<memory>"), msg);
    let mut counters = Vec::new();
    let mut floats = Vec::new();
    for (key, t) in sd {
        if key == "__metadata__" {
            return Err(err(
                "'__metadata__' is reserved by the format and cannot name a tensor".into(),
            ));
        }
        let values = t.to_vec()?;
        if is_counter_key(key) {
            let mut data = Vec::with_capacity(values.len() * 8);
            for v in values {
                if !v.is_finite() || v.fract() != 0.0 {
                    return Err(err(format!(
                        "tensor '{key}': {v} is not a whole number, but num_batches_tracked is written as int64"
                    )));
                }
                data.extend_from_slice(&(v as i64).to_le_bytes());
            }
            let shape = if t.shape() == [1] { &[][..] } else { t.shape() };
            counters.push((key, "I64", shape.to_vec(), data));
        } else {
            let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            floats.push((key, "F32", t.shape().to_vec(), data));
        }
    }

    let mut header: BTreeMap<&str, Value> = BTreeMap::new();
    if let Some(m) = metadata {
        header.insert("__metadata__", json!(m));
    }
    let mut offset = 0;
    for (key, dtype, shape, data) in counters.iter().chain(&floats) {
        let end = offset + data.len();
        header.insert(
            key,
            json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&header).map_err(|e| err(format!("header: {e}")))?;
    text.resize(text.len().next_multiple_of(8), b' ');

    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for (_, _, _, data) in counters.iter().chain(&floats) {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Little-endian `bytes` of `dtype` as f32 values; `None` for unsupported dtypes.
fn decode(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().unwrap()))
            .collect()
    }
    Some(match dtype {
        Dtype::F32 => each(bytes, f32::from_le_bytes),
        Dtype::F64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        Dtype::F16 => each(bytes, |b| f16_to_f32(u16::from_le_bytes(b))),
        Dtype::BF16 => each(bytes, |b| {
            f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
        }),
        Dtype::I64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
        Dtype::I32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
        _ => return None,
    })
}

/// IEEE half to single precision (exact: every f16 value is an f32 value).
fn f16_to_f32(h: u16) -> f32 {
    let sign = (h as u32 >> 15) << 31;
    let exp = (h as u32 >> 10) & 0x1f;
    let mant = h as u32 & 0x3ff;
    let bits = match exp {
        0 if mant == 0 => sign,
        0 => {
            // Subnormal: mant · 2^-24.
            let v = mant as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (mant << 13),
        e => sign | ((e + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}

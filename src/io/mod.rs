//! Weight I/O: PyTorch-compatible state dicts in safetensors files.
//!
//! A [`StateDict`] maps PyTorch `state_dict()` names (`layer1.0.conv1.weight`, `bn1.running_mean`,
//! `bn1.num_batches_tracked`, ...) to tensors. [`save_safetensors`] writes one atomically and
//! [`load_safetensors`] reads one back (any float dtype and int64/int32 load as f32);
//! [`check_state_dict`] is the strict-load validator that names every missing, unexpected and
//! mis-shaped key, and [`assign_state_dict`] / [`load_into`] copy a checked state dict into a model's
//! tensors. [`apply_renames`] applies a prefix rename map (`module.base_model.` → ``).
//! `tools/convert_checkpoint.py` turns a PyTorch `.pth` into such a file. Rules: docs/WEIGHTS.md.

mod atomic;
mod format;
mod state_dict;

use std::collections::BTreeMap;

use crate::Tensor;

pub use atomic::write_atomic;
pub use format::{load_safetensors, save_safetensors, to_safetensors_bytes};
pub use state_dict::{
    apply_renames, assign_state_dict, check_state_dict, load_into, NamedShape, NamedTensor,
    ShapeMismatch, StateDictDiff,
};

/// Tensors by their dotted PyTorch `state_dict` name, in name order.
pub type StateDict = BTreeMap<String, Tensor>;

/// Whether `key` is a BatchNorm step counter, which PyTorch stores as a 0-d int64 tensor.
pub fn is_counter_key(key: &str) -> bool {
    key.rsplit('.').next() == Some("num_batches_tracked")
}

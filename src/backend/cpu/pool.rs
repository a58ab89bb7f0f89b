//! Pooling kernels (being written).
use crate::backend::{AdaptivePoolGeom, PoolGeom};
pub(super) fn max_forward(_x: &[f32], _g: &PoolGeom) -> Vec<f32> { todo!() }
pub(super) fn max_backward(_x: &[f32], _dy: &[f32], _g: &PoolGeom) -> Vec<f32> { todo!() }
pub(super) fn avg_forward(_x: &[f32], _g: &PoolGeom, _count_include_pad: bool) -> Vec<f32> { todo!() }
pub(super) fn avg_backward(_dy: &[f32], _g: &PoolGeom, _count_include_pad: bool) -> Vec<f32> { todo!() }
pub(super) fn adaptive_forward(_x: &[f32], _g: &AdaptivePoolGeom) -> Vec<f32> { todo!() }
pub(super) fn adaptive_backward(_dy: &[f32], _g: &AdaptivePoolGeom) -> Vec<f32> { todo!() }

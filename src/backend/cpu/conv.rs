//! Convolution kernels (being written).
use crate::backend::ConvGeom;
pub(super) fn forward(_x: &[f32], _w: &[f32], _bias: Option<&[f32]>, _g: &ConvGeom) -> Vec<f32> { todo!() }
pub(super) fn backward_data(_dy: &[f32], _w: &[f32], _g: &ConvGeom) -> Vec<f32> { todo!() }
pub(super) fn backward_weight(_x: &[f32], _dy: &[f32], _g: &ConvGeom) -> Vec<f32> { todo!() }

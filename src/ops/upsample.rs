//! Trilinear resampling of [N, C, D, H, W] to a given size (PyTorch `F.interpolate(mode="trilinear")`).

use crate::autograd::{needs_grad, record};
use crate::backend::UpsampleGeom;
use crate::error::{arg_bail, shape_bail, Result};
use crate::ops::{same_device, spatial3};
use crate::tensor::Tensor;

/// Resample x [N, C, D, H, W] to [N, C, size[0], size[1], size[2]].
pub fn upsample_trilinear(x: &Tensor, size: [usize; 3], align_corners: bool) -> Result<Tensor> {
    const OP: &str = "upsample_trilinear";
    same_device(OP, &[x])?;
    let s = x.shape();
    if s.len() != 5 || s.contains(&0) {
        shape_bail!(OP, "input must be a non-empty [N, C, D, H, W], got {s:?}");
    }
    if size.contains(&0) {
        arg_bail!(OP, "output size {size:?} must be positive (input {s:?})");
    }
    let g = UpsampleGeom {
        planes: s[0] * s[1],
        input: spatial3(s),
        output: size,
        align_corners,
    };
    let y = x.sibling(
        x.backend().upsample_trilinear_forward(x.buf(), &g)?,
        vec![s[0], s[1], size[0], size[1], size[2]],
    );
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let xshape = s.to_vec();
    Ok(record(
        OP,
        &[x],
        y,
        Box::new(move |gy| {
            let gx = gy.backend().upsample_trilinear_backward(gy.buf(), &g)?;
            Ok(vec![Some(gy.sibling(gx, xshape))])
        }),
    ))
}

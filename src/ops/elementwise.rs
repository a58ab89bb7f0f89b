//! relu, add, sub, mul, div, sqrt, scalar mul and add, and full reductions (sum, mean).

use crate::autograd::{needs_grad, record};
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::{shape_bail, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

/// max(x, 0). The backward uses the output, so the input need not be kept.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    same_device("relu", &[x])?;
    let y = x.sibling(
        x.backend().unary(x.buf(), UnaryOp::Relu)?,
        x.shape().to_vec(),
    );
    record_relu(x, y)
}

/// [`relu`] writing over x's buffer when nothing else can see it: neither another tensor (a view, a
/// tensor saved for some backward, the caller's copy) nor another handle on this one. The executor
/// passes ReLU inputs that its liveness says are dead; when the buffer is still shared it falls back to
/// [`relu`]. Returns the output and whether it was computed in place.
pub fn relu_consuming(x: Tensor) -> Result<(Tensor, bool)> {
    if !x.is_sole_owner() {
        return Ok((relu(&x)?, false));
    }
    x.backend().relu_in_place(x.buf())?;
    let y = x.detach();
    Ok((record_relu(&x, y)?, true))
}

/// Put ReLU's backward on the tape for y = relu(x): it reads only y (so x may be overwritten by y).
fn record_relu(x: &Tensor, y: Tensor) -> Result<Tensor> {
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let saved = y.detach();
    Ok(record(
        "relu",
        &[x],
        y,
        Box::new(move |gy| {
            let gx = saved.backend().relu_backward(saved.buf(), gy.buf())?;
            Ok(vec![Some(saved.sibling(gx, saved.shape().to_vec()))])
        }),
    ))
}

fn binary(op: &'static str, a: &Tensor, b: &Tensor, kind: BinaryOp) -> Result<Tensor> {
    same_device(op, &[a, b])?;
    if a.shape() != b.shape() {
        shape_bail!(op, "shapes differ: {:?} and {:?}", a.shape(), b.shape());
    }
    let y = a.sibling(
        a.backend().binary(a.buf(), b.buf(), kind)?,
        a.shape().to_vec(),
    );
    record_binary(op, a, b, y, kind)
}

/// Put the backward of y = a `kind` b on the tape.
fn record_binary(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    y: Tensor,
    kind: BinaryOp,
) -> Result<Tensor> {
    if !needs_grad(&[a, b]) {
        return Ok(y);
    }
    let (sa, sb) = match kind {
        BinaryOp::Mul => (Some(a.detach()), Some(b.detach())),
        // y = a / b: ga = gy / b, gb = −gy·a/b² = −ga·y, so keep y and b.
        BinaryOp::Div => (Some(y.detach()), Some(b.detach())),
        BinaryOp::AddRelu => (Some(y.detach()), None),
        _ => (None, None),
    };
    Ok(record(
        op,
        &[a, b],
        y,
        Box::new(move |gy| {
            Ok(match kind {
                BinaryOp::Add => vec![Some(gy.clone()), Some(gy.clone())],
                // Both inputs get ReLU's gradient of the output (kept below).
                BinaryOp::AddRelu => {
                    let y = sa.as_ref().expect("add+relu keeps its output");
                    let g = y.sibling(
                        y.backend().relu_backward(y.buf(), gy.buf())?,
                        y.shape().to_vec(),
                    );
                    vec![Some(g.clone()), Some(g)]
                }
                BinaryOp::Sub => vec![Some(gy.clone()), Some(mul_scalar(gy, -1.0)?)],
                BinaryOp::Mul => {
                    let (sa, sb) = (sa.unwrap(), sb.unwrap());
                    vec![Some(mul(gy, &sb)?), Some(mul(gy, &sa)?)]
                }
                BinaryOp::Div => {
                    let (y, b) = (sa.unwrap(), sb.unwrap());
                    let ga = div(gy, &b)?;
                    let gb = mul_scalar(&mul(&ga, &y)?, -1.0)?;
                    vec![Some(ga), Some(gb)]
                }
            })
        }),
    ))
}

/// a + b (same shapes).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, BinaryOp::Add)
}

/// max(a + b, 0) in one pass (the fusion pass's residual add → ReLU): one buffer each way where the
/// unfused pair makes two; the backward keeps only the output, as the ReLU alone does.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add+relu (fused)", a, b, BinaryOp::AddRelu)
}

/// [`add_relu`] writing over a's buffer when nothing else can see it (as [`relu_consuming`]): the
/// executor passes a residual branch its liveness says is dead. Returns the output and whether it
/// was computed in place.
pub fn add_relu_consuming(a: Tensor, b: &Tensor) -> Result<(Tensor, bool)> {
    const OP: &str = "add+relu (fused)";
    if !a.is_sole_owner() {
        return Ok((add_relu(&a, b)?, false));
    }
    same_device(OP, &[&a, b])?;
    if a.shape() != b.shape() {
        shape_bail!(OP, "shapes differ: {:?} and {:?}", a.shape(), b.shape());
    }
    a.backend().add_relu_in_place(a.buf(), b.buf())?;
    let y = a.detach();
    Ok((record_binary(OP, &a, b, y, BinaryOp::AddRelu)?, true))
}

/// a − b (same shapes).
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("sub", a, b, BinaryOp::Sub)
}

/// a · b elementwise (same shapes).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b, BinaryOp::Mul)
}

/// a / b elementwise (same shapes).
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("div", a, b, BinaryOp::Div)
}

/// √x elementwise. The backward, gy / (2√x), uses the output.
pub fn sqrt(x: &Tensor) -> Result<Tensor> {
    same_device("sqrt", &[x])?;
    let y = x.sibling(
        x.backend().unary(x.buf(), UnaryOp::Sqrt)?,
        x.shape().to_vec(),
    );
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let saved = y.detach();
    Ok(record(
        "sqrt",
        &[x],
        y,
        Box::new(move |gy| Ok(vec![Some(div(gy, &mul_scalar(&saved, 2.0)?)?)])),
    ))
}

/// x + s.
pub fn add_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    same_device("add_scalar", &[x])?;
    let y = x.sibling(
        x.backend().unary(x.buf(), UnaryOp::AddScalar(s))?,
        x.shape().to_vec(),
    );
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    Ok(record(
        "add_scalar",
        &[x],
        y,
        Box::new(move |gy| Ok(vec![Some(gy.clone())])),
    ))
}

/// x · s.
pub fn mul_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    same_device("mul_scalar", &[x])?;
    let y = x.sibling(
        x.backend().unary(x.buf(), UnaryOp::Scale(s))?,
        x.shape().to_vec(),
    );
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    Ok(record(
        "mul_scalar",
        &[x],
        y,
        Box::new(move |gy| Ok(vec![Some(mul_scalar(gy, s)?)])),
    ))
}

fn reduce_all(op: &'static str, x: &Tensor, scale: f32) -> Result<Tensor> {
    same_device(op, &[x])?;
    let mut buf = x.backend().sum_all(x.buf())?;
    if scale != 1.0 {
        buf = x.backend().unary(&*buf, UnaryOp::Scale(scale))?;
    }
    let y = x.sibling(buf, vec![1]);
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let shape = x.shape().to_vec();
    Ok(record(
        op,
        &[x],
        y,
        Box::new(move |gy| {
            let n = shape.iter().product();
            let gx = gy.backend().broadcast_scalar(gy.buf(), n, scale)?;
            Ok(vec![Some(gy.sibling(gx, shape))])
        }),
    ))
}

/// Σ x over all elements → shape [1].
pub fn sum(x: &Tensor) -> Result<Tensor> {
    reduce_all("sum", x, 1.0)
}

/// Mean over all elements → shape [1].
pub fn mean(x: &Tensor) -> Result<Tensor> {
    reduce_all("mean", x, 1.0 / x.numel() as f32)
}

//! Tape semantics: accumulation across consumers, no-grad mode, retained intermediate gradients,
//! released saved tensors.

mod common;

use common::device;
use vidgrad::ops::{self, ConvParams};
use vidgrad::{no_grad, Tensor};

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_vec().unwrap()
}

fn leaf(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, device()).unwrap().with_grad()
}

#[test]
fn gradients_accumulate_over_consumers() {
    // y = x·x + x (x used three times): dy/dx = 2x + 1
    let x = leaf(&[1.0, -2.0, 3.0], &[3]);
    let y = x.mul(&x).unwrap().add(&x).unwrap().sum().unwrap();
    y.backward().unwrap();
    assert_eq!(vals(&x.grad().unwrap()), vec![3.0, -3.0, 7.0]);
}

#[test]
fn residual_and_concat_branches() {
    // Inception-like: two branches of x concatenated, plus a residual add of the whole.
    let x = leaf(&[1.0, 2.0, 3.0, 4.0], &[1, 2, 2]);
    let a = x.mul_scalar(2.0).unwrap();
    let b = x.mul_scalar(3.0).unwrap();
    let cat = ops::concat(&[&a, &b], 1).unwrap(); // [1, 4, 2]
    let res = cat.add(&ops::concat(&[&x, &x], 1).unwrap()).unwrap();
    res.sum().unwrap().backward().unwrap();
    // d/dx = 2 + 3 + 1 + 1
    assert_eq!(vals(&x.grad().unwrap()), vec![7.0; 4]);
}

#[test]
fn leaf_gradients_accumulate_across_backward_calls_until_zeroed() {
    let x = leaf(&[1.0, 2.0], &[2]);
    x.mul_scalar(3.0)
        .unwrap()
        .sum()
        .unwrap()
        .backward()
        .unwrap();
    x.mul_scalar(3.0)
        .unwrap()
        .sum()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(vals(&x.grad().unwrap()), vec![6.0, 6.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
}

#[test]
fn no_grad_records_nothing() {
    let x = leaf(&[1.0, 2.0], &[2]);
    let y = no_grad(|| x.mul_scalar(2.0).unwrap());
    assert!(!y.requires_grad());
    assert!(vidgrad::is_grad_enabled());
    // Inputs that do not require grad record nothing either.
    let c = Tensor::ones(&[2], device()).unwrap();
    assert!(!c.relu().unwrap().requires_grad());
}

#[test]
fn retained_intermediate_gradient() {
    // Grad-CAM's need: ∂y/∂A for a feature map A in the middle of a network.
    let x = Tensor::randn(&[1, 2, 3, 5, 5], 1, device())
        .unwrap()
        .with_grad();
    let w = Tensor::randn(&[4, 2, 3, 3, 3], 2, device())
        .unwrap()
        .with_grad();
    let a = ops::conv(&x, &w, None, &ConvParams::default().padding(&[1, 1, 1])).unwrap();
    a.retain_grad().unwrap();
    let y = a.relu().unwrap().global_avg_pool().unwrap().sum().unwrap();
    y.backward().unwrap();
    let ga = a.grad().expect("retained gradient");
    assert_eq!(ga.shape(), a.shape());
    // d mean(relu(a)) / da = 1[a > 0] / (T·H·W) per channel
    let n = (3 * 5 * 5) as f32;
    for (g, v) in vals(&ga).iter().zip(vals(&a)) {
        let want = if v > 0.0 { 1.0 / n } else { 0.0 };
        assert!((g - want).abs() < 1e-7);
    }
    // Gradients of intermediates are not kept unless asked for.
    let b = x.relu().unwrap();
    b.sum().unwrap().backward().unwrap();
    assert!(b.grad().is_none());
}

#[test]
fn second_backward_reports_released_graph() {
    let x = leaf(&[1.0, 2.0], &[2]);
    let y = x.relu().unwrap().sum().unwrap();
    y.backward().unwrap();
    let msg = y.backward().unwrap_err().to_string();
    assert!(msg.contains("second time"), "{msg}");
}

#[test]
fn detach_cuts_the_tape() {
    let x = leaf(&[1.0, 2.0], &[2]);
    let y = x.mul_scalar(2.0).unwrap().detach();
    assert!(!y.requires_grad());
}

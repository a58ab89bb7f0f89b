//! Finite-difference gradient checks, one per op: for L = Σ f(inputs) ⊙ r with a fixed random r, the
//! analytic ∂L/∂input (from backward) must match the central difference (L(x+h) − L(x−h)) / 2h at sampled
//! coordinates of every input. L is accumulated in f64 on the host; with h = 1e-2 on O(1) values the
//! float32 rounding noise of the difference stays near 1e-4, hence the tolerance below.

mod common;

use common::device;
use vidgrad::ops::{self, BatchNormArgs, ConvParams, PoolParams};
use vidgrad::{no_grad, rng, Tensor};

const H: f32 = 1e-2;
/// |analytic − numeric| ≤ ATOL + RTOL·|numeric|.
const ATOL: f64 = 2e-3;
const RTOL: f64 = 1e-2;
/// Coordinates checked per input.
const SAMPLES: usize = 24;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, seed, device()).unwrap()
}

/// Values at least 0.1 apart from each other (shuffled ramp): no ties for max pooling, no kinks hit.
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        idx.swap(i, (rng::mix(seed, i as u64) % (i as u64 + 1)) as usize);
    }
    let v: Vec<f32> = idx
        .iter()
        .map(|&i| (i as f32 - n as f32 / 2.0) * 0.1)
        .collect();
    Tensor::from_vec(v, shape, device()).unwrap()
}

/// Values with |x| ≥ 0.1 (away from ReLU's kink).
fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let v: Vec<f32> = randn(shape, seed)
        .to_vec()
        .unwrap()
        .iter()
        .map(|&x| x + 0.1f32.copysign(x))
        .collect();
    Tensor::from_vec(v, shape, device()).unwrap()
}

fn dot(y: &Tensor, r: &[f32]) -> f64 {
    y.to_vec()
        .unwrap()
        .iter()
        .zip(r)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum()
}

/// Check every input's gradient of `f` at `inputs`.
fn gradcheck(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.with_grad()).collect();
    let y = f(&leaves);
    let r = randn(y.shape(), 99);
    let rv = r.to_vec().unwrap();
    y.backward_with(&r).unwrap();
    let mut worst = 0f64;
    let mut failures = vec![];
    for (j, leaf) in leaves.iter().enumerate() {
        let grad = leaf
            .grad()
            .unwrap_or_else(|| panic!("{name}: input {j} got no gradient"))
            .to_vec()
            .unwrap();
        let base = inputs[j].to_vec().unwrap();
        let n = base.len();
        let picks: Vec<usize> = if n <= SAMPLES {
            (0..n).collect()
        } else {
            (0..SAMPLES)
                .map(|s| (rng::mix(7 + j as u64, s as u64) % n as u64) as usize)
                .collect()
        };
        for i in picks {
            let eval = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let mut args: Vec<Tensor> = inputs.to_vec();
                args[j] = Tensor::from_vec(v, inputs[j].shape(), device()).unwrap();
                no_grad(|| dot(&f(&args), &rv))
            };
            let numeric = (eval(H) - eval(-H)) / (2.0 * H as f64);
            let err = (grad[i] as f64 - numeric).abs();
            worst = worst.max(err / (ATOL + RTOL * numeric.abs()));
            if err > ATOL + RTOL * numeric.abs() {
                failures.push(format!(
                    "input {j}[{i}]: analytic {} vs numeric {numeric:.6}",
                    grad[i]
                ));
            }
        }
    }
    println!("{name:<28} worst error / tolerance = {worst:.3}");
    assert!(
        failures.is_empty(),
        "{name}: gradient check failed:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn conv_gradients() {
    let cases: [(&str, [usize; 5], [usize; 5], ConvParams); 5] = [
        (
            "conv3d 3x3x3 s2 p1 bias",
            [2, 3, 5, 6, 5],
            [4, 3, 3, 3, 3],
            ConvParams::default().stride(&[2, 2, 2]).padding(&[1, 1, 1]),
        ),
        (
            "conv3d (3,1,1) dil 2",
            [1, 4, 7, 4, 4],
            [2, 4, 3, 1, 1],
            ConvParams::default()
                .padding(&[2, 0, 0])
                .dilation(&[2, 1, 1]),
        ),
        (
            "conv3d groups 2 (1,3,3)",
            [1, 4, 3, 5, 5],
            [6, 2, 1, 3, 3],
            ConvParams::default()
                .stride(&[1, 2, 2])
                .padding(&[0, 1, 1])
                .groups(2),
        ),
        (
            "conv3d depthwise x2",
            [2, 3, 4, 5, 5],
            [6, 1, 3, 3, 3],
            ConvParams::default().padding(&[1, 1, 1]).groups(3),
        ),
        (
            "conv3d (1,7,7) s(1,2,2)",
            [1, 2, 2, 9, 9],
            [3, 2, 1, 7, 7],
            ConvParams::default().stride(&[1, 2, 2]).padding(&[0, 3, 3]),
        ),
    ];
    for (name, xs, ws, p) in cases {
        let b = randn(&[ws[0]], 3);
        gradcheck(name, &[randn(&xs, 1), randn(&ws, 2), b], |t| {
            ops::conv(&t[0], &t[1], Some(&t[2]), &p).unwrap()
        });
    }
    let p = ConvParams::default().stride(&[2, 1]).padding(&[1, 0]);
    gradcheck(
        "conv2d 3x3 s(2,1)",
        &[randn(&[2, 3, 7, 6], 4), randn(&[2, 3, 3, 3], 5)],
        |t| ops::conv(&t[0], &t[1], None, &p).unwrap(),
    );
}

#[test]
fn batch_norm_gradients() {
    for training in [true, false] {
        let (rm, rv) = (
            randn(&[3], 10),
            Tensor::rand_uniform(&[3], 0.5, 2.0, 11, device()).unwrap(),
        );
        gradcheck(
            &format!("batch_norm training={training}"),
            &[
                randn(&[2, 3, 2, 3, 3], 12),
                randn(&[3], 13),
                randn(&[3], 14),
            ],
            |t| {
                // Fresh running statistics per evaluation, so the finite differences see the same state.
                let (m, v) = (rm.copy().unwrap(), rv.copy().unwrap());
                let args = BatchNormArgs {
                    weight: Some(&t[1]),
                    bias: Some(&t[2]),
                    running_mean: Some(&m),
                    running_var: Some(&v),
                    training,
                    ..Default::default()
                };
                ops::batch_norm(&t[0], &args).unwrap()
            },
        );
    }
}

#[test]
fn pool_gradients() {
    let p = PoolParams::new(&[3, 3, 3])
        .stride(&[2, 2, 2])
        .padding(&[1, 1, 1])
        .ceil_mode(true);
    gradcheck("max_pool3d", &[distinct(&[1, 2, 5, 6, 7], 20)], |t| {
        ops::max_pool(&t[0], &p).unwrap()
    });
    gradcheck("avg_pool3d incl pad", &[randn(&[1, 2, 5, 6, 7], 21)], |t| {
        ops::avg_pool(&t[0], &p, true).unwrap()
    });
    gradcheck("avg_pool3d excl pad", &[randn(&[1, 2, 5, 6, 7], 22)], |t| {
        ops::avg_pool(&t[0], &p, false).unwrap()
    });
    let p2 = PoolParams::new(&[3, 3]).stride(&[2, 2]).ceil_mode(true);
    gradcheck("max_pool2d ceil", &[distinct(&[2, 2, 7, 8], 23)], |t| {
        ops::max_pool(&t[0], &p2).unwrap()
    });
    gradcheck("adaptive_avg_pool3d", &[randn(&[2, 2, 5, 7, 6], 24)], |t| {
        ops::adaptive_avg_pool(&t[0], &[2, 3, 4]).unwrap()
    });
    gradcheck("global_avg_pool", &[randn(&[2, 3, 2, 3, 3], 25)], |t| {
        ops::global_avg_pool(&t[0]).unwrap()
    });
}

#[test]
fn elementwise_gradients() {
    gradcheck("relu", &[away_from_zero(&[3, 4, 5], 30)], |t| {
        t[0].relu().unwrap()
    });
    gradcheck("add", &[randn(&[3, 4], 31), randn(&[3, 4], 32)], |t| {
        t[0].add(&t[1]).unwrap()
    });
    gradcheck("sub", &[randn(&[3, 4], 33), randn(&[3, 4], 34)], |t| {
        t[0].sub(&t[1]).unwrap()
    });
    gradcheck("mul", &[randn(&[3, 4], 35), randn(&[3, 4], 36)], |t| {
        t[0].mul(&t[1]).unwrap()
    });
    gradcheck("mul_scalar", &[randn(&[3, 4], 37)], |t| {
        t[0].mul_scalar(-1.5).unwrap()
    });
    gradcheck("sum", &[randn(&[3, 4], 38)], |t| t[0].sum().unwrap());
    gradcheck("mean", &[randn(&[3, 4], 39)], |t| t[0].mean().unwrap());
    gradcheck("dropout (fixed seed)", &[randn(&[4, 50], 40)], |t| {
        t[0].dropout(0.3, true, 5).unwrap()
    });
}

#[test]
fn layout_gradients() {
    gradcheck(
        "concat dim 1",
        &[
            randn(&[2, 3, 4], 50),
            randn(&[2, 1, 4], 51),
            randn(&[2, 2, 4], 52),
        ],
        |t| ops::concat(&[&t[0], &t[1], &t[2]], 1).unwrap(),
    );
    gradcheck("permute", &[randn(&[2, 3, 4, 5], 53)], |t| {
        t[0].permute(&[0, 2, 1, 3]).unwrap()
    });
    gradcheck("transpose", &[randn(&[2, 3, 4], 54)], |t| {
        t[0].transpose(0, -1).unwrap()
    });
    gradcheck("reshape", &[randn(&[2, 3, 4], 55)], |t| {
        t[0].reshape(&[6, 4]).unwrap()
    });
    gradcheck("flatten", &[randn(&[2, 3, 4], 56)], |t| {
        t[0].flatten(1, -1).unwrap()
    });
}

#[test]
fn linalg_gradients() {
    gradcheck(
        "linear",
        &[randn(&[5, 7], 60), randn(&[3, 7], 61), randn(&[3], 62)],
        |t| t[0].linear(&t[1], Some(&t[2])).unwrap(),
    );
    gradcheck(
        "matmul 2d",
        &[randn(&[4, 6], 63), randn(&[6, 5], 64)],
        |t| t[0].matmul(&t[1]).unwrap(),
    );
    gradcheck(
        "matmul batched",
        &[randn(&[3, 4, 6], 65), randn(&[3, 6, 5], 66)],
        |t| t[0].matmul(&t[1]).unwrap(),
    );
    gradcheck(
        "attention",
        &[
            randn(&[2, 4, 9], 67),
            randn(&[2, 4, 5], 68),
            randn(&[2, 3, 5], 69),
        ],
        |t| ops::attention(&t[0], &t[1], &t[2], 0.5).unwrap(),
    );
}

#[test]
fn softmax_and_loss_gradients() {
    gradcheck("softmax dim 1", &[randn(&[2, 5, 3], 70)], |t| {
        t[0].softmax(1).unwrap()
    });
    gradcheck("log_softmax dim -1", &[randn(&[4, 6], 71)], |t| {
        t[0].log_softmax(-1).unwrap()
    });
    gradcheck("cross_entropy", &[randn(&[4, 6], 72)], |t| {
        ops::cross_entropy(&t[0], &[0, 5, 2, 2], 0.0).unwrap()
    });
    gradcheck("cross_entropy smoothing", &[randn(&[4, 6], 73)], |t| {
        ops::cross_entropy(&t[0], &[1, 3, 4, 0], 0.1).unwrap()
    });
}

#[test]
fn upsample_gradients() {
    gradcheck("upsample_trilinear", &[randn(&[1, 2, 2, 3, 4], 80)], |t| {
        t[0].upsample_trilinear([3, 5, 7], false).unwrap()
    });
    gradcheck(
        "upsample_trilinear corners",
        &[randn(&[1, 2, 3, 3, 2], 81)],
        |t| t[0].upsample_trilinear([5, 4, 4], true).unwrap(),
    );
}

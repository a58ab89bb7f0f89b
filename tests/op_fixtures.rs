//! Every op's forward output and every input gradient against PyTorch (fixtures from
//! tools/reference/gen_op_fixtures.py). Each test runs all cases of one op, prints the worst error per
//! tensor and fails listing every mismatch. Tolerances are stated per op below: the references are
//! computed in float64, so they bound our float32 rounding (sums over K terms: ~sqrt(K)·2^-24 relative).
//! NaN and ±Inf are compared exactly (tests/common `Report::close`); nonfinite.safetensors holds NaN/Inf
//! inputs for the ops where their handling is not plain per-value IEEE arithmetic, run through the same
//! per-op case functions and tolerances as the finite cases.

mod common;

use common::{usizes, Fixture, Report, Tol};
use vidgrad::ops::{self, BatchNormArgs, ConvParams, PoolParams};
use vidgrad::Tensor;

/// Exact ops (copies, sign tests, single roundings).
const EXACT: Tol = Tol {
    atol: 1e-6,
    rtol: 1e-6,
};
/// Short reductions (softmax rows, batch-norm channels, pooling windows, interpolation).
const REDUCE: Tol = Tol {
    atol: 2e-5,
    rtol: 1e-4,
};
/// Long dot products (convolution, matmul, attention).
const GEMM: Tol = Tol {
    atol: 1e-4,
    rtol: 2e-4,
};

/// Checks the case's output `y`, runs backward from its `gy` and checks the gradient of each leaf.
fn check_forward_backward(
    fx: &Fixture,
    case: &str,
    r: &mut Report,
    y: &Tensor,
    leaves: &[(&str, &Tensor)],
    tol: Tol,
) {
    r.check(fx, case, "y", y, tol);
    y.backward_with(&fx.t(case, "gy")).unwrap();
    for (name, leaf) in leaves {
        r.check_grad(fx, case, name, leaf, tol);
    }
}

/// Runs one fixture case of an op and checks its output and gradients with the given tolerance.
type CaseFn = fn(&Fixture, &str, &mut Report, Tol);

/// Every case of `op` in fixture file `family` through `f`.
fn run_op(family: &str, op: &str, f: CaseFn, tol: Tol) {
    common::on_devices(|| {
        let fx = Fixture::load(family);
        let mut r = Report::new(op);
        for case in fx.cases(op) {
            f(&fx, &case, &mut r, tol);
        }
        r.finish();
    });
}

fn conv_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let m = fx.meta(case);
    let (x, w) = (fx.leaf(case, "x"), fx.leaf(case, "w"));
    let b = m["bias"].as_bool().unwrap().then(|| fx.leaf(case, "b"));
    let p = ConvParams::default()
        .stride(&usizes(&m["stride"]))
        .padding(&usizes(&m["padding"]))
        .dilation(&usizes(&m["dilation"]))
        .groups(m["groups"].as_u64().unwrap() as usize);
    let y = ops::conv(&x, &w, b.as_ref(), &p).unwrap();
    let mut leaves = vec![("x", &x), ("w", &w)];
    leaves.extend(b.as_ref().map(|b| ("b", b)));
    check_forward_backward(fx, case, r, &y, &leaves, tol);
}

#[test]
fn conv_matches_pytorch() {
    run_op("conv", "conv", conv_case, GEMM);
}

fn batch_norm_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let m = fx.meta(case);
    let x = fx.leaf(case, "x");
    let affine = m["affine"].as_bool().unwrap();
    let (w, b) = if affine {
        (Some(fx.leaf(case, "weight")), Some(fx.leaf(case, "bias")))
    } else {
        (None, None)
    };
    let (rm, rv) = (fx.t(case, "running_mean"), fx.t(case, "running_var"));
    let args = BatchNormArgs {
        weight: w.as_ref(),
        bias: b.as_ref(),
        running_mean: Some(&rm),
        running_var: Some(&rv),
        training: m["training"].as_bool().unwrap(),
        momentum: m["momentum"].as_f64().unwrap() as f32,
        eps: m["eps"].as_f64().unwrap() as f32,
    };
    let y = ops::batch_norm(&x, &args).unwrap();
    r.check(fx, case, "running_mean_out", &rm, tol);
    r.check(fx, case, "running_var_out", &rv, tol);
    let mut leaves = vec![("x", &x)];
    if let (Some(w), Some(b)) = (&w, &b) {
        leaves.extend([("weight", w), ("bias", b)]);
    }
    check_forward_backward(fx, case, r, &y, &leaves, tol);
}

#[test]
fn batch_norm_matches_pytorch() {
    run_op("batchnorm", "batch_norm", batch_norm_case, REDUCE);
}

fn pool_params(m: &serde_json::Value) -> PoolParams {
    PoolParams::new(&usizes(&m["kernel"]))
        .stride(&usizes(&m["stride"]))
        .padding(&usizes(&m["padding"]))
        .ceil_mode(m["ceil_mode"].as_bool().unwrap())
}

fn max_pool_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let x = fx.leaf(case, "x");
    let y = ops::max_pool(&x, &pool_params(fx.meta(case))).unwrap();
    check_forward_backward(fx, case, r, &y, &[("x", &x)], tol);
}

#[test]
fn max_pool_matches_pytorch() {
    run_op("pool", "max_pool", max_pool_case, EXACT);
}

fn avg_pool_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let m = fx.meta(case);
    let x = fx.leaf(case, "x");
    let y = ops::avg_pool(
        &x,
        &pool_params(m),
        m["count_include_pad"].as_bool().unwrap(),
    )
    .unwrap();
    check_forward_backward(fx, case, r, &y, &[("x", &x)], tol);
}

#[test]
fn avg_pool_matches_pytorch() {
    run_op("pool", "avg_pool", avg_pool_case, REDUCE);
}

fn adaptive_avg_pool_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let x = fx.leaf(case, "x");
    let y = ops::adaptive_avg_pool(&x, &usizes(&fx.meta(case)["output_size"])).unwrap();
    check_forward_backward(fx, case, r, &y, &[("x", &x)], tol);
}

#[test]
fn adaptive_avg_pool_matches_pytorch() {
    run_op("pool", "adaptive_avg_pool", adaptive_avg_pool_case, REDUCE);
}

fn relu_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let x = fx.leaf(case, "x");
    let y = x.relu().unwrap();
    check_forward_backward(fx, case, r, &y, &[("x", &x)], tol);
}

#[test]
fn elementwise_matches_pytorch() {
    common::on_devices(|| {
        let fx = Fixture::load("elementwise");
        let mut r = Report::new("elementwise");
        for case in fx.cases("relu") {
            relu_case(&fx, &case, &mut r, EXACT);
        }
        for case in fx.cases("add") {
            let (a, b) = (fx.leaf(&case, "a"), fx.leaf(&case, "b"));
            let y = a.add(&b).unwrap();
            r.check(&fx, &case, "y", &y, EXACT);
            y.backward_with(&fx.t(&case, "gy")).unwrap();
            r.check_grad(&fx, &case, "a", &a, EXACT);
            r.check_grad(&fx, &case, "b", &b, EXACT);
        }
        for case in fx.cases("mul_scalar") {
            let x = fx.leaf(&case, "x");
            let y = x
                .mul_scalar(fx.meta(&case)["scalar"].as_f64().unwrap() as f32)
                .unwrap();
            r.check(&fx, &case, "y", &y, EXACT);
            y.backward_with(&fx.t(&case, "gy")).unwrap();
            r.check_grad(&fx, &case, "x", &x, EXACT);
        }
        r.finish();
    });
}

#[test]
fn layout_ops_match_pytorch() {
    common::on_devices(|| {
        let fx = Fixture::load("layout");
        let mut r = Report::new("layout");
        for case in fx.cases("concat") {
            let m = fx.meta(&case);
            let n = m["n"].as_u64().unwrap() as usize;
            let xs: Vec<_> = (0..n).map(|i| fx.leaf(&case, &format!("x{i}"))).collect();
            let refs: Vec<_> = xs.iter().collect();
            let y = ops::concat(&refs, m["dim"].as_i64().unwrap() as isize).unwrap();
            r.check(&fx, &case, "y", &y, EXACT);
            y.backward_with(&fx.t(&case, "gy")).unwrap();
            for (i, x) in xs.iter().enumerate() {
                r.check_grad(&fx, &case, &format!("x{i}"), x, EXACT);
            }
        }
        type Apply<'a> = &'a dyn Fn(&vidgrad::Tensor, &serde_json::Value) -> vidgrad::Tensor;
        let unary: [(&str, Apply); 4] = [
            ("permute", &|x, m| x.permute(&usizes(&m["dims"])).unwrap()),
            ("transpose", &|x, m| {
                x.transpose(
                    m["dim0"].as_i64().unwrap() as isize,
                    m["dim1"].as_i64().unwrap() as isize,
                )
                .unwrap()
            }),
            ("reshape", &|x, m| {
                let want: Vec<i64> = m["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                let known: i64 = want.iter().filter(|&&d| d >= 0).product();
                let shape: Vec<usize> = want
                    .iter()
                    .map(|&d| {
                        if d < 0 {
                            x.numel() / known as usize
                        } else {
                            d as usize
                        }
                    })
                    .collect();
                x.reshape(&shape).unwrap()
            }),
            ("flatten", &|x, m| {
                x.flatten(
                    m["start_dim"].as_i64().unwrap() as isize,
                    m["end_dim"].as_i64().unwrap() as isize,
                )
                .unwrap()
            }),
        ];
        for (op, f) in unary {
            for case in fx.cases(op) {
                let x = fx.leaf(&case, "x");
                let y = f(&x, fx.meta(&case));
                r.check(&fx, &case, "y", &y, EXACT);
                y.backward_with(&fx.t(&case, "gy")).unwrap();
                r.check_grad(&fx, &case, "x", &x, EXACT);
            }
        }
        r.finish();
    });
}

fn linear_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let (x, w) = (fx.leaf(case, "x"), fx.leaf(case, "w"));
    let b = fx.meta(case)["bias"]
        .as_bool()
        .unwrap()
        .then(|| fx.leaf(case, "b"));
    let y = x.linear(&w, b.as_ref()).unwrap();
    let mut leaves = vec![("x", &x), ("w", &w)];
    leaves.extend(b.as_ref().map(|b| ("b", b)));
    check_forward_backward(fx, case, r, &y, &leaves, tol);
}

#[test]
fn linear_and_matmul_match_pytorch() {
    common::on_devices(|| {
        let fx = Fixture::load("linalg");
        let mut r = Report::new("linalg");
        for case in fx.cases("linear") {
            linear_case(&fx, &case, &mut r, GEMM);
        }
        for case in fx.cases("matmul") {
            let (a, b) = (fx.leaf(&case, "a"), fx.leaf(&case, "b"));
            let y = a.matmul(&b).unwrap();
            r.check(&fx, &case, "y", &y, GEMM);
            y.backward_with(&fx.t(&case, "gy")).unwrap();
            r.check_grad(&fx, &case, "a", &a, GEMM);
            r.check_grad(&fx, &case, "b", &b, GEMM);
        }
        r.finish();
    });
}

fn softmax_like_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol, log: bool) {
    let x = fx.leaf(case, "x");
    let dim = fx.meta(case)["dim"].as_i64().unwrap() as isize;
    let y = if log {
        x.log_softmax(dim)
    } else {
        x.softmax(dim)
    }
    .unwrap();
    check_forward_backward(fx, case, r, &y, &[("x", &x)], tol);
}

fn softmax_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    softmax_like_case(fx, case, r, tol, false);
}

fn log_softmax_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    softmax_like_case(fx, case, r, tol, true);
}

#[test]
fn softmax_matches_pytorch() {
    run_op("softmax", "softmax", softmax_case, REDUCE);
    run_op("softmax", "log_softmax", log_softmax_case, REDUCE);
}

fn cross_entropy_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let logits = fx.leaf(case, "logits");
    let eps = fx.meta(case)["label_smoothing"].as_f64().unwrap() as f32;
    let y = ops::cross_entropy(&logits, &fx.labels(case), eps).unwrap();
    check_forward_backward(fx, case, r, &y, &[("logits", &logits)], tol);
}

#[test]
fn cross_entropy_matches_pytorch() {
    run_op("loss", "cross_entropy", cross_entropy_case, REDUCE);
}

fn upsample_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let m = fx.meta(case);
    let s = usizes(&m["size"]);
    let x = fx.leaf(case, "x");
    let y = x
        .upsample_trilinear([s[0], s[1], s[2]], m["align_corners"].as_bool().unwrap())
        .unwrap();
    check_forward_backward(fx, case, r, &y, &[("x", &x)], tol);
}

#[test]
fn upsample_trilinear_matches_pytorch() {
    run_op("upsample", "upsample_trilinear", upsample_case, REDUCE);
}

fn attention_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let (q, k, v) = (fx.leaf(case, "q"), fx.leaf(case, "k"), fx.leaf(case, "v"));
    let y = ops::attention(&q, &k, &v, fx.meta(case)["scale"].as_f64().unwrap() as f32).unwrap();
    check_forward_backward(fx, case, r, &y, &[("q", &q), ("k", &k), ("v", &v)], tol);
}

#[test]
fn attention_matches_pytorch() {
    run_op("attention", "attention", attention_case, GEMM);
}

/// Training dropout with NaN/Inf inputs: PyTorch's y is x·mask/(1−p) with its own mask (so a dropped NaN
/// or Inf is NaN); ours, with our mask (read off a run on ones, same seed), must follow the same rule
/// exactly, forward and backward.
fn dropout_nonfinite_case(fx: &Fixture, case: &str, r: &mut Report, tol: Tol) {
    let p = fx.meta(case)["p"].as_f64().unwrap() as f32;
    let x = fx.leaf(case, "x");
    let rule =
        |x: &Tensor, mask: &Tensor| x.mul(mask).unwrap().mul_scalar(1.0 / (1.0 - p)).unwrap();
    r.check(fx, case, "y", &rule(&x.detach(), &fx.t(case, "mask")), tol);
    let seed = 77;
    let ones = Tensor::full(x.shape(), 1.0, common::device()).unwrap();
    let mask = ones
        .dropout(p, true, seed)
        .unwrap()
        .mul_scalar(1.0 - p)
        .unwrap();
    let (xv, mv) = (x.to_vec().unwrap(), mask.to_vec().unwrap());
    let dropped_bad = xv
        .iter()
        .zip(&mv)
        .filter(|(x, m)| !x.is_finite() && **m == 0.0);
    assert!(
        dropped_bad.count() > 0,
        "{case}: our mask keeps every NaN/Inf: the case tests nothing"
    );
    let want = rule(&x.detach(), &mask);
    let (ws, wv) = (want.shape().to_vec(), want.to_vec().unwrap());
    let y = x.dropout(p, true, seed).unwrap();
    r.close(&format!("{case}.y (our mask)"), &y, &ws, &wv, tol);
    // The backward is the same map on dy: the non-finite x as dy.
    y.backward_with(&x.detach()).unwrap();
    r.close(
        &format!("{case}.gx (our mask)"),
        &x.grad().unwrap(),
        &ws,
        &wv,
        tol,
    );
}

/// NaN and ±Inf inputs (nonfinite.safetensors) on every op where their handling is not plain IEEE
/// arithmetic per value, with each op's own tolerance for the finite values. Every case of the file is
/// run (a new op there must be added here).
#[test]
fn nonfinite_inputs_match_pytorch() {
    let ops: [(&str, CaseFn, Tol); 13] = [
        ("relu", relu_case, EXACT),
        ("max_pool", max_pool_case, EXACT),
        ("avg_pool", avg_pool_case, REDUCE),
        ("adaptive_avg_pool", adaptive_avg_pool_case, REDUCE),
        ("softmax", softmax_case, REDUCE),
        ("log_softmax", log_softmax_case, REDUCE),
        ("batch_norm", batch_norm_case, REDUCE),
        ("cross_entropy", cross_entropy_case, REDUCE),
        ("conv", conv_case, GEMM),
        ("linear", linear_case, GEMM),
        ("upsample_trilinear", upsample_case, REDUCE),
        ("attention", attention_case, GEMM),
        ("dropout", dropout_nonfinite_case, EXACT),
    ];
    common::on_devices(|| {
        let fx = Fixture::load("nonfinite");
        let mut r = Report::new("nonfinite");
        let mut run = 0;
        for (op, f, tol) in ops {
            for case in fx.cases(op) {
                f(&fx, &case, &mut r, tol);
                run += 1;
            }
        }
        assert_eq!(
            run,
            fx.len(),
            "nonfinite.safetensors has cases of an op not run here"
        );
        r.finish();
    });
}

/// PyTorch's dropout RNG cannot be reproduced, so the fixtures pin what can be: eval mode is the
/// identity, and in training kept elements are scaled by 1/(1−p) (checked on PyTorch's own mask here
/// and on ours in tests/autograd.rs).
#[test]
fn dropout_matches_pytorch() {
    common::on_devices(|| {
        let fx = Fixture::load("dropout");
        let mut r = Report::new("dropout");
        for case in fx.cases("dropout") {
            let m = fx.meta(&case);
            let p = m["p"].as_f64().unwrap() as f32;
            let x = fx.leaf(&case, "x");
            if m["training"].as_bool().unwrap() {
                // y = x·mask/(1−p) with PyTorch's mask: our scaling rule applied to that mask.
                let mask = fx.t(&case, "mask");
                let y = x.mul(&mask).unwrap().mul_scalar(1.0 / (1.0 - p)).unwrap();
                r.check(&fx, &case, "y", &y, EXACT);
                // Our own training dropout: every output is 0 or x/(1−p), and about p of them are dropped.
                let ours = x.dropout(p, true, 1234).unwrap().to_vec().unwrap();
                let xv = x.to_vec().unwrap();
                let dropped = ours.iter().filter(|&&v| v == 0.0).count();
                let all_ok = ours.iter().zip(&xv).all(|(&o, &xi)| {
                    o == 0.0 || (o - xi / (1.0 - p)).abs() <= 1e-6 * xi.abs().max(1.0)
                });
                if !all_ok {
                    r.fail(format!("{case}: our dropout output is not x/(1-p) or 0"));
                }
                println!("  {case}: our mask dropped {dropped} of {}", ours.len());
            } else {
                let y = x.dropout(p, false, 0).unwrap();
                r.check(&fx, &case, "y", &y, EXACT);
                y.backward_with(&fx.t(&case, "gy")).unwrap();
                r.check_grad(&fx, &case, "x", &x, EXACT);
            }
        }
        r.finish();
    });
}

//! Invalid calls return an error naming the op and the shapes involved; nothing panics.

mod common;

use common::device;
use vidgrad::ops::{self, BatchNormArgs, ConvParams, PoolParams};
use vidgrad::{Device, Tensor};

fn t(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, device()).unwrap()
}

/// The error message must mention every fragment.
fn expect_err<T: std::fmt::Debug>(r: vidgrad::Result<T>, fragments: &[&str]) {
    let msg = r.expect_err("expected an error").to_string();
    println!("{msg}");
    for f in fragments {
        assert!(msg.contains(f), "error '{msg}' does not mention '{f}'");
    }
}

#[test]
fn conv_errors_name_op_and_shapes() {
    let x = t(&[1, 4, 5, 6, 6]);
    // channel mismatch
    expect_err(
        ops::conv(&x, &t(&[8, 3, 3, 3, 3]), None, &ConvParams::default()),
        &["conv3d", "[1, 4, 5, 6, 6]", "[8, 3, 3, 3, 3]"],
    );
    // channels not divisible by groups
    expect_err(
        ops::conv(
            &x,
            &t(&[8, 2, 3, 3, 3]),
            None,
            &ConvParams::default().groups(3),
        ),
        &["conv3d", "groups=3", "[1, 4, 5, 6, 6]"],
    );
    // kernel larger than the padded input
    expect_err(
        ops::conv(&x, &t(&[8, 4, 7, 3, 3]), None, &ConvParams::default()),
        &["conv3d", "larger than the padded input", "[1, 4, 5, 6, 6]"],
    );
    // wrong rank
    expect_err(
        ops::conv(
            &t(&[4, 6, 6]),
            &t(&[8, 4, 3, 3]),
            None,
            &ConvParams::default(),
        ),
        &["[4, 6, 6]"],
    );
    expect_err(
        ops::conv(
            &t(&[1, 4, 6, 6]),
            &t(&[8, 4, 3, 3, 3]),
            None,
            &ConvParams::default(),
        ),
        &["conv2d", "[8, 4, 3, 3, 3]"],
    );
    // bias shape, parameter list length, zero stride
    expect_err(
        ops::conv(
            &x,
            &t(&[8, 4, 3, 3, 3]),
            Some(&t(&[7])),
            &ConvParams::default(),
        ),
        &["conv3d", "bias", "[7]"],
    );
    expect_err(
        ops::conv(
            &x,
            &t(&[8, 4, 3, 3, 3]),
            None,
            &ConvParams::default().stride(&[1, 1]),
        ),
        &["conv3d", "stride"],
    );
    expect_err(
        ops::conv(
            &x,
            &t(&[8, 4, 3, 3, 3]),
            None,
            &ConvParams::default().stride(&[0, 1, 1]),
        ),
        &["conv3d", "stride"],
    );
    expect_err(
        ops::conv2d(&x, &t(&[8, 4, 3, 3, 3]), None, [1, 1], [0, 0], [1, 1], 1),
        &["conv2d", "[1, 4, 5, 6, 6]"],
    );
}

#[test]
fn pool_errors() {
    let x = t(&[1, 2, 4, 4]);
    expect_err(
        ops::max_pool(&x, &PoolParams::new(&[5, 5])),
        &["max_pool", "larger than the padded input", "[1, 2, 4, 4]"],
    );
    expect_err(
        ops::max_pool(&x, &PoolParams::new(&[3, 3]).padding(&[2, 2])),
        &["max_pool", "at most half"],
    );
    expect_err(
        ops::avg_pool(&x, &PoolParams::new(&[3, 3, 3]), true),
        &["avg_pool", "[1, 2, 4, 4]"],
    );
    expect_err(
        ops::max_pool(&t(&[2, 4]), &PoolParams::new(&[2])),
        &["max_pool", "[2, 4]"],
    );
    expect_err(
        ops::adaptive_avg_pool(&x, &[0, 2]),
        &["adaptive_avg_pool", "[0, 2]"],
    );
}

#[test]
fn shape_mismatches_elsewhere() {
    expect_err(t(&[2, 3]).add(&t(&[3, 2])), &["add", "[2, 3]", "[3, 2]"]);
    expect_err(t(&[2, 3]).matmul(&t(&[2, 3])), &["matmul", "[2, 3]"]);
    expect_err(
        t(&[2, 3]).linear(&t(&[4, 2]), None),
        &["linear", "[2, 3]", "[4, 2]"],
    );
    expect_err(
        ops::concat(&[&t(&[2, 3]), &t(&[3, 3])], 1),
        &["concat", "[2, 3]", "[3, 3]"],
    );
    expect_err(
        t(&[2, 3]).reshape(&[4, 2]),
        &["reshape", "[2, 3]", "[4, 2]"],
    );
    expect_err(t(&[2, 3]).permute(&[0, 0]), &["permute", "[0, 0]"]);
    expect_err(t(&[2, 3]).softmax(2), &["softmax", "dim 2", "[2, 3]"]);
    expect_err(
        ops::cross_entropy(&t(&[2, 3]), &[0, 3], 0.0),
        &["cross_entropy", "label 3", "3 classes"],
    );
    expect_err(
        ops::cross_entropy(&t(&[2, 3]), &[0], 0.0),
        &["cross_entropy", "[2, 3]"],
    );
    expect_err(t(&[2, 3]).dropout(1.5, true, 0), &["dropout", "1.5"]);
    expect_err(
        t(&[1, 2, 3, 4]).upsample_trilinear([2, 2, 2], false),
        &["upsample_trilinear", "[1, 2, 3, 4]"],
    );
    expect_err(
        ops::attention(&t(&[1, 4, 6]), &t(&[1, 3, 5]), &t(&[1, 2, 5]), 1.0),
        &["attention", "[1, 4, 6]", "[1, 3, 5]"],
    );
    let bn = BatchNormArgs {
        weight: Some(&t(&[3])),
        ..Default::default()
    };
    expect_err(
        ops::batch_norm(&t(&[2, 4, 5]), &bn),
        &["batch_norm", "weight", "[3]", "[2, 4, 5]"],
    );
    expect_err(
        ops::batch_norm(&t(&[1, 4, 1, 1]), &BatchNormArgs::default()),
        &["batch_norm", "more than one value"],
    );
    let eval = BatchNormArgs {
        training: false,
        ..Default::default()
    };
    expect_err(
        ops::batch_norm(&t(&[2, 4, 5]), &eval),
        &["batch_norm", "running"],
    );
}

#[test]
fn construction_and_autograd_misuse() {
    expect_err(
        Tensor::from_vec(vec![1.0; 5], &[2, 3], device()),
        &["5 values", "[2, 3]"],
    );
    expect_err(Tensor::zeros(&[1, 1, 1, 1, 1, 1], device()), &["rank 6"]);
    if !Device::cuda_available() {
        // Without a usable GPU, asking for one is an error naming it (with one, it is not an error).
        expect_err(Tensor::zeros(&[2, 2], Device::Cuda(0)), &["cuda:0"]);
    }
    expect_err(Device::parse("tpu"), &["tpu"]);
    let x = t(&[2, 3]).with_grad();
    expect_err(x.relu().unwrap().backward(), &["scalar", "[2, 3]"]);
    expect_err(t(&[1]).backward(), &["does not require grad"]);
    expect_err(t(&[2, 3]).retain_grad(), &["retain_grad"]);
    let y = x.relu().unwrap();
    expect_err(y.backward_with(&t(&[3, 2])), &["[3, 2]", "[2, 3]"]);
}

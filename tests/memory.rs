//! Saved activations are released by backward, and inference (no_grad) keeps none. One test in its own
//! binary, because it reads the process-wide byte counter of the CPU backend.

use vidgrad::ops::{self, BatchNormArgs, ConvParams};
use vidgrad::{no_grad, Device, Tensor};

fn block(x: &Tensor, w: &Tensor) -> Tensor {
    let y = ops::conv(x, w, None, &ConvParams::default().padding(&[1, 1, 1])).unwrap();
    let y = ops::batch_norm(&y, &BatchNormArgs::default()).unwrap();
    y.relu().unwrap()
}

#[test]
fn saved_tensors_are_released() {
    let dev = Device::Cpu;
    let x = Tensor::randn(&[2, 4, 4, 8, 8], 1, dev).unwrap();
    let w = Tensor::randn(&[4, 4, 3, 3, 3], 2, dev).unwrap().with_grad();
    let act_bytes = x.numel() * 4;
    let base = dev.memory_in_use().unwrap();

    // Training-mode forward: activations are saved for backward...
    let mut h = x.clone();
    for _ in 0..4 {
        h = block(&h, &w);
    }
    let loss = h.sum().unwrap();
    let with_tape = dev.memory_in_use().unwrap() - base;
    assert!(
        with_tape >= 8 * act_bytes,
        "tape holds {with_tape} bytes, expected several activations"
    );
    // ...and released by backward (the gradient of w stays).
    loss.backward().unwrap();
    drop((h, loss));
    let after = dev.memory_in_use().unwrap() - base;
    println!("saved during forward: {with_tape} B; after backward: {after} B");
    assert!(
        after <= w.numel() * 4,
        "{after} bytes still held after backward"
    );

    // Inference keeps nothing but the output.
    dev.reset_memory_peak().unwrap();
    let out = no_grad(|| {
        let mut h = x.clone();
        for _ in 0..4 {
            h = block(&h, &w);
        }
        h
    });
    let held = dev.memory_in_use().unwrap() - base - w.numel() * 4;
    println!("no_grad: {held} B held after the forward");
    assert!(held <= act_bytes, "inference kept {held} bytes");
    drop(out);
}

//! Math modes (src/math_mode.rs): the CPU backend rounds the operands of convolution and matmul as the
//! mode says (not depthwise convolutions: FP32 in every mode, on CUDA too), and the CLI takes `--math` and
//! `VIDGRAD_MATH`. The mode is process-wide, so the in-process checks run in one test, in order.

mod common;

use vidgrad::math_mode::{math_mode, set_math_mode, MathMode};
use vidgrad::{Device, Tensor};

/// |got − want| ≤ bound[i] elementwise, printing the worst ratio.
fn assert_within(what: &str, got: &[f32], want: &[f32], bound: &[f64]) {
    let mut worst = 0.0f64;
    for i in 0..got.len() {
        let e = (got[i] as f64 - want[i] as f64).abs();
        assert!(
            e <= bound[i],
            "{what}: element {i}: {} vs {} (|err| {e:e} > {:e})",
            got[i],
            want[i],
            bound[i]
        );
        worst = worst.max(e / bound[i].max(f64::MIN_POSITIVE));
    }
    println!("{what}: worst error {worst:.3} of the bound");
}

fn rounded(t: &Tensor, m: MathMode) -> Tensor {
    let v: Vec<f32> = t
        .to_vec()
        .unwrap()
        .into_iter()
        .map(|x| m.round(x))
        .collect();
    Tensor::from_vec(v, t.shape(), Device::Cpu).unwrap()
}

fn abs(t: &Tensor) -> Tensor {
    Tensor::from_vec(
        t.to_vec().unwrap().iter().map(|v| v.abs()).collect(),
        t.shape(),
        Device::Cpu,
    )
    .unwrap()
}

#[test]
fn cpu_backend_rounds_conv_and_matmul_operands() {
    let cpu = Device::Cpu;
    // conv3d 2×5×3×6×7 * 4×5×3×3×3 (+ bias), padding 1: reduction length K = 5·27 = 135.
    let x = Tensor::randn(&[2, 5, 3, 6, 7], 11, cpu).unwrap();
    let w = Tensor::randn(&[4, 5, 3, 3, 3], 12, cpu).unwrap();
    let bias = Tensor::randn(&[4], 13, cpu).unwrap();
    let conv = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| {
        vidgrad::ops::conv::conv3d(x, w, b, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
            .unwrap()
            .to_vec()
            .unwrap()
    };
    // matmul 3×37×29 · 3×29×18: K = 29.
    let a = Tensor::randn(&[3, 37, 29], 14, cpu).unwrap();
    let b = Tensor::randn(&[3, 29, 18], 15, cpu).unwrap();
    let mm = |a: &Tensor, b: &Tensor| a.matmul(b).unwrap().to_vec().unwrap();

    set_math_mode(MathMode::Fp32);
    let conv_fp32 = conv(&x, &w, Some(&bias));
    let conv_abs = conv(&abs(&x), &abs(&w), None); // Σ|x||w| per output
    let mm_fp32 = mm(&a, &b);
    let mm_abs = mm(&abs(&a), &abs(&b));
    for m in [MathMode::Tf32, MathMode::Bf16] {
        // What the mode must compute: the FP32 product of the rounded operands, bias unrounded.
        set_math_mode(MathMode::Fp32);
        let conv_ref = conv(&rounded(&x, m), &rounded(&w, m), Some(&bias));
        let mm_ref = mm(&rounded(&a, m), &rounded(&b, m));
        set_math_mode(m);
        assert_eq!(math_mode().unwrap(), m);
        let conv_m = conv(&x, &w, Some(&bias));
        let mm_m = mm(&a, &b);
        // Same operands, same FP32 code: identical results.
        assert_eq!(
            conv_m, conv_ref,
            "conv {m}: operands rounded as the mode says"
        );
        assert_eq!(mm_m, mm_ref, "matmul {m}");
        // Against plain FP32: each rounded product x̃·w̃ = x·w·(1 + δ), |δ| ≤ 2u + u² (u the mode's unit
        // roundoff), so |Σ x̃w̃ − Σ xw| ≤ (2u + u²)·Σ|x||w|; plus FP32 accumulation in both (γ_K·Σ|x||w|
        // each, K = 135 at most, u32 = 2^-24).
        let u = m.unit_roundoff();
        let g = 2.0 * 135.0 * 2f64.powi(-24) / (1.0 - 135.0 * 2f64.powi(-24));
        let bound = |s: &[f32]| -> Vec<f64> {
            s.iter()
                .map(|&v| (2.0 * u + u * u + g) * v as f64 * 1.0001 + 1e-30)
                .collect()
        };
        assert_within(
            &format!("conv {m} vs fp32"),
            &conv_m,
            &conv_fp32,
            &bound(&conv_abs),
        );
        assert_within(
            &format!("matmul {m} vs fp32"),
            &mm_m,
            &mm_fp32,
            &bound(&mm_abs),
        );
        // And the rounding is visible: the results are not the FP32 ones.
        assert_ne!(conv_m, conv_fp32, "conv {m} equals fp32");
        assert_ne!(mm_m, mm_fp32, "matmul {m} equals fp32");
    }

    // Depthwise convolutions multiply in FP32 in every mode (`ConvGeom::math_mode`: their CUDA kernels
    // stay on CUDA cores): the CPU does not round them, and CUDA gives the same.
    let wd = Tensor::randn(&[5, 1, 3, 3, 3], 16, cpu).unwrap();
    let dw = |x: &Tensor, w: &Tensor| {
        vidgrad::ops::conv::conv3d(x, w, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], 5)
            .unwrap()
            .to_vec()
            .unwrap()
    };
    set_math_mode(MathMode::Fp32);
    let dw_fp32 = dw(&x, &wd);
    set_math_mode(MathMode::Tf32);
    assert_eq!(dw(&x, &wd), dw_fp32, "depthwise conv in tf32 on the CPU");
    if let Some(dev) = common::cuda_device() {
        let on_dev = dw(&x.to_device(dev).unwrap(), &wd.to_device(dev).unwrap());
        // 27 taps: the two FP32 accumulation orders differ by ≤ 2·γ_27·Σ|x||w|.
        let g27 = 27.0 * 2f64.powi(-24) / (1.0 - 27.0 * 2f64.powi(-24));
        let bound: Vec<f64> = dw(&abs(&x), &abs(&wd))
            .iter()
            .map(|&v| 2.0 * g27 * v as f64 * 1.0001 + 1e-30)
            .collect();
        assert_within(
            "depthwise conv tf32 on CUDA vs CPU",
            &on_dev,
            &dw_fp32,
            &bound,
        );
    }
    set_math_mode(MathMode::Fp32);
}

#[test]
fn cli_takes_math_and_vidgrad_math() {
    let args = [
        "summary",
        "--model",
        "ct-sep",
        "--input-shape",
        "1,3,4,32,32",
    ];
    let (ok, out, err) = common::run_vidgrad_env(&args, &[("VIDGRAD_MATH", "bf16")]);
    assert!(ok, "{err}");
    assert!(out.contains("Math mode: bf16"), "{out}");
    let mut with_flag = args.to_vec();
    with_flag.extend(["--math", "tf32"]);
    let (ok, out, err) = common::run_vidgrad_env(&with_flag, &[("VIDGRAD_MATH", "bf16")]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Math mode: tf32"),
        "--math wins over VIDGRAD_MATH: {out}"
    );
    let (ok, out, _) = common::run_vidgrad_env(&args, &[("VIDGRAD_MATH", "")]);
    assert!(ok && out.contains("Math mode: fp32"), "{out}");
    let (ok, _, err) = common::run_vidgrad_env(&args, &[("VIDGRAD_MATH", "fp16")]);
    assert!(
        !ok && err.contains("VIDGRAD_MATH") && err.contains("fp32, tf32, bf16"),
        "{err}"
    );
    with_flag.pop();
    with_flag.push("half");
    let (ok, _, err) = common::run_vidgrad(&with_flag);
    assert!(!ok && err.contains("fp32, tf32, bf16"), "{err}");
}

#[test]
fn training_checkpoints_record_the_math_mode() {
    let out = std::env::temp_dir().join(format!("vidgrad-math-mode-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut args = common::tiny_train_args(&out, 1);
    args.extend(["--math".to_string(), "bf16".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = common::run_vidgrad(&args);
    assert!(ok, "{err}");
    let meta = vidgrad::train::checkpoint::read_meta(&out.join("last.safetensors"))
        .unwrap()
        .expect("a training checkpoint");
    assert_eq!(meta["config"]["math"], "bf16", "{meta}");
    let _ = std::fs::remove_dir_all(&out);
}

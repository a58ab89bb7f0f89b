//! Math modes (src/math_mode.rs): the CPU backend rounds the operands of convolution and matmul as the
//! mode says (not depthwise convolutions: FP32 in every mode, on CUDA too), and the CLI takes `--math` and
//! `VIDGRAD_MATH`. The in-process checks pick their modes with `with_math_mode` (this thread only):
//! `common::cuda_device` sets the process-wide mode to fp32 for the CUDA suites.

mod common;

use vidgrad::math_mode::{math_mode_on, with_math_mode, Hardware, MathMode};
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

    let fp32 = |f: &dyn Fn() -> Vec<f32>| with_math_mode(MathMode::Fp32, f);
    let conv_fp32 = fp32(&|| conv(&x, &w, Some(&bias)));
    let conv_abs = fp32(&|| conv(&abs(&x), &abs(&w), None)); // Σ|x||w| per output
    let mm_fp32 = fp32(&|| mm(&a, &b));
    let mm_abs = fp32(&|| mm(&abs(&a), &abs(&b)));
    for m in [MathMode::Tf32, MathMode::Bf16] {
        // What the mode must compute: the FP32 product of the rounded operands, bias unrounded.
        let conv_ref = fp32(&|| conv(&rounded(&x, m), &rounded(&w, m), Some(&bias)));
        let mm_ref = fp32(&|| mm(&rounded(&a, m), &rounded(&b, m)));
        let (conv_m, mm_m) = with_math_mode(m, || {
            assert_eq!(math_mode_on(Hardware::Cpu).unwrap(), m);
            assert_eq!(math_mode_on(Hardware::Cuda).unwrap(), m);
            (conv(&x, &w, Some(&bias)), mm(&a, &b))
        });
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
    let dw_fp32 = fp32(&|| dw(&x, &wd));
    let dw_tf32 = |x: &Tensor, w: &Tensor| with_math_mode(MathMode::Tf32, || dw(x, w));
    assert_eq!(
        dw_tf32(&x, &wd),
        dw_fp32,
        "depthwise conv in tf32 on the CPU"
    );
    if let Some(dev) = common::cuda_device() {
        let on_dev = dw_tf32(&x.to_device(dev).unwrap(), &wd.to_device(dev).unwrap());
        // 27 taps: the two FP32 accumulation orders differ by ≤ 2·γ_27·Σ|x||w|.
        let g27 = 27.0 * 2f64.powi(-24) / (1.0 - 27.0 * 2f64.powi(-24));
        let bound: Vec<f64> = fp32(&|| dw(&abs(&x), &abs(&wd)))
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
    assert!(
        ok && out.contains("Math mode: the defaults, tf32 on CUDA and fp32 on the CPU"),
        "{out}"
    );
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
    assert!(err.contains("math bf16"), "{err}");
    let meta = vidgrad::train::checkpoint::read_meta(&out.join("last.safetensors"))
        .unwrap()
        .expect("a training checkpoint");
    assert_eq!(meta["config"]["math"], "bf16", "{meta}");
    let _ = std::fs::remove_dir_all(&out);
}

/// γ_K = K·u/(1 − K·u), u = 2^-24: the bound of a K-term FP32 sum relative to the sum of magnitudes.
fn gamma32(k: usize) -> f64 {
    let u = 2f64.powi(-24);
    k as f64 * u / (1.0 - k as f64 * u)
}

#[test]
fn bf16_matches_pytorch_rounding_and_its_conv_and_matmul() {
    // tests/fixtures/ops/math_mode.safetensors (tools/reference/gen_op_fixtures.py, gen_math_mode):
    // PyTorch's own float → bfloat16 conversion of edge values, and conv3d / matmul with both operands
    // (and dy) rounded by it, products summed in float64.
    use common::Fixture;
    use vidgrad::math_mode::with_math_mode;
    let fx = Fixture::load("math_mode");
    let cpu = |case: &str, name: &str| {
        let (shape, data) = fx.raw(case, name);
        Tensor::from_slice(data, shape, Device::Cpu).unwrap()
    };
    let data = |case: &str, name: &str| fx.raw(case, name).1.clone();

    // The conversion, bit for bit (NaN stays NaN).
    let (x, want) = (data("round_bf16", "x"), data("round_bf16", "y"));
    for (i, (&x, &want)) in x.iter().zip(&want).enumerate() {
        let got = MathMode::Bf16.round(x);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "value {i}: {x:e} ({:#010x}) rounds to {got:e}, PyTorch {want:e}",
            x.to_bits()
        );
    }
    println!("bf16 rounding: {} values equal to PyTorch's", x.len());

    // The ops. Products of two bfloat16 values are exact in FP32 (8 + 8 significant bits), so the
    // only difference from PyTorch's float64 sum is vidgrad's FP32 accumulation, γ_K·Σ|ã||b̃| for K
    // terms (the bias is one more term), plus the fixture's own rounding to FP32, u·|y| ≤ u·Σ|ã||b̃|.
    // Σ|ã||b̃| is computed by the same op on the magnitudes of the rounded operands (its own FP32
    // error, at most γ_K relative, is the 1.0001).
    let bound = |abs_sum: &[f32], k: usize| -> Vec<f64> {
        let u = 2f64.powi(-24);
        abs_sum
            .iter()
            .map(|&s| (gamma32(k) + u) * s as f64 * 1.0001 + 1e-30)
            .collect()
    };
    // Each result (name, ours in bf16, ours in FP32, Σ|ã||b̃|, K) against the fixture's: within the bound,
    // and the check can fail: without the rounding (plain FP32) the same bound does not hold.
    type Check<'a> = (&'a str, &'a Vec<f32>, &'a Vec<f32>, &'a Vec<f32>, usize);
    let check_op = |op: &str, case: &str, checks: &[Check]| {
        for &(name, got, got_fp32, mag, k) in checks {
            let want = data(case, name);
            let bound = bound(mag, k);
            assert_within(&format!("{op} bf16 {name} vs PyTorch"), got, &want, &bound);
            assert!(
                got_fp32
                    .iter()
                    .zip(&want)
                    .zip(&bound)
                    .any(|((g, w), b)| (*g as f64 - *w as f64).abs() > *b),
                "{op} {name}: FP32 also within the bf16 bound"
            );
        }
    };
    let round = |t: &Tensor| rounded(t, MathMode::Bf16);
    // Each op's forward and the gradients of its two operands (gy the upstream gradient), on the CPU.
    let conv_case = |x: &Tensor, w: &Tensor, b: &Tensor, gy: &Tensor| {
        let (x, w) = (x.with_grad(), w.with_grad());
        let y = vidgrad::ops::conv::conv3d(&x, &w, Some(b), [1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
            .unwrap();
        y.backward_with(gy).unwrap();
        let v = |t: Option<Tensor>| t.unwrap().to_vec().unwrap();
        (y.to_vec().unwrap(), v(x.grad()), v(w.grad()))
    };
    let matmul_case = |a: &Tensor, b: &Tensor, gy: &Tensor| {
        let (a, b) = (a.with_grad(), b.with_grad());
        let y = a.matmul(&b).unwrap();
        y.backward_with(gy).unwrap();
        let v = |t: Option<Tensor>| t.unwrap().to_vec().unwrap();
        (y.to_vec().unwrap(), v(a.grad()), v(b.grad()))
    };

    // The CPU, and the CUDA backend (on the simulator without a GPU: the tensor-core kernels, whose
    // FP32 accumulation order differs; the bound holds for any order).
    let mut devices = vec![Device::Cpu];
    devices.extend(common::cuda_device());
    let on = |t: &Tensor, dev: Device| t.to_device(dev).unwrap();

    let c = "conv3d_bf16";
    let (x, w, b, gy) = (cpu(c, "x"), cpu(c, "w"), cpu(c, "b"), cpu(c, "gy"));
    let fp32 = with_math_mode(MathMode::Fp32, || conv_case(&x, &w, &b, &gy));
    let mags = with_math_mode(MathMode::Fp32, || {
        conv_case(
            &abs(&round(&x)),
            &abs(&round(&w)),
            &abs(&b),
            &abs(&round(&gy)),
        )
    });
    for dev in devices.clone() {
        println!("conv on {dev:?}");
        let ours = with_math_mode(MathMode::Bf16, || {
            conv_case(&on(&x, dev), &on(&w, dev), &on(&b, dev), &on(&gy, dev))
        });
        // K: y 5·27 taps + the bias; dx 4·27; dw over the 2·3·6·7 output positions.
        let checks = [
            ("y", &ours.0, &fp32.0, &mags.0, 5 * 27 + 1),
            ("gx", &ours.1, &fp32.1, &mags.1, 4 * 27),
            ("gw", &ours.2, &fp32.2, &mags.2, 2 * 3 * 6 * 7),
        ];
        check_op("conv", c, &checks);
    }

    let m = "matmul_bf16";
    let (a, bm, gy) = (cpu(m, "a"), cpu(m, "b"), cpu(m, "gy"));
    let fp32 = with_math_mode(MathMode::Fp32, || matmul_case(&a, &bm, &gy));
    let mags = with_math_mode(MathMode::Fp32, || {
        matmul_case(&abs(&round(&a)), &abs(&round(&bm)), &abs(&round(&gy)))
    });
    for dev in devices {
        println!("matmul on {dev:?}");
        let ours = with_math_mode(MathMode::Bf16, || {
            matmul_case(&on(&a, dev), &on(&bm, dev), &on(&gy, dev))
        });
        // [3, 37, 29] · [3, 29, 18]: K = 29 for y, 18 for da, 37 for db.
        let checks = [
            ("y", &ours.0, &fp32.0, &mags.0, 29),
            ("ga", &ours.1, &fp32.1, &mags.1, 18),
            ("gb", &ours.2, &fp32.2, &mags.2, 37),
        ];
        check_op("matmul", m, &checks);
    }
}

//! The CUDA backend against the CPU backend, op family by op family, on at least 200 random
//! configurations each (through the `Backend` trait, so every kernel path is hit directly).
//! Without a GPU they run on the CUDA simulator (tests/common `cuda_device`); `VIDGRAD_CUDA_SIM=1`
//! forces the simulator, `VIDGRAD_REQUIRE_CUDA=1` fails without a GPU.

mod common;

use vidgrad::backend::cpu::CpuBackend;
use vidgrad::backend::cuda::cudarc_driver::CudarcDriver;
use vidgrad::backend::cuda::sim::{SimDriver, Simulator};
use vidgrad::backend::cuda::CudaBackend;
use vidgrad::backend::*;
use vidgrad::rng::uniform;
use vidgrad::{Device, Tensor};

/// Random configurations per family: 200 (the bar), or VIDGRAD_CUDA_OPS_CASES for a quicker
/// pass over every family (tools/gpu/run.sh runs compute-sanitizer's racecheck with 20: it is slow on
/// the shared-memory GEMMs). A family that splits its cases between modes needs at least 4.
fn cases() -> usize {
    std::env::var("VIDGRAD_CUDA_OPS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(200, |n: usize| n.max(4))
}

fn cuda() -> Option<&'static dyn Backend> {
    common::cuda_device().map(|d| d.backend().expect("the CUDA device of the suite"))
}

/// A deterministic stream of draws.
struct Draw(u64, u64);
impl Draw {
    fn new(seed: u64) -> Self {
        Draw(seed, 0)
    }
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        self.1 += 1;
        lo + ((uniform(self.0, self.1) as f64 * (hi - lo + 1) as f64) as usize).min(hi - lo)
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.int(0, v.len() - 1)]
    }
    fn data(&mut self, n: usize) -> Vec<f32> {
        self.1 += 1;
        let s = self.0 * 1000 + self.1;
        (0..n).map(|i| uniform(s, i as u64) * 2.0 - 1.0).collect()
    }
}

struct Pair {
    cpu: &'static dyn Backend,
    gpu: &'static dyn Backend,
    worst: f32,
}

static CPU: CpuBackend = CpuBackend;

impl Pair {
    fn new() -> Option<Pair> {
        cuda().map(|gpu| Pair {
            cpu: &CPU,
            gpu,
            worst: 0.0,
        })
    }
    fn up(&self, v: &[f32]) -> (BufferRef, BufferRef) {
        (
            self.cpu.from_host(v).unwrap(),
            self.gpu.from_host(v).unwrap(),
        )
    }
    /// |cuda − cpu| ≤ atol + rtol·|cpu| elementwise.
    fn check(&mut self, what: &str, c: &BufferRef, g: &BufferRef, atol: f32, rtol: f32) {
        let (c, g) = (
            self.cpu.to_host(&**c).unwrap(),
            self.gpu.to_host(&**g).unwrap(),
        );
        assert_eq!(c.len(), g.len(), "{what}: lengths");
        for (i, (a, b)) in c.iter().zip(&g).enumerate() {
            let err = (a - b).abs();
            // equal (infinities included) or both NaN
            if a == b || (a.is_nan() && b.is_nan()) {
                continue;
            }
            assert!(
                err <= atol + rtol * a.abs(),
                "{what}: element {i}: cpu {a} cuda {b}"
            );
            self.worst = self.worst.max(err / (1.0 + a.abs()));
        }
    }
    fn done(&self, family: &str) {
        println!(
            "{family}: {} configurations, worst relative error {:.2e}",
            cases(),
            self.worst
        );
    }
}

fn elementwise_and_reductions_match_cpu() {
    let Some(mut p) = Pair::new() else { return };
    let mut d = Draw::new(1);
    for case in 0..cases() {
        let n = d.pick(&[1usize, 3, 4, 5, 17, 64, 255, 1000, 4097, 100_003]);
        let xv = d.data(n);
        let yv = d.data(n);
        let ((xc, xg), (yc, yg)) = (p.up(&xv), p.up(&yv));
        let fill = d.pick(&[0.0f32, -0.0, 1.5, f32::NAN]);
        p.check(
            "full",
            &p.cpu.full(n, fill).unwrap(),
            &p.gpu.full(n, fill).unwrap(),
            0.0,
            0.0,
        );
        let op = d.pick(&[
            UnaryOp::Relu,
            UnaryOp::Scale(-1.5),
            UnaryOp::AddScalar(0.25),
            UnaryOp::Sqrt,
        ]);
        p.check(
            "unary",
            &p.cpu.unary(&*xc, op).unwrap(),
            &p.gpu.unary(&*xg, op).unwrap(),
            0.0,
            0.0,
        );
        let bop = d.pick(&[
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::AddRelu,
        ]);
        p.check(
            "binary",
            &p.cpu.binary(&*xc, &*yc, bop).unwrap(),
            &p.gpu.binary(&*xg, &*yg, bop).unwrap(),
            0.0,
            0.0,
        );
        p.check(
            "relu_backward",
            &p.cpu.relu_backward(&*xc, &*yc).unwrap(),
            &p.gpu.relu_backward(&*xg, &*yg).unwrap(),
            0.0,
            0.0,
        );
        let seed = case as u64 * 7 + 1;
        p.check(
            "dropout",
            &p.cpu.dropout(&*xc, 0.3, seed).unwrap(),
            &p.gpu.dropout(&*xg, 0.3, seed).unwrap(),
            0.0,
            0.0,
        );
        // The fused add → ReLU every case (the pick above draws it one time in five), then ReLU in
        // place over its own output's copy: both exact (one rounding of a + b, ReLU exact), NaN kept.
        let (sc, sg) = (
            p.cpu.binary(&*xc, &*yc, BinaryOp::AddRelu).unwrap(),
            p.gpu.binary(&*xg, &*yg, BinaryOp::AddRelu).unwrap(),
        );
        p.check("add+relu", &sc, &sg, 0.0, 0.0);
        let (ic, ig) = (p.cpu.copy(&*xc).unwrap(), p.gpu.copy(&*xg).unwrap());
        p.cpu.relu_in_place(&*ic).unwrap();
        p.gpu.relu_in_place(&*ig).unwrap();
        p.check("relu in place", &ic, &ig, 0.0, 0.0);
        let (ac, ag) = (p.cpu.copy(&*xc).unwrap(), p.gpu.copy(&*xg).unwrap());
        p.cpu.add_relu_in_place(&*ac, &*yc).unwrap();
        p.gpu.add_relu_in_place(&*ag, &*yg).unwrap();
        p.check("add+relu in place", &ac, &ag, 0.0, 0.0);
        p.check("add+relu in place = add+relu", &sc, &ag, 0.0, 0.0);
        let bits = |b: &BufferRef| -> Vec<u32> {
            let v = p.cpu.to_host(&**b).unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert_eq!(
            bits(&ic),
            bits(&p.cpu.unary(&*xc, UnaryOp::Relu).unwrap()),
            "relu in place differs from relu"
        );
        let (ac, ag) = (p.cpu.copy(&*yc).unwrap(), p.gpu.copy(&*yg).unwrap());
        p.cpu.axpby(&*ac, 0.5, &*xc, -2.0).unwrap();
        p.gpu.axpby(&*ag, 0.5, &*xg, -2.0).unwrap();
        p.check("axpby", &ac, &ag, 0.0, 0.0);
        p.check(
            "sum_all",
            &p.cpu.sum_all(&*xc).unwrap(),
            &p.gpu.sum_all(&*xg).unwrap(),
            1e-4,
            1e-5,
        );
        let s = p.cpu.sum_all(&*xc).unwrap();
        let sg = p.gpu.sum_all(&*xg).unwrap();
        p.check(
            "broadcast",
            &p.cpu.broadcast_scalar(&*s, 7, 0.5).unwrap(),
            &p.gpu.broadcast_scalar(&*sg, 7, 0.5).unwrap(),
            1e-4,
            1e-5,
        );
        // Per-axis views of the same data.
        let axis = d.pick(&[1usize, 2, 3, 7, 64]);
        let inner = d.pick(&[1usize, 4, 5, 49, 256]);
        let outer = d.int(1, 4);
        let g = AxisGeom { outer, axis, inner };
        let v = d.data(g.numel());
        let b = d.data(axis);
        let ((vc, vg), (bc, bg)) = (p.up(&v), p.up(&b));
        p.check(
            "sum_to_axis",
            &p.cpu.sum_to_axis(&*vc, g).unwrap(),
            &p.gpu.sum_to_axis(&*vg, g).unwrap(),
            1e-4,
            1e-5,
        );
        p.check(
            "add_axis_bias",
            &p.cpu.add_axis_bias(&*vc, &*bc, g).unwrap(),
            &p.gpu.add_axis_bias(&*vg, &*bg, g).unwrap(),
            0.0,
            0.0,
        );
    }
    p.done("elementwise");
}

fn conv_geom(d: &mut Draw, case: usize) -> ConvGeom {
    const KERNELS: [[usize; 3]; 9] = [
        [3, 3, 3],
        [3, 1, 1],
        [1, 3, 3],
        [5, 7, 7],
        [1, 7, 7],
        [1, 1, 1],
        [2, 3, 2],
        [1, 5, 5],
        [3, 3, 3],
    ];
    let kernel = KERNELS[case % KERNELS.len()];
    let flat = case % 5 == 4 && kernel[0] == 1;
    let big = kernel.iter().product::<usize>() > 100;
    let mut g = ConvGeom {
        n: d.int(1, 3),
        c_in: 0,
        c_out: 0,
        groups: 1,
        input: [0; 3],
        output: [0; 3],
        kernel,
        stride: [1; 3],
        padding: [0; 3],
        dilation: [1; 3],
    };
    for (i, &k) in kernel.iter().enumerate() {
        if flat && i == 0 {
            g.input[0] = 1;
            g.output[0] = 1;
            continue;
        }
        g.stride[i] = d.int(1, 2);
        g.padding[i] = d.int(0, 2.min(k));
        if k > 1 && !big {
            g.dilation[i] = d.int(1, 2);
        }
        let span = g.dilation[i] * (k - 1) + 1;
        let min = span.saturating_sub(2 * g.padding[i]).max(1);
        g.input[i] = min + d.int(0, if big { 3 } else { 7 });
        g.output[i] = (g.input[i] + 2 * g.padding[i] - span) / g.stride[i] + 1;
    }
    let (ci, co) = if big {
        (d.int(1, 8), d.int(1, 8))
    } else {
        (d.int(1, 70), d.int(1, 70))
    };
    match d.int(0, 4) {
        0 | 1 => (g.groups, g.c_in, g.c_out) = (1, ci, co),
        2 => (g.groups, g.c_in, g.c_out) = (2, 2 * ci.div_ceil(2), 2 * co.div_ceil(2)),
        m => {
            let c = d.int(2, 9);
            (g.groups, g.c_in, g.c_out) = (c, c, c * (m - 2)); // depthwise, multiplier 1 or 2
        }
    }
    g
}

fn conv_matches_cpu() {
    let Some(mut p) = Pair::new() else { return };
    let mut d = Draw::new(2);
    for case in 0..cases() {
        let g = conv_geom(&mut d, case);
        let xv = d.data(g.n * g.c_in * g.input_volume());
        let wv = d.data(g.c_out * g.in_per_group() * g.kernel_volume());
        let dyv = d.data(g.n * g.c_out * g.output_volume());
        let bv = d.data(g.c_out);
        let ((xc, xg), (wc, wg), (dc, dg), (bc, bg)) =
            (p.up(&xv), p.up(&wv), p.up(&dyv), p.up(&bv));
        let bias = case % 2 == 0;
        let (ybc, ybg) = (bias.then_some(&*bc), bias.then_some(&*bg));
        let tol = 1e-4 * (g.in_per_group() * g.kernel_volume()) as f32;
        p.check(
            &format!("conv fwd {g:?}"),
            &p.cpu.conv_forward(&*xc, &*wc, ybc, &g).unwrap(),
            &p.gpu.conv_forward(&*xg, &*wg, ybg, &g).unwrap(),
            tol.max(1e-4),
            1e-4,
        );
        // The fused conv+relu epilogue (ReLU is 1-Lipschitz: the same tolerance).
        p.check(
            &format!("conv fwd+relu {g:?}"),
            &p.cpu.conv_forward_relu(&*xc, &*wc, ybc, &g).unwrap(),
            &p.gpu.conv_forward_relu(&*xg, &*wg, ybg, &g).unwrap(),
            tol.max(1e-4),
            1e-4,
        );
        p.check(
            &format!("conv dgrad {g:?}"),
            &p.cpu.conv_backward_data(&*dc, &*wc, &g).unwrap(),
            &p.gpu.conv_backward_data(&*dg, &*wg, &g).unwrap(),
            (1e-4 * (g.out_per_group() * g.kernel_volume()) as f32).max(1e-4),
            1e-4,
        );
        p.check(
            &format!("conv wgrad {g:?}"),
            &p.cpu.conv_backward_weight(&*xc, &*dc, &g).unwrap(),
            &p.gpu.conv_backward_weight(&*xg, &*dg, &g).unwrap(),
            (1e-4 * (g.n * g.output_volume()) as f32).max(1e-4),
            1e-4,
        );
    }
    p.done("conv");
}

/// |cuda − cpu| bounds of a tensor-core product with reduction length `k` and operands in [−1, 1]
/// (so Σ|ãb̃| ≤ k), as (same mode, vs plain FP32): both sides multiply the same rounded operands and
/// differ by FP32 accumulation, ≤ 2·γ_k·k (γ_k = k·u/(1 − k·u), u = 2^-24), in any summation order
/// (split-K's partial sums included); plain FP32 is further off by the operand rounding,
/// (2u_mode + u_mode²)·k (u_mode = 2^-11 tf32, 2^-8 bf16). A kernel skipping the rounding fails the
/// first check, one rounding wrongly the second.
fn tensor_core_bounds(mode: vidgrad::math_mode::MathMode, k: usize) -> (f64, f64) {
    let (k, u) = (k as f64, 2f64.powi(-24));
    let same = 2.0 * k * u / (1.0 - k * u) * k;
    let um = mode.unit_roundoff();
    (same, same + (2.0 * um + um * um) * k)
}

/// Depthwise convolutions stay on CUDA cores in every math mode (`ConvGeom::math_mode`): in tf32/bf16
/// the CPU backend must give exactly its FP32 result (no rounding) and CUDA the FP32 kernels' (the
/// tolerances of `conv_matches_cpu`).
fn check_depthwise_stays_fp32(
    p: &mut Pair,
    mode: vidgrad::math_mode::MathMode,
    what: &str,
    g: &ConvGeom,
    run: impl Fn(&'static dyn Backend, usize) -> BufferRef,
    k: usize,
) {
    // run(backend, 0) on the CPU's buffers, run(backend, 1) on the GPU's.
    let (cpu, gpu) = vidgrad::math_mode::with_math_mode(mode, || (run(p.cpu, 0), run(p.gpu, 1)));
    let fp32 = p.cpu.to_host(&*run(p.cpu, 0)).unwrap();
    let rounded = p.cpu.to_host(&*cpu).unwrap();
    assert!(
        fp32.iter()
            .zip(&rounded)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{what} {mode} (depthwise) on the CPU differs from fp32: {g:?}"
    );
    p.check(
        &format!("{what} {mode} (depthwise) {g:?}"),
        &cpu,
        &gpu,
        (1e-4 * k as f32).max(1e-4),
        1e-4,
    );
}

/// The tensor-core convolution fprop (--math tf32 | bf16) against the CPU backend in the same mode, on
/// the geometries of `conv_matches_cpu` (values in [−1, 1], so Σ|x̃w̃| ≤ K = Cin/G·kvol), within
/// `tensor_core_bounds` plus the FP32 bias addition, ≤ 2u·(K + 1). Depthwise convolutions: FP32 in
/// every mode. 100 configurations per mode (200 in the family): the simulator runs each mma as a warp
/// collective.
fn conv_tensor_cores_match_cpu() {
    use vidgrad::math_mode::{with_math_mode, MathMode};
    let Some(mut p) = Pair::new() else { return };
    for (mode, seed) in [(MathMode::Tf32, 81), (MathMode::Bf16, 82)] {
        let mut d = Draw::new(seed);
        for case in 0..cases() / 2 {
            let g = conv_geom(&mut d, case);
            let xv = d.data(g.n * g.c_in * g.input_volume());
            let wv = d.data(g.c_out * g.in_per_group() * g.kernel_volume());
            let bv = d.data(g.c_out);
            let ((xc, xg), (wc, wg), (bc, bg)) = (p.up(&xv), p.up(&wv), p.up(&bv));
            let bias = case % 2 == 0;
            let (ybc, ybg) = (bias.then_some(&*bc), bias.then_some(&*bg));
            let k = g.in_per_group() * g.kernel_volume();
            if g.is_depthwise() {
                let (xs, ws, bs) = ([&xc, &xg], [&wc, &wg], [ybc, ybg]);
                check_depthwise_stays_fp32(
                    &mut p,
                    mode,
                    "conv fwd",
                    &g,
                    |be, i| be.conv_forward(&**xs[i], &**ws[i], bs[i], &g).unwrap(),
                    k,
                );
                continue;
            }
            let (cpu, gpu) = with_math_mode(mode, || {
                (
                    p.cpu.conv_forward(&*xc, &*wc, ybc, &g).unwrap(),
                    p.gpu.conv_forward(&*xg, &*wg, ybg, &g).unwrap(),
                )
            });
            let (same, vs_fp32) = tensor_core_bounds(mode, k);
            let bias_add = 2.0 * 2f64.powi(-24) * (k as f64 + 1.0);
            p.check(
                &format!("conv fwd {mode} {g:?}"),
                &cpu,
                &gpu,
                (same + bias_add) as f32,
                0.0,
            );
            let fp32 = p.cpu.conv_forward(&*xc, &*wc, ybc, &g).unwrap();
            p.check(
                &format!("conv fwd {mode} vs fp32 {g:?}"),
                &fp32,
                &gpu,
                (vs_fp32 + bias_add) as f32,
                0.0,
            );
        }
    }
    println!(
        "(conv fprop tf32/bf16: {} configurations per mode)",
        cases() / 2
    );
    p.done("conv fprop tf32/bf16");
}

/// The tensor-core convolution dgrad and wgrad (--math tf32 | bf16; wgrad with split-K) against the
/// CPU backend in the same mode and against plain FP32, within `tensor_core_bounds` of their reduction
/// lengths: dgrad Cout/G·kvol (only the taps that reach an input position count; the bound holds for
/// fewer), wgrad N·P. Geometries from `conv_geom`, 100 per mode for each of dgrad and wgrad; depthwise
/// ones stay FP32. Then dgrad with non-finite weights: a structural zero (strided taps with no output)
/// times NaN or ±Inf must add nothing, as on the CPU, which only sums real terms (in fp32 too).
fn conv_grads_tensor_cores_match_cpu() {
    use vidgrad::math_mode::{with_math_mode, MathMode};
    let Some(mut p) = Pair::new() else { return };
    for (mode, seed) in [(MathMode::Tf32, 83), (MathMode::Bf16, 84)] {
        let mut d = Draw::new(seed);
        for case in 0..cases() / 2 {
            let g = conv_geom(&mut d, case);
            let xv = d.data(g.n * g.c_in * g.input_volume());
            let wv = d.data(g.c_out * g.in_per_group() * g.kernel_volume());
            let dyv = d.data(g.n * g.c_out * g.output_volume());
            let ((xc, xg), (wc, wg), (dc, dg)) = (p.up(&xv), p.up(&wv), p.up(&dyv));
            let k_dgrad = g.out_per_group() * g.kernel_volume();
            let k_wgrad = g.n * g.output_volume();
            if g.is_depthwise() {
                let (xs, ws, ds) = ([&xc, &xg], [&wc, &wg], [&dc, &dg]);
                check_depthwise_stays_fp32(
                    &mut p,
                    mode,
                    "conv dgrad",
                    &g,
                    |be, i| be.conv_backward_data(&**ds[i], &**ws[i], &g).unwrap(),
                    k_dgrad,
                );
                check_depthwise_stays_fp32(
                    &mut p,
                    mode,
                    "conv wgrad",
                    &g,
                    |be, i| be.conv_backward_weight(&**xs[i], &**ds[i], &g).unwrap(),
                    k_wgrad,
                );
                continue;
            }
            let (dx_cpu, dx_gpu, dw_cpu, dw_gpu) = with_math_mode(mode, || {
                (
                    p.cpu.conv_backward_data(&*dc, &*wc, &g).unwrap(),
                    p.gpu.conv_backward_data(&*dg, &*wg, &g).unwrap(),
                    p.cpu.conv_backward_weight(&*xc, &*dc, &g).unwrap(),
                    p.gpu.conv_backward_weight(&*xg, &*dg, &g).unwrap(),
                )
            });
            let (same, vs_fp32) = tensor_core_bounds(mode, k_dgrad);
            p.check(
                &format!("conv dgrad {mode} {g:?}"),
                &dx_cpu,
                &dx_gpu,
                same as f32,
                0.0,
            );
            let fp32 = p.cpu.conv_backward_data(&*dc, &*wc, &g).unwrap();
            p.check(
                &format!("conv dgrad {mode} vs fp32 {g:?}"),
                &fp32,
                &dx_gpu,
                vs_fp32 as f32,
                0.0,
            );
            let (same, vs_fp32) = tensor_core_bounds(mode, k_wgrad);
            p.check(
                &format!("conv wgrad {mode} {g:?}"),
                &dw_cpu,
                &dw_gpu,
                same as f32,
                0.0,
            );
            let fp32 = p.cpu.conv_backward_weight(&*xc, &*dc, &g).unwrap();
            p.check(
                &format!("conv wgrad {mode} vs fp32 {g:?}"),
                &fp32,
                &dw_gpu,
                vs_fp32 as f32,
                0.0,
            );
        }
        // Non-finite weights: the dy positions past the edges are zeros in a dgrad K step, and with
        // stride 2 and dilation 2 on an axis (the one-GEMM path: no phase decomposition there) so
        // are the structural zeros of every K step. Also once in FP32 (the CUDA-core kernel's masked
        // loop, which decodes the zeros from its row table), with the same-mode bound.
        let nf_modes = if mode == MathMode::Tf32 {
            vec![MathMode::Fp32, mode]
        } else {
            vec![mode]
        };
        for (mode, (case, bad)) in nf_modes.into_iter().flat_map(|m| {
            [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
                .into_iter()
                .enumerate()
                .map(move |cb| (m, cb))
        }) {
            let g = ConvGeom {
                n: 2,
                c_in: 5 + case,
                c_out: 7,
                groups: 1,
                input: [3, 9, 8],
                // case 2: dilation 2 along H, so this one takes the one-GEMM path (docs/CUDA.md,
                // "Strided dgrad by phase"); the others go phase by phase.
                output: if case == 2 { [2, 4, 4] } else { [2, 5, 4] },
                kernel: [2, 3, 3],
                stride: [2, 2, 2],
                padding: [1, 1, 1],
                dilation: if case == 2 { [1, 2, 1] } else { [1; 3] },
            };
            let mut wv = d.data(g.c_out * g.in_per_group() * g.kernel_volume());
            wv[3 + 17 * case] = bad;
            let dyv = d.data(g.n * g.c_out * g.output_volume());
            let ((wc, wg), (dc, dg)) = (p.up(&wv), p.up(&dyv));
            let (cpu, gpu) = with_math_mode(mode, || {
                (
                    p.cpu.conv_backward_data(&*dc, &*wc, &g).unwrap(),
                    p.gpu.conv_backward_data(&*dg, &*wg, &g).unwrap(),
                )
            });
            let finite = p
                .cpu
                .to_host(&*cpu)
                .unwrap()
                .iter()
                .filter(|v| v.is_finite())
                .count();
            assert!(finite > 0, "every dx is non-finite: the case tests nothing");
            let (same, _) = tensor_core_bounds(mode, g.out_per_group() * g.kernel_volume());
            p.check(
                &format!("conv dgrad {mode} weight {bad} {g:?}"),
                &cpu,
                &gpu,
                same as f32,
                0.0,
            );
        }
    }
    println!(
        "(conv dgrad and wgrad tf32/bf16: {} configurations per mode each)",
        cases() / 2
    );
    p.done("conv dgrad/wgrad tf32/bf16");
}

fn batch_norm_matches_cpu() {
    let Some(mut p) = Pair::new() else { return };
    let mut d = Draw::new(3);
    for case in 0..cases() {
        let g = AxisGeom {
            outer: d.int(1, 4),
            axis: d.pick(&[1usize, 3, 16, 64]),
            inner: d.pick(&[1usize, 3, 4, 49, 196, 3136]),
        };
        let xv: Vec<f32> = d.data(g.numel()).iter().map(|v| v * 3.0 + 1.0).collect();
        let (xc, xg) = p.up(&xv);
        let (wc, wg) = p.up(&d.data(g.axis));
        let (bc, bg) = p.up(&d.data(g.axis));
        let (dc, dg) = p.up(&d.data(g.numel()));
        let affine = case % 3 != 0;
        let (w1, w2) = (affine.then_some(&*wc), affine.then_some(&*wg));
        let (b1, b2) = (affine.then_some(&*bc), affine.then_some(&*bg));
        // Every other case is the fused BN → ReLU (ReLU is 1-Lipschitz: the same tolerances).
        let relu = case % 2 == 1;
        let (yc, sc) = p.cpu.batch_norm_train(&*xc, w1, b1, g, 1e-5, relu).unwrap();
        let (yg, sg) = p.gpu.batch_norm_train(&*xg, w2, b2, g, 1e-5, relu).unwrap();
        p.check("bn mean", &sc.mean, &sg.mean, 1e-5, 1e-4);
        p.check("bn var", &sc.var, &sg.var, 1e-5, 1e-4);
        p.check("bn y", &yc, &yg, 2e-4, 1e-4);
        // Into a producer's slice of a wider buffer (the executor's concat without copies: a view
        // from `split`, its rows apart by the other pieces' columns; widths that keep the float4
        // path and ones that do not): the same y bit for bit, the other pieces untouched. The
        // backward reads dy from such a slice (that concat's backward) to the same bits as from
        // a packed dy.
        let row = g.axis * g.inner;
        let inners = [d.pick(&[0usize, 3, 4, 8]), row, d.pick(&[0usize, 1, 4])];
        let wide = p
            .gpu
            .full(g.outer * inners.iter().sum::<usize>(), f32::NAN)
            .unwrap();
        let pieces = p.gpu.split(&wide, g.outer, &inners).unwrap();
        p.gpu
            .batch_norm_train_into(&*xg, w2, b2, g, 1e-5, relu, &*pieces[1])
            .unwrap();
        let wide_host = p.gpu.to_host(&*wide).unwrap();
        let total: usize = inners.iter().sum();
        let plain = p.gpu.to_host(&*yg).unwrap();
        for (j, v) in wide_host.iter().enumerate() {
            let (o, col) = (j / total, j % total);
            let inside = col >= inners[0] && col < inners[0] + row;
            let want = if inside {
                plain[o * row + col - inners[0]]
            } else {
                f32::NAN
            };
            assert_eq!(
                v.to_bits(),
                want.to_bits(),
                "case {case}: batch_norm_train_into a slice {inners:?}: value {j}"
            );
        }
        assert!(p.gpu.splits_into_views() && p.gpu.recomputes_relu_mask());
        let dy_wide = p.gpu.full(g.outer * total, f32::NAN).unwrap();
        let dy_slice = p.gpu.split(&dy_wide, g.outer, &inners).unwrap().remove(1);
        p.gpu.copy_into(&*dy_slice, &*dg).unwrap();
        let (m, v) = (&*sg.mean, &*sg.var);
        let grads = |dy: &dyn BackendBuffer| {
            let gr = if relu {
                p.gpu
                    .batch_norm_relu_backward_from_input(dy, &*xg, w2, b2, m, v, g, 1e-5)
                    .unwrap()
            } else {
                p.gpu
                    .batch_norm_backward(dy, &*xg, w2, m, v, g, 1e-5, true, None)
                    .unwrap()
            };
            [gr.dx, gr.dweight, gr.dbias].map(|b| p.gpu.to_host(&*b).unwrap())
        };
        // The float4 path needs dy's rows 16-byte aligned too: where the slice's are not, dy is
        // read one value at a time and the sums associate differently (the CPU tolerances);
        // otherwise the same kernel path, bit for bit.
        let same_path =
            !g.inner.is_multiple_of(4) || (total.is_multiple_of(4) && inners[0].is_multiple_of(4));
        let (sliced, packed) = (grads(&*dy_slice), grads(&*dg));
        for (k, name) in ["dx", "dweight", "dbias"].iter().enumerate() {
            let (atol, rtol) = if k == 0 { (5e-4, 1e-3) } else { (1e-3, 1e-4) };
            let bad = sliced[k].iter().zip(&packed[k]).position(|(a, b)| {
                if same_path {
                    a.to_bits() != b.to_bits()
                } else {
                    (a - b).abs() > atol + rtol * b.abs()
                }
            });
            if let Some(i) = bad {
                panic!(
                    "case {case}: {name} with dy a slice {inners:?} (same path {same_path}): \
                     value {i}: {} vs {}",
                    sliced[k][i], packed[k][i]
                );
            }
        }
        p.check(
            "bn eval",
            &p.cpu
                .batch_norm_eval(&*xc, w1, b1, &*sc.mean, &*sc.var, g, 1e-5)
                .unwrap(),
            &p.gpu
                .batch_norm_eval(&*xg, w2, b2, &*sg.mean, &*sg.var, g, 1e-5)
                .unwrap(),
            2e-4,
            1e-4,
        );
        // The fused backward masks dy by the ReLU output; both sides get the CPU's y, so the masks
        // are the same (a y within rounding of 0 could otherwise flip one element's mask).
        let ryg = relu.then(|| sc_to(&p, &yc));
        let (ry1, ry2) = (relu.then_some(&*yc), ryg.as_deref());
        for batch_stats in [true, false] {
            let gc = p
                .cpu
                .batch_norm_backward(
                    &*dc,
                    &*xc,
                    w1,
                    &*sc.mean,
                    &*sc.var,
                    g,
                    1e-5,
                    batch_stats,
                    ry1,
                )
                .unwrap();
            let gg = p
                .gpu
                .batch_norm_backward(
                    &*dg,
                    &*xg,
                    w2,
                    &*sc_to(&p, &sc.mean),
                    &*sc_to(&p, &sc.var),
                    g,
                    1e-5,
                    batch_stats,
                    ry2,
                )
                .unwrap();
            p.check("bn dx", &gc.dx, &gg.dx, 5e-4, 1e-3);
            p.check("bn dw", &gc.dweight, &gg.dweight, 1e-3, 1e-4);
            p.check("bn db", &gc.dbias, &gg.dbias, 1e-3, 1e-4);
        }
        // The fused backward with ReLU's mask recomputed from x (what training runs: y is not kept)
        // equals the one masked by the GPU forward's own y, bit for bit: the recomputed v must be
        // the forward's to the last bit wherever it is near 0 (about half of these x normalise below
        // 0, so a mask computed any other way differs).
        if relu {
            let bits = |b: &BufferRef| -> Vec<u32> {
                p.gpu
                    .to_host(&**b)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            let (m, v) = (&*sg.mean, &*sg.var);
            let from_y = p
                .gpu
                .batch_norm_backward(&*dg, &*xg, w2, m, v, g, 1e-5, true, Some(&*yg))
                .unwrap();
            let from_x = p
                .gpu
                .batch_norm_relu_backward_from_input(&*dg, &*xg, w2, b2, m, v, g, 1e-5)
                .unwrap();
            for (name, a, b) in [
                ("dx", &from_x.dx, &from_y.dx),
                ("dw", &from_x.dweight, &from_y.dweight),
                ("db", &from_x.dbias, &from_y.dbias),
            ] {
                assert_eq!(bits(a), bits(b), "case {case}: {name} with the mask from x");
            }
        }
    }
    relu_mask_from_x_at_zero(&mut p, &mut d);
    p.done("batchnorm");
}

/// The fused BN → ReLU backward's mask recomputed from x, where it can go wrong: x around each
/// channel's zero crossing v = x·scale + shift = 0, ulp by ulp, so that v rounded any other way than
/// the forward rounds it (an unfused x·scale + shift instead of one fma) has a different sign for
/// some x. Against the mask of the forward's own output (`bn_forward` through the eval path with the
/// same statistics, then ReLU), bit for bit.
fn relu_mask_from_x_at_zero(p: &mut Pair, d: &mut Draw) {
    for case in 0..20 {
        let g = AxisGeom {
            outer: 2,
            axis: 8,
            inner: 64,
        };
        let eps = 1e-5f32;
        let w: Vec<f32> = d
            .data(g.axis)
            .iter()
            .map(|v| v + 0.5f32.copysign(*v))
            .collect();
        let b = d.data(g.axis);
        let mean = d.data(g.axis);
        let var: Vec<f32> = d.data(g.axis).iter().map(|v| v.abs() + 0.25).collect();
        // Channel c's crossing, approximately; x steps through the 32 floats around it.
        let x0: Vec<f32> = (0..g.axis)
            .map(|c| {
                let s = w[c] / (var[c] + eps).sqrt();
                mean[c] - b[c] / s
            })
            .collect();
        let xv: Vec<f32> = (0..g.numel())
            .map(|i| {
                let (c, k) = ((i / g.inner) % g.axis, (i % 32) as i32 - 16);
                f32::from_bits((x0[c].to_bits() as i32 + k) as u32)
            })
            .collect();
        let up = |v: &[f32]| p.gpu.from_host(v).unwrap();
        let (x, dy) = (up(&xv), up(&d.data(g.numel())));
        let (w, b, mean, var) = (up(&w), up(&b), up(&mean), up(&var));
        let v = p
            .gpu
            .batch_norm_eval(&*x, Some(&*w), Some(&*b), &*mean, &*var, g, eps)
            .unwrap();
        let y = p.gpu.unary(&*v, UnaryOp::Relu).unwrap();
        let cut = p
            .gpu
            .to_host(&*y)
            .unwrap()
            .iter()
            .filter(|&&y| y <= 0.0)
            .count();
        assert!(
            cut > 0 && cut < g.numel(),
            "case {case}: x does not straddle the crossings ({cut} of {} cut)",
            g.numel()
        );
        let (m, va) = (&*mean, &*var);
        let from_y = p
            .gpu
            .batch_norm_backward(&*dy, &*x, Some(&*w), m, va, g, eps, true, Some(&*y))
            .unwrap();
        let from_x = p
            .gpu
            .batch_norm_relu_backward_from_input(&*dy, &*x, Some(&*w), Some(&*b), m, va, g, eps)
            .unwrap();
        for (name, a, b) in [
            ("dx", &from_x.dx, &from_y.dx),
            ("db", &from_x.dbias, &from_y.dbias),
        ] {
            let (a, b) = (p.gpu.to_host(&**a).unwrap(), p.gpu.to_host(&**b).unwrap());
            let differ = a
                .iter()
                .zip(&b)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "case {case}: {name} with the mask from x at 0 differs"
            );
        }
    }
}

/// Max pooling's training forward (y and the saved argmax) and its scatter backward, CUDA against CPU:
/// y and the argmax offsets bit for bit (the packed bytes; the last word's padding is not compared),
/// dx within 1e-6 (each dx element is a sum of ≤ kernel-volume dy values added in a different order).
fn check_max_pool_training(
    p: &mut Pair,
    g: &PoolGeom,
    (xc, xg): (&BufferRef, &BufferRef),
    (dc, dg): (&BufferRef, &BufferRef),
) {
    let (yc, ac) = p.cpu.max_pool_forward_argmax(&**xc, g).unwrap();
    let (yg, ag) = p.gpu.max_pool_forward_argmax(&**xg, g).unwrap();
    p.check("max fwd (training)", &yc, &yg, 0.0, 0.0);
    let bytes = |be: &dyn Backend, b: &BufferRef| {
        let words = be.to_host(&**b).unwrap();
        assert_eq!(words.len(), g.argmax_words());
        bytemuck::cast_slice::<f32, u8>(&words)[..g.output_len() * g.argmax_bytes()].to_vec()
    };
    assert_eq!(bytes(p.cpu, &ac), bytes(p.gpu, &ag), "argmax offsets {g:?}");
    p.check(
        "max bwd",
        &p.cpu.max_pool_backward(&*ac, &**dc, g).unwrap(),
        &p.gpu.max_pool_backward(&*ag, &**dg, g).unwrap(),
        1e-6,
        1e-6,
    );
}

/// The CPU's statistics on the GPU (so the backward compares like with like).
fn sc_to(p: &Pair, b: &BufferRef) -> BufferRef {
    p.gpu.from_host(&p.cpu.to_host(&**b).unwrap()).unwrap()
}

fn pooling_matches_cpu() {
    let Some(mut p) = Pair::new() else { return };
    let mut d = Draw::new(4);
    for case in 0..cases() {
        let mut g = PoolGeom {
            planes: d.int(1, 5),
            input: [1; 3],
            output: [1; 3],
            kernel: [1; 3],
            stride: [1; 3],
            padding: [0; 3],
        };
        let ceil = case % 2 == 0;
        // Every fifth case a wide 2-d window (up to 18×18 = 324 taps: u16 argmax offsets).
        let wide = case % 5 == 1;
        for i in usize::from(case % 3 == 0)..3 {
            g.input[i] = d.int(1, 12);
            g.kernel[i] = if wide && i > 0 {
                d.int(9, 18)
            } else {
                d.int(1, 4)
            };
            g.stride[i] = d.int(1, 3);
            g.padding[i] = d.int(0, g.kernel[i] / 2);
            let span = g.input[i] + 2 * g.padding[i];
            if span < g.kernel[i] {
                g.input[i] = g.kernel[i];
            }
            let span = g.input[i] + 2 * g.padding[i] - g.kernel[i];
            let mut o = if ceil {
                span.div_ceil(g.stride[i]) + 1
            } else {
                span / g.stride[i] + 1
            };
            if ceil && (o - 1) * g.stride[i] >= g.input[i] + g.padding[i] {
                o -= 1;
            }
            g.output[i] = o;
        }
        let iv: usize = g.input.iter().product();
        let ov: usize = g.output.iter().product();
        let mut xv = d.data(g.planes * iv);
        if case % 4 == 0 {
            xv.iter_mut().for_each(|v| *v = (*v * 2.0).round());
        }
        let mut xmax = xv.clone();
        if case % 4 == 2 {
            // Max pool only: NaN wins the window (the last NaN of the scan); −inf never beats a
            // finite value.
            for k in (0..xmax.len()).step_by(7) {
                xmax[k] = if k % 2 == 0 {
                    f32::NAN
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        let (xc, xg) = p.up(&xmax);
        let (dc, dg) = p.up(&d.data(g.planes * ov));
        p.check(
            "max fwd",
            &p.cpu.max_pool_forward(&*xc, &g).unwrap(),
            &p.gpu.max_pool_forward(&*xg, &g).unwrap(),
            0.0,
            0.0,
        );
        check_max_pool_training(&mut p, &g, (&xc, &xg), (&dc, &dg));
        let (xc, xg) = p.up(&xv);
        for cip in [false, true] {
            p.check(
                "avg fwd",
                &p.cpu.avg_pool_forward(&*xc, &g, cip).unwrap(),
                &p.gpu.avg_pool_forward(&*xg, &g, cip).unwrap(),
                1e-6,
                1e-5,
            );
            p.check(
                "avg bwd",
                &p.cpu.avg_pool_backward(&*dc, &g, cip).unwrap(),
                &p.gpu.avg_pool_backward(&*dg, &g, cip).unwrap(),
                1e-6,
                1e-5,
            );
        }
        let a = AdaptivePoolGeom {
            planes: g.planes,
            input: g.input,
            output: std::array::from_fn(|i| d.int(1, g.input[i] + 3)),
        };
        let (ec, eg) = p.up(&d.data(g.planes * a.output.iter().product::<usize>()));
        p.check(
            "adaptive fwd",
            &p.cpu.adaptive_avg_pool_forward(&*xc, &a).unwrap(),
            &p.gpu.adaptive_avg_pool_forward(&*xg, &a).unwrap(),
            1e-6,
            1e-5,
        );
        p.check(
            "adaptive bwd",
            &p.cpu.adaptive_avg_pool_backward(&*ec, &a).unwrap(),
            &p.gpu.adaptive_avg_pool_backward(&*eg, &a).unwrap(),
            1e-6,
            1e-5,
        );
    }
    // One window of 70 001 taps: u32 argmax offsets.
    let g = PoolGeom {
        planes: 2,
        input: [1, 1, 70_001],
        output: [1, 1, 1],
        kernel: [1, 1, 70_001],
        stride: [1, 1, 1],
        padding: [0; 3],
    };
    assert_eq!(g.argmax_bytes(), 4);
    let (xc, xg) = p.up(&d.data(2 * 70_001));
    let (dc, dg) = p.up(&d.data(2));
    check_max_pool_training(&mut p, &g, (&xc, &xg), (&dc, &dg));
    p.done("pool");
}

fn upsample_matches_cpu() {
    let Some(mut p) = Pair::new() else { return };
    let mut d = Draw::new(5);
    for case in 0..cases() {
        let input = [d.int(1, 6), d.int(1, 7), d.int(1, 7)];
        let output = [d.int(1, 12), d.int(1, 14), d.int(1, 14)];
        let g = UpsampleGeom {
            planes: d.int(1, 4),
            input,
            output,
            align_corners: case % 2 == 0,
        };
        let (xc, xg) = p.up(&d.data(g.planes * input.iter().product::<usize>()));
        let (dc, dg) = p.up(&d.data(g.planes * output.iter().product::<usize>()));
        p.check(
            "upsample fwd",
            &p.cpu.upsample_trilinear_forward(&*xc, &g).unwrap(),
            &p.gpu.upsample_trilinear_forward(&*xg, &g).unwrap(),
            1e-6,
            1e-5,
        );
        p.check(
            "upsample bwd",
            &p.cpu.upsample_trilinear_backward(&*dc, &g).unwrap(),
            &p.gpu.upsample_trilinear_backward(&*dg, &g).unwrap(),
            1e-5,
            1e-5,
        );
    }
    p.done("upsample");
}

fn softmax_and_loss_match_cpu() {
    let Some(mut p) = Pair::new() else { return };
    let mut d = Draw::new(6);
    for case in 0..cases() {
        let g = AxisGeom {
            outer: d.int(1, 6),
            axis: d.pick(&[1usize, 2, 10, 33, 400, 1500]),
            inner: d.pick(&[1usize, 1, 3, 50]),
        };
        let xv: Vec<f32> = d.data(g.numel()).iter().map(|v| v * 8.0).collect();
        let (xc, xg) = p.up(&xv);
        let (dc, dg) = p.up(&d.data(g.numel()));
        let log = case % 2 == 1;
        let (yc, yg) = (
            p.cpu.softmax_forward(&*xc, g, log).unwrap(),
            p.gpu.softmax_forward(&*xg, g, log).unwrap(),
        );
        p.check("softmax fwd", &yc, &yg, 2e-5, 1e-4);
        p.check(
            "softmax bwd",
            &p.cpu.softmax_backward(&*yc, &*dc, g, log).unwrap(),
            &p.gpu
                .softmax_backward(&*yc_to(&p, &yc), &*dg, g, log)
                .unwrap(),
            2e-5,
            1e-4,
        );
        // Cross entropy over [outer·inner, axis] rows.
        let (n, classes) = (g.outer * g.inner, g.axis);
        let labels: Vec<u32> = (0..n).map(|_| d.int(0, classes - 1) as u32).collect();
        let eps = d.pick(&[0.0f32, 0.1]);
        let (lc, lg) = (
            p.cpu
                .cross_entropy_forward(&*xc, &labels, classes, eps)
                .unwrap(),
            p.gpu
                .cross_entropy_forward(&*xg, &labels, classes, eps)
                .unwrap(),
        );
        p.check("ce fwd", &lc, &lg, 1e-5, 1e-5);
        let (sc, sg) = p.up(&[0.7]);
        p.check(
            "ce bwd",
            &p.cpu
                .cross_entropy_backward(&*xc, &labels, classes, eps, &*sc)
                .unwrap(),
            &p.gpu
                .cross_entropy_backward(&*xg, &labels, classes, eps, &*sg)
                .unwrap(),
            1e-6,
            1e-4,
        );
    }
    p.done("softmax/loss");
}

fn yc_to(p: &Pair, b: &BufferRef) -> BufferRef {
    sc_to(p, b)
}

/// A batched matmul of awkward sizes (1 to 130, primes included), every transpose combination.
fn random_matmul(d: &mut Draw, case: usize) -> MatmulGeom {
    MatmulGeom {
        batch: d.int(1, 3),
        m: d.int(1, 130),
        k: d.int(1, 100),
        n: d.int(1, 130),
        trans_a: case.is_multiple_of(2),
        trans_b: case.is_multiple_of(3),
    }
}

fn matmul_and_attention_match_cpu() {
    let Some(mut p) = Pair::new() else { return };
    let mut d = Draw::new(7);
    for case in 0..cases() {
        let g = random_matmul(&mut d, case);
        let (ac, ag) = p.up(&d.data(g.batch * g.m * g.k));
        let (bc, bg) = p.up(&d.data(g.batch * g.k * g.n));
        p.check(
            "matmul",
            &p.cpu.matmul(&*ac, &*bc, g).unwrap(),
            &p.gpu.matmul(&*ag, &*bg, g).unwrap(),
            1e-4 * g.k as f32,
            1e-4,
        );
        let a = AttentionGeom {
            batch: d.int(1, 2),
            c: d.int(1, 40),
            cv: d.int(1, 80),
            n: d.int(1, 150),
            m: d.int(1, 70),
            scale: 0.3,
        };
        let (qc, qg) = p.up(&d.data(a.batch * a.c * a.n));
        let (kc, kg) = p.up(&d.data(a.batch * a.c * a.m));
        let (vc, vg) = p.up(&d.data(a.batch * a.cv * a.m));
        let (dc, dg) = p.up(&d.data(a.batch * a.cv * a.n));
        let (yc, lc) = p.cpu.attention_forward(&*qc, &*kc, &*vc, a).unwrap();
        let (yg, lg) = p.gpu.attention_forward(&*qg, &*kg, &*vg, a).unwrap();
        p.check("attention y", &yc, &yg, 1e-4, 1e-4);
        p.check("attention lse", &lc, &lg, 1e-4, 1e-4);
        let gc = p
            .cpu
            .attention_backward(&*qc, &*kc, &*vc, &*yc, &*lc, &*dc, a)
            .unwrap();
        let gg = p
            .gpu
            .attention_backward(&*qg, &*kg, &*vg, &*yg, &*lg, &*dg, a)
            .unwrap();
        p.check("attention dq", &gc.dq, &gg.dq, 1e-3, 1e-3);
        p.check("attention dk", &gc.dk, &gg.dk, 1e-3, 1e-3);
        p.check("attention dv", &gc.dv, &gg.dv, 1e-3, 1e-3);
    }
    p.done("matmul/attention");
}

/// The tensor-core GEMMs (--math tf32 | bf16) against the CPU backend in the same mode and against
/// plain FP32, within `tensor_core_bounds` of K (|a|, |b| ≤ 1 here).
fn matmul_tensor_cores_match_cpu() {
    use vidgrad::math_mode::{with_math_mode, MathMode};
    let Some(mut p) = Pair::new() else { return };
    for (mode, seed) in [(MathMode::Tf32, 71), (MathMode::Bf16, 72)] {
        let mut d = Draw::new(seed);
        for case in 0..cases() {
            let g = random_matmul(&mut d, case);
            let (ac, ag) = p.up(&d.data(g.batch * g.m * g.k));
            let (bc, bg) = p.up(&d.data(g.batch * g.k * g.n));
            let (same, vs_fp32) = tensor_core_bounds(mode, g.k);
            let (cpu, gpu) = with_math_mode(mode, || {
                (
                    p.cpu.matmul(&*ac, &*bc, g).unwrap(),
                    p.gpu.matmul(&*ag, &*bg, g).unwrap(),
                )
            });
            p.check(&format!("matmul {mode}"), &cpu, &gpu, same as f32, 0.0);
            let fp32 = p.cpu.matmul(&*ac, &*bc, g).unwrap();
            p.check(
                &format!("matmul {mode} vs fp32"),
                &fp32,
                &gpu,
                vs_fp32 as f32,
                0.0,
            );
        }
    }
    p.done("matmul tf32/bf16");
}

fn layout_matches_cpu() {
    let Some(mut p) = Pair::new() else { return };
    let mut d = Draw::new(8);
    for _ in 0..cases() {
        let r = d.int(1, 5);
        let shape: Vec<usize> = (0..r).map(|_| d.int(1, 9)).collect();
        let mut perm: Vec<usize> = (0..r).collect();
        for i in (1..r).rev() {
            let j = d.int(0, i);
            perm.swap(i, j);
        }
        if r >= 2 && d.int(0, 2) == 0 {
            perm = (0..r).collect();
            perm.swap(r - 1, r - 2);
        }
        let n: usize = shape.iter().product();
        let (xc, xg) = p.up(&d.data(n));
        p.check(
            "permute",
            &p.cpu.permute(&*xc, &shape, &perm).unwrap(),
            &p.gpu.permute(&*xg, &shape, &perm).unwrap(),
            0.0,
            0.0,
        );
        let outer = d.int(1, 6);
        let inners: Vec<usize> = (0..d.int(1, 4)).map(|_| d.int(0, 20)).collect();
        let parts: Vec<Vec<f32>> = inners.iter().map(|&i| d.data(outer * i)).collect();
        let up: Vec<(BufferRef, BufferRef)> = parts.iter().map(|v| p.up(v)).collect();
        let cs: Vec<&dyn BackendBuffer> = up.iter().map(|(c, _)| &**c).collect();
        let gs: Vec<&dyn BackendBuffer> = up.iter().map(|(_, g)| &**g).collect();
        let (yc, yg) = (
            p.cpu.concat(&cs, outer, &inners).unwrap(),
            p.gpu.concat(&gs, outer, &inners).unwrap(),
        );
        p.check("concat", &yc, &yg, 0.0, 0.0);
        let (sc, sg) = (
            p.cpu.split(&yc, outer, &inners).unwrap(),
            p.gpu.split(&yg, outer, &inners).unwrap(),
        );
        for (a, b) in sc.iter().zip(&sg) {
            p.check("split", a, b, 0.0, 0.0);
        }
        split_pieces_are_views(&mut p, &yg, outer, &inners, &parts);
    }
    p.done("layout");
}

/// `split`'s pieces on CUDA are views of y's block (the concat without copies needs them): they join
/// back into y itself, any kernel reads a piece's values (a strided one through a packed copy), a
/// piece of a piece refers to y's block too, writing a piece with `copy_into` writes y's columns,
/// and writing one in place with a kernel that cannot take a row stride is an error, not a write to
/// the packed copy.
fn split_pieces_are_views(
    p: &mut Pair,
    yg: &BufferRef,
    outer: usize,
    inners: &[usize],
    parts: &[Vec<f32>],
) {
    let gpu = p.gpu;
    let pieces = gpu.split(yg, outer, inners).unwrap();
    let refs: Vec<&dyn BackendBuffer> = pieces.iter().map(|b| &**b).collect();
    let joined = gpu.join_views(&refs, outer, inners).expect("pieces join");
    assert_eq!(joined.len(), yg.len());
    assert_eq!(gpu.to_host(&*joined).unwrap(), gpu.to_host(&**yg).unwrap());
    let reversed: Vec<&dyn BackendBuffer> = refs.iter().rev().copied().collect();
    if inners.len() > 1 && inners.iter().any(|&i| i != inners[0]) {
        assert!(gpu.join_views(&reversed, outer, inners).is_none());
    }
    let total: usize = inners.iter().sum();
    let mut start = 0;
    for ((piece, part), &inner) in pieces.iter().zip(parts).zip(inners) {
        // a kernel's read (a packed copy unless one 16-byte-aligned range), and to_host
        let scaled = gpu.unary(&**piece, UnaryOp::Scale(2.0)).unwrap();
        let want: Vec<f32> = part.iter().map(|v| v * 2.0).collect();
        assert_eq!(gpu.to_host(&*scaled).unwrap(), want);
        assert_eq!(&gpu.to_host(&**piece).unwrap(), part);
        // once packed, a write through the view is refused (the packed copy would go stale)
        let packed = inner > 0 && !((outer == 1 || inner == total) && start % 4 == 0);
        let rewrite = gpu.copy_into(&**piece, &*gpu.from_host(part).unwrap());
        assert_eq!(
            rewrite.is_err(),
            packed,
            "copy_into a read piece of {inners:?}"
        );
        start += inner;
        // halves of a piece: views of the same block
        if inner >= 2 {
            let halves = gpu
                .split(piece, outer, &[inner / 2, inner - inner / 2])
                .unwrap();
            let h: Vec<&dyn BackendBuffer> = halves.iter().map(|b| &**b).collect();
            let again = gpu
                .join_views(&h, outer, &[inner / 2, inner - inner / 2])
                .is_some();
            // they join into piece's block only when the piece is all of it
            assert_eq!(again, inner == total, "halves of a piece of {inners:?}");
            let first: Vec<f32> = (0..outer)
                .flat_map(|o| part[o * inner..][..inner / 2].to_vec())
                .collect();
            assert_eq!(gpu.to_host(&*halves[0]).unwrap(), first);
        }
    }
    // writes: copy_into a piece writes y's columns; a strided piece refuses in-place kernels
    let wide = gpu.full(outer * total, 0.0).unwrap();
    let wide_pieces = gpu.split(&wide, outer, inners).unwrap();
    // (a piece is one range when y has one row or the piece is all of y; kernels take it in place
    // when that range starts 16-byte aligned)
    let mut in_place = vec![];
    let mut start = 0;
    for ((piece, part), &inner) in wide_pieces.iter().zip(parts).zip(inners) {
        gpu.copy_into(&**piece, &*gpu.from_host(part).unwrap())
            .unwrap();
        let one_aligned_range = (outer == 1 || inner == total) && start % 4 == 0;
        let relu = gpu.relu_in_place(&**piece);
        assert_eq!(
            relu.is_ok(),
            one_aligned_range || inner == 0,
            "relu_in_place on piece {} of {inners:?}, {outer} rows",
            in_place.len()
        );
        if let Err(e) = relu {
            assert!(e.to_string().contains("strided or unaligned view"), "{e}");
        }
        in_place.push(one_aligned_range);
        start += inner;
    }
    let written = gpu.to_host(&*wide).unwrap();
    for (j, v) in written.iter().enumerate() {
        let (o, mut col, mut k) = (j / total, j % total, 0);
        while col >= inners[k] {
            col -= inners[k];
            k += 1;
        }
        let want = parts[k][o * inners[k] + col];
        let want = if in_place[k] { want.max(0.0) } else { want };
        assert_eq!(*v, want, "copy_into pieces of {inners:?}: value {j}");
    }
}

/// A backend of its own over a fresh driver, so that no other test's buffers show in its memory
/// counters (tests run in parallel on the shared device backend).
fn private_backend(d: Device) -> CudaBackend {
    match d {
        Device::CudaSim => {
            CudaBackend::with_driver(Box::new(SimDriver::new().unwrap()), "cuda-sim".into())
        }
        Device::Cuda(i) => {
            CudaBackend::with_driver(Box::new(CudarcDriver::new(i).unwrap()), format!("cuda:{i}"))
        }
        _ => unreachable!(),
    }
}

#[test]
fn allocator_reuses_blocks_in_steady_state() {
    let Some(d) = common::cuda_device() else {
        return;
    };
    let gpu = private_backend(d);
    let run = || {
        let x = gpu.full(100_000, 1.0).unwrap();
        let y = gpu.unary(&*x, UnaryOp::Scale(2.0)).unwrap();
        gpu.sum_all(&*y).unwrap()
    };
    let _ = run();
    let before = gpu.memory_in_use();
    let allocs = gpu.memory_stats().driver_allocs;
    let s = run();
    assert_eq!(gpu.to_host(&*s).unwrap(), vec![200_000.0]);
    drop(s);
    assert_eq!(gpu.memory_in_use(), before);
    assert_eq!(
        gpu.memory_stats().driver_allocs,
        allocs,
        "a steady-state step allocates nothing"
    );
    assert!(gpu.memory_peak() >= 800_000);
}

/// The fused optimiser kernels against the CPU optimisers (crate::optim, the CPU backend's fused
/// steps; tests/optim.rs checks those against the chain of elementwise ops), bit for bit: every
/// product and sum is rounded on its own in both.
fn optimizers_match_cpu() {
    use vidgrad::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup, Sgd, SgdConfig};
    let Some(d) = common::cuda_device() else {
        return;
    };
    let gpu = cuda_backend(d);
    let mut draw = Draw::new(77);
    for case in 0..cases() / 4 {
        let n = draw.pick(&[1usize, 3, 29, 256, 1001]);
        let init = draw.data(n);
        let p = Tensor::from_slice(&init, &[n], Device::Cpu)
            .unwrap()
            .with_grad();
        let (w, buf1, buf2) = (
            gpu.from_host(&init).unwrap(),
            gpu.from_host(&vec![0.0; n]).unwrap(),
            gpu.from_host(&vec![0.0; n]).unwrap(),
        );
        let (lr, wd) = (
            draw.pick(&[0.05f32, 1e-3]),
            draw.pick(&[0.0f32, 1e-4, 0.05]),
        );
        if case % 2 == 0 {
            let (momentum, dampening, nesterov) = draw.pick(&[
                (0.0f32, 0.0f32, false),
                (0.9, 0.0, false),
                (0.9, 0.1, false),
                (0.9, 0.0, true),
            ]);
            let cfg = SgdConfig {
                lr,
                momentum,
                dampening,
                nesterov,
            };
            let mut opt = Sgd::new(
                vec![ParamGroup::new(vec![("p".into(), p.clone())], wd)],
                cfg,
            )
            .unwrap();
            for step in 0..3 {
                let g = draw.data(n);
                set_grad(&p, &g);
                opt.step().unwrap();
                let gd = gpu.from_host(&g).unwrap();
                let update = SgdUpdate {
                    lr,
                    momentum,
                    dampening,
                    weight_decay: wd,
                    nesterov,
                    first: step == 0,
                };
                // without momentum no buffer: the kernel gets a null pointer it never touches
                let buf = (momentum != 0.0).then_some(&*buf1);
                gpu.sgd_step(&*w, &*gd, buf, &update).unwrap();
                assert_eq!(
                    gpu.to_host(&*w).unwrap(),
                    p.to_vec().unwrap(),
                    "sgd case {case} step {step}"
                );
            }
        } else {
            let cfg = AdamWConfig {
                lr,
                betas: (0.9, 0.999),
                eps: 1e-8,
            };
            let mut opt = AdamW::new(
                vec![ParamGroup::new(vec![("p".into(), p.clone())], wd)],
                cfg,
            )
            .unwrap();
            for step in 1..=3u64 {
                let g = draw.data(n);
                set_grad(&p, &g);
                opt.step().unwrap();
                let gd = gpu.from_host(&g).unwrap();
                let coeffs = AdamWCoeffs::new(lr, cfg.betas, cfg.eps, wd, step);
                gpu.adamw_step(&*w, &*gd, &*buf1, &*buf2, &coeffs).unwrap();
                assert_eq!(
                    gpu.to_host(&*w).unwrap(),
                    p.to_vec().unwrap(),
                    "adamw case {case} step {step}"
                );
            }
        }
    }
    println!(
        "optimizer: {} configurations, bit-identical to the CPU optimisers",
        cases() / 4
    );
}

/// Make `g` the gradient of leaf `p` (through backward of Σ p·g).
fn set_grad(p: &Tensor, g: &[f32]) {
    let gt = Tensor::from_slice(g, p.shape(), Device::Cpu).unwrap();
    p.zero_grad();
    p.mul(&gt).unwrap().sum().unwrap().backward().unwrap();
}

fn cuda_backend(d: Device) -> &'static CudaBackend {
    match d {
        Device::CudaSim => vidgrad::backend::cuda::sim_backend().unwrap(),
        Device::Cuda(i) => vidgrad::backend::cuda::backend(i).unwrap(),
        _ => unreachable!(),
    }
}

/// Every family against the CPU, then: on the simulator, every `__global__` kernel of kernels/*.cu must
/// have been launched (a new kernel cannot land untested). One test, so that the families have all run
/// when the launch counts are read.
#[test]
fn every_family_matches_cpu_and_every_kernel_runs() {
    // Every family runs even after one fails, so that one GPU run reports them all.
    let families: [(&str, fn()); 12] = [
        ("elementwise", elementwise_and_reductions_match_cpu),
        ("conv", conv_matches_cpu),
        ("conv fprop tf32/bf16", conv_tensor_cores_match_cpu),
        (
            "conv dgrad/wgrad tf32/bf16",
            conv_grads_tensor_cores_match_cpu,
        ),
        ("batchnorm", batch_norm_matches_cpu),
        ("pool", pooling_matches_cpu),
        ("upsample", upsample_matches_cpu),
        ("softmax/loss", softmax_and_loss_match_cpu),
        ("matmul/attention", matmul_and_attention_match_cpu),
        ("matmul tf32/bf16", matmul_tensor_cores_match_cpu),
        ("layout", layout_matches_cpu),
        ("optimizer", optimizers_match_cpu),
    ];
    // VIDGRAD_CUDA_OPS_ONLY=<text>: only the families whose name contains it (a local run while working
    // on one family; the every-kernel check is skipped then).
    let only = std::env::var("VIDGRAD_CUDA_OPS_ONLY").ok();
    let failed: Vec<&str> = families
        .iter()
        .filter(|(name, _)| only.as_deref().is_none_or(|o| name.contains(o)))
        .filter(|(_, f)| std::panic::catch_unwind(*f).is_err())
        .map(|(name, _)| *name)
        .collect();
    assert!(
        failed.is_empty(),
        "families that do not match the CPU (their panics are above): {failed:?}"
    );
    // With fewer configurations (VIDGRAD_CUDA_OPS_CASES) a rarely drawn kernel may go unlaunched.
    if common::cuda_device() != Some(Device::CudaSim) || only.is_some() || cases() < 200 {
        return;
    }
    let sim = Simulator::get().unwrap();
    let counts = sim.launch_counts();
    let never: Vec<String> = counts
        .iter()
        .filter(|(k, n)| *n == 0 && k.family() != "selftest")
        .map(|(k, _)| format!("{} ({})", k.name, k.file))
        .collect();
    let launched: u64 = counts.iter().map(|(_, n)| n).sum();
    println!(
        "simulator: {launched} launches of {} kernels, {} context switches",
        counts.len(),
        sim.context_switches()
    );
    assert!(
        never.is_empty(),
        "kernels never launched by the CUDA suite: {never:?}"
    );
}

//! The kernels' ptxas report (captured by build.rs from `nvcc -Xptxas -v`): no kernel may spill
//! registers to local memory. Runs wherever the crate was built with nvcc; no GPU needed.

use vidgrad::backend::cuda::kernels;

#[test]
fn no_kernel_spills_registers() {
    if !kernels::embedded() {
        assert!(
            std::env::var("VIDGRAD_REQUIRE_NVCC").map_or(true, |v| v != "1"),
            "VIDGRAD_REQUIRE_NVCC=1 but the kernels were not built"
        );
        println!("skipped: built without nvcc");
        return;
    }
    let usage = kernels::parse_ptxas(kernels::PTXAS_REPORT);
    assert!(
        usage.len() >= 40,
        "only {} kernels in the ptxas report",
        usage.len()
    );
    let mut spilling = vec![];
    for k in &usage {
        println!(
            "{:<28} {:<7} {:>3} registers, {:>4} B stack, spills {} / {}",
            k.kernel, k.arch, k.registers, k.stack_frame, k.spill_stores, k.spill_loads
        );
        if k.spill_stores > 0 || k.spill_loads > 0 {
            spilling.push(k.kernel.clone());
        }
    }
    assert!(
        spilling.is_empty(),
        "kernels spilling registers: {spilling:?}"
    );
    for f in kernels::FAMILIES {
        assert!(
            kernels::FATBINS.iter().any(|(n, _)| n == f),
            "kernels/{f}.cu missing"
        );
    }
}

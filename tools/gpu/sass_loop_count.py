#!/usr/bin/env python3
"""Count the SASS instructions of a kernel's innermost loop that holds its tensor-core (HMMA) instructions.

A static count (no GPU needed): the instructions between the loop's branch target and its back edge,
by opcode, as docs/CUDA.md quotes them for the tensor-core convolutions ("Measured on an H200").
Branches inside the loop (the masked dgrad path, the A-copy variants) are counted too, so compare
builds with a variant fixed one way when the loop holds several.

    nvcc -O3 -std=c++17 -arch=sm_90a -cubin -I kernels -o /tmp/conv.cubin kernels/conv.cu
    python3 tools/gpu/sass_loop_count.py /tmp/conv.cubin conv_fprop_tf32 [conv_wgrad_tf32 ...]

Needs cuobjdump and nvdisasm on PATH: the pinned nvcc 13.0 wheels do not carry them; the PyPI wheels
nvidia-cuda-cuobjdump (13.2) and nvidia-cuda-nvdisasm (13.5), unzipped, do (they read sm_80/sm_90a cubins).
"""
import collections
import re
import subprocess
import sys


def loop_counts(cubin, kernel):
    sass = subprocess.run(["cuobjdump", "-sass", "-fun", kernel, cubin], capture_output=True, text=True, check=True).stdout
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
    mma = [a for a, t in ins if "HMMA" in t]
    if not mma:
        raise SystemExit(f"{kernel}: no HMMA instruction in {cubin}")
    loop = None  # the smallest backward branch whose range holds every HMMA
    for a, t in ins:
        m = re.search(r"BRA.*?(0x[0-9a-f]+)", t)
        if m:
            target = int(m.group(1), 16)
            if target < a and target <= mma[0] and a >= mma[-1] and (loop is None or a - target < loop[1] - loop[0]):
                loop = (target, a)
    if loop is None:
        raise SystemExit(f"{kernel}: no loop around its HMMA instructions")
    body = [t for a, t in ins if loop[0] <= a <= loop[1]]
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)
    return len(body), ops


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    cubin = sys.argv[1]
    for kernel in sys.argv[2:]:
        n, ops = loop_counts(cubin, kernel)
        print(f"{kernel}: {n} instructions in the HMMA loop; HMMA {ops['HMMA']}, LDGSTS {ops['LDGSTS']}, "
              f"LDS {ops['LDS']}, MUFU (divisions) {ops['MUFU']}, BAR {ops['BAR']}")
        print("  top opcodes: " + ", ".join(f"{op} {c}" for op, c in ops.most_common(10)))


if __name__ == "__main__":
    main()

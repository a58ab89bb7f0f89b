#!/usr/bin/env python3
"""Time PyTorch (CPU) on the shape of benches/conv_cpu.rs and print the ratio against vidgrad.

    cargo bench --bench conv_cpu                      # writes target/bench/conv_cpu.json
    python tools/bench/conv3d_cpu_torch.py            # same machine, same thread count

Uses tools/reference/requirements.txt. Threads: the count vidgrad used (from its JSON), so that both
sides get the same cores. Ratios > 1 mean vidgrad is slower.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", default="target/bench/conv_cpu.json")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    ours = json.loads(Path(args.ours).read_text())
    torch.set_num_threads(ours["threads"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*ours["input"], generator=g, requires_grad=True)
    w = (torch.randn(*ours["weight"], generator=g) * 0.02).requires_grad_()
    gy = torch.randn(*ours["input"], generator=g)
    fwd, bwd = [], []
    for i in range(args.runs + 1):
        t0 = time.perf_counter()
        y = F.conv3d(x, w, padding=ours["padding"])
        t1 = time.perf_counter()
        y.backward(gy)
        t2 = time.perf_counter()
        x.grad = None
        w.grad = None
        if i > 0:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    f, b = statistics.median(fwd) * 1e3, statistics.median(bwd) * 1e3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs}")
    print(f"{'pass':<22}{'vidgrad ms':>12}{'torch ms':>12}{'ratio':>8}")
    for name, a, t in [("forward", ours["forward_ms"], f), ("backward (dx + dw)", ours["backward_ms"], b)]:
        print(f"{name:<22}{a:>12.1f}{t:>12.1f}{a / t:>8.2f}")


if __name__ == "__main__":
    main()

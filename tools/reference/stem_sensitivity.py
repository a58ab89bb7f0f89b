#!/usr/bin/env python3
"""How much ct-sep's fixture outputs move with the rounding of one layer: R(2+1)D's stem 3x1x1 conv.

    python tools/reference/stem_sensitivity.py

Computes the ct-sep case of gen_model_fixtures.py in float64 (the oracle) and in PyTorch float32 four
ways: as given; with the stem's 3x1x1 convolution computed exactly (float64, rounded once); by Winograd
F(2, 3) along depth as src/backend/cpu/conv_winograd_depth.rs does it (float32); and with that layer's
weights nudged by one ulp. Prints each output's error against the oracle (max |diff| / max |oracle|, the
measure of tests/models.rs). Result on 2026-12-05 (docs/PERFORMANCE.md), one thread, for
layer1.0.conv1.depthwise_spatial's gradient: plain 3.4e-3, exact 2.9e-3, Winograd 1.1e-2, nudged 3.6e-3
(with two threads 5.5e-3, 9.4e-3, 9.5e-3, 1.1e-2): equally valid float32 computations of this output
spread over 3e-3 .. 1.2e-2, and PyTorch computing the stem as vidgrad does lands near vidgrad
(1.27e-2). One plain run is not a measure of what float32 can achieve here, hence the nudged runs of
gen_model_fixtures.py.
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_model_fixtures as gm  # noqa: E402

G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)


class ExactConv(nn.Module):
    """The 3x1x1 conv (padding 1 along depth) in float64, rounded once to the input's type."""

    def __init__(self, conv):
        super().__init__()
        self.weight = conv.weight

    def forward(self, x):
        return F.conv3d(x.double(), self.weight.double(), None, 1, (1, 0, 0)).to(x.dtype)


class WinogradConv(nn.Module):
    """The 3x1x1 conv by F(2, 3) along depth in the input's type: U = G·w, V = Bᵀ·d, y = Aᵀ(U·V)."""

    def __init__(self, conv):
        super().__init__()
        self.weight = conv.weight

    def forward(self, x):
        w = self.weight[:, :, :, 0, 0]
        u = torch.einsum("pk,oik->poi", G.to(w.dtype), w)
        xp = F.pad(x, (0, 0, 0, 0, 1, 1))
        n, _, d_padded, h, w_ = xp.shape
        depth = d_padded - 2
        tiles = depth // 2
        d0, d1, d2, d3 = (xp[:, :, k : k + 2 * tiles : 2] for k in range(4))
        v = [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
        m = [torch.einsum("oi,nithw->nothw", u[p], v[p]) for p in range(4)]
        y0, y1 = (m[0] + m[1]) + m[2], (m[1] - m[2]) - m[3]
        return torch.stack([y0, y1], 3).reshape(n, -1, depth, h, w_)


def run(variant, dtype):
    fill = gm.fill_module

    def fill_and_swap(model, seed):
        fill(model, seed)
        conv = model.stem[3]
        if variant == "exact":
            model.stem[3] = ExactConv(conv)
        elif variant == "winograd":
            model.stem[3] = WinogradConv(conv)
        elif variant == "nudged":
            with torch.no_grad():
                conv.weight.copy_(gm.nudge(conv.weight, torch.Generator().manual_seed(1)))

    gm.fill_module = fill_and_swap
    try:
        out = gm.outputs(gm.CASES["ct-sep"], dtype)
    finally:
        gm.fill_module = fill
    out.pop("__state_dict__")
    return out


def main():
    torch.set_num_threads(1)
    oracle = run("plain", torch.float64)
    variants = ["plain", "exact", "winograd", "nudged"]
    errs = {v: run(v, torch.float32) for v in variants}
    print(f"{'ct-sep, float32, error against float64':52s}" + "".join(f"{v:>10s}" for v in variants))
    for k, want in oracle.items():
        row = [gm.rel_err(errs[v][k].double(), want) for v in variants]
        print(f"{k:52s}" + "".join(f"{e:10.2e}" for e in row))


if __name__ == "__main__":
    main()

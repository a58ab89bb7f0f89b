#!/usr/bin/env python3
"""Generate the torchvision / PIL reference outputs for vidgrad's frame transforms (tests/data.rs).

Run from the repository root:

    python tools/reference/gen_transform_fixtures.py [--out tests/fixtures/data]

It writes three small RGB frames (29 x 41, seeded: smooth gradients, a few edges and noise) as
lossless PNGs ``frame_0.png`` .. ``frame_2.png``, and ``transforms.safetensors`` holding, for every
case below, the clip torchvision makes from them:

  * short-side resize with ``torchvision.transforms.v2.functional.resize`` on float tensors
    (bilinear, ``antialias=True``), the size checked against ``Resize(short)``'s own rule;
  * ``center_crop`` / ``crop`` at fixed offsets / mmaction2's ThreeCrop offsets;
  * ``horizontal_flip``;
  * the normalisation presets (ECO: BGR, 0-255, minus (104, 117, 128); the book's ECO variant;
    mmaction2; torchvision R(2+1)D; unit), stacked in [T, C, H, W] or [C, T, H, W];

plus ``pil.resize24`` (uint8 [24, 33, 3]): PIL's bilinear resize of frame 0 (what a PIL pipeline
such as the ECO book's ``GroupResize`` feeds the network), compared with a rounding tolerance.

Random choices (crop offsets, flips) are given explicitly: the Rust side draws them from its own
seeded stream, so the test compares the deterministic arithmetic. Everything is float32; rerunning
rewrites identical files. The safetensors ``__metadata__`` maps ``cases`` to a JSON string (sorted
keys) describing each case.
"""

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

H, W, T = 29, 41, 3

NORMS = {
    # output channel c = (v[src] * scale - mean) / std
    "eco": ([2, 1, 0], 1.0, [104.0, 117.0, 128.0], [1.0, 1.0, 1.0]),
    "eco_book": ([2, 1, 0], 1.0, [123.0, 117.0, 104.0], [1.0, 1.0, 1.0]),
    "mmaction2": ([0, 1, 2], 1.0, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),
    "r2plus1d": ([0, 1, 2], 1.0 / 255.0, [0.43216, 0.394666, 0.37645], [0.22803, 0.22145, 0.216989]),
    "unit": ([0, 1, 2], 1.0 / 255.0, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),
}


def make_frames():
    rng = np.random.RandomState(20261122)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    frames = []
    for t in range(T):
        r = 128 + 90 * np.sin(xx / 5.0 + t) * np.cos(yy / 7.0)
        g = 40 + 170 * (xx + 2 * t) / W
        b = 200 - 150 * yy / H
        img = np.stack([r, g, b], -1)
        img[(xx - 10 - 3 * t) ** 2 + (yy - 14) ** 2 < 30] = [250, 20, 30]  # a moving disc: hard edges
        img[5:9, 25:38] = [0, 0, 0]
        img += rng.normal(0, 12, img.shape)
        frames.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return frames


def resized_size(w, h, short):
    # torchvision's rule for an int size: the long side is int(short * long / short_side).
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def normalise(x, norm):
    src, scale, mean, std = NORMS[norm]
    x = x[:, src] * scale  # [T, 3, h, w]
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def clip(frames, resize_short, rect, flip, norm, layout):
    x = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() for f in frames])  # [T, 3, H, W]
    if resize_short:
        rw, rh = resized_size(W, H, resize_short)
        assert v2.Resize(resize_short)(x).shape[-2:] == (rh, rw)
        x = F.resize(x, [rh, rw], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    left, top, cw, ch = rect
    x = F.crop(x, top, left, ch, cw)
    if flip:
        x = F.horizontal_flip(x)
    x = normalise(x, norm)
    if layout == "BCTHW":
        x = x.permute(1, 0, 2, 3)
    return x.contiguous()


def center_rect(w, h, c):
    # torchvision.transforms.v2.functional.center_crop's offsets (Python round: half to even).
    return [int(round((w - c) / 2.0)), int(round((h - c) / 2.0)), c, c]


def three_rects(w, h, c):
    # mmaction2 ThreeCrop: offsets 0, step, 2*step along the long side, step = (L - c) // 2.
    left, top, _, _ = center_rect(w, h, c)
    if w >= h:
        step = (w - c) // 2
        return [[x, top, c, c] for x in (0, step, 2 * step)]
    step = (h - c) // 2
    return [[left, y, c, c] for y in (0, step, 2 * step)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/data")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    frames = make_frames()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(args.out, f"frame_{t}.png"), optimize=False)

    cases = {}
    tensors = {}

    def add(name, resize_short, rects, flip, norm, layout, size):
        outs = [clip(frames, resize_short, r, flip, norm, layout) for r in rects]
        tensors[name] = torch.stack(outs) if len(outs) > 1 else outs[0]
        cases[name] = {
            "resize_short": resize_short,
            "resized": list(resized_size(W, H, resize_short)) if resize_short else [W, H],
            "rects": rects,
            "flip": flip,
            "norm": norm,
            "layout": layout,
            "size": size,
            "shape": list(tensors[name].shape),
        }

    rw, rh = resized_size(W, H, 24)  # 33 x 24: centre offset (33-20)/2 = 6.5 rounds to 6
    add("eco_center", 24, [center_rect(rw, rh, 20)], False, "eco", "BTCHW", 20)
    add("eco_book_center", 24, [center_rect(rw, rh, 20)], False, "eco_book", "BTCHW", 20)
    add("mmaction2_crop_flip", 20, [[5, 1, 16, 16]], True, "mmaction2", "BCTHW", 16)
    rw, rh = resized_size(W, H, 48)  # upsampling
    add("r2plus1d_upscale", 48, [center_rect(rw, rh, 36)], False, "r2plus1d", "BCTHW", 36)
    rw, rh = resized_size(W, H, 20)
    add("unit_three_crop", 20, three_rects(rw, rh, 20), False, "unit", "BTCHW", 20)
    add("eco_no_resize_flip", 0, [[3, 2, 24, 24]], True, "eco", "BTCHW", 24)

    rw, rh = resized_size(W, H, 24)
    pil = Image.fromarray(frames[0]).resize((rw, rh), Image.BILINEAR)
    tensors["pil.resize24"] = torch.from_numpy(np.asarray(pil).copy())
    cases["pil.resize24"] = {"frame": 0, "resized": [rw, rh], "filter": "PIL.Image.BILINEAR"}

    # One metadata key: safetensors writes the metadata map in arbitrary order.
    meta = {"cases": json.dumps(cases, sort_keys=True)}
    arrays = {k: v.numpy() for k, v in sorted(tensors.items())}
    save_file(arrays, os.path.join(args.out, "transforms.safetensors"), metadata=meta)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {len(tensors)} tensors to {args.out} ({total / 1024:.0f} KiB with the frames)")


if __name__ == "__main__":
    main()

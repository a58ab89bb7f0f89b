#!/usr/bin/env python3
"""Reference 3D Grad-CAM volumes for tests/explain.rs, computed with PyTorch hooks.

    python tools/reference/gen_gradcam_fixture.py [--only CASE ...] [--out tests/fixtures/explain]

Each case builds a PyTorch model of the zoo (tools/reference/models/, torchvision's r2plus1d_18) at a small
input, fills every parameter, buffer and the input from a seed with tools/reference/fill.py (the generator
src/models/fill.rs implements identically, so no weights are stored), and computes Grad-CAM in float64 (the
oracle) in eval mode, the textbook way:

- a forward hook on the layer's module keeps its output A and registers a tensor hook that keeps dy/dA;
- y = logits[0, c] for c = the case's class (default: the argmax), backward;
- alpha_k = mean over T', H', W' of dy/dA_k; cam = ReLU(sum_k alpha_k A_k);
- F.interpolate(cam, size=(T, H, W), mode="trilinear", align_corners=False); min-max normalise (all zeros
  when max == min).

A 4-D layer of ECO-Lite's 2D part ([B*T, C, H', W'], per frame) is stacked into [B, C, T, H', W'] first, as
vidgrad does. The same computation in float32 gives PyTorch's own float32 error per case (stored as
`pytorch_f32_err`, max |cam32 - cam64|): tests/explain.rs scales its tolerance by it.

Stored per case, float32: `<case>.cam` [T, H, W] (normalised), `<case>.cam_features` [T', H', W'] (ReLU'd,
before upsampling), `<case>.logits` [classes]; metadata `cases` = JSON {case: {model, options, input_shape,
seed, layer, class, pytorch_f32_err}} (one key: safetensors' header map has no fixed order). Deterministic: rerunning rewrites an identical file.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fill import fill_input, fill_module  # noqa: E402
from safetensors.numpy import save  # noqa: E402

from models.eco_lite import ECO_Lite  # noqa: E402
from models.slowfast_resnet import ResNet as SlowFastResNet  # noqa: E402
from models.ct_sep import CTSepNet  # noqa: E402
from models import resnet3d as r3d  # noqa: E402
from torchvision.models.video import r2plus1d_18  # noqa: E402

CLASSES = 10

# name -> constructor, vidgrad model name and options, input shape (native layout), layer, class (None: argmax)
CASES = {
    "ct-sep": dict(
        ctor=lambda: CTSepNet(classes=CLASSES, layers=(1, 1, 1, 1)),
        model="ct-sep",
        options={"classes": CLASSES, "dropout": 0.0, "layers": "1,1,1,1"},
        input_shape=[1, 3, 16, 32, 32],
        layer="layer4",
        cls=None,
        seed=3001,
    ),
    "ct-sep-layer3-class7": dict(
        ctor=lambda: CTSepNet(classes=CLASSES, layers=(1, 1, 1, 1)),
        model="ct-sep",
        options={"classes": CLASSES, "dropout": 0.0, "layers": "1,1,1,1"},
        input_shape=[1, 3, 8, 32, 32],
        layer="layer3",
        cls=7,
        seed=3001,
    ),
    "r2plus1d-18": dict(
        ctor=lambda: r2plus1d_18(weights=None, num_classes=CLASSES),
        model="r2plus1d-18",
        options={"classes": CLASSES, "dropout": 0.0},
        input_shape=[1, 3, 8, 32, 32],
        layer="layer4",
        cls=None,
        seed=3002,
    ),
    "eco-lite": dict(
        ctor=lambda: ECO_Lite(classes=CLASSES, frames=8, size=64),
        model="eco-lite",
        options={"classes": CLASSES, "dropout": 0.0},
        input_shape=[1, 8, 3, 64, 64],
        layer="eco_3d.res_3d_5",
        cls=None,
        seed=3003,
    ),
    # A 4-D layer: ECO's 2D part, per-frame maps [T, 96, H/8, W/8] stacked into [1, 96, T, H/8, W/8].
    "eco-lite-2d": dict(
        ctor=lambda: ECO_Lite(classes=CLASSES, frames=8, size=32),
        model="eco-lite",
        options={"classes": CLASSES, "dropout": 0.0},
        input_shape=[1, 8, 3, 32, 32],
        layer="eco_2d.inception_c",
        cls=2,
        seed=3003,
    ),
    "resnet3d-r18": dict(
        # tests/fixtures/models/resnet3d-r18-options' configuration (a BasicBlock3d net with a gaussian
        # non-local block and a dilated layer4)
        ctor=lambda: r3d.Recognizer3D(
            CLASSES, 0.0, depth=18, inflate=((1, 0), 0, 1, (0, 1)), spatial_strides=(1, 2, 2, 1),
            temporal_strides=(1, 2, 1, 1), dilations=(1, 1, 1, 2), with_pool2=False,
            non_local=(0, 0, (0, 1), 0), non_local_cfg=dict(mode="gaussian", sub_sample=False)),
        model="resnet3d",
        options={"classes": CLASSES, "dropout": 0.0, "depth": 18, "inflate": "1,0;0;1;0,1",
                 "spatial_strides": "1,2,2,1", "temporal_strides": "1,2,1,1", "dilations": "1,1,1,2",
                 "with_pool2": False, "non_local": "0;0;0,1;0", "non_local_mode": "gaussian"},
        input_shape=[1, 3, 8, 32, 32],
        layer="backbone.layer4",
        cls=None,
        seed=3004,
    ),
    "i3d-r50": dict(
        ctor=lambda: SlowFastResNet(arch="i3d", nonlocal_blocks=False, classes=CLASSES, frames=8, size=32,
                                    dropout=0.0),
        model="i3d-r50",
        options={"classes": CLASSES, "dropout": 0.0},
        input_shape=[1, 3, 8, 32, 32],
        layer="s5",
        cls=None,
        seed=3005,
    ),
}


def grad_cam(case, dtype):
    """(cam [T,H,W], cam_features [T',H',W'], logits [classes], class) in `dtype`, with hooks."""
    torch.manual_seed(0)
    model = case["ctor"]().to(dtype)
    fill_module(model, case["seed"])
    model.eval()
    x = fill_input(case["seed"], case["input_shape"]).to(dtype)
    if case["model"] == "eco-lite":
        _, t, _, h, w = x.shape
    else:
        _, _, t, h, w = x.shape
    store = {}

    def fwd_hook(module, inputs, output):
        store["A"] = output
        output.register_hook(lambda g: store.__setitem__("dA", g))

    module = dict(model.named_modules())[case["layer"]]
    handle = module.register_forward_hook(fwd_hook)
    logits = model(x)
    handle.remove()
    c = case["cls"] if case["cls"] is not None else int(logits[0].argmax())
    model.zero_grad()
    logits[0, c].backward()
    a, da = store["A"].detach(), store["dA"].detach()
    if a.dim() == 4:  # per-frame maps of a [B, T, 3, H, W] model: [B*T, C, h, w] -> [B, C, T, h, w]
        a = a.reshape(1, t, *a.shape[1:]).permute(0, 2, 1, 3, 4)
        da = da.reshape(1, t, *da.shape[1:]).permute(0, 2, 1, 3, 4)
    alpha = da.mean(dim=(2, 3, 4), keepdim=True)
    cam_f = F.relu((alpha * a).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam_f, size=(t, h, w), mode="trilinear", align_corners=False)[0, 0]
    lo, hi = cam.min(), cam.max()
    cam = (cam - lo) / (hi - lo) if hi > lo else torch.zeros_like(cam)
    return cam, cam_f[0, 0], logits[0].detach(), c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default="tests/fixtures/explain")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tensors, meta = {}, {}
    for name, case in CASES.items():
        if args.only and name not in args.only:
            continue
        cam, cam_f, logits, c = grad_cam(case, torch.float64)
        cam32, _, _, c32 = grad_cam(case, torch.float32)
        assert c32 == c, f"{name}: float32 picks class {c32}, float64 {c}"
        f32_err = float((cam32.double() - cam).abs().max())
        for k, v in {"cam": cam, "cam_features": cam_f, "logits": logits}.items():
            tensors[f"{name}.{k}"] = np.ascontiguousarray(v.float().numpy())
        meta[name] = {
            "model": case["model"],
            "options": case["options"],
            "input_shape": case["input_shape"],
            "seed": case["seed"],
            "layer": case["layer"],
            "class": c,
            "class_given": case["cls"] is not None,
            "pytorch_f32_err": float(f"{f32_err:.2g}"),
            "torch": torch.__version__,
        }
        print(f"{name}: layer {case['layer']} A -> cam_features {tuple(cam_f.shape)}, class {c}, "
              f"PyTorch float32 max err {f32_err:.2g}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gradcam.safetensors"
    path.write_bytes(save(dict(sorted(tensors.items())), metadata={"cases": json.dumps(meta, sort_keys=True)}))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

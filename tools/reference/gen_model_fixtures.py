#!/usr/bin/env python3
"""Reference outputs of the model zoo at full input size, for tests/models.rs.

    python tools/reference/gen_model_fixtures.py [--only CASE ...] [--out tests/fixtures/models]

Each case builds the PyTorch definition (tools/reference/models/), fills every parameter and buffer and the
input from a seed with tools/reference/fill.py (the generator Rust implements identically), and computes in
float64 (the oracle): logits in eval mode, logits in train mode (batch statistics), the mean cross entropy
against fixed labels and the gradients of a few named parameters. Dropout is 0 in these cases (PyTorch's
dropout RNG cannot be reproduced); dropout itself is checked op by op. Only these outputs are stored, as
float32 with the case's metadata; no weights. Deterministic: rerunning rewrites identical files.
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

# name -> (constructor, vidgrad model name, options for `vidgrad`, input shape, labels, gradient params)
CASES = {
    # PySlowFast ResNet-50 (seed 000): C2D + non-local, I3D + non-local, I3D.
    "c2d-nl-r50": dict(
        ctor=lambda: SlowFastResNet(arch="c2d", nonlocal_blocks=True, classes=400, dropout=0.0),
        model="c2d-nl-r50",
        options={"classes": 400, "dropout": 0.0},
        input_shape=[2, 3, 8, 224, 224],
        labels=[17, 388],
        bn_calibration=True,
        grads=[
            "s1.pathway0_stem.conv.weight",
            "s2.pathway0_res0.branch1.weight",
            "s3.pathway0_nonlocal1.conv_theta.weight",
            "s3.pathway0_nonlocal1.conv_g.weight",
            "s4.pathway0_res3.branch2.b.weight",
            "s4.pathway0_nonlocal5.bn.weight",
            "s5.pathway0_res2.branch2.c_bn.bias",
            "head.projection.weight",
        ],
        seed=2000,
    ),
    "i3d-nl-r50": dict(
        ctor=lambda: SlowFastResNet(arch="i3d", nonlocal_blocks=True, classes=400, dropout=0.0),
        model="i3d-nl-r50",
        options={"classes": 400, "dropout": 0.0},
        input_shape=[2, 3, 8, 224, 224],
        labels=[0, 251],
        bn_calibration=True,
        grads=[
            "s1.pathway0_stem.conv.weight",
            "s2.pathway0_res1.branch2.a.weight",
            "s3.pathway0_nonlocal3.conv_phi.weight",
            "s4.pathway0_nonlocal1.conv_out.weight",
            "s4.pathway0_res4.branch2.a.weight",
            "s5.pathway0_res1.branch2.a.weight",
            "head.projection.bias",
        ],
        seed=2001,
    ),
    "i3d-r50": dict(
        ctor=lambda: SlowFastResNet(arch="i3d", nonlocal_blocks=False, classes=400, dropout=0.0),
        model="i3d-r50",
        options={"classes": 400, "dropout": 0.0},
        input_shape=[2, 3, 8, 224, 224],
        labels=[42, 399],
        grads=[
            "s1.pathway0_stem.conv.weight",
            "s3.pathway0_res0.branch2.a.weight",
            "s4.pathway0_res0.branch1_bn.weight",
            "s5.pathway0_res0.branch2.b.weight",
            "head.projection.weight",
        ],
        seed=2002,
    ),
    "eco-lite": dict(
        ctor=lambda: ECO_Lite(classes=400, frames=16, size=224),
        model="eco-lite",
        options={"classes": 400, "dropout": 0.0},
        input_shape=[2, 16, 3, 224, 224],
        labels=[3, 397],
        grads=[
            "eco_2d.basic_conv.conv1_7x7_s2.weight",
            "eco_2d.inception_a.inception_3a_double_3x3_1_bn.weight",
            "eco_3d.res_3d_4.res4a_down.weight",
            "eco_3d.res_3d_5.res5b_bn.bias",
            "fc_final.weight",
        ],
        seed=2024,
    ),
    "r2plus1d-18": dict(
        ctor=lambda: r2plus1d_18(weights=None, num_classes=400),
        model="r2plus1d-18",
        options={"classes": 400, "dropout": 0.0},
        input_shape=[2, 3, 16, 112, 112],
        labels=[5, 312],
        grads=[
            "stem.0.weight",
            "layer1.0.conv1.0.1.weight",
            "layer2.0.conv1.0.3.weight",
            "layer2.0.downsample.0.weight",
            "layer3.1.conv2.0.0.weight",
            "layer4.1.conv2.1.bias",
            "fc.weight",
        ],
        seed=2025,
    ),
    "ct-sep": dict(
        ctor=lambda: CTSepNet(classes=400),
        model="ct-sep",
        options={"classes": 400, "dropout": 0.0},
        input_shape=[2, 3, 16, 112, 112],
        labels=[7, 250],
        grads=[
            "stem.0.weight",
            "layer1.0.conv1.depthwise_spatial.weight",
            "layer1.0.conv1.bn_spatial.weight",
            "layer2.0.conv1.depthwise_temporal.weight",
            "layer2.0.downsample.0.weight",
            "layer3.1.conv2.pointwise.weight",
            "layer4.1.bn2.bias",
            "fc.weight",
        ],
        seed=2026,
    ),
}

# mmaction2 ResNet3d + I3DHead (seed 004, src/models/resnet3d.rs): I3D-R50 at the config's clip size, and small
# clips through the non-local variants (embedded gaussian with with_cp, dot product), a BasicBlock3d net and a
# 3x3x3/caffe net that go through the rest of the options.
_NL = "backbone.layer2.1.non_local_block."
CASES.update({
    "resnet3d-i3d-r50": dict(
        ctor=lambda: r3d.Recognizer3D(400, 0.0, **r3d.I3D_R50),
        model="resnet3d",
        options={"classes": 400, "dropout": 0.0, "preset": "i3d-r50"},
        input_shape=[1, 3, 32, 224, 224],
        labels=[123],
        grads=[
            "backbone.conv1.conv.weight",
            "backbone.layer1.0.downsample.bn.weight",
            "backbone.layer2.2.conv1.conv.weight",
            "backbone.layer3.0.conv2.bn.weight",
            "backbone.layer3.0.downsample.conv.weight",
            "backbone.layer4.2.conv3.conv.weight",
            "cls_head.fc_cls.weight",
            "cls_head.fc_cls.bias",
        ],
        seed=2040,
    ),
    "resnet3d-i3d-nl-eg-cp": dict(
        ctor=lambda: r3d.Recognizer3D(400, 0.0, **r3d.I3D_R50_NL, with_cp=True,
                                      non_local_cfg=r3d.nl_cfg("embedded_gaussian", use_scale=True)),
        model="resnet3d",
        options={"classes": 400, "dropout": 0.0, "preset": "i3d-r50-nl-embedded-gaussian",
                 "with_cp": True, "non_local_use_scale": True},
        input_shape=[2, 3, 16, 112, 112],
        labels=[5, 399],
        grads=[
            "backbone.conv1.conv.weight",
            _NL + "theta.conv.weight",
            _NL + "theta.conv.bias",
            _NL + "phi.0.conv.weight",
            _NL + "g.0.conv.weight",
            _NL + "conv_out.conv.weight",
            _NL + "conv_out.bn.weight",
            "backbone.layer3.5.non_local_block.g.0.conv.weight",
            "backbone.layer4.2.conv3.bn.bias",
            "cls_head.fc_cls.weight",
        ],
        seed=2041,
    ),
    # bn_calibration: with the seeded running statistics eval mode does not normalise, and each dot-product
    # block cubes the activations' scale (the preset's five overflow to NaN, in float64 too).
    "resnet3d-i3d-nl-dot": dict(
        ctor=lambda: r3d.Recognizer3D(400, 0.0, **r3d.I3D_R50_NL, non_local_cfg=r3d.nl_cfg("dot_product")),
        model="resnet3d",
        options={"classes": 400, "dropout": 0.0, "preset": "i3d-r50-nl-dot-product"},
        bn_calibration=True,
        input_shape=[2, 3, 16, 112, 112],
        labels=[17, 200],
        grads=[
            "backbone.conv1.conv.weight",
            _NL + "theta.conv.weight",
            _NL + "phi.0.conv.bias",
            _NL + "g.0.conv.weight",
            _NL + "conv_out.bn.weight",
            "backbone.layer3.3.non_local_block.phi.0.conv.weight",
            "cls_head.fc_cls.weight",
        ],
        seed=2042,
    ),
    "resnet3d-r18-options": dict(
        ctor=lambda: r3d.Recognizer3D(
            10, 0.0, depth=18, inflate=((1, 0), 0, 1, (0, 1)), spatial_strides=(1, 2, 2, 1),
            temporal_strides=(1, 2, 1, 1), dilations=(1, 1, 1, 2), with_pool2=False,
            non_local=(0, 0, (0, 1), 0), non_local_cfg=dict(mode="gaussian", sub_sample=False)),
        model="resnet3d",
        options={"classes": 10, "dropout": 0.0, "depth": 18, "inflate": "1,0;0;1;0,1",
                 "spatial_strides": "1,2,2,1", "temporal_strides": "1,2,1,1", "dilations": "1,1,1,2",
                 "with_pool2": False, "non_local": "0;0;0,1;0", "non_local_mode": "gaussian"},
        input_shape=[2, 3, 8, 64, 64],
        labels=[1, 9],
        # No stem gradient here (resnet3d-i3d-r50 checks it): on this small clip it is ill-conditioned beyond
        # what one PyTorch float32 run shows (1.2e-3 from mkldnn, 3.6e-3 from the native conv; ours 4.7e-3).
        grads=[
            "backbone.layer2.0.conv1.conv.weight",
            "backbone.layer2.0.downsample.conv.weight",
            "backbone.layer3.1.non_local_block.g.conv.weight",
            "backbone.layer3.1.non_local_block.conv_out.conv.bias",
            "backbone.layer4.1.conv1.conv.weight",
            "cls_head.fc_cls.weight",
        ],
        seed=2043,
    ),
    "resnet3d-r50-3x3x3-caffe": dict(
        ctor=lambda: r3d.Recognizer3D(
            7, 0.0, depth=50, conv1_kernel=(1, 7, 7), inflate=(1, (0, 1, 0, 1), 0, 1), inflate_style="3x3x3",
            style="caffe", temporal_strides=(1, 1, 2, 1), pool1_stride_t=2,
            non_local=(0, 1, 0, 0), non_local_cfg=dict(mode="gaussian", sub_sample=True, norm=True)),
        model="resnet3d",
        options={"classes": 7, "dropout": 0.0, "depth": 50, "conv1_kernel": "1,7,7",
                 "inflate": "1;0,1,0,1;0;1", "inflate_style": "3x3x3", "style": "caffe",
                 "temporal_strides": "1,1,2,1", "pool1_stride_t": 2, "non_local": "0;1;0;0",
                 "non_local_mode": "gaussian", "non_local_sub_sample": True, "non_local_norm": True},
        input_shape=[2, 3, 16, 64, 64],
        labels=[0, 6],
        grads=[
            "backbone.conv1.conv.weight",
            "backbone.layer1.2.conv2.conv.weight",
            "backbone.layer2.3.non_local_block.g.0.conv.weight",
            "backbone.layer2.3.non_local_block.conv_out.bn.weight",
            "backbone.layer3.0.conv1.conv.weight",
            "backbone.layer4.2.conv2.conv.weight",
            "cls_head.fc_cls.bias",
        ],
        seed=2044,
    ),
})


GRAD_SAMPLES = 2048
# The float32 runs besides the plain one: every weight, buffer and input element moved one ulp up or down
# at random (seeded). A float32 implementation's result is the exact result of inputs perturbed by a few
# ulps (backward stability), so these are results another float32 implementation could equally give. On
# ct-sep (2026-12-05) PyTorch float32's error in layer1.0.conv1.depthwise_spatial's gradient was 3.4e-3
# (one thread) and 5.5e-3 (two), with these nudges up to 1.2e-2, and with only the stem's 3x1x1 conv
# computed otherwise 2.9e-3 .. 1.1e-2 (stem_sensitivity.py, docs/PERFORMANCE.md).
F32_NUDGE_SEEDS = (1, 2)


def calibrate_bn(model, x):
    """Batch-norm running statistics := the statistics of batch `x` (one train-mode pass with momentum 1).

    For cases with `bn_calibration=True`: with the seeded running statistics (mean ~0, var ~1) the
    activations of a deep residual net grow by orders of magnitude in eval mode, and non-local attention
    over such activations is a hard argmax whose near-ties make eval logits chaotic under float32 rounding
    (measured 1e-3 .. 1e-1 between float32 implementations). Statistics from another seeded batch (the
    input of seed + 1) keep eval mode at training scale. tests/models.rs does the same.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def nudge(t, gen):
    """Every element of `t` one unit in the last place up or down (at random from `gen`); zeros stay."""
    up = torch.randint(0, 2, t.shape, generator=gen).bool()
    away = torch.where(up, torch.full_like(t, float("inf")), torch.full_like(t, float("-inf")))
    return torch.where(t == 0, t, torch.nextafter(t, away))


def outputs(case, dtype, nudge_seed=None):
    """Eval logits, train logits, loss and the sampled gradients, computed in `dtype`; with `nudge_seed`,
    every parameter, buffer and input element first moved by one ulp of `dtype` (see F32_NUDGE_SEEDS)."""
    torch.manual_seed(0)
    model = case["ctor"]().to(dtype)
    fill_module(model, case["seed"])
    x = fill_input(case["seed"], case["input_shape"]).to(dtype)
    if nudge_seed is not None:
        gen = torch.Generator().manual_seed(nudge_seed)
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(nudge(t, gen))
        x = nudge(x, gen)
    if case.get("bn_calibration"):
        calibrate_bn(model, fill_input(case["seed"] + 1, case["input_shape"]).to(dtype))
    labels = torch.tensor(case["labels"])
    model.eval()
    with torch.no_grad():
        logits_eval = model(x)
    model.train()
    logits_train = model(x)
    loss = F.cross_entropy(logits_train, labels)
    loss.backward()
    params = dict(model.named_parameters())
    out = {
        "logits_eval": logits_eval,
        "logits_train": logits_train.detach(),
        "loss_train": loss.detach().reshape(1),
    }
    # Gradients: every `stride`-th element of the flattened gradient (at most GRAD_SAMPLES), keeping the
    # fixtures small; tests/models.rs takes the same elements.
    for g in case["grads"]:
        flat = params[g].grad.reshape(-1)
        stride = -(-flat.numel() // GRAD_SAMPLES)
        out["grad." + g] = flat[::stride]
    out = {k: v.detach().double() for k, v in out.items()}
    out["__state_dict__"] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return out


def rel_err(got, want):
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def run_case(name, case):
    out = outputs(case, torch.float64)
    state_dict = out.pop("__state_dict__")
    # How far PyTorch's own float32 lands from the float64 oracle: the conditioning of each output,
    # which bounds what any float32 implementation can achieve (tests/models.rs scales its tolerance).
    # One run can land low by chance where an output is ill-conditioned, so the largest of three: as
    # given, and with the weights and the input nudged by one ulp.
    errs = {k: [] for k in out}
    for seed in (None,) + F32_NUDGE_SEEDS:
        out32 = outputs(case, torch.float32, seed)
        out32.pop("__state_dict__")
        for k in out:
            errs[k].append(rel_err(out32[k], out[k]))
    f32_err = {k: float(f"{max(v):.2g}") for k, v in errs.items()}
    f32_err_plain = {k: float(f"{v[0]:.2g}") for k, v in errs.items()}
    tensors = {k: np.ascontiguousarray(v.float().numpy()) for k, v in out.items()}
    meta = {
        "model": case["model"],
        "options": case["options"],
        "input_shape": case["input_shape"],
        "labels": case["labels"],
        "seed": case["seed"],
        "grads": case["grads"],
        "grad_samples": GRAD_SAMPLES,
        "pytorch_f32_err": f32_err,
        "pytorch_f32_err_plain": f32_err_plain,
        # every key and shape of the PyTorch module's state_dict: ours must be identical
        "state_dict": state_dict,
        "torch": torch.__version__,
    }
    if case.get("bn_calibration"):
        meta["bn_calibration"] = True
    return tensors, {"case": json.dumps(meta, sort_keys=True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default="tests/fixtures/models")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic float32 reductions
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name, case in CASES.items():
        if args.only and name not in args.only:
            continue
        tensors, meta = run_case(name, case)
        path = Path(args.out) / f"{name}.safetensors"
        path.write_bytes(save(dict(sorted(tensors.items())), metadata=meta))
        print(f"{name}: {path} ({path.stat().st_size} bytes), loss {float(tensors['loss_train'][0]):.6f}")


if __name__ == "__main__":
    main()

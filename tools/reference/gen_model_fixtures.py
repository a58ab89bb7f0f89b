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
from models.ct_sep import CTSepNet  # noqa: E402
from torchvision.models.video import r2plus1d_18  # noqa: E402

# name -> (constructor, vidgrad model name, options for `vidgrad`, input shape, labels, gradient params)
CASES = {
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


GRAD_SAMPLES = 2048


def outputs(case, dtype):
    """Eval logits, train logits, loss and the sampled gradients, computed in `dtype`."""
    torch.manual_seed(0)
    model = case["ctor"]().to(dtype)
    fill_module(model, case["seed"])
    x = fill_input(case["seed"], case["input_shape"]).to(dtype)
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
    # How far PyTorch's own float32 lands from the float64 oracle: the conditioning of each output,
    # which bounds what any float32 implementation can achieve (tests/models.rs scales its tolerance).
    out32 = outputs(case, torch.float32)
    state_dict = out.pop("__state_dict__")
    out32.pop("__state_dict__")
    f32_err = {k: float(f"{rel_err(out32[k], out[k]):.2g}") for k in out}
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
        # every key and shape of the PyTorch module's state_dict: ours must be identical
        "state_dict": state_dict,
        "torch": torch.__version__,
    }
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

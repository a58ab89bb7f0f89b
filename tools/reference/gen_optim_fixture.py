#!/usr/bin/env python3
"""Generate the PyTorch reference fixture for vidgrad's optimisers (tests/optim.rs).

Run from the repository root:

    python tools/reference/gen_optim_fixture.py [--out tests/fixtures/optim]

It writes ``optim.safetensors``: a small conv net (conv 3->4 k3 p1 without bias,
batch norm in training mode, ReLU, conv 4->6 k3 s2 p1 with bias, ReLU, global
average pool, linear 6->3, cross entropy) written with ``torch.nn.functional``
on explicit, named parameters;
its initial parameters; ten fixed batches; and, for every optimiser
configuration below, what ten steps of ``torch.optim`` do to it: the parameters
after the last step, the optimiser state (momentum buffers, Adam moments and
step counts), the loss and learning rate of every step and, where gradients
are clipped, the norm ``clip_grad_norm_`` returned. It also stores the learning
rates PyTorch's schedulers produce over a range of epochs.

Everything is float32 (the schedulers' learning rates float64, as PyTorch
computes them), on one CPU thread with deterministic algorithms, seeded, and
the header is written with sorted keys: rerunning rewrites a byte-identical
file. The script reads nothing.

The first conv has no bias, as in ResNets: a bias straight before a training-mode
batch norm has a gradient of exactly zero, so what autograd returns for it is
rounding noise, and Adam normalises that noise into full-size steps in a
direction no two implementations agree on.

Tensor names:
  init.<param>                      initial parameters (dotted state_dict names)
  batch.<s>.x, batch.<s>.labels     the batch of step s (s = 0..9; labels int64)
  <config>.param.<param>            parameters after the ten steps
  <config>.state.<param>.<buffer>   torch.optim state after the ten steps
                                    (momentum_buffer; exp_avg, exp_avg_sq, step)
  <config>.loss, <config>.lr        per step: the loss, the learning rate used
  <config>.grad_norm                per step: total norm before clipping
  schedule.<name>                   float64 [epochs]: the scheduler's lr per epoch
The safetensors ``__metadata__`` maps "model", every config and every
"schedule.<name>" to a JSON string (sorted keys) describing it.
"""

import argparse
import json
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import save as st_save

F32 = torch.float32
STEPS = 10
BATCH = 4
CLASSES = 3
BN_EPS = 1e-5

# --------------------------------------------------------------------------- #
# The network
# --------------------------------------------------------------------------- #


def init_params():
    """Fixed initial parameters (PyTorch state_dict names and layouts)."""
    g = torch.Generator().manual_seed(20240901)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=F32) * scale

    return {
        "conv1.weight": randn(4, 3, 3, 3, scale=27**-0.5),
        "bn1.weight": 1.0 + randn(4, scale=0.1),
        "bn1.bias": randn(4, scale=0.1),
        "conv2.weight": randn(6, 4, 3, 3, scale=36**-0.5),
        "conv2.bias": randn(6, scale=0.1),
        "fc.weight": randn(CLASSES, 6, scale=6**-0.5),
        "fc.bias": randn(CLASSES, scale=0.1),
    }


def batches():
    """Ten fixed batches: inputs [4, 3, 8, 8] and labels [4]."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, 3, 8, 8, generator=g, dtype=F32)
        y = torch.randint(0, CLASSES, (BATCH,), generator=g)
        out.append((x, y))
    return out


def loss_fn(p, x, labels):
    y = F.conv2d(x, p["conv1.weight"], None, padding=1)
    y = F.batch_norm(y, None, None, p["bn1.weight"], p["bn1.bias"], training=True, eps=BN_EPS)
    y = F.relu(y)
    y = F.relu(F.conv2d(y, p["conv2.weight"], p["conv2.bias"], stride=2, padding=1))
    y = F.adaptive_avg_pool2d(y, 1).flatten(1)
    y = F.linear(y, p["fc.weight"], p["fc.bias"])
    return F.cross_entropy(y, labels)


# --------------------------------------------------------------------------- #
# Optimiser configurations
# --------------------------------------------------------------------------- #

# Every configuration runs STEPS steps from the same initial parameters on the
# same batches. "groups": "no_decay" puts biases and 1-d weights (BN) in a group
# with weight_decay 0, "single" uses one group with the optimiser's decay.
CONFIGS = {
    "sgd_plain": {"optimizer": "sgd", "lr": 0.2, "momentum": 0.0, "dampening": 0.0,
                  "nesterov": False, "weight_decay": 1e-2, "groups": "single"},
    "sgd_momentum_wd": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "dampening": 0.0,
                        "nesterov": False, "weight_decay": 1e-4, "groups": "no_decay"},
    "sgd_nesterov_clip": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0,
                          "nesterov": True, "weight_decay": 1e-2, "groups": "single",
                          "clip": 1.0},
    "sgd_dampening_steplr": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.8, "dampening": 0.3,
                             "nesterov": False, "weight_decay": 0.0, "groups": "single",
                             "schedule": {"kind": "step", "step_size": 4, "gamma": 0.5}},
    "adamw_warmup_cosine": {"optimizer": "adamw", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
                            "weight_decay": 0.05, "groups": "no_decay",
                            "schedule": {"kind": "warmup", "start_factor": 0.1, "steps": 3,
                                         "then": {"kind": "cosine", "t_max": 7, "eta_min": 1e-4}}},
    "adamw_clip": {"optimizer": "adamw", "lr": 3e-3, "betas": [0.8, 0.99], "eps": 1e-6,
                   "weight_decay": 0.05, "groups": "single", "clip": 1.0},
}


def no_decay(name, t):
    """Biases and 1-d weights (batch norm) get no weight decay."""
    return name.endswith(".bias") or t.dim() == 1


def make_optimizer(cfg, params):
    if cfg["groups"] == "no_decay":
        groups = [
            {"params": [t for n, t in params.items() if not no_decay(n, t)]},
            {"params": [t for n, t in params.items() if no_decay(n, t)], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": list(params.values())}]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], dampening=cfg["dampening"],
                               nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"],
                               foreach=False)
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                             weight_decay=cfg["weight_decay"], foreach=False)


def make_scheduler(opt, spec):
    """The torch.optim.lr_scheduler object for a schedule spec (see also schedule_specs)."""
    s = torch.optim.lr_scheduler
    kind = spec["kind"]
    if kind == "step":
        return s.StepLR(opt, step_size=spec["step_size"], gamma=spec["gamma"])
    if kind == "multistep":
        return s.MultiStepLR(opt, milestones=spec["milestones"], gamma=spec["gamma"])
    if kind == "cosine":
        return s.CosineAnnealingLR(opt, T_max=spec["t_max"], eta_min=spec["eta_min"])
    if kind == "warmup":
        warm = s.LinearLR(opt, start_factor=spec["start_factor"], end_factor=1.0, total_iters=spec["steps"])
        if spec.get("then") is None:
            return warm
        then = make_scheduler(opt, spec["then"])
        return s.SequentialLR(opt, [warm, then], milestones=[spec["steps"]])
    raise ValueError(kind)


def run_config(name, cfg, init, data, tensors):
    params = {n: t.clone().requires_grad_(True) for n, t in init.items()}
    opt = make_optimizer(cfg, params)
    sched = make_scheduler(opt, cfg["schedule"]) if "schedule" in cfg else None
    losses, lrs, norms = [], [], []
    for x, labels in data:
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        loss = loss_fn(params, x, labels)
        loss.backward()
        losses.append(loss.item())
        if "clip" in cfg:
            norms.append(torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["clip"], foreach=False).item())
        opt.step()
        if sched is not None:
            sched.step()
    for n, t in params.items():
        tensors[f"{name}.param.{n}"] = t.detach()
        for key, v in opt.state[t].items():
            tensors[f"{name}.state.{n}.{key}"] = v.detach().reshape(1) if v.dim() == 0 else v.detach()
    tensors[f"{name}.loss"] = torch.tensor(losses, dtype=F32)
    tensors[f"{name}.lr"] = torch.tensor(lrs, dtype=torch.float64)
    if norms:
        tensors[f"{name}.grad_norm"] = torch.tensor(norms, dtype=F32)
        print(f"  {name}: grad norms {', '.join(f'{v:.3f}' for v in norms)}")
    print(f"  {name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


# --------------------------------------------------------------------------- #
# Schedules alone
# --------------------------------------------------------------------------- #

SCHEDULES = {
    "step": ({"kind": "step", "step_size": 3, "gamma": 0.5}, 12),
    "multistep": ({"kind": "multistep", "milestones": [2, 5, 9], "gamma": 0.1}, 12),
    "cosine": ({"kind": "cosine", "t_max": 10, "eta_min": 1e-3}, 25),
    "cosine_no_min": ({"kind": "cosine", "t_max": 7, "eta_min": 0.0}, 10),
    "warmup": ({"kind": "warmup", "start_factor": 0.1, "steps": 5}, 9),
    "warmup_cosine": ({"kind": "warmup", "start_factor": 0.25, "steps": 4,
                       "then": {"kind": "cosine", "t_max": 12, "eta_min": 1e-4}}, 20),
    "warmup_step": ({"kind": "warmup", "start_factor": 0.01, "steps": 3,
                     "then": {"kind": "step", "step_size": 4, "gamma": 0.1}}, 15),
    "warmup_multistep": ({"kind": "warmup", "start_factor": 0.5, "steps": 2,
                          "then": {"kind": "multistep", "milestones": [3, 6], "gamma": 0.2}}, 12),
}
SCHEDULE_BASE_LR = 0.1


def schedule_lrs(spec, epochs):
    """The lr PyTorch's scheduler gives at epochs 0..epochs-1 (stepped once per epoch)."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=SCHEDULE_BASE_LR)
    sched = make_scheduler(opt, spec)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return torch.tensor(out, dtype=torch.float64)


# --------------------------------------------------------------------------- #
# Output
# --------------------------------------------------------------------------- #


def write_safetensors(path, tensors, metadata):
    """safetensors with a canonical (sorted-key) JSON header, as gen_op_fixtures.py."""
    blob = st_save(tensors, metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures/optim", help="output directory (default: %(default)s)")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    init = init_params()
    data = batches()
    tensors = {f"init.{n}": t for n, t in init.items()}
    for s, (x, labels) in enumerate(data):
        tensors[f"batch.{s}.x"] = x
        tensors[f"batch.{s}.labels"] = labels
    meta = {
        "model": {"net": "conv3x3(3->4, p1) -> batch_norm(train) -> relu -> conv3x3(4->6, s2, p1, bias) -> relu"
                         " -> global_avg_pool -> linear(6->3) -> cross_entropy", "bn_eps": BN_EPS, "steps": STEPS, "batch": BATCH,
                  "classes": CLASSES, "torch": torch.__version__},
    }
    for name, cfg in CONFIGS.items():
        run_config(name, cfg, init, data, tensors)
        meta[name] = cfg
    for name, (spec, epochs) in SCHEDULES.items():
        tensors[f"schedule.{name}"] = schedule_lrs(spec, epochs)
        meta[f"schedule.{name}"] = {"spec": spec, "base_lr": SCHEDULE_BASE_LR, "epochs": epochs}

    arrays = {}
    for k, t in tensors.items():
        t = t.detach().contiguous()
        assert t.dtype in (F32, torch.float64, torch.int64), (k, t.dtype)
        arrays[k] = np.ascontiguousarray(t.numpy())
    metadata = {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "optim.safetensors"
    write_safetensors(path, arrays, metadata)
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == metadata
        assert set(f.keys()) == set(arrays)
        for k in f.keys():
            assert np.array_equal(f.get_tensor(k), arrays[k]), k
    print(f"{path}: {len(arrays)} tensors, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()

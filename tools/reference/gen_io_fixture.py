#!/usr/bin/env python3
"""Generate the weight-I/O interop fixtures for tests/io.rs.

Run from the repository root:

    python tools/reference/gen_io_fixture.py [--out tests/fixtures/io]

Writes:
  tiny_eco.safetensors  a tiny ECO-shaped network (2-d conv + BatchNorm2d, 3-d conv + BatchNorm3d,
                        linear head) after three train-mode forwards (running stats moved,
                        num_batches_tracked = 3), saved by torch.save the way the official ECO code
                        does ({'epoch', 'arch', 'state_dict' of an nn.DataParallel, 'best_prec1'}),
                        then converted by tools/convert_checkpoint.py with
                        --rename 'module.base_model.=' --rename 'module.='. The state dict also holds
                        one non-tensor entry, which the converter skips with a warning.
  tiny_eco.json         what the Rust test expects: every key's dtype, shape and values, and the
                        file's metadata.
  dtypes.safetensors    tensors in F16, BF16, F64, I64 (0-d), I32 and a 0-d F32, written by
                        safetensors.torch; dtypes.json holds their values as float32.

Deterministic: fixed seeds, one thread, sorted-key headers; rerunning rewrites identical bytes.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from convert_checkpoint import serialize  # noqa: E402  (sorted-header safetensors bytes)


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.res3a = nn.Conv3d(4, 4, (3, 1, 1))
        self.bn3 = nn.BatchNorm3d(4)

    def forward(self, x):  # x: [N*T, 3, H, W] frames of N clips of T frames
        n, t = x.shape[0] // 2, 2
        y = torch.relu(self.bn1(self.conv1(x)))
        y = y.reshape(n, t, *y.shape[1:]).transpose(1, 2)  # [N, C, T, H, W]
        y = torch.relu(self.bn3(self.res3a(nn.functional.pad(y, (0, 0, 0, 0, 1, 1)))))
        return y.mean(dim=(2, 3, 4))


class TinyEco(nn.Module):
    def __init__(self):
        super().__init__()
        self.base_model = Base()
        self.new_fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.new_fc(self.base_model(x))


def tiny_eco_checkpoint():
    torch.manual_seed(20240611)
    model = TinyEco()
    with torch.no_grad():  # non-trivial BN affine parameters
        for bn in (model.base_model.bn1, model.base_model.bn3):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    model = nn.DataParallel(model)  # CPU only: just a wrapper, but keys gain "module."
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 6, 6))
    sd = model.state_dict()
    sd["module.version_note"] = "not a tensor"
    return {"epoch": 3, "arch": "ECO", "state_dict": sd, "best_prec1": torch.tensor(12.5)}


def entry(t):
    """What tests/io.rs expects of a tensor: dtype in the file, shape, values as float32."""
    values = [float(v) for v in t.to(torch.float32).reshape(-1).tolist()]
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "values": values}


def gen_tiny_eco(out):
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "tiny_eco.pth"
        torch.save(tiny_eco_checkpoint(), pth)
        st = out / "tiny_eco.safetensors"
        cmd = [sys.executable, str(ROOT / "tools/convert_checkpoint.py"), str(pth), str(st),
               "--rename", "module.base_model.=", "--rename", "module.="]
        subprocess.run(cmd, check=True)

    from safetensors import safe_open

    expected = {}
    with safe_open(str(st), framework="pt") as f:
        metadata = f.metadata()
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            expected[k] = entry(t)
    counter = expected["bn1.num_batches_tracked"]
    assert counter["dtype"] == "int64" and counter["shape"] == [], counter
    text = json.dumps({"metadata": metadata, "tensors": expected}, sort_keys=True, indent=1)
    (out / "tiny_eco.json").write_text(text + "\n")


def gen_dtypes(out):
    tensors = {
        # 5.96e-08 is the smallest f16 subnormal, 65504 the largest finite f16.
        "f16": torch.tensor([1.0, -2.5, 65504.0, 5.960464477539063e-08, 0.333251953125, -0.0],
                            dtype=torch.float16),
        "bf16": torch.tensor([[1.0, -3.140625], [1.0e30, 0.0078125]], dtype=torch.bfloat16),
        "f64": torch.tensor([1.0 / 3.0, -2.0e-3, 1.0e10], dtype=torch.float64),
        "i32": torch.tensor([-3, 0, 7, 16777216], dtype=torch.int32),
        "bn.num_batches_tracked": torch.tensor(123456, dtype=torch.int64),
        "scalar": torch.tensor(0.25, dtype=torch.float32),
    }
    (out / "dtypes.safetensors").write_bytes(serialize(tensors, {"format": "pt"}))
    expected = {k: entry(t) for k, t in sorted(tensors.items())}
    (out / "dtypes.json").write_text(json.dumps(expected, sort_keys=True, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/io"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    gen_tiny_eco(out)
    gen_dtypes(out)
    for p in sorted(out.iterdir()):
        print(f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()

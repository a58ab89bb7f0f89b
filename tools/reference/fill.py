"""Deterministic weights shared with Rust (src/models/fill.rs; see its docs for the rule).

splitmix64 over a counter: value i of stream s is splitmix64(s + (i + 1) * GOLDEN); uniform floats take
its top 24 bits. Stream of tensor `name`: mix(seed, fnv1a(name)). All arithmetic after the integers is
float32, step by step, exactly as the Rust code does it.
"""

import numpy as np
import torch

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def mix(seed, i):
    return splitmix64((seed + ((i + 1) * GOLDEN & MASK)) & MASK)


def fnv1a(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def uniform(stream, n):
    """u_i = uniform(stream, i) for i < n, float32 in [0, 1)."""
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(stream) + (i + np.uint64(1)) * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def fill_values(seed, name, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(mix(seed, fnv1a(name)), n)
    f = np.float32
    if name.endswith("num_batches_tracked"):
        v = np.zeros(n, np.float32)
    elif name.endswith("running_mean"):
        v = f(0.2) * u - f(0.1)
    elif name.endswith("running_var"):
        v = f(0.5) + u
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        scale = np.sqrt(f(6.0) / f(fan_in), dtype=np.float32)
        v = (f(2.0) * u - f(1.0)) * scale
    elif name.endswith("weight"):
        v = f(0.5) + u
    else:
        v = f(0.2) * u - f(0.1)
    return v.astype(np.float32).reshape(shape)


def fill_module(module, seed):
    """Overwrite every parameter and buffer of a torch module (state_dict names) in place."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            v = torch.from_numpy(fill_values(seed, name, tuple(t.shape)))
            t.copy_(v.to(t.dtype))


def fill_input(seed, shape):
    u = uniform(mix(seed, fnv1a("input")), int(np.prod(shape)))
    return torch.from_numpy((np.float32(2.0) * u - np.float32(1.0)).reshape(shape))

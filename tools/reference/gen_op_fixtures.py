#!/usr/bin/env python3
"""Generate PyTorch reference fixtures for vidgrad's per-op tests.

Run from the repository root:

    python tools/reference/gen_op_fixtures.py [--out tests/fixtures/ops]

One safetensors file is written per op family. Every case stores its inputs,
the forward output ``y``, an upstream gradient ``gy`` and the gradient of every
float input (``g<input>``), all as float32 (labels as int64). The safetensors
``__metadata__`` maps each case name to a JSON string (sorted keys) holding
``"op"`` and the op's parameters. See tools/reference/README.md.

The output is deterministic: every case is seeded with a fixed seed derived from
its file and case name, math is done in float64 on float32-representable inputs
and the results are rounded to float32, and the safetensors header is written
with sorted keys, so rerunning rewrites byte-identical files.
"""

import argparse
import json
import math
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import save as st_save

F32 = torch.float32
F64 = torch.float64


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def randn(*shape, scale=1.0):
    """float32 standard-normal tensor (times ``scale``, still float32)."""
    return torch.randn(*shape, dtype=F32) * scale


def distinct(*shape):
    """float32 tensor of distinct values (a shuffled ramp, std ~1): no ties for max-pool."""
    n = math.prod(shape)
    perm = torch.randperm(n).to(F64)
    x = (perm - (n - 1) / 2) * (3.4 / n)
    return x.to(F32).reshape(shape)


def away_from_zero(x, margin=1e-2):
    """Push values away from 0 so that |x| >= margin (relu kink, dropout mask recovery)."""
    return x + torch.where(x >= 0, margin, -margin).to(x.dtype)


class Family:
    """Collects the cases of one fixture file."""

    def __init__(self, filename):
        self.filename = filename
        self.tensors = {}
        self.meta = {}

    def begin(self, case):
        """Start a case: check the name is unique and seed the RNG with a fixed per-case seed."""
        assert case not in self.meta, f"duplicate case {case} in {self.filename}"
        torch.manual_seed(zlib.crc32(f"{self.filename}/{case}".encode()))

    def store(self, case, meta, tensors):
        assert "op" in meta
        self.meta[case] = json.dumps(meta, sort_keys=True)
        for name, t in tensors.items():
            key = f"{case}.{name}"
            assert key not in self.tensors, key
            t = t.detach()
            if t.dtype == torch.int64:
                arr = t.contiguous().numpy()
            else:
                assert t.is_floating_point(), key
                arr = t.to(F32).contiguous().numpy()
            self.tensors[key] = np.ascontiguousarray(arr)

    def grad_case(self, case, meta, inputs, fn, consts=None, gy=None):
        """Register a case whose gradients come from ``torch.autograd.grad(y, inputs, gy)``.

        inputs: name -> float32 tensor; differentiated, gradients stored as ``g<name>``.
        consts: name -> tensor passed to ``fn`` (float ones as float64 clones) and stored
                as given, but not differentiated (labels, running statistics).
        fn:     called as ``fn(**inputs, **consts)`` in float64; returns ``y`` or
                ``(y, {extra_name: tensor})`` (extra outputs stored alongside ``y``).
        gy:     upstream gradient; randn of y's shape by default.
        """
        consts = consts or {}
        xs = {k: v.to(F64).requires_grad_(True) for k, v in inputs.items()}
        cs = {k: (v.to(F64).clone() if v.is_floating_point() else v.clone()) for k, v in consts.items()}
        out = fn(**xs, **cs)
        y, extras = out if isinstance(out, tuple) else (out, {})
        if gy is None:
            gy = randn(*y.shape)
        assert tuple(gy.shape) == tuple(y.shape)
        grads = torch.autograd.grad(y, list(xs.values()), gy.to(F64))
        tensors = {**inputs, **consts, "y": y, **extras, "gy": gy}
        for name, g in zip(xs, grads):
            tensors[f"g{name}"] = g
        self.store(case, meta, tensors)

    def write(self, out_dir):
        path = Path(out_dir) / self.filename
        write_safetensors(path, self.tensors, self.meta)
        verify(path, self.tensors, self.meta)
        return path


def write_safetensors(path, tensors, metadata):
    """safetensors serialisation with a canonical (sorted-key) JSON header.

    The safetensors library emits ``__metadata__`` in hash-map order, which changes
    from run to run; re-emitting the header with sorted keys makes the file bytes
    deterministic. The data section (ordered by the library by dtype, then name)
    is kept as is.
    """
    blob = st_save(tensors, metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


# Cases with no gradient (a conversion, not a differentiable op).
FORWARD_ONLY_OPS = {"round_bf16"}


def meta_op(meta_json):
    return json.loads(meta_json)["op"]


def verify(path, tensors, metadata):
    """Reopen with safe_open and check names, metadata and values round-trip."""
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == metadata, path
        assert set(f.keys()) == set(tensors), path
        for key in f.keys():
            a = f.get_tensor(key)
            assert a.dtype == tensors[key].dtype and np.array_equal(a, tensors[key], equal_nan=True), key
    for case, meta in metadata.items():
        prefix = case + "."
        names = {k[len(prefix) :] for k in tensors if k.startswith(prefix)}
        assert "y" in names, case
        if meta_op(meta) in FORWARD_ONLY_OPS:
            continue
        assert "gy" in names, case
        assert tensors[prefix + "gy"].shape == tensors[prefix + "y"].shape, case
        for n in names:
            if "g" + n in names:
                assert tensors[prefix + "g" + n].shape == tensors[prefix + n].shape, (case, n)


# --------------------------------------------------------------------------- #
# conv.safetensors
# --------------------------------------------------------------------------- #


def gen_conv():
    fam = Family("conv.safetensors")
    # name, x shape, C_out, kernel, stride, padding, dilation, groups, bias
    cases = [
        # 2-D
        ("conv2d_k3_p1_bias", (2, 3, 9, 9), 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),
        ("conv2d_k3_s2_p1", (1, 3, 11, 11), 5, (3, 3), (2, 2), (1, 1), (1, 1), 1, False),
        ("conv2d_k7_s2_p3_stem", (1, 3, 15, 15), 4, (7, 7), (2, 2), (3, 3), (1, 1), 1, False),
        ("conv2d_k3_dil2", (1, 2, 9, 9), 3, (3, 3), (1, 1), (2, 2), (2, 2), 1, True),
        ("conv2d_g2", (2, 4, 7, 7), 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, True),
        ("conv2d_dw", (1, 4, 8, 8), 4, (3, 3), (1, 1), (1, 1), (1, 1), 4, False),
        ("conv2d_dw_mult2", (1, 3, 7, 7), 6, (3, 3), (2, 2), (1, 1), (1, 1), 3, True),
        ("conv2d_k1_s2", (2, 4, 7, 7), 3, (1, 1), (2, 2), (0, 0), (1, 1), 1, False),
        ("conv2d_k13_s12_p01", (1, 3, 5, 9), 4, (1, 3), (1, 2), (0, 1), (1, 1), 1, True),
        ("conv2d_k3_nopad_odd", (1, 2, 11, 7), 3, (3, 3), (1, 1), (0, 0), (1, 1), 1, True),
        # 3-D
        ("conv3d_k333_p1_bias", (2, 3, 5, 7, 7), 4, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True),
        ("conv3d_k333_s2_p1", (1, 4, 5, 7, 7), 6, (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 1, False),
        ("conv3d_k333_s2_p1_even", (2, 2, 4, 8, 8), 3, (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 1, True),
        ("conv3d_k311_p100", (1, 4, 5, 6, 6), 4, (3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1), 1, True),
        ("conv3d_k133_s122_p011", (2, 3, 4, 9, 9), 4, (1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 1, 1), 1, False),
        ("conv3d_k577_s122_p233", (1, 3, 6, 11, 11), 2, (5, 7, 7), (1, 2, 2), (2, 3, 3), (1, 1, 1), 1, False),
        ("conv3d_k577_nopad", (1, 2, 5, 9, 7), 2, (5, 7, 7), (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, True),
        ("conv3d_k177_s122_p033", (1, 3, 3, 11, 11), 4, (1, 7, 7), (1, 2, 2), (0, 3, 3), (1, 1, 1), 1, True),
        ("conv3d_k111_bias", (2, 4, 3, 5, 5), 5, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, True),
        ("conv3d_k111_s2", (2, 4, 5, 7, 7), 8, (1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1), 1, False),
        ("conv3d_k333_dil2", (1, 2, 7, 9, 9), 3, (3, 3, 3), (1, 1, 1), (2, 2, 2), (2, 2, 2), 1, False),
        ("conv3d_k333_dil122", (1, 2, 4, 9, 9), 3, (3, 3, 3), (1, 1, 1), (1, 2, 2), (1, 2, 2), 1, True),
        ("conv3d_g2", (1, 4, 4, 6, 6), 6, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 2, True),
        ("conv3d_dw", (1, 4, 5, 7, 7), 4, (3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1), 4, False),
        ("conv3d_dw_mult2", (2, 3, 4, 6, 6), 6, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 3, True),
        ("conv3d_k233_s212_p021", (1, 3, 6, 7, 9), 4, (2, 3, 3), (2, 1, 2), (0, 2, 1), (1, 1, 1), 1, True),
    ]
    for name, x_shape, c_out, kernel, stride, padding, dilation, groups, bias in cases:
        fam.begin(name)
        c_in = x_shape[1]
        fan_in = c_in // groups * math.prod(kernel)
        inputs = {
            "x": randn(*x_shape),
            "w": randn(c_out, c_in // groups, *kernel, scale=fan_in**-0.5),
        }
        if bias:
            inputs["b"] = randn(c_out, scale=fan_in**-0.5)
        conv = F.conv2d if len(kernel) == 2 else F.conv3d
        meta = {
            "op": "conv",
            "stride": list(stride),
            "padding": list(padding),
            "dilation": list(dilation),
            "groups": groups,
            "bias": bias,
        }
        fam.grad_case(
            name, meta, inputs, lambda x, w, b=None: conv(x, w, b, stride, padding, dilation, groups)
        )
    return fam


# --------------------------------------------------------------------------- #
# batchnorm.safetensors
# --------------------------------------------------------------------------- #


def gen_batchnorm():
    fam = Family("batchnorm.safetensors")
    momentum = 0.1
    # name, x shape, training, affine, eps
    cases = [
        ("bn2d_train_affine", (4, 3, 5, 5), True, True, 1e-5),
        ("bn2d_train_noaffine", (3, 2, 4, 6), True, False, 1e-5),
        ("bn2d_eval_affine", (2, 3, 5, 5), False, True, 1e-5),
        ("bn2d_eval_noaffine", (2, 4, 3, 3), False, False, 1e-5),
        ("bn3d_train_affine", (2, 4, 3, 5, 5), True, True, 1e-5),
        ("bn3d_train_noaffine", (2, 3, 2, 4, 4), True, False, 1e-5),
        ("bn3d_train_affine_n1", (1, 3, 4, 5, 5), True, True, 1e-5),
        ("bn3d_train_affine_eps1e3", (2, 3, 3, 4, 4), True, True, 1e-3),
        ("bn3d_eval_affine", (2, 4, 3, 5, 5), False, True, 1e-5),
        ("bn3d_eval_noaffine", (1, 3, 2, 4, 5), False, False, 1e-5),
        ("bn3d_eval_affine_eps1e3", (1, 2, 3, 4, 4), False, True, 1e-3),
    ]
    for name, x_shape, training, affine, eps in cases:
        fam.begin(name)
        c = x_shape[1]
        inputs = {"x": randn(*x_shape, scale=1.5) + 0.5}
        if affine:
            inputs["weight"] = 1.0 + randn(c, scale=0.2)
            inputs["bias"] = randn(c, scale=0.5)
        consts = {
            "running_mean": randn(c, scale=0.5),
            "running_var": torch.rand(c, dtype=F32) + 0.5,
        }

        def fn(x, running_mean, running_var, weight=None, bias=None):
            y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
            return y, {"running_mean_out": running_mean, "running_var_out": running_var}

        meta = {"op": "batch_norm", "training": training, "momentum": momentum, "eps": eps, "affine": affine}
        fam.grad_case(name, meta, inputs, fn, consts=consts)
    return fam


# --------------------------------------------------------------------------- #
# pool.safetensors
# --------------------------------------------------------------------------- #


def pool_out_size(n, k, s, p, ceil_mode):
    """PyTorch's pooling output size (a ceil-mode window may not start in the right padding)."""
    num = n + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def gen_pool():
    fam = Family("pool.safetensors")
    M, A = "max_pool", "avg_pool"
    # name, op, x shape, kernel, stride, padding, ceil_mode, count_include_pad (avg only)
    cases = [
        ("maxpool2d_k2_s2", M, (1, 2, 8, 8), (2, 2), (2, 2), (0, 0), False, None),
        ("maxpool2d_k3_s2_p1", M, (2, 3, 9, 9), (3, 3), (2, 2), (1, 1), False, None),
        ("maxpool2d_k3_s1_p1", M, (1, 2, 6, 7), (3, 3), (1, 1), (1, 1), False, None),
        ("maxpool2d_k2_s2_p1_ceil_drop", M, (1, 2, 5, 5), (2, 2), (2, 2), (1, 1), True, None),
        ("maxpool2d_k3_s2_ceil_14", M, (1, 2, 14, 14), (3, 3), (2, 2), (0, 0), True, None),
        ("maxpool2d_k3_s2_ceil_13", M, (1, 2, 13, 13), (3, 3), (2, 2), (0, 0), True, None),
        ("maxpool2d_k3_s2_ceil_14x13", M, (2, 1, 14, 13), (3, 3), (2, 2), (0, 0), True, None),
        ("maxpool3d_k133_s122_p011", M, (1, 2, 4, 9, 9), (1, 3, 3), (1, 2, 2), (0, 1, 1), False, None),
        ("maxpool3d_k211_s211", M, (1, 2, 6, 5, 5), (2, 1, 1), (2, 1, 1), (0, 0, 0), False, None),
        ("maxpool3d_k333_s2_p1", M, (1, 2, 5, 7, 7), (3, 3, 3), (2, 2, 2), (1, 1, 1), False, None),
        ("maxpool3d_k333_s122_p111", M, (2, 1, 4, 7, 7), (3, 3, 3), (1, 2, 2), (1, 1, 1), False, None),
        ("maxpool3d_k2_s2_p1_ceil_drop", M, (1, 2, 5, 5, 5), (2, 2, 2), (2, 2, 2), (1, 1, 1), True, None),
        ("maxpool3d_k133_s122_ceil", M, (1, 2, 3, 14, 13), (1, 3, 3), (1, 2, 2), (0, 0, 0), True, None),
        ("avgpool2d_k2_s2", A, (1, 2, 8, 6), (2, 2), (2, 2), (0, 0), False, True),
        ("avgpool2d_k3_s1_p1_incpad", A, (1, 2, 7, 7), (3, 3), (1, 1), (1, 1), False, True),
        ("avgpool2d_k3_s1_p1_excpad", A, (1, 2, 7, 7), (3, 3), (1, 1), (1, 1), False, False),
        ("avgpool2d_k3_s2_p1_ceil_incpad", A, (1, 2, 6, 6), (3, 3), (2, 2), (1, 1), True, True),
        ("avgpool2d_k3_s2_p1_ceil_excpad", A, (1, 2, 6, 6), (3, 3), (2, 2), (1, 1), True, False),
        ("avgpool3d_k333_s1_p1_incpad", A, (1, 2, 4, 6, 6), (3, 3, 3), (1, 1, 1), (1, 1, 1), False, True),
        ("avgpool3d_k333_s1_p1_excpad", A, (1, 2, 4, 6, 6), (3, 3, 3), (1, 1, 1), (1, 1, 1), False, False),
        ("avgpool3d_k477_global", A, (2, 3, 4, 7, 7), (4, 7, 7), (1, 1, 1), (0, 0, 0), False, True),
        ("avgpool3d_k277_s1", A, (1, 3, 4, 7, 7), (2, 7, 7), (1, 1, 1), (0, 0, 0), False, True),
        ("avgpool3d_k133_s122_p011_excpad", A, (1, 2, 3, 7, 8), (1, 3, 3), (1, 2, 2), (0, 1, 1), False, False),
        ("avgpool3d_k2_s2_p1_ceil_drop", A, (1, 2, 5, 5, 5), (2, 2, 2), (2, 2, 2), (1, 1, 1), True, True),
    ]
    for name, op, x_shape, kernel, stride, padding, ceil_mode, cip in cases:
        fam.begin(name)
        nd = len(kernel)
        meta = {"op": op, "kernel": list(kernel), "stride": list(stride), "padding": list(padding), "ceil_mode": ceil_mode}
        if op == M:
            x = distinct(*x_shape)
            pool = F.max_pool2d if nd == 2 else F.max_pool3d
            fn = lambda x: pool(x, kernel, stride, padding, ceil_mode=ceil_mode)
        else:
            x = randn(*x_shape)
            meta["count_include_pad"] = cip
            pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
            fn = lambda x: pool(x, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=cip)
        fam.grad_case(name, meta, {"x": x}, fn)
        # Cross-check the output-size rule, and that the "ceil_drop" cases really hit the
        # window-starting-in-padding rule (naive ceil would give one more output).
        y_shape = fam.tensors[f"{name}.y"].shape[2:]
        expect = tuple(pool_out_size(n, k, s, p, ceil_mode) for n, k, s, p in zip(x_shape[2:], kernel, stride, padding))
        assert tuple(y_shape) == expect, (name, y_shape, expect)
        if name.endswith("ceil_drop"):
            naive = tuple(-(-(n + 2 * p - k) // s) + 1 for n, k, s, p in zip(x_shape[2:], kernel, stride, padding))
            assert naive != tuple(y_shape), (name, naive, y_shape)

    # adaptive average pooling: name, x shape, output size
    adaptive = [
        ("adapt2d_7to3", (1, 3, 7, 7), (3, 3)),
        ("adapt2d_5x6to2x4", (2, 2, 5, 6), (2, 4)),
        ("adapt2d_global", (2, 3, 5, 7), (1, 1)),
        ("adapt3d_global", (2, 3, 4, 7, 7), (1, 1, 1)),
        ("adapt3d_577to233", (1, 2, 5, 7, 7), (2, 3, 3)),
        ("adapt3d_354to226", (1, 2, 3, 5, 4), (2, 2, 6)),
        ("adapt3d_t_only", (2, 2, 5, 3, 3), (2, 3, 3)),
    ]
    for name, x_shape, out_size in adaptive:
        fam.begin(name)
        pool = F.adaptive_avg_pool2d if len(out_size) == 2 else F.adaptive_avg_pool3d
        meta = {"op": "adaptive_avg_pool", "output_size": list(out_size)}
        fam.grad_case(name, meta, {"x": randn(*x_shape)}, lambda x: pool(x, out_size))
    return fam


# --------------------------------------------------------------------------- #
# elementwise.safetensors
# --------------------------------------------------------------------------- #


def gen_elementwise():
    fam = Family("elementwise.safetensors")
    for name, shape in [("relu_2d", (7, 13)), ("relu_5d", (2, 3, 4, 5, 5))]:
        fam.begin(name)
        fam.grad_case(name, {"op": "relu"}, {"x": away_from_zero(randn(*shape))}, lambda x: F.relu(x))
    for name, shape in [("add_2d", (5, 7)), ("add_5d", (2, 3, 3, 4, 5))]:
        fam.begin(name)
        fam.grad_case(name, {"op": "add"}, {"a": randn(*shape), "b": randn(*shape)}, lambda a, b: a + b)
    for name, shape, scalar in [("mul_scalar_half", (3, 11), 0.5), ("mul_scalar_neg", (2, 3, 4, 5), -1.75)]:
        fam.begin(name)
        fam.grad_case(name, {"op": "mul_scalar", "scalar": scalar}, {"x": randn(*shape)}, lambda x: x * scalar)
    return fam


# --------------------------------------------------------------------------- #
# layout.safetensors
# --------------------------------------------------------------------------- #


def gen_layout():
    fam = Family("layout.safetensors")
    # concat: name, dim, list of input shapes
    concats = [
        ("concat_dim0", 0, [(2, 3, 4), (3, 3, 4)]),
        ("concat_dim1_inception", 1, [(1, 2, 5, 5), (1, 3, 5, 5), (1, 1, 5, 5), (1, 4, 5, 5)]),
        ("concat_dim1_5d", 1, [(2, 2, 2, 3, 3), (2, 4, 2, 3, 3), (2, 3, 2, 3, 3)]),
        ("concat_last", 2, [(2, 3, 4), (2, 3, 1), (2, 3, 5)]),
        ("concat_last_neg", -1, [(2, 2, 3, 2), (2, 2, 3, 3)]),
        ("concat_5d_dim2", 2, [(1, 2, 2, 3, 3), (1, 2, 3, 3, 3)]),
    ]
    for name, dim, shapes in concats:
        fam.begin(name)
        n = len(shapes)
        inputs = {f"x{i}": randn(*s) for i, s in enumerate(shapes)}
        fn = lambda **xs: torch.cat([xs[f"x{i}"] for i in range(n)], dim)
        fam.grad_case(name, {"op": "concat", "dim": dim, "n": n}, inputs, fn)

    permutes = [
        ("permute_5d_btchw", (1, 4, 3, 5, 5), (0, 2, 1, 3, 4)),
        ("permute_5d_reverse", (2, 3, 4, 1, 5), (4, 3, 2, 1, 0)),
        ("permute_4d_reverse", (2, 3, 4, 5), (3, 2, 1, 0)),
        ("permute_3d_cycle", (3, 4, 5), (1, 2, 0)),
    ]
    for name, shape, dims in permutes:
        fam.begin(name)
        fam.grad_case(name, {"op": "permute", "dims": list(dims)}, {"x": randn(*shape)}, lambda x: x.permute(dims))

    transposes = [
        ("transpose_2d", (5, 7), 0, 1),
        ("transpose_5d_12", (2, 3, 4, 3, 2), 1, 2),
        ("transpose_4d_13", (2, 3, 4, 5), 1, 3),
    ]
    for name, shape, d0, d1 in transposes:
        fam.begin(name)
        meta = {"op": "transpose", "dim0": d0, "dim1": d1}
        fam.grad_case(name, meta, {"x": randn(*shape)}, lambda x: x.transpose(d0, d1))

    reshapes = [
        ("reshape_2d_to_4d", (6, 10), (2, 3, 5, 2)),
        ("reshape_5d_merge", (2, 3, 4, 5, 5), (6, 4, 25)),
        ("reshape_to_1d", (3, 4, 5), (60,)),
    ]
    for name, shape, new_shape in reshapes:
        fam.begin(name)
        meta = {"op": "reshape", "shape": list(new_shape)}
        fam.grad_case(name, meta, {"x": randn(*shape)}, lambda x: x.reshape(new_shape))

    flattens = [
        ("flatten_1_end", (2, 3, 4, 5), 1, -1),
        ("flatten_5d_12", (2, 3, 4, 5, 5), 1, 2),
        ("flatten_all", (3, 4, 5), 0, -1),
        ("flatten_5d_24", (1, 2, 3, 4, 5), 2, 4),
    ]
    for name, shape, start, end in flattens:
        fam.begin(name)
        meta = {"op": "flatten", "start_dim": start, "end_dim": end}
        fam.grad_case(name, meta, {"x": randn(*shape)}, lambda x: torch.flatten(x, start, end))
    return fam


# --------------------------------------------------------------------------- #
# linalg.safetensors
# --------------------------------------------------------------------------- #


def gen_linalg():
    fam = Family("linalg.safetensors")
    # linear: name, x shape, out features, bias
    linears = [
        ("linear_bias", (5, 7), 3, True),
        ("linear_nobias", (4, 9), 6, False),
        ("linear_3d_bias", (2, 3, 8), 5, True),
        ("linear_classifier", (2, 64), 10, True),
    ]
    for name, x_shape, out_f, bias in linears:
        fam.begin(name)
        in_f = x_shape[-1]
        inputs = {"x": randn(*x_shape), "w": randn(out_f, in_f, scale=in_f**-0.5)}
        if bias:
            inputs["b"] = randn(out_f, scale=in_f**-0.5)
        fam.grad_case(name, {"op": "linear", "bias": bias}, inputs, lambda x, w, b=None: F.linear(x, w, b))

    matmuls = [
        ("matmul_2d", (5, 7), (7, 3)),
        ("matmul_2d_odd", (13, 17), (17, 11)),
        ("matmul_3d", (3, 5, 7), (3, 7, 4)),
        ("matmul_3d_odd", (2, 9, 13), (2, 13, 6)),
    ]
    for name, a_shape, b_shape in matmuls:
        fam.begin(name)
        inputs = {"a": randn(*a_shape), "b": randn(*b_shape, scale=a_shape[-1] ** -0.5)}
        fam.grad_case(name, {"op": "matmul"}, inputs, lambda a, b: torch.matmul(a, b))
    return fam


# --------------------------------------------------------------------------- #
# softmax.safetensors
# --------------------------------------------------------------------------- #


def gen_softmax():
    fam = Family("softmax.safetensors")
    # name suffix, x shape, dim, scale of the logits
    cases = [
        ("2d_last", (5, 10), -1, 1.0),
        ("4d_dim1", (2, 5, 3, 4), 1, 1.0),
        ("2d_dim0", (6, 4), 0, 1.0),
        ("2d_last_large", (3, 7), -1, 10.0),
    ]
    for op, fn in [("softmax", F.softmax), ("log_softmax", F.log_softmax)]:
        for suffix, shape, dim, scale in cases:
            name = f"{op}_{suffix}"
            fam.begin(name)
            fam.grad_case(name, {"op": op, "dim": dim}, {"x": randn(*shape, scale=scale)}, lambda x: fn(x, dim))
    return fam


# --------------------------------------------------------------------------- #
# loss.safetensors
# --------------------------------------------------------------------------- #


def gen_loss():
    fam = Family("loss.safetensors")
    # name, N, C, label smoothing, upstream gradient
    cases = [
        ("ce_n5_c10", 5, 10, 0.0, 1.0),
        ("ce_n5_c10_ls01", 5, 10, 0.1, 1.0),
        ("ce_n1_c2", 1, 2, 0.0, 1.0),
        ("ce_n5_c2_ls01", 5, 2, 0.1, 0.7),
        ("ce_n1_c400_ls01", 1, 400, 0.1, 0.7),
        ("ce_n5_c400", 5, 400, 0.0, 0.7),
        ("ce_n1_c10_g07", 1, 10, 0.0, 0.7),
    ]
    for name, n, c, ls, g in cases:
        fam.begin(name)
        logits = randn(n, c, scale=2.0)
        labels = torch.randint(0, c, (n,), dtype=torch.int64)
        fn = lambda logits, labels: F.cross_entropy(logits, labels, label_smoothing=ls).reshape(1)
        meta = {"op": "cross_entropy", "label_smoothing": ls}
        fam.grad_case(name, meta, {"logits": logits}, fn, consts={"labels": labels}, gy=torch.tensor([g], dtype=F32))
    return fam


# --------------------------------------------------------------------------- #
# upsample.safetensors
# --------------------------------------------------------------------------- #


def gen_upsample():
    fam = Family("upsample.safetensors")
    # name, x shape, output size, align_corners
    cases = [
        ("up_234_to_579", (2, 3, 2, 3, 4), (5, 7, 9), False),
        ("up_234_to_579_ac", (2, 3, 2, 3, 4), (5, 7, 9), True),
        ("down_6910_to_345", (1, 2, 6, 9, 10), (3, 4, 5), False),
        ("down_6910_to_345_ac", (1, 2, 6, 9, 10), (3, 4, 5), True),
        ("mixed_456_to_439", (1, 2, 4, 5, 6), (4, 3, 9), False),
        ("mixed_456_to_439_ac", (1, 2, 4, 5, 6), (4, 3, 9), True),
        ("gradcam_277_to_85656", (1, 1, 2, 7, 7), (8, 56, 56), False),
    ]
    for name, x_shape, size, ac in cases:
        fam.begin(name)
        meta = {"op": "upsample_trilinear", "size": list(size), "align_corners": ac}
        fn = lambda x: F.interpolate(x, size=size, mode="trilinear", align_corners=ac)
        fam.grad_case(name, meta, {"x": randn(*x_shape)}, fn)
    return fam


# --------------------------------------------------------------------------- #
# attention.safetensors
# --------------------------------------------------------------------------- #


def nonlocal_attention(q, k, v, scale):
    """y[b,:,n] = sum_m softmax_m(scale * <q[b,:,n], k[b,:,m]>) v[b,:,m]."""
    logits = torch.einsum("bcn,bcm->bnm", q, k) * scale
    p = torch.softmax(logits, dim=-1)
    return torch.einsum("bnm,bcm->bcn", p, v)


def gen_attention():
    fam = Family("attention.safetensors")
    # name, B, C, N, M, Cv, scale
    cases = [
        ("attn_small", 2, 4, 12, 6, 4, 4**-0.5),
        ("attn_odd", 1, 5, 13, 7, 5, 5**-0.5),
        ("attn_cv_ne_c", 2, 3, 9, 11, 6, 3**-0.5),
        ("attn_scale1", 1, 8, 10, 10, 2, 1.0),
    ]
    for name, b, c, n, m, cv, scale in cases:
        fam.begin(name)
        inputs = {"q": randn(b, c, n), "k": randn(b, c, m), "v": randn(b, cv, m)}
        meta = {"op": "attention", "scale": scale}
        fam.grad_case(name, meta, inputs, lambda q, k, v: nonlocal_attention(q, k, v, scale))
    return fam


# --------------------------------------------------------------------------- #
# dropout.safetensors
# --------------------------------------------------------------------------- #


def gen_dropout():
    fam = Family("dropout.safetensors")
    for name, shape, p in [("dropout_eval_p05", (4, 10), 0.5), ("dropout_eval_p03_5d", (1, 2, 3, 4, 4), 0.3)]:
        fam.begin(name)
        meta = {"op": "dropout", "p": p, "training": False}
        fam.grad_case(name, meta, {"x": randn(*shape)}, lambda x: F.dropout(x, p, training=False))

    # Training: the mask RNG cannot match, so PyTorch's own mask is recovered from y
    # (x is kept away from 0) and stored; y == x * mask / (1 - p), gx == gy * mask / (1 - p).
    name, p = "dropout_train_p03", 0.3
    fam.begin(name)

    def fn(x):
        y = F.dropout(x, p, training=True)
        mask = (y != 0).to(y.dtype)
        assert torch.allclose(y, x * mask / (1 - p), rtol=0, atol=1e-12)
        assert 0 < mask.sum() < mask.numel()
        return y, {"mask": mask}

    meta = {"op": "dropout", "p": p, "training": True}
    fam.grad_case(name, meta, {"x": away_from_zero(randn(4, 50))}, fn)
    return fam


# --------------------------------------------------------------------------- #
# nonfinite.safetensors
# --------------------------------------------------------------------------- #

NAN, INF = float("nan"), float("inf")


# --------------------------------------------------------------------------- #
# math_mode.safetensors: --math bf16 against PyTorch's own bfloat16 conversion
# --------------------------------------------------------------------------- #


def to_bf16(t):
    """PyTorch's float -> bfloat16 conversion (round to nearest even), back in float64."""
    return t.to(torch.bfloat16).to(F64)


def bf16_edge_values():
    """float32 values that test the rounding: exact ties (low half 0x8000) above even and odd
    bfloat16 neighbours, one ulp either side of a tie, subnormals, the largest finite float (rounds
    to +Inf), signed zeros, infinities, NaN, and random values over the whole exponent range."""
    hi = np.array([0x3F80, 0x3F81, 0x4049, 0xC049, 0x0001, 0x8001, 0x7F7E, 0x7F7F, 0xFF7F, 0x0080, 0x0000], np.uint32)
    lows = np.array([0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF, 0x0001], np.uint32)
    bits = (hi[:, None] << 16 | lows[None, :]).ravel()
    special = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F7FFFFF, 0x00000001], np.uint32)
    rng = np.random.default_rng(20261203)
    random = rng.integers(0, 2**32, size=4000, dtype=np.uint64).astype(np.uint32)
    random = random[(random & 0x7F800000) != 0x7F800000]  # finite (NaN and Inf are in `special`)
    all_bits = np.concatenate([bits, special, random])
    return torch.from_numpy(all_bits.view(np.float32).copy())


def gen_math_mode():
    fam = Family("math_mode.safetensors")
    fam.begin("round_bf16")
    x = bf16_edge_values()
    fam.store("round_bf16", {"op": "round_bf16"}, {"x": x, "y": x.to(torch.bfloat16).to(F32)})

    # conv3d and matmul with both operands rounded by PyTorch, products summed in float64. vidgrad's
    # CPU backend in bf16 mode rounds the same operands (forward: x, w; dgrad: dy, w; wgrad: x, dy;
    # bias unrounded) and accumulates in float32; the test states the bound.
    fam.begin("conv3d_bf16")
    x = randn(2, 5, 3, 6, 7)
    w = randn(4, 5, 3, 3, 3, scale=135**-0.5)
    b = randn(4, scale=135**-0.5)
    xr, wr = to_bf16(x).requires_grad_(True), to_bf16(w).requires_grad_(True)
    y = F.conv3d(xr, wr, b.to(F64), 1, 1)
    gy = randn(*y.shape)
    gx, gw = torch.autograd.grad(y, [xr, wr], to_bf16(gy))
    meta = {"op": "conv_bf16", "stride": [1, 1, 1], "padding": [1, 1, 1], "dilation": [1, 1, 1], "groups": 1, "bias": True}
    fam.store("conv3d_bf16", meta, {"x": x, "w": w, "b": b, "y": y, "gy": gy, "gx": gx, "gw": gw})

    fam.begin("matmul_bf16")
    a = randn(3, 37, 29)
    bm = randn(3, 29, 18)
    ar, br = to_bf16(a).requires_grad_(True), to_bf16(bm).requires_grad_(True)
    y = ar @ br
    gy = randn(*y.shape)
    ga, gb = torch.autograd.grad(y, [ar, br], to_bf16(gy))
    fam.store("matmul_bf16", {"op": "matmul_bf16"}, {"a": a, "b": bm, "y": y, "gy": gy, "ga": ga, "gb": gb})
    return fam


def poke(x, values):
    """A copy of x with ``values[i]`` at flat index i (NaN/Inf placed where a case needs them)."""
    flat = x.clone().reshape(-1)
    for i, v in values.items():
        flat[i] = v
    return flat.reshape(x.shape)


def gen_nonfinite():
    """NaN and ±Inf inputs for every op whose handling of them is not plain IEEE arithmetic on each
    value: maxima (relu, max pooling, the max of softmax / cross entropy / attention), sums over
    windows and channels (pooling, batch norm, conv, linear, interpolation). Same ops, metadata and
    tensor names as the finite cases in the other files; gradients may be non-finite too."""
    fam = Family("nonfinite.safetensors")

    # relu: relu(NaN) = NaN and its gradient passes (threshold_backward zeroes only where y <= 0).
    name = "relu_nonfinite"
    fam.begin(name)
    x = poke(away_from_zero(randn(3, 8)), {1: NAN, 5: INF, 9: -INF, 12: NAN, 20: -INF})
    fam.grad_case(name, {"op": "relu"}, {"x": x}, lambda x: F.relu(x))

    # max pooling: a NaN in a window wins (the last NaN when several, PyTorch's `val > max || isnan`),
    # +Inf is an ordinary maximum, an all -Inf window gives -Inf with the gradient at its first tap.
    M = "max_pool"
    # name, x shape, kernel, stride, padding, ceil_mode, {flat index: value}
    pools = [
        ("maxpool2d_k2_s2_nan", (1, 2, 6, 6), (2, 2), (2, 2), (0, 0), False,
         {0: NAN, 7: NAN, 3: INF, 12: -INF, 13: -INF, 18: -INF, 19: -INF, 14: NAN, 15: INF, 71: NAN}),
        ("maxpool2d_k3_s2_p1_nan", (1, 1, 7, 7), (3, 3), (2, 2), (1, 1), False,
         {24: NAN, 0: NAN, 6: -INF, 30: INF, 31: NAN}),
        ("maxpool2d_k3_s2_ceil_nan", (1, 1, 8, 8), (3, 3), (2, 2), (0, 0), True, {63: NAN, 62: INF, 20: NAN}),
        ("maxpool3d_k333_s2_p1_nan", (1, 2, 5, 5, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), False,
         {0: NAN, 62: NAN, 63: INF, 124: -INF, 130: NAN, 200: INF}),
        ("maxpool3d_k133_s122_p011_nan", (1, 2, 3, 6, 6), (1, 3, 3), (1, 2, 2), (0, 1, 1), False,
         {7: NAN, 8: NAN, 40: INF, 41: NAN, 100: -INF}),
    ]
    for name, x_shape, kernel, stride, padding, ceil_mode, bad in pools:
        fam.begin(name)
        pool = F.max_pool2d if len(kernel) == 2 else F.max_pool3d
        meta = {"op": M, "kernel": list(kernel), "stride": list(stride), "padding": list(padding), "ceil_mode": ceil_mode}
        fn = lambda x: pool(x, kernel, stride, padding, ceil_mode=ceil_mode)
        fam.grad_case(name, meta, {"x": poke(distinct(*x_shape), bad)}, fn)

    # average pooling: NaN and Inf spread to every window holding them; +Inf and -Inf in one window
    # give NaN. The gradient does not read x, so it stays finite.
    A = "avg_pool"
    avgs = [
        ("avgpool2d_k3_s1_p1_incpad_nan", (1, 2, 5, 5), (3, 3), (1, 1), (1, 1), False, True,
         {6: NAN, 18: INF, 20: -INF, 30: INF}),
        ("avgpool3d_k2_s2_p1_ceil_excpad_nan", (1, 1, 4, 5, 5), (2, 2, 2), (2, 2, 2), (1, 1, 1), True, False,
         {0: NAN, 31: INF, 99: -INF}),
    ]
    for name, x_shape, kernel, stride, padding, ceil_mode, cip, bad in avgs:
        fam.begin(name)
        pool = F.avg_pool2d if len(kernel) == 2 else F.avg_pool3d
        meta = {"op": A, "kernel": list(kernel), "stride": list(stride), "padding": list(padding),
                "ceil_mode": ceil_mode, "count_include_pad": cip}
        fn = lambda x: pool(x, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=cip)
        fam.grad_case(name, meta, {"x": poke(randn(*x_shape), bad)}, fn)

    adaptive = [
        ("adapt3d_577to233_nan", (1, 2, 5, 7, 7), (2, 3, 3), {10: NAN, 100: INF, 300: -INF}),
        ("adapt2d_global_inf", (1, 3, 4, 4), (1, 1), {1: INF, 2: -INF, 17: INF, 40: NAN}),
    ]
    for name, x_shape, out_size, bad in adaptive:
        fam.begin(name)
        pool = F.adaptive_avg_pool2d if len(out_size) == 2 else F.adaptive_avg_pool3d
        meta = {"op": "adaptive_avg_pool", "output_size": list(out_size)}
        fam.grad_case(name, meta, {"x": poke(randn(*x_shape), bad)}, lambda x: pool(x, out_size))

    # softmax / log-softmax: a NaN or +Inf in a line makes the line NaN; -Inf entries get probability
    # 0; an all -Inf line is NaN. Along the last dim (rows) and along dim 1 (strided lines).
    softmaxes = [
        ("2d_last", (5, 6), -1, {2: NAN, 6: INF, 13: -INF, 16: -INF, **{18 + j: -INF for j in range(6)}}),
        ("4d_dim1", (2, 4, 3, 2), 1, {0: NAN, 7: -INF, 13: -INF, 25: INF, 27: -INF, 33: -INF, 39: -INF, 45: -INF}),
    ]
    for op, fn in [("softmax", F.softmax), ("log_softmax", F.log_softmax)]:
        for suffix, shape, dim, bad in softmaxes:
            name = f"{op}_{suffix}_nonfinite"
            fam.begin(name)
            fam.grad_case(name, {"op": op, "dim": dim}, {"x": poke(randn(*shape), bad)}, lambda x: fn(x, dim))

    # batch norm: a NaN or Inf in a channel makes that channel's statistics, output and input gradient
    # NaN in training (Inf - Inf in the variance); in eval mode only that element's output, and the
    # weight gradient. A NaN running mean (NaN weights in a checkpoint) poisons its channel.
    momentum = 0.1
    bns = [
        ("bn2d_train_nonfinite", (3, 3, 4, 4), True, {5: NAN, 20: INF}, {}),
        ("bn3d_train_nonfinite", (2, 3, 2, 3, 3), True, {18: -INF, 19: INF, 60: NAN}, {}),
        ("bn3d_eval_nonfinite", (2, 3, 2, 3, 3), False, {1: NAN, 30: INF, 70: -INF}, {}),
        ("bn2d_eval_nan_running_mean", (2, 3, 3, 3), False, {}, {1: NAN}),
    ]
    for name, x_shape, training, bad, bad_mean in bns:
        fam.begin(name)
        c = x_shape[1]
        inputs = {
            "x": poke(randn(*x_shape, scale=1.5) + 0.5, bad),
            "weight": 1.0 + randn(c, scale=0.2),
            "bias": randn(c, scale=0.5),
        }
        consts = {
            "running_mean": poke(randn(c, scale=0.5), bad_mean),
            "running_var": torch.rand(c, dtype=F32) + 0.5,
        }

        def fn(x, running_mean, running_var, weight, bias):
            y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, 1e-5)
            return y, {"running_mean_out": running_mean, "running_var_out": running_var}

        meta = {"op": "batch_norm", "training": training, "momentum": momentum, "eps": 1e-5, "affine": True}
        fam.grad_case(name, meta, inputs, fn, consts=consts)

    # cross entropy: a NaN or +Inf logit makes its row's loss (so the mean) and gradient NaN; a -Inf
    # logit of a wrong class is probability 0 (finite loss), but with label smoothing, or on the true
    # class, the loss is +Inf.
    # name, N, C, labels, label smoothing, {flat index: value}
    ces = [
        ("ce_nan_row", 3, 5, [0, 3, 4], 0.0, {7: NAN}),
        ("ce_posinf", 2, 4, [1, 2], 0.1, {1: INF}),
        ("ce_neginf", 3, 5, [0, 3, 4], 0.0, {1: -INF, 13: -INF}),
        ("ce_neginf_target", 2, 3, [2, 0], 0.0, {2: -INF}),
        ("ce_neginf_ls01", 3, 5, [0, 3, 4], 0.1, {1: -INF}),
    ]
    for name, n, c, labels, ls, bad in ces:
        fam.begin(name)
        fn = lambda logits, labels: F.cross_entropy(logits, labels, label_smoothing=ls).reshape(1)
        meta = {"op": "cross_entropy", "label_smoothing": ls}
        fam.grad_case(name, meta, {"logits": poke(randn(n, c, scale=2.0), bad)}, fn,
                      consts={"labels": torch.tensor(labels, dtype=torch.int64)}, gy=torch.tensor([1.0], dtype=F32))

    # Sums of products: a NaN input or weight reaches every output it touches, and NaN·0 is NaN.
    # A NaN weight also reaches the outputs whose window puts it on the zero padding (0·NaN), but not
    # the input gradient through taps that have no output (col2im adds nothing there).
    # name, x shape, C_out, kernel, padding, groups, bias, bad x, bad w
    convs = [
        ("conv2d_k3_p1_nan_x", (1, 2, 6, 6), 3, (3, 3), (1, 1), 1, True, {8: NAN, 50: INF}, {}),
        ("conv3d_k333_p1_nan_w", (1, 2, 3, 4, 4), 2, (3, 3, 3), (1, 1, 1), 1, False, {}, {5: NAN}),
        ("conv2d_dw_k3_p1_nan_w", (1, 3, 5, 5), 3, (3, 3), (1, 1), 3, True, {}, {0: NAN, 13: INF}),
        ("conv3d_dw_k333_p1_nan_x", (1, 2, 3, 4, 4), 2, (3, 3, 3), (1, 1, 1), 2, False, {20: NAN, 60: -INF}, {3: INF}),
    ]
    for name, x_shape, c_out, kernel, padding, groups, bias, bad_x, bad_w in convs:
        fam.begin(name)
        c_in = x_shape[1]
        fan_in = c_in // groups * math.prod(kernel)
        w = randn(c_out, c_in // groups, *kernel, scale=fan_in**-0.5)
        inputs = {"x": poke(randn(*x_shape), bad_x), "w": poke(w, bad_w)}
        if bias:
            inputs["b"] = randn(c_out, scale=fan_in**-0.5)
        conv = F.conv2d if len(kernel) == 2 else F.conv3d
        stride, dilation = [1] * len(kernel), [1] * len(kernel)
        meta = {"op": "conv", "stride": stride, "padding": list(padding), "dilation": dilation, "groups": groups, "bias": bias}
        fam.grad_case(name, meta, inputs, lambda x, w, b=None: conv(x, w, b, stride, padding, dilation, groups))

    name = "linear_nonfinite"
    fam.begin(name)
    inputs = {"x": poke(randn(4, 6), {7: NAN}), "w": poke(randn(3, 6, scale=6**-0.5), {16: INF}), "b": randn(3, scale=0.4)}
    fam.grad_case(name, {"op": "linear", "bias": True}, inputs, lambda x, w, b: F.linear(x, w, b))

    # Trilinear interpolation: every output whose 8 neighbours include a NaN is NaN, even at weight 0.
    for name, ac in [("up_234_to_579_nan", False), ("up_234_to_579_ac_nan", True)]:
        fam.begin(name)
        meta = {"op": "upsample_trilinear", "size": [5, 7, 9], "align_corners": ac}
        fn = lambda x: F.interpolate(x, size=(5, 7, 9), mode="trilinear", align_corners=ac)
        fam.grad_case(name, meta, {"x": poke(randn(1, 2, 2, 3, 4), {5: NAN, 30: INF})}, fn)

    # Dropout (training) is x·mask·scale: a dropped NaN or ±Inf gives NaN, not 0. The mask is PyTorch's
    # own, drawn again from the same seed on ones (the draw depends on the shape only).
    name, p = "dropout_train_nonfinite", 0.5
    fam.begin(name)

    def fn(x):
        torch.manual_seed(1234)
        mask = (F.dropout(torch.ones_like(x), p, training=True) != 0).to(x.dtype)
        torch.manual_seed(1234)
        y = F.dropout(x, p, training=True)
        torch.testing.assert_close(y, x * mask / (1 - p), rtol=0, atol=1e-12, equal_nan=True)
        assert 0 < mask.sum() < mask.numel()
        return y, {"mask": mask}

    bad = {1: NAN, 6: INF, 9: -INF, 17: NAN, 22: NAN, 30: INF, 41: NAN, 50: -INF, 63: NAN}
    fam.grad_case(name, {"op": "dropout", "p": p, "training": True}, {"x": poke(randn(4, 16), bad)}, fn)

    # Attention: a NaN query makes its own output NaN; the key and value gradients see every query.
    name = "attn_nan_query"
    fam.begin(name)
    inputs = {"q": poke(randn(1, 4, 6), {2: NAN}), "k": randn(1, 4, 5), "v": randn(1, 3, 5)}
    fam.grad_case(name, {"op": "attention", "scale": 0.5}, inputs, lambda q, k, v: nonlocal_attention(q, k, v, 0.5))
    return fam


# --------------------------------------------------------------------------- #


GENERATORS = [
    gen_conv,
    gen_batchnorm,
    gen_pool,
    gen_elementwise,
    gen_layout,
    gen_linalg,
    gen_softmax,
    gen_loss,
    gen_upsample,
    gen_attention,
    gen_dropout,
    gen_nonfinite,
    gen_math_mode,
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures/ops", help="output directory (default: %(default)s)")
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    total = 0
    for gen in GENERATORS:
        fam = gen()
        path = fam.write(out_dir)
        size = path.stat().st_size
        total += size
        print(f"{path.name:24s} {len(fam.meta):3d} cases {size:9d} bytes")
    print(f"{'total':24s} {'':9s} {total:9d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

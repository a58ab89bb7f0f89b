#!/usr/bin/env python3
"""Time PyTorch on exactly the rows of vidgrad's benchmark suite and print the ratios.

vidgrad's `cargo bench --bench suite` writes target/bench/kernels_<dev>.json (every kernel call of the models'
graphs, each pass) and models_<dev>.json (whole-model inference and training steps). This script rebuilds each
row in PyTorch with the same shapes, the same number of calls and, on the GPU, the same input rotation, times it
the same way and prints vidgrad / PyTorch (> 1: vidgrad is slower).

    # CPU: same machine, same thread count (read from the JSON)
    cargo bench --bench suite -- cpu
    python tools/bench/torch_side_by_side.py --device cpu

    # GPU: both sides in one run on the same GPU (the bench first, then PyTorch)
    python tools/bench/torch_side_by_side.py --device cuda --ours-cmd "cargo bench --bench suite -- cuda"
    python tools/bench/torch_side_by_side.py --device cuda --ours-cmd "bin/suite cuda"   # GPU bundle

    # whole models on a machine whose speed drifts (shared vCPUs): R rounds, each vidgrad then PyTorch
    # on one model back to back; per-round ratios and their median
    python tools/bench/torch_side_by_side.py --device cpu --rounds 3 --ours-cmd "cargo bench --bench suite -- cpu models"
    # the same for the kernel rows: per model and round, the total's and every family's ratio, their median
    python tools/bench/torch_side_by_side.py --device cpu --only kernels --rounds 3 \
        --ours-cmd "cargo bench --bench suite -- cpu kernels"

Each vidgrad row records its math mode (`math`); PyTorch runs it in the matching setting (TORCH_SETTINGS):
  fp32  TF32 off everywhere (cudnn.allow_tf32 = matmul.allow_tf32 = False): the like-for-like FP32 comparison.
  tf32  cudnn.allow_tf32 = True (PyTorch's default, cuDNN's TF32 convolutions) and matmul.allow_tf32 = True.
        PyTorch's matmul default is FP32 (allow_tf32 False, float32_matmul_precision "highest"); our tf32
        linear/matmul rows round operands to TF32, so the same arithmetic in PyTorch is matmul TF32 on — against
        PyTorch's FP32 default matmul they would be compared with a slower, more exact computation. (Our fp32
        rows against "fp32" are the comparison with PyTorch's default matmul.)
  bf16  torch.autocast(device, dtype=torch.bfloat16): FP32 tensors in memory, cast by autocast at each product
        (our kernels also keep FP32 in memory and round operands as they load them); the backward passes are
        autograd of the autocast forward (what an autocast training step runs, its casts included).
Rows of families that multiply in FP32 in every mode (attention, depthwise conv, everything memory-bound) are
"fp32" rows. On CUDA every row is timed twice, with torch.backends.cudnn.benchmark off (PyTorch's default) and on
(cuDNN autotunes per shape during the warm-up calls). Timing: CUDA events around each call after 3 warm-up calls,
median of the same number of runs vidgrad made (>= 20), inputs rotated over the same number of copies; CPU:
perf_counter, one warm-up, the same number of runs, one column (CPU PyTorch has no TF32: its tf32 rows compute in
FP32; its bf16 rows run under CPU autocast). Whole models: wall clock with synchronisation, per math mode in the
same settings, the models of tools/reference/models (and torchvision's r2plus1d_18) with the same classes,
dropout and input, SGD with the same hyper-parameters.

Writes target/bench/side_by_side_<dev>.json and .md. Uses tools/reference/requirements.txt.
"""

import argparse
import contextlib
import ctypes
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "reference"))


def settle_allocator():
    """glibc's allocator thresholds fixed, as the suite's `settle_allocator` fixes them for vidgrad: buffers
    neither mapped per call nor trimmed away between calls, so PyTorch's kernel rows time kernels, not page
    faults (M_MMAP_THRESHOLD = -3: 32 MiB, M_TRIM_THRESHOLD = -1: never)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to fix
    libc.mallopt(-3, 32 << 20)
    libc.mallopt(-1, 2**31 - 1)


settle_allocator()


# --------------------------------------------------------------------------------------------------------------
# timing

class Clock:
    def __init__(self, cuda):
        self.cuda = cuda

    def kernel(self, fn, runs, warmup):
        """fn(i) enqueues call i; returns the median seconds of `runs` timed calls."""
        i = 0
        for _ in range(warmup):
            fn(i)
            i += 1
        if self.cuda:
            torch.cuda.synchronize()
            evs = []
            for _ in range(runs):
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)
                a.record()
                fn(i)
                b.record()
                evs.append((a, b))
                i += 1
            torch.cuda.synchronize()
            ts = [a.elapsed_time(b) / 1e3 for a, b in evs]
        else:
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn(i)
                ts.append(time.perf_counter() - t0)
                i += 1
        return statistics.median(ts)

    def step(self, fn, runs, warmup):
        """Wall clock per call, synchronised (whole models)."""
        ts = []
        for i in range(warmup + runs):
            if self.cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(i)
            if self.cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)


# --------------------------------------------------------------------------------------------------------------
# settings: PyTorch's counterpart of each of vidgrad's math modes, with cudnn.benchmark off or on

TORCH_SETTINGS = {
    "fp32": "TF32 off (cudnn.allow_tf32 = matmul.allow_tf32 = False)",
    "tf32": "cudnn.allow_tf32 = True (the default), matmul.allow_tf32 = True",
    "bf16": "torch.autocast(dtype=torch.bfloat16)",
}


@contextlib.contextmanager
def torch_setting(math, dev, benchmark):
    """PyTorch set up for vidgrad's math mode `math` (TORCH_SETTINGS), cudnn.benchmark as given."""
    if math not in TORCH_SETTINGS:
        raise ValueError(f"unknown math mode {math!r} in vidgrad's JSON (expected {', '.join(TORCH_SETTINGS)})")
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    tf32 = math == "tf32"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark
    try:
        if math == "bf16":
            with torch.autocast(dev, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved


# --------------------------------------------------------------------------------------------------------------
# kernels: one builder per family returns {pass: fn(set)} and a function making one input set

def rnd(shape, dev, a=1.0, b=0.0):
    return torch.rand(*shape, device=dev).mul_(2 * a).add_(b - a)


def autocast_grads(make_inputs, op, wrt):
    """bf16 rows of conv and linear: the forward under autocast (the caller's context), the backward passes
    autograd of it — {pass: indices of the inputs whose gradients that pass computes}."""
    def make():
        s = make_inputs()
        ins = [t.requires_grad_() if t is not None else None for t in s["ins"]]
        s["y"] = op(*ins)
        s["dy"] = s["dy"].to(s["y"].dtype)
        return s

    def fwd(s):
        with torch.no_grad():
            return op(*s["ins"])

    def grads(idx):
        return lambda s: torch.autograd.grad(s["y"], [s["ins"][i] for i in idx if s["ins"][i] is not None], s["dy"],
                                             retain_graph=True)
    return make, dict(fwd=fwd, **{p: grads(idx) for p, idx in wrt.items()})


def conv_row(args, dev, math):
    x_s, w_s = args["x"], args["w"]
    dims = len(x_s) - 2
    conv = F.conv2d if dims == 2 else F.conv3d
    st, pd, dl, g = args["stride"], args["padding"], args["dilation"], args["groups"]
    bias = args["bias"]

    def make():
        return dict(x=rnd(x_s, dev), w=rnd(w_s, dev, 0.05), dy=rnd(args["y"], dev),
                    b=rnd([w_s[0]], dev, 0.1) if bias else None)

    if math == "bf16":
        return autocast_grads(lambda: (lambda s: dict(ins=[s["x"], s["w"], s["b"]], dy=s["dy"]))(make()),
                              lambda x, w, b: conv(x, w, b, st, pd, dl, g), {"dgrad": [0], "wgrad": [1, 2]})

    def bwd(s, mask):
        return torch.ops.aten.convolution_backward(
            s["dy"], s["x"], s["w"], [w_s[0]] if bias else None, st, pd, dl, False, [0] * dims, g, mask)

    return make, {
        "fwd": lambda s: conv(s["x"], s["w"], s["b"], st, pd, dl, g),
        "dgrad": lambda s: bwd(s, [True, False, False]),
        "wgrad": lambda s: bwd(s, [False, True, bias]),
    }


def batch_norm_row(args, dev):
    x_s, eps = args["x"], args["eps"]
    c = x_s[1]

    def make():
        s = dict(x=rnd(x_s, dev).requires_grad_(), w=rnd([c], dev, 0.1, 1.0).requires_grad_(),
                 b=rnd([c], dev, 0.1).requires_grad_(), rm=rnd([c], dev, 0.1), rv=rnd([c], dev, 0.25, 1.0),
                 dy=rnd(x_s, dev))
        s["y"] = F.batch_norm(s["x"], s["rm"].clone(), s["rv"].clone(), s["w"], s["b"], True, 0.1, eps)
        return s

    def fwd(s, training):
        with torch.no_grad():
            return F.batch_norm(s["x"], s["rm"], s["rv"], s["w"], s["b"], training, 0.1, eps)

    return make, {
        "fwd": lambda s: fwd(s, True),
        "fwd_eval": lambda s: fwd(s, False),
        "bwd": lambda s: torch.autograd.grad(s["y"], [s["x"], s["w"], s["b"]], s["dy"], retain_graph=True),
    }


def autograd_row(make_inputs, op):
    """A family whose backward is PyTorch's autograd of `op` (what a training step runs)."""
    def make():
        s = make_inputs()
        ins = [t.requires_grad_() for t in s["ins"]]
        s["y"] = op(*ins)
        s["dy"] = s["dy"].to(s["y"].dtype)  # bf16 under autocast
        return s

    def fwd(s):
        with torch.no_grad():
            return op(*s["ins"])

    return make, {
        "fwd": fwd,
        "bwd": lambda s: torch.autograd.grad(s["y"], s["ins"], s["dy"], retain_graph=True),
    }


def pool_row(fam, args, dev):
    x_s = args["x"]
    dims = len(x_s) - 2
    if fam == "max_pool":
        pool = F.max_pool2d if dims == 2 else F.max_pool3d
        op = lambda x: pool(x, args["kernel"], args["stride"], args["padding"], ceil_mode=args["ceil_mode"])
    elif fam == "avg_pool":
        pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
        op = lambda x: pool(x, args["kernel"], args["stride"], args["padding"], ceil_mode=args["ceil_mode"],
                            count_include_pad=args["count_include_pad"])
    else:
        pool = F.adaptive_avg_pool2d if dims == 2 else F.adaptive_avg_pool3d
        op = lambda x: pool(x, args["output"])
    y_s = list(op(torch.empty(*x_s, device="meta")).shape)
    make, passes = autograd_row(lambda: dict(ins=[rnd(x_s, dev)], dy=rnd(y_s, dev)), op)
    if fam == "max_pool":
        # vidgrad's fwd is the training forward (it saves the argmax): PyTorch's is the forward that
        # returns the indices; fwd_eval the plain forward of inference.
        with_idx = torch.ops.aten.max_pool2d_with_indices if dims == 2 else torch.ops.aten.max_pool3d_with_indices

        def fwd_train(s):
            with torch.no_grad():
                return with_idx(s["ins"][0], args["kernel"], args["stride"], args["padding"], [1] * dims,
                                args["ceil_mode"])
        passes = dict(passes, fwd=fwd_train, fwd_eval=passes["fwd"])
    return make, passes


def kernel_row(fam, args, dev, math):
    """(make_set, {pass: fn(set)}) for one row of vidgrad's JSON in math mode `math` (make_set and the passes
    run inside torch_setting(math, ...))."""
    if fam == "conv":
        return conv_row(args, dev, math)
    if fam == "batch_norm":
        return batch_norm_row(args, dev)
    if fam in ("max_pool", "avg_pool", "adaptive_avg_pool"):
        return pool_row(fam, args, dev)
    if fam == "relu":
        n = args["n"]

        def make():
            x = rnd([n], dev)
            return dict(x=x, y=F.relu(x), dy=rnd([n], dev))
        return make, {"fwd": lambda s: F.relu(s["x"]),
                      "bwd": lambda s: torch.ops.aten.threshold_backward(s["dy"], s["y"], 0)}
    if fam == "add":
        n = args["n"]
        return (lambda: dict(a=rnd([n], dev), b=rnd([n], dev))), {"fwd": lambda s: s["a"] + s["b"]}
    if fam == "mul_scalar":
        n, k = args["n"], args["s"]
        return (lambda: dict(x=rnd([n], dev))), {"fwd": lambda s: s["x"] * k}
    if fam == "dropout":
        n, p = args["n"], args["p"]
        return (lambda: dict(x=rnd([n], dev))), {"fwd": lambda s: F.dropout(s["x"], p, True)}
    if fam == "softmax":
        x_s = args["x"]

        def make():
            x = rnd(x_s, dev, 2.0)
            return dict(x=x, y=torch.softmax(x, 1), dy=rnd(x_s, dev))
        return make, {"fwd": lambda s: torch.softmax(s["x"], 1),
                      "bwd": lambda s: torch.ops.aten._softmax_backward_data(s["dy"], s["y"], 1, torch.float32)}
    if fam == "linear":
        m, k, n, bias = args["m"], args["k"], args["n"], args["bias"]

        def make():
            return dict(x=rnd([m, k], dev), w=rnd([n, k], dev, 0.05), dy=rnd([m, n], dev),
                        b=rnd([n], dev, 0.1) if bias else None)

        if math == "bf16":
            return autocast_grads(lambda: (lambda s: dict(ins=[s["x"], s["w"], s["b"]], dy=s["dy"]))(make()),
                                  F.linear, {"dgrad": [0], "wgrad": [1, 2]})

        def wgrad(s):
            dw = s["dy"].t().mm(s["x"])
            return (dw, s["dy"].sum(0)) if bias else dw
        return make, {"fwd": lambda s: F.linear(s["x"], s["w"], s["b"]),
                      "dgrad": lambda s: s["dy"].mm(s["w"]), "wgrad": wgrad}
    if fam == "matmul":
        b, m, k, n = args["batch"], args["m"], args["k"], args["n"]
        return autograd_row(lambda: dict(ins=[rnd([b, m, k], dev), rnd([b, k, n], dev)], dy=rnd([b, m, n], dev)),
                            torch.bmm)
    if fam == "attention":
        # vidgrad's q [B, C, N], k [B, C, M], v [B, Cv, M] is SDPA's [B, 1, N, C], [B, 1, M, C], [B, 1, M, Cv]
        b, c, cv, n, m, sc = (args[k] for k in ("batch", "c", "cv", "n", "m", "scale"))
        op = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=sc)
        return autograd_row(lambda: dict(ins=[rnd([b, 1, n, c], dev), rnd([b, 1, m, c], dev), rnd([b, 1, m, cv], dev)],
                                         dy=rnd([b, 1, n, cv], dev)), op)
    if fam == "upsample_trilinear":
        x_s, size, ac = args["x"], args["size"], args["align_corners"]
        op = lambda x: F.interpolate(x, size=size, mode="trilinear", align_corners=ac)
        return autograd_row(lambda: dict(ins=[rnd(x_s, dev)], dy=rnd(x_s[:2] + size, dev)), op)
    if fam == "concat":
        outer, inners = args["outer"], args["inners"]
        op = lambda *xs: torch.cat(xs, 1)
        return autograd_row(lambda: dict(ins=[rnd([outer, i], dev) for i in inners],
                                         dy=rnd([outer, sum(inners)], dev)), op)
    if fam == "permute":
        shape, perm = args["shape"], args["perm"]
        inv = [perm.index(i) for i in range(len(perm))]
        y_s = [shape[p] for p in perm]
        return (lambda: dict(x=rnd(shape, dev), dy=rnd(y_s, dev))), {
            "fwd": lambda s: s["x"].permute(perm).contiguous(),
            "bwd": lambda s: s["dy"].permute(inv).contiguous()}
    if fam == "cross_entropy":
        n, c = args["n"], args["classes"]
        labels = torch.tensor([(i * 7919) % c for i in range(n)], device=dev)
        op = lambda x: F.cross_entropy(x, labels)
        return autograd_row(lambda: dict(ins=[rnd([n, c], dev, 2.0)], dy=torch.ones((), device=dev)), op)
    raise KeyError(fam)


def set_tensors(s):
    for v in s.values():
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, list):
            yield from (t for t in v if isinstance(t, torch.Tensor))


def row_math(r):
    return r.get("math", "fp32")  # JSON from before the math modes: FP32


def time_kernels(ours, clock, dev, warmup, models_filter, benchmark):
    """{(model, index): seconds or the exception} for every row of vidgrad's kernels JSON, each in the
    setting of its math mode, cudnn.benchmark as given."""
    out = {}
    for m in ours["models"]:
        if models_filter and m["model"] not in models_filter:
            continue
        rows = [r for r in m["rows"] if "error" not in r]
        # one group per kernel call and math mode (its passes): the call's input sets are built once
        groups = {}
        for k, r in enumerate(rows):
            groups.setdefault((r["family"], json.dumps(r["args"], sort_keys=True), row_math(r)), []).append(k)
        for (fam, _, math), ks in groups.items():
            r0 = rows[ks[0]]
            sets = None
            try:
                with torch_setting(math, dev, benchmark):
                    make, passes = kernel_row(fam, r0["args"], dev, math)
                    sets = [make() for _ in range(r0.get("rotation_sets", 1))]
                    for k in ks:
                        r = rows[k]
                        fn = passes[r["pass"]]
                        out[(m["model"], k)] = clock.kernel(lambda t: fn(sets[t % len(sets)]), r["runs"], warmup)
            except Exception as e:  # noqa: BLE001 — report and go on
                for k in ks:
                    out.setdefault((m["model"], k), e)
            del sets
            if dev == "cuda":
                torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------------------------------------------
# whole models

def build_model(row):
    name, classes, p = row["model"], row["classes"], row.get("dropout", 0.0)
    inp = row["input"]
    extra = row.get("extra") or {}
    if name == "eco-lite":
        from models.eco_lite import ECO_Lite
        return ECO_Lite(classes=classes, frames=inp[1], size=inp[3], dropout=p)
    if name in ("c2d-nl-r50", "i3d-r50", "i3d-nl-r50"):
        from models.slowfast_resnet import ResNet
        arch = extra.get("preset", "c2d" if name == "c2d-nl-r50" else "i3d")
        nl = extra.get("nonlocal", "false" if name == "i3d-r50" else "true") == "true"
        return ResNet(arch=arch, depth=int(extra.get("depth", 50)), nonlocal_blocks=nl, classes=classes,
                      frames=inp[2], size=inp[3], dropout=p)
    if name == "r2plus1d-18":
        from torchvision.models.video import r2plus1d_18
        if p:
            raise NotImplementedError("torchvision's r2plus1d_18 has no dropout")
        return r2plus1d_18(weights=None, num_classes=classes)
    if name == "ct-sep":
        from models.ct_sep import CTSepNet
        return CTSepNet(classes=classes, dropout=p)
    if name == "resnet3d" and not extra:
        from models import resnet3d as r3d
        return r3d.Recognizer3D(classes, p)
    raise NotImplementedError(f"no PyTorch definition wired up for {name} {extra}")


def time_model(row, clock, dev, warmup, runs):
    """Inference and training step of the row's model; the caller holds the row's torch_setting except
    autocast, which covers the forward passes (and the loss) only, as PyTorch recommends."""
    bf16 = row_math(row) == "bf16"
    fwd_ctx = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    net = build_model(row).to(dev)
    x = torch.rand(*row["input"], device=dev) * 2 - 1
    b = row["batch"]
    labels = torch.tensor([(i * 7919) % row["classes"] for i in range(b)], device=dev)
    net.eval()

    def infer(_):
        with torch.no_grad(), fwd_ctx():
            net(x)
    t_inf = clock.step(infer, runs, warmup)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        infer(0)
        peak_inf = torch.cuda.max_memory_allocated()
    net.train()
    sgd = row["sgd"]
    opt = torch.optim.SGD(net.parameters(), lr=sgd["lr"], momentum=sgd["momentum"], weight_decay=sgd["weight_decay"])

    def step(_):
        opt.zero_grad(set_to_none=True)
        with fwd_ctx():
            loss = F.cross_entropy(net(x), labels)
        loss.backward()
        opt.step()
    t_train = clock.step(step, runs, warmup)
    res = dict(infer_s=t_inf, train_s=t_train)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step(0)
        res.update(peak_infer=peak_inf, peak_train=torch.cuda.max_memory_allocated())
    del net, opt
    if dev == "cuda":
        torch.cuda.empty_cache()
    return res


# --------------------------------------------------------------------------------------------------------------

def fmt_ratio(a, t):
    return f"{a / t:.2f}" if isinstance(t, float) and t > 0 else "—"


def write_report(d, device, report, md):
    (d / f"side_by_side_{device}.json").write_text(json.dumps(report, indent=1))
    (d / f"side_by_side_{device}.md").write_text("\n".join(md) + "\n")


def run_ours_for_model(args, rounds_dir, rnd_i, model, part, quiet=False):
    """One round's vidgrad bench for one model (`--ours-cmd` plus the model's name), writing into
    rounds_dir/<round>-<model>; returns its <part>_<dev>.json (part: models or kernels)."""
    out = rounds_dir / f"{rnd_i}-{model}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = shlex.split(args.ours_cmd) + [model]
    print(f"round {rnd_i + 1}/{args.rounds}, {model}: {' '.join(cmd)}", flush=True)
    done = subprocess.run(cmd, env=dict(os.environ, VIDGRAD_BENCH_OUT=str(out.resolve())),
                          stdout=subprocess.DEVNULL if quiet else None)
    if done.returncode != 0:
        sys.exit(f"--ours-cmd failed for {model}: `{' '.join(cmd)}` exited with {done.returncode}")
    return json.loads((out / f"{part}_{args.device}.json").read_text())


def interleaved_rounds(args, d, cuda, configs):
    """Whole models, `--rounds R` times: per round and model vidgrad's bench (`--ours-cmd` plus the model's
    name) and then PyTorch on its row, back to back. On a machine whose speed drifts over minutes (shared
    vCPUs, steal time) a ratio of two runs minutes apart measures the drift; here each round's ratio is of two
    runs seconds apart, and the rounds show the spread. Prints and writes the per-round ratios and their
    median (side_by_side_<dev>_rounds.md and .json)."""
    from peak_rss import DEFAULT_MODELS  # the suite's default models, listed once in tools/bench
    models = args.models or DEFAULT_MODELS
    clock = Clock(cuda)
    per = {}  # (model, math, input) -> one dict per round
    for rnd_i in range(args.rounds):
        for model in models:
            ours = run_ours_for_model(args, d / "rounds", rnd_i, model, "models")
            if not cuda:
                torch.set_num_threads(ours["device"]["threads"])
            warmup, runs = ours["timing"]["warmup"], ours["timing"]["runs"]
            for row in ours["models"]:
                if "error" in row:
                    continue
                b = row["batch"]
                rec = dict(vidgrad=dict(infer=row["inference"]["clips_per_s"], train=row["train"]["clips_per_s"]))
                for cname, bench in configs:
                    with torch_setting("fp32" if row_math(row) == "bf16" else row_math(row), args.device, bench):
                        r = time_model(row, clock, args.device, warmup, runs)
                    rec[cname] = dict(infer=b / r["infer_s"], train=b / r["train_s"])
                per.setdefault((row["model"], row_math(row), json.dumps(row["input"])), []).append(rec)
                print(f"  {row['model']} {row_math(row)}: " + "; ".join(
                    f"{part} vidgrad {rec['vidgrad'][part]:.3f} clips/s, " + ", ".join(
                        f"{c} {rec[c][part]:.3f} (ratio {rec[c][part] / rec['vidgrad'][part]:.2f})" for c, _ in configs)
                    for part in ("infer", "train")), flush=True)
    md = [f"## Whole models, {args.rounds} interleaved rounds\n",
          f"Each round runs vidgrad's bench for one model and then PyTorch on the same row; ratio = vidgrad time / "
          f"{configs[0][0]} time per round. Machine {ours['device']['name']}, {ours['device'].get('threads', '?')} "
          f"threads, vidgrad commit {ours['device']['commit']}, torch {torch.__version__}.\n",
          "| model | math | input | part | vidgrad clips/s (per round) | " +
          " | ".join(f"{c} clips/s (per round) | ratio per round | median ratio" for c, _ in configs) +
          " |\n|" + "---|" * (5 + 3 * len(configs))]
    report = []
    print(f"\nwhole models, {args.rounds} interleaved rounds (ratio = vidgrad time / torch time, per round):")
    for (model, math, inp), recs in per.items():
        for part in ("infer", "train"):
            ours_v = [r["vidgrad"][part] for r in recs]
            cells, line = [], f"  {model:<14} {math:<4} {part:<5} vidgrad " + " ".join(f"{v:.3f}" for v in ours_v)
            for c, _ in configs:
                theirs = [r[c][part] for r in recs]
                ratios = [t / v for t, v in zip(theirs, ours_v)]
                med = statistics.median(ratios)
                line += f" | {c} " + " ".join(f"{t:.3f}" for t in theirs) + \
                        " | ratios " + " ".join(f"{x:.2f}" for x in ratios) + f" | median {med:.2f}"
                cells += [", ".join(f"{t:.3f}" for t in theirs), ", ".join(f"{x:.2f}" for x in ratios), f"{med:.2f}"]
                report.append(dict(model=model, math=math, input=json.loads(inp), part=part, column=c,
                                   vidgrad_clips_per_s=ours_v, torch_clips_per_s=theirs, ratios=ratios, median_ratio=med))
            print(line)
            md.append(f"| {model} | {math} | {json.loads(inp)} | {part} | " + ", ".join(f"{v:.3f}" for v in ours_v) +
                      " | " + " | ".join(cells) + " |")
    (d / f"side_by_side_{args.device}_rounds.json").write_text(json.dumps(report, indent=1))
    (d / f"side_by_side_{args.device}_rounds.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {d / f'side_by_side_{args.device}_rounds.md'} and .json")


def interleaved_kernel_rounds(args, d, cuda, configs):
    """Kernels, `--rounds R` times: per round and model vidgrad's kernel bench (`--ours-cmd` plus the model's name)
    and then PyTorch on every one of its rows, back to back, so that each round's family ratios are of two runs a
    minute apart. Memory-bound rows on tensors above the L3 move with the host's memory bandwidth, which on shared
    machines changes by 2x within minutes (docs/PERFORMANCE.md, stop 42): the median over rounds, and in how many
    rounds a family was above 1.0, say more than one run. Prints and writes side_by_side_<dev>_kernel_rounds.md and
    .json (per model: the total's and every family's ratio per round and their median)."""
    from peak_rss import DEFAULT_MODELS
    models = args.models or DEFAULT_MODELS
    clock = Clock(cuda)
    col = configs[0][0]  # CPU: the one column; CUDA: cudnn.benchmark off, PyTorch's default
    per = {}  # model -> list per round of {(family, pass, math) or "total": (vidgrad s, torch s)}
    for rnd_i in range(args.rounds):
        for model in models:
            ours = run_ours_for_model(args, d / "kernel_rounds", rnd_i, model, "kernels", quiet=True)
            if not cuda:
                torch.set_num_threads(ours["device"]["threads"])
            results = time_kernels(ours, clock, args.device, ours["timing"]["warmup"], [model], configs[0][1])
            for m in ours["models"]:
                if m["model"] != model:
                    continue
                sums = {}
                for k, r in enumerate(r for r in m["rows"] if "error" not in r):
                    t = results.get((model, k))
                    if not isinstance(t, float):
                        continue  # a row PyTorch could not run counts on neither side
                    for key in ((r["family"], r["pass"], row_math(r)), "total"):
                        a, b = sums.get(key, (0.0, 0.0))
                        sums[key] = (a + r["count"] * r["us"] / 1e6, b + r["count"] * t)
                per.setdefault(model, []).append(sums)
                a, b = sums["total"]
                print(f"  {model}: all kernels vidgrad {a * 1e3:.1f} ms, {col} {b * 1e3:.1f} ms (ratio {a / b:.2f})",
                      flush=True)
    dev_name = ours["device"]["name"]
    md = [f"## Kernels, {args.rounds} interleaved rounds\n",
          f"Each round runs vidgrad's kernel bench for one model and then PyTorch ({col}) on its rows; ratio = vidgrad "
          f"time / PyTorch time, sums over the model's calls of count x median time. Machine {dev_name}, "
          f"{ours['device'].get('threads', '?')} threads, vidgrad commit {ours['device']['commit']}, torch "
          f"{torch.__version__}.\n"]
    report = []
    print(f"\nkernels, {args.rounds} interleaved rounds (ratio = vidgrad time / {col} time, per round):")
    for model, rounds in per.items():
        keys = sorted({k for s in rounds for k in s if k != "total"},
                      key=lambda k: -statistics.median(s[k][0] for s in rounds if k in s))
        md.append(f"\n### {model}\n\n| family | pass | math | vidgrad ms (median) | ratio per round | median ratio "
                  f"| rounds above 1.0 |\n|---|---|---|---|---|---|---|")
        print(f"  {model}")
        for key in ["total"] + keys:
            pairs = [s[key] for s in rounds if key in s]
            ratios = [a / b for a, b in pairs]
            med = statistics.median(ratios)
            above = sum(x > 1.0 for x in ratios)
            name = ("all kernels", "", "") if key == "total" else key
            ms = statistics.median(a for a, _ in pairs) * 1e3
            print(f"    {name[0]:<18} {name[1]:<8} {name[2]:<4} vidgrad {ms:9.2f} ms | ratios " +
                  " ".join(f"{x:.2f}" for x in ratios) + f" | median {med:.2f}" +
                  (f" | above 1.0 in {above} of {len(ratios)}" if above else ""))
            md.append(f"| {name[0]} | {name[1]} | {name[2]} | {ms:.2f} | " + ", ".join(f"{x:.2f}" for x in ratios) +
                      f" | {med:.2f} | {above} of {len(ratios)} |")
            report.append(dict(model=model, family=name[0], pass_=name[1], math=name[2], vidgrad_ms=ms,
                               ratios=ratios, median_ratio=med, rounds_above_1=above))
    (d / f"side_by_side_{args.device}_kernel_rounds.json").write_text(json.dumps(
        dict(device=dev_name, torch=torch.__version__, rounds=args.rounds, rows=report), indent=1))
    (d / f"side_by_side_{args.device}_kernel_rounds.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {d / f'side_by_side_{args.device}_kernel_rounds.md'} and .json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dir", default=str(ROOT / "target" / "bench"), help="where vidgrad's JSON is")
    ap.add_argument("--ours-cmd", help="run this (vidgrad's bench) first, so both sides run in one go")
    ap.add_argument("--only", choices=["kernels", "models"], help="one part only")
    ap.add_argument("--models", nargs="*", help="only these models")
    ap.add_argument("--rounds", type=int, help="R interleaved rounds of vidgrad then PyTorch per model (needs --ours-cmd; "
                    "the model's name is appended to it): whole models, or with --only kernels every kernel row and "
                    "the family sums")
    args = ap.parse_args()
    d = Path(args.dir)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    # columns: (name, cudnn.benchmark); each row in the PyTorch setting of its math mode (TORCH_SETTINGS)
    configs = [("bench off", False), ("bench on", True)] if cuda else [("torch", False)]
    if args.rounds is not None:
        if args.rounds < 1 or not args.ours_cmd:
            sys.exit("--rounds needs a count of at least 1 and --ours-cmd (vidgrad's bench, without a model name)")
        if args.only == "kernels":
            interleaved_kernel_rounds(args, d, cuda, configs)
        else:
            interleaved_rounds(args, d, cuda, configs)
        return
    if args.ours_cmd:
        print(f"running vidgrad: {args.ours_cmd}", flush=True)
        env = dict(os.environ, VIDGRAD_BENCH_OUT=str(d.resolve()))  # the bench writes where we read
        subprocess.run(shlex.split(args.ours_cmd), check=True, env=env)

    clock = Clock(cuda)
    dev_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    md = []
    report = {"device": args.device, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if cuda else None,
              "settings": TORCH_SETTINGS, "columns": {c: {"cudnn_benchmark": b} for c, b in configs}}
    settings_note = "PyTorch per math mode: " + "; ".join(f"{k}: {v}" for k, v in TORCH_SETTINGS.items()) + \
        ("; columns: cudnn.benchmark off (the default) and on" if cuda else "; CPU: no TF32, tf32 rows compute in FP32")

    kpath = d / f"kernels_{args.device}.json"
    if args.only != "models" and kpath.exists():
        ours = json.loads(kpath.read_text())
        if not cuda:
            torch.set_num_threads(ours["device"]["threads"])
        elif ours["device"]["name"] != dev_name:
            print(f"WARNING: vidgrad measured on {ours['device']['name']}, torch sees {dev_name}")
        warmup = ours["timing"]["warmup"]
        modes = ours.get("math_modes", ["fp32"])
        head = f"kernels on {ours['device']['name']} (vidgrad {ours['device']['date']} commit {ours['device']['commit']}), " \
               f"batch {ours['batch']}, math modes {', '.join(modes)}, torch {torch.__version__}, " \
               f"{torch.get_num_threads()} threads. {settings_note}"
        print("\n" + head)
        cols = [c for c, _ in configs]
        report["kernels"] = []
        md.append(f"## Kernels\n\n{head}\n")
        for m in ours["models"]:
            if args.models and m["model"] not in args.models:
                continue
            # model by model, the files rewritten after each: a time limit keeps the models finished
            results = {cname: time_kernels(ours, clock, args.device, warmup, [m["model"]], bench)
                       for cname, bench in configs}
            title = f"{m['model']} {m['input']}"
            print(f"\n--- {title}")
            hdr = f"  {'kernel':<18} {'pass':<8} {'math':<4} {'shape':<46} {'count':>5} {'vidgrad µs':>11}" + \
                  "".join(f" {c + ' µs':>16} {'ratio':>6}" for c in cols)
            print(hdr)
            md.append(f"\n### {title}\n\n| kernel | pass | math | shape | count | vidgrad µs | " +
                      " | ".join(f"{c} µs | ratio" for c in cols) + " |\n|" + "---|" * (6 + 2 * len(cols)))
            rows = [r for r in m["rows"] if "error" not in r]
            # per math mode: its rows, and the rows of calls timed once (FP32 in every mode)
            timed_in = {}
            for r in rows:
                timed_in.setdefault((r["family"], json.dumps(r["args"], sort_keys=True), r["pass"]), set()).add(row_math(r))
            sums = {mode: {c: 0.0 for c in ["vidgrad"] + cols} for mode in modes}
            fam = {}  # (family, pass, math) -> {side: sum of count x seconds}
            for k, r in enumerate(rows):
                ts = [results[c].get((m["model"], k)) for c in cols]
                a = r["us"] / 1e6
                once = len(timed_in[(r["family"], json.dumps(r["args"], sort_keys=True), r["pass"])]) == 1
                in_modes = [mode for mode in modes if mode == row_math(r) or once]
                line = f"  {r['family']:<18} {r['pass']:<8} {row_math(r):<4} {r['shape'][:46]:<46} {r['count']:>5} " \
                       f"{r['us']:>11.1f}"
                cells = []
                for c, t in zip(cols, ts):
                    if isinstance(t, float):
                        line += f" {t * 1e6:>16.1f} {a / t:>6.2f}"
                        cells += [f"{t * 1e6:.1f}", f"{a / t:.2f}"]
                        for mode in in_modes:
                            sums[mode][c] += r["count"] * t
                    else:
                        line += f" {'error':>16} {'—':>6}"
                        cells += [f"error: {t}", "—"]
                for mode in in_modes:
                    sums[mode]["vidgrad"] += r["count"] * a
                if all(isinstance(t, float) for t in ts):
                    f = fam.setdefault((r["family"], r["pass"], row_math(r)), {c: 0.0 for c in ["vidgrad"] + cols})
                    f["vidgrad"] += r["count"] * a
                    for c, t in zip(cols, ts):
                        f[c] += r["count"] * t
                print(line)
                if not all(isinstance(t, float) for t in ts):
                    print(f"      torch failed: {[t for t in ts if not isinstance(t, float)][0]}")
                md.append(f"| {r['family']} | {r['pass']} | {row_math(r)} | {r['shape']} | {r['count']} | {r['us']:.1f} | " +
                          " | ".join(cells) + " |")
                report["kernels"].append(dict(model=m["model"], index=k, family=r["family"], pass_=r["pass"],
                                              math=row_math(r), shape=r["shape"], vidgrad_us=r["us"],
                                              **{c: (t * 1e6 if isinstance(t, float) else str(t)) for c, t in zip(cols, ts)}))
            print(f"  per family and pass, sum of count x time (ms):")
            md.append(f"\nPer family, pass and math mode, sum over the model's calls of count × time (ms):\n\n"
                      f"| kernel | pass | math | vidgrad | " + " | ".join(f"{c} | ratio" for c in cols) +
                      " |\n|" + "---|" * (4 + 2 * len(cols)))
            for (fa, pa, ma), f in sorted(fam.items(), key=lambda kv: -kv[1]["vidgrad"]):
                print(f"    {fa:<18} {pa:<8} {ma:<4} vidgrad {f['vidgrad'] * 1e3:9.2f}" +
                      "".join(f" | {c} {f[c] * 1e3:9.2f} ratio {f['vidgrad'] / f[c]:5.2f}" for c in cols))
                md.append(f"| {fa} | {pa} | {ma} | {f['vidgrad'] * 1e3:.2f} | " +
                          " | ".join(f"{f[c] * 1e3:.2f} | {f['vidgrad'] / f[c]:.2f}" for c in cols) + " |")
            md.append("")
            for mode in modes:
                sm = sums[mode]
                tot = f"  {mode}: sum of count x time: vidgrad {sm['vidgrad'] * 1e3:.1f} ms; " + "; ".join(
                    f"{c} {sm[c] * 1e3:.1f} ms (ratio {sm['vidgrad'] / sm[c]:.2f})" for c in cols if sm[c] > 0)
                print(tot)
                md.append(f"{tot.strip()}\n")
            write_report(d, args.device, report, md)

    mpath = d / f"models_{args.device}.json"
    if args.only != "kernels" and mpath.exists():
        ours = json.loads(mpath.read_text())
        if not cuda:
            torch.set_num_threads(ours["device"]["threads"])
        warmup, runs = ours["timing"]["warmup"], ours["timing"]["runs"]
        head = f"whole models on {ours['device']['name']}, batch {ours['batch']}, median of {runs} after {warmup} " \
               f"warm-up. {settings_note}"
        print("\n" + head)
        md.append(f"\n## Whole models\n\n{head}\n\n| model | math | input | vidgrad infer clips/s | " +
                  " | ".join(f"{c} clips/s | ratio" for c, _ in configs) + " | vidgrad train clips/s | " +
                  " | ".join(f"{c} clips/s | ratio" for c, _ in configs) + " |\n|" + "---|" * (5 + 4 * len(configs)))
        report["models"] = []
        for row in ours["models"]:
            if "error" in row or (args.models and row["model"] not in args.models):
                continue
            b = row["batch"]
            res = {}
            for cname, bench in configs:
                try:
                    # the flags of the row's mode; autocast (bf16) inside time_model, around the forwards
                    with torch_setting("fp32" if row_math(row) == "bf16" else row_math(row), args.device, bench):
                        res[cname] = time_model(row, clock, args.device, warmup, runs)
                except Exception as e:  # noqa: BLE001
                    res[cname] = e
            vi, vt = row["inference"]["clips_per_s"], row["train"]["clips_per_s"]
            line = f"  {row['model']:<14} {row_math(row):<4} infer vidgrad {vi:8.2f} clips/s"
            ci, ct = [], []
            for cname, _ in configs:
                r = res[cname]
                if isinstance(r, dict):
                    ti, tt = b / r["infer_s"], b / r["train_s"]
                    line += f" | {cname} {ti:8.2f} (ratio {ti / vi:.2f})"
                    ci += [f"{ti:.2f}", f"{ti / vi:.2f}"]
                    ct += [f"{tt:.2f}", f"{tt / vt:.2f}"]
                else:
                    line += f" | {cname} failed: {r}"
                    ci += [f"failed: {r}", "—"]
                    ct += ["—", "—"]
            if cuda:
                line += f" | peak memory vidgrad {row['inference']['peak_bytes'] / 1e9:.2f} GB" + "".join(
                    f", {c} {res[c]['peak_infer'] / 1e9:.2f} GB" for c, _ in configs if isinstance(res[c], dict))
            print(line)
            print(f"  {'':<14} {'':<4} train vidgrad {vt:8.2f} clips/s | " + " | ".join(
                f"{cname} {ct[2 * i]} (ratio {ct[2 * i + 1]})" for i, (cname, _) in enumerate(configs)) +
                (f" | peak memory vidgrad {row['train']['peak_bytes'] / 1e9:.2f} GB" + "".join(
                    f", {c} {res[c]['peak_train'] / 1e9:.2f} GB" for c, _ in configs if isinstance(res[c], dict))
                 if cuda else ""))
            md.append(f"| {row['model']} | {row_math(row)} | {row['input']} | {vi:.2f} | " + " | ".join(ci) + f" | {vt:.2f} | " +
                      " | ".join(ct) + " |")
            report["models"].append(dict(model=row["model"], math=row_math(row), vidgrad=dict(infer=vi, train=vt),
                                         **{c: (r if isinstance(r, dict) else str(r)) for c, r in res.items()}))
            write_report(d, args.device, report, md)
        print("  (model ratios are vidgrad time / torch time = torch clips/s / vidgrad clips/s)")

    write_report(d, args.device, report, md)
    print(f"\nwrote {d / f'side_by_side_{args.device}.md'} and .json")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Peak memory of a CPU training run, vidgrad against PyTorch, measured the same way on both sides.

For each model, each side runs in a child process of its own that does exactly what the benchmark suite's
whole-model part does for that one model — build it, time inference (eval, no autograd), time the training
step (forward, cross entropy, backward, SGD with momentum) — and exits. The figure is that child's
resident-set high-water mark (`ru_maxrss` from wait4(2), in KiB on Linux): everything the process held
at its fullest — the runtime itself, weights, gradients, momentum, activations and what the memory
allocator kept. vidgrad's child is the suite binary (`suite cpu models <model>`); PyTorch's child runs
`torch_side_by_side.time_model` on the row vidgrad's child wrote (same input, batch, classes, dropout, SGD,
number of runs, thread count). Each runtime's peak at rest (the suite binary stopping at its argument
check; `import torch, torchvision`) is printed too: the part of each figure that is the runtime itself.

    python tools/bench/peak_rss.py                       # the suite's three default models
    python tools/bench/peak_rss.py --models eco-lite

Writes target/bench/peak_rss_cpu.{json,md}. The inference and training peaks are not separated: the
training step comes second and needs more memory, so the high-water mark is the training step's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = ["eco-lite", "c2d-nl-r50", "r2plus1d-18"]


def suite_binary():
    """Build the benchmark suite (release, as `cargo bench` does) and return its executable."""
    out = subprocess.run(
        ["cargo", "bench", "--bench", "suite", "--no-run", "--message-format=json-render-diagnostics"],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "suite" and msg.get("executable"):
            return msg["executable"]
    sys.exit("cargo did not report the suite's executable")


def run_child(cmd, env=None, must_succeed=True):
    """Run cmd to completion; return its peak resident set in bytes (wait4's ru_maxrss, KiB on Linux)."""
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=None if must_succeed else subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if must_succeed and p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode}")
    return usage.ru_maxrss * 1024


def torch_child(row_json, threads, warmup, runs):
    """In the child: the PyTorch side of one model row (tools/bench/torch_side_by_side.py's time_model)."""
    sys.path.insert(0, str(ROOT / "tools" / "bench"))
    import torch
    import torch_side_by_side as sbs
    torch.set_num_threads(threads)
    sbs.time_model(json.loads(row_json), sbs.Clock(False), "cpu", warmup, runs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--out", default=str(ROOT / "target" / "bench"))
    ap.add_argument("--torch-child", nargs=4, metavar=("ROW", "THREADS", "WARMUP", "RUNS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        row, threads, warmup, runs = args.torch_child
        torch_child(row, int(threads), int(warmup), int(runs))
        return

    suite = suite_binary()
    py = sys.executable
    # at rest: vidgrad's suite stopping at its argument check, PyTorch importing itself
    base_ours = run_child([suite, "cpu", "models", "no-such-model"], must_succeed=False)
    base_torch = run_child([py, "-c", "import torch, torchvision"])
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, VIDGRAD_BENCH_OUT=tmp)
            ours = run_child([suite, "cpu", "models", name], env=env)
            report = json.loads((Path(tmp) / "models_cpu.json").read_text())
        row = next(r for r in report["models"] if r["model"] == name)
        if "error" in row:
            sys.exit(f"vidgrad's bench failed on {name}: {row['error']}")
        threads = report["device"]["threads"]
        warmup, runs = report["timing"]["warmup"], report["timing"]["runs"]
        try:
            theirs = run_child([py, __file__, "--torch-child", json.dumps(row), str(threads), str(warmup), str(runs)])
        except RuntimeError as e:
            theirs = None
            print(f"  {name}: PyTorch side failed ({e})")
        rows.append(dict(model=name, input=row["input"], batch=row["batch"], threads=threads,
                         vidgrad_rss=ours, torch_rss=theirs,
                         vidgrad_alloc_peak_train=row["train"]["peak_bytes"],
                         commit=report["device"].get("commit"), date=report["device"].get("date"),
                         machine=report["device"].get("name")))
        r = rows[-1]
        print(f"  {name:<14} {str(r['input']):<22} vidgrad {ours / 1e9:6.2f} GB"
              + (f" | torch {theirs / 1e9:6.2f} GB | ratio {ours / theirs:.2f}" if theirs else ""), flush=True)
    print(f"  at rest: vidgrad's suite {base_ours / 1e9:.3f} GB, torch + torchvision imported {base_torch / 1e9:.2f} GB")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peak_rss_cpu.json").write_text(json.dumps(dict(rows=rows, vidgrad_at_rest=base_ours, torch_at_rest=base_torch), indent=1))
    md = ["| model | input (batch) | threads | vidgrad peak RSS | PyTorch peak RSS | ratio | "
          "ratio above each runtime at rest | vidgrad allocator peak (training) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["torch_rss"]
        md.append(f"| {r['model']} | {r['input']} | {r['threads']} | {r['vidgrad_rss'] / 1e9:.2f} GB | "
                  + (f"{t / 1e9:.2f} GB | {r['vidgrad_rss'] / t:.2f} | "
                     f"{(r['vidgrad_rss'] - base_ours) / (t - base_torch):.2f}" if t else "failed | — | —")
                  + f" | {r['vidgrad_alloc_peak_train'] / 1e9:.2f} GB |")
    md.append(f"\nAt rest: vidgrad's suite binary {base_ours / 1e9:.3f} GB; PyTorch (`import torch, torchvision`) "
              f"{base_torch / 1e9:.2f} GB.")
    (out / "peak_rss_cpu.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'peak_rss_cpu.md'} and .json")


if __name__ == "__main__":
    main()

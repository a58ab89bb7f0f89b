#!/usr/bin/env python3
"""Convert a PyTorch checkpoint (.pth / .pt / .pth.tar) to a safetensors file vidgrad loads.

    python tools/convert_checkpoint.py IN.pth OUT.safetensors \\
        [--rename 'module.base_model.=' ...] [--strip-prefix P ...] [--key state_dict] \\
        [--float32] [--trust-pickle]

Steps:
  1. ``torch.load(IN, map_location="cpu", weights_only=True)``. A checkpoint that pickles more than
     tensors and plain containers fails there; ``--trust-pickle`` retries with weights_only=False
     (this runs code from the file: only for files you trust).
  2. Find the state dict: ``--key K`` (``a/b`` for nested dicts), else the first of the usual
     container keys (state_dict, model_state_dict, model, net, network, module, weights, params)
     that holds tensors, else the object itself; a pickled ``nn.Module`` gives its ``state_dict()``.
  3. Renames: each ``--rename FROM=TO`` and ``--strip-prefix P`` (= ``--rename P=``) is a prefix
     rule; per key the first matching rule applies, in the order given. Two keys renamed to one
     name is an error. Same rule as ``vidgrad::io::apply_renames``.
  4. Non-tensor entries are skipped with a warning that counts and names them.
  5. Writes OUT atomically (temporary file in the same directory, fsync, rename) with contiguous,
     unshared tensors in their own dtypes (``num_batches_tracked`` stays int64; ``--float32`` casts
     floating tensors to float32) and a sorted JSON header, so the same input gives the same bytes.
     ``__metadata__`` records the source file name and the renames. The file is reopened and
     compared, then a key/dtype/shape summary is printed.

Exit status 0 on success, 1 with a message naming the file (and key) on any error.
"""

import argparse
import json
import os
import re
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

# safetensors dtype names, in the format library's order (it lays data out by this order, descending,
# then by name, so that every tensor is aligned; vidgrad's writer does the same).
DTYPES = [
    (torch.bool, "BOOL"), (torch.uint8, "U8"), (torch.int8, "I8"), (torch.float8_e5m2, "F8_E5M2"),
    (torch.float8_e4m3fn, "F8_E4M3"), (torch.int16, "I16"), (torch.uint16, "U16"),
    (torch.float16, "F16"), (torch.bfloat16, "BF16"), (torch.int32, "I32"), (torch.uint32, "U32"),
    (torch.float32, "F32"), (torch.complex64, "C64"), (torch.float64, "F64"), (torch.int64, "I64"),
    (torch.uint64, "U64"),
]
DTYPE_NAME = {d: n for d, n in DTYPES}
DTYPE_RANK = {d: i for i, (d, _) in enumerate(DTYPES)}

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")


class ConvertError(Exception):
    pass


def load_checkpoint(path, trust_pickle):
    """torch.load on CPU, weights_only unless the user trusts the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file")
    except Exception as e:  # UnpicklingError and friends: the message says what was refused
        if not trust_pickle:
            lines = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in str(e).splitlines()]
            why = next((l for l in lines if "Unsupported" in l or "WeightsUnpickler" in l), None)
            why = why or next((l for l in lines if l), type(e).__name__)
            raise ConvertError(
                f"{path}: cannot be loaded with weights_only=True ({why}). If you trust this file, "
                "rerun with --trust-pickle (runs the pickle's code)."
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConvertError(f"{path}: torch.load failed: {type(e).__name__}: {e}")


def has_tensors(obj):
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj, key, path):
    """The state dict inside a checkpoint object, and a description of where it was found."""
    if key is not None:
        for part in key.split("/"):
            if not isinstance(obj, Mapping) or part not in obj:
                have = sorted(map(str, obj.keys())) if isinstance(obj, Mapping) else type(obj).__name__
                raise ConvertError(f"{path}: no entry '{part}' (of --key {key}); found {have}")
            obj = obj[part]
        where = f"['{key}']"
    elif isinstance(obj, Mapping):
        # A container key wins over top-level tensors (old checkpoints keep e.g. best_prec1 as a tensor).
        holds = lambda v: has_tensors(v) or isinstance(v, torch.nn.Module)  # noqa: E731
        found = next((k for k in CONTAINER_KEYS if k in obj and holds(obj[k])), None)
        if found is not None:
            obj, where = obj[found], f"['{found}']"
        elif has_tensors(obj):
            where = "top level"
        else:
            raise ConvertError(
                f"{path}: no state dict found; top-level keys {sorted(map(str, obj.keys()))} "
                "(name the right one with --key)"
            )
    else:
        where = "top level"
    if isinstance(obj, torch.nn.Module):
        obj, where = obj.state_dict(), where + " (nn.Module.state_dict())"
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path}: {where} is a {type(obj).__name__}, not a state dict")
    return obj, where


def parse_renames(renames, strips):
    rules = []
    for r in renames:
        if "=" not in r:
            raise ConvertError(f"--rename '{r}': expected FROM=TO (TO may be empty)")
        src, dst = r.split("=", 1)
        rules.append((src, dst))
    rules += [(p, "") for p in strips]
    return rules


def rename(key, rules):
    for src, dst in rules:
        if key.startswith(src):
            return dst + key[len(src):]
    return key


def convert(state, rules, float32, path):
    """(tensors by new name, skipped [(key, type name)])."""
    out, origin, skipped = {}, {}, []
    for key, value in state.items():
        key = str(key)
        if not isinstance(value, torch.Tensor):
            skipped.append((key, type(value).__name__))
            continue
        if value.is_sparse or value.is_quantized or value.device.type == "meta":
            raise ConvertError(
                f"{path}: tensor '{key}' is sparse, quantized or on the meta device; make it dense first"
            )
        new = rename(key, rules)
        if new in origin:
            raise ConvertError(f"{path}: keys '{origin[new]}' and '{key}' would both be renamed to '{new}'")
        t = value.detach().cpu()
        if t.dtype not in DTYPE_NAME:
            raise ConvertError(f"{path}: tensor '{key}' has dtype {t.dtype}, which safetensors cannot store")
        if float32 and t.is_floating_point():
            t = t.to(torch.float32)
        origin[new] = key
        out[new] = t.contiguous().clone()  # own storage: safetensors refuses shared tensors
    return out, skipped


def serialize(tensors, metadata):
    """safetensors bytes: sorted-key JSON header padded to 8 bytes, then the data, laid out by
    dtype (widest first, the format library's order) and name. Deterministic for equal inputs."""
    if sys.byteorder != "little":
        raise ConvertError("safetensors is little-endian; this writer needs a little-endian host")
    header, chunks, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors, key=lambda k: (-DTYPE_RANK[tensors[k].dtype], k)):
        t = tensors[name]
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": DTYPE_NAME[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write_atomic(path, data):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent if str(path.parent) else ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # best effort: the rename is done


def verify(path, tensors, metadata):
    with safe_open(str(path), framework="pt") as f:
        if f.metadata() != metadata or set(f.keys()) != set(tensors):
            raise ConvertError(f"{path}: reread does not match what was written")
        for k in f.keys():
            t = f.get_tensor(k)
            if t.dtype != tensors[k].dtype or t.shape != tensors[k].shape or not torch.equal(t, tensors[k]):
                raise ConvertError(f"{path}: tensor '{k}' reads back different")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("input", help="PyTorch checkpoint (.pth, .pt, .pth.tar)")
    ap.add_argument("output", help="safetensors file to write")
    ap.add_argument("--rename", action="append", default=[], metavar="FROM=TO",
                    help="prefix rename rule (repeatable; first match wins)")
    ap.add_argument("--strip-prefix", action="append", default=[], metavar="P",
                    help="same as --rename P= (applied after the --rename rules)")
    ap.add_argument("--key", help="where the state dict is inside the checkpoint dict, 'a/b' for nested")
    ap.add_argument("--float32", action="store_true", help="cast floating tensors to float32")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="allow torch.load(weights_only=False) for checkpoints that need it")
    ap.add_argument("--quiet", action="store_true", help="print only the totals")
    args = ap.parse_args(argv)

    try:
        rules = parse_renames(args.rename, args.strip_prefix)
        obj = load_checkpoint(args.input, args.trust_pickle)
        state, where = find_state_dict(obj, args.key, args.input)
        tensors, skipped = convert(state, rules, args.float32, args.input)
        if not tensors:
            raise ConvertError(f"{args.input}: the state dict at {where} holds no tensors")
        metadata = {
            "format": "pt",
            "source": Path(args.input).name,
            "renames": json.dumps(rules),
        }
        try:
            write_atomic(args.output, serialize(tensors, metadata))
        except OSError as e:
            raise ConvertError(f"{args.output}: cannot write: {e.strerror or e}")
        verify(args.output, tensors, metadata)
    except (ConvertError, OSError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1

    if skipped:
        print(f"warning: skipped {len(skipped)} non-tensor entr{'y' if len(skipped) == 1 else 'ies'}: "
              + ", ".join(f"{k} ({t})" for k, t in skipped), file=sys.stderr)
    if not args.quiet:
        width = max(len(k) for k in tensors)
        for k in sorted(tensors):
            t = tensors[k]
            print(f"  {k:<{width}}  {str(t.dtype).removeprefix('torch.'):<8}  {list(t.shape)}")
    n_params = sum(t.numel() for t in tensors.values())
    size = os.path.getsize(args.output)
    print(f"{args.input} ({where}) -> {args.output}: {len(tensors)} tensors, {n_params} values, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

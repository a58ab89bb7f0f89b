#!/usr/bin/env bash
# Build the GPU check bundle: the test and bench binaries the GPU check needs (with the CUDA kernels),
# their fixtures, the PyTorch side-by-side script and run.sh, stripped and xz-compressed, for a GPU
# machine without a Rust toolchain. See docs/GPU.md.
#
#   tools/gpu/build-bundle.sh [OUT_DIR]     default target/gpu-bundle → OUT_DIR/ and OUT_DIR.tar.xz
#
# The build goes to its own target folder (BUNDLE_TARGET_DIR, default target/gpu-bundle-build) with
# debug info off and stripped (CARGO_PROFILE_RELEASE_DEBUG=0, CARGO_PROFILE_RELEASE_STRIP=debuginfo;
# symbols stay, so panics show function names), so the normal target/ keeps its own build.
# Needs nvcc 13.0 (NVCC, CUDA_HOME or PATH; else .ci/venv's, installed as .ci/run does). The kernels get
# SASS for VIDGRAD_CUDA_ARCHS (default 90a: H100/H200) beside the compute_80 PTX + sm_80 baseline.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
OUT_DIR="${1:-target/gpu-bundle}"
ARCHIVE="$OUT_DIR.tar.xz"
die() {
  echo "build-bundle: $*" >&2
  exit 1
}
now() { date +%s; }
T0=$(now)

# --- nvcc ---------------------------------------------------------------------------------------------
if [ -z "${NVCC:-}" ] && [ -z "${CUDA_HOME:-}" ] && [ -z "${CUDA_PATH:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
  for c in "$ROOT"/.ci/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc; do
    if [ -x "$c" ]; then export NVCC="$c"; fi
  done
fi
NVCC_BIN="${NVCC:-}"
if [ -z "$NVCC_BIN" ]; then
  for c in "${CUDA_HOME:-}/bin/nvcc" "${CUDA_PATH:-}/bin/nvcc" "$(command -v nvcc || true)"; do
    if [ -x "$c" ]; then
      NVCC_BIN="$c"
      break
    fi
  done
fi
if [ -z "$NVCC_BIN" ] || [ ! -x "$NVCC_BIN" ]; then
  die "nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, PATH, .ci/venv). Install the
pinned CUDA 13.0 compiler as .ci/run does:
  python3 -m venv .ci/venv && .ci/venv/bin/pip install 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' \\
    'nvidia-nvvm==13.0.*' 'nvidia-cuda-runtime==13.0.*' 'nvidia-cuda-cccl==13.0.*'"
fi
NVCC_VERSION="$("$NVCC_BIN" --version | tail -n1)"
case "$NVCC_VERSION" in
  *cuda_13.0.*) ;;
  *) [ "${VIDGRAD_BUNDLE_ANY_NVCC:-}" = 1 ] ||
    die "nvcc is '$NVCC_VERSION', not CUDA 13.0: the GPU machines' driver (580) cannot load PTX from a newer
nvcc. Use the pinned one (see docs/GPU.md), or set VIDGRAD_BUNDLE_ANY_NVCC=1 to build anyway." ;;
esac
echo "nvcc: $NVCC_BIN ($NVCC_VERSION)"

# --- the build ----------------------------------------------------------------------------------------
export CARGO_TARGET_DIR="${BUNDLE_TARGET_DIR:-target/gpu-bundle-build}"
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo
export VIDGRAD_CUDA_ARCHS="${VIDGRAD_CUDA_ARCHS-90a}"
export VIDGRAD_REQUIRE_NVCC=1 VIDGRAD_REQUIRE_SIM=1 # sim mode (VIDGRAD_CUDA_SIM=1 ./run.sh) needs the simulator

# The GPU check's test binaries: the CUDA suites, the full-size model fixtures (tests/models.rs, run.sh
# filters its on_cuda tests), and the zoo-on-CUDA suite(s) when the tree has them.
TESTS=()
for t in cuda_ops op_fixtures optim explain cuda_ptxas fusion models; do
  [ -f "tests/$t.rs" ] && TESTS+=("$t")
done
for f in tests/models_cuda*.rs; do
  [ -f "$f" ] && TESTS+=("$(basename "$f" .rs)")
done
[ "${#TESTS[@]}" -gt 0 ] || die "none of the CUDA test suites is in tests/"
ARGS=()
for t in "${TESTS[@]}"; do ARGS+=(--test "$t"); done
echo "building (target folder $CARGO_TARGET_DIR, VIDGRAD_CUDA_ARCHS=$VIDGRAD_CUDA_ARCHS): tests ${TESTS[*]}, bench suite"
mkdir -p "$CARGO_TARGET_DIR"
BUILD_LOG="$CARGO_TARGET_DIR/bundle-build.log"
LIST="$CARGO_TARGET_DIR/bundle-binaries.txt"
if ! cargo build --release "${ARGS[@]}" --bench suite --message-format=json-render-diagnostics \
  2>"$BUILD_LOG" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kinds = m["target"]["kind"]
        if "bench" in kinds or "test" in kinds:  # not the CLI that the integration tests build too
            print("bench" if "bench" in kinds else "test", m["target"]["name"], m["executable"])
' >"$LIST"; then
  tail -n 40 "$BUILD_LOG" >&2
  die "cargo build failed (whole log: $BUILD_LOG)"
fi

# --- the bundle folder --------------------------------------------------------------------------------
rm -rf "$OUT_DIR" "$ARCHIVE"
mkdir -p "$OUT_DIR/tests" "$OUT_DIR/bin" "$OUT_DIR/tree/tests" "$OUT_DIR/tools/bench" "$OUT_DIR/tools/reference"
while read -r kind name path; do
  case "$kind" in
    test) cp "$path" "$OUT_DIR/tests/$name" ;;
    bench) cp "$path" "$OUT_DIR/bin/$name" ;;
  esac
done <"$LIST"
for t in "${TESTS[@]}"; do
  [ -x "$OUT_DIR/tests/$t" ] || die "cargo did not report the test binary '$t' (see $LIST)"
done
[ -x "$OUT_DIR/bin/suite" ] || die "cargo did not report the bench binary 'suite' (see $LIST)"
# Tests find the fixtures through VIDGRAD_FIXTURE_ROOT (tests/common/mod.rs), which run.sh points at tree/.
cp -r tests/fixtures "$OUT_DIR/tree/tests/"
# PyTorch side by side: the script and the reference models it imports (ROOT = the bundle).
cp tools/bench/*.py "$OUT_DIR/tools/bench/"
tar -C tools -cf - --exclude=__pycache__ --exclude='*.pyc' reference | tar -C "$OUT_DIR/tools" -xf -
cp tools/gpu/run.sh "$OUT_DIR/run.sh"
chmod +x "$OUT_DIR/run.sh"
cp docs/GPU.md "$OUT_DIR/GPU.md"

COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] ||
  [ -n "$(git status --porcelain -- src kernels tests benches build.rs Cargo.toml Cargo.lock tools/gpu tools/bench 2>/dev/null)" ]; then
  COMMIT="$COMMIT+dirty"
fi
echo "$COMMIT" >"$OUT_DIR/COMMIT"
{
  echo "vidgrad GPU check bundle, built $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -srm)"
  echo "commit: $COMMIT"
  echo "nvcc: $NVCC_VERSION; VIDGRAD_CUDA_ARCHS=$VIDGRAD_CUDA_ARCHS (SASS beside compute_80 PTX + sm_80)"
  echo "rustc: $(rustc --version)"
  echo "profile: release, debug info off, CARGO_PROFILE_RELEASE_STRIP=debuginfo"
  echo "binaries (bytes, sha256):"
  (cd "$OUT_DIR" && for f in tests/* bin/*; do
    printf '  %-22s %10d  %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)"
  done)
} >"$OUT_DIR/BUILD.txt"

# What needs no GPU is checked here, not on the GPU's clock: the ptxas report (register spills) of every
# target built, including VIDGRAD_CUDA_ARCHS's, which CI does not build.
if ! PTXAS_OUT="$("$OUT_DIR/tests/cuda_ptxas" 2>&1)"; then
  echo "build-bundle: WARNING: tests/cuda_ptxas fails on this build (step 01 of run.sh will report it too):" >&2
  grep -E "spill|panicked|missing" <<<"$PTXAS_OUT" | grep -vE "spills 0 / 0" | head -n 12 >&2 || true
fi

# --- the archive: xz, which Python's tarfile reads where the xz tool is missing -------------------------
tar -C "$(dirname "$OUT_DIR")" -cf - "$(basename "$OUT_DIR")" | xz -9e -T1 >"$ARCHIVE"
SIZE=$(stat -c %s "$ARCHIVE")
UNPACKED=$(du -sb "$OUT_DIR" | cut -f1)
LIMIT=$((64 * 1024 * 1024))
echo "bundle: $OUT_DIR (${#TESTS[@]} test binaries + bin/suite, $((UNPACKED / 1024 / 1024)) MiB unpacked)"
echo "archive: $ARCHIVE, $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN { printf "%.1f", s / 1048576 }') MiB), $(($(now) - T0)) s"
[ "$SIZE" -lt "$LIMIT" ] || die "the archive is over 64 MiB, the device tool's limit for the carried tree"

#!/usr/bin/env bash
# Build vidgrad's release test, example and bench binaries (with the CUDA kernels) into a bundle that
# runs on a GPU machine without a Rust toolchain. See docs/GPU.md.
#
#   tools/gpu/build-bundle.sh [OUT_DIR]      (default: target/gpu-bundle; also writes OUT_DIR.tar.gz)
#
# Needs nvcc (NVCC, CUDA_HOME or PATH; .ci/run shows the PyPI install). VIDGRAD_CUDA_ARCHS=90a adds
# SASS for the target GPU (otherwise the driver JIT-compiles the embedded compute_80 PTX once).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/gpu-bundle}
export VIDGRAD_REQUIRE_NVCC=1
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/tests"

list_bins() {
  # The executables cargo built, as "kind name path" (kind: test, example, bench).
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    kind = "bench" if "bench" in t["kind"] else "example" if "example" in t["kind"] else "test" if m["profile"]["test"] else "bin"
    print(kind, t["name"], m["executable"])
'
}

{
  cargo test --release --no-run --message-format=json
  cargo build --release --examples --message-format=json
  cargo bench --no-run --message-format=json
  cargo build --release --bins --message-format=json
} 2> "$OUT/build.log" | list_bins | sort -u > "$OUT/binaries.txt"

while read -r kind name path; do
  case "$kind" in
    test) cp "$path" "$OUT/tests/$name-$(basename "$path" | sed 's/.*-//')" ;;
    *) cp "$path" "$OUT/bin/$name" ;;
  esac
done < "$OUT/binaries.txt"

# Fixtures are read relative to CARGO_MANIFEST_DIR, which is baked in at build time; the run script
# points the tests at the bundle's copy instead by running them from a tree with the same layout.
mkdir -p "$OUT/tree/tests"
cp -r tests/fixtures "$OUT/tree/tests/"
cp docs/GPU.md "$OUT/" 2>/dev/null || true
git rev-parse HEAD > "$OUT/COMMIT" 2>/dev/null || true

cat > "$OUT/run.sh" <<'RUN'
#!/usr/bin/env bash
# Run every test binary of the bundle on this machine's GPU (VIDGRAD_REQUIRE_CUDA=1: no silent skips).
#   ./run.sh                      all tests
#   ./run.sh cuda_ops             test binaries whose name starts with cuda_ops
#   SANITIZE=memcheck ./run.sh cuda_ops    under compute-sanitizer (memcheck, racecheck, ...)
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export VIDGRAD_REQUIRE_CUDA=${VIDGRAD_REQUIRE_CUDA:-1}
export VIDGRAD_FIXTURE_ROOT="$HERE/tree"
cd "$HERE/tree"
status=0
for t in "$HERE"/tests/${1:-}*; do
  echo "=== $(basename "$t")"
  if [ -n "${SANITIZE:-}" ]; then
    compute-sanitizer --tool "$SANITIZE" --error-exitcode 99 "$t" --test-threads=1 || status=1
  else
    "$t" --test-threads=1 || status=1
  fi
done
exit $status
RUN
chmod +x "$OUT/run.sh"
tar -C "$(dirname "$OUT")" -czf "$OUT.tar.gz" "$(basename "$OUT")"
echo "bundle: $OUT ($(wc -l < "$OUT/binaries.txt") binaries), $OUT.tar.gz"

#!/usr/bin/env bash
# shellcheck disable=SC2317  # the steps are functions called as "step$st": shellcheck 0.9 calls them unreachable
# vidgrad's GPU check, from the bundle that tools/gpu/build-bundle.sh makes (docs/GPU.md). One command,
# on a GPU machine without a Rust toolchain:
#
#   ./run.sh [OUTDIR]        results in OUTDIR/results/ (default OUTDIR: $OUT, else ./out)
#
# Steps, in this order, each under its own time limit (a failing or hanging step does not stop the next;
# the whole run stays within BUNDLE_BUDGET_S, default 565 s, so it fits a 10-minute command):
#   00  the machine: nvidia-smi, driver, compute-sanitizer, PyTorch        → results/00-env.txt
#   01  CUDA suites on the GPU against the CPU and the PyTorch fixtures     → results/01-cuda-suite.txt
#       (cuda_ops, op_fixtures, optim, explain, cuda_ptxas, fusion; VIDGRAD_REQUIRE_CUDA=1: no silent skip)
#   02  the zoo models on the GPU against the CPU (tests/models_cuda*) and the full-size PyTorch model
#       fixtures on the GPU (tests/models.rs, its on_cuda tests; not in sim mode)  → results/02-models.txt
#   03  compute-sanitizer memcheck and racecheck on cuda_ops, test by test → results/03-memcheck.txt,
#                                                                            results/03-racecheck.txt
#   04  the bench suite's CUDA rows (kernels in fp32, tf32 and bf16; whole models in BENCH_MODEL_MODES,
#       default tf32, the CUDA default) and PyTorch side by side            → results/04-bench.md (tables
#       for docs/PERFORMANCE.md), results/04-bench.tar.gz (JSON and logs)
#   then results/SUMMARY.md: one row per step for docs/GPU-VALIDATION.md.
# That is 8 files: the most the device tool brings back from $OUT.
#
# BUNDLE_STEPS="01 03" ./run.sh  only those steps (the others are listed as skipped).
# VIDGRAD_CUDA_SIM=1 ./run.sh    sim mode, for a machine without a GPU: the CUDA suites run on the simulated
#   device (docs/CUDA-SIM.md), VIDGRAD_REQUIRE_CUDA is not set, compute-sanitizer is not run, the bench's
#   CUDA rows (which need a real GPU) and PyTorch's side are noted as not run. Time limits are
#   multiplied by BUNDLE_TIME_SCALE (default 20 in sim mode, 1 otherwise); BUNDLE_BUDGET_S=0: no overall limit.
# Time limits in seconds (before the scale): LIMIT_SUITE=70 LIMIT_MODELS=90 LIMIT_MEMCHECK=30
#   LIMIT_RACECHECK=60 LIMIT_BENCH_MODELS=45 LIMIT_BENCH_KERNELS=160 LIMIT_TORCH_MODELS=35 LIMIT_TORCH_KERNELS=100
#   (590 s in all, each cut to what is left of BUNDLE_BUDGET_S; set from the first H200 run, 2026-12-04, which
#   took 35, 60, 7, 55+ (cut), 37, 129, 25 and 76 s: about 430 s with racecheck cut at its limit).
# COMPUTE_SANITIZER=/path picks the sanitizer; SIM_SANITIZER=1 runs step 03 in sim mode too (with a
#   stand-in sanitizer: a test of this script).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
OUTDIR="${1:-${OUT:-$PWD/out}}"
mkdir -p "$OUTDIR/results"
OUTDIR="$(cd "$OUTDIR" && pwd)"
RES="$OUTDIR/results"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vidgrad-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

SIM=0
if [ "${VIDGRAD_CUDA_SIM:-}" = "1" ]; then SIM=1; fi
if [ "$SIM" = 1 ]; then
  SCALE="${BUNDLE_TIME_SCALE:-20}"
  BUDGET="${BUNDLE_BUDGET_S:-0}"
  unset VIDGRAD_REQUIRE_CUDA
else
  SCALE="${BUNDLE_TIME_SCALE:-1}"
  BUDGET="${BUNDLE_BUDGET_S:-565}"
  export VIDGRAD_REQUIRE_CUDA=1
fi
export VIDGRAD_FIXTURE_ROOT="$HERE/tree"
COMMIT="$(head -n1 "$HERE/COMMIT" 2>/dev/null || echo unknown)"
SHORT="${COMMIT:0:12}"
case "$COMMIT" in *+dirty) SHORT="$SHORT+dirty" ;; esac
export VIDGRAD_COMMIT="$SHORT" # the bench's JSON names this commit (benches/suite/report.rs)
export RUST_BACKTRACE=1
# The fixtures are found through VIDGRAD_FIXTURE_ROOT; running from tree/ keeps relative paths inside it.
cd "$HERE/tree"

now_ms() { date +%s%3N; }
T_START=$(now_ms)
DATE="$(date -u +%Y-%m-%d)"

log() { printf '%s\n' "$*" >&2; }
secs() { # milliseconds → seconds with one decimal
  printf '%d.%d' "$(($1 / 1000))" "$((($1 % 1000) / 100))"
}

# limit CAP: the seconds a part may take: CAP × SCALE, cut to what is left of the overall budget.
limit() {
  local cap=$(($1 * SCALE))
  if [ "$BUDGET" -gt 0 ]; then
    local left=$((BUDGET - ($(now_ms) - T_START) / 1000))
    if [ "$left" -lt "$cap" ]; then cap=$left; fi
  fi
  if [ "$cap" -lt 0 ]; then cap=0; fi
  echo "$cap"
}

# run_to LOG SECONDS CMD...: CMD's output appended to LOG, killed (with its children) after SECONDS.
# Returns CMD's status; 124: it ran out of time; 125: not started, less than 3 s were left.
run_to() {
  local logf=$1 t=$2 rc=0
  shift 2
  if [ "$t" -lt 3 ]; then
    echo "NOT RUN: no time left in this step's limit for: $*" >>"$logf"
    return 125
  fi
  echo "\$ $* (time limit ${t} s)" >>"$logf"
  local t0
  t0=$(now_ms)
  timeout --kill-after=5 "$t" "$@" >>"$logf" 2>&1 </dev/null || rc=$?
  if [ "$rc" = 137 ]; then rc=124; fi
  if [ "$rc" = 124 ]; then
    echo "TIMED OUT after ${t} s: $*" >>"$logf"
  fi
  echo "(exit status $rc, $(secs $(($(now_ms) - t0))) s)" >>"$logf"
  echo >>"$logf"
  return "$rc"
}

# Keep a result file under the device tool's 16 MiB per file: the first and last 4 MiB.
cap_file() {
  local f=$1
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((8 * 1024 * 1024)) ]; then
    {
      head -c $((4 * 1024 * 1024)) "$f"
      printf '\n\n[... cut to the first and last 4 MiB ...]\n\n'
      tail -c $((4 * 1024 * 1024)) "$f"
    } >"$f.cut"
    mv "$f.cut" "$f"
  fi
}

# libtest's tallies in a log: "PASSED FAILED IGNORED".
tally() {
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;/) p += $(i-1);
         if ($(i) ~ /^failed;/) f += $(i-1); if ($(i) ~ /^ignored;/) g += $(i-1) } }
       END { printf "%d %d %d\n", p, f, g }' "$1"
}
# The failed tests: libtest's closing "failures:" list (its lines are "    name").
failed_tests() {
  awk '/^failures:$/ { on = 1; next } /^test result:/ { on = 0 } on && /^    [A-Za-z0-9_:]+$/ { print $1 }' "$1" | sort -u
}

# The per-step records for SUMMARY.md.
S_ID=() S_NAME=() S_STATUS=() S_SECS=() S_LIMIT=() S_FILE=() S_CMD=() S_RESULT=()
record() { # id name status seconds limit file command result
  S_ID+=("$1") S_NAME+=("$2") S_STATUS+=("$3") S_SECS+=("$4") S_LIMIT+=("$5") S_FILE+=("$6")
  S_CMD+=("$7") S_RESULT+=("$8")
  log "== step $1 ($2): $3 in $4 s — $8"
}

# ---------------------------------------------------------------------------------------------------
# 00 the machine
# ---------------------------------------------------------------------------------------------------
ENV_F="$RES/00-env.txt"
t0=$(now_ms)
GPU="none" DRIVER="n/a" CUDA_VER="n/a" SANITIZER="" SAN_VER="" TORCH=""
{
  echo "vidgrad GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "bundle commit: $COMMIT"
  echo "mode: $([ "$SIM" = 1 ] && echo "SIM (VIDGRAD_CUDA_SIM=1: the CUDA suites run on the simulated device)" || echo "GPU (VIDGRAD_REQUIRE_CUDA=1)")"
  echo "time limits: × $SCALE; overall budget: $([ "$BUDGET" -gt 0 ] && echo "$BUDGET s" || echo none)"
  echo "host: $(uname -srm); $(nproc) CPUs; $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM"
  echo "CPU: $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n1)"
  echo
  echo "--- BUILD.txt"
  cat "$HERE/BUILD.txt" 2>/dev/null || echo "(no BUILD.txt)"
  echo
} >"$ENV_F"
if ! command -v nvidia-smi >/dev/null 2>&1 && [ -x /usr/local/nvidia/bin/nvidia-smi ]; then
  PATH="$PATH:/usr/local/nvidia/bin"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  q="$(timeout 20 nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -n1 || true)"
  if [ -n "$q" ] && ! grep -qi "fail\|error\|not found" <<<"$q"; then
    GPU="$(cut -d, -f1 <<<"$q" | sed 's/^ *//;s/ *$//')"
    DRIVER="$(cut -d, -f2 <<<"$q" | sed 's/^ *//;s/ *$//')"
  fi
  CUDA_VER="$(timeout 20 nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1 || true)"
  CUDA_VER="${CUDA_VER:-n/a}"
  {
    echo "--- nvidia-smi"
    timeout 20 nvidia-smi 2>&1 || true
    echo
    echo "--- nvidia-smi -q (clocks, memory)"
    timeout 20 nvidia-smi -q -d CLOCK,MEMORY,PERFORMANCE 2>&1 | head -n 80 || true
    echo
  } >>"$ENV_F"
else
  echo "--- nvidia-smi: not found on PATH" >>"$ENV_F"
fi
if [ -n "${COMPUTE_SANITIZER:-}" ]; then
  SANITIZER="$COMPUTE_SANITIZER"
elif command -v compute-sanitizer >/dev/null 2>&1; then
  SANITIZER="$(command -v compute-sanitizer)"
else
  for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer /opt/nvidia/compute-sanitizer/compute-sanitizer; do
    if [ -x "$c" ]; then
      SANITIZER="$c"
      break
    fi
  done
fi
if [ -n "$SANITIZER" ]; then
  SAN_VER="$("$SANITIZER" --version 2>&1 | grep -i version | tail -n1 || true)"
  echo "--- compute-sanitizer: $SANITIZER ($SAN_VER)" >>"$ENV_F"
else
  echo "--- compute-sanitizer: not found (PATH, /usr/local/cuda*/bin, /opt/nvidia)" >>"$ENV_F"
fi
if command -v python3 >/dev/null 2>&1; then
  TORCH="$(timeout 60 python3 -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no-cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null || true)"
fi
echo "--- python3: $(command -v python3 || echo none); torch: ${TORCH:-not importable}" >>"$ENV_F"
if [ "$SIM" = 1 ]; then
  MACHINE="no GPU: cuda-sim on $(nproc) × $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -n1)"
else
  MACHINE="$GPU"
fi
record 00 "machine" "done" "$(secs $(($(now_ms) - t0)))" "-" "00-env.txt" "nvidia-smi" \
  "$MACHINE; driver $DRIVER; CUDA $CUDA_VER; compute-sanitizer: ${SAN_VER:-${SANITIZER:-not found}}; torch: ${TORCH:-not importable}"

# ---------------------------------------------------------------------------------------------------
# test_step ID NAME FILE CAP BIN...: each test binary with --test-threads=1; a failing binary's failed
# tests are run again one by one (a CUDA error can poison the context for every later test of a process).
# ---------------------------------------------------------------------------------------------------
test_step() {
  local id=$1 name=$2 file=$3 cap=$4
  shift 4
  local f="$RES/$file" t0 step_limit start
  t0=$(now_ms)
  step_limit=$(limit "$cap")
  : >"$f"
  {
    echo "step $id: $name — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $COMMIT"
    if [ "$SIM" = 1 ]; then
      echo "SIM mode: VIDGRAD_CUDA_SIM=1, the CUDA runs are on the simulated device (not a GPU)"
    else
      echo "VIDGRAD_REQUIRE_CUDA=1 (a missing GPU is a failure, not a skip); GPU: $GPU, driver $DRIVER"
    fi
    echo "time limit of the step: ${step_limit} s"
    echo
  } >>"$f"
  local status=pass summary="" cmd="" bin b rc p fl ig fails alone
  start=$(now_ms)
  for bin in "$@"; do
    b=$(basename "$bin")
    cmd+="${cmd:+, }$b"
    local left=$((step_limit - ($(now_ms) - start) / 1000))
    local extra=()
    # cuda_ops prints each family's worst relative error: keep those lines.
    if [ "$b" = cuda_ops ]; then extra=(--nocapture); fi
    # tests/models.rs: its CUDA half only (the CPU half is the README's test command's business).
    if [ "$b" = models ]; then extra=(on_cuda); fi
    # Tests that run the CLI binary find it at the build machine's path (CARGO_BIN_EXE_vidgrad): not here.
    if [ "$b" = explain ]; then
      extra=(--skip explain_command_writes_frames_gif_and_contact_sheet)
      echo "(skipped: explain_command_writes_frames_gif_and_contact_sheet, which runs the CLI binary from the build machine's path)" >>"$f"
    fi
    local blog="$WORK/$b.log"
    : >"$blog"
    rc=0
    run_to "$blog" "$left" "$bin" --test-threads=1 "${extra[@]}" || rc=$?
    read -r p fl ig < <(tally "$blog")
    fails="$(failed_tests "$blog" | tr '\n' ' ')"
    alone=""
    # A few failures among passes: run each failed test again alone (a CUDA error poisons the context
    # for every later test of the process). When all fail, the cause is common to all: no rerun.
    if [ "$rc" != 0 ] && [ "$rc" -lt 124 ] && [ -n "$fails" ] && [ "$p" -gt 0 ] && [ "$fl" -le 3 ]; then
      echo "--- $b: the failed tests again, one process each" >>"$blog"
      for t in $fails; do
        local l2=$((step_limit - ($(now_ms) - start) / 1000))
        if [ "$l2" -gt 30 ]; then l2=30; fi
        local r2=0
        run_to "$blog" "$l2" "$bin" --exact "$t" --test-threads=1 || r2=$?
        local how="fails alone"
        if [ "$r2" = 0 ]; then how="passes alone"; elif [ "$r2" = 124 ]; then how="times out alone"; fi
        alone+="${alone:+, }$t $how"
      done
    fi
    local one names panic
    # at most 3 names, and the first panic's message (the line after "panicked at")
    names="$(tr ' ' '\n' <<<"$fails" | sed '/^$/d' | head -n 3 | paste -sd ' ' -)"
    [ "$fl" -gt 3 ] && names+=" +$((fl - 3)) more"
    panic="$(awk '/panicked at/ { getline; print; exit }' "$blog" | cut -c1-200)"
    if [ "$rc" = 0 ]; then
      one="$b $p passed"
    elif [ "$rc" = 125 ]; then
      one="$b NOT RUN (the step's time limit was used up)"
      [ "$status" = pass ] && status=TIMEOUT
    elif [ "$rc" = 124 ]; then
      one="$b TIMED OUT ($p passed, $fl failed before the limit)"
      [ "$status" = pass ] && status=TIMEOUT
    else
      one="$b FAILED: $fl of $((p + fl)) failed ($names${alone:+; $alone})"
      [ "$p$fl" = 00 ] && one="$b FAILED (exit status $rc before any test finished)"
      [ -n "$panic" ] && one+="; first panic: $panic"
      status=FAIL
    fi
    [ "$ig" != 0 ] && one+=", $ig ignored"
    summary+="${summary:+; }$one"
    {
      echo "=== $b: $one"
      cat "$blog"
    } >>"$f"
  done
  if [ "$#" = 0 ]; then status="n/a"; fi
  # cuda_ops: the worst relative error per family.
  local worst
  worst="$(grep -ho '[A-Za-z0-9/_-]*: [0-9]* configurations, worst relative error [0-9.e+-]*' "$f" 2>/dev/null |
    sed 's/: \([0-9]*\) configurations, worst relative error /: /' | paste -sd ',' - | sed 's/,/, /g' || true)"
  [ -n "$worst" ] && summary+="; cuda_ops worst relative errors: $worst"
  {
    echo
    echo "RESULT: $status — $summary"
  } >>"$f"
  cap_file "$f"
  STEP_STATUS=$status STEP_SUMMARY=$summary STEP_CMD=$cmd
  STEP_SECS="$(secs $(($(now_ms) - t0)))" STEP_LIMIT=$step_limit
}

bins_of() { # the bundle's test binaries among the names given
  local n
  for n in "$@"; do
    if [ -x "$HERE/tests/$n" ]; then echo "$HERE/tests/$n"; fi
  done
}

# ---------------------------------------------------------------------------------------------------
# 01 the CUDA suites
# ---------------------------------------------------------------------------------------------------
step01() {
  mapfile -t SUITE < <(bins_of cuda_ops op_fixtures optim explain cuda_ptxas fusion)
  test_step 01 "CUDA suites vs CPU and PyTorch fixtures" 01-cuda-suite.txt "${LIMIT_SUITE:-70}" "${SUITE[@]}"
  record 01 "CUDA suites" "$STEP_STATUS" "$STEP_SECS" "$STEP_LIMIT" 01-cuda-suite.txt \
    "$ENVNOTE tests/{$STEP_CMD} --test-threads=1" "$STEP_SUMMARY"
}

# ---------------------------------------------------------------------------------------------------
# 02 the zoo models
# ---------------------------------------------------------------------------------------------------
step02() {
  mapfile -t ZOO < <(find "$HERE/tests" -maxdepth 1 -type f -name 'models_cuda*' -perm -u+x | sort)
  # The full-size fixtures: on a GPU only (`cargo test --release` runs those that fit CI on the simulator).
  if [ "$SIM" != 1 ] && [ -x "$HERE/tests/models" ]; then ZOO+=("$HERE/tests/models"); fi
  if [ "${#ZOO[@]}" = 0 ]; then
    f="$RES/02-models.txt"
    {
      echo "step 02: zoo models on the GPU against the CPU — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $COMMIT"
      echo "NOT RUN: this bundle has no models_cuda test binary (tests/models_cuda.rs was not in the tree it"
      echo "was built from). tests/models.rs runs on the CPU only, so it is not part of this GPU check."
    } >"$f"
    record 02 "zoo models" "n/a" "0.0" "-" 02-models.txt "tests/models_cuda*" \
      "not in this bundle (tests/models_cuda.rs absent when it was built)"
  else
    test_step 02 "zoo models on the GPU vs the CPU" 02-models.txt "${LIMIT_MODELS:-90}" "${ZOO[@]}"
    record 02 "zoo models" "$STEP_STATUS" "$STEP_SECS" "$STEP_LIMIT" 02-models.txt \
      "$ENVNOTE tests/{$STEP_CMD} --test-threads=1" "$STEP_SUMMARY"
  fi
}

# ---------------------------------------------------------------------------------------------------
# 03 compute-sanitizer on cuda_ops, one test per process so every family is checked within the limit
# ---------------------------------------------------------------------------------------------------
sanitize() { # tool file cap
  local tool=$1 f="$RES/$2" cap=$3 t0 tlimit start
  t0=$(now_ms)
  : >"$f"
  echo "step 03: compute-sanitizer --tool $tool on tests/cuda_ops — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $COMMIT" >>"$f"
  local status result
  if [ "$SIM" = 1 ] && [ "${SIM_SANITIZER:-}" != 1 ]; then
    status="not run"
    result="sim mode: compute-sanitizer checks kernels on a real GPU only (the simulator's own bounds, race and barrier checks ran in step 01)"
  elif [ -z "$SANITIZER" ]; then
    status="not run"
    result="compute-sanitizer is not installed on this machine (not on PATH, /usr/local/cuda*/bin or /opt/nvidia)"
  elif [ ! -x "$HERE/tests/cuda_ops" ]; then
    status="not run"
    result="the bundle has no cuda_ops test binary"
  else
    tlimit=$(limit "$cap")
    {
      echo "$SANITIZER ($SAN_VER); time limit of the step ${tlimit} s, shared among the tests"
      echo "Note: vidgrad's caching allocator rounds each device block up to a size class (src/backend/cuda/alloc.rs):"
      echo "an overrun inside that rounding (<= 12.5 %) is invisible to memcheck; the simulator's bounds checks are exact."
      echo
    } >>"$f"
    local tests=() t
    mapfile -t tests < <("$HERE/tests/cuda_ops" --list --format=terse 2>/dev/null | sed -n 's/: test$//p')
    # The quick allocator test first: it tells whether the sanitizer accepts this device at all, and the
    # time it leaves goes to the next.
    local ordered=() probe=allocator_reuses_blocks_in_steady_state
    for t in "${tests[@]}"; do [ "$t" = "$probe" ] && ordered+=("$t"); done
    for t in "${tests[@]}"; do [ "$t" != "$probe" ] && ordered+=("$t"); done
    local n=${#ordered[@]} i=0 clean=0 errs=0 cut=0 failed=0 refused="" names_err="" names_cut="" names_fail=""
    start=$(now_ms)
    for t in "${ordered[@]}"; do
      local left=$((tlimit - ($(now_ms) - start) / 1000)) each
      if [ "$left" -lt 3 ]; then break; fi
      each=$((left / (n - i)))
      [ "$each" -lt 8 ] && each=$((left < 8 ? left : 8))
      local tl="$WORK/san-$tool-$t.log" rc=0
      : >"$tl"
      # racecheck runs the shared-memory GEMMs ~50× slower: 20 configurations per family (instead of
      # 200) let it reach every family within its limit (the first H200 run cut conv and matmul at 55 s).
      local cases=200
      [ "$tool" = racecheck ] && cases="${RACECHECK_CASES:-20}"
      VIDGRAD_CUDA_OPS_CASES=$cases run_to "$tl" "$each" "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 20 \
        "$HERE/tests/cuda_ops" --exact "$t" --test-threads=1 --nocapture || rc=$?
      cat "$tl" >>"$f"
      i=$((i + 1))
      if grep -qiE "device not supported|not supported on this|unable to (find|load|launch)|injection .*fail|CUDA_ERROR_UNKNOWN|error 999" "$tl" ||
        { [ "$rc" != 0 ] && [ "$rc" != 99 ] && [ "$rc" != 124 ] && [ "$rc" != 125 ] && [ "$rc" != 101 ] && ! grep -q "ERROR SUMMARY" "$tl"; }; then
        refused="$(grep -iE "not supported|unable|fail|error" "$tl" | grep -v '^\$ ' | sed 's/^=* *//' | head -n 3 | paste -sd '|' - | sed 's/|/; /g')"
        refused="${refused:-exit status $rc without a report}"
        break
      fi
      if [ "$rc" = 124 ] || [ "$rc" = 125 ]; then
        cut=$((cut + 1))
        names_cut+="${names_cut:+, }$t"
      elif [ "$rc" = 99 ] || grep -qE "ERROR SUMMARY: [1-9]" "$tl"; then
        errs=$((errs + 1))
        names_err+="${names_err:+, }$t"
      elif [ "$rc" != 0 ]; then
        failed=$((failed + 1))
        names_fail+="${names_fail:+, }$t"
      else
        clean=$((clean + 1))
      fi
      # a partial run still counts the errors it printed
      if [ "$rc" = 124 ] && grep -qE "^========= (Invalid|Race|Error|Barrier|Uninitialized|Program hit)" "$tl"; then
        errs=$((errs + 1))
        names_err+="${names_err:+, }$t (before the limit)"
      fi
    done
    if [ -n "$refused" ]; then
      status="refused"
      result="compute-sanitizer refused this device or could not run ($refused); nothing was checked"
    else
      result="$tool: $clean of $n tests clean"
      [ "$errs" != 0 ] && result+="; ERRORS in $errs: $names_err"
      [ "$failed" != 0 ] && result+="; test failed under the sanitizer without its report: $names_fail"
      [ "$cut" != 0 ] && result+="; $cut cut at the time limit (checked up to then, no error seen): $names_cut"
      [ "$((i))" -lt "$n" ] && result+="; $((n - i)) not reached"
      if [ "$errs" != 0 ] || [ "$failed" != 0 ]; then
        status=FAIL
      elif [ "$cut" != 0 ]; then
        status=partial
      else status=pass; fi
    fi
  fi
  {
    echo
    echo "RESULT: $status — $result"
  } >>"$f"
  cap_file "$f"
  record 03 "$tool" "$status" "$(secs $(($(now_ms) - t0)))" "${tlimit:--}" "$2" \
    "compute-sanitizer --tool $tool --error-exitcode 99 tests/cuda_ops --exact <each test>" "$result"
}
step03() {
  sanitize memcheck 03-memcheck.txt "${LIMIT_MEMCHECK:-30}"
  sanitize racecheck 03-racecheck.txt "${LIMIT_RACECHECK:-60}"
}

# ---------------------------------------------------------------------------------------------------
# 04 the bench suite's CUDA rows, then PyTorch on the same rows
# ---------------------------------------------------------------------------------------------------
step04() {
  t0=$(now_ms)
  BENCH="$WORK/bench"
  mkdir -p "$BENCH/torch-models" "$BENCH/torch-kernels"
  BLOG="$BENCH/04-bench.log"
  : >"$BLOG"
  B_STATUS=pass B_RESULT="" B_LIMIT=0
  bench_part() { # what cap [math modes...]
    local what=$1 cap=$2 l rc=0
    shift 2
    l=$(limit "$cap")
    B_LIMIT=$((B_LIMIT + l))
    echo "=== bin/suite cuda $what $*" >>"$BLOG"
    VIDGRAD_BENCH_OUT="$BENCH" run_to "$BLOG" "$l" "$HERE/bin/suite" cuda "$what" "$@" || rc=$?
    if grep -q "CUDA benches skipped" "$BLOG"; then
      B_RESULT+="${B_RESULT:+; }$what: skipped ($(sed -n 's/.*CUDA benches skipped: //p' "$BLOG" | head -n1))"
      [ "$SIM" = 1 ] && B_STATUS="not run" || B_STATUS=FAIL
    elif [ "$rc" = 125 ]; then
      B_RESULT+="${B_RESULT:+; }$what: not run (no time left)"
      [ "$B_STATUS" != FAIL ] && B_STATUS=TIMEOUT
    elif [ "$rc" = 124 ]; then
      B_RESULT+="${B_RESULT:+; }$what: TIMED OUT after $l s (rows printed so far are in the log)"
      [ "$B_STATUS" != FAIL ] && B_STATUS=TIMEOUT
    elif [ "$rc" != 0 ]; then
      B_RESULT+="${B_RESULT:+; }$what: FAILED (exit status $rc)"
      B_STATUS=FAIL
    fi
  }
  if [ ! -x "$HERE/bin/suite" ]; then
    B_STATUS="not run" B_RESULT="the bundle has no bench binary (bin/suite)"
  else
    # shellcheck disable=SC2086  # BENCH_MODEL_MODES is a list of words
    bench_part models "${LIMIT_BENCH_MODELS:-45}" ${BENCH_MODEL_MODES:-tf32}
    bench_part kernels "${LIMIT_BENCH_KERNELS:-160}"
  fi
  # What vidgrad measured, from its JSON.
  OURS="$(
    python3 - "$BENCH" <<'PY' 2>/dev/null || true
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
out = []
m = d / "models_cuda.json"
if m.exists():
    for r in json.loads(m.read_text())["models"]:
        name = f"{r['model']} {r.get('math', 'fp32')}"
        if "error" in r:
            out.append(f"{name} failed: {r['error'][:80]}")
        else:
            out.append(f"{name} {r['inference']['clips_per_s']:.1f} / {r['train']['clips_per_s']:.1f} clips/s")
k = d / "kernels_cuda.json"
if k.exists():
    doc = json.loads(k.read_text())
    rows = [r for mm in doc["models"] for r in mm["rows"]]
    bad = [r for r in rows if "error" in r]
    out.append(f"{len(rows) - len(bad)} kernel rows timed, {len(bad)} failed; kernel sums (inference / training ms): " +
               ", ".join(f"{mm['model']} {mode} {v['inference_ms']:.1f} / {v['train_ms']:.1f}"
                         for mm in doc["models"] for mode, v in mm["sums"].items()))
print("; ".join(out))
PY
  )"
  [ -n "$OURS" ] && B_RESULT="${OURS}${B_RESULT:+; $B_RESULT}"
  [ -n "$OURS" ] && case "$OURS" in *clips/s*) B_RESULT="models inference / training step: $B_RESULT" ;; esac
  # PyTorch side by side (tools/bench/torch_side_by_side.py), whole models and kernels apart so that a time
  # limit in one keeps the other.
  T_RESULT=""
  if [ "$SIM" = 1 ]; then
    T_RESULT="PyTorch side by side not run: sim mode (it needs vidgrad's CUDA rows and a GPU)"
  elif [ -z "$TORCH" ]; then
    T_RESULT="PyTorch side by side not run: python3 cannot import torch"
    B_STATUS=FAIL
  elif [[ "$TORCH" != *" cuda "* ]]; then
    T_RESULT="PyTorch side by side not run: torch sees no CUDA device ($TORCH)"
    B_STATUS=FAIL
  else
    for part in models kernels; do
      src="$BENCH/${part}_cuda.json"
      if [ ! -f "$src" ]; then
        T_RESULT+="${T_RESULT:+; }torch $part: not run (no ${part}_cuda.json from vidgrad)"
        continue
      fi
      cp "$src" "$BENCH/torch-$part/"
      cap="${LIMIT_TORCH_MODELS:-35}"
      [ "$part" = kernels ] && cap="${LIMIT_TORCH_KERNELS:-100}"
      l=$(limit "$cap")
      B_LIMIT=$((B_LIMIT + l))
      rc=0
      echo "=== torch_side_by_side.py --only $part" >>"$BLOG"
      PYTHONUNBUFFERED=1 run_to "$BLOG" "$l" python3 "$HERE/tools/bench/torch_side_by_side.py" --device cuda \
        --dir "$BENCH/torch-$part" --only "$part" || rc=$?
      if [ "$rc" = 0 ]; then
        T_RESULT+="${T_RESULT:+; }torch $part: done"
      elif [ "$rc" = 124 ] || [ "$rc" = 125 ]; then
        T_RESULT+="${T_RESULT:+; }torch $part: $([ "$rc" = 124 ] && echo "TIMED OUT after $l s" || echo "not run (no time left)")"
        [ "$B_STATUS" = pass ] && B_STATUS=TIMEOUT
      else
        T_RESULT+="${T_RESULT:+; }torch $part: FAILED (exit status $rc)"
        B_STATUS=FAIL
      fi
    done
  fi
  B_RESULT+="${B_RESULT:+; }$T_RESULT"
  # 04-bench.md: the tables, headings pushed down two levels, to go under a "## GPU" heading of PERFORMANCE.md.
  {
    echo "## GPU ($([ "$SIM" = 1 ] && echo "none: sim mode" || echo "$GPU, driver $DRIVER, CUDA $CUDA_VER")), measured $DATE at commit $SHORT"
    echo
    echo "Machine: $MACHINE. Bundle built from commit $COMMIT (BUILD.txt: $(grep -m1 '^nvcc' "$HERE/BUILD.txt" 2>/dev/null || echo "nvcc unknown"))."
    echo "Commands (tools/gpu/run.sh step 04): \`bin/suite cuda models ${BENCH_MODEL_MODES:-tf32}\`, \`bin/suite cuda kernels\` (fp32, tf32, bf16),"
    echo "\`python3 tools/bench/torch_side_by_side.py --device cuda --only models|kernels\`."
    echo "Result: $B_STATUS — $B_RESULT"
    for md in "$BENCH/models_cuda.md" "$BENCH/kernels_cuda.md" "$BENCH/torch-models/side_by_side_cuda.md" \
      "$BENCH/torch-kernels/side_by_side_cuda.md"; do
      if [ -f "$md" ]; then
        echo
        sed 's/^#/###/' "$md"
      fi
    done
    if [ "$B_STATUS" != pass ]; then
      echo
      echo "### The bench log's last 60 lines"
      echo
      echo '```'
      tail -n 60 "$BLOG"
      echo '```'
    fi
  } >"$RES/04-bench.md"
  cap_file "$RES/04-bench.md"
  tar -C "$BENCH" -czf "$RES/04-bench.tar.gz" .
  record 04 "bench" "$B_STATUS" "$(secs $(($(now_ms) - t0)))" "$B_LIMIT" "04-bench.md, 04-bench.tar.gz" \
    "bin/suite cuda models ${BENCH_MODEL_MODES:-tf32}; bin/suite cuda kernels; torch_side_by_side.py --device cuda --only models|kernels" \
    "$B_RESULT"
}

# ---------------------------------------------------------------------------------------------------
# The steps (BUNDLE_STEPS="01 03" runs some of them only, e.g. again in the device's warm minute)
# ---------------------------------------------------------------------------------------------------
ENVNOTE="$([ "$SIM" = 1 ] && echo "VIDGRAD_CUDA_SIM=1" || echo "VIDGRAD_REQUIRE_CUDA=1")"
for st in 01 02 03 04; do
  if [[ " ${BUNDLE_STEPS:-01 02 03 04} " == *" $st "* ]]; then
    "step$st"
  else
    record "$st" "(not selected)" "skipped" "0.0" "-" "-" "-" "not in BUNDLE_STEPS=${BUNDLE_STEPS:-}"
  fi
done

# ---------------------------------------------------------------------------------------------------
# SUMMARY.md
# ---------------------------------------------------------------------------------------------------
TOTAL="$(secs $(($(now_ms) - T_START)))"
esc() { printf '%s' "${1//|/\\|}"; }
{
  echo "# vidgrad GPU check, $DATE"
  echo
  echo "Machine: $MACHINE; driver $DRIVER, CUDA $CUDA_VER. Bundle commit: $COMMIT. Mode: $([ "$SIM" = 1 ] && echo "SIM (VIDGRAD_CUDA_SIM=1)" || echo "GPU (VIDGRAD_REQUIRE_CUDA=1)")."
  echo "Total: $TOTAL s (overall budget: $([ "$BUDGET" -gt 0 ] && echo "$BUDGET s" || echo none); limits × $SCALE)."
  echo
  echo "| step | what | status | seconds | limit (s) | result file | result |"
  echo "|---|---|---|---|---|---|---|"
  for i in "${!S_ID[@]}"; do
    echo "| ${S_ID[$i]} | ${S_NAME[$i]} | ${S_STATUS[$i]} | ${S_SECS[$i]} | ${S_LIMIT[$i]} | ${S_FILE[$i]} | $(esc "${S_RESULT[$i]}") |"
  done
  echo
  if [ "$SIM" = 1 ]; then
    echo "## Rows for docs/GPU-VALIDATION.md, table \"Simulator runs\" (| date | commit | machine | command | result |)"
    echo
    for i in "${!S_ID[@]}"; do
      if [ "${S_ID[$i]}" = 00 ] || [ "${S_STATUS[$i]}" = skipped ]; then continue; fi
      echo "| $DATE | $SHORT | $(esc "$MACHINE") | \`$(esc "${S_CMD[$i]}")\` (tools/gpu/run.sh step ${S_ID[$i]}, ${S_SECS[$i]} s) | ${S_STATUS[$i]}: $(esc "${S_RESULT[$i]}") |"
    done
  else
    echo "## Rows for docs/GPU-VALIDATION.md, table \"GPU runs\" (| date | commit | GPU | driver / CUDA | command | result | notes |)"
    echo
    for i in "${!S_ID[@]}"; do
      if [ "${S_ID[$i]}" = 00 ] || [ "${S_STATUS[$i]}" = skipped ]; then continue; fi
      echo "| $DATE | $SHORT | $(esc "$GPU") | $DRIVER / $CUDA_VER | \`$(esc "${S_CMD[$i]}")\` | ${S_STATUS[$i]}: $(esc "${S_RESULT[$i]}") | tools/gpu/run.sh step ${S_ID[$i]}, ${S_SECS[$i]} s of ${S_LIMIT[$i]} s; ${S_FILE[$i]} |"
    done
  fi
  echo
  echo "The bench tables for docs/PERFORMANCE.md are in 04-bench.md (its lines go in unchanged); JSON and logs in 04-bench.tar.gz."
} >"$RES/SUMMARY.md"

cat "$RES/SUMMARY.md"
echo
echo "results: $RES ($(find "$RES" -type f | wc -l) files)"
ls -la "$RES"
# Exit status: 0 unless a step failed or timed out ("not run", "refused" by the device and "partial"
# sanitizer runs cut at their limit with no error seen do not fail the run; SUMMARY.md says which).
for s in "${S_STATUS[@]}"; do
  case "$s" in pass | done | n/a | "not run" | skipped | refused | partial) ;; *) exit 1 ;; esac
done
exit 0

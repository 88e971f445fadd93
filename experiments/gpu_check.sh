#!/usr/bin/env bash
# probmf on a GPU machine in one go (under 5 minutes on one GPU): install the CUDA jax wheel of the
# jax already installed, check that jax sees a GPU, install probmf with its test extras, run the
# suite every fitter must pass (tests/test_fitters_contract.py, slow checks included) on the GPU,
# then time experiments/bench.py on the ml20m preset for als (rank 10, 64), gibbs (10), optax (32)
# and svi (10). Everything it writes goes under $OUT (default ./gpu_out):
#   commands.log   every command, as run (or, with --dry-run, as it would be run)
#   devices.txt    jax's version, backend and devices
#   pip.log, tests.log, tests.xml (JUnit), bench-MODEL-RANK.log, bench.jsonl (bench.py's rows)
#   summary.txt    one line per step: ok, FAILED (exit status) or dry-run
#
#   bash experiments/gpu_check.sh                 # on the GPU machine, from the repository root
#   OUT=/tmp/gpu bash experiments/gpu_check.sh --dry-run   # here: no GPU, nothing installed
#
# --dry-run prints every command and runs what needs no GPU in its CPU form: the pip commands are
# only written down, the device check reports the CPU, the tests are collected (not run) and
# each bench.py run is its --smoke run (tiny data, one iteration). Options:
#   --bench "als:10 als:64 ..."   the MODEL:RANK runs of bench.py (default: the five above)
#   --tests "PATH ..."            the test files to run (default: tests/test_fitters_contract.py)
# Environment: PYTHON (default python), JAX_CUDA (the jax extra, default cuda12), ITERS (bench.py's
# timed iterations, default 3), STEP_TIMEOUT (seconds for any one step, default 240).
set -uo pipefail

DRY=0
BENCH="als:10 als:64 gibbs:10 optax:32 svi:10"
TESTS="tests/test_fitters_contract.py"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --bench) BENCH="$2"; shift ;;
    --tests) TESTS="$2"; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PYTHON=${PYTHON:-python}
JAX_CUDA=${JAX_CUDA:-cuda12}
ITERS=${ITERS:-3}
STEP_TIMEOUT=${STEP_TIMEOUT:-240}
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
: >"$OUT/commands.log"
: >"$OUT/summary.txt"
FAILED=0
# This checkout's probmf first, whatever else is installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

note() { echo "$*" | tee -a "$OUT/summary.txt"; }
# show CMD...: the command as one line a shell reads back (quoted), to the terminal and commands.log.
show() { { printf '+'; printf ' %q' "$@"; printf '%s\n' "${SHOW_SUFFIX:-}"; } | tee -a "$OUT/commands.log"; }

# step NAME LOG CMD...: run CMD (its output to LOG and the terminal), under STEP_TIMEOUT.
step() {
  local name=$1 log=$2
  shift 2
  show "$@"
  timeout "$STEP_TIMEOUT" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -eq 0 ]]; then note "$name: ok"; else note "$name: FAILED (exit $rc)"; FAILED=1; fi
  return "$rc"
}

# gpu_only NAME CMD...: run CMD on the GPU machine; with --dry-run only write it down.
gpu_only() {
  local name=$1 log=$2
  shift 2
  if [[ $DRY -eq 1 ]]; then
    SHOW_SUFFIX="  # dry-run: not run" show "$@"
    note "$name: dry-run"
  else
    step "$name" "$log" "$@"
  fi
}

JAX_VERSION=$("$PYTHON" -c 'import jax; print(jax.__version__)') || { echo "gpu_check.sh: jax is not importable by $PYTHON" >&2; exit 2; }
HAS_GPU='import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)'

# 1. The CUDA wheel of the installed jax (skipped where jax sees a GPU already).
if [[ $DRY -eq 0 ]] && "$PYTHON" -c "$HAS_GPU" 2>/dev/null; then
  note "jax[$JAX_CUDA]==$JAX_VERSION: already sees a GPU, not reinstalled"
else
  gpu_only "pip jax[$JAX_CUDA]" "$OUT/pip.log" "$PYTHON" -m pip install "jax[$JAX_CUDA]==$JAX_VERSION"
fi

# 2. jax must see a GPU; with --dry-run, it reports what it sees.
DEVICES='import jax; print("jax", jax.__version__, "backend", jax.default_backend()); print(*jax.devices(), sep="\n"); print(jax.devices()[0].device_kind)'
step "devices" "$OUT/devices.txt" "$PYTHON" -c "$DEVICES"
if [[ $DRY -eq 0 ]] && ! "$PYTHON" -c "$HAS_GPU"; then
  note "no GPU: jax sees $(tail -n 1 "$OUT/devices.txt"); stopping (see $OUT/pip.log)"
  exit 1
fi

# 3. probmf with its test extras (a plain install: the tests import this checkout all the same).
gpu_only "pip probmf[test]" "$OUT/pip.log" "$PYTHON" -m pip install ".[test]"

# 4. The fitters' contract, every fitter, on the GPU: one process, memory taken as needed.
read -r -a TEST_FILES <<<"$TESTS"
if [[ ${#TEST_FILES[@]} -eq 0 ]]; then
  note "tests: none asked for (--tests '')"
elif [[ $DRY -eq 1 ]]; then
  step "tests (collected)" "$OUT/tests.log" "$PYTHON" -m pytest --collect-only -n0 -p no:cacheprovider \
    -m "slow or not slow" "${TEST_FILES[@]}"
else
  step "tests" "$OUT/tests.log" env XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cuda \
    "$PYTHON" -m pytest -q -n0 -p no:cacheprovider -m "slow or not slow" --junitxml="$OUT/tests.xml" \
    "${TEST_FILES[@]}"
fi

# 5. bench.py on the ml20m preset (--dry-run: its tiny --smoke data, one iteration).
for run in $BENCH; do
  model=${run%%:*}
  rank=${run##*:}
  if [[ $DRY -eq 1 ]]; then
    SHOW_SUFFIX="  # dry-run: run as --smoke, next line" show "$PYTHON" experiments/bench.py --preset ml20m \
      --model "$model" --rank "$rank" --iters "$ITERS" --json --out "$OUT/bench.jsonl"
    step "bench $model $rank (smoke)" "$OUT/bench-$model-$rank.log" "$PYTHON" experiments/bench.py --smoke \
      --model "$model" --rank "$rank" --iters 1 --json --out "$OUT/bench.jsonl"
  else
    step "bench $model $rank" "$OUT/bench-$model-$rank.log" "$PYTHON" experiments/bench.py --preset ml20m \
      --model "$model" --rank "$rank" --iters "$ITERS" --json --out "$OUT/bench.jsonl"
  fi
done

if [[ $FAILED -ne 0 ]]; then
  note "gpu_check: some steps FAILED; logs in $OUT"
  exit 1
fi
note "gpu_check: done; results in $OUT"

#!/usr/bin/env bash
# The GPU check of issue 12, in one go, from the repository root:
#
#   scripts/gpu_check.sh [--device cuda|cuda:N|cpu] [--tiny] [--steps N] [--students N]
#                        [--venv full|minimal] [--setup-only]
#
# 1. the machine: nvidia-smi and torch's view of the device;
# 2. Python: $PY if set, else a finished .venv, else python3 when it already
#    has every package the check needs (the lent H200 machines' image does:
#    PyTorch, timm, pandas, scikit-learn; those machines cannot reach pip's
#    registry), else `make venv` (about 7 min with PyTorch's CUDA wheels) or,
#    with --venv minimal, only what the check needs (torch, torchvision, timm,
#    numpy, scikit-learn, pandas, tqdm as pinned in requirements.txt). reprolib
#    always comes from this working tree (PYTHONPATH). --setup-only stops after
#    this step;
# 3. stand-in data in a temporary folder (reprolib.standins: an ImageFolder tree
#    of small JPEGs, MNIST idx files, fake resnet18 weights; a random
#    Fashion-MNIST stand-in when the real one is not on the machine) and a
#    private, cold REPROLIB_CACHE: nothing is downloaded, nothing of the user's
#    cache is read or written;
# 4. a smoke training of every method in the paper world on the device
#    (scripts/gpu_smoke.py: resnet18 -> resnet18-s, one epoch each);
# 5. a smoke mini-world sweep on the device (python -m reprolib sweep --preset smoke);
# 6. benchmarks/paper_throughput.py on the device (the authors' configuration
#    vs ours), its speedup line, and on CUDA the issue's target (>= 4x per student);
# 7. benchmarks/stacked_students.py on the device: one quick cohort's step with its
#    students stacked and separate (on CUDA the sweep of step 5 already stacks).
#
# Every step is timed; the end is a PASS/FAIL table, exit status 0 only when
# all passed. (Inside the step functions errexit is off, as in any `cmd || ...`
# context: each command that matters ends in `|| return`.) --tiny (for the CPU: `scripts/gpu_check.sh --device cpu --tiny`)
# shrinks the images and the benchmark. Needs no internet except pip (for a
# venv, when no python has the packages). On one H200 with 16 cores the check
# should take about 3-4 minutes (estimated; not yet run on one).
set -euo pipefail

DEVICE=cuda
TINY=0
SETUP_ONLY=0
VENV_KIND=full
BENCH_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="${2:?--device needs a value: cpu, cuda or cuda:N}"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    --venv) VENV_KIND="${2:?--venv needs full or minimal}"; shift 2 ;;
    --steps|--students) BENCH_ARGS+=("$1" "${2:?$1 needs a number}"); shift 2 ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1; see scripts/gpu_check.sh --help" >&2; exit 2 ;;
  esac
done
case "$VENV_KIND" in
  full|minimal) ;;
  *) echo "error: --venv $VENV_KIND: choose full or minimal" >&2; exit 2 ;;
esac
case "$DEVICE" in
  cpu|cuda|cuda:[0-9]|cuda:[0-9][0-9]) ;;
  *) echo "error: --device $DEVICE: choose cpu, cuda or cuda:N" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
START=$(date +%s)
NAMES=(); RESULTS=(); TIMES=()

record() {  # name result seconds
  NAMES+=("$1"); RESULTS+=("$2"); TIMES+=("$3")
  echo "--- $1: $2 ($3 s; $(( $(date +%s) - START )) s so far)"
}

step() {  # step NAME command...: run, time, record; never stops the script
  local name=$1; shift
  echo
  echo "=== $name"
  local t0 rc=0
  t0=$(date +%s.%N)
  "$@" || rc=$?
  local dt
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [[ $rc -eq 0 ]]; then record "$name" PASS "$dt"; else record "$name" "FAIL (exit $rc)" "$dt"; fi
  return 0
}

summary() {
  echo
  echo "=================== gpu_check summary (device $DEVICE$([[ $TINY == 1 ]] && echo ', tiny')) ==================="
  local failed=0 i
  for i in "${!NAMES[@]}"; do
    printf '%-34s %-16s %8s s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
    [[ ${RESULTS[$i]} == PASS* ]] || failed=$((failed + 1))
  done
  [[ -n "${SPEEDUP_LINE:-}" ]] && echo "$SPEEDUP_LINE"
  echo "total $(( $(date +%s) - START )) s"
  if [[ $failed -eq 0 ]]; then echo "gpu_check: PASS"; else echo "gpu_check: FAIL ($failed failed)"; fi
  return "$failed"
}

# --- 1. the machine --------------------------------------------------------
machine() {
  echo "repository: $ROOT ($(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
  echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo 2>/dev/null)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
  elif [[ $DEVICE == cuda* ]]; then
    echo "nvidia-smi not found, but --device $DEVICE was asked for" >&2
    return 1
  else
    echo "nvidia-smi not found (fine for --device cpu)"
  fi
}
step "machine" machine

# --- 2. Python -------------------------------------------------------------
NEEDED='import torch, torchvision, timm, numpy, sklearn, pandas, tqdm, PIL'
setup_python() {
  if [[ -n "${PY:-}" ]]; then
    echo "using PY=$PY"
  elif [[ -x .venv/bin/python && ( -e .venv/.reprolib-installed || -e .venv/.gpu-check-installed ) ]]; then
    PY=.venv/bin/python
    echo "using $PY"
  elif command -v python3 >/dev/null && python3 -c "$NEEDED" 2>/dev/null; then
    # The lent GPU machines' image: python3 holds PyTorch, timm, pandas, scikit-learn...
    PY=python3
    echo "using $(command -v python3): it has every package the check needs (no install)"
  elif [[ $VENV_KIND == full ]]; then
    echo "no usable python: make venv (needs pip's registry; PyTorch's CUDA wheels: several minutes)"
    # Python >= 3.12 venvs lack setuptools, which make venv's editable install needs.
    "${PYTHON:-python3}" -m venv .venv || return
    .venv/bin/python -m pip install --quiet --upgrade pip "setuptools>=61" || return
    make venv || return
    PY=.venv/bin/python
  else
    echo "no usable python: a minimal .venv for this check (needs pip's registry)"
    local pins
    pins=$(grep -E '^(torch|torchvision|timm|numpy|scikit-learn|pandas|tqdm)([=<>!~ ]|$)' requirements.txt) || return
    "${PYTHON:-python3}" -m venv .venv || return
    .venv/bin/python -m pip install --quiet --upgrade pip || return
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install --quiet $pins || return
    # reprolib itself comes from PYTHONPATH (this working tree), below.
    touch .venv/.gpu-check-installed
    PY=.venv/bin/python
  fi
  "$PY" --version
  "$PY" -c "$NEEDED" || {
    echo "$PY lacks a required package ($NEEDED); run make venv or pip install -r requirements.txt" >&2; return 1; }
  "$PY" -c 'import torch, torchvision, timm; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}")'
}
step "python" setup_python
if [[ ${RESULTS[-1]} != PASS ]]; then summary; exit 1; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # this working tree, whatever is installed
if [[ $SETUP_ONLY == 1 ]]; then summary; exit $?; fi

# Loader workers pass batches through /dev/shm (up to ~20 MB each at 224 px);
# a small /dev/shm (containers often give 64 MB) means fewer workers, not a crash.
if [[ -z ${REPROLIB_LOADER_WORKERS:-} ]]; then
  shm_mb=$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}') || shm_mb=""
  if [[ -z $shm_mb ]]; then
    export REPROLIB_LOADER_WORKERS=0
    echo "note: no /dev/shm: loader workers off (REPROLIB_LOADER_WORKERS=0)"
  elif (( shm_mb < 1024 )); then
    w=$(( shm_mb / 64 )); n=$(( $(nproc) - 1 )); (( w > n )) && w=$n
    export REPROLIB_LOADER_WORKERS=$w
    echo "note: /dev/shm has $shm_mb MB free: REPROLIB_LOADER_WORKERS=$w"
  else
    echo "/dev/shm: $shm_mb MB free"
  fi
fi

torch_view() {
  "$PY" - "$DEVICE" <<'EOF'
import sys, torch
dev = sys.argv[1]
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
if dev.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"--device {dev}, but torch sees no CUDA device")
    d = torch.device(dev)
    x = torch.randn(256, 256, device=d)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = (x @ x).float().sum().item()
    print(f"a bf16 matmul on {d}: ok")
EOF
}
step "torch's view of the device" torch_view
if [[ ${RESULTS[-1]} != PASS ]]; then summary; exit 1; fi

# --- 3. stand-ins -----------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export REPROLIB_CACHE="$TMP/cache"
standins() {
  local extra=()
  if ! "$PY" -m reprolib data check --no-download >/dev/null 2>&1; then
    echo "no Fashion-MNIST on this machine: a random stand-in (the mini sweep's numbers mean nothing)"
    extra=(--fashion-mnist)
  fi
  "$PY" -m reprolib.standins "$TMP/standins" --train-per-class 12 --val-per-class 4 --weights resnet18 \
    "${extra[@]}" > "$TMP/standins.json" || return
  cat "$TMP/standins.json"
}
step "stand-in data" standins
if [[ ${RESULTS[-1]} != PASS ]]; then summary; exit 1; fi
eval "$("$PY" - "$TMP/standins.json" <<'EOF'
import json, shlex, sys
for k, v in json.load(open(sys.argv[1])).items():
    print(f"export {'STANDIN_WEIGHTS' if k == 'weights' else k}={shlex.quote(v)}")
EOF
)"

# --- 4. every method in the paper world -------------------------------------
TINY_ARG=(); [[ $TINY == 1 ]] && TINY_ARG=(--tiny)
step "paper smoke, every method" "$PY" scripts/gpu_smoke.py --device "$DEVICE" --weights "$STANDIN_WEIGHTS" \
  --out "$TMP/paper-smoke" "${TINY_ARG[@]}"

# --- 5. a smoke mini-world sweep ----------------------------------------------
mini_sweep() {
  "$PY" -m reprolib sweep --world mini --preset smoke --out "$TMP/mini-sweep" --device "$DEVICE" \
    --workers 1 --no-progress || return
  "$PY" - "$TMP/mini-sweep/results.csv" <<'EOF'
import sys
import pandas as pd
r = pd.read_csv(sys.argv[1])
print(r[["method", "rho", "seed", "test_accuracy", "seconds"]].to_string(index=False))
sys.exit(0 if len(r) == 4 and r["test_accuracy"].notna().all() else f"expected 4 finished runs, got {len(r)}")
EOF
}
step "mini smoke sweep" mini_sweep

# --- 6. the throughput benchmark ----------------------------------------------
SPEEDUP_LINE=""
bench() {
  "$PY" benchmarks/paper_throughput.py --device "$DEVICE" "${TINY_ARG[@]}" "${BENCH_ARGS[@]}" \
    | tee "$TMP/bench.txt" || return
  SPEEDUP_LINE=$(tail -n 1 "$TMP/bench.txt")
  [[ $SPEEDUP_LINE =~ ^paper-world\ speedup\ [0-9]+\.[0-9][0-9]\ \( ]]
}
step "paper throughput benchmark" bench
if [[ $DEVICE == cuda* && $TINY == 0 && -n $SPEEDUP_LINE ]]; then
  target() {
    local x
    x=$(awk '{print $3}' <<<"$SPEEDUP_LINE")
    echo "speedup per student: $x (target: at least 4)"
    awk -v x="$x" 'BEGIN { exit !(x >= 4) }'
  }
  step "speedup >= 4x per student" target
fi

# --- 7. a cohort's students stacked vs separate ---------------------------------
STACK_PRESET=quick; [[ $TINY == 1 ]] && STACK_PRESET=smoke
step "stacked vs separate students" "$PY" benchmarks/stacked_students.py --device "$DEVICE" \
  --preset "$STACK_PRESET" --teacher-recipe smoke --steps 5 --rounds 3

summary

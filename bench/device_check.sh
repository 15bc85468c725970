#!/usr/bin/env bash
# One-call check of the accelerator path (issue 15), sized for <= 8 minutes on one GPU:
#   setup      a Python with torch (+ CUDA for --device cuda) and this package: an existing .venv or
#              .venv-cuda if it fits, else scripts/setup.sh (--device cpu) or a .venv-cuda whose torch is the
#              system's CUDA torch or pip's torch==2.13.0 (PyPI's Linux wheel is the CUDA build)
#   parity     test/core/network/test_parity_upstream.py with the network on the device
#   network    bench/bench_network.py: per-fragment latency, stage table, peak memory (our sparse backend;
#              torchsparse too when it is importable); per-keyframe figures are derived in the summary
#   mapping    depth integration and incremental mesh update per frame (bench/device_check.py mapping)
#   training   a short synthetic training run, per-step time (bench/device_check.py training)
# Each step has its own time limit; a failing step is recorded and the next one runs. Everything lands in
# one file, <results>/device_check.json (logs beside it in logs/).
#
#   bash bench/device_check.sh [--device cuda|cpu] [--short] [--out DIR] [--shared DIR]
#
# --short: small settings (what the CPU dry run uses). Results: $OUT if set, else --out, else
# /tmp/neuralrecon_device_check. --shared: the shared reference folder (parity fixture and the expected
# state-dict listing) when it is not beside the repository (../shared) - e.g. a copy carried inside the
# repository; it is then linked to ../shared, where the tests and benches look.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DEVICE=cuda
SHORT=0
RESULTS=${OUT:-}
SHARED=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --short) SHORT=1; shift ;;
    --out) RESULTS=${RESULTS:-$2}; shift 2 ;;
    --shared) SHARED=$2; shift 2 ;;
    *) echo "usage: bash bench/device_check.sh [--device cuda|cpu] [--short] [--out DIR] [--shared DIR]" >&2
       exit 2 ;;
  esac
done
RESULTS=${RESULTS:-/tmp/neuralrecon_device_check}
mkdir -p "$RESULTS/logs"
RESULTS=$(cd "$RESULTS" && pwd)
: > "$RESULTS/steps.tsv"
if [ "$SHORT" = 1 ]; then
  MAP_ARGS=(--frames 8 --width 320 --height 240); TRAIN_ARGS=(--frames 150 --max-train-time-s 60)
  NET_ARGS=(--repeats 1); PARITY_LIMIT=900; NET_LIMIT=600; TRAIN_LIMIT=600
else
  MAP_ARGS=(--frames 40 --width 640 --height 480); TRAIN_ARGS=(--frames 150 --max-train-time-s 90)
  NET_ARGS=(--repeats 3); PARITY_LIMIT=150; NET_LIMIT=120; TRAIN_LIMIT=150
fi

# step NAME LIMIT_S COMMAND...: run with a time limit, log to logs/NAME.log, record status and seconds
step() {
  local name=$1 limit=$2 start rc status
  shift 2
  start=$(date +%s%N)
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$RESULTS/logs/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124) status=timeout ;; *) status="failed(rc=$rc)" ;; esac
  printf '%s\t%s\t%d.%03d\n' "$name" "$status" $(( ($(date +%s%N) - start) / 1000000000 )) \
    $(( ($(date +%s%N) - start) / 1000000 % 1000 )) >> "$RESULTS/steps.tsv"
  tail -n 3 "$RESULTS/logs/$name.log"
  echo "== $name: $status"
  return $rc
}

# a python that imports torch (with CUDA when asked) and this package
usable() {
  [ -x "$1" ] && "$1" - "$DEVICE" <<'EOF' >/dev/null 2>&1
import sys
import torch
import neuralrecon_ros  # noqa: F401
sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)
EOF
}

setup() {
  for candidate in .venv/bin/python .venv-cuda/bin/python; do
    if usable "$candidate"; then echo "using $candidate"; return 0; fi
  done
  if [ "$DEVICE" = cpu ]; then
    bash scripts/setup.sh
    return
  fi
  [ -x .venv-cuda/bin/python ] || python3 -m venv --system-site-packages .venv-cuda
  if ! .venv-cuda/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    .venv-cuda/bin/python -m pip install --quiet "torch==2.13.0"
  fi
  .venv-cuda/bin/python -m pip install --quiet -e ".[test]"
  usable .venv-cuda/bin/python
}

if [ -n "$SHARED" ] && [ ! -e ../shared ]; then
  ln -s "$(cd "$SHARED" && pwd)" ../shared
fi
step environment 60 bash -c 'date -u; uname -a; nproc; free -g | head -2; nvidia-smi || echo "no nvidia-smi"; python3 --version'
export DEVICE
export -f usable setup
step setup 300 bash -c setup
PY=.venv/bin/python
usable "$PY" || PY=.venv-cuda/bin/python
"$PY" - "$DEVICE" > "$RESULTS/environment.json" 2>/dev/null <<'EOF'
import json, os, sys
import torch
info = {"device": sys.argv[1], "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
print(json.dumps(info))
EOF
THREADS=$("$PY" -c "import os; print(min(os.cpu_count() or 1, 8))" 2>/dev/null || echo 1)

step parity "$PARITY_LIMIT" env NEURALRECON_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider \
  test/core/network/test_parity_upstream.py --junitxml="$RESULTS/parity.xml"
step network "$NET_LIMIT" "$PY" bench/bench_network.py --device "$DEVICE" --backend torch --threads "$THREADS" \
  "${NET_ARGS[@]}" --json "$RESULTS/network.json"
if "$PY" -c "import torchsparse" 2>/dev/null; then
  step network_torchsparse "$NET_LIMIT" "$PY" bench/bench_network.py --device "$DEVICE" --backend torchsparse \
    --threads "$THREADS" "${NET_ARGS[@]}" --json "$RESULTS/network_torchsparse.json"
else
  printf 'network_torchsparse\tskipped(not importable)\t0\n' >> "$RESULTS/steps.tsv"
fi
step mapping 240 env OMP_NUM_THREADS="$THREADS" "$PY" bench/device_check.py mapping --device "$DEVICE" \
  "${MAP_ARGS[@]}" --json "$RESULTS/mapping.json"
rm -rf "$RESULTS/training_run"
step training "$TRAIN_LIMIT" "$PY" bench/device_check.py training --device "$DEVICE" "${TRAIN_ARGS[@]}" \
  --output "$RESULTS/training_run" --json "$RESULTS/training.json"
"$PY" bench/device_check.py summary --results "$RESULTS" > /dev/null
echo "results: $RESULTS/device_check.json"

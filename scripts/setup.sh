#!/usr/bin/env bash
# Set up a fresh machine for offline use and tests: a virtual environment in .venv with the package
# installed in editable mode. Torch: keeps a torch that is already importable in .venv; otherwise
# installs torch==2.13.0 (the CPU build on our machines; on a CUDA machine install your CUDA torch
# into .venv first). Nothing here needs ROS.
# --ros: also a real rclpy (ROS 2 Kilted wheels) and the generated interfaces, for the node's tests
# (scripts/setup_ros.sh; what CI uses).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_ROS=0
for arg in "$@"; do
  case "$arg" in
    --ros) WITH_ROS=1 ;;
    *) echo "usage: bash scripts/setup.sh [--ros]" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
VENV_PY=.venv/bin/python
if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
  "$VENV_PY" -m pip install --quiet "torch==2.13.0"
fi
"$VENV_PY" -m pip install --quiet -e ".[test]"
if [ "$WITH_ROS" = 1 ]; then
  bash scripts/setup_ros.sh
fi
echo "set up: $(.venv/bin/neuralrecon-ros --version), torch $("$VENV_PY" -c 'import torch; print(torch.__version__)')"

#!/usr/bin/env bash
# Run the whole test suite (and the linter) the way CI does; sets the machine up first if needed,
# with a real rclpy (--ros) so that the ROS 2 node's tests run too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --ros
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"

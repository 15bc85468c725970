#!/usr/bin/env bash
# Run the whole test suite (and the linter) the way CI does; sets the machine up first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"

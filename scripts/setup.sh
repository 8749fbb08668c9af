#!/usr/bin/env bash
# Create .venv/ at the repo root and install the toolkit into it.
#   bash scripts/setup.sh        # the toolkit
#   bash scripts/setup.sh dev    # plus the test and benchmark dependencies
# PyTorch is installed first, pinned to the CPU build this project is tested with; pass
# TORCH_SPEC (e.g. TORCH_SPEC="torch" with your CUDA index) to choose another build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"

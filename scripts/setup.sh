#!/usr/bin/env bash
# Create .venv (if missing) and install napari-persam with everything to run and test it.
# Usage: bash scripts/setup.sh            (idempotent; re-running only updates)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# PyTorch the way users install it: torch together with a matching torchvision
# (segment-anything imports torchvision).
.venv/bin/python -m pip install --quiet torch torchvision
.venv/bin/python -m pip install --quiet -e ".[testing]"

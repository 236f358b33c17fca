#!/usr/bin/env bash
# Set up (scripts/setup.sh) and open napari with the PerSAM widget on sample data.
# Usage: bash scripts/demo.sh [coins|blobs3d]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"

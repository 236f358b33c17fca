#!/usr/bin/env bash
# Set up and run the whole test suite headless, on a fresh machine too:
# 1. the system packages napari's tests need (an X server and OpenGL for Qt) are installed
#    when missing (scripts/system_packages.sh: as root or with sudo; otherwise it stops here
#    with the exact command to run);
# 2. .venv with napari-persam and its test tools (scripts/setup.sh);
# 3. pytest, with Qt offscreen; napari's layer tests get an X server from pytest-xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_packages.sh
bash scripts/setup.sh
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite headless.
# Qt runs offscreen; napari's layer tests also need an X server, which pytest-xvfb
# starts when Debian's xvfb is installed (see .ci/run for the system packages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
exec .venv/bin/python -m pytest "$@"

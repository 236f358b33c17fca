#!/usr/bin/env bash
# Set up (scripts/setup.sh) and open napari with the PerSAM widget on sample data.
# Usage: bash scripts/demo.sh [coins|blobs3d]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(uname -s)" = "Linux" ] && [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
    # No screen (a server, CI): napari opens on a virtual one (Xvfb and Qt's X
    # libraries are installed when missing), the demo saves a screenshot of the
    # window with the widget and quits instead of waiting for a user.
    bash scripts/system_packages.sh
    exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/demo.py --headless "$@"
fi
exec .venv/bin/python scripts/demo.py "$@"

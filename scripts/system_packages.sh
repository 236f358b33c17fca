#!/usr/bin/env bash
# The system packages napari's tests need on a headless Linux (an X server and OpenGL for
# Qt), installed when missing: with apt-get as root, or through sudo when it can be used;
# otherwise this stops and prints the exact command to run. Used by scripts/test.sh (and so
# by .ci/run). Exit 0: everything is there (or was installed); 1: something is missing.
set -euo pipefail

# Debian and Ubuntu package names.
PACKAGES=(
    xvfb xauth libgl1 libegl1 libopengl0 libglx-mesa0 libgl1-mesa-dri libglib2.0-0
    libdbus-1-3 libfontconfig1 libfreetype6 fonts-dejavu-core libxkbcommon0
    libxkbcommon-x11-0 libx11-xcb1 libxcb1 libxcursor1 libxcb-icccm4 libxcb-image0
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0
    libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0
)
SELF="scripts/system_packages.sh"

if [ "$(uname -s)" != "Linux" ]; then
    exit 0  # macOS and Windows draw without an X server
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    if command -v Xvfb >/dev/null 2>&1; then
        exit 0
    fi
    echo "$SELF: napari's tests need an X server (Xvfb) and Mesa's OpenGL libraries." >&2
    echo "Install your distribution's packages for them (Fedora: xorg-x11-server-Xvfb" >&2
    echo "mesa-libGL mesa-libEGL; Arch: xorg-server-xvfb mesa), then run this again." >&2
    exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
    case "$status" in
        *"install ok installed"*) ;;
        *) missing+=("$package") ;;
    esac
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
if [ "$(id -u)" = "0" ]; then
    runner=()
elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
    runner=(sudo)  # asks for a password on a terminal
else
    echo "$SELF: these system packages are missing: ${missing[*]}" >&2
    echo "Install them, then run the tests again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
echo "$SELF: installing the missing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${runner[@]}" apt-get update -qq
"${runner[@]}" "${install[@]}" >/dev/null

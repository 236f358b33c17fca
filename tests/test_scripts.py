"""`bash scripts/test.sh` on a fresh headless Linux: system packages first (issue 13, item 18).

The script runs with stand-ins for ``uname``, ``id``, ``dpkg-query``, ``apt-get`` and
``sudo`` on a PATH of its own, so nothing is installed by these tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "system_packages.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _fake_system(tmp_path: Path, *, uid: int, installed: set[str], sudo: str | None) -> Path:
    """A PATH with only what the script may use; the stand-ins log their calls."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("bash", "grep", "cat"):
        os.symlink(shutil.which(tool), folder / tool)
    log = tmp_path / "calls.log"
    _stub(folder, "uname", "echo Linux")
    _stub(folder, "id", f"echo {uid}")
    known = " ".join(sorted(installed))
    _stub(
        folder,
        "dpkg-query",
        f'for p in {known}; do [ "$p" = "$3" ] && echo "install ok installed" && exit 0; done; '
        "exit 1",
    )
    _stub(folder, "apt-get", f'echo "apt-get $*" >> {log}')
    if sudo == "passwordless":
        _stub(folder, "sudo", f'[ "$1" = "-n" ] && exit 0; echo "sudo $*" >> {log}; "$@"')
    elif sudo == "password":
        _stub(folder, "sudo", 'echo "sudo: a password is required" >&2; exit 1')
    return folder


def _run(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(folder / "bash"), str(SCRIPT)],
        env={"PATH": str(folder)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_missing_packages_are_installed_as_root(tmp_path):
    folder = _fake_system(tmp_path, uid=0, installed={"xauth", "libgl1"}, sudo=None)
    result = _run(folder)
    assert result.returncode == 0, result.stderr
    calls = _calls(tmp_path)
    assert calls[0] == "apt-get update -qq"
    assert calls[1].startswith("apt-get install -y -qq --no-install-recommends xvfb libegl1")
    assert " xauth " not in calls[1] and " libgl1 " not in calls[1]


def test_missing_packages_are_installed_with_sudo_when_it_can_be_used(tmp_path):
    folder = _fake_system(tmp_path, uid=1000, installed=set(), sudo="passwordless")
    assert _run(folder).returncode == 0
    calls = _calls(tmp_path)
    assert calls[0] == "sudo apt-get update -qq" and calls[1] == "apt-get update -qq"
    assert any(call.startswith("sudo apt-get install -y") for call in calls)


@pytest.mark.parametrize("sudo", [None, "password"])
def test_without_root_or_sudo_it_stops_with_the_exact_command(tmp_path, sudo):
    folder = _fake_system(tmp_path, uid=1000, installed={"xauth"}, sudo=sudo)
    result = _run(folder)
    assert result.returncode == 1
    assert _calls(tmp_path) == []  # nothing was tried
    command = next(line for line in result.stderr.splitlines() if "apt-get install" in line)
    assert command.strip().startswith("sudo apt-get update && sudo apt-get install -y")
    assert "xvfb" in command and "libxcb-cursor0" in command and " xauth" not in command


def test_nothing_happens_when_everything_is_installed(tmp_path):
    from_ci = (SCRIPT.read_text().split("PACKAGES=(", 1)[1]).split(")", 1)[0].split()
    folder = _fake_system(tmp_path, uid=1000, installed=set(from_ci), sudo=None)
    result = _run(folder)
    assert result.returncode == 0 and result.stderr == ""
    assert _calls(tmp_path) == []


def test_test_sh_checks_the_system_before_the_tests_and_ci_uses_it():
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    lines = [line.strip() for line in test_sh.splitlines() if not line.startswith("#")]
    packages = lines.index("bash scripts/system_packages.sh")
    assert packages < lines.index("bash scripts/setup.sh")
    assert packages < next(i for i, line in enumerate(lines) if "pytest" in line)
    assert "set -euo pipefail" in test_sh  # a failed check stops before the tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs xvfb-run")
def test_the_demo_opens_napari_with_the_widget_without_a_screen(tmp_path):
    # What `bash scripts/demo.sh` runs on a machine without a screen (after the setup).
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "QT_QPA_PLATFORM")}
    done = subprocess.run(
        ["xvfb-run", "-a", sys.executable, str(ROOT / "scripts" / "demo.py"), "--headless"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "with the PerSAM widget on 'coins'" in done.stdout
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert "system_packages.sh" in demo and "--headless" in demo

"""packaging/box/setup-box.sh for real, then the technician's steps from docs/install.md.

The script installs Debian packages, adds a user and writes to /etc, /opt and /var, so it runs in a
private mount namespace where those (and /usr) are overlays on throwaway directories: it sees and
changes a copy of this machine, which disappears with the namespace. Needs root, `unshare` and the
Debian and Python package registries; marked slow (apt-get update, a venv, ~30 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"),
]

SCRIPT = """
set -eu
for d in etc opt var usr; do
    mkdir -p "$OVL/$d/up" "$OVL/$d/work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$OVL/$d/up,workdir=$OVL/$d/work" "/$d"
done
sh "$ROOT/packaging/box/setup-box.sh" scan-station "$WHEEL" >"$OVL/setup.log" 2>&1 || { tail -20 "$OVL/setup.log"; exit 1; }
tail -1 "$OVL/setup.log"
echo "user: $(id -un omnishelf) $(id -gn omnishelf)"
echo "etc: $(stat -c '%U:%G %a' /etc/omnishelf) $(stat -c '%U:%G %a' /etc/omnishelf/box.yaml.example)"
echo "enabled: $(readlink /etc/systemd/system/multi-user.target.wants/omnishelf-edge.service)"
echo "enabled: $(readlink /etc/systemd/system/multi-user.target.wants/omnishelf-setup.service)"
echo "fastapi: $(/opt/omnishelf/bin/python -c 'import fastapi' 2>&1 | tail -1)"
/opt/omnishelf/bin/omnishelf cloud serve 2>&1 || true
if command -v systemd-analyze >/dev/null; then systemd-analyze verify /etc/systemd/system/omnishelf-edge.service /etc/systemd/system/omnishelf-setup.service && echo verified; else echo verified; fi
cp /etc/omnishelf/box.yaml.example /etc/omnishelf/box.yaml
install -m 0640 -g omnishelf /dev/null /etc/omnishelf/box.secret
printf '%s\\n' 'THE BOX PASSWORD' > /etc/omnishelf/box.secret
echo "secret: $(stat -c '%U:%G %a' /etc/omnishelf/box.secret)"
/opt/omnishelf/bin/omnishelf edge check-config /etc/omnishelf/box.yaml
"""


def test_setup_box_makes_a_scan_station(wheel: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OVL": str(tmp_path / "ovl"), "ROOT": str(ROOT), "WHEEL": str(wheel)}
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", SCRIPT],
        capture_output=True, text=True, env=env, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:9] == [
        "omnishelf box (scan-station, omnishelf[edge]) installed; next: claim it in setup mode (docs/technician.md), "
        "or write /etc/omnishelf/box.yaml and box.secret (docs/install.md)",
        "user: omnishelf omnishelf",
        "etc: omnishelf:omnishelf 750 root:omnishelf 640",
        "enabled: /etc/systemd/system/omnishelf-edge.service",
        "enabled: /etc/systemd/system/omnishelf-setup.service",
        "fastapi: ModuleNotFoundError: No module named 'fastapi'",
        "omnishelf: error: the cloud role is not installed: pip install 'omnishelf[cloud]'",
        "verified",
        "secret: root:omnishelf 640",
    ]
    assert lines[9].startswith("OK sha256:")
    assert not Path("/opt/omnishelf").exists()  # nothing leaked out of the namespace

#!/bin/sh
# Turn a Raspberry Pi OS (bookworm, arm64) installation into an omnishelf store box of one profile:
# Debian packages, the omnishelf user, a virtualenv in /opt/omnishelf with the box's extras, the
# config directory and the agent's systemd unit. Run as root on the box, or in the chroot of an
# image being built (nothing here needs a running systemd). Running it again upgrades the package.
#
#   sh packaging/box/setup-box.sh PROFILE [REQUIREMENT]
#
# PROFILE: kiosk-pi5, scan-station, signage-player or gateway (firmware_config/profiles.py).
# REQUIREMENT: what pip installs, without extras (default: omnishelf, from PyPI); a wheel file
# works too: dist/omnishelf-0.1.0-py3-none-any.whl.
# The box's identity (box.yaml, box.secret) is written afterwards, per box: docs/install.md.
set -eu

usage="usage: setup-box.sh kiosk-pi5|scan-station|signage-player|gateway [REQUIREMENT]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
profile=$1
requirement=${2:-omnishelf}
here=$(cd "$(dirname "$0")/.." && pwd)

# Boxes with a screen run the Kivy UI (extra `kiosk`) and need its libraries; the others do not.
case $profile in
    kiosk-pi5 | signage-player) extras=edge,kiosk lists="base kiosk" ;;
    scan-station | gateway) extras=edge lists="base" ;;
    *) echo "setup-box.sh: unknown profile '$profile': expected kiosk-pi5, scan-station, signage-player or gateway" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "setup-box.sh: run as root" >&2; exit 2; }

packages=""
for list in $lists; do
    packages="$packages $(sed -e 's/#.*//' "$here/debian/$list.txt")"
done
apt-get update
# shellcheck disable=SC2086 # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages

id -u omnishelf >/dev/null 2>&1 ||
    useradd --system --user-group --home-dir /var/lib/omnishelf --no-create-home --shell /usr/sbin/nologin omnishelf

[ -x /opt/omnishelf/bin/python ] || python3 -m venv /opt/omnishelf
/opt/omnishelf/bin/python -m pip install --quiet --upgrade "$requirement[$extras]"

# Config and secret: readable by the agent's group, writable by root only.
install -d -o root -g omnishelf -m 0750 /etc/omnishelf
sed -e "s/^profile: .*/profile: $profile/" "$here/box/box.yaml" >/etc/omnishelf/box.yaml.example
chown root:omnishelf /etc/omnishelf/box.yaml.example
chmod 0640 /etc/omnishelf/box.yaml.example

install -m 0644 "$here/systemd/omnishelf-edge.service" /etc/systemd/system/omnishelf-edge.service
systemctl enable omnishelf-edge.service
# A box with a screen shows the cloud shelf on it, full screen (the clerk's station instead:
# systemctl disable omnishelf-ui@kiosk; systemctl enable omnishelf-ui@station).
if [ "$extras" = edge,kiosk ]; then
    install -m 0644 "$here/systemd/omnishelf-ui@.service" /etc/systemd/system/omnishelf-ui@.service
    systemctl enable omnishelf-ui@kiosk.service
fi
echo "omnishelf box ($profile, omnishelf[$extras]) installed; next: /etc/omnishelf/box.yaml and box.secret (docs/install.md)"

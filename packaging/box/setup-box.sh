#!/bin/sh
# Turn a Raspberry Pi OS (bookworm, arm64) installation into an omnishelf store box of one profile:
# Debian packages, the omnishelf user, a virtualenv in /opt/omnishelf with the box's extras, the
# config directory and the agent's systemd unit. Run as root on the box, or in the chroot of an
# image being built (nothing here needs a running systemd). Running it again upgrades the package.
#
#   sh packaging/box/setup-box.sh PROFILE [REQUIREMENT]
#
# PROFILE: a role's (kiosk, scan-station, signage-player, gateway) or a role's on a Raspberry Pi 5
# (kiosk-pi5, scan-station-pi5, signage-player-pi5, gateway-pi5): firmware_config/profiles.py.
# REQUIREMENT: what pip installs, without extras (default: omnishelf, from PyPI); a wheel file
# works too: dist/omnishelf-0.1.0-py3-none-any.whl.
# The box's identity comes afterwards, per box: it boots into setup mode (omnishelf-setup.service)
# until a technician claims it (docs/technician.md), or box.yaml and box.secret are written by hand
# (docs/install.md).
set -eu

known="kiosk, kiosk-pi5, scan-station, scan-station-pi5, signage-player, signage-player-pi5, gateway or gateway-pi5"
usage="usage: setup-box.sh PROFILE [REQUIREMENT], PROFILE one of $known"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
profile=$1
requirement=${2:-omnishelf}
here=$(cd "$(dirname "$0")/.." && pwd)

# Boxes with a screen run the Kivy UI (extra `kiosk`) and need its libraries; the others do not.
case $profile in
    kiosk | kiosk-pi5 | signage-player | signage-player-pi5) extras=edge,kiosk lists="base kiosk" ;;
    scan-station | scan-station-pi5 | gateway | gateway-pi5) extras=edge lists="base" ;;
    *) echo "setup-box.sh: unknown profile '$profile': expected one of $known" >&2; exit 2 ;;
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

# The config directory is the agent's: a claimed box writes its own config, password and key there
# (setup mode, config pushes, their rollback, credential rotation; omnishelf-edge.service's
# ReadWritePaths=). Others may not read it. The example is root's, readable by the agent.
install -d -o omnishelf -g omnishelf -m 0750 /etc/omnishelf
sed -e "s/^profile: .*/profile: $profile/" "$here/box/box.yaml" >/etc/omnishelf/box.yaml.example
chown root:omnishelf /etc/omnishelf/box.yaml.example
chmod 0640 /etc/omnishelf/box.yaml.example

# Setup mode runs while /etc/omnishelf/box.yaml does not exist, the agent once it does.
for unit in omnishelf-edge.service omnishelf-setup.service; do
    install -m 0644 "$here/systemd/$unit" "/etc/systemd/system/$unit"
done
systemctl enable omnishelf-edge.service omnishelf-setup.service
# A box with a screen shows the cloud shelf on it, full screen (the clerk's station instead:
# systemctl disable omnishelf-ui@kiosk; systemctl enable omnishelf-ui@station).
if [ "$extras" = edge,kiosk ]; then
    install -m 0644 "$here/systemd/omnishelf-ui@.service" /etc/systemd/system/omnishelf-ui@.service
    systemctl enable omnishelf-ui@kiosk.service
fi
echo "omnishelf box ($profile, omnishelf[$extras]) installed; next: claim it in setup mode (docs/technician.md), or write /etc/omnishelf/box.yaml and box.secret (docs/install.md)"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install Predis Agent as a systemd service: a virtual environment in /opt/predis-agent,
# the predis-agent system user, /etc/predis/agent.yaml (kept if present) and the unit.
# Usage: sudo deploy/install.sh [--gpu] [SOURCE]   (SOURCE: this checkout by default)
set -euo pipefail

PREFIX=/opt/predis-agent
ETC=/etc/predis
extra=""
if [ "${1:-}" = "--gpu" ]; then extra="[gpu]"; shift; fi
src="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
here="$(cd "$(dirname "$0")" && pwd)"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (it creates a system user and installs a unit)" >&2
    exit 1
fi

python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install --disable-pip-version-check --quiet "${src}${extra}"

install -D -m 0644 "$here/sysusers.d/predis-agent.conf" /usr/lib/sysusers.d/predis-agent.conf
systemd-sysusers /usr/lib/sysusers.d/predis-agent.conf

install -d -m 0755 "$ETC"
install -d -m 0700 "$ETC/credentials"
if [ ! -e "$ETC/agent.yaml" ]; then
    install -m 0644 "$here/agent.yaml" "$ETC/agent.yaml"
fi
"$PREFIX/bin/predis-agent" config validate "$ETC/agent.yaml"

install -D -m 0644 "$here/systemd/predis-agent.service" /etc/systemd/system/predis-agent.service
systemd-analyze verify /etc/systemd/system/predis-agent.service
systemctl daemon-reload
echo "installed. Next:"
echo "  systemctl enable --now predis-agent"
echo "  sudo -u predis-agent $PREFIX/bin/predis-agent token create --config $ETC/agent.yaml"

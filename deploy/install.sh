#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install Predis Agent as a systemd service: a virtual environment in /opt/predis-agent with
# the runtime dependencies at the versions deploy/constraints.txt pins, the predis-agent
# system user, /etc/predis/agent.yaml (kept if present) and the unit.
# Usage: sudo deploy/install.sh [--gpu] [SOURCE]   (SOURCE: this checkout by default)
#        deploy/install.sh --check                  (only check Python and venv; no root needed)
# PYTHON=/path/to/python3.12 picks the interpreter (default: python3).
set -euo pipefail

PREFIX=/opt/predis-agent
ETC=/etc/predis
MIN_PYTHON_MAJOR=3
MIN_PYTHON_MINOR=11
python="${PYTHON:-python3}"
extra=""
check_only=0
case "${1:-}" in
    --gpu) extra="[gpu]"; shift ;;
    --check) check_only=1; shift ;;
esac
src="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
here="$(cd "$(dirname "$0")" && pwd)"

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

# Python >= 3.11, with a working venv (Debian and Ubuntu ship ensurepip separately, in
# python3-venv; without it `python3 -m venv` fails).
command -v "$python" >/dev/null 2>&1 \
    || fail "$python not found: install Python >= $MIN_PYTHON_MAJOR.$MIN_PYTHON_MINOR (Debian/Ubuntu: apt install python3 python3-venv), or set PYTHON=/path/to/python3"
if ! "$python" -c "import sys; sys.exit(sys.version_info[:2] < ($MIN_PYTHON_MAJOR, $MIN_PYTHON_MINOR))"; then
    fail "$("$python" -V 2>&1) is too old: Predis Agent needs Python >= $MIN_PYTHON_MAJOR.$MIN_PYTHON_MINOR; install a newer one and set PYTHON=/path/to/it"
fi
probe_dir="$(mktemp -d)"
trap 'rm -rf "$probe_dir"' EXIT
if ! "$python" -m venv "$probe_dir/venv" >"$probe_dir/venv.log" 2>&1; then
    cat "$probe_dir/venv.log" >&2
    fail "$python cannot create a virtual environment: install the venv module (Debian/Ubuntu: apt install python3-venv)"
fi
[ -f "$here/constraints.txt" ] || fail "$here/constraints.txt is missing: the install pins its dependencies with it"
if [ "$check_only" -eq 1 ]; then
    echo "install.sh: $("$python" -V 2>&1) with venv: ok"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    fail "run as root (it creates a system user and installs a unit)"
fi

"$python" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --disable-pip-version-check --quiet -c "$here/constraints.txt" "${src}${extra}"

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

# SPDX-License-Identifier: Apache-2.0
"""The shipped systemd unit and production config are valid as shipped."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "predis-agent.service"
SHIPPED_EXEC = "/opt/predis-agent/bin/predis-agent"

pytestmark = pytest.mark.integration


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    # systemd-analyze checks that ExecStart exists on *this* machine; the shipped path is
    # the one deploy/install.sh creates. Point it at the agent installed for the tests and
    # change nothing else.
    exe = shutil.which("predis-agent")
    assert exe, "predis-agent console script is not installed"
    text = UNIT.read_text()
    assert text.count(SHIPPED_EXEC) == 1
    unit = tmp_path / "predis-agent.service"
    unit.write_text(text.replace(SHIPPED_EXEC, exe))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above must be able to fail: a typo'd key is reported on stderr.
    exe = shutil.which("predis-agent")
    assert exe
    unit = tmp_path / "predis-agent.service"
    unit.write_text(UNIT.read_text().replace(SHIPPED_EXEC, exe).replace("Restart=on-failure", "Restat=on-failure"))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "Restat" in proc.stderr


def test_unit_has_notify_watchdog_hardening_and_limits() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"].split()[:4] == [SHIPPED_EXEC, "run", "--config", "/etc/predis/agent.yaml"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["WatchdogSec"]
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root", "0")
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert service[key] == value, key
    assert service["LoadCredential"].startswith("predis:")
    assert service["MemoryMax"] and service["CPUQuota"]
    assert service["CapabilityBoundingSet"] == ""


def test_production_config_validates() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "config", "validate", str(ROOT / "deploy" / "agent.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_install_script_is_valid_bash() -> None:
    proc = subprocess.run(["bash", "-n", str(ROOT / "deploy" / "install.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_example_config_validates() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "config", "validate", str(ROOT / "config_schema" / "examples" / "agent.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


INSTALL = ROOT / "deploy" / "install.sh"


def _fake_python(tmp_path: Path, body: str) -> Path:
    """An interpreter stand-in: runs ``body`` (sh) with the arguments, else the real Python."""
    fake = tmp_path / "python3"
    fake.write_text(f'#!/bin/sh\n{body}\nexec "{sys.executable}" "$@"\n')
    fake.chmod(0o755)
    return fake


def _install_check(python: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(["bash", str(INSTALL), "--check"], capture_output=True, text=True, env=env, timeout=300)


def test_install_script_accepts_this_python_with_venv() -> None:
    proc = _install_check(sys.executable)
    assert proc.returncode == 0, proc.stderr
    assert "with venv: ok" in proc.stdout


def test_install_script_refuses_python_older_than_3_11(tmp_path: Path) -> None:
    # Python 3.10 as the version check sees it.
    fake = _fake_python(tmp_path, 'case "$1" in -c) exit 1 ;; -V) echo "Python 3.10.12"; exit 0 ;; esac')
    proc = _install_check(str(fake))
    assert proc.returncode == 1
    assert "Python 3.10.12 is too old" in proc.stderr and ">= 3.11" in proc.stderr


def test_install_script_says_how_to_get_venv(tmp_path: Path) -> None:
    # Debian's python3 without python3-venv: ensurepip is missing, venv fails with this text.
    fake = _fake_python(
        tmp_path,
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  echo "The virtual environment was not created successfully because ensurepip is not available."\n'
        "  exit 1\nfi",
    )
    proc = _install_check(str(fake))
    assert proc.returncode == 1
    assert "ensurepip is not available" in proc.stderr
    assert "apt install python3-venv" in proc.stderr


def test_install_script_refuses_a_missing_python() -> None:
    proc = _install_check("/nonexistent/python3")
    assert proc.returncode == 1
    assert "not found" in proc.stderr


def test_install_script_pins_dependencies_with_the_constraints() -> None:
    text = INSTALL.read_text()
    pip_lines = [line for line in text.splitlines() if "/bin/pip\" install" in line]
    assert pip_lines and all('-c "$here/constraints.txt"' in line for line in pip_lines)
    assert (ROOT / "deploy" / "constraints.txt").is_file()

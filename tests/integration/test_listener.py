# SPDX-License-Identifier: Apache-2.0
"""A second agent on a port that is in use fails loudly instead of sharing it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, merge

pytestmark = pytest.mark.integration


def test_second_agent_on_the_same_port_exits_with_address_in_use(tmp_path: Path) -> None:
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    first = AgentProcess(first_dir)
    first.start()
    try:
        port = first.base_url.rsplit(":", 1)[1]
        second_dir = tmp_path / "second"
        second_dir.mkdir()
        second = AgentProcess(second_dir, merge(first.config, {"agent": {"http": {"listen": f"127.0.0.1:{port}"}}}))
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--config", str(second.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
        assert "in use" in proc.stderr
        assert first.get("/livez").status_code == 200
    finally:
        first.stop()

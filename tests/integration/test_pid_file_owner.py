# SPDX-License-Identifier: Apache-2.0
"""The PID file across a restart with real agents (issue 21, item 8): the new agent starts
before the old one has finished stopping, and the old one's shutdown must not delete the
new agent's PID file (reproduced first: it did, and `predis-agent reload` then had no PID
to signal)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agentproc import AgentProcess

pytestmark = pytest.mark.integration


def test_an_old_agent_stopping_leaves_the_new_agents_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "predis-agent.pid"
    config = {"agent": {"pid_file": str(pid_file), "reload": {"watch": False}}}
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = AgentProcess(tmp_path / "old", config).start()
    new: AgentProcess | None = None
    try:
        assert old.proc is not None and pid_file.read_text() == f"{old.proc.pid}\n"
        new = AgentProcess(tmp_path / "new", config).start()
        assert new.proc is not None and pid_file.read_text() == f"{new.proc.pid}\n"
        assert old.stop() == 0
        assert pid_file.read_text() == f"{new.proc.pid}\n", "the old agent deleted the new agent's PID file"
        assert new.stop() == 0
        assert not pid_file.exists(), "the owner removes its PID file"
    finally:
        old.stop()
        if new is not None:
            new.stop()

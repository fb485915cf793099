# SPDX-License-Identifier: Apache-2.0
"""The ``integration`` marker is complete: a quick run (``-m "not integration"``) starts no
agent process and no real peer (tests/conftest.py marks and guards)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import spawns_agent_or_peer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "started"),
    [
        ([sys.executable, "-m", "agent", "run", "--config", "a.yaml"], "python -m agent"),
        (["python3", "-X", "dev", "-m", "agent", "replay", "t"], "python -m agent"),
        ("/usr/local/bin/predis-agent run", "predis-agent"),
        ([Path("/usr/bin/redis-server"), "--port", "0"], "redis-server"),
        (["victoria-metrics", "-httpListenAddr=:0"], "victoria-metrics"),
        ([b"/opt/prometheus", b"--config.file=p.yml"], "prometheus"),
        ([sys.executable, "-m", "agent.mlops", "x"], None),
        ([sys.executable, "-m", "cache_core.model_host", "3", "numpy"], None),
        ([sys.executable, "-c", "import agent"], None),
        (["gcc", "-print-file-name=libasan.so"], None),
        ([], None),
    ],
)
def test_what_counts_as_starting_the_agent_or_a_peer(argv: list[str] | str, started: str | None) -> None:
    assert spawns_agent_or_peer(argv) == started


def test_an_unmarked_test_that_starts_the_agent_fails_at_the_spawn() -> None:
    with pytest.raises(RuntimeError, match="without the integration marker"):
        subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, timeout=60)
    # Anything else starts as usual.
    assert subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True, timeout=60).stdout == "7\n"


@pytest.mark.integration
def test_a_marked_test_may_start_the_agent() -> None:
    done = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and "Usage" in done.stdout


def test_a_quick_run_selects_nothing_under_integration_or_chaos() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "not integration", "tests/integration", "tests/chaos"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    summary = done.stdout.strip().splitlines()[-1]
    deselected = re.fullmatch(r"no tests collected \((\d+) deselected\) in [\d.]+s", summary)
    assert deselected and int(deselected.group(1)) > 0, done.stdout[-2000:] + done.stderr[-2000:]

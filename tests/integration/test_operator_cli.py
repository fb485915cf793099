# SPDX-License-Identifier: Apache-2.0
"""The operator's CLI: `status` in text shows prefetching, drift (with its next check),
models and sinks; `plugins run NAME --once` runs one collector or exporter and prints what it
produced; `replay` prints progress lines when stderr is not a terminal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, cli
from tests.peers import free_port

pytestmark = pytest.mark.integration


def test_status_text_shows_prefetch_drift_models_and_sinks(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    root.mkdir()
    (root / "k1").write_bytes(b"v")
    port = free_port()
    config = {
        "agent": {"http": {"listen": f"127.0.0.1:{port}"}, "reload": {"watch": False}},
        "cache": {"read_through": True, "origin": "files", "prefetch": {"enabled": True, "model": "stride", "model_process": False}},
        "plugins": {"files": {"root": str(root)}},
        "drift": {"check_interval_seconds": 3600},
    }
    agent = AgentProcess(tmp_path, config).start()
    try:
        env = {**agent.env, "PREDIS_AGENT_TOKEN": agent.token}
        status = json.loads(cli("status", "--json", "--config", str(agent.config_path), env=env).stdout)
        drift = status["components"]["drift"]
        assert drift["next_check"] is not None and drift["next_check"] > time.time() + 3000
        human = cli("status", "--config", str(agent.config_path), env=env).stdout
        assert re.search(r"^prefetch: model stride \(fresh, learning online\), threshold [0-9.]+, loaded 0, used 0, wasted 0, precision n/a$", human, re.M), human
        assert re.search(r"^drift: .*0 checks, last never, next \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \d+s\)", human, re.M), human
        assert re.search(r"^models: tenant default, serving no registered model; retrain off \(idle\); advance 0, promote 0, rollback 0$", human, re.M), human
        assert "plugins:" in human
    finally:
        agent.stop()


def test_plugins_run_once_prints_a_collectors_samples_and_an_exporters_payload(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("cache:\n  resp:\n    listen: 127.0.0.1:0\nagent:\n  http:\n    listen: 127.0.0.1:0\n")
    out = cli("plugins", "run", "process_metrics", "--once", "--config", str(config)).stdout
    assert re.search(r"^process_resident_memory_bytes \d+", out, re.M) and re.search(r"^process_open_fds \d+", out, re.M), out
    as_json = json.loads(cli("plugins", "run", "process", "--once", "--json", "--config", str(config)).stdout)
    names = {s["name"] for s in as_json["samples"]}
    assert {"process_cpu_seconds_total", "predis_process_threads"} <= names and as_json["errors"] == {}
    # An exporter: its payloads, built by its real encoder and sent nowhere (the endpoint is
    # a port nothing listens on).
    sent = cli(
        "plugins", "run", "datadog", "--once", "--config", str(config),
        "--set", "exporters.datadog.api_key=test-key", "--set", f"exporters.datadog.api_host=http://127.0.0.1:{free_port()}",
    ).stdout  # fmt: skip
    assert re.search(r"^datadog: \d+ payload\(s\), \d+ point\(s\)", sent, re.M), sent
    assert '"series"' in sent and '"metric": "process.resident.memory.bytes"' in sent
    unknown = cli("plugins", "run", "nope", "--once", "--config", str(config), check=False)
    assert unknown.returncode == 2 and "no collector or exporter named 'nope'" in unknown.stderr and "process_metrics" in unknown.stderr
    builtin = cli("plugins", "uninstall", "datadog", "--yes", check=False)
    assert builtin.returncode == 2 and "built into predis-agent" in builtin.stderr
    missing = cli("plugins", "uninstall", "nope", "--yes", check=False)
    assert missing.returncode == 2 and "no installed plugin named 'nope'" in missing.stderr


def test_replay_prints_progress_lines_when_not_on_a_terminal(tmp_path: Path) -> None:
    trace = tmp_path / "t.txt"
    trace.write_text("\n".join(f"k{i % 700}" for i in range(30_000)) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(trace), "--cache-entries", "100", "--progress-seconds", "0"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.startswith("replaying: ")]
    assert [line.split()[1] for line in lines] == ["10000/30000", "20000/30000", "30000/30000"], proc.stderr
    assert "30000 requests" in proc.stdout
    quiet = subprocess.run(
        [sys.executable, "-m", "agent", "replay", str(trace), "--cache-entries", "100"], capture_output=True, text=True, timeout=300, check=True
    )
    # The default interval (10 s) passes no step of so short a run but the last.
    assert [line.split()[1] for line in quiet.stderr.splitlines() if line.startswith("replaying: ")] == ["30000/30000"]

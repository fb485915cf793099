# SPDX-License-Identifier: Apache-2.0
"""``predis-agent backup create|restore`` of the whole state, around real agents.

A running agent with tokens, a registered model, history rounds, payloads spooled for an
unreachable Datadog and an encrypted access log is backed up while it runs; the archive is
restored into an empty directory; the original state and key files are deleted; an agent
started on the restored config serves with the old tokens and keeps the history, the model,
the spooled payloads and the access log's key.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.agentproc import AgentProcess, cli
from tests.peers import free_port
from tests.polling import wait_for

pytestmark = pytest.mark.integration

HITS = 17
MISSES = 9
TRACE_REQUESTS = 2000
KEY_BYTES = 32
TENANT = "acme"
DEADLINE_SECONDS = 30.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _roi(agent: AgentProcess) -> dict[str, Any]:
    response = agent.get("/api/v1/roi", params={"since": 0})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _resp(agent: AgentProcess) -> redis.Redis:
    address = agent.status()["components"]["cache"]["resp"]["address"]
    return redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), socket_timeout=10, protocol=2)


def _models(config: Path) -> Any:
    return json.loads(cli("model", "list", "--tenant", TENANT, "--config", str(config), "--json").stdout)


def test_whole_state_round_trip_into_a_startable_directory(tmp_path: Path) -> None:
    home = tmp_path / "original"
    home.mkdir()
    state = home / "state"
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    segment_key = keys / "segment.key"
    _private_file(segment_key, os.urandom(KEY_BYTES))
    datadog_key = keys / "datadog.key"
    _private_file(datadog_key, ("dd-" + secrets.token_hex(16)).encode())
    config = {
        "agent": {"sinks": {"spool_dir": str(state / "spool"), "retry_initial_seconds": 0.1, "retry_max_seconds": 0.5, "queue_max_age_seconds": 3600}},
        "mlops": {"registry_dir": str(state / "models")},
        "console": {"history_path": str(state / "history.sqlite3")},
        "exporters": {
            "datadog": {
                "enabled": True,
                "api_host": f"http://127.0.0.1:{free_port()}/datadog",
                "api_key": f"${{file:{datadog_key}}}",
                "interval": 1,
                "events": False,
            }
        },
        "collectors": {
            "access_log": {
                "enabled": True,
                "export_dir": str(state / "access-log"),
                "encryption_key": f"${{file:{segment_key}}}",
                "min_free_bytes": 0,
                "min_free_percent": 0,
            }
        },
    }
    original = AgentProcess(home, config)
    trace = tmp_path / "trace.txt"
    trace.write_text("".join(f"block:{i:06d}\n" for i in range(TRACE_REQUESTS)))
    cli("model", "train", "--tenant", TENANT, "--trace", str(trace), "--model", "stride", "--config", str(original.config_path))
    models = _models(original.config_path)
    assert [row["version"] for row in models] == [1]

    original.start()
    try:
        second = original.create_token("second")
        client = _resp(original)
        client.set("present", b"value")
        for _ in range(HITS):
            assert client.get("present") == b"value"
        for i in range(MISSES):
            assert client.get(f"absent:{i}") is None
        wait_for(lambda: _roi(original)["requests"] == HITS + MISSES, timeout=DEADLINE_SECONDS, what="a history round after the reads")
        wait_for(lambda: any((state / "spool" / "datadog").glob("*.json")), timeout=DEADLINE_SECONDS, what="a payload in the spool")
        key_id = original.status()["components"]["access_log"]["key_id"]
        assert key_id

        archive = tmp_path / "backups" / "state.tar.gz"
        archive.parent.mkdir()
        made = cli("backup", "create", "--out", str(archive), "--config", str(original.config_path))
        assert "history" in made.stdout and "registry" in made.stdout and "token_store" in made.stdout
    finally:
        original.stop()

    assert _mode(archive) == 0o600
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.loads(tar.extractfile(members["MANIFEST.json"]).read())  # type: ignore[union-attr]
        for name, entry in manifest["files"].items():
            data = tar.extractfile(members[name]).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    assert set(members) == set(manifest["files"]) | {"MANIFEST.json"}
    assert {"config/agent.yaml", "tokens.json", "registry.tar.gz", "history.sqlite3"} <= set(members)
    spooled = [name for name in members if name.startswith("spool/datadog/")]
    assert spooled
    assert sorted(manifest["references"]) == sorted([str(datadog_key), str(segment_key)])
    assert manifest["versions"]["agent"] and manifest["versions"]["sqlite"]

    target = tmp_path / "restored"
    restored = cli("backup", "restore", str(archive), "--target", str(target))
    assert str(target / "agent.yaml") in restored.stdout
    again = cli("backup", "restore", str(archive), "--target", str(target), check=False)
    assert again.returncode == 2 and "not an empty directory" in again.stderr
    assert _mode(target) == 0o700
    for path in [target / "agent.yaml", target / "tokens.json", target / "history.sqlite3", *(target / "files").iterdir()]:
        assert _mode(path) == 0o600, path
    assert _mode(target / "spool") == 0o700 and _mode(target / "models") == 0o700
    # Nothing of the original is left to fall back on: the restored directory must be enough.
    shutil.rmtree(state)
    shutil.rmtree(keys)
    text = (target / "agent.yaml").read_text()
    assert str(keys) not in text
    # Only the access log's export directory stays where it was: segments are not state a backup holds.
    assert [line.strip() for line in text.splitlines() if str(state) in line] == [f"export_dir: {state / 'access-log'}"]

    assert _models(target / "agent.yaml") == models
    (tmp_path / "runner").mkdir()
    runner = AgentProcess(tmp_path / "runner", {})
    runner.config_path = target / "agent.yaml"
    runner.token = original.token
    runner.start()
    try:
        assert runner.get("/status").status_code == 200
        assert runner.get("/status", token=second).status_code == 200
        assert runner.get("/status", token="pda_" + secrets.token_hex(16)).status_code == 401
        report = _roi(runner)
        assert report["requests"] == HITS + MISSES and report["hits"] == HITS
        status = runner.status()
        assert status["config_source"] == str(target / "agent.yaml")
        assert status["components"]["access_log"]["key_id"] == key_id
        queued = wait_for(lambda: (s := runner.status()["sinks"]["datadog"])["queued_payloads"] >= len(spooled) and s, what="the spooled payloads queued again")
        assert queued["sent_points"] == 0
        assert "queued again from the spool" in runner.logs()
    finally:
        runner.stop()


def test_registry_only_restore_from_a_whole_state_backup_and_refusals(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"agent:\n  auth:\n    token_store: {tmp_path / 'tokens.json'}\nmlops:\n  registry_dir: {tmp_path / 'models'}\n")
    trace = tmp_path / "trace.txt"
    trace.write_text("".join(f"block:{i:06d}\n" for i in range(TRACE_REQUESTS)))
    cli("model", "train", "--tenant", TENANT, "--trace", str(trace), "--model", "stride", "--config", str(config))
    whole = tmp_path / "whole.tar.gz"
    made = cli("backup", "create", "--out", str(whole), "--config", str(config))
    assert "not in the backup: agent.auth.token_store" in made.stderr
    only = tmp_path / "only.tar.gz"
    cli("backup", "create", "--registry-only", "--out", str(only), "--config", str(config))

    for archive, into in ((whole, tmp_path / "from-whole"), (only, tmp_path / "from-only")):
        cli("backup", "restore", str(archive), "--registry", str(into))
        listed = json.loads(cli("model", "list", "--tenant", TENANT, "--registry", str(into), "--json").stdout)
        assert [row["version"] for row in listed] == [1]

    refused = cli("backup", "restore", str(only), "--target", str(tmp_path / "nowhere"), check=False)
    assert refused.returncode == 2 and "registry-only backup" in refused.stderr
    assert not (tmp_path / "nowhere").exists()
    neither = cli("backup", "restore", str(whole), check=False)
    assert neither.returncode == 2 and "exactly one of --target" in neither.stderr
    inside = cli("backup", "create", "--out", str(tmp_path / "models" / "x.tgz"), "--config", str(config), check=False)
    assert inside.returncode == 2 and "must be outside" in inside.stderr

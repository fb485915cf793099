# SPDX-License-Identifier: Apache-2.0
"""`predis-agent plugins install` really installs a plugin into the agent's environment."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODULE = '''
from agent.api import Metric, hookimpl


class Greeter:
    name = "greeter"

    def collect(self):
        return [Metric("predis_hello_greetings", 1.0, "gauge")]


@hookimpl
def predis_agent_config_schema():
    return {"type": "object", "properties": {"greeting": {"type": "string", "default": "hello"}}}


@hookimpl
def predis_agent_register_collectors(agent):
    return [Greeter()]
'''


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(directory: Path) -> Path:
    """A minimal, valid wheel with one module and a predis_agent entry point."""
    dist = "predis_hello_plugin-1.0.dist-info"
    files = {
        "predis_hello_plugin.py": MODULE.encode(),
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: predis-hello-plugin\nVersion: 1.0\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": b"[predis_agent]\nhello = predis_hello_plugin\n",
    }
    record = [_record_line(name, data) for name, data in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / "predis_hello_plugin-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
    return path


def inner_venv(venv: Path) -> str:
    """A virtual environment that sees this test run's packages (the agent and its
    dependencies) wherever they are installed: the base interpreter, a virtual environment
    the suite runs in, or an editable install (whose own .pth files are processed); what is
    installed into it stays in it. Returns its python."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    inner = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    outer = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    lines = [f"import site; site.addsitedir({d!r})" for d in dict.fromkeys(outer) if Path(d).is_dir()]
    (Path(inner) / "zz_outer_environment.pth").write_text("\n".join(lines) + "\n")
    return python


def test_install_a_wheel_then_list_it(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python = inner_venv(venv)
    wheel = build_wheel(tmp_path)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}

    before = subprocess.run([python, "-m", "agent", "plugins", "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert before.returncode == 0, before.stderr
    assert "hello" not in {row["name"] for row in json.loads(before.stdout)}

    proc = subprocess.run([python, "-m", "agent", "plugins", "install", str(wheel)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "restart the agent, or `predis-agent reload`" in proc.stdout

    after = subprocess.run([python, "-m", "agent", "plugins", "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    rows = {row["name"]: row for row in json.loads(after.stdout)}
    assert rows["hello"]["state"] == "loaded"
    assert rows["hello"]["source"] == "entrypoint:predis-hello-plugin"
    assert rows["hello"]["version"] == "1.0"
    # The test's own environment is untouched.
    outer = subprocess.run([sys.executable, "-m", "agent", "plugins", "list", "--json"], capture_output=True, text=True, timeout=120)
    assert "hello" not in {row["name"] for row in json.loads(outer.stdout)}


def test_a_plugin_installed_while_the_agent_runs_loads_on_reload_runs_once_and_uninstalls(tmp_path: Path) -> None:
    from tests.agentproc import AgentProcess
    from tests.polling import wait_for

    venv = tmp_path / "venv"
    python = inner_venv(venv)
    wheel = build_wheel(tmp_path)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}
    state = tmp_path / "agent"
    state.mkdir()
    agent = AgentProcess(state, {"agent": {"reload": {"watch": False}}}, env=env, python=python).start()
    try:
        assert "predis_hello_greetings" not in agent.get("/metrics").text
        proc = subprocess.run([python, "-m", "agent", "plugins", "install", str(wheel)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # A reload imports the plugin installed since start and registers its collector; the
        # config did not change.
        reloaded = agent.post("/reload").json()
        assert reloaded["ok"] is True and "plugins.hello" in reloaded["changed"], reloaded
        assert {p["name"]: p["state"] for p in agent.status()["plugins"]}["hello"] == "loaded"
        wait_for(lambda: "predis_hello_greetings 1.0" in agent.get("/metrics").text, what="the new plugin's collector")
    finally:
        agent.stop()
    once = subprocess.run(
        [python, "-m", "agent", "plugins", "run", "greeter", "--once", "--config", str(agent.config_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert once.returncode == 0 and once.stdout.strip() == "predis_hello_greetings 1.0", once.stdout + once.stderr
    gone = subprocess.run([python, "-m", "agent", "plugins", "uninstall", "hello", "--yes"], capture_output=True, text=True, env=env, timeout=300)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    rows = subprocess.run([python, "-m", "agent", "plugins", "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert "hello" not in {row["name"] for row in json.loads(rows.stdout)}

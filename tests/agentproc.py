# SPDX-License-Identifier: Apache-2.0
"""Run the real agent as a subprocess for integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.polling import wait_for

READY_RE = re.compile(r"ready: (https?://[^ ]+) ")


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited child not reaped yet, a zombie, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"predis-agent {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


class AgentProcess:
    """One agent subprocess with its own config, token store and logs in ``tmp``."""

    def __init__(self, tmp: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None, python: str = sys.executable) -> None:
        self.tmp = tmp
        self.python = python
        self.config_path = tmp / "agent.yaml"
        self.token_store = tmp / "state" / "tokens.json"
        base: dict[str, Any] = {
            "agent": {
                "http": {"listen": "127.0.0.1:0"},
                "auth": {"token_store": str(self.token_store), "local_token_file": str(tmp / "state" / "local-token")},
                "reload": {"watch_interval_seconds": 0.2},
                "collect": {"interval_seconds": 0.2},
            },
            # A free port for the Redis-protocol server, so agents never collide on 6390.
            "cache": {"resp": {"listen": "127.0.0.1:0"}},
        }
        self.config = _merge(base, config or {})
        self.write_config(self.config)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.token = ""

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def create_token(self, name: str = "test") -> str:
        proc = subprocess.run(
            [self.python, "-m", "agent", "token", "create", "--config", str(self.config_path), "--name", name],
            capture_output=True, text=True, env=self.env, timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"predis-agent token create exited {proc.returncode}: {proc.stderr}")
        return proc.stdout.strip()

    def start(self, wait: bool = True) -> AgentProcess:
        self.token = self.token or self.create_token()
        self.stdout = open(self.tmp / "stdout.log", "wb")
        self.stderr = open(self.tmp / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [self.python, "-m", "agent", "run", "--config", str(self.config_path)],
            stdout=self.stdout,
            stderr=self.stderr,
            env=self.env,
        )
        if wait:
            try:
                self.base_url = wait_for(self._ready_url, timeout=30, what="the agent's ready line")
            except BaseException:
                self.stop()
                raise
        return self

    def _ready_url(self) -> str | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}: {self.logs()}")
        match = READY_RE.search((self.tmp / "stdout.log").read_text())
        return match.group(1) if match else None

    def logs(self) -> str:
        out = (self.tmp / "stdout.log").read_text() if (self.tmp / "stdout.log").exists() else ""
        err = (self.tmp / "stderr.log").read_text() if (self.tmp / "stderr.log").exists() else ""
        return out + err

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token if token is not None else self.token}"}

    def get(self, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        return requests.get(self.base_url + path, headers=self.headers(token), timeout=10, **kw)

    def post(self, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        return requests.post(self.base_url + path, headers=self.headers(token), timeout=30, **kw)

    def status(self) -> dict[str, Any]:
        resp = self.get("/status")
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def metric(self, series: str) -> float | None:
        """Value of one exposed series, e.g. ``predis_agent_config_generation`` or ``x{a="b"}``."""
        for line in self.get("/metrics").text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.stdout.close()
        self.stderr.close()
        return int(self.proc.returncode)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return _merge(base, extra)

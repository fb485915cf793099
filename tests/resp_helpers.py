# SPDX-License-Identifier: Apache-2.0
"""Shared helpers for the RESP tests: start an agent with RESP on a free port, raw sockets,
and a real redis-server to compare against."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentproc import AgentProcess, merge
from tests.polling import wait_for

# Small enough to start quickly on 2 cores, big enough for redis-benchmark -r 1000.
BASE_CACHE: dict[str, Any] = {"max_keys": 65536, "max_memory_bytes": 64 * 1024 * 1024}
RESP_ADDRESS_RE = re.compile(r"redis protocol: redis://127\.0\.0\.1:(\d+)")


def start_agent(
    tmp: Path, resp: dict[str, Any] | None = None, env: dict[str, str] | None = None, cache: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
) -> tuple[AgentProcess, int]:
    """Start the agent with RESP on 127.0.0.1:0; return it and the port it picked.

    Module-scoped fixtures run outside the per-test environment cleaner, so the agent's
    own variables are removed here before the environment is copied.
    """
    config = merge({"cache": merge(merge(BASE_CACHE, cache or {}), {"resp": merge({"listen": "127.0.0.1:0"}, resp or {})})}, extra or {})
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("PREDIS_AGENT_") or name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY"):
                mp.delenv(name)
        agent = AgentProcess(tmp, config, env=env)
    agent.start()
    try:
        address = agent.status()["components"]["cache"]["resp"]["address"]
        match = re.fullmatch(r"redis://127\.0\.0\.1:(\d+)", address or "")
        assert match, f"unexpected RESP address in /status: {address!r}"
        port = int(match.group(1))
        printed = RESP_ADDRESS_RE.search((tmp / "stdout.log").read_text())
        assert printed and int(printed.group(1)) == port, "the ready line must show the RESP address /status reports"
    except BaseException:
        agent.stop()
        raise
    return agent, port


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def encode_command(*args: bytes | str | int) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or the socket times out (False)."""
    data = bytearray()
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return bytes(data), False
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def read_exactly(sock: socket.socket, expected: bytes) -> bytes:
    """Read until ``len(expected)`` bytes arrived (or the peer closed / timed out)."""
    data = bytearray()
    while len(data) < len(expected):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


class RedisServer:
    """A real redis-server on a free loopback port (or on ``port``), stopped by its PID."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (.ci/run installs it)")
        self.port = port or free_port()
        self.log = open(tmp / "redis-server.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp), "--daemonize", "no", "--loglevel", "warning"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._pong, timeout=15, what="redis-server to answer PING")

    def _pong(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited {self.proc.returncode}")
        with connect(self.port, timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16) == b"+PONG\r\n"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()


@contextlib.contextmanager
def agent_and_redis(tmp_path_factory: pytest.TempPathFactory, name: str, **agent_options: Any) -> Iterator[dict[str, int]]:
    """A real redis-server and an agent side by side (their ports as {"redis": .., "agent": ..}),
    both stopped at the end: the differential tests send the same commands to each."""
    real = RedisServer(tmp_path_factory.mktemp(f"redis-server-{name}"))
    try:
        agent, agent_port = start_agent(tmp_path_factory.mktemp(f"resp-{name}-agent"), **agent_options)
    except BaseException:
        real.stop()
        raise
    try:
        yield {"redis": real.port, "agent": agent_port}
    finally:
        agent.stop()
        real.stop()

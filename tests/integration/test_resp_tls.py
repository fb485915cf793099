# SPDX-License-Identifier: Apache-2.0
"""The Redis-protocol server over TLS: redis-py and redis-cli connect with TLS 1.2+, plain
connections and older TLS versions are refused, and a reload raises the floor in place."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
from pathlib import Path

import pytest
import redis

from tests.agentproc import AgentProcess, merge
from tests.integration.test_cli_tls_tracing import _handshake, make_cert
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def test_resp_over_tls(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key)}
    agent = AgentProcess(tmp_path, {"agent": {"reload": {"watch": False}}, "cache": {"resp": {"tls": tls}}})
    agent.start()
    try:
        address = agent.status()["components"]["cache"]["resp"]["address"]
        assert address.startswith("rediss://127.0.0.1:"), address
        assert agent.status()["components"]["cache"]["resp"]["tls"] is True
        port = int(address.rsplit(":", 1)[1])
        client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_timeout=10)
        assert client.set("secure", "yes") and client.get("secure") == b"yes"
        assert _handshake(port, cert, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _handshake(port, cert, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1)
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, protocol=2).ping()
        if shutil.which("redis-cli"):
            out = subprocess.run(
                ["redis-cli", "-p", str(port), "--tls", "--cacert", str(cert), "get", "secure"],
                capture_output=True, text=True, timeout=30,
            )
            assert out.returncode == 0 and out.stdout.strip() == "yes", out.stderr

        agent.write_config(merge(agent.config, {"cache": {"resp": {"tls": {"min_version": "1.3"}}}}))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: agent.status()["config_generation"] == 2, what="the TLS reload")
        with pytest.raises(ssl.SSLError):
            _handshake(port, cert, ssl.TLSVersion.TLSv1_2)
        assert _handshake(port, cert, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
        assert client.get("secure") == b"yes"  # the connection opened before the reload goes on
        client.close()
    finally:
        agent.stop()


def test_resp_tls_with_missing_files_fails_startup(tmp_path: Path) -> None:
    agent = AgentProcess(
        tmp_path, {"cache": {"resp": {"tls": {"enabled": True, "cert_file": str(tmp_path / "none.pem"), "key_file": str(tmp_path / "k")}}}}
    )
    with pytest.raises(AssertionError, match="cache.resp.tls.cert_file"):
        agent.start()

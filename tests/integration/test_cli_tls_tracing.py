# SPDX-License-Identifier: Apache-2.0
"""CLI contracts, TLS on the HTTP API, OTLP tracing — against the real agent process."""

from __future__ import annotations

import datetime
import ipaddress
import json
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.agentproc import AgentProcess, cli, merge
from tests.integration.test_core_contract import make_distribution
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- CLI


def test_config_validate_exit_codes_and_problem_lines(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("agent:\n  log:\n    level: debug\n")
    ok = cli("config", "validate", str(good), check=False)
    assert ok.returncode == 0, ok.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "agent:\n"
        "  http:\n"
        "    listen: 127.0.0.1:9470\n"
        "    tls:\n"
        "      enabeld: true\n"  # line 5: unknown nested key
        "  collect:\n"
        "    interval_seconds: 0\n"  # line 7: below minimum
        "cache:\n"
        "  backend: tpu\n"  # line 9: not in enum
    )
    proc = cli("config", "validate", str(bad), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("agent.http.tls.enabeld: unknown key") and lines[0].endswith("(line 5)")
    assert lines[1].startswith("agent.collect.interval_seconds: must be at least 0.1") and "(line 7)" in lines[1]
    assert lines[2].startswith("cache.backend: expected one of") and "(line 9)" in lines[2]

    broken = tmp_path / "broken.yaml"
    broken.write_text("agent:\n  log: [unclosed\n")
    proc = cli("config", "validate", str(broken), check=False)
    assert proc.returncode == 2 and "YAML syntax error" in proc.stderr

    proc = cli("config", "validate", str(good), "--set", "agent.reload.watch_interval_seconds=fast", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("agent.reload.watch_interval_seconds: expected number, found string")

    missing = cli("config", "validate", str(tmp_path / "nope.yaml"), check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_config_schema_and_show(tmp_path: Path) -> None:
    schema = json.loads(cli("config", "schema").stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "root" in schema["properties"]["plugins"]["properties"]["files"]["properties"]  # a plugin's own fragment
    assert "path" in schema["properties"]["exporters"]["properties"]["prometheus"]["properties"]
    shown = cli("config", "show", "--config", str(tmp_path / "absent.yaml"), check=False)
    assert shown.returncode == 2  # an explicit --config that does not exist is an error
    cfg = tmp_path / "a.yaml"
    cfg.write_text("{}\n")
    text = cli("config", "show", "--config", str(cfg), "--set", "agent.log.level=debug").stdout
    assert "listen: 127.0.0.1:9470" in text and "level: debug" in text
    assert cli("version").stdout.strip() == cli("--version").stdout.strip().split()[-1]


def test_status_and_reload_commands(tmp_path: Path) -> None:
    port = free_port()
    agent = AgentProcess(tmp_path, {"agent": {"http": {"listen": f"127.0.0.1:{port}"}, "reload": {"watch": False}}})
    agent.start()
    try:
        env = {**agent.env, "PREDIS_AGENT_TOKEN": agent.token}
        out = json.loads(cli("status", "--json", "--config", str(agent.config_path), env=env).stdout)
        assert out["config_generation"] == 1 and out["components"]["readiness"]["ready"] is True
        human = cli("status", "--config", str(agent.config_path), env=env).stdout
        assert "ready: yes" in human and "prometheus" in human
        resp_address = out["components"]["cache"]["resp"]["address"]
        assert f"redis protocol {resp_address} (0 clients)" in human and "cache: numpy backend, 0 keys" in human
        assert "gpu: down (no NVIDIA driver" in human

        agent.write_config(merge(agent.config, {"agent": {"log": {"level": "debug"}}}))
        done = cli("reload", "--config", str(agent.config_path), env=env)
        assert "generation 2" in done.stdout

        agent.write_config(merge(agent.config, {"agent": {"log": {"level": "chatty"}}}))
        rejected = cli("reload", "--config", str(agent.config_path), env=env, check=False)
        assert rejected.returncode == 2
        assert "agent.log.level" in rejected.stderr
        # status still works although the file on disk is invalid.
        still = cli("status", "--json", "--config", str(agent.config_path), env=env)
        assert json.loads(still.stdout)["config_generation"] == 2
        assert "problem(s)" in still.stderr

        # Without a token the CLI on the agent's host uses its local token (0600, admin).
        local = tmp_path / "state" / "local-token"
        assert stat.S_IMODE(local.stat().st_mode) == 0o600 and stat.S_IMODE(local.parent.stat().st_mode) == 0o700
        assert local.read_text().strip() not in agent.logs()
        without = cli("status", "--config", str(agent.config_path), env={**agent.env, "PREDIS_AGENT_TOKEN": ""})
        assert "ready: yes" in without.stdout
        agent.write_config(merge(agent.config, {"agent": {"log": {"level": "info"}}}))
        assert "generation 3" in cli("reload", "--config", str(agent.config_path), env={**agent.env, "PREDIS_AGENT_TOKEN": ""}).stdout
        kept = local.read_text()
        local.unlink()
        no_token = cli("status", "--config", str(agent.config_path), env={**agent.env, "PREDIS_AGENT_TOKEN": ""}, check=False)
        assert no_token.returncode == 2 and "PREDIS_AGENT_TOKEN" in no_token.stderr and "local token" in no_token.stderr
        local.write_text(kept)
        wrong = cli("status", "--config", str(agent.config_path), env={**agent.env, "PREDIS_AGENT_TOKEN": "pda_x"}, check=False)
        assert wrong.returncode == 1 and "401" in wrong.stderr
    finally:
        agent.stop()
    assert not (tmp_path / "state" / "local-token").exists()  # it lived as long as the agent


def test_plugins_install_refuses_options(tmp_path: Path) -> None:
    proc = cli("plugins", "install", "--index-url=http://evil.invalid/", check=False)
    assert proc.returncode == 2
    proc = cli("plugins", "install", "not a requirement!!", check=False)
    assert proc.returncode == 2 and "not a valid requirement" in proc.stderr


# ----------------------------------------------------------------------------- TLS


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _handshake(port: int, cert: Path, max_version: ssl.TLSVersion, min_version: ssl.TLSVersion | None = None) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(cert))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLS 1.0/1.1 on purpose
        if min_version is not None:
            ctx.minimum_version = min_version
        ctx.maximum_version = max_version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return str(tls.version())


def test_tls_serves_1_2_plus_and_refuses_older(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key)}
    agent = AgentProcess(tmp_path, {"agent": {"http": {"tls": tls}}})
    agent.start()
    try:
        assert agent.base_url.startswith("https://127.0.0.1:")
        resp = requests.get(agent.base_url + "/readyz", headers=agent.headers(), verify=str(cert), timeout=10)
        assert resp.status_code == 200
        port = int(agent.base_url.rsplit(":", 1)[1])
        assert _handshake(port, cert, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _handshake(port, cert, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1)
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(agent.base_url.replace("https", "http") + "/livez", timeout=10)

        # Raising the floor to 1.3 by reload: the same port now refuses a 1.2-only client.
        agent.write_config(merge(agent.config, {"agent": {"http": {"tls": {"min_version": "1.3"}}}}))
        wait_for(lambda: agent.get("/status", verify=str(cert)).json()["config_generation"] == 2, what="TLS reload")
        with pytest.raises(ssl.SSLError):
            _handshake(port, cert, ssl.TLSVersion.TLSv1_2)
        assert _handshake(port, cert, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    finally:
        agent.stop()


def test_tls_with_missing_files_fails_startup(tmp_path: Path) -> None:
    agent = AgentProcess(
        tmp_path, {"agent": {"http": {"tls": {"enabled": True, "cert_file": str(tmp_path / "no.pem"), "key_file": str(tmp_path / "no.key")}}}}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(agent.config_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "agent.http.tls.cert_file" in proc.stderr and "does not exist" in proc.stderr


# ----------------------------------------------------------------------------- tracing


class _OtlpReceiver(BaseHTTPRequestHandler):
    spans: list[tuple[str, str]] = []
    paths: list[str] = []

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).paths.append(self.path)
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    type(self).spans.append((attrs.get("service.name", ""), span.name))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def test_spans_reach_an_otlp_receiver(tmp_path: Path) -> None:
    _OtlpReceiver.spans = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    site = make_distribution(tmp_path)
    agent = AgentProcess(
        tmp_path,
        {"agent": {"tracing": {"otlp_endpoint": endpoint}}, "plugins": {"goodplugin": {"path": str(tmp_path / "out.jsonl")}}},
        env={"PYTHONPATH": str(site), "PREDIS_AGENT_DISABLE_PLUGINS": "badplugin,brokenimport"},
    )
    agent.start()
    try:
        assert agent.status()["components"]["tracing"]["otlp_endpoint"] == endpoint
        agent.signal(signal.SIGHUP)
        wait_for(lambda: ("predis-agent", "config.reload") in _OtlpReceiver.spans, timeout=20, what="config.reload span")
        wait_for(lambda: ("predis-agent", "collect") in _OtlpReceiver.spans, timeout=20, what="collect span")
        wait_for(lambda: ("predis-agent", "export") in _OtlpReceiver.spans, timeout=20, what="export span")
        assert set(_OtlpReceiver.paths) == {"/v1/traces"}
    finally:
        agent.stop()
        server.shutdown()
        server.server_close()


def test_no_endpoint_means_no_tracing(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path)
    agent.start()
    try:
        assert agent.status()["components"]["tracing"]["otlp_endpoint"] is None
    finally:
        agent.stop()
    assert "tracing:" not in agent.logs()


def test_status_shows_every_push_exporter_sink(tmp_path: Path) -> None:
    """`status` with push exporters enabled (one with nothing listening) prints a line per
    sink with its breaker, queue and drops: it used to crash with KeyError: 'queued_batches'."""
    dead = free_port()  # nothing listens here: the sink queues and counts its failures
    agent = AgentProcess(
        tmp_path,
        {
            "agent": {"http": {"listen": f"127.0.0.1:{free_port()}"}, "reload": {"watch": False}},
            "exporters": {
                "datadog": {"enabled": True, "api_host": f"http://127.0.0.1:{dead}", "api_key": "${env:DD_KEY}", "interval": 1},
            },
        },
        env={"DD_KEY": "0123456789abcdef0123456789abcdef"},
    )
    agent.start()
    try:
        env = {**agent.env, "PREDIS_AGENT_TOKEN": agent.token}
        done = cli("status", "--config", str(agent.config_path), env=env, check=False)
        assert done.returncode == 0, done.stderr
        line = next(line for line in done.stdout.splitlines() if line.startswith("sink datadog:"))
        assert "breaker" in line and "queued" in line and "dropped" in line
        assert "0123456789abcdef" not in done.stdout + done.stderr
    finally:
        agent.stop()


def test_json_logs_hold_for_every_line_from_the_first(tmp_path: Path) -> None:
    """Under agent.log.format: json every line the agent writes is a JSON object: the
    records logged while plugins load (before the config that names the format is read;
    here an installed plugin that fails to import) and the ready banner used to be text."""
    import os

    site = tmp_path / "site"
    dist = site / "predis_broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: predis-broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[predis_agent]\nbroken_one = predis_module_that_is_not_there\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    agent = AgentProcess(tmp_path, {"agent": {"log": {"format": "json"}}}, env={"PYTHONPATH": path})
    agent.start()
    try:
        wait_for(lambda: "broken_one" in (tmp_path / "stderr.log").read_text(), timeout=30, what="the plugin failure logged")
    finally:
        agent.stop()
    lines = [line for name in ("stdout.log", "stderr.log") for line in (tmp_path / name).read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # raises on any text line
    assert any("broken_one" in entry["msg"] and entry["level"] == "error" for entry in parsed)
    banner = next(entry for entry in parsed if " ready: " in entry["msg"])
    assert banner["level"] == "info" and "redis protocol:" in banner["msg"]

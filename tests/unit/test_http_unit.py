# SPDX-License-Identifier: Apache-2.0
"""agent.net (the listeners' helpers): listen-address parsing, loopback detection, TLS contexts, listeners."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import StartupError
from agent.net import is_loopback, make_ssl_context, open_listener, parse_listen, tls_files_stamp


def write_self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    cert, key = write_self_signed(directory, "server")
    other_cert, other_key = write_self_signed(directory, "other")
    return {"cert": cert, "key": key, "other_cert": other_cert, "other_key": other_key, "dir": directory}


def handshake(server_ctx: ssl.SSLContext, client_max: ssl.TLSVersion) -> str:
    """Run a TLS handshake entirely in memory; return the negotiated version or raise SSLError."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    client_ctx.maximum_version = client_max
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if done[side]:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return str(server.version())
    raise AssertionError("handshake did not finish")


# ----------------------------------------------------------------------------- parse_listen


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:9", ("::1", 9)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("[fe80::1%eth0]:443", ("fe80::1%eth0", 443)),
        ("agent.example:9470", ("agent.example", 9470)),
    ],
)
def test_parse_listen_accepts(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nope", "expected host:port"),
        (":80", "expected host:port"),
        ("1.2.3.4:99999", "port must be 0..65535"),
        ("1.2.3.4:-1", "port must be 0..65535"),
        ("127.0.0.1:", "is not a number"),
        ("127.0.0.1:http", "is not a number"),
        ("", "expected host:port"),
    ],
)
def test_parse_listen_rejects(value: str, message: str) -> None:
    with pytest.raises(StartupError, match=message) as info:
        parse_listen(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


# ----------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("tls", [{}, {"enabled": False, "cert_file": "/nonexistent", "key_file": "/nonexistent"}])
def test_tls_disabled_gives_no_context(tls: dict[str, object]) -> None:
    assert make_ssl_context(tls) is None
    assert tls_files_stamp(tls) == ()


@pytest.mark.parametrize(
    "tls",
    [
        {"enabled": True},
        {"enabled": True, "cert_file": "/x.crt", "key_file": None},
        {"enabled": True, "cert_file": None, "key_file": "/x.key"},
        {"enabled": True, "cert_file": "", "key_file": ""},
    ],
)
def test_tls_enabled_without_files_names_the_keys(tls: dict[str, object]) -> None:
    with pytest.raises(StartupError) as info:
        make_ssl_context(tls)
    message = str(info.value)
    assert "agent.http.tls.enabled" in message and "cert_file" in message and "key_file" in message


def test_tls_missing_file_names_the_key_and_path(pki: dict[str, Path], tmp_path: Path) -> None:
    absent = tmp_path / "absent.pem"
    with pytest.raises(StartupError, match=r"agent\.http\.tls\.cert_file: .*absent\.pem does not exist"):
        make_ssl_context({"enabled": True, "cert_file": str(absent), "key_file": str(pki["key"])})
    with pytest.raises(StartupError, match=r"agent\.http\.tls\.key_file: .*absent\.pem does not exist"):
        make_ssl_context({"enabled": True, "cert_file": str(pki["cert"]), "key_file": str(absent)})


def test_tls_mismatched_or_garbage_files_are_startup_errors(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="cannot load certificate/key"):
        make_ssl_context({"enabled": True, "cert_file": str(pki["cert"]), "key_file": str(pki["other_key"])})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(StartupError, match="cannot load certificate/key"):
        make_ssl_context({"enabled": True, "cert_file": str(garbage), "key_file": str(pki["key"])})


@pytest.mark.parametrize(("min_version", "expected"), [("1.2", ssl.TLSVersion.TLSv1_2), ("1.3", ssl.TLSVersion.TLSv1_3), (None, ssl.TLSVersion.TLSv1_2)])
def test_tls_minimum_version_is_set(pki: dict[str, Path], min_version: str | None, expected: ssl.TLSVersion) -> None:
    tls = {"enabled": True, "cert_file": str(pki["cert"]), "key_file": str(pki["key"])}
    if min_version is not None:
        tls["min_version"] = min_version
    ctx = make_ssl_context(tls)
    assert ctx is not None
    assert ctx.minimum_version == expected


def test_tls_13_minimum_refuses_a_tls_12_client(pki: dict[str, Path]) -> None:
    strict = make_ssl_context({"enabled": True, "cert_file": str(pki["cert"]), "key_file": str(pki["key"]), "min_version": "1.3"})
    lenient = make_ssl_context({"enabled": True, "cert_file": str(pki["cert"]), "key_file": str(pki["key"]), "min_version": "1.2"})
    assert strict is not None and lenient is not None
    assert handshake(strict, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert handshake(lenient, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        handshake(strict, ssl.TLSVersion.TLSv1_2)


def test_tls_files_stamp_changes_when_a_file_is_renewed(pki: dict[str, Path], tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path, "renew")
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key)}
    first = tls_files_stamp(tls)
    assert tls_files_stamp(tls) == first
    replacement, _ = write_self_signed(tmp_path, "renew-new")
    os.replace(replacement, cert)
    assert tls_files_stamp(tls) != first
    missing = tls_files_stamp({"enabled": True, "cert_file": str(tmp_path / "gone"), "key_file": None})
    assert missing == ((str(tmp_path / "gone"), None), (None, None))


# ----------------------------------------------------------------------------- listeners


def test_open_listener_binds_a_nonblocking_listening_socket() -> None:
    sock = open_listener("127.0.0.1:0")
    try:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0
        assert sock.getblocking() is False
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        if hasattr(socket, "SO_REUSEPORT"):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        sock.close()


def test_open_listener_on_a_port_in_use_is_a_startup_error() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            open_listener(f"127.0.0.1:{port}")
    finally:
        holder.close()


def test_two_agent_listeners_cannot_share_a_port() -> None:
    first = open_listener("127.0.0.1:0")
    try:
        port = first.getsockname()[1]
        with pytest.raises(StartupError):
            open_listener(f"127.0.0.1:{port}")
    finally:
        first.close()


def test_open_listener_rejects_a_bad_address_before_binding() -> None:
    with pytest.raises(StartupError, match="port must be 0..65535"):
        open_listener("127.0.0.1:70000")

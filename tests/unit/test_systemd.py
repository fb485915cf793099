# SPDX-License-Identifier: Apache-2.0
"""agent.systemd.Notifier against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.systemd import Notifier


class Receiver:
    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def lines(self) -> list[str]:
        return self.sock.recv(65536).decode("utf-8").split("\n")

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
        return False


@pytest.fixture
def path_receiver() -> Iterator[Receiver]:
    # A short directory: AF_UNIX paths are limited to ~107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-") as directory:
        address = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.settimeout(5)
        try:
            yield Receiver(sock, address)
        finally:
            sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"predis-agent-test-{os.getpid()}-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


def test_ready_sends_ready_and_mainpid(path_receiver: Receiver) -> None:
    notifier = Notifier(path_receiver.address)
    assert notifier.enabled
    assert notifier.ready() is True
    assert path_receiver.lines() == ["READY=1", f"MAINPID={os.getpid()}"]
    assert notifier.ready("serving on http://127.0.0.1:1") is True
    assert path_receiver.lines() == ["READY=1", "STATUS=serving on http://127.0.0.1:1", f"MAINPID={os.getpid()}"]


def test_reloading_sends_a_current_monotonic_timestamp(path_receiver: Receiver) -> None:
    notifier = Notifier(path_receiver.address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = path_receiver.lines()
    assert lines[0] == "RELOADING=1"
    assert len(lines) == 2 and lines[1].startswith("MONOTONIC_USEC=")
    usec = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= after


def test_stopping_status_and_watchdog_payloads(path_receiver: Receiver) -> None:
    notifier = Notifier(path_receiver.address)
    assert notifier.stopping()
    assert path_receiver.lines() == ["STOPPING=1"]
    assert notifier.status("config generation 3 — ok")
    assert path_receiver.lines() == ["STATUS=config generation 3 — ok"]
    assert notifier.watchdog()
    assert path_receiver.lines() == ["WATCHDOG=1"]
    assert path_receiver.nothing_pending()


def test_address_comes_from_notify_socket(path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.address)
    notifier = Notifier()
    assert notifier.address == path_receiver.address
    assert notifier.watchdog()
    assert path_receiver.lines() == ["WATCHDOG=1"]


def test_abstract_socket_address(abstract_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_receiver.address)
    notifier = Notifier()
    assert notifier.ready() is True
    assert abstract_receiver.lines() == ["READY=1", f"MAINPID={os.getpid()}"]


@pytest.mark.parametrize("value", [None, ""])
def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is not None:
        monkeypatch.setenv("NOTIFY_SOCKET", value)

    def no_sockets(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a socket was opened without NOTIFY_SOCKET")

    notifier = Notifier()
    monkeypatch.setattr(socket, "socket", no_sockets)  # the OS boundary: prove nothing is opened
    assert notifier.enabled is False
    for result in (notifier.ready("x"), notifier.reloading(), notifier.stopping(), notifier.status("s"), notifier.watchdog()):
        assert result is False


def test_unreachable_socket_returns_false_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "no-such-socket"))
    with caplog.at_level(logging.WARNING, logger="agent.systemd"):
        results = [notifier.ready(), notifier.watchdog(), notifier.stopping()]
    assert results == [False, False, False]
    warnings = [r for r in caplog.records if r.name == "agent.systemd"]
    assert len(warnings) == 1
    assert "no-such-socket" in warnings[0].getMessage()


def test_a_socket_that_went_away_does_not_raise(path_receiver: Receiver) -> None:
    notifier = Notifier(path_receiver.address)
    assert notifier.watchdog()
    path_receiver.sock.close()
    os.unlink(path_receiver.address)
    assert notifier.watchdog() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("3000000", None, 1.5),
        ("3000000", "self", 1.5),
        ("1", None, 0.0000005),
        ("3000000", "other", None),
        ("abc", None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    interval = Notifier().watchdog_interval
    if expected is None:
        assert interval is None
    else:
        assert interval == pytest.approx(expected)

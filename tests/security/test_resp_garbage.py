# SPDX-License-Identifier: Apache-2.0
"""Hostile bytes against the agent's RESP server over raw sockets.

Whatever one connection sends, the server answers it (a reply, or ``-ERR Protocol error: ...``)
or closes that connection only: a separate well-behaved redis-py client keeps getting PONG
and its data back, and the agent process stays up. Limits (max_clients, output buffer, idle
timeout, inline and bulk sizes) close the offending connection only. The password never
reaches the agent's logs.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.agentproc import AgentProcess
from tests.polling import wait_for
from tests.resp_helpers import connect, encode_command, read_exactly, read_until_closed, start_agent

pytestmark = [pytest.mark.security, pytest.mark.integration]

PASSWORD = "garbage-" + secrets.token_hex(12)
PASSWORD_ENV = "RESP_GARBAGE_REQUIREPASS"
MAX_INLINE = 1024
OUTPUT_BUFFER = 65536
SENTINEL_KEY = "sentinel:data"
SENTINEL_VALUE = b"still here \x00\xff"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def garbage_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, int]]:
    agent, port = start_agent(
        tmp_path_factory.mktemp("resp-garbage"),
        resp={
            "requirepass": "${env:" + PASSWORD_ENV + "}",
            "max_inline_bytes": MAX_INLINE,
            "output_buffer_bytes": OUTPUT_BUFFER,
        },
        env={PASSWORD_ENV: PASSWORD},
    )
    yield agent, port
    alive = agent.proc is not None and agent.proc.poll() is None
    code = agent.stop()
    assert alive, "the agent died during the garbage tests"
    assert code == 0
    assert PASSWORD not in agent.logs()


@pytest.fixture(scope="module")
def port(garbage_agent: tuple[AgentProcess, int]) -> int:
    return garbage_agent[1]


@pytest.fixture(scope="module")
def good(port: int) -> Iterator[redis.Redis]:
    """The well-behaved client: one authenticated RESP3 connection that must survive everything."""
    client = redis.Redis(
        host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=10,
        single_connection_client=True, retry=Retry(NoBackoff(), 0),
    )
    assert client.set(SENTINEL_KEY, SENTINEL_VALUE) is True
    yield client
    client.close()


@pytest.fixture
def check_healthy(garbage_agent: tuple[AgentProcess, int], good: redis.Redis) -> Any:
    def check() -> None:
        assert garbage_agent[0].proc is not None and garbage_agent[0].proc.poll() is None, "the agent process died"
        assert good.ping() is True
        assert good.get(SENTINEL_KEY) == SENTINEL_VALUE

    check()
    return check


# ------------------------------------------------------------------ a strict RESP reply reader
class Incomplete(Exception):
    pass


def _reply(data: bytes, pos: int) -> tuple[Any, int]:
    if pos >= len(data):
        raise Incomplete
    kind = data[pos : pos + 1]
    end = data.find(b"\r\n", pos)
    if end < 0:
        raise Incomplete
    line = data[pos + 1 : end]
    if kind in b"+-:_,#(" and len(kind) == 1:
        if kind == b":":
            int(line)
        return (kind, line), end + 2
    if kind in (b"$", b"="):
        n = int(line)
        if n == -1:
            return (kind, None), end + 2
        body_end = end + 2 + n
        if len(data) < body_end + 2:
            raise Incomplete
        assert data[body_end : body_end + 2] == b"\r\n", f"bulk reply not CRLF-terminated at {body_end}"
        return (kind, data[end + 2 : body_end]), body_end + 2
    if kind in (b"*", b"%", b"~", b">"):
        n = int(line)
        if n == -1:
            return (kind, None), end + 2
        items = []
        pos = end + 2
        for _ in range(n * 2 if kind == b"%" else n):
            item, pos = _reply(data, pos)
            items.append(item)
        return (kind, items), pos
    raise AssertionError(f"not a RESP reply at byte {pos}: {data[pos:pos + 40]!r}")


def parse_replies(data: bytes) -> list[tuple[bytes, Any]]:
    """Every reply in ``data``, which must be whole replies and nothing else."""
    out = []
    pos = 0
    while pos < len(data):
        try:
            reply, pos = _reply(data, pos)
        except Incomplete:
            raise AssertionError(f"the server sent a truncated reply: {data[pos:pos + 80]!r}") from None
        out.append(reply)
    return out


def assert_well_formed(data: bytes) -> list[tuple[bytes, Any]]:
    """Whole replies only; a protocol error, if any, is the last thing sent."""
    replies = parse_replies(data)
    for i, (kind, value) in enumerate(replies):
        if kind == b"-" and value.startswith(b"ERR Protocol error"):
            assert i == len(replies) - 1, "the server went on after a protocol error"
    return replies


def send_then_eof(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, and return everything the server sent until it closed."""
    with connect(port, timeout=10) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already refused the connection
        data, closed = read_until_closed(s)
    assert closed, f"the server neither answered nor closed after {payload[:60]!r}; it sent {data[:120]!r}"
    return data


def expect_protocol_error(port: int, payload: bytes, message: str, before: bytes = b"") -> None:
    """The server itself answers ``-ERR Protocol error: <message>`` and closes (no half-close from us)."""
    with connect(port, timeout=10) as s:
        s.sendall(payload)
        data, closed = read_until_closed(s)
    assert data == before + b"-ERR Protocol error: " + message.encode() + b"\r\n"
    assert closed, "the server must close the connection after a protocol error"


AUTH = encode_command("AUTH", PASSWORD)


# ------------------------------------------------------------------ deterministic cases
@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"*1\r\n$999999999999\r\n", "invalid bulk length", id="huge-bulk-length"),
        # Over the small limits before AUTH but within the configured ones (as redis-server).
        pytest.param(b"*1\r\n$16385\r\n", "unauthenticated bulk length", id="bulk-over-preauth-limit"),
        pytest.param(b"*11\r\n", "unauthenticated multibulk length", id="multibulk-over-preauth-limit"),
        pytest.param(b"*1\r\n$99999999999999999999999999999999\r\n", "invalid bulk length", id="bulk-length-over-64-bits"),
        pytest.param(b"*999999999\r\n", "invalid multibulk length", id="huge-multibulk-count"),
        pytest.param(b"*1048577\r\n", "invalid multibulk length", id="multibulk-count-just-over-limit"),
        pytest.param(b"*99999999999999999999999999999999\r\n", "invalid multibulk length", id="multibulk-over-64-bits"),
        pytest.param(b"*1\r\n$-1\r\n", "invalid bulk length", id="negative-bulk-length"),
        pytest.param(b"*1\r\n$-999\r\n", "invalid bulk length", id="very-negative-bulk-length"),
        pytest.param(b"*1\r\n$abc\r\n", "invalid bulk length", id="bulk-length-not-a-number"),
        pytest.param(b"*abc\r\n", "invalid multibulk length", id="multibulk-length-not-a-number"),
        pytest.param(b"*1" + b"9" * 100, "invalid multibulk length", id="endless-multibulk-header"),
        pytest.param(b"*1\r\n$1" + b"9" * 100, "invalid bulk length", id="endless-bulk-header"),
        pytest.param(b"*1\r\n" * 10000, "expected '$', got '*'", id="10k-deep-nesting"),
        pytest.param(b"*1\r\n$4\r\nPINGxx", "bulk string not terminated by CRLF", id="bulk-not-crlf-terminated"),
        pytest.param(b"*2\r\n$4\r\nECHO\r\n:5\r\n", "expected '$', got ':'", id="integer-element"),
        pytest.param(b"*2\r\n$4\r\nECHO\r\n+hi\r\n", "expected '$', got '+'", id="simple-string-element"),
        pytest.param(b"*1\r\n\x00\x01\r\n", "expected '$', got '\\x00'", id="binary-element"),
        pytest.param(b"x" * (MAX_INLINE + 100), "too big inline request", id="inline-over-limit-no-newline"),
        pytest.param(b"ECHO " + b"y" * (MAX_INLINE + 100) + b"\r\n", "too big inline request", id="inline-over-limit"),
        pytest.param(b'ECHO "unbalanced\r\n', "unbalanced quotes in request", id="unbalanced-double-quote"),
        pytest.param(b"SET 'k v\r\n", "unbalanced quotes in request", id="unbalanced-single-quote"),
        pytest.param(b'ECHO "a"b\r\n', "unbalanced quotes in request", id="text-after-closing-quote"),
    ],
)
def test_protocol_violation_is_answered_and_closes_only_that_connection(port: int, check_healthy: Any, payload: bytes, message: str) -> None:
    expect_protocol_error(port, payload, message)
    check_healthy()


def test_commands_before_a_violation_are_answered_first(port: int, check_healthy: Any) -> None:
    payload = AUTH + encode_command("SET", "garbage:before", "1") + encode_command("GET", "garbage:before") + b"*1\r\n:1\r\n" + encode_command("SET", "garbage:after", "1")
    expect_protocol_error(port, payload, "expected '$', got ':'", before=b"+OK\r\n+OK\r\n$1\r\n1\r\n")
    check_healthy()
    good = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, protocol=2, socket_timeout=10)
    try:
        assert good.get("garbage:after") is None  # nothing after the violation ran
        assert good.get("garbage:before") == b"1"
    finally:
        good.close()


def test_truncated_frames_then_close(port: int, check_healthy: Any, good: redis.Redis) -> None:
    frame = encode_command("SET", "garbage:truncated", "value")
    for cut in range(1, len(frame)):
        with connect(port) as s:
            s.sendall(AUTH + frame[:cut])
            # closed with the command half sent
    with connect(port) as s:  # inline, cut before its newline
        s.sendall(AUTH + b"SET garbage:truncated value")
    check_healthy()
    # Close before the CRLF of the last bulk: the half-received SET never ran.
    assert good.get("garbage:truncated") is None
    wait_for(lambda: good.info("clients")["connected_clients"] == 1, timeout=20, what="the truncated connections to be dropped")


def test_truncated_frames_with_half_close_get_no_reply(port: int, check_healthy: Any) -> None:
    frame = encode_command("ECHO", "x" * 20)
    for cut in (1, 3, 5, 10, len(frame) - 2, len(frame) - 1):
        data = send_then_eof(port, AUTH + frame[:cut])
        assert data == b"+OK\r\n"  # AUTH answered, the half command not
    check_healthy()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"$999999999999\r\n", id="inline-looking-bulk-header"),
        pytest.param(b"+PING\r\n:1\r\n-ERR\r\n_\r\n", id="reply-types-as-inline"),
        pytest.param(b"\x01\xff\xfe\r\n", id="binary-inline"),
        pytest.param(b"PING\r\n" * 2000, id="many-inline-pings"),
        pytest.param(AUTH + encode_command("NOSUCH", "x" * 100000), id="unknown-command-large-arg"),
        pytest.param(AUTH + encode_command("SET", "garbage:k", "x" * 500000) + encode_command("DEL", "garbage:k"), id="large-value"),
        pytest.param(AUTH + encode_command("SET", "k" * 100000, "v"), id="key-over-max-key-bytes"),
        pytest.param(AUTH + encode_command("MGET", *["k" * 600] * 10), id="mget-long-keys"),
        pytest.param(AUTH + encode_command("GET", "k" * 600) + encode_command("GET", "ok") + encode_command("GET", "k" * 600), id="batched-get-with-long-key"),
        pytest.param(AUTH + encode_command("SET", "k" * 600, "v") + encode_command("SET", "garbage:b", "v") + encode_command("DEL", "garbage:b"), id="batched-set-with-long-key"),
        pytest.param(AUTH + encode_command("SET", "garbage:big", "x" * (1024 * 1024 + 1)), id="value-over-max-value-bytes"),
        pytest.param(AUTH + encode_command("HELLO", "3") + encode_command("MGET", "nokey") + encode_command("HELLO", "2") + encode_command("GET", "nokey"), id="protocol-switches"),
        pytest.param(AUTH + b"".join(encode_command("INCR", "garbage:n") for _ in range(3000)) + encode_command("DEL", "garbage:n"), id="long-pipeline"),
    ],
)
def test_odd_but_valid_input_gets_replies(port: int, check_healthy: Any, payload: bytes) -> None:
    replies = assert_well_formed(send_then_eof(port, payload))
    assert replies, "the server answered nothing"
    assert not any(kind == b"-" and value.startswith(b"ERR Protocol error") for kind, value in replies)
    check_healthy()


def test_empty_and_negative_multibulk_are_ignored(port: int, check_healthy: Any) -> None:
    assert send_then_eof(port, b"*-5\r\n*-1\r\n*0\r\n\r\n\r\n") == b""
    assert send_then_eof(port, b"*-5\r\n*-1\r\n*0\r\n\r\n" + AUTH) == b"+OK\r\n"
    assert send_then_eof(port, b"\r\n" * 5000 + b"  \t \n" * 1000) == b""
    assert send_then_eof(port, b"\r\n" * 5000 + AUTH) == b"+OK\r\n"
    check_healthy()


def test_nul_byte_in_inline_request(tmp_path: Any) -> None:
    """On an agent of its own: the bug takes the whole server down, which would fail every later test."""
    agent, port = start_agent(tmp_path)
    try:
        with connect(port, timeout=5) as s:
            s.sendall(b"ECHO a\x00b\r\nPING\r\n")
            s.shutdown(socket.SHUT_WR)
            data, closed = read_until_closed(s)
        assert closed, "no reply and no close within 5 s"
        assert_well_formed(data)
        assert _pong(port)
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.kill()  # a hung agent cannot stop itself; do not wait for SIGTERM
        agent.stop()


def test_declared_bulk_partly_sent_then_close(port: int, check_healthy: Any) -> None:
    with connect(port) as s:
        s.sendall(AUTH + b"*3\r\n$3\r\nSET\r\n$9\r\ngarbage:p\r\n$2000000\r\n" + b"x" * 1_000_000)
    check_healthy()
    data = send_then_eof(port, AUTH + encode_command("EXISTS", "garbage:p"))
    assert data == b"+OK\r\n:0\r\n"


def test_many_protocol_errors_do_not_accumulate_connections(port: int, check_healthy: Any, good: redis.Redis) -> None:
    for i in range(200):
        expect_protocol_error(port, b"*1\r\n$-%d\r\n" % (i + 2), "invalid bulk length")
    check_healthy()
    wait_for(lambda: good.info("clients")["connected_clients"] == 1, timeout=20, what="closed connections to be dropped")
    assert good.info("stats")["protocol_errors"] >= 200


# ------------------------------------------------------------------ random input
FRAGMENTS = st.sampled_from(
    [
        b"*1\r\n", b"*2\r\n", b"*3\r\n", b"$3\r\n", b"$-1\r\n", b"*-1\r\n", b"*0\r\n", b"\r\n", b"\n", b"\r",
        b'"', b"'", b"\\", b"\\x4", b" ", b"*999999999\r\n", b"$999999999\r\n", b"$1048577\r\n", b"*",
        b"$", b"PING\r\n", b"GET", b"SET", b"ECHO", b"HELLO 3\r\n", b"HELLO 2\r\n", b"CLIENT SETNAME x\r\n",
        encode_command("SET", "garbage:r", "v"), encode_command("GET", "garbage:r"), encode_command("INCR", "garbage:r"),
        encode_command("MGET", "garbage:r", "x"), encode_command("DEL", "garbage:r"), encode_command("PING"),
        encode_command("SET", "garbage:r", "v", "EX", "100", "NX", "GET"), b"\x01", b"\xff",
    ]
)
RANDOM_INPUT = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.lists(st.one_of(FRAGMENTS, st.binary(max_size=12)), min_size=1, max_size=16).map(b"".join),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=RANDOM_INPUT)
def test_random_bytes_unauthenticated(port: int, check_healthy: Any, payload: bytes) -> None:
    assert_well_formed(send_then_eof(port, payload))
    check_healthy()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=RANDOM_INPUT)
def test_random_bytes_after_auth(port: int, check_healthy: Any, payload: bytes) -> None:
    replies = assert_well_formed(send_then_eof(port, AUTH + payload))
    assert replies[0] == (b"+", b"OK")
    assert not any(kind == b"-" and b"internal error" in (value or b"") for kind, value in replies), replies
    check_healthy()


# ------------------------------------------------------------------ output buffer
def test_client_that_never_reads_is_closed(garbage_agent: tuple[AgentProcess, int], port: int, check_healthy: Any, good: redis.Redis) -> None:
    value = b"v" * 100_000
    assert good.set("garbage:big-reply", value) is True
    requests = AUTH + encode_command("GET", "garbage:big-reply") * 300  # 30 MB of replies
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(requests)
        wait_for(lambda: "output buffer over" in garbage_agent[0].logs(), timeout=20, what="the agent to log the output-buffer close")
        wait_for(lambda: good.info("clients")["connected_clients"] == 1, timeout=10, what="the non-reading client to be dropped")
        data, closed = read_until_closed(s, limit=64 << 20)
        assert closed
        assert len(data) < 300 * len(value)  # cut off well before all replies were delivered
    finally:
        s.close()
    check_healthy()


# ------------------------------------------------------------------ secrets in logs
def test_password_never_reaches_the_logs(garbage_agent: tuple[AgentProcess, int], port: int, check_healthy: Any) -> None:
    attempts = [
        encode_command("AUTH", PASSWORD + "x"),
        encode_command("AUTH", PASSWORD, PASSWORD),
        encode_command("HELLO", "3", "AUTH", "default", PASSWORD + "x"),
        encode_command("NOSUCH", PASSWORD),
        b"AUTH \"" + PASSWORD.encode() + b"\r\n",  # unbalanced quotes around the password
        b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%sxx" % (len(PASSWORD), PASSWORD.encode()),  # bulk not CRLF-terminated
        b"AUTH " + PASSWORD.encode() * 100,  # inline over the limit
    ]
    for payload in attempts:
        send_then_eof(port, payload)
    check_healthy()
    logs = garbage_agent[0].logs()
    assert "resp client" in logs  # the protocol errors above were logged...
    assert PASSWORD not in logs  # ...without the password
    assert PASSWORD not in garbage_agent[0].get("/status").text


# ------------------------------------------------------------------ connection limits
@pytest.fixture(scope="module")
def limited_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, int]]:
    agent, port = start_agent(tmp_path_factory.mktemp("resp-max-clients"), resp={"max_clients": 5})
    yield agent, port
    assert agent.proc is not None and agent.proc.poll() is None
    assert agent.stop() == 0


def _pong(port: int) -> bool:
    with connect(port) as s:
        s.sendall(b"PING\r\n")
        return read_exactly(s, b"+PONG\r\n") == b"+PONG\r\n"


def test_connections_past_max_clients_are_refused(limited_agent: tuple[AgentProcess, int]) -> None:
    _, port = limited_agent
    wait_for(lambda: _pong(port), timeout=20, what="a free connection slot")
    held = []
    try:
        for _ in range(5):
            s = connect(port)
            s.sendall(b"PING\r\n")
            assert read_exactly(s, b"+PONG\r\n") == b"+PONG\r\n"  # registered before the next one
            held.append(s)
        for _ in range(3):
            with connect(port) as extra:
                data, closed = read_until_closed(extra)
            assert data == b"-ERR max number of clients reached\r\n"
            assert closed
        with pytest.raises(redis.ConnectionError, match="max number of clients reached"):
            redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10, retry=Retry(NoBackoff(), 0)).ping()
        for s in held:  # the five admitted connections still work
            s.sendall(encode_command("ECHO", "still"))
            assert read_exactly(s, b"$5\r\nstill\r\n") == b"$5\r\nstill\r\n"
        held.pop().close()
        wait_for(lambda: _pong(port), timeout=20, what="the freed slot to be reused")
    finally:
        for s in held:
            s.close()
    assert limited_agent[0].proc is not None and limited_agent[0].proc.poll() is None


@pytest.fixture(scope="module")
def idle_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, int]]:
    agent, port = start_agent(tmp_path_factory.mktemp("resp-idle"), resp={"idle_timeout_seconds": 0.5})
    yield agent, port
    assert agent.proc is not None and agent.proc.poll() is None
    assert agent.stop() == 0


def test_idle_connection_is_closed(idle_agent: tuple[AgentProcess, int]) -> None:
    _, port = idle_agent
    with connect(port, timeout=30) as s:
        s.sendall(b"PING\r\n")
        assert read_exactly(s, b"+PONG\r\n") == b"+PONG\r\n"
        data, closed = read_until_closed(s)  # blocks until the server gives up on us
    assert closed and data == b""
    with connect(port, timeout=30) as s:  # a half-sent command does not count as activity forever
        s.sendall(b"*2\r\n$4\r\nECHO\r\n$10\r\nabc")
        data, closed = read_until_closed(s)
    assert closed and data == b""
    with connect(port) as s:  # and the server still serves new connections
        s.sendall(b"PING\r\n")
        assert read_exactly(s, b"+PONG\r\n") == b"+PONG\r\n"

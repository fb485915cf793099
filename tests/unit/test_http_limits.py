# SPDX-License-Identifier: Apache-2.0
"""HTTP limits (issue 21, item 7): connection cap and descriptor reserve, header and body
deadlines, the body limit for chunked bodies, rate-limited accept errors; and the helpers
behind them (agent.fdlimits, agent.logs.RateLimitedLog).

Each server test runs a real HttpServer on a loopback port in this process and talks to it
with raw sockets, so that what a hostile client does (open and send nothing, trickle
headers, stall a body, stream a chunked body) is what the test does. Deadlines are set
small; the tests wait for their effect with a generous deadline, and never assert how long
anything took.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import ssl
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent import fdlimits
from agent.http import HttpServer, Route, protocol_log
from agent.logs import RateLimitedLog, RateLimitFilter
from agent.security import TokenStore
from agent.telemetry import Telemetry
from tests.polling import wait_for_async
from tests.unit.test_http_unit import write_self_signed

# How long a test waits for something that should happen at once (never asserted on).
PATIENCE = 30.0


def _sample(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


def _section(**overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "request_timeout_seconds": 10,
        "max_request_bytes": 1024,
        "max_connections": 256,
        "header_timeout_seconds": 60,
        "body_timeout_seconds": 60,
        "accept_retry_seconds": 0.01,
        "extra_reserved_descriptors": 0,
        "tls": {},
    }
    section.update(overrides)
    return section


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"bytes": len(body)})


async def _livez(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@asynccontextmanager
async def serving(tmp_path: Path, anonymous: tuple[str, ...] = ("/livez", "/echo"), **overrides: Any) -> AsyncIterator[tuple[HttpServer, Telemetry, int]]:
    telemetry = Telemetry("t")
    server = HttpServer(telemetry)
    section = _section(**overrides)
    server.configure(section, {"anonymous_routes": list(anonymous)}, TokenStore(tmp_path / "tokens.json"))
    server.set_routes([Route("GET", "/livez", _livez), Route("POST", "/echo", _echo)])
    await server.start(await server.prepare_site(section))
    assert server.address is not None
    port = int(server.address.rsplit(":", 1)[1])
    try:
        yield server, telemetry, port
    finally:
        await server.stop()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (PATIENCE at most)."""
    return await asyncio.wait_for(reader.read(), PATIENCE)


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await read_all(reader)
    finally:
        writer.close()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()


def chunked(body: bytes, chunk: int = 256) -> bytes:
    out = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    for i in range(0, len(body), chunk):
        part = body[i : i + chunk]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def status_of(response: bytes) -> int:
    assert response.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), response[:80]
    return int(response.split(b" ", 2)[1])


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_reserve() -> Any:
    previous = fdlimits.reserved()
    fdlimits.set_reserved(0)
    yield
    fdlimits.set_reserved(previous)


# -- RateLimitedLog ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_writes_one_line_per_interval_with_the_count_left_out(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("t.rate"), interval=5.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t.rate"):
        assert limited.warning("accept failed: %s", "EMFILE")
        for _ in range(999):
            assert not limited.warning("accept failed: %s", "EMFILE")
        clock.now += 5.0
        assert limited.warning("accept failed: %s", "EMFILE")
    lines = [r.getMessage() for r in caplog.records if r.name == "t.rate"]
    assert lines == [
        "accept failed: EMFILE",
        "accept failed: EMFILE (and 999 more like it since the last such line, not logged)",
    ]
    assert (limited.events, limited.logged, limited.suppressed) == (1001, 2, 0)


def test_rate_limit_filter_passes_one_record_per_interval_and_drops_client_tracebacks() -> None:
    clock = FakeClock()
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("t.ratefilter")
    logger.propagate = False
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(RateLimitFilter(interval=5.0, clock=clock, brief=(ValueError,)))
    try:
        for _ in range(100):
            try:
                raise ValueError("bad chunk size\nmore detail")
            except ValueError:
                logger.exception("Error handling request from %s", "127.0.0.1")
        clock.now += 5.0
        try:
            raise KeyError("agent bug")
        except KeyError:
            logger.exception("Unhandled exception")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "Error handling request from 127.0.0.1: ValueError: bad chunk size",
        "Unhandled exception (and 99 more like it since the last such line, not logged)",
    ]
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert records[1].levelno == logging.ERROR and records[1].exc_info is not None


def test_rate_limited_log_uses_the_configured_interval() -> None:
    from agent import logs

    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("t.rate2"), clock=clock)
    previous = logs.rate_limit_seconds()
    logs.configure({"level": "info", "rate_limit_seconds": 30})
    try:
        assert limited.warning("x")
        clock.now += 29.0
        assert not limited.warning("x")
        clock.now += 1.0
        assert limited.warning("x")
    finally:
        logs.configure({"level": "info", "rate_limit_seconds": previous})


# -- fdlimits ----------------------------------------------------------------------------


def test_raise_nofile_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 512)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        limit = fdlimits.raise_nofile_limit()
        expected = hard if hard != resource.RLIM_INFINITY else limit
        assert limit == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0] == fdlimits.nofile_limit()
        assert limit >= lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_unlimited_hard_limit_is_read_as_the_kernel_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"soft": 1024}
    monkeypatch.setattr(
        fdlimits.resource, "getrlimit", lambda _which: (limits["soft"], fdlimits.resource.RLIM_INFINITY)
    )

    def setrlimit(_which: int, pair: tuple[int, int]) -> None:
        limits["soft"] = pair[0]

    monkeypatch.setattr(fdlimits.resource, "setrlimit", setrlimit)
    assert fdlimits.raise_nofile_limit() == fdlimits._kernel_ceiling() == limits["soft"]


def test_a_refused_raise_keeps_the_old_limit(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(fdlimits.resource, "getrlimit", lambda _which: (1024, 4096))

    def setrlimit(_which: int, _pair: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(fdlimits.resource, "setrlimit", setrlimit)
    with caplog.at_level(logging.WARNING, logger="agent.fdlimits"):
        assert fdlimits.raise_nofile_limit() == 1024
    assert "cannot raise the open-file limit from 1024 to 4096" in caplog.text


def test_available_descriptors_counts_what_is_open(tmp_path: Path) -> None:
    before = fdlimits.open_descriptors()
    handles = [open(tmp_path / f"f{i}", "w") for i in range(5)]
    try:
        assert fdlimits.open_descriptors() == before + 5
        assert fdlimits.available_descriptors() == fdlimits.nofile_limit() - before - 5
    finally:
        for handle in handles:
            handle.close()
    assert fdlimits.open_descriptors() == before


def test_headroom_follows_the_reserve() -> None:
    fdlimits.set_reserved(0)
    assert fdlimits.has_headroom()
    fdlimits.set_reserved(fdlimits.available_descriptors() + 10)
    assert not fdlimits.has_headroom()
    with pytest.raises(ValueError, match="must be >= 0"):
        fdlimits.set_reserved(-1)


def test_the_descriptor_ceiling_keeps_the_top_numbers_for_the_reserve() -> None:
    limit = fdlimits.nofile_limit()
    fdlimits.set_reserved(64)
    assert fdlimits.descriptor_ceiling() == limit - 64
    assert fdlimits.descriptor_ceiling(extra=128) == limit - 192
    assert fdlimits.within_reserve(limit - 65)
    assert not fdlimits.within_reserve(limit - 64)
    assert not fdlimits.within_reserve(limit - 150, extra=128)
    fdlimits.set_reserved(limit + 1)
    assert fdlimits.descriptor_ceiling() == 0 and not fdlimits.within_reserve(3)


def test_asyncio_accept_errors_become_a_counter_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry("t")
    others: list[dict[str, Any]] = []

    async def main() -> RateLimitedLog:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: others.append(context))
        limited = fdlimits.install_accept_error_handler(loop, telemetry)
        for _ in range(500):
            loop.call_exception_handler(
                {"message": fdlimits.ASYNCIO_ACCEPT_MESSAGE, "exception": OSError(errno.EMFILE, "Too many open files")}
            )
        loop.call_exception_handler({"message": "something else"})
        return limited

    with caplog.at_level(logging.WARNING, logger="agent.fdlimits"):
        limited = asyncio.run(main())
    assert _sample(telemetry, "predis_agent_accept_errors_total", errno="EMFILE") == 500
    assert limited.events == 500 and limited.logged == 1
    assert [r.getMessage() for r in caplog.records if r.name == "agent.fdlimits"] == [
        "accept() failed on a listener: Too many open files; the listener retries shortly"
    ]
    assert [c["message"] for c in others] == ["something else"]


# -- connection cap and descriptor reserve -------------------------------------------


def test_connections_past_the_cap_get_503_and_are_closed(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, max_connections=3) as (server, telemetry, port):
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await wait_for_async(lambda: server.open_connections == 3, timeout=PATIENCE, what="three open connections")
            assert _sample(telemetry, "predis_agent_http_connections") == 3
            refused = await request(port, get("/livez"))
            assert status_of(refused) == 503 and b"too many connections" in refused
            assert _sample(telemetry, "predis_agent_http_connections_refused_total", reason="max_connections") == 1
            # A slot freed is a slot to use.
            idle.pop()[1].close()
            await wait_for_async(lambda: server.open_connections == 2, timeout=PATIENCE, what="a closed connection to be released")
            assert status_of(await request(port, get("/livez"))) == 200
            for _reader, writer in idle:
                writer.close()
            await wait_for_async(lambda: server.open_connections == 0, timeout=PATIENCE, what="every connection released")
            assert _sample(telemetry, "predis_agent_http_connections") == 0

    run(main())


def test_a_new_cap_applies_to_the_next_connection(tmp_path: Path) -> None:
    """configure() (what a reload calls) changes the cap and deadlines in place."""

    async def main() -> None:
        async with serving(tmp_path, max_connections=5) as (server, telemetry, port):
            holder = await asyncio.open_connection("127.0.0.1", port)
            await wait_for_async(lambda: server.open_connections == 1, timeout=PATIENCE, what="one open connection")
            assert status_of(await request(port, get("/livez"))) == 200
            await wait_for_async(lambda: server.open_connections == 1, timeout=PATIENCE, what="the served connection released")
            server.configure(_section(max_connections=1), {"anonymous_routes": ["/livez"]}, TokenStore(tmp_path / "t"))
            assert status_of(await request(port, get("/livez"))) == 503
            assert server.open_connections == 1  # the connection already open is kept
            holder[1].close()
            assert _sample(telemetry, "predis_agent_http_connections_refused_total", reason="max_connections") == 1

    run(main())


def test_connections_are_refused_while_the_descriptor_reserve_is_reached(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (_server, telemetry, port):
            fdlimits.set_reserved(fdlimits.nofile_limit())
            assert status_of(await request(port, get("/livez"))) == 503
            assert _sample(telemetry, "predis_agent_http_connections_refused_total", reason="descriptors") == 1
            fdlimits.set_reserved(0)
            assert status_of(await request(port, get("/livez"))) == 200

    run(main())


def test_http_gives_up_before_the_shared_reserve_is_reached(tmp_path: Path) -> None:
    """extra_reserved_descriptors: HTTP refuses while the Redis port (which stops at the
    shared reserve alone) still has descriptors to give."""

    async def main() -> None:
        async with serving(tmp_path, extra_reserved_descriptors=1000) as (_server, telemetry, port):
            lowest_free = os.open(os.devnull, os.O_RDONLY)
            os.close(lowest_free)
            # The shared reserve leaves 200 numbers above the lowest free one; HTTP's does not.
            fdlimits.set_reserved(fdlimits.nofile_limit() - lowest_free - 200)
            assert fdlimits.within_reserve(lowest_free + 10)
            assert status_of(await request(port, get("/livez"))) == 503
            assert _sample(telemetry, "predis_agent_http_connections_refused_total", reason="descriptors") == 1

    run(main())


def test_refusals_are_logged_once_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(tmp_path, max_connections=1) as (server, telemetry, port):
            server._refused_log.interval = 3600
            holder = await asyncio.open_connection("127.0.0.1", port)
            await wait_for_async(lambda: server.open_connections == 1, timeout=PATIENCE, what="one open connection")
            for _ in range(20):
                assert status_of(await request(port, get("/livez"))) == 503
            assert _sample(telemetry, "predis_agent_http_connections_refused_total", reason="max_connections") == 20
            holder[1].close()

    with caplog.at_level(logging.WARNING, logger="agent.http"):
        run(main())
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "connection cap reached" in refused[0], refused


# -- header deadline ---------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, header_timeout_seconds=0.2) as (server, telemetry, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await read_all(reader) == b""
            writer.close()
            assert _sample(telemetry, "predis_agent_http_timeouts_total", phase="idle") == 1
            await wait_for_async(lambda: server.open_connections == 0, timeout=PATIENCE, what="the connection released")

    run(main())


def test_trickled_headers_do_not_extend_the_header_deadline(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, header_timeout_seconds=0.3) as (_server, telemetry, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /livez HTTP/1.1\r\nHost: t\r\n")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + PATIENCE
            # One header byte at a time, paced, until the server hangs up.
            while not reader.at_eof() and loop.time() < deadline:
                try:
                    writer.write(b"X")
                    await writer.drain()
                except ConnectionError:
                    break
                try:
                    await asyncio.wait_for(reader.read(1), 0.02)
                except TimeoutError:
                    pass
            assert reader.at_eof() or writer.is_closing(), "the server kept a trickling client"
            writer.close()
            await wait_for_async(
                lambda: _sample(telemetry, "predis_agent_http_timeouts_total", phase="header") == 1,
                timeout=PATIENCE,
                what="the header timeout to be counted",
            )

    run(main())


def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, header_timeout_seconds=0.2) as (_server, telemetry, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), PATIENCE)
            assert status.startswith(b"HTTP/1.1 200")
            await read_all(reader)  # the rest of the response, then the close
            writer.close()
            assert _sample(telemetry, "predis_agent_http_timeouts_total", phase="idle") == 1

    run(main())


# -- body deadline and size ------------------------------------------------------------


def test_a_stalled_body_gets_408_and_the_connection_is_closed(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, body_timeout_seconds=0.2) as (server, telemetry, port):
            head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
            response = await request(port, head + b"x" * 10)
            assert status_of(response) == 408 and b"body_timeout_seconds" in response
            assert _sample(telemetry, "predis_agent_http_timeouts_total", phase="body") == 1
            await wait_for_async(lambda: server.open_connections == 0, timeout=PATIENCE, what="the connection released")

    run(main())


def test_a_chunked_body_over_the_limit_gets_413(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, max_request_bytes=1024) as (_server, telemetry, port):
            response = await request(port, chunked(b"x" * 2048))
            assert status_of(response) == 413
            assert b"max_request_bytes (1024)" in response
            assert _sample(telemetry, "predis_agent_http_requests_total", route="oversized", code="413") == 1

    run(main())


def test_a_chunked_body_at_the_limit_reaches_the_handler(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, max_request_bytes=1024) as (_server, _telemetry, port):
            response = await request(port, chunked(b"x" * 1024))
            assert status_of(response) == 200
            assert b'"bytes": 1024' in response

    run(main())


def test_a_content_length_over_the_limit_gets_413_before_the_body_is_read(tmp_path: Path) -> None:
    async def main() -> None:
        # The body announced never comes: once answered, the connection is given up at the
        # header deadline (the unread body counts against it).
        async with serving(tmp_path, max_request_bytes=1024, header_timeout_seconds=0.2) as (_server, telemetry, port):
            head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n"
            response = await request(port, head)
            assert status_of(response) == 413 and b"Connection: close" in response
            assert _sample(telemetry, "predis_agent_http_timeouts_total", phase="idle") == 1

    run(main())


def test_an_unbounded_chunked_body_is_cut_off(tmp_path: Path) -> None:
    """A client that streams a chunked body without end is answered 413 and disconnected at
    the header deadline (with a reset, which may overtake the answer: it is still sending)."""

    async def main() -> None:
        async with serving(tmp_path, max_request_bytes=1024, header_timeout_seconds=0.3) as (server, _t, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            answer = asyncio.ensure_future(read_all(reader))
            chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
            while not answer.done():
                try:
                    writer.write(chunk)
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0.001)
            try:
                response = await answer
            except ConnectionResetError:
                # The answer was on its way when the deadline cut the stream off with a reset.
                response = b""
            writer.close()
            assert response == b"" or status_of(response) == 413
            await wait_for_async(lambda: server.open_connections == 0, timeout=PATIENCE, what="the streaming client to be disconnected")

    run(main())


def test_malformed_requests_do_not_flood_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (limiter,) = [f for f in protocol_log.filters if isinstance(f, RateLimitFilter)]
    dropped_before, passed_before = limiter.dropped, limiter.passed
    bad_chunk = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"

    async def main() -> None:
        async with serving(tmp_path) as (_server, _telemetry, port):
            for _ in range(50):
                assert status_of(await request(port, bad_chunk)) == 400

    with caplog.at_level(logging.DEBUG, logger="agent.http.protocol"):
        run(main())
    lines = [r for r in caplog.records if r.name == "agent.http.protocol"]
    assert len(lines) <= 1 and all(r.exc_info is None for r in lines)
    assert (limiter.dropped - dropped_before) + (limiter.passed - passed_before) == 50


# -- TLS ------------------------------------------------------------------------------------


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_https_is_served_and_a_client_that_never_handshakes_is_closed(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key), "min_version": "1.2"}

    async def main() -> None:
        async with serving(tmp_path, tls=tls, header_timeout_seconds=0.3) as (server, telemetry, port):
            assert server.tls
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_tls())
            writer.write(get("/livez"))
            assert status_of(await read_all(reader)) == 200
            writer.close()
            # A TCP connection that never starts its handshake holds a slot until the deadline.
            silent = await asyncio.open_connection("127.0.0.1", port)
            assert await read_all(silent[0]) == b""
            silent[1].close()
            await wait_for_async(
                lambda: _sample(telemetry, "predis_agent_http_timeouts_total", phase="handshake") == 1,
                timeout=PATIENCE,
                what="the handshake timeout to be counted",
            )
            await wait_for_async(lambda: server.open_connections == 0, timeout=PATIENCE, what="every connection released")

    run(main())


def test_stop_closes_idle_connections_and_handshakes_in_progress(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key), "min_version": "1.2"}

    async def main() -> None:
        telemetry = Telemetry("t")
        server = HttpServer(telemetry)
        section = _section(tls=tls)
        server.configure(section, {"anonymous_routes": ["/livez"]}, TokenStore(tmp_path / "tokens.json"))
        server.set_routes([Route("GET", "/livez", _livez)])
        await server.start(await server.prepare_site(section))
        port = server_port(server)
        handshaking = await asyncio.open_connection("127.0.0.1", port)
        served = await asyncio.open_connection("127.0.0.1", port, ssl=_client_tls())
        await wait_for_async(lambda: server.open_connections == 2, timeout=PATIENCE, what="two open connections")
        await server.stop()
        assert await read_all(handshaking[0]) == b""
        assert await read_all(served[0]) == b""
        for _reader, writer in (handshaking, served):
            writer.close()
        assert server.open_connections == 0

    run(main())


# -- accept errors -------------------------------------------------------------------


def test_accept_errors_are_counted_logged_once_and_the_listener_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (server, telemetry, port):
            server._accept_log.interval = 3600
            loop = asyncio.get_running_loop()
            real_accept = loop.sock_accept
            failures = {"left": 50}

            async def flaky_accept(sock: Any) -> Any:
                if failures["left"] > 0:
                    failures["left"] -= 1
                    raise OSError(errno.EMFILE, "Too many open files")
                return await real_accept(sock)

            monkeypatch.setattr(loop, "sock_accept", flaky_accept)
            # Restart the accept loop so that it picks up the patched accept.
            await server.start(await server.prepare_site(_section(listen=server._listen)))
            assert status_of(await request(server_port(server), get("/livez"))) == 200
            assert _sample(telemetry, "predis_agent_accept_errors_total", errno="EMFILE") == 50

    with caplog.at_level(logging.WARNING, logger="agent.http"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if "accept() on" in r.getMessage()]
    assert len(lines) == 1 and "Too many open files" in lines[0], lines


def test_a_connection_that_cannot_be_admitted_does_not_stop_the_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (server, _telemetry, port):
            real_refusal = server._refusal
            calls = {"n": 0}

            def failing_once(conn: Any) -> str | None:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise RuntimeError("admission broke")
                return real_refusal(conn)

            monkeypatch.setattr(server, "_refusal", failing_once)
            try:
                dropped = await request(port, get("/livez"))
            except ConnectionResetError:
                dropped = b""  # closed with the request unread: a reset
            assert dropped == b""
            assert status_of(await request(port, get("/livez"))) == 200

    with caplog.at_level(logging.ERROR, logger="agent.http"):
        run(main())
    assert any("admitting it failed" in r.getMessage() for r in caplog.records)


def server_port(server: HttpServer) -> int:
    assert server.address is not None
    return int(server.address.rsplit(":", 1)[1])


# -- request_timeout_seconds ---------------------------------------------------------
def test_a_handler_past_the_request_timeout_gets_503_unless_its_route_bounds_itself(tmp_path: Path) -> None:
    """agent.http.request_timeout_seconds cuts a handler short with 503; a route marked
    bounded=False (POST /reload, limited by the reload's own timeouts) runs to its end."""
    release, entered = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"done": True})

    async def scenario() -> None:
        async with serving(tmp_path, ("/livez", "/cut", "/whole"), request_timeout_seconds=0.2) as (server, _telemetry, port):
            server.set_routes([Route("GET", "/livez", _livez), Route("GET", "/cut", slow), Route("GET", "/whole", slow, bounded=False)])
            cut = await request(port, get("/cut"))
            assert status_of(cut) == 503 and b"request timed out" in cut
            entered.clear()
            whole = asyncio.ensure_future(request(port, get("/whole")))
            await asyncio.wait_for(entered.wait(), PATIENCE)  # its handler runs: three timeouts later it must still run
            done, _ = await asyncio.wait({whole}, timeout=0.6)
            assert not done, "the unbounded route was cut short"
            release.set()
            answer = await whole
            assert status_of(answer) == 200 and b'"done": true' in answer

    run(scenario())

# SPDX-License-Identifier: Apache-2.0
"""Operations commands in-process (cache_core.resp.admin): what the slow log keeps (the
threshold, the length, truncation, redaction, pipelined runs and sliced commands), error
counts, CLIENT LIST's view of other connections, CLIENT KILL, CONFIG GET from the limits.

The same commands compared with a real redis-server: tests/integration/test_resp_admin.py.
"""

from __future__ import annotations

from cache_core.resp.admin import ERRORSTATS_MAX_CODES, OpsState, slowlog_argv
from cache_core.resp.server import RespLimits, RespServer
from tests.polling import wait_for_async
from tests.resp_helpers import encode_command
from tests.unit.test_resp_limits import closed_by_server, connect, read_replies, run


def test_slowlog_argv_is_truncated_and_redacted_as_redis() -> None:
    assert slowlog_argv([b"AUTH", b"user", b"pw"]) == [b"AUTH", b"(redacted)", b"(redacted)"]
    assert slowlog_argv([b"hello", b"3", b"SETNAME", b"n", b"auth", b"u", b"p"]) == [b"hello", b"3", b"SETNAME", b"n", b"auth", b"(redacted)", b"(redacted)"]
    assert slowlog_argv([b"SET", b"k", b"x" * 129]) == [b"SET", b"k", b"x" * 128 + b"... (1 more bytes)"]
    assert slowlog_argv([b"SET", b"k", b"x" * 128]) == [b"SET", b"k", b"x" * 128]
    args = [b"MSET"] + [b"a"] * 32
    assert slowlog_argv(args) == [b"MSET"] + [b"a"] * 30 + [b"... (2 more arguments)"]
    assert slowlog_argv([b"MSET"] + [b"a"] * 31) == [b"MSET"] + [b"a"] * 31


def test_errorstats_count_error_codes_and_stop_growing_at_the_cap() -> None:
    ops = OpsState()
    ops.count_error(b"-ERR syntax error\r\n")
    ops.count_error(b"-WRONGTYPE Operation against a key\r\n", 2)
    ops.count_error(b"-NOSPACEANYWHEREINTHEFIRSTTHIRTYTWOBYTES-------------------\r\n")
    assert ops.errors == {"ERR": 2, "WRONGTYPE": 2}
    for i in range(2 * ERRORSTATS_MAX_CODES):
        ops.count_error(b"-CODE%d x\r\n" % i)
    assert len(ops.errors) == ERRORSTATS_MAX_CODES
    assert ops.error_replies == 4 + 2 * ERRORSTATS_MAX_CODES


def test_slowlog_threshold_and_length_follow_the_limits() -> None:
    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        # Pipelined GETs and SETs run as batches: each command still gets its own entry.
        writer.write(b"".join(encode_command("SET", f"k{i}", "v") for i in range(5)) + b"".join(encode_command("GET", f"k{i}") for i in range(5)))
        await read_replies(reader, 10)
        writer.write(encode_command("SLOWLOG", "LEN") + encode_command("SLOWLOG", "GET", "-1"))
        length, entries = await read_replies(reader, 2)
        assert length == 4
        assert [e[3] for e in entries] == [[b"SLOWLOG", b"LEN"], [b"GET", b"k4"], [b"GET", b"k3"], [b"GET", b"k2"]]
        assert [e[0] for e in entries] == [10, 9, 8, 7]
        server.limits = RespLimits(slowlog_log_slower_than_usec=-1, slowlog_max_len=4)
        writer.write(encode_command("SLOWLOG", "RESET") + encode_command("SET", "a", "b") + encode_command("SLOWLOG", "LEN"))
        assert await read_replies(reader, 3) == ["+OK", "+OK", 0]
        writer.close()

    run(scenario, limits=RespLimits(slowlog_log_slower_than_usec=0, slowlog_max_len=4))


def test_sliced_commands_are_logged_whole() -> None:
    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        writer.write(encode_command("MSET", *[f"k{i // 2}" if i % 2 == 0 else "v" for i in range(20)]) + encode_command("SLOWLOG", "GET", "1"))
        ok, entries = await read_replies(reader, 2)
        assert ok == "+OK"
        assert entries[0][3][:3] == [b"MSET", b"k0", b"v"] and len(entries[0][3]) == 21
        writer.close()

    run(scenario, limits=RespLimits(slowlog_log_slower_than_usec=0, command_slice_keys=2))


def test_client_list_shows_other_connections_as_redis() -> None:
    async def scenario(server: RespServer) -> None:
        watcher_reader, watcher = await connect(server)
        other_reader, other = await connect(server)
        other.write(encode_command("PING"))
        await read_replies(other_reader, 1)
        other.write(encode_command("MULTI") + encode_command("SET", "k", "v") + encode_command("GET", "k"))
        assert await read_replies(other_reader, 3) == ["+OK", "+QUEUED", "+QUEUED"]
        fresh_reader, fresh = await connect(server)
        await wait_for_async(lambda: len(server.clients) == 3, what="the server to take the third connection")
        watcher.write(encode_command("CLIENT", "LIST"))
        (listed,) = await read_replies(watcher_reader, 1)
        lines = [dict(f.split("=", 1) for f in line.split(" ")) for line in listed.decode().splitlines()]
        assert [line["cmd"] for line in lines] == ["client|list", "get", "NULL"]
        assert (lines[1]["flags"], lines[1]["multi"], int(lines[1]["multi-mem"]) > 0) == ("x", "2", True)
        assert lines[2]["flags"] == "N" and lines[2]["multi"] == "-1"
        # CLIENT KILL by id closes the other connection at once; its queued commands go.
        watcher.write(encode_command("CLIENT", "KILL", "ID", lines[1]["id"]) + encode_command("CLIENT", "LIST"))
        killed, listed = await read_replies(watcher_reader, 2)
        assert killed == 1 and listed.decode().count("\n") == 2
        assert await closed_by_server(other_reader) == b""
        # SKIPME no: the caller itself is closed once its reply is out.
        fresh.write(encode_command("CLIENT", "KILL", "LADDR", lines[2]["laddr"], "SKIPME", "no") + encode_command("PING"))
        assert await closed_by_server(fresh_reader) == b":2\r\n"
        for w in (watcher, other, fresh):
            w.close()

    run(scenario)


def test_config_get_reads_the_limits() -> None:
    async def scenario(server: RespServer) -> None:
        reader, writer = await connect(server)
        writer.write(encode_command("CONFIG", "GET", "slowlog-*") + encode_command("CONFIG", "GET", "client-output-buffer-limit", "maxmemory-clients"))
        slowlog, limits = await read_replies(reader, 2)
        assert dict(zip(slowlog[0::2], slowlog[1::2])) == {b"slowlog-log-slower-than": b"-1", b"slowlog-max-len": b"7"}
        assert dict(zip(limits[0::2], limits[1::2])) == {
            b"client-output-buffer-limit": b"normal 1000 500 3 slave 268435456 67108864 60 pubsub 33554432 8388608 60",
            b"maxmemory-clients": b"123456",
        }
        writer.close()

    run(scenario, limits=RespLimits(slowlog_log_slower_than_usec=-1, slowlog_max_len=7, output_buffer_bytes=1000, output_buffer_soft_bytes=500, output_buffer_soft_seconds=3.0, max_client_memory_bytes=123456))

# SPDX-License-Identifier: Apache-2.0
"""The Redis commands this server deliberately does not serve, by group, with the reason.

A client that sends one gets an error naming the command and the reason rather than
``unknown command``: the operator learns at once that it is a decision, not a gap, and where
it is explained (docs/redis-protocol.md, "Out of scope", which lists the same groups). The
commands are not in the server's command table, so COMMAND and COMMAND COUNT do not claim
them; the server asks :func:`refusal` before it answers ``unknown command``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    """Commands left out for one reason; ``what`` completes "... are out of scope"."""

    what: str
    why: str
    commands: tuple[str, ...]


GROUPS: tuple[Group, ...] = (
    Group(
        "Lua scripts and functions",
        "they run arbitrary code on the cache's event loop, where one slow script stalls every client",
        ("eval", "evalsha", "eval_ro", "evalsha_ro", "script", "function", "fcall", "fcall_ro"),
    ),
    Group(
        "Pub/Sub",
        "it is messaging, not caching, and each subscriber holds a connection and an output buffer for as long as it listens",
        ("subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe", "publish", "spublish", "pubsub"),
    ),
    Group(
        "lists",
        "a list is a queue or a log, state an application keeps in a database, not a value cached in front of an origin",
        (
            "lpush", "rpush", "lpushx", "rpushx", "lpop", "rpop", "lrange", "llen", "lindex", "lset", "lrem", "ltrim",
            "linsert", "lpos", "lmove", "blpop", "brpop", "blmove", "rpoplpush", "brpoplpush", "lmpop", "blmpop",
        ),
    ),
    Group(
        "sets",
        "set algebra on the cache would need a second value type in the GPU tables and its own eviction accounting",
        (
            "sadd", "srem", "smembers", "sismember", "smismember", "scard", "spop", "srandmember", "sinter", "sinterstore",
            "sintercard", "sunion", "sunionstore", "sdiff", "sdiffstore", "smove", "sscan",
        ),
    ),
    Group(
        "sorted sets",
        "leaderboards and priority queues are database state, and ordered structures do not fit the cache's hash tables",
        (
            "zadd", "zcard", "zcount", "zdiff", "zdiffstore", "zincrby", "zinter", "zintercard", "zinterstore", "zlexcount",
            "zmpop", "bzmpop", "zmscore", "zpopmax", "zpopmin", "bzpopmax", "bzpopmin", "zrandmember", "zrange", "zrangebylex",
            "zrangebyscore", "zrangestore", "zrank", "zrem", "zremrangebylex", "zremrangebyrank", "zremrangebyscore",
            "zrevrange", "zrevrangebylex", "zrevrangebyscore", "zrevrank", "zscan", "zscore", "zunion", "zunionstore",
        ),
    ),
    Group(
        "streams",
        "a stream is an append-only log with consumer groups: a durable database feature, not a cache's",
        (
            "xadd", "xack", "xautoclaim", "xclaim", "xdel", "xgroup", "xinfo", "xlen", "xpending", "xrange", "xread",
            "xreadgroup", "xrevrange", "xsetid", "xtrim",
        ),
    ),
    Group(
        "HyperLogLog",
        "approximate counting is analytics state, not a cached value",
        ("pfadd", "pfcount", "pfmerge", "pfdebug", "pfselftest"),
    ),
    Group(
        "geospatial indexes",
        "they are sorted sets underneath, which are out of scope",
        (
            "geoadd", "geodist", "geohash", "geopos", "georadius", "georadius_ro", "georadiusbymember",
            "georadiusbymember_ro", "geosearch", "geosearchstore",
        ),
    ),
    Group(
        "bitmaps",
        "bit-level updates of a cached value would bypass the value size accounting of whole-value writes",
        ("setbit", "getbit", "bitcount", "bitpos", "bitop", "bitfield", "bitfield_ro"),
    ),
    Group(
        "persistence",
        "a cache in front of an origin restarts empty by design: the origin is the source of truth",
        ("save", "bgsave", "bgrewriteaof"),
    ),
    Group(
        "replication and cluster",
        "each agent serves its own cache; scale-out is by running more agents, not Redis replication or cluster slots",
        ("replicaof", "slaveof", "sync", "psync", "replconf", "cluster", "readonly", "readwrite", "wait", "failover"),
    ),
    Group(
        "server administration",
        "the agent is run and inspected through its own config, CLI, metrics and logs "
        "(MONITOR would copy every command to one client, DEBUG and MODULE change the server, SHUTDOWN stops the agent)",
        ("monitor", "debug", "shutdown", "module"),
    ),
)

_BY_NAME: dict[str, Group] = {name: group for group in GROUPS for name in group.commands}


def refusal(name: str) -> str | None:
    """The error for an out-of-scope command (``name`` lower-case), or None."""
    group = _BY_NAME.get(name)
    if group is None:
        return None
    return f"ERR '{name.upper()}' is not supported by this server (Predis caches strings and hashes; {group.what} are out of scope, see docs/redis-protocol.md)"

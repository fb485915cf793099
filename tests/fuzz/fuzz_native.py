# SPDX-License-Identifier: Apache-2.0
"""A time-boxed fuzzer of the compiled core (cache_core._native), run under a sanitizer build.

Usage: ``python3 -m tests.fuzz.fuzz_native SECONDS [SO_PATH]``. With SO_PATH the module is
loaded from that file (the AddressSanitizer/UBSan build made by
tests/unit/test_native_sanitizers.py) instead of the one ``pip install -e .`` built.

Each round mutates well-formed RESP (bit flips, truncations, spliced headers, huge and
negative lengths, inline lines), feeds it to the compiled parser and to its Python oracle
in random pieces under random limits and requires the same commands and errors; keys of
random lengths are fingerprinted natively and with hashlib; the access log's compiled ring
takes random batches through both of its write paths and must hold the newest events; the
compiled hash table and string reads/overwrites run random operations beside their
oracles (``native=False``: the NumPy rounds and the Python paths) and must leave the same
arrays and answers. A sanitizer finding aborts the process with its report; a
disagreement raises. The last line printed counts the rounds.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import random
import sys
import time
from typing import Any


def load(so_path: str | None) -> None:
    if so_path:
        loader = importlib.machinery.ExtensionFileLoader("cache_core._native", so_path)
        spec = importlib.util.spec_from_file_location("cache_core._native", so_path, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        sys.modules["cache_core._native"] = module
        import cache_core

        cache_core._native = module  # type: ignore[attr-defined]


SEEDS = [
    b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n",
    b"*1\r\n$4\r\nPING\r\n",
    b"PING\r\n",
    b"SET \"a\\x41b\" 'c d'\r\n",
    b"*0\r\n*-1\r\n",
]
SPLICES = [b"*", b"$", b"\r\n", b"\r", b"\n", b"-", b"0", b"-0", b"99999999999999999999", b"9" * 19, b"'", b'"', b"\\x", b"\x00", b" "]


def mutate(rng: random.Random, data: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            i = rng.randint(0, len(data))
            data[i:i] = rng.choice(SPLICES)
        elif op == 3:
            data += rng.choice(SEEDS)
        elif data:
            i = rng.randrange(len(data))
            del data[i : i + rng.randint(1, 4)]
    return data


def parser_round(rng: random.Random) -> None:
    from cache_core.resp.protocol import PyRequestParser, RequestParser

    data = bytearray()
    for _ in range(rng.randint(1, 6)):
        data += rng.choice(SEEDS)
    data = bytes(mutate(rng, data))
    limits = {
        "max_bulk_bytes": rng.choice([0, 1, 5, 64, 1 << 20]),
        "max_multibulk_length": rng.choice([0, 1, 3, 1024]),
        "max_inline_bytes": rng.choice([0, 8, 1024]),
    }
    restricted = rng.choice([None, (4, 2), (0, 0)])
    one = rng.random() < 0.3
    native, oracle = RequestParser(**limits), PyRequestParser(**limits)
    native.restrict(restricted)
    oracle.restrict(restricted)
    start = 0
    while start < len(data):
        stop = min(len(data), start + rng.randint(1, 40))
        native.feed(data[start:stop])
        oracle.feed(data[start:stop])
        start = stop
        while True:
            a, b = native.commands(one=one), oracle.commands(one=one)
            ea, eb = native.error, oracle.error
            if a != b or (ea is None) != (eb is None) or str(ea) != str(eb) or native.held != oracle.held:
                raise AssertionError(f"parsers disagree on {data!r} with {limits} {restricted} one={one}: {a!r} {ea!r} / {b!r} {eb!r}")
            if not a or not one:
                break


def fingerprint_round(rng: random.Random) -> None:
    from cache_core import _native

    secret = rng.randbytes(rng.choice([16, 32, 64]))
    hasher = _native.Blake2b(secret, b"predis")
    keys = [rng.randbytes(rng.choice([1, 15, 16, 17, 127, 128, 129, 300])) for _ in range(rng.randint(1, 300))]
    bad = rng.randrange(len(keys) + 1)
    if bad < len(keys):
        keys[bad] = rng.choice([b"", b"x" * 513])
        if hasher.fingerprints(keys, 512) != bad:
            raise AssertionError(f"the key of {len(keys[bad])} bytes at {bad} was not refused")
        del keys[bad]
    packed = hasher.fingerprints(keys, 512)
    if len(packed) != 16 * len(keys):
        raise AssertionError("fingerprints returned the wrong length")
    for i, key in enumerate(keys):
        want = hashlib.blake2b(key, digest_size=16, key=secret, person=b"predis").digest()
        if packed[16 * i : 16 * i + 16] != want:
            raise AssertionError(f"fingerprint of {key!r} differs from hashlib")


def ring_round(rng: random.Random) -> None:
    import numpy

    from cache_core.access_log import AccessLog

    log = AccessLog(1 << rng.randint(0, 6))
    model: list[int] = []
    for _ in range(rng.randint(1, 10)):
        n = rng.choice([0, 1, 2, 31, 32, 33, 100])
        fps = [rng.getrandbits(64) for _ in range(n)]
        results, sizes = [rng.randrange(256) for _ in range(n)], [rng.getrandbits(34) for _ in range(n)]
        if rng.random() < 0.5:
            fps, results, sizes = numpy.asarray(fps, dtype=numpy.uint64), numpy.asarray(results, dtype=numpy.uint8), numpy.asarray(sizes, dtype=numpy.int64)
        (log.hook if rng.random() < 0.7 else log.append)(rng.randrange(8), fps, results, sizes)
        model.extend(int(fp) for fp in fps)
    got = [int(fp) for fp in log.read(0).events["fp"]]
    if got != model[max(0, len(model) - log.capacity) :]:
        raise AssertionError("the access log ring lost or reordered events")


def _both(pair: list[Any], apply: Any) -> None:
    """Apply one write to both caches: the same result or the same refusal."""
    from cache_core.cache import OutOfMemoryError

    outcomes = []
    for cache in pair:
        try:
            outcomes.append(repr(apply(cache)))
        except OutOfMemoryError as exc:
            outcomes.append(str(exc))
    if outcomes[0] != outcomes[1]:
        raise AssertionError(f"a write gave different outcomes: {outcomes}")


def cache_round(rng: random.Random) -> None:
    import numpy

    from cache_core import _native
    from cache_core.cache import TYPE_HASH, Cache
    from cache_core.keys import Fingerprinter, KeyLengthError

    class Clock:
        t = 100.0

        def __call__(self) -> float:
            return self.t

    clock, secret = Clock(), rng.randbytes(32)
    max_keys, max_memory, eviction = rng.choice([8, 64, 300]), rng.choice([1 << 10, 1 << 16]), rng.choice(["clock", "lru", "s3fifo"])
    pair = [
        Cache(numpy, max_keys=max_keys, max_memory_bytes=max_memory, max_key_bytes=32, eviction=eviction, clock=clock,
              fingerprinter=Fingerprinter(secret, max_key_bytes=32), native=native)
        for native in (True, False)
    ]  # fmt: skip
    names = [rng.randbytes(rng.choice([0, 1, 5, 32, 33])) for _ in range(rng.randint(1, 40))]
    for _ in range(rng.randint(1, 30)):
        keys = [rng.choice(names) for _ in range(rng.randint(1, 120))]
        good = [k for k in keys if 1 <= len(k) <= 32]
        op = rng.randrange(6)
        if op == 0 and rng.random() < 0.5:
            # A server's read: the compiled replies against the oracle's values, encoded.
            header = rng.random() < 0.5
            try:
                expected: Any = _native.encode_bulks(pair[1].lookup(keys)[0], b"$-1\r\n", b"-WRONG\r\n", header)
            except KeyLengthError as exc:
                expected = str(exc)
            if len(keys) == 1 and not header:
                one = pair[0].serve_lone(keys[0], None, b"$-1\r\n", b"-WRONG\r\n")
                served = None if one is None else (one, [])
            else:
                served = pair[0].read_replies(keys, b"$-1\r\n", b"-WRONG\r\n", header)
            if served is None:
                try:
                    served = (_native.encode_bulks(pair[0].lookup(keys)[0], b"$-1\r\n", b"-WRONG\r\n", header), [])
                except KeyLengthError as exc:
                    served = (str(exc), [])
            if served[0] != expected:
                raise AssertionError("compiled replies differ from the Python path's values")
        elif op <= 1:
            answers, budget = [], rng.choice([0, 0, 1, 50])
            for cache in pair:
                try:
                    answers.append(cache.lookup(keys, max_bytes=budget))
                except KeyLengthError as exc:
                    answers.append(str(exc))  # type: ignore[arg-type]
            if answers[0] != answers[1]:
                raise AssertionError("compiled reads answered differently from the Python path")
        elif op == 2 and good:
            values = [rng.randbytes(rng.choice([0, 3, 16, 17, 100, 600])) for _ in good]
            ttl, prefetched = rng.choice([None, None, rng.randint(1, 50)]), rng.random() < 0.1
            if ttl is None and not prefetched and len(set(good)) == len(good) and rng.random() < 0.5:
                # A server's SET run: compiled when every key exists and keeps its size class.
                def server_set(cache: Any) -> Any:
                    if cache is pair[0] and len(good) == 1 and cache.serve_lone(good[0], values[0], b"", b"") is not None:
                        return None
                    if cache is pair[0] and cache.overwrite_strings(good, values):
                        return None
                    return cache.mset(list(zip(good, values)))

                _both(pair, server_set)
            else:
                _both(pair, lambda cache: cache.mset(list(zip(good, values)), ttl_ms=ttl, prefetched=prefetched))
        elif op == 3 and good:
            _both(pair, lambda cache: cache.mset([(good[0], b"f")], kind=TYPE_HASH))
        elif op == 4 and good:
            _both(pair, lambda cache: cache.delete(good))
        else:
            clock.t += rng.randint(0, 60) / 1000
        for name in ("e_handle", "e_len", "e_expire", "e_atime", "e_prefetched", "e_type", "e_live"):
            if getattr(pair[0], name).tolist() != getattr(pair[1], name).tolist():
                raise AssertionError(f"entry array {name} differs after a compiled read or write")
        # The compiled cache's CompactTable and the oracle's HashTable lay out slots
        # differently: they must name the same entry for every live key, and hold no other.
        compiled, oracle = pair[0].table, pair[1].table
        live = numpy.flatnonzero(pair[1].e_live)
        if len(compiled) != len(oracle) or len(compiled) != len(live):
            raise AssertionError(f"the tables hold {len(compiled)} and {len(oracle)} keys for {len(live)} live entries")
        for eid in live.tolist():
            hi, lo = pair[1].e_hi.item(eid), pair[1].e_lo.item(eid)
            if compiled.find_one(hi, lo) != eid or oracle.find_one(hi, lo) != eid:
                raise AssertionError(f"entry {eid}: the compiled table names {compiled.find_one(hi, lo)}, the oracle {oracle.find_one(hi, lo)}")


def main() -> int:
    seconds = float(sys.argv[1])
    load(sys.argv[2] if len(sys.argv) > 2 else None)
    seed = int(os.environ.get("PREDIS_FUZZ_SEED", time.time_ns()))
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        state = rng.getstate()
        try:
            parser_round(rng)
            if rounds % 20 == 0:
                fingerprint_round(rng)
            if rounds % 5 == 0:
                ring_round(rng)
            if rounds % 10 == 0:
                cache_round(rng)
        except Exception:
            print(f"fuzz_native: finding in round {rounds} (PREDIS_FUZZ_SEED={seed}); the round's generator state: {hash(state)}", file=sys.stderr)
            raise
        rounds += 1
    from cache_core import _native

    print(f"fuzz_native: {rounds} rounds in {seconds:.0f} s of {_native.__file__}, no finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())

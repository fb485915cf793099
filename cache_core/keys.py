# SPDX-License-Identifier: Apache-2.0
"""128-bit keyed fingerprints of cache keys.

The device hash table stores a 128-bit fingerprint per key instead of the key bytes:
fixed-size records keep the table a handful of flat arrays that a GPU probes with one
aligned load per slot, and a key of up to ``max_key_bytes`` never has to cross to the
device at all.

Why comparing fingerprints instead of full keys is safe:

* **Accidental collisions.** The fingerprint is keyed BLAKE2b with a 16-byte digest, a
  pseudo-random function of the key. For ``n`` distinct keys the probability that any two
  share a fingerprint is at most ``n*(n-1)/2 / 2**128 <= n**2 / 2**129`` (birthday
  bound): about ``3e-21`` at one billion keys, far below the rate of undetected memory or
  network errors the cache already lives with.
* **Crafted collisions.** The BLAKE2b key (``secret``) is 16 random bytes drawn per
  process and never leaves it, so nobody who only chooses cache keys can compute
  fingerprints, let alone search for two keys that collide or that pile up in one probe
  chain (hash flooding). Fingerprints are therefore only meaningful inside one process;
  anything persisted or shared across hosts must carry the key, not the fingerprint.

Digest bytes 0..7 are ``hi`` and bytes 8..15 are ``lo``, both read little-endian; the
table derives the home slot from ``lo``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import cast

import numpy

from cache_core._native import Blake2b
from cache_core.errors import CacheCoreError

SECRET_BYTES = 16
DIGEST_BYTES = 16
DEFAULT_MAX_KEY_BYTES = 512

# Drawn once per process, so every default Fingerprinter in it (a cache rebuilt on config
# reload, the access log, the prefetcher) agrees on each key's fingerprint.
_PROCESS_SECRET = os.urandom(SECRET_BYTES)


# BLAKE2b personalisation of database n > 0 (at most 16 bytes with the number).
DB_PERSON_PREFIX = b"predis-db"


class KeyLengthError(CacheCoreError, ValueError):
    """A key is empty or longer than the configured maximum."""


class Fingerprinter:
    """Maps keys to 128-bit fingerprints with a per-process secret.

    ``secret`` is injectable so tests (and nothing else) can get reproducible
    fingerprints; by default the per-process random secret is used.
    """

    def __init__(self, secret: bytes | None = None, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES) -> None:
        if secret is None:
            secret = _PROCESS_SECRET
        if not isinstance(secret, (bytes, bytearray)) or not 1 <= len(secret) <= hashlib.blake2b.MAX_KEY_SIZE:
            raise ValueError(f"secret must be 1..{hashlib.blake2b.MAX_KEY_SIZE} bytes")
        if int(max_key_bytes) < 1:
            raise ValueError(f"max_key_bytes must be at least 1, got {max_key_bytes}")
        self.max_key_bytes = int(max_key_bytes)
        # Keyed BLAKE2b spends a whole compression on the key block; the compiled hasher
        # (cache_core/native/blake2b.c) is primed with it once, so a short key costs one
        # compression. It computes hashlib.blake2b(key, digest_size=16, key=secret,
        # person=...) exactly (tests/unit/test_keys.py checks it against hashlib).
        self._secret = bytes(secret)
        self._template = Blake2b(self._secret)
        # Database n > 0 hashes with its own personalisation: the same key in two databases
        # has two unrelated fingerprints (database 0 keeps the plain keyed hash).
        self._templates: dict[int, Blake2b] = {0: self._template}

    def hasher(self, db: int = 0) -> Blake2b:
        """The primed hasher of database ``db`` (the compiled reads fingerprint with it)."""
        return self._template if db == 0 else self._template_for(db)

    def _template_for(self, db: int) -> Blake2b:
        template = self._templates.get(db)
        if template is None:
            template = self._templates[db] = Blake2b(self._secret, DB_PERSON_PREFIX + str(db).encode())
        return template

    def _length_error(self, index: int | None, length: int) -> KeyLengthError:
        where = "key" if index is None else f"key at index {index}"
        return KeyLengthError(
            f"{where} is {length} bytes; keys must be 1..{self.max_key_bytes} bytes "
            "(raise cache.max_key_bytes to accept longer keys)"
        )

    def fingerprint(self, key: bytes, db: int = 0) -> tuple[int, int]:
        """The ``(hi, lo)`` fingerprint of one key, equal to one row of :meth:`fingerprints`."""
        length = len(key)
        if not 1 <= length <= self.max_key_bytes:
            raise self._length_error(None, length)
        return cast(tuple[int, int], (self._template if db == 0 else self._template_for(db)).fingerprint(key))

    def check_lengths(self, keys: Sequence[bytes]) -> None:
        """Raise the :class:`KeyLengthError` :meth:`fingerprints` would raise for ``keys``
        (for a command read in slices, which must fail whole before its reply starts)."""
        lengths = list(map(len, keys))
        if lengths and (min(lengths) < 1 or max(lengths) > self.max_key_bytes):
            for index, length in enumerate(lengths):
                if not 1 <= length <= self.max_key_bytes:
                    raise self._length_error(index, length)

    def fingerprints(self, keys: Sequence[bytes], db: int = 0) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Host ``uint64`` arrays ``(hi, lo)`` for a batch of keys, in order.

        Every key is length-checked before any is hashed, so a bad batch fails whole.
        The batch is hashed in one compiled call (without the GIL once it is large) into
        one buffer that a single NumPy view splits.
        """
        n = len(keys)
        if n == 0:
            empty = numpy.empty(0, dtype=numpy.uint64)
            return empty, empty.copy()
        digests = (self._template if db == 0 else self._template_for(db)).fingerprints(keys, self.max_key_bytes)
        if isinstance(digests, int):
            raise self._length_error(digests, len(keys[digests]))
        pairs = numpy.frombuffer(digests, dtype="<u8").reshape(n, 2)
        hi = numpy.ascontiguousarray(pairs[:, 0], dtype=numpy.uint64)
        lo = numpy.ascontiguousarray(pairs[:, 1], dtype=numpy.uint64)
        return hi, lo

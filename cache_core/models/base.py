# SPDX-License-Identifier: Apache-2.0
"""The prefetch model interface and the key vocabulary models work on.

Models see keys as dense integer IDs (:class:`Vocabulary`), so their state is arrays
indexed by ID and inference is a gather on the array module. A key that ends in digits
(``block:000123``) is also known as ``(prefix, number, width)``, which lets the stride
model name keys it has never seen (the next blocks of a scan).

Every model implements::

    observe(ids)            learn from accesses, in order (online; no look-ahead)
    predict(ids, k)         (candidates, confidences), both shaped (len(ids), k); -1 = none
    save(path) / load(path) the learned state, as one .npz file
    nbytes                  memory held by the learned state
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from itertools import repeat
from pathlib import Path
from typing import Any, Protocol, cast

import numpy

from cache_core.backend import to_host
from cache_core.files import atomic_file

# The numeric split of a key: its trailing digits (at most MAX_DIGITS, so the number fits
# an int64) and what precedes them. ``$`` also matches before a final newline, which the
# fast path of :func:`split_numeric` leaves to this pattern.
MAX_DIGITS = 18
_NUMERIC = re.compile(rb"^(.*?)(\d{1,%d})$" % MAX_DIGITS, re.DOTALL)
_DIGITS = b"0123456789"
_POW10 = 10 ** numpy.arange(MAX_DIGITS, dtype=numpy.int64)
# encode_many batches up to this many keys take the per-key path: the array calls' fixed
# cost would dominate so short a batch.
SCALAR_KEYS = 8

# Keys remembered per vocabulary unless configured otherwise.
DEFAULT_VOCABULARY_SIZE = 1 << 20


_F32 = struct.Struct("f")


def float32(x: float) -> float:
    """``x`` rounded to float32, as storing it in a float32 array rounds it: the scalar
    paths answer with the same scores as the array paths."""
    return cast(float, _F32.unpack(_F32.pack(x))[0])


def split_numeric(key: bytes) -> tuple[bytes, bytes] | None:
    """``(prefix, digits)`` as ``_NUMERIC`` splits ``key``, or ``None`` (no trailing digits).

    The digits are the key's trailing run of ASCII digits, its last :data:`MAX_DIGITS` if
    longer; ``bytes.rstrip`` finds them without the regular expression's cost.
    """
    if key[-1:] == b"\n":
        match = _NUMERIC.match(key)
        return (match.group(1), match.group(2)) if match else None
    cut = len(key.rstrip(_DIGITS))
    if cut == len(key):
        return None
    cut = max(cut, len(key) - MAX_DIGITS)
    return key[:cut], key[cut:]


def _width(digits: bytes) -> int:
    """The zero-padded width of a number's digits (0: not padded, ``7`` or ``0``)."""
    return len(digits) if digits[:1] == b"0" and len(digits) > 1 else 0


class Vocabulary:
    """Bounded two-way map between keys and dense IDs (with the numeric split of each key).

    When it is full, new keys get no ID (``-1``: not learned, never predicted) and
    ``full_misses`` counts them; :meth:`clear` starts over (the prefetcher does, and says so).
    """

    def __init__(self, capacity: int = DEFAULT_VOCABULARY_SIZE) -> None:
        if capacity < 1:
            raise ValueError("vocabulary capacity must be at least 1")
        self.capacity = int(capacity)
        self.clear()

    def clear(self) -> None:
        self.ids: dict[bytes, int] = {}
        self.keys: list[bytes] = []
        self.prefixes: dict[bytes, int] = {}
        self.prefix_keys: list[bytes] = []
        self.prefix_of = numpy.full(self.capacity, -1, dtype=numpy.int64)
        self.number_of = numpy.zeros(self.capacity, dtype=numpy.int64)
        self.width_of = numpy.zeros(self.capacity, dtype=numpy.int64)
        self.full_misses = 0

    def __len__(self) -> int:
        return len(self.keys)

    def encode(self, key: bytes) -> int:
        got = self.ids.get(key)
        if got is not None:
            return got
        if len(self.keys) >= self.capacity:
            self.full_misses += 1
            return -1
        new = len(self.keys)
        self.ids[key] = new
        self.keys.append(key)
        prefix = key.rstrip(_DIGITS)
        if len(prefix) == len(key):
            # No trailing digits (a final newline is the regular expression's to judge).
            numeric = self._numeric(key) if key[-1:] == b"\n" else None
            if numeric is not None:
                self.prefix_of[new], self.number_of[new], self.width_of[new] = numeric
            return new
        if len(key) - len(prefix) > MAX_DIGITS:
            prefix = key[:-MAX_DIGITS]
        digits = key[len(prefix) :]
        pid = self.prefixes.get(prefix)
        self.prefix_of[new] = self._new_prefix(prefix) if pid is None else pid
        self.number_of[new] = int(digits)
        self.width_of[new] = _width(digits)
        return new

    def _new_prefix(self, prefix: bytes) -> int:
        pid = len(self.prefix_keys)
        self.prefixes[prefix] = pid
        self.prefix_keys.append(prefix)
        return pid

    def _numeric(self, key: bytes) -> tuple[int, int, int] | None:
        """``(prefix ID, number, width)`` of a key that ends in digits (its prefix added if new)."""
        split = split_numeric(key)
        if split is None:
            return None
        prefix, digits = split
        pid = self.prefixes.get(prefix)
        return self._new_prefix(prefix) if pid is None else pid, int(digits), _width(digits)

    def encode_many(self, keys: Sequence[bytes]) -> numpy.ndarray:
        """:meth:`encode` of each key, in order: known keys in one pass, then the new ones."""
        n = len(keys)
        if n == 1:
            return numpy.array([self.encode(keys[0])], dtype=numpy.int64)
        if n <= SCALAR_KEYS:
            return numpy.array([self.encode(k) for k in keys], dtype=numpy.int64)
        out = numpy.fromiter(map(self.ids.get, keys, repeat(-1, n)), dtype=numpy.int64, count=n)
        missing = numpy.flatnonzero(out < 0)
        if missing.shape[0] == n:
            out[:] = self._add_many(keys)
        elif missing.shape[0]:
            out[missing] = self._add_many(list(map(keys.__getitem__, missing.tolist())))
        return out

    def _add_many(self, keys: Sequence[bytes]) -> list[int] | numpy.ndarray:
        """:meth:`encode` of keys that were not known (a key may repeat), in order."""
        ids, known = self.ids, self.keys
        first = len(known)
        fresh = list(dict.fromkeys(keys))
        if len(fresh) > self.capacity - first:
            # The vocabulary fills up: one key at a time, so the misses count as encode counts them.
            return [self.encode(key) for key in keys]
        ids.update(zip(fresh, range(first, first + len(fresh))))
        known.extend(fresh)
        self._split_many(first, fresh)
        if len(fresh) == len(keys):
            return numpy.arange(first, first + len(fresh), dtype=numpy.int64)
        return list(map(ids.__getitem__, keys))

    def _split_many(self, first: int, fresh: list[bytes]) -> None:
        """Write the numeric split of the new keys ``fresh`` (IDs ``first``, ``first + 1``...)."""
        n = len(fresh)
        prefixes = list(map(bytes.rstrip, fresh, repeat(_DIGITS, n)))
        lengths = numpy.fromiter(map(len, fresh), dtype=numpy.int64, count=n)
        cuts = numpy.fromiter(map(len, prefixes), dtype=numpy.int64, count=n)
        raw = numpy.frombuffer(b"".join(fresh), dtype=numpy.uint8)
        ends = numpy.cumsum(lengths)
        if not (cuts < lengths).any():
            return
        if ((lengths > 0) & (raw[numpy.maximum(ends - 1, 0)] == ord("\n"))).any():
            # A final newline: the regular expression decides, one key at a time, in order.
            for i, key in enumerate(fresh, first):
                numeric = self._numeric(key)
                if numeric is not None:
                    self.prefix_of[i], self.number_of[i], self.width_of[i] = numeric
            return
        for i in numpy.flatnonzero(lengths - cuts > MAX_DIGITS).tolist():
            cuts[i] = lengths[i] - MAX_DIGITS
            prefixes[i] = fresh[i][: cuts[i]]
        rows = numpy.flatnonzero(cuts < lengths)
        if rows.shape[0] < n:
            prefixes = [prefixes[i] for i in rows.tolist()]
        pids = list(map(self.prefixes.get, prefixes, repeat(-1, len(prefixes))))
        if -1 in pids:
            for i, prefix in enumerate(prefixes):
                if pids[i] < 0:
                    pid = self.prefixes.get(prefix, -1)
                    pids[i] = self._new_prefix(prefix) if pid < 0 else pid
        # The digits, parsed as one array: digit j of a number of c digits weighs 10^(c-1-j).
        ends = ends[rows]
        count = lengths[rows] - cuts[rows]
        group = numpy.cumsum(count) - count
        local = numpy.arange(int(count.sum())) - numpy.repeat(group, count)
        position = numpy.repeat(ends - count, count) + local
        values = (raw[position].astype(numpy.int64) - ord("0")) * _POW10[numpy.repeat(count, count) - 1 - local]
        lead = raw[ends - count]
        targets = rows + first
        self.prefix_of[targets] = pids
        self.number_of[targets] = numpy.add.reduceat(values, group)
        self.width_of[targets] = numpy.where((lead == ord("0")) & (count > 1), count, 0)

    def decode(self, ident: int) -> bytes:
        return self.keys[ident]

    def numbered(self, prefix_id: int, number: int, width: int) -> int:
        """The ID of ``prefix + number`` (zero-padded to ``width``), added if new."""
        digits = str(number).encode()
        if width and len(digits) < width:
            digits = b"0" * (width - len(digits)) + digits
        return self.encode(self.prefix_keys[prefix_id] + digits)

    def numbered_many(self, prefix_ids: numpy.ndarray, numbers: numpy.ndarray, widths: numpy.ndarray) -> numpy.ndarray:
        """:meth:`numbered` of each ``(prefix, number, width)``, in order (numbers >= 0)."""
        names = self.prefix_keys
        keys = [names[p] + b"%0*d" % (w, n) for p, n, w in zip(prefix_ids.tolist(), numbers.tolist(), widths.tolist())]
        return self.encode_many(keys)


class PrefetchModel(Protocol):
    name: str

    def observe(self, ids: numpy.ndarray) -> None: ...

    def predict(self, ids: numpy.ndarray, k: int) -> tuple[numpy.ndarray, numpy.ndarray]: ...

    def save(self, path: str | Path) -> None: ...

    def load(self, path: str | Path) -> None: ...

    @property
    def nbytes(self) -> int: ...


def empty_prediction(n: int, k: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    return numpy.full((n, k), -1, dtype=numpy.int64), numpy.zeros((n, k), dtype=numpy.float32)


def save_arrays(path: str | Path, **arrays: Any) -> None:
    """Write the arrays atomically and privately (:func:`cache_core.files.atomic_file`, 0600):
    a model's tables are learned from the keys the cache saw."""
    with atomic_file(path) as handle:
        # allow_pickle is NumPy's default, spelled out so that no array is taken for the flag.
        numpy.savez(handle, allow_pickle=True, **{k: to_host(v) for k, v in arrays.items()})


def load_arrays(path: str | Path) -> dict[str, numpy.ndarray]:
    with numpy.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}

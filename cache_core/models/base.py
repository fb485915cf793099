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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy

_NUMERIC = re.compile(rb"^(.*?)(\d{1,18})$", re.DOTALL)

# Keys remembered per vocabulary unless configured otherwise.
DEFAULT_VOCABULARY_SIZE = 1 << 20


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
        match = _NUMERIC.match(key)
        if match:
            prefix, digits = match.group(1), match.group(2)
            pid = self.prefixes.get(prefix)
            if pid is None:
                pid = len(self.prefix_keys)
                self.prefixes[prefix] = pid
                self.prefix_keys.append(prefix)
            self.prefix_of[new] = pid
            self.number_of[new] = int(digits)
            self.width_of[new] = len(digits) if digits[:1] == b"0" and len(digits) > 1 else 0
        return new

    def encode_many(self, keys: Sequence[bytes]) -> numpy.ndarray:
        return numpy.array([self.encode(k) for k in keys], dtype=numpy.int64)

    def decode(self, ident: int) -> bytes:
        return self.keys[ident]

    def numbered(self, prefix_id: int, number: int, width: int) -> int:
        """The ID of ``prefix + number`` (zero-padded to ``width``), added if new."""
        digits = str(number).encode()
        if width and len(digits) < width:
            digits = b"0" * (width - len(digits)) + digits
        return self.encode(self.prefix_keys[prefix_id] + digits)


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
    """Write the arrays atomically (a temp file renamed over ``path``)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as handle:
        numpy.savez(handle, **{k: numpy.asarray(v) for k, v in arrays.items()})
    tmp.replace(target)


def load_arrays(path: str | Path) -> dict[str, numpy.ndarray]:
    with numpy.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}

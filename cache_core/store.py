# SPDX-License-Identifier: Apache-2.0
"""Value storage: size-class slabs in the backend's memory, with exact accounting.

A value of ``n`` bytes goes into the smallest size class whose chunk holds it; chunks
live in fixed-size pages (``xp.uint8`` arrays, so on a GPU the bytes stay on the
device). Classes grow by ``growth_factor`` (memcached's 1.25 by default), so a value
wastes at most ~25 % of its chunk, and no slot is ever sized for the maximum value.
A page whose chunks are all free is released at once, so memory left by one size
class can be used by another.

Accounting is exact and kept as integers: ``used_bytes`` (sum of stored value
lengths), ``chunk_bytes`` (what those values occupy, i.e. what the memory budget is
checked against) and ``allocated_bytes`` (pages held).

Handles are int64: ``class_id << 48 | page << 24 | chunk``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

MIN_CHUNK_BYTES = 16
PAGE_BYTES = 256 << 10
_CHUNK_BITS = 24
_PAGE_BITS = 24
_CHUNK_MASK = (1 << _CHUNK_BITS) - 1
_PAGE_MASK = (1 << _PAGE_BITS) - 1


class ValueTooLargeError(ValueError):
    """A value is longer than ``max_value_bytes``."""


def size_classes(max_value_bytes: int, growth_factor: float, min_chunk: int = MIN_CHUNK_BYTES) -> list[int]:
    """Chunk sizes from ``min_chunk`` up to (and including) ``max_value_bytes``, 8-byte aligned."""
    if growth_factor <= 1.0:
        raise ValueError("growth_factor must be > 1")
    sizes: list[int] = []
    size = min_chunk
    while size < max_value_bytes:
        sizes.append(size)
        size = max(size + 8, int(size * growth_factor + 7) // 8 * 8)
    sizes.append(max(max_value_bytes, min_chunk))
    return sizes


@dataclass
class _Class:
    chunk: int
    per_page: int
    pages: list[Any] = field(default_factory=list)  # xp arrays or None when released
    free: list[list[int]] = field(default_factory=list)  # free chunk indices per page
    used: list[int] = field(default_factory=list)  # used chunks per page
    partial: set[int] = field(default_factory=set)  # pages with at least one free chunk
    released: list[int] = field(default_factory=list)  # page numbers to reuse


class ValueStore:
    """Allocates, writes, reads and frees variable-size values."""

    def __init__(self, xp: Any, *, max_value_bytes: int = 1 << 20, growth_factor: float = 1.25, page_bytes: int = PAGE_BYTES) -> None:
        self.xp = xp
        self.max_value_bytes = int(max_value_bytes)
        self.page_bytes = int(page_bytes)
        self.growth_factor = float(growth_factor)
        self.sizes = size_classes(self.max_value_bytes, self.growth_factor)
        self._size_array = numpy.asarray(self.sizes, dtype=numpy.int64)
        self.clear()

    def clear(self) -> None:
        """Release every page and reset the accounting."""
        self._classes = [_Class(size, max(1, self.page_bytes // size)) for size in self.sizes]
        self.used_bytes = 0
        self.chunk_bytes = 0
        self.allocated_bytes = 0
        self.values = 0

    # -- sizing ----------------------------------------------------------------
    def class_for(self, length: int) -> int:
        if length > self.max_value_bytes:
            raise ValueTooLargeError(f"value of {length} bytes exceeds cache.max_value_bytes ({self.max_value_bytes})")
        return int(numpy.searchsorted(self._size_array, max(length, 1)))

    def chunk_size(self, length: int) -> int:
        """Bytes the budget is charged for a value of ``length`` bytes."""
        return self.sizes[self.class_for(length)]

    # -- allocation ------------------------------------------------------------
    def _alloc(self, cid: int) -> int:
        cls = self._classes[cid]
        if cls.partial:
            page = min(cls.partial)
        else:
            if cls.released:
                page = cls.released.pop()
                cls.pages[page] = self.xp.zeros(cls.per_page * cls.chunk, dtype=self.xp.uint8)
            else:
                page = len(cls.pages)
                if page > _PAGE_MASK:
                    raise MemoryError("value store: too many pages in one size class")
                cls.pages.append(self.xp.zeros(cls.per_page * cls.chunk, dtype=self.xp.uint8))
                cls.free.append([])
                cls.used.append(0)
            cls.free[page] = list(range(cls.per_page - 1, -1, -1))
            cls.partial.add(page)
            self.allocated_bytes += cls.per_page * cls.chunk
        chunk = cls.free[page].pop()
        cls.used[page] += 1
        if not cls.free[page]:
            cls.partial.discard(page)
        return (cid << (_PAGE_BITS + _CHUNK_BITS)) | (page << _CHUNK_BITS) | chunk

    def put(self, value: bytes) -> int:
        """Store ``value``; return its handle."""
        length = len(value)
        cid = self.class_for(length)
        handle = self._alloc(cid)
        if length:
            cls = self._classes[cid]
            page = (handle >> _CHUNK_BITS) & _PAGE_MASK
            offset = (handle & _CHUNK_MASK) * cls.chunk
            cls.pages[page][offset : offset + length] = self.xp.asarray(numpy.frombuffer(value, dtype=numpy.uint8))
        self.used_bytes += length
        self.chunk_bytes += self.sizes[cid]
        self.values += 1
        return handle

    def get(self, handle: int, length: int) -> bytes:
        cid = handle >> (_PAGE_BITS + _CHUNK_BITS)
        cls = self._classes[cid]
        page = (handle >> _CHUNK_BITS) & _PAGE_MASK
        offset = (handle & _CHUNK_MASK) * cls.chunk
        view = cls.pages[page][offset : offset + length]
        if hasattr(view, "get"):  # pragma: no cover - needs a GPU
            return bytes(view.get())
        return view.tobytes()

    def get_many(self, handles: Sequence[int], lengths: Sequence[int]) -> list[bytes]:
        return [self.get(int(h), int(n)) for h, n in zip(handles, lengths)]

    def free(self, handle: int, length: int) -> None:
        cid = handle >> (_PAGE_BITS + _CHUNK_BITS)
        cls = self._classes[cid]
        page = (handle >> _CHUNK_BITS) & _PAGE_MASK
        chunk = handle & _CHUNK_MASK
        cls.free[page].append(chunk)
        cls.used[page] -= 1
        cls.partial.add(page)
        self.used_bytes -= length
        self.chunk_bytes -= cls.chunk
        self.values -= 1
        if cls.used[page] == 0:
            cls.pages[page] = None
            cls.free[page] = []
            cls.partial.discard(page)
            cls.released.append(page)
            self.allocated_bytes -= cls.per_page * cls.chunk

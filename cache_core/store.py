# SPDX-License-Identifier: Apache-2.0
"""Value storage: size-class slabs in the backend's memory, with exact accounting.

A value of ``n`` bytes goes into the smallest size class whose chunk holds it; chunks
live in fixed-size pages (``xp.uint8`` arrays, so on a GPU the bytes stay on the
device). Classes grow by ``growth_factor`` (memcached's 1.25 by default), so a value
wastes at most ~25 % of its chunk, and no slot is ever sized for the maximum value.
A page whose chunks are all free is released at once (except one spare page per class
of small values, so a put/free cycle does not allocate a page each time; :meth:`trim`
releases those too), so memory left by one size class can be used by another.

Accounting is exact and kept as integers: ``used_bytes`` (sum of stored value
lengths), ``chunk_bytes`` (what those values occupy, i.e. what the memory budget is
checked against) and ``allocated_bytes`` (pages held).

Handles are int64: ``class_id << 48 | page << 24 | chunk``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy

from cache_core import _native
from cache_core.errors import CacheCoreError

MIN_CHUNK_BYTES = 16
# Batches of at least this many values are stored by put_many's bulk path.
PUT_MANY_MIN = 4
PAGE_BYTES = 256 << 10
_CHUNK_BITS = 24
_PAGE_BITS = 24
_CHUNK_MASK = (1 << _CHUNK_BITS) - 1
_PAGE_MASK = (1 << _PAGE_BITS) - 1


class ValueTooLargeError(CacheCoreError, ValueError):
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
    free: list[list[int]] = field(default_factory=list)  # freed chunk indices per page
    fresh: list[int] = field(default_factory=list)  # chunks never handed out yet, per page (from the top)
    used: list[int] = field(default_factory=list)  # used chunks per page
    partial: set[int] = field(default_factory=set)  # pages with at least one free chunk
    released: list[int] = field(default_factory=list)  # page numbers to reuse
    current: int = -1  # the page allocations come from while it has room
    spare: int = -1  # one empty page kept allocated, so a put/free cycle does not churn pages


class ValueStore:
    """Allocates, writes, reads and frees variable-size values."""

    def __init__(self, xp: Any, *, max_value_bytes: int = 1 << 20, growth_factor: float = 1.25, page_bytes: int = PAGE_BYTES) -> None:
        self.xp = xp
        self.max_value_bytes = int(max_value_bytes)
        self.page_bytes = int(page_bytes)
        self.growth_factor = float(growth_factor)
        self.sizes = size_classes(self.max_value_bytes, self.growth_factor)
        self.clear()

    def clear(self) -> None:
        """Release every page and reset the accounting."""
        self._classes = [_Class(size, max(1, self.page_bytes // size)) for size in self.sizes]
        # The layout the compiled reads use (cache_core/native/reads.c): each class's list
        # of pages (the same lists, updated in place) and its chunk size.
        self.page_lists = [cls.pages for cls in self._classes]
        self.chunk_sizes = numpy.asarray([cls.chunk for cls in self._classes], dtype=numpy.int64)
        self.used_bytes = 0
        self.chunk_bytes = 0
        self.allocated_bytes = 0
        self.values = 0

    # -- sizing ----------------------------------------------------------------
    def class_for(self, length: int) -> int:
        if length > self.max_value_bytes:
            raise ValueTooLargeError(f"value of {length} bytes exceeds cache.max_value_bytes ({self.max_value_bytes})")
        return bisect.bisect_left(self.sizes, length)

    def chunk_size(self, length: int) -> int:
        """Bytes the budget is charged for a value of ``length`` bytes."""
        return self.sizes[self.class_for(length)]

    # -- allocation ------------------------------------------------------------
    def _alloc(self, cid: int) -> int:
        cls = self._classes[cid]
        page = cls.current
        if page < 0 or page not in cls.partial:
            if cls.partial:
                page = min(cls.partial)
            elif cls.released:
                page = cls.released.pop()
                cls.pages[page] = self.xp.empty(cls.per_page * cls.chunk, dtype=self.xp.uint8)
                self._new_page(cls, page)
            else:
                page = len(cls.pages)
                if page > _PAGE_MASK:
                    raise MemoryError("value store: too many pages in one size class")
                cls.pages.append(self.xp.empty(cls.per_page * cls.chunk, dtype=self.xp.uint8))
                cls.free.append([])
                cls.fresh.append(0)
                cls.used.append(0)
                self._new_page(cls, page)
            cls.current = page
        if page == cls.spare:
            cls.spare = -1
        free = cls.free[page]
        if free:
            chunk = free.pop()
        else:
            chunk = cls.per_page - cls.fresh[page]
            cls.fresh[page] -= 1
        cls.used[page] += 1
        if not free and not cls.fresh[page]:
            cls.partial.discard(page)
        return (cid << (_PAGE_BITS + _CHUNK_BITS)) | (page << _CHUNK_BITS) | chunk

    def _new_page(self, cls: _Class, page: int) -> None:
        """A page just allocated: every chunk is fresh (handed out lowest first)."""
        cls.free[page] = []
        cls.fresh[page] = cls.per_page
        cls.partial.add(page)
        self.allocated_bytes += cls.per_page * cls.chunk

    def put(self, value: bytes) -> int:
        """Store ``value``; return its handle."""
        length = len(value)
        cid = self.class_for(length)
        handle = self._alloc(cid)
        if length:
            cls = self._classes[cid]
            page = (handle >> _CHUNK_BITS) & _PAGE_MASK
            offset = (handle & _CHUNK_MASK) * cls.chunk
            self._write(cls.pages[page], offset, value)
        self.used_bytes += length
        self.chunk_bytes += self.sizes[cid]
        self.values += 1
        return handle

    def put_many(self, values: list[bytes]) -> numpy.ndarray:
        """Store a batch of values; return their handles (int64), the same handles, in the
        same order, as :meth:`put` one value after another would give. On host memory the
        bytes are copied in one compiled call (native/reads.c)."""
        n = len(values)
        if self.xp is not numpy or n < PUT_MANY_MIN:
            return numpy.asarray([self.put(v) for v in values], dtype=numpy.int64)
        lengths = numpy.fromiter(map(len, values), dtype=numpy.int64, count=n)
        longest = int(lengths.max())
        if longest > self.max_value_bytes:
            raise ValueTooLargeError(f"value of {longest} bytes exceeds cache.max_value_bytes ({self.max_value_bytes})")
        cids = numpy.searchsorted(self.chunk_sizes, lengths, side="left")
        handles = numpy.empty(n, dtype=numpy.int64)
        first = int(cids[0])
        if bool((cids == first).all()):  # the common case: one size class
            handles[:] = self._alloc_many(first, n)
        else:
            for cid in numpy.unique(cids).tolist():
                rows = numpy.flatnonzero(cids == cid)
                handles[rows] = self._alloc_many(cid, len(rows))
        _native.write_values(self.page_lists, self.chunk_sizes, handles, values if type(values) is list else list(values))
        self.used_bytes += int(lengths.sum())
        self.chunk_bytes += int(self.chunk_sizes[cids].sum())
        self.values += n
        return handles

    def _alloc_many(self, cid: int, k: int) -> numpy.ndarray:
        """``k`` handles of class ``cid``, as ``k`` calls of :meth:`_alloc` would give them:
        one call picks each page, the rest of that page's free and fresh chunks are taken
        in bulk."""
        cls = self._classes[cid]
        parts: list[numpy.ndarray] = []
        got = 0
        while got < k:
            handle = self._alloc(cid)
            page = (handle >> _CHUNK_BITS) & _PAGE_MASK
            base = handle & ~_CHUNK_MASK
            chunks: list[int] = [handle & _CHUNK_MASK]
            free = cls.free[page]
            want = k - got - 1
            if want and free:
                take = min(want, len(free))
                chunks.extend(reversed(free[len(free) - take :]))
                del free[len(free) - take :]
                cls.used[page] += take
                want -= take
            part = numpy.asarray(chunks, dtype=numpy.int64)
            if want and not free and cls.fresh[page]:
                take = min(want, cls.fresh[page])
                start = cls.per_page - cls.fresh[page]
                part = numpy.concatenate((part, numpy.arange(start, start + take, dtype=numpy.int64)))
                cls.fresh[page] -= take
                cls.used[page] += take
            if not free and not cls.fresh[page]:
                cls.partial.discard(page)
            part |= base
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else numpy.concatenate(parts)

    def _write(self, page: Any, offset: int, value: bytes) -> None:
        if self.xp is numpy:  # a host page: one copy through a memoryview, no temporary array
            memoryview(page)[offset : offset + len(value)] = value
        else:  # pragma: no cover - needs a GPU
            page[offset : offset + len(value)] = self.xp.asarray(numpy.frombuffer(value, dtype=numpy.uint8))

    def get(self, handle: int, length: int) -> bytes:
        cid = handle >> (_PAGE_BITS + _CHUNK_BITS)
        cls = self._classes[cid]
        page = (handle >> _CHUNK_BITS) & _PAGE_MASK
        offset = (handle & _CHUNK_MASK) * cls.chunk
        view = cls.pages[page][offset : offset + length]
        if hasattr(view, "get"):  # pragma: no cover - needs a GPU
            return bytes(view.get())
        return cast(bytes, view.tobytes())

    def get_many(self, handles: Sequence[int], lengths: Sequence[int]) -> list[bytes]:
        return [self.get(int(h), int(n)) for h, n in zip(handles, lengths)]

    def replace(self, handle: int, old_length: int, value: bytes) -> int:
        """Overwrite the value at ``handle``; return its (possibly new) handle.

        A value of the same size class is written in place: no page bookkeeping at all,
        which is what an overwrite of a hot key (a counter, a session) costs most often.
        """
        length = len(value)
        cid = handle >> (_PAGE_BITS + _CHUNK_BITS)
        if self.class_for(length) != cid:
            self.free(handle, old_length)
            return self.put(value)
        if length:
            cls = self._classes[cid]
            page = (handle >> _CHUNK_BITS) & _PAGE_MASK
            offset = (handle & _CHUNK_MASK) * cls.chunk
            self._write(cls.pages[page], offset, value)
        self.used_bytes += length - old_length
        return handle

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
            if cls.spare < 0 and cls.per_page > 1:
                # Keep one empty page per class (single-chunk pages of large values are
                # always released): a value freed and another put does not allocate again.
                cls.spare = page
                return
            self._release(cls, page)

    def _release(self, cls: _Class, page: int) -> None:
        cls.pages[page] = None
        cls.free[page] = []
        cls.fresh[page] = 0
        cls.partial.discard(page)
        cls.released.append(page)
        if cls.current == page:
            cls.current = -1
        if cls.spare == page:
            cls.spare = -1
        self.allocated_bytes -= cls.per_page * cls.chunk

    def trim(self) -> int:
        """Release the spare empty pages; return the bytes given back."""
        before = self.allocated_bytes
        for cls in self._classes:
            if cls.spare >= 0 and cls.used[cls.spare] == 0:
                self._release(cls, cls.spare)
        return before - self.allocated_bytes

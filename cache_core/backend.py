# SPDX-License-Identifier: Apache-2.0
"""Array-module choice (CuPy on an NVIDIA GPU, NumPy otherwise) and the device self-test.

This is the only module that imports cupy. ``auto`` uses CuPy when
``cupy.cuda.is_available()``; asking for ``cupy`` without a usable GPU fails with a
clear message instead of falling back silently.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy

from cache_core.errors import CacheCoreError

BACKENDS = ("auto", "cupy", "numpy")


def to_host(array: Any) -> numpy.ndarray:
    """``array`` as a NumPy array: a device array is copied to the host, a host one kept."""
    get = getattr(array, "get", None)
    if get is not None:
        return numpy.asarray(get())
    return numpy.asarray(array)


class BackendError(CacheCoreError, RuntimeError):
    """The requested array backend cannot be used on this host."""


@dataclass(frozen=True)
class DeviceInfo:
    backend: str  # "cupy" or "numpy"
    name: str
    memory_total_bytes: int | None = None


def _cupy_status() -> tuple[Any, str | None]:
    """Return (cupy module or None, reason it is unusable)."""
    if importlib.util.find_spec("cupy") is None:
        return None, "the cupy package is not installed (pip install 'predis-agent[gpu]')"
    try:
        import cupy
    except Exception as exc:  # broken CUDA installs raise many things at import
        return None, f"cupy failed to import: {exc.__class__.__name__}: {exc}"
    try:
        available = bool(cupy.cuda.is_available())
    except Exception as exc:
        return None, f"CUDA is not usable: {exc.__class__.__name__}: {exc}"
    if not available:
        return None, "no usable CUDA device (driver missing or no GPU visible)"
    return cupy, None


class Backend:
    """The chosen array module plus a round-trip self-test of the device."""

    def __init__(self, requested: str = "auto") -> None:
        if requested not in BACKENDS:
            raise BackendError(f"unknown backend {requested!r}; expected one of {', '.join(BACKENDS)}")
        self.requested = requested
        self.fallback_reason: str | None = None
        self._lock = threading.Lock()
        if requested == "numpy":
            self.xp: Any = numpy
        else:
            cupy, reason = _cupy_status()
            if cupy is None:
                if requested == "cupy":
                    raise BackendError(f"cache.backend is 'cupy' but {reason}; set cache.backend to 'auto' or 'numpy'")
                self.fallback_reason = reason
                self.xp = numpy
            else:
                self.xp = cupy
        self.name = "cupy" if self.xp is not numpy else "numpy"

    def device_info(self) -> DeviceInfo:
        if self.name == "cupy":  # pragma: no cover - needs a GPU
            device = self.xp.cuda.Device()
            props = self.xp.cuda.runtime.getDeviceProperties(device.id)
            return DeviceInfo("cupy", props["name"].decode(), int(props["totalGlobalMem"]))
        return DeviceInfo("numpy", "host memory (NumPy)", None)

    def self_test(self, slots: int) -> tuple[bool, str]:
        """Write a fresh probe pattern to device memory, read it back and compare.

        The pattern changes on every call, so a stale buffer cannot pass.
        """
        xp = self.xp
        with self._lock:
            try:
                seed = numpy.uint64(time.monotonic_ns() & 0xFFFFFFFFFFFF)
                expected = numpy.arange(slots, dtype=numpy.uint64) * numpy.uint64(2654435761) + seed
                device = xp.asarray(expected)
                device = device ^ xp.uint64(0xA5A5A5A5)
                back = device ^ xp.uint64(0xA5A5A5A5)
                host = back.get() if hasattr(back, "get") else numpy.asarray(back)
            except Exception as exc:
                return False, f"{self.name} round-trip raised {exc.__class__.__name__}: {exc}"
            if not numpy.array_equal(host, expected):
                return False, f"{self.name} round-trip returned different data"
        return True, f"{self.name} round-trip of {slots} slots ok"

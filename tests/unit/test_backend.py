# SPDX-License-Identifier: Apache-2.0
"""cache_core.backend: backend choice, fallback reasons, and the device self-test.

CuPy is a third-party boundary: each test decides what ``import cupy`` finds by putting
a fake module (or None, meaning "not installed") into ``sys.modules``, so the results do
not depend on whether this machine has a GPU.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any

import numpy
import pytest

from cache_core.backend import BACKENDS, Backend, BackendError, DeviceInfo


class FakeDeviceArray:
    """What a CuPy array looks like to the self-test: supports ``^`` and ``.get()``."""

    def __init__(self, data: numpy.ndarray) -> None:
        self.data = data

    def __xor__(self, other: Any) -> FakeDeviceArray:
        return FakeDeviceArray(self.data ^ other)

    def get(self) -> numpy.ndarray:
        return self.data.copy()


def fake_cupy(available: bool | Exception) -> types.ModuleType:
    module = types.ModuleType("cupy")
    module.__spec__ = importlib.machinery.ModuleSpec("cupy", None)

    def is_available() -> bool:
        if isinstance(available, Exception):
            raise available
        return available

    module.cuda = types.SimpleNamespace(is_available=is_available)  # type: ignore[attr-defined]
    module.uint64 = numpy.uint64  # type: ignore[attr-defined]
    module.asarray = lambda a: FakeDeviceArray(numpy.array(a, copy=True))  # type: ignore[attr-defined]
    return module


@pytest.fixture
def no_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # find_spec → None: "not installed"


# ----------------------------------------------------------------------------- choice


def test_numpy_backend_passes_its_self_test() -> None:
    backend = Backend("numpy")
    assert backend.name == "numpy" and backend.xp is numpy and backend.fallback_reason is None
    ok, detail = backend.self_test(64)
    assert ok is True
    assert detail == "numpy round-trip of 64 slots ok"
    assert backend.self_test(1) == (True, "numpy round-trip of 1 slots ok")
    assert backend.device_info() == DeviceInfo("numpy", "host memory (NumPy)", None)


def test_auto_without_cupy_falls_back_to_numpy_with_a_reason(no_cupy: None) -> None:
    backend = Backend("auto")
    assert backend.name == "numpy" and backend.xp is numpy
    assert backend.fallback_reason is not None
    assert "cupy package is not installed" in backend.fallback_reason
    assert "pip install" in backend.fallback_reason
    assert backend.self_test(16)[0] is True


@pytest.mark.parametrize(
    ("available", "reason"),
    [
        (False, "no usable CUDA device"),
        (RuntimeError("driver too old"), "CUDA is not usable: RuntimeError: driver too old"),
    ],
)
def test_auto_with_cupy_but_no_gpu_falls_back(monkeypatch: pytest.MonkeyPatch, available: Any, reason: str) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available))
    backend = Backend("auto")
    assert backend.name == "numpy"
    assert backend.fallback_reason is not None and reason in backend.fallback_reason


def test_auto_uses_cupy_when_a_device_is_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    cupy = fake_cupy(True)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    backend = Backend("auto")
    assert backend.name == "cupy" and backend.xp is cupy and backend.fallback_reason is None
    assert backend.self_test(32) == (True, "cupy round-trip of 32 slots ok")  # goes through .get()


@pytest.mark.parametrize("state", ["missing", False, RuntimeError("no driver")])
def test_cupy_without_a_usable_gpu_is_an_error_that_says_what_to_do(monkeypatch: pytest.MonkeyPatch, state: Any) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None if state == "missing" else fake_cupy(state))
    with pytest.raises(BackendError) as info:
        Backend("cupy")
    message = str(info.value)
    assert message.startswith("cache.backend is 'cupy' but ")
    assert "set cache.backend to 'auto' or 'numpy'" in message


@pytest.mark.parametrize("name", ["gpu", "", "NUMPY", "cuda"])
def test_unknown_backend_is_rejected(name: str) -> None:
    with pytest.raises(BackendError, match="unknown backend") as info:
        Backend(name)
    assert ", ".join(BACKENDS) in str(info.value)


# ----------------------------------------------------------------------------- self-test


class CorruptingXp:
    """An array module whose device memory flips one bit of what it is given."""

    uint64 = numpy.uint64

    @staticmethod
    def asarray(data: numpy.ndarray) -> numpy.ndarray:
        out = numpy.array(data, copy=True)
        out[len(out) // 2] ^= numpy.uint64(1 << 17)
        return out


class StaleXp:
    """An array module that keeps handing back the first buffer it was given."""

    uint64 = numpy.uint64

    def __init__(self) -> None:
        self.first: numpy.ndarray | None = None

    def asarray(self, data: numpy.ndarray) -> numpy.ndarray:
        if self.first is None:
            self.first = numpy.array(data, copy=True)
        return self.first.copy()


class RaisingXp:
    uint64 = numpy.uint64

    @staticmethod
    def asarray(data: numpy.ndarray) -> numpy.ndarray:
        raise MemoryError("out of device memory")


def test_self_test_detects_corrupted_data() -> None:
    backend = Backend("numpy")
    backend.xp = CorruptingXp()
    ok, detail = backend.self_test(64)
    assert ok is False
    assert detail == "numpy round-trip returned different data"


def test_self_test_detects_a_stale_buffer() -> None:
    backend = Backend("numpy")
    backend.xp = StaleXp()
    assert backend.self_test(64)[0] is True  # the first probe is genuinely written
    ok, detail = backend.self_test(64)  # a fresh pattern must not match the old buffer
    assert ok is False and "different data" in detail


def test_self_test_reports_an_exception_instead_of_raising() -> None:
    backend = Backend("numpy")
    backend.xp = RaisingXp()
    ok, detail = backend.self_test(8)
    assert ok is False
    assert detail == "numpy round-trip raised MemoryError: out of device memory"


def test_self_test_detects_a_short_read() -> None:
    class ShortXp:
        uint64 = numpy.uint64

        @staticmethod
        def asarray(data: numpy.ndarray) -> numpy.ndarray:
            return numpy.array(data[:-1], copy=True)

    backend = Backend("numpy")
    backend.xp = ShortXp()
    assert backend.self_test(16)[0] is False

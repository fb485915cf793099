# SPDX-License-Identifier: Apache-2.0
"""A stand-in for CuPy on machines without a GPU: NumPy underneath, CuPy's rules on top.

Import this module and pass it where an array module (``xp``) goes. Its arrays are
:class:`DeviceArray` (a NumPy subclass) and it enforces what CuPy enforces, so code that
would fail on a real device fails here too:

- a host array (a plain ``numpy.ndarray``) must not meet a device array in an operation,
  an index or an assignment: cross with ``xp.asarray`` (to the device, a copy) or
  ``.get()`` (to the host, a copy), as CuPy requires;
- NumPy functions must not be called on device arrays directly (CuPy would hand back
  device arrays where host code expects host ones): go through the module;
- only the functions listed in :data:`FUNCTIONS` (and ``asarray``, ``array``,
  ``argsort``) exist, all of them in CuPy >= 13 with the arguments used here; ufuncs offer
  only ``__call__`` and ``reduce``, and ``argsort`` takes no ``kind`` (CuPy's is stable);
- iterating over a device array from Python is refused (each element would be a transfer).

``transfers`` counts the copies each way, so a test can also check how often code crosses.
What it cannot show is speed, or numerical differences of CuPy's kernels: that needs the GPU.
"""

from __future__ import annotations

from typing import Any

import numpy

# Functions (beyond dtypes and constants) this module offers, each present in CuPy >= 13
# with NumPy's semantics for the arguments used here.
FUNCTIONS = frozenset(
    {
        "arange",
        "array",
        "asarray",
        "concatenate",
        "count_nonzero",
        "cumsum",
        "diff",
        "empty",
        "empty_like",
        "flatnonzero",
        "full",
        "lexsort",
        "maximum",
        "minimum",
        "nonzero",
        "ones",
        "putmask",
        "sort",
        "stack",
        "where",
        "zeros",
    }
)
_CREATE = frozenset({"arange", "empty", "full", "ones", "zeros"})
_NAMES = frozenset({"bool_", "float32", "float64", "int64", "uint64", "inf", "ndarray"})

transfers = {"to_device": 0, "to_host": 0}


class DeviceTransferError(TypeError):
    """Host and device arrays met without an explicit copy (CuPy raises TypeError too)."""


def _is_host_array(value: Any) -> bool:
    return isinstance(value, numpy.ndarray) and not isinstance(value, DeviceArray) and value.ndim > 0


def _check(value: Any, where: str) -> None:
    if _is_host_array(value):
        raise DeviceTransferError(f"{where}: a host array met a device array; copy it with xp.asarray first")
    if isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, list):
                raise DeviceTransferError(f"{where}: a Python list where a device array is needed")
            _check(item, where)


def _plain(value: Any) -> Any:
    if isinstance(value, DeviceArray):
        return value.view(numpy.ndarray)
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _device(value: Any) -> Any:
    if isinstance(value, numpy.ndarray):
        return value.view(DeviceArray)
    if isinstance(value, numpy.generic):
        # CuPy answers reductions and counts with 0-d device arrays, not host scalars.
        return numpy.asarray(value).view(DeviceArray)
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    return value


class DeviceArray(numpy.ndarray):
    """An array "on the device" (NumPy memory, CuPy's rules)."""

    def get(self) -> numpy.ndarray:
        transfers["to_host"] += 1
        return numpy.array(self.view(numpy.ndarray))

    def __array_ufunc__(self, ufunc: numpy.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method not in ("__call__", "reduce"):
            raise DeviceTransferError(f"{ufunc.__name__}.{method} is not offered on the device")
        _check(inputs, ufunc.__name__)
        out = kwargs.get("out")
        if out is not None:
            _check(out, ufunc.__name__)
            kwargs["out"] = _plain(out)
        return _device(getattr(ufunc, method)(*_plain(inputs), **kwargs))

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        raise DeviceTransferError(f"numpy.{func.__name__} called on a device array: use the array module (or .get() first)")

    def __getitem__(self, index: Any) -> Any:
        _check(index if isinstance(index, tuple) else (index,), "indexing")
        if isinstance(index, list):
            raise DeviceTransferError("indexing: a Python list as an index; use a device array")
        return _device(super().__getitem__(_plain(index)))

    def __setitem__(self, index: Any, value: Any) -> None:
        _check(index if isinstance(index, tuple) else (index,), "assignment")
        _check(value, "assignment")
        if isinstance(value, list):
            raise DeviceTransferError("assignment: a Python list as the value; use a device array")
        super().__setitem__(_plain(index), _plain(value))

    def __iter__(self) -> Any:
        raise DeviceTransferError("iterating over a device array element by element (one transfer each)")


class _Ufunc:
    def __init__(self, ufunc: numpy.ufunc) -> None:
        self.ufunc = ufunc

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        _check(inputs, self.ufunc.__name__)
        return _device(self.ufunc(*_plain(inputs), **_plain(kwargs)))

    def reduce(self, *inputs: Any, **kwargs: Any) -> Any:
        _check(inputs, self.ufunc.__name__)
        return _device(self.ufunc.reduce(*_plain(inputs), **kwargs))


def asarray(value: Any, dtype: Any = None) -> DeviceArray:
    """Copy to the device (from the host, or from a Python sequence); a device array stays."""
    if isinstance(value, DeviceArray):
        return value if dtype is None or value.dtype == dtype else value.astype(dtype)
    transfers["to_device"] += 1
    return numpy.array(value, dtype=dtype).view(DeviceArray)


array = asarray


def argsort(values: Any, axis: int = -1) -> Any:
    """CuPy's argsort: always stable, and no ``kind`` to choose."""
    _check((values,), "argsort")
    return _device(numpy.argsort(_plain(values), axis=axis, kind="stable"))


def _function(name: str) -> Any:
    target = getattr(numpy, name)
    if isinstance(target, numpy.ufunc):
        return _Ufunc(target)

    def call(*args: Any, **kwargs: Any) -> Any:
        if name not in _CREATE:
            _check(args, name)
            for value in args:
                if isinstance(value, list) and name != "concatenate" and name != "stack":
                    raise DeviceTransferError(f"{name}: a Python list where a device array is needed")
        return _device(target(*_plain(args), **_plain(kwargs)))

    call.__name__ = name
    return call


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return DeviceArray if name == "ndarray" else getattr(numpy, name)
    if name in FUNCTIONS:
        return _function(name)
    raise AttributeError(f"the stand-in device offers no {name!r} (not in CuPy, or not checked)")

# SPDX-License-Identifier: Apache-2.0
"""Every exception cache_core defines derives from CacheCoreError, keeps the standard base
callers catch it by, and appears in the tree drawn in cache_core.errors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import cache_core
from cache_core import errors
from cache_core.errors import CacheCoreError


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Each exception class defined in a cache_core module, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(cache_core.__path__, "cache_core."):
        module = importlib.import_module(info.name)
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_cache_core_exception_derives_from_the_layer_base() -> None:
    found = defined_exceptions()
    assert "cache_core.errors.CacheCoreError" in found and "cache_core.model_host.ModelHostError" in found
    assert len(found) >= 13
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, CacheCoreError))
    assert outside == []


def test_the_tree_keeps_the_standard_bases_callers_catch() -> None:
    from cache_core.backend import BackendError
    from cache_core.keys import KeyLengthError
    from cache_core.model_host import ModelError, ModelHostError
    from cache_core.store import ValueTooLargeError

    assert issubclass(KeyLengthError, ValueError) and issubclass(ValueTooLargeError, ValueError)
    assert all(issubclass(cls, RuntimeError) for cls in (BackendError, ModelError, ModelHostError))


def test_the_drawn_tree_names_every_exception() -> None:
    doc = errors.__doc__ or ""
    missing = sorted(cls.__name__ for cls in defined_exceptions().values() if cls.__name__ not in doc)
    assert missing == []

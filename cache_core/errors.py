# SPDX-License-Identifier: Apache-2.0
"""The cache_core layer's exceptions: every one derives from :class:`CacheCoreError`.

A caller that wants anything this layer raises catches :class:`CacheCoreError`; each class
keeps the standard base it had before the tree (``except ValueError`` still catches a key
that is too long), and stays defined in the module that raises it::

    Exception
    └── CacheCoreError                       cache_core.errors
        ├── BackendError (+ RuntimeError)    cache_core.backend: the array backend is unusable
        ├── KeyLengthError (+ ValueError)    cache_core.keys: a key empty or too long
        ├── ValueTooLargeError (+ ValueError)  cache_core.store: a value over max_value_bytes
        ├── TableError                       cache_core.table: the hash table
        │   └── TableFullError                 a batch would overfill it
        ├── CacheError                       cache_core.cache: what the cache tells its callers
        │   ├── NotAnIntegerError              INCR on a non-integer, or an overflow
        │   ├── WrongTypeError                 a string operation on a hash, or the reverse
        │   └── OutOfMemoryError               a write that does not fit even after evicting
        ├── ModelHostError (+ RuntimeError)  cache_core.model_host: the model process is gone
        ├── ModelError (+ RuntimeError)      cache_core.model_host: a model raised in it
        ├── ProtocolError                    cache_core.resp.protocol: a client broke RESP
        └── CommandError                     cache_core.resp.args: a command failed (RESP error)
"""

from __future__ import annotations


class CacheCoreError(Exception):
    """Base class of every exception the cache_core layer defines."""

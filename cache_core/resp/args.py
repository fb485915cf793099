# SPDX-License-Identifier: Apache-2.0
"""What every command module of the RESP server shares: the command error and the readers
of integer arguments, as redis-server reads them."""

from __future__ import annotations

import re

from cache_core.errors import CacheCoreError

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
NOT_AN_INTEGER = "ERR value is not an integer or out of range"
SYNTAX_ERROR = "ERR syntax error"


class CommandError(CacheCoreError):
    """A command failed; ``message`` is sent as a RESP error (prefix included)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def err_args(name: str) -> CommandError:
    return CommandError(f"ERR wrong number of arguments for '{name}' command")


_INT_RE = re.compile(rb"-?[1-9][0-9]{0,19}|0")


def int_arg(value: bytes, message: str = NOT_AN_INTEGER) -> int:
    """A 64-bit integer argument, read like redis-server's string2ll: no '+', no leading
    zeros, no spaces or underscores (Python's int() would take all of those)."""
    if not _INT_RE.fullmatch(value):
        raise CommandError(message)
    number = int(value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise CommandError(message)
    return number

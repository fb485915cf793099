# SPDX-License-Identifier: Apache-2.0
"""String commands beyond GET/SET/MGET/MSET/INCR: Redis 7.0's semantics, error texts and
reply types, command by command.

Each handler takes the connection and the command's arguments (the name first) and returns
the encoded reply, or raises :class:`~cache_core.resp.args.CommandError`. The server merges
:data:`COMMANDS` into its own table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cache_core.resp.server import Connection

Handler = Callable[["Connection", list[bytes]], Any]

# name -> (handler, arity as Redis gives it: n exact, -n at least n).
COMMANDS: dict[str, tuple[Handler, int]] = {}
# The commands whose first argument is a key (COMMAND INFO's key positions).
KEY_COMMANDS: set[str] = set()
# Of those, the ones that take any number of keys (MSETNX's key positions run to the end).
MULTI_KEY_COMMANDS: set[str] = set()

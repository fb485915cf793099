# SPDX-License-Identifier: Apache-2.0
"""Predis Agent: the host process that runs the Predis cache in production.

Public surface for plugin authors: ``hookimpl`` (decorate hook implementations),
``hookspec`` (for plugins that add their own hooks) and ``__version__``.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "predis_agent"
ENTRY_POINT_GROUP = "predis_agent"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "__version__", "hookimpl", "hookspec"]

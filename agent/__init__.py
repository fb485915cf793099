# SPDX-License-Identifier: Apache-2.0
"""Predis Agent: the host process that runs the Predis cache in production.

Plugin authors import from :mod:`agent.api` only (``hookimpl``, metric specs, payloads,
export errors, events, routes, secrets, drift results and the Protocols a plugin's
objects satisfy; docs/plugins.md is its reference). This package defines the pluggy
markers ``hookimpl`` and ``hookspec`` that it re-exports.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "predis_agent"
ENTRY_POINT_GROUP = "predis_agent"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "__version__", "hookimpl", "hookspec"]

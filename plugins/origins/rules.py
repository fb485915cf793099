# SPDX-License-Identifier: Apache-2.0
"""Config rules the built-in origins share: ``cache.origin`` naming an origin needs what its
plugin registers the origin with (a root, a bucket, a URL), so that ``config validate``
refuses the file ``run`` would refuse (the plugin registers no origin without it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from agent.api import Rule


def origin_needs(origin: str, plugin: str, key: str, what: str) -> Rule:
    """The rule: with ``cache.origin: <origin>``, ``plugins.<plugin>.<key>`` is set (and, when
    the plugin's name is not the origin's, the plugin is enabled)."""

    def check(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        if (data.get("cache") or {}).get("origin") != origin:
            return
        section = (data.get("plugins") or {}).get(plugin) or {}
        if section.get("enabled") is False:
            if plugin != origin:  # otherwise the core's origin-plugin-enabled rule says so
                yield "cache.origin", f"is {origin!r} but plugins.{plugin}.enabled is false: enable the plugin or name another origin"
            return
        if not section.get(key):
            yield f"plugins.{plugin}.{key}", f"is empty but cache.origin is {origin!r}: set {what}"

    return Rule(f"origin-needs-{key}", f"`cache.origin: {origin}` needs `plugins.{plugin}.{key}` (and the plugin enabled)", check)

# SPDX-License-Identifier: Apache-2.0
"""The web console: the ROI report and the pages that draw the agent's history.

``agent.console.api`` answers the JSON API (``/api/v1/roi``, ``/api/v1/series``,
``/api/v1/events``) from :mod:`agent.roi`; the pages, their sessions and static files are
served by the same HTTP server (docs/console.md).
"""

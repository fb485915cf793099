# SPDX-License-Identifier: Apache-2.0
"""The web console at ``/dashboard``: the ROI report, the pages that draw the agent's history,
and their login sessions.

:mod:`agent.console.api` answers the JSON API (``/api/v1/roi``, ``/api/v1/series``,
``/api/v1/events``) from :mod:`agent.roi`; :mod:`agent.console.sessions` keeps the server-side
sessions and the login rate limit; :mod:`agent.console.gate` decides who may use a console
route (a session cookie or a bearer token, CSRF on every POST, the security headers);
:mod:`agent.console.pages` serves the login form, the pages and their static files (uPlot
vendored under ``static/uplot``). docs/console.md and docs/security.md describe them.
"""

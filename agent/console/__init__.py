# SPDX-License-Identifier: Apache-2.0
"""The web console at ``/dashboard``: login sessions, the pages and their charts.

:mod:`agent.console.sessions` keeps the server-side sessions and the login rate limit,
:mod:`agent.console.gate` decides who may use a console route (a session cookie or a bearer
token, CSRF on every POST, the security headers), :mod:`agent.console.pages` serves the login
form, the pages and the static files (uPlot vendored under ``static/uplot``), and
:mod:`agent.console.api` the JSON the pages draw from.
"""

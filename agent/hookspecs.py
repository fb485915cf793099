# SPDX-License-Identifier: Apache-2.0
"""The plugin contract: every hook a Predis Agent plugin may implement.

Hooks *discover* things; the returned objects do the work. The host calls every
implementation on its own (see ``agent.plugins.PluginHost.call``), so one plugin
raising never stops the others: the failure is logged, counted in
``predis_agent_plugin_errors_total{plugin,hook}`` and shown in ``/status``.

Conventions for implementers:

* Hook arguments are passed by keyword; take only those you need.
* ``register_*`` hooks return a list (or ``None``) and do no I/O; start threads or
  sockets in the returned objects' ``start()``, not in the hook.
* ``config`` is always the plugin's own section, ``plugins.<name>`` in the YAML file,
  already validated against the schema the plugin returned and filled with defaults.
  Secret values in it are ``agent.api.Secret`` objects: call ``.reveal()``.
* Plugins import from the project only ``agent.api`` (``hookimpl``, the Protocols of the
  returned objects below, metrics, export errors ...); see its docstring and docs/plugins.md.

This module imports nothing from the project on purpose: it is the ground floor.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("predis_agent")

# The top-level sections under which ``predis_agent_config_sections`` may declare sub-sections.
CONFIG_SECTION_NAMESPACES: tuple[str, ...] = ("exporters", "collectors")

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@hookspec
def predis_agent_config_schema() -> dict[str, Any] | None:
    """Return the JSON Schema (2020-12) of this plugin's own config section.

    The host merges it under ``plugins.<name>`` and adds the ``enabled`` flag itself.
    Use ``default`` and ranges (``minimum``/``maximum``) for every number, and
    ``additionalProperties: false`` so that typos are reported with their path.

    Called from: config loading (start-up, every reload, ``config validate``), in the
    main thread, also for plugins that are disabled in the config.
    """


@hookspec
def predis_agent_config_sections() -> dict[str, dict[str, Any]] | None:
    """Return the top-level config sections this plugin owns: ``{path: JSON Schema}``.

    A path is ``exporters.<name>`` or ``collectors.<name>`` (see
    ``CONFIG_SECTION_NAMESPACES``); its schema (2020-12) describes the whole section:
    ``properties`` with their ``default``, ranges and ``description``, and the section's own
    ``description``. The host defaults it to ``type: object``, ``additionalProperties:
    false`` and ``default: {}`` (so the section's defaults are filled in when the file
    leaves it out). Plugins read these sections from ``agent.config``
    (``agent.config.section("exporters.<name>")``); ``config`` arguments stay
    ``plugins.<name>``.

    A path outside those namespaces, or one the core schema or another plugin already
    declares, is refused (logged and counted, the plugin's other sections stay). A hook that
    raises or returns something else than a mapping of such paths to valid schemas is
    counted and makes the plugin opaque: its sections are unknown, so ``exporters`` and
    ``collectors`` then accept sub-sections nobody declared, unvalidated.

    Called from: config loading, like ``predis_agent_config_schema`` (also for plugins that
    are disabled in the config, so that their sections are still validated).
    """


@hookspec
def predis_agent_config_rules() -> list[Any] | None:
    """Return rules across config keys that this plugin's sections need (``agent.api.Rule``).

    A rule is a name, a one-line summary and ``check(data)``, which gets the whole
    validated config (defaults filled in, secret references resolved) and yields
    ``(dotted.key.path, problem)`` for each violation. They run after the schema and the
    core's rules, in ``config validate``, at start and on every reload alike, so that
    ``config validate`` refuses what the plugin would refuse at start. Each problem names
    its rule (``[rule <plugin>.<name>]``). A check that raises is counted and logged and
    finds nothing; it never makes a config invalid by accident.

    Called from: config loading, like ``predis_agent_config_schema``.
    """


# ---------------------------------------------------------------------------
# Registration: return objects, do no I/O
# ---------------------------------------------------------------------------


@hookspec
def predis_agent_register_collectors(agent: Any, config: dict[str, Any]) -> list[Any] | None:
    """Return collectors (``agent.api.Collector``): ``name`` and ``collect() -> Iterable[Metric]``.

    ``collect`` is called once per collection interval from the scheduler thread,
    under a timeout; an exception costs that collector's batch only.
    """


@hookspec
def predis_agent_register_exporters(agent: Any, config: dict[str, Any]) -> list[Any] | None:
    """Return push exporters: objects with ``name`` and ``send(batch)``, or the full
    contract ``agent.api.Exporter``, ``encode(batch) -> list[Payload]`` and
    ``send(payload, timeout)`` raising the typed errors of ``agent.api`` (transient / too
    large / invalid / auth).

    Each exporter is driven by its own ``agent.sinks.ResilientSink`` (bounded queue, worker
    thread, retry, circuit breaker, spool). The sink outlives reloads: when the plugin's
    section changes, only the exporter object inside it is replaced and nothing queued is lost.
    """


@hookspec
def predis_agent_register_drift_detectors(agent: Any, config: dict[str, Any]) -> list[Any] | None:
    """Return drift detectors (``agent.api.DriftDetector``): ``name`` and
    ``check(reference, current, settings) -> DriftResult``."""


@hookspec
def predis_agent_register_origins(agent: Any, config: dict[str, Any]) -> list[Any] | None:
    """Return cache origins (``agent.api.Origin``): ``name`` and ``load_many(keys) -> values``."""


@hookspec
def predis_agent_register_health_checks(agent: Any, config: dict[str, Any]) -> list[Any] | None:
    """Return readiness checks (``agent.api.HealthCheck``): ``name`` and ``check() -> (ok, reason)``.

    ``/readyz`` answers 200 only when every check returns ``ok``. Checks run in a worker
    thread under ``agent.readiness.timeout_seconds``; a check that hangs counts as failed.
    """


@hookspec
def predis_agent_register_remediations(agent: Any, config: dict[str, Any]) -> list[Any] | None:
    """Return remediation actions (``agent.api.Remediation``): ``name``, ``triggers``
    (conditions such as ``eta:spool`` or ``anomaly:hit_ratio``), ``reversible``,
    ``describe()``, ``apply(evidence)`` and ``revert()``, each returning what it did in words
    (raise ``agent.api.RemediationUnavailable`` to say why it cannot act).

    An action runs only when ``aiops.remediation.opt_in`` names it, and only records what it
    would have done unless ``aiops.remediation.live`` names it too. Called at start and when
    the ``aiops`` section changes; ``apply`` and ``revert`` run in the collection thread.
    """


@hookspec
def predis_agent_register_routes(agent: Any) -> list[Any] | None:
    """Return HTTP routes as ``agent.api.Route(method, path, handler)``.

    ``handler`` is an ``async def handler(request) -> aiohttp.web.StreamResponse``.
    Bearer-token authentication applies to every route unless its path is listed in
    ``agent.auth.anonymous_routes``.
    """


@hookspec
def predis_agent_register_commands(cli: Any) -> None:
    """Add click commands to the ``predis-agent`` command group ``cli``."""


# ---------------------------------------------------------------------------
# Notifications and lifecycle
# ---------------------------------------------------------------------------


@hookspec
def predis_agent_event(agent: Any, event: Any) -> None:
    """Receive an ``agent.api.Event`` (config reloaded, breaker opened, drift ...).

    Called from the thread that raised the event; return quickly.
    """


@hookspec
def predis_agent_startup(agent: Any) -> None:
    """Called once the agent has started its components, before READY=1 is sent."""


@hookspec
def predis_agent_shutdown(agent: Any) -> None:
    """Called when the agent stops, before its sinks are flushed and closed."""

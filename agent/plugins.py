# SPDX-License-Identifier: Apache-2.0
"""The plugin host: built-in plugins, entry-point plugins, isolation, enable/disable.

pluggy does registration and signature checking. Calling is done here, one
implementation at a time (:meth:`PluginHost.call`), because pluggy's own hook call
stops at the first implementation that raises. A plugin that fails to import or
raises in a hook is logged, counted and marked failed; loading and the agent go on.

Plugins are blocked by name with ``PREDIS_AGENT_DISABLE_PLUGINS=a,b`` (never even
imported) and disabled in config with ``plugins.<name>.enabled: false`` (imported, so
their schema still validates their section, but not registered).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypedDict

import pluggy

from agent import ENTRY_POINT_GROUP, PROJECT_NAME, hookspecs
from agent.config_rules import Finding, Rule
from agent.errors import PluginLoadError

log = logging.getLogger(__name__)

DISABLE_ENV_VAR = "PREDIS_AGENT_DISABLE_PLUGINS"

# Built-in plugins: (name, module). They use only the agent's public API.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("prometheus", "plugins.exporters.prometheus"),
    ("datadog", "plugins.exporters.datadog"),
    ("newrelic", "plugins.exporters.newrelic"),
    ("cloudwatch", "plugins.exporters.cloudwatch"),
    ("files", "plugins.origins.files"),
    ("s3", "plugins.origins.s3"),
    ("redis_origin", "plugins.origins.redis"),
    ("cache_metrics", "plugins.collectors.cache"),
    ("process_metrics", "plugins.collectors.process"),
    ("gpu_metrics", "plugins.collectors.gpu"),
    ("access_log", "plugins.collectors.access_log"),
    ("drift_ks", "plugins.drift.ks"),
    ("drift_psi", "plugins.drift.psi"),
    ("drift_distance", "plugins.drift.distance"),
    ("drift_chi2", "plugins.drift.chi2"),
    ("drift_adwin", "plugins.drift.adwin"),
    ("drift_batch_means", "plugins.drift.batch_means"),
)


@dataclass
class PluginInfo:
    """What the host knows about one plugin; shown by ``plugins list`` and ``/status``."""

    name: str
    source: str  # "builtin" or "entrypoint:<distribution>"
    module: str
    version: str | None = None
    state: str = "pending"  # loaded | disabled | blocked | failed
    error: str | None = None
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    obj: Any = None

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "module": self.module,
            "version": self.version,
            "state": self.state,
            "error": self.error,
            "hook_errors": dict(self.errors),
            "last_hook_error": self.last_error,
        }


class SchemaParts(TypedDict):
    """What the plugins add to the config schema: the keyword arguments of
    ``agent.config.build_schema`` and ``agent.config.load_config``."""

    plugin_fragments: dict[str, Any]
    plugin_sections: dict[str, dict[str, Any]]
    opaque_plugins: list[str]


class ConfigParts(SchemaParts):
    """What the plugins add to loading a config: the schema parts and their rules across
    keys (the keyword arguments of ``agent.config.load_config``)."""

    plugin_rules: list[Rule]


# The paths predis_agent_config_sections may declare: exporters.<name>, collectors.<name>.
SECTION_PATH_RE = re.compile(rf"(?:{'|'.join(hookspecs.CONFIG_SECTION_NAMESPACES)})\.[A-Za-z0-9_-]+")
SECTION_PATHS = " or ".join(f"{ns}.<name>" for ns in hookspecs.CONFIG_SECTION_NAMESPACES)


def fragment_problem(fragment: dict[str, Any] | None, hook: str = "predis_agent_config_schema") -> str | None:
    """Why ``fragment`` is not a usable JSON Schema (Draft 2020-12), or None when it is.

    Checked before a fragment reaches the config schema: an invalid one would make
    every ``load_config`` raise a jsonschema error instead of a ConfigError, so one
    broken plugin would stop start-up and reload.
    """
    if fragment is None:
        return None
    import jsonschema  # the config loader needs it anyway; --help does not

    fix = f"fix the plugin's {hook}; until then its config section is accepted unchecked"
    try:
        jsonschema.Draft202012Validator.check_schema(fragment)
    except jsonschema.SchemaError as exc:
        where = exc.json_path if exc.path else "$"
        return f"SchemaError: expected a valid JSON Schema (Draft 2020-12) fragment, found at {where}: {exc.message}; {fix}"
    except Exception as exc:  # check_schema itself can fail on very odd input
        return f"{exc.__class__.__name__}: expected a valid JSON Schema (Draft 2020-12) fragment, checking it failed ({exc}); {fix}"
    return None


def sections_problem(declared: Any) -> str | None:
    """Why what ``predis_agent_config_sections`` returned is malformed, or None when it is
    a mapping of section paths (strings) to valid section schemas (or None)."""
    if declared is None:
        return None
    if not isinstance(declared, dict):
        return f"TypeError: expected a dict of section path to JSON Schema, got {type(declared).__name__}"
    for path, fragment in declared.items():
        if not isinstance(path, str):
            return f"TypeError: expected section paths as strings, got {type(path).__name__} {path!r}"
        if not isinstance(fragment, dict):
            return f"TypeError: section {path!r}: expected a dict (its JSON Schema), got {type(fragment).__name__}"
        if fragment.get("type", "object") != "object":
            return f"ValueError: section {path!r}: expected a schema of type object, found type {fragment['type']!r}"
        problem = fragment_problem(fragment, "predis_agent_config_sections")
        if problem is not None:
            return f"section {path!r}: {problem}"
    return None


def plugin_entry_points() -> list[metadata.EntryPoint]:
    """The entry points of the installed plugins (group ``predis_agent``), by name."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def _blocked_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV_VAR, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


class PluginHost:
    """Owns the pluggy ``PluginManager`` and every plugin's state."""

    def __init__(self, *, load_entrypoints: bool = True, builtins: Iterable[tuple[str, str]] = DEFAULT_PLUGINS) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.blocked = _blocked_from_env()
        self._lock = threading.Lock()
        self.error_listeners: list[Callable[[str, str], None]] = []
        # Which plugin declared each section it owns (``exporters.<name>``, ...), as the
        # last config_sections() found it.
        self.section_owners: dict[str, str] = {}
        for name in sorted(self.blocked):
            self.pm.set_blocked(name)
        for name, module in builtins:
            self._import(name, "builtin", functools.partial(importlib.import_module, module), module, None)
        if load_entrypoints:
            self._load_entrypoints()

    # -- loading -------------------------------------------------------------
    def _load_entrypoints(self) -> None:
        try:
            eps = plugin_entry_points()
        except Exception as exc:  # a broken dist-info must not stop the agent
            log.error("cannot list entry points of group %s: %s", ENTRY_POINT_GROUP, exc)
            return
        for ep in eps:
            dist = getattr(ep, "dist", None)
            dist_name = getattr(dist, "name", None) or "unknown"
            version = getattr(dist, "version", None)
            if ep.name in self.plugins:
                info = PluginInfo(ep.name, f"entrypoint:{dist_name}", ep.value, version, "failed")
                info.error = f"name {ep.name!r} is already used by {self.plugins[ep.name].source}"
                log.error("plugin %s from %s not loaded: %s", ep.name, dist_name, info.error)
                self.plugins[f"{ep.name}@{dist_name}"] = info
                continue
            self._import(ep.name, f"entrypoint:{dist_name}", ep.load, ep.value, version)

    def load_new_entrypoints(self) -> list[str]:
        """Import the installed plugins that appeared since the host was built (a
        ``plugins install`` while the agent runs); returns their names. Safe by construction:
        a plugin already loaded is never imported again or unloaded (that takes a restart), and
        a new one is only imported here; it is registered by :meth:`apply_config` like any
        other. Blocking (imports): call it off the event loop."""
        importlib.invalidate_caches()
        try:
            eps = plugin_entry_points()
        except Exception as exc:
            log.error("cannot list entry points of group %s: %s", ENTRY_POINT_GROUP, exc)
            return []
        fresh = [ep for ep in eps if ep.name not in self.plugins]
        for ep in fresh:
            dist = getattr(ep, "dist", None)
            with self._lock:
                self._import(ep.name, f"entrypoint:{getattr(dist, 'name', None) or 'unknown'}", ep.load, ep.value, getattr(dist, "version", None))
            log.info("plugin %s: installed since start, loaded (%s)", ep.name, self.plugins[ep.name].state)
        return [ep.name for ep in fresh]

    def _import(self, name: str, source: str, loader: Callable[[], Any], module: str, version: str | None) -> None:
        info = PluginInfo(name=name, source=source, module=module, version=version)
        self.plugins[name] = info
        if name in self.blocked:
            info.state = "blocked"
            info.error = f"blocked by {DISABLE_ENV_VAR}"
            log.info("plugin %s blocked by %s", name, DISABLE_ENV_VAR)
            return
        try:
            obj = loader()
            self._check_impls(name, obj)
        except Exception as exc:
            info.state = "failed"
            info.error = f"{exc.__class__.__name__}: {exc}"
            self._count(name, "load", info.error)
            log.error("plugin %s (%s) failed to load: %s", name, module, info.error)
            return
        info.obj = obj
        info.state = "loaded"

    def _check_impls(self, name: str, obj: Any) -> None:
        """Register into a scratch manager so pluggy validates names and signatures."""
        scratch = pluggy.PluginManager(PROJECT_NAME)
        scratch.add_hookspecs(hookspecs)
        try:
            scratch.register(obj, name=name)
            scratch.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(str(exc)) from exc

    def apply_config(self, enabled: Callable[[str], bool]) -> None:
        """Register loaded plugins that ``enabled(name)`` allows; unregister the rest."""
        with self._lock:
            for name, info in self.plugins.items():
                if info.obj is None or info.state not in ("loaded", "disabled"):
                    continue
                registered = self.pm.get_plugin(name) is not None
                want = enabled(name)
                if want and not registered:
                    self.pm.register(info.obj, name=name)
                    info.state = "loaded"
                elif not want:
                    if registered:
                        self.pm.unregister(name=name)
                    info.state = "disabled"

    # -- calling ----------------------------------------------------------------
    def schema_fragments(self) -> tuple[dict[str, Any], list[str]]:
        """Every loaded plugin's schema fragment (enabled or not), and opaque names."""
        fragments: dict[str, Any] = {}
        opaque: list[str] = []
        for name, info in self.plugins.items():
            if info.obj is None:
                opaque.append(name)
                continue
            func = getattr(info.obj, "predis_agent_config_schema", None)
            if func is None:
                fragments[name] = None
                continue
            try:
                fragment = func()
                if fragment is not None and not isinstance(fragment, dict):
                    raise TypeError(f"expected a dict, got {type(fragment).__name__}")
            except Exception as exc:
                self._count(name, "predis_agent_config_schema", f"{exc.__class__.__name__}: {exc}")
                log.error("plugin %s: predis_agent_config_schema raised %s: %s", name, exc.__class__.__name__, exc)
                opaque.append(name)
                continue
            problem = fragment_problem(fragment)
            if problem is not None:
                self._count(name, "predis_agent_config_schema", problem)
                log.error("plugin %s: predis_agent_config_schema returned %s", name, problem)
                opaque.append(name)
                continue
            fragments[name] = fragment
        return fragments, opaque

    def config_sections(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Every loaded plugin's declared sections (``predis_agent_config_sections``, enabled
        or not) as path -> schema, and the plugins whose sections are unknown (opaque).

        A path outside ``exporters.``/``collectors.``, or already declared by the core
        schema or an earlier plugin, is refused: logged and counted, the plugin's other
        sections are kept.
        """
        from config_schema import load_schema

        hook = "predis_agent_config_sections"
        core = load_schema()["properties"]
        owners = {f"{ns}.{sub}": "the core schema" for ns in hookspecs.CONFIG_SECTION_NAMESPACES for sub in core[ns].get("properties", {})}
        sections: dict[str, dict[str, Any]] = {}
        opaque: list[str] = []
        self.section_owners = {}
        for name, info in self.plugins.items():
            if info.obj is None:
                opaque.append(name)
                continue
            func = getattr(info.obj, hook, None)
            if func is None:
                continue
            try:
                declared = func()
            except Exception as exc:
                self._count(name, hook, f"{exc.__class__.__name__}: {exc}")
                log.error("plugin %s: %s raised %s: %s", name, hook, exc.__class__.__name__, exc)
                opaque.append(name)
                continue
            problem = sections_problem(declared)
            if problem is not None:
                self._count(name, hook, problem)
                log.error("plugin %s: %s returned %s", name, hook, problem)
                opaque.append(name)
                continue
            for path, fragment in (declared or {}).items():
                if not SECTION_PATH_RE.fullmatch(path):
                    refused = f"section {path!r} refused: a plugin declares {SECTION_PATHS} only"
                elif path in owners:
                    refused = f"section {path!r} refused: it is already declared by {owners[path]}"
                else:
                    sections[path] = fragment
                    owners[path] = f"plugin {name}"
                    self.section_owners[path] = name
                    continue
                self._count(name, hook, refused)
                log.error("plugin %s: %s", name, refused)
        return sections, opaque

    def schema_parts(self) -> SchemaParts:
        """What the plugins add to the config schema, for ``build_schema(**parts)`` and
        ``load_config(path, **parts)``: their ``plugins.<name>`` fragments, their declared
        sections, and the plugins that are opaque for either (not loaded, or a hook that
        failed)."""
        fragments, opaque = self.schema_fragments()
        sections, sections_opaque = self.config_sections()
        opaque += [name for name in sections_opaque if name not in opaque]
        return {"plugin_fragments": fragments, "plugin_sections": sections, "opaque_plugins": opaque}

    def config_rules(self) -> list[Rule]:
        """Every loaded plugin's rules across config keys (``predis_agent_config_rules``,
        enabled or not, like the schema: a rule looks at its plugin's ``enabled`` itself),
        named ``<plugin>.<rule>``. A hook that raises, and anything but a Rule, is counted
        and left out; a check that raises when it runs is counted and finds nothing."""
        hook = "predis_agent_config_rules"
        rules: list[Rule] = []
        for name, info in self.plugins.items():
            func = getattr(info.obj, hook, None) if info.obj is not None else None
            if func is None:
                continue
            try:
                returned = list(func() or ())
            except Exception as exc:
                self._count(name, hook, f"{exc.__class__.__name__}: {exc}")
                log.error("plugin %s: %s raised %s: %s", name, hook, exc.__class__.__name__, exc)
                continue
            for rule in returned:
                if not isinstance(rule, Rule):
                    problem = f"expected agent.api.Rule, got {type(rule).__name__}"
                    self._count(name, hook, problem)
                    log.error("plugin %s: %s returned %s", name, hook, problem)
                    continue
                rules.append(Rule(f"{name}.{rule.name}", rule.summary, self._isolated_check(name, rule)))
        return rules

    def _isolated_check(self, plugin: str, rule: Rule) -> Callable[[Mapping[str, Any]], Iterator[Finding]]:
        def check(data: Mapping[str, Any]) -> Iterator[Finding]:
            try:
                found = list(rule.check(data))
            except Exception as exc:
                message = f"rule {rule.name} raised {exc.__class__.__name__}: {exc}"
                self._count(plugin, "predis_agent_config_rules", message)
                log.error("plugin %s: %s", plugin, message)
                found = []
            return iter(found)

        return check

    def config_parts(self) -> ConfigParts:
        """``load_config(path, **host.config_parts())``: the schema parts and the rules."""
        return {**self.schema_parts(), "plugin_rules": self.config_rules()}

    def call(self, hook_name: str, only: set[str] | None = None, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every registered implementation of ``hook_name`` in isolation.

        Returns ``(plugin_name, result)`` for each implementation that returned without
        raising and whose result is not None. ``config`` is special: when the keyword
        ``config`` is a :class:`agent.config.Config`, each plugin receives its own section.
        ``only`` restricts the call to the named plugins.
        """
        hook = getattr(self.pm.hook, hook_name)
        results: list[tuple[str, Any]] = []
        cfg = kwargs.get("config")
        for impl in reversed(hook.get_hookimpls()):
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                continue
            if only is not None and impl.plugin_name not in only:
                continue
            args = dict(kwargs)
            if cfg is not None and hasattr(cfg, "plugin_config"):
                args["config"] = cfg.plugin_config(impl.plugin_name)
            try:
                result = impl.function(*[args[a] for a in impl.argnames])
            except Exception as exc:
                message = f"{exc.__class__.__name__}: {exc}"
                self._count(impl.plugin_name, hook_name, message)
                log.error("plugin %s raised in %s: %s", impl.plugin_name, hook_name, message, exc_info=log.isEnabledFor(logging.DEBUG))
                continue
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def collect(self, hook_name: str, only: set[str] | None = None, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a ``register_*`` hook and flatten the returned lists to (plugin, object)."""
        out: list[tuple[str, Any]] = []
        for plugin, result in self.call(hook_name, only=only, **kwargs):
            items = result if isinstance(result, (list, tuple)) else [result]
            out.extend((plugin, item) for item in items)
        return out

    def _count(self, plugin: str, hook: str, message: str) -> None:
        info = self.plugins.get(plugin)
        if info is not None:
            info.errors[hook] = info.errors.get(hook, 0) + 1
            info.last_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {hook}: {message}"
        for listener in list(self.error_listeners):
            try:
                listener(plugin, hook)
            except Exception:  # a broken listener must not hide the original error
                log.exception("plugin error listener failed")

    def report_error(self, plugin: str, hook: str, exc: BaseException) -> None:
        """Record an error raised by an object a plugin returned (collector, route ...)."""
        message = f"{exc.__class__.__name__}: {exc}"
        log.error("plugin %s failed in %s: %s", plugin, hook, message)
        self._count(plugin, hook, message)

    def public(self) -> list[dict[str, Any]]:
        return [info.public() for info in sorted(self.plugins.values(), key=lambda i: i.name)]

    def error_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for info in self.plugins.values():
            for hook, n in info.errors.items():
                counts[(info.name, hook)] += n
        return dict(counts)


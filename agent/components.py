# SPDX-License-Identifier: Apache-2.0
"""The agent's components, and the one protocol the coordinator drives them through.

Start-up is a change from nothing to the loaded config; a reload is a change from the
running config to the new one. Both go through :meth:`agent.runtime.Agent._transition`,
which takes every component whose config sections the change touches, in the order of
``Agent.components``, through the same stages::

    plan(new, changes, plans)    dry-build, blocking, in a worker thread under
                                 agent.reload.timeout_seconds: read files, allocate, check
    prepare(plan, new, changes)  dry-build on the event loop: bind listeners
    ------ nothing that runs has changed so far; a failure discards every plan ------
    apply(plan, new, changes)    swap in; returns what was restarted, for the log
    abandon(old, changes)        an apply further down failed: put back what must be

    readiness(config)            named checks for /readyz
    status() / stop()

Components and the sections they follow (``None``: every change)::

    LogComponent              agent.log
    TracingComponent          agent.tracing
    DescriptorComponent       agent.reserved_descriptors
    BackendComponent          cache.backend
    PluginComponent           plugins, exporters, agent.sinks   (collectors, exporters and
                              their sinks, health checks, drift detectors, origins, routes)
    ModelComponent            mlops, cache.prefetch, collectors.access_log
    CacheComponent            None   (the cache, its RESP server, origin and prefetcher)
    AccessLogComponent        collectors.access_log
    HttpComponent             agent.http, agent.auth
    MetricsListenerComponent  None   (exporters.prometheus.listen, on the API's settings)
    DriftComponent            drift
    HistoryComponent          console   (the on-disk history of the agent's measurements)
    ConsoleComponent          console   (the console's sessions: agent.console.gate)
    PidFileComponent          agent.pid_file

What applies in place does (a prefetcher is retuned when only its pacing or thresholds
change, the drift loop wakes on a new interval); what cannot is rebuilt off to the side
and swapped in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent import fdlimits, logs
from agent.cache_service import CachePlan, CacheService
from agent.config import Config, section_changed
from agent.errors import StartupError
from agent.history import History, HistoryError
from agent.http import HttpServer, Route
from agent.mlops.drift_monitor import DriftMonitor
from agent.mlops.service import MlopsService
from agent.pidfile import remove_pid_file, write_pid_file
from agent.plugins import PluginHost
from agent.security import TokenRecord, TokenStore, create_local_token, remove_local_token
from agent.sinks import ResilientSink, SinkSettings
from agent.telemetry import Telemetry
from agent.tracing import Tracing
from cache_core.backend import Backend, BackendError

log = logging.getLogger(__name__)

# Threads that close the sinks a reload turned off (each close may wait for its timeout).
SINK_CLOSE_WORKERS = 2

Check = tuple[str, Callable[[], tuple[bool, str]]]


@dataclass(frozen=True)
class Changes:
    """What a transition changes: dotted key paths, or everything (``initial``, start-up)."""

    paths: tuple[str, ...]
    initial: bool = False

    def touches(self, sections: Iterable[str] | None) -> bool:
        return self.initial or sections is None or section_changed(self.paths, sections)


class Component(Protocol):
    """What the coordinator calls; :class:`BaseComponent` gives the no-op defaults."""

    @property
    def name(self) -> str: ...
    @property
    def sections(self) -> tuple[str, ...] | None: ...

    def renewed(self, new: Config) -> list[str]: ...
    def plan(self, new: Config, changes: Changes, plans: dict[str, Any]) -> Any: ...
    async def prepare(self, plan: Any, new: Config, changes: Changes) -> Any: ...
    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]: ...
    def discard(self, plan: Any) -> None: ...
    def abandon(self, old: Config, changes: Changes) -> None: ...
    def readiness(self, config: Config) -> list[Check]: ...
    def status(self) -> dict[str, Any]: ...
    async def stop(self, config: Config) -> None: ...


class BaseComponent:
    """Defaults: nothing to dry-build, nothing to check, nothing to stop."""

    name = "component"
    sections: tuple[str, ...] | None = ()

    def renewed(self, new: Config) -> list[str]:
        """Changes outside the file (renewed certificate files) that need this component applied."""
        return []

    def plan(self, new: Config, changes: Changes, plans: dict[str, Any]) -> Any:
        return None

    async def prepare(self, plan: Any, new: Config, changes: Changes) -> Any:
        return plan

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        return []

    def discard(self, plan: Any) -> None:
        """Release what a plan that will not be applied holds."""

    def abandon(self, old: Config, changes: Changes) -> None:
        """A later component's apply failed and ``old`` stays in force."""

    def readiness(self, config: Config) -> list[Check]:
        return []

    def status(self) -> dict[str, Any]:
        return {}

    async def stop(self, config: Config) -> None:
        """Release what the component holds at agent stop."""


# --------------------------------------------------------------------------- agent basics
def check_log_file(section: dict[str, Any]) -> None:
    """Raise OSError (with the path) when the log file of ``section`` cannot be opened for appending.

    Checked in the dry-build: switching logs removes the running handlers first, so a file
    that cannot be opened must be found before anything is swapped.
    """
    path = (section.get("file") or {}).get("path")
    if not path:
        return
    path = os.path.expanduser(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise OSError(f"agent.log.file.path {path} cannot be opened for appending ({exc.strerror or exc}); fix the path or its directory's permissions") from None


class LogComponent(BaseComponent):
    name = "log"
    sections = ("agent.log",)

    def plan(self, new: Config, changes: Changes, plans: dict[str, Any]) -> Any:
        if changes.touches(["agent.log.file"]):
            check_log_file(new.section("agent.log"))
        return None

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        logs.configure(new.section("agent.log"))
        return []

    def abandon(self, old: Config, changes: Changes) -> None:
        logs.configure(old.section("agent.log"))


class TracingComponent(BaseComponent):
    name = "tracing"
    sections = ("agent.tracing",)

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        self.tracing.configure(new.section("agent.tracing"))
        return []

    def status(self) -> dict[str, Any]:
        return {"otlp_endpoint": self.tracing.endpoint}

    async def stop(self, config: Config) -> None:
        self.tracing.flush()
        self.tracing.shutdown()


class DescriptorComponent(BaseComponent):
    """The open-file limit (raised at start) and the reserve listeners keep free."""

    name = "descriptors"
    sections = ("agent.reserved_descriptors",)

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        if changes.initial:
            fdlimits.setup(new.get("agent.reserved_descriptors"), self.telemetry)
        else:
            fdlimits.set_reserved(new.get("agent.reserved_descriptors"))
        return []


class PidFileComponent(BaseComponent):
    name = "pid_file"
    sections = ("agent.pid_file",)

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        path = new.get("agent.pid_file")
        if path:
            write_pid_file(path)
        return []

    async def stop(self, config: Config) -> None:
        path = config.get("agent.pid_file")
        if path:
            remove_pid_file(path)


# --------------------------------------------------------------------------- the cache
class BackendComponent(BaseComponent):
    """The array backend (CuPy or NumPy) the cache lives on."""

    name = "backend"
    sections = ("cache.backend",)

    def __init__(self) -> None:
        self.current: Backend | None = None

    def plan(self, new: Config, changes: Changes, plans: dict[str, Any]) -> Backend:
        try:
            backend = Backend(new.get("cache.backend"))
        except BackendError as exc:
            raise StartupError(str(exc)) from None
        if backend.fallback_reason:
            log.info("cache backend: numpy (%s)", backend.fallback_reason)
        return backend

    async def apply(self, plan: Backend, new: Config, changes: Changes) -> list[str]:
        self.current = plan
        return []

    def status(self) -> dict[str, Any]:
        backend = self.current
        return {
            "backend": backend.name if backend else None,
            "requested": backend.requested if backend else None,
            "fallback_reason": backend.fallback_reason if backend else None,
        }


class CacheComponent(BaseComponent):
    """The cache, its RESP server, its origin and prefetcher (:class:`CacheService`)."""

    name = "cache"
    sections = None

    def __init__(self, service: CacheService, backend: BackendComponent, plugins: PluginComponent) -> None:
        self.service = service
        self.backend = backend
        self.plugins = plugins

    def renewed(self, new: Config) -> list[str]:
        return ["cache.resp.tls (certificate files renewed)"] if self.service.tls_renewed(new.section("cache.resp")) else []

    def plan(self, new: Config, changes: Changes, plans: dict[str, Any]) -> CachePlan:
        backend = plans.get("backend") or self.backend.current
        assert backend is not None
        # Origin plugins rebuilt in this change: the origin is looked up once they are.
        origins = None if changes.touches(["plugins"]) else self.plugins.origins
        return self.service.plan(new, backend, origins)

    async def apply(self, plan: CachePlan, new: Config, changes: Changes) -> list[str]:
        done = await self.service.apply(plan)
        if plan.origin_deferred:
            try:
                found = self.service.find_origin(new.section("cache"), self.plugins.origins)
            except StartupError as exc:
                if changes.initial:
                    raise
                log.error("read-through disabled: %s", exc)
                found = None
            self.service.set_origin(found, new.get("cache.read_through"))
        return done

    def discard(self, plan: CachePlan) -> None:
        self.service.discard(plan)

    def readiness(self, config: Config) -> list[Check]:
        slots = int(config.get("cache.self_test_slots"))
        checks: list[Check] = [("cache", lambda: self.service.self_test(slots))]
        wanted = config.get("cache.origin")
        if wanted is not None:
            checks.insert(0, ("origin", lambda: self._origin_ready(wanted)))
        return checks

    def _origin_ready(self, wanted: str) -> tuple[bool, str]:
        if self.service.origin_name == wanted:
            return True, f"read-through from origin {wanted!r}"
        return False, f"cache.origin {wanted!r} is not registered by any enabled plugin; read-through is off"

    def status(self) -> dict[str, Any]:
        return {**self.backend.status(), **self.service.status()}

    async def stop(self, config: Config) -> None:
        await self.service.stop()


class AccessLogComponent(BaseComponent):
    """The access-event ring the cache reports to (kept unless its size or sampling changed)."""

    name = "access_log"
    sections = ("collectors.access_log",)

    def __init__(self, service: CacheService) -> None:
        self.service = service

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        self.service.configure_access_log(new.section("collectors.access_log"))
        return []


class ModelComponent(BaseComponent):
    """The model lifecycle (registry, retraining, rollout): :class:`MlopsService`."""

    name = "mlops"
    sections = ("mlops", "cache.prefetch", "collectors.access_log")

    def __init__(self, service: MlopsService, wake: Callable[[], None]) -> None:
        self.service = service
        self.wake = wake

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        self.service.configure(new)
        self.wake()
        return []

    def readiness(self, config: Config) -> list[Check]:
        found = self.service.readiness()
        if found is None:
            return []
        ok, detail = bool(found[0]), str(found[1])
        return [("prefetch", lambda: (ok, detail))]

    def status(self) -> dict[str, Any]:
        return self.service.status()


class DriftComponent(BaseComponent):
    """The live drift check; a new ``check_interval_seconds`` wakes its loop at once."""

    name = "drift"
    sections = ("drift",)

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor
        self.wake: asyncio.Event | None = None

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        self.monitor.configure(new.section("drift"))
        if self.wake is not None:
            self.wake.set()
        return []

    def status(self) -> dict[str, Any]:
        return self.monitor.status()


class HistoryComponent(BaseComponent):
    """The history of the agent's measurements (:mod:`agent.history`): opened off to the side
    when ``console.history_path`` changes, retuned in place when only its bounds do."""

    name = "history"
    sections = ("console",)

    def __init__(self) -> None:
        self.history: History | None = None
        self.last_error: str | None = None
        self.failed_rounds = 0
        self.failed_events = 0

    def plan(self, new: Config, changes: Changes, plans: dict[str, Any]) -> History | None:
        section = new.section("console")
        path = section.get("history_path")
        if not path or (self.history is not None and self.history.path == Path(path).expanduser()):
            return None
        return History(path, section["retention_seconds"], section["history_max_bytes"])

    async def apply(self, plan: History | None, new: Config, changes: Changes) -> list[str]:
        section = new.section("console")
        if plan is not None or not section.get("history_path"):
            old, self.history = self.history, plan
            if old is not None:
                old.close()
            if plan is not None:
                return [f"history kept in {plan.path}"]
        elif self.history is not None:
            self.history.retune(section["retention_seconds"], section["history_max_bytes"])
        return []

    def discard(self, plan: History | None) -> None:
        if plan is not None:
            plan.close()

    def record(self, ts: float, samples: list[Any]) -> None:
        """Store one collection round; a disk that refuses is reported, never raised."""
        history = self.history
        if history is None:
            return
        try:
            history.record(ts, samples)
        except HistoryError as exc:
            self.failed_rounds += 1
            self._failed(exc)
        else:
            self.last_error = None

    def record_event(self, ts: float, kind: str, detail: dict[str, Any]) -> None:
        """Keep one event (drift, rollout decision, reload); a refusal is reported, never raised."""
        history = self.history
        if history is None:
            return
        try:
            history.record_event(ts, kind, detail)
        except HistoryError as exc:
            self.failed_events += 1
            self._failed(exc)

    def _failed(self, exc: HistoryError) -> None:
        if str(exc) != self.last_error:
            log.error("history: %s; the rounds are counted as failed until it can write again", exc)
        self.last_error = str(exc)

    def status(self) -> dict[str, Any]:
        history = self.history
        if history is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "path": str(history.path),
            "span": history.span(),
            "dropped_rounds": history.dropped_rounds,
            "failed_rounds": self.failed_rounds,
            "failed_events": self.failed_events,
            "last_error": self.last_error,
        }

    async def stop(self, config: Config) -> None:
        if self.history is not None:
            self.history.close()
            self.history = None


# --------------------------------------------------------------------------- HTTP
@dataclass
class HttpPlan:
    site: Any  # agent.http.SitePlan, or None: keep the running listener
    local: tuple[TokenRecord, Path] | None = None  # a new local token, written; None: keep the current one
    local_changed: bool = False  # agent.auth.local_token_file changed (to null: drop the current one)


class HttpComponent(BaseComponent):
    """The API listener (health, status, reload, plugin routes) and its token store."""

    name = "http"
    sections = ("agent.http", "agent.auth")

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.tokens: TokenStore | None = None
        self.local: tuple[TokenRecord, Path] | None = None

    def renewed(self, new: Config) -> list[str]:
        if self.server.needs_rebind(new.section("agent.http")):
            return ["agent.http.tls (certificate files renewed)"]
        return []

    def plan(self, new: Config, changes: Changes, plans: dict[str, Any]) -> tuple[TokenRecord, Path] | None:
        """Write a new local token when ``agent.auth.local_token_file`` is new (start, or a
        changed path); a path that cannot be written rejects the change."""
        path = new.get("agent.auth.local_token_file")
        if path is None or not (changes.initial or changes.touches(["agent.auth.local_token_file"])):
            return None
        try:
            return create_local_token(path)
        except OSError as exc:
            raise StartupError(f"agent.auth.local_token_file {path}: cannot write the local token: {exc.strerror or exc}") from None

    async def prepare(self, plan: Any, new: Config, changes: Changes) -> HttpPlan:
        section = new.section("agent.http")
        rebind = changes.initial or self.server.needs_rebind(section)
        local_changed = changes.initial or changes.touches(["agent.auth.local_token_file"])
        return HttpPlan(await self.server.prepare_site(section) if rebind else None, plan, local_changed)

    async def apply(self, plan: HttpPlan, new: Config, changes: Changes) -> list[str]:
        if self.tokens is None or changes.touches(["agent.auth.token_store"]):
            self.tokens = TokenStore(new.get("agent.auth.token_store"))
        if plan.local_changed:
            if self.local is not None:
                remove_local_token(*self.local)
            self.local = plan.local
        self.tokens.local = self.local[0] if self.local is not None else None
        self.server.configure(new.section("agent.http"), new.section("agent.auth"), self.tokens)
        if plan.site is not None:
            await self.server.start(plan.site)
        return []

    def discard(self, plan: Any) -> None:
        if isinstance(plan, HttpPlan):
            if plan.site is not None:
                plan.site.sock.close()
            plan = plan.local
        if isinstance(plan, tuple):
            remove_local_token(*plan)

    async def stop(self, config: Config) -> None:
        await self.server.stop()
        if self.local is not None:
            remove_local_token(*self.local)
            self.local = None


class MetricsListenerComponent(BaseComponent):
    """``exporters.prometheus.listen``: the exposition on a port of its own (same auth and TLS)."""

    name = "metrics_listener"
    sections = None

    def __init__(self, telemetry: Telemetry, http: HttpComponent) -> None:
        self.telemetry = telemetry
        self.http = http
        self.server: HttpServer | None = None

    @staticmethod
    def section_of(cfg: Config) -> dict[str, Any] | None:
        listen = cfg.get("exporters.prometheus.listen")
        if not listen or not cfg.get("exporters.prometheus.enabled"):
            return None
        return {**cfg.section("agent.http"), "listen": listen}

    async def prepare(self, plan: Any, new: Config, changes: Changes) -> Any:
        """Bind the metrics port when it is configured and new (nothing served yet)."""
        section = self.section_of(new)
        if section is None:
            return None
        server = self.server or HttpServer(self.telemetry)
        if self.server is not None and not server.needs_rebind(section):
            return None
        return await server.prepare_site(section)

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        section = self.section_of(new)
        if section is None:
            if self.server is not None:
                await self.server.stop()
                self.server = None
                log.info("metrics listener stopped (exporters.prometheus.listen unset)")
            return []
        if self.server is None:
            self.server = HttpServer(self.telemetry)
        self.server.configure(section, new.section("agent.auth"), self.http.tokens or TokenStore(new.get("agent.auth.token_store")))
        self.set_routes(self.http.server.routes.values())
        if plan is not None:
            await self.server.start(plan)
            log.info("metrics also served on %s", self.server.address)
        return []

    def set_routes(self, routes: Iterable[Route]) -> None:
        if self.server is not None:
            self.server.set_routes([r for r in routes if r.plugin == "prometheus"])

    def discard(self, plan: Any) -> None:
        if plan is not None:
            plan.sock.close()

    async def stop(self, config: Config) -> None:
        if self.server is not None:
            await self.server.stop()


# --------------------------------------------------------------------------- plugins
class PluginComponent(BaseComponent):
    """What the plugins register: collectors, exporters (each behind a sink), health checks,
    drift detectors, origins and routes. A change rebuilds the objects of the plugins whose
    sections changed; sinks are retuned in place, built, or retired and closed off the loop.
    """

    name = "plugins"
    sections = ("plugins", "exporters", "agent.sinks")

    def __init__(
        self,
        host: PluginHost,
        agent: Any,
        telemetry: Telemetry,
        tracing: Tracing,
        on_sink_event: Callable[[str, dict[str, Any]], None],
        refresh_routes: Callable[[], None],
    ) -> None:
        self.host = host
        self.agent = agent
        self.telemetry = telemetry
        self.tracing = tracing
        self.on_sink_event = on_sink_event
        self.refresh_routes = refresh_routes
        self.collectors: list[tuple[str, Any]] = []
        self.health_checks: list[tuple[str, Any]] = []
        self.drift_detectors: list[tuple[str, Any]] = []
        self.origins: list[tuple[str, Any]] = []
        self.sinks: dict[str, ResilientSink] = {}
        self._sink_owner: dict[str, str] = {}
        # Sinks a change turned off flush and stop here, off the event loop: with their
        # endpoint down a close takes up to agent.shutdown_timeout_seconds.
        self._close_pool = concurrent.futures.ThreadPoolExecutor(max_workers=SINK_CLOSE_WORKERS, thread_name_prefix="sink-close")
        self.retired_sinks: list[ResilientSink] = []
        self.closing: list[concurrent.futures.Future[None]] = []
        # Plugins installed while the agent runs, imported by a reload and not registered yet.
        self.arrived: list[str] = []

    def renewed(self, new: Config) -> list[str]:
        """A plugin installed since the last change is a change of its own section."""
        return [f"plugins.{name}" for name in self.arrived]

    async def prepare(self, plan: Any, new: Config, changes: Changes) -> Any:
        # Sinks a previous change turned off finish closing before any is built again, so
        # the old and the new sink of one exporter never share its spool at the same time.
        await self.settle_sink_closes()
        return plan

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        only = None if changes.initial else self.changed_plugins(changes) | set(self.arrived)
        self.arrived = []
        self.host.apply_config(new.plugin_enabled)
        # Off the loop: plugins build their objects (SDK clients) and new sinks read their
        # spools from disk.
        await asyncio.get_running_loop().run_in_executor(None, self.register_all, new, only)
        self.close_retired_sinks(float(new.get("agent.shutdown_timeout_seconds")))
        self.refresh_routes()
        return []

    def changed_plugins(self, changes: Changes) -> set[str]:
        """The plugins whose objects a change rebuilds: ``plugins.<name>``, and the owner of
        a changed ``exporters.<section>`` (the plugin that declared it; by default the
        plugin of that name). Collectors read their sections every round instead."""
        names: set[str] = set()
        for path in changes.paths:
            parts = path.split(".")
            if len(parts) < 2:
                continue
            if parts[0] == "plugins":
                names.add(parts[1])
            elif parts[0] == "exporters":
                section = f"exporters.{parts[1]}"
                names.add(self.host.section_owners.get(section, parts[1]))
        return names

    def abandon(self, old: Config, changes: Changes) -> None:
        self.close_retired_sinks(float(old.get("agent.shutdown_timeout_seconds")))

    def readiness(self, config: Config) -> list[Check]:
        return [(f"{plugin}.{getattr(check, 'name', 'check')}", check.check) for plugin, check in self.health_checks]

    def status(self) -> dict[str, Any]:
        return {name: sink.status() for name, sink in self.sinks.items()}

    async def stop(self, config: Config) -> None:
        timeout = float(config.get("agent.shutdown_timeout_seconds"))
        loop = asyncio.get_running_loop()
        for sink in list(self.sinks.values()):
            await loop.run_in_executor(None, sink.close, timeout)
        await self.settle_sink_closes()
        self._close_pool.shutdown(wait=False)

    # -- objects -------------------------------------------------------------------------
    def active(self, plugin: str) -> bool:
        return self.host.pm.get_plugin(plugin) is not None

    def register_all(self, cfg: Config, only: set[str] | None) -> None:
        """(Re)build the objects of ``only`` plugins (all when None) from their hooks."""

        def keep(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
            return [(p, o) for p, o in items if only is not None and p not in only and self.active(p)]

        def collect(hook: str) -> list[tuple[str, Any]]:
            return self.host.collect(hook, only, agent=self.agent, config=cfg)

        self.collectors = keep(self.collectors) + collect("predis_agent_register_collectors")
        self.health_checks = keep(self.health_checks) + collect("predis_agent_register_health_checks")
        self.drift_detectors = keep(self.drift_detectors) + collect("predis_agent_register_drift_detectors")
        self.origins = keep(self.origins) + collect("predis_agent_register_origins")
        self.update_sinks(cfg, collect("predis_agent_register_exporters"), only)

    # -- sinks ---------------------------------------------------------------------------
    @staticmethod
    def sink_settings(cfg: Config, name: str) -> SinkSettings:
        """The queue/retry/breaker settings of exporter ``name`` (``agent.sinks`` and its interval)."""
        interval = cfg.get(f"exporters.{name}.interval", 0.0) or 0.0
        return SinkSettings.from_config(cfg.section("agent.sinks"), interval=float(interval))

    def update_sinks(self, cfg: Config, exporters: list[tuple[str, Any]], only: set[str] | None) -> None:
        """Build, retune or retire sinks. On a reload this runs in a worker thread (a new
        sink reads its spool): the dict is built aside and swapped in whole, so the loop,
        serving /status meanwhile, never sees it change under an iteration."""
        sinks = dict(self.sinks)
        seen: set[str] = set()
        for plugin, exporter in exporters:
            name = str(getattr(exporter, "name", plugin))
            if name in seen:
                log.error("plugin %s: exporter name %r is used twice; the second is ignored", plugin, name)
                continue
            seen.add(name)
            settings = self.sink_settings(cfg, name)
            if name in sinks:
                sinks[name].replace_exporter(exporter)
                sinks[name].tune(settings)
            else:
                try:
                    sinks[name] = ResilientSink(
                        name, exporter, settings, metrics=self.telemetry, on_event=self.on_sink_event, span=self.tracing.span
                    )
                except (OSError, ValueError) as exc:
                    self.host.report_error(plugin, "predis_agent_register_exporters", exc)
                    continue
            self._sink_owner[name] = plugin
        for name in list(sinks):
            owner = self._sink_owner.get(name, "")
            affected = only is None or owner in only
            if name not in seen and (affected or not self.active(owner)):
                self.retired_sinks.append(sinks.pop(name))
                self._sink_owner.pop(name, None)
            elif name not in seen:
                sinks[name].tune(self.sink_settings(cfg, name))
        self.sinks = sinks

    def close_retired_sinks(self, timeout: float) -> None:
        """Close the sinks :meth:`update_sinks` took out, each in a thread of its own pool."""
        retired, self.retired_sinks = self.retired_sinks, []
        self.closing = [f for f in self.closing if not f.done()]
        for sink in retired:
            self.closing.append(self._close_pool.submit(self._close_sink, sink, timeout))

    @staticmethod
    def _close_sink(sink: ResilientSink, timeout: float) -> None:
        try:
            sink.close(timeout)
        except Exception as exc:
            log.error("sink %s: closing it failed: %s: %s", sink.name, exc.__class__.__name__, exc)

    async def settle_sink_closes(self) -> None:
        """Wait (without blocking the loop) until the sinks being closed are closed."""
        pending = [f for f in self.closing if not f.done()]
        if pending:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in pending))
        self.closing = []

# SPDX-License-Identifier: Apache-2.0
"""The Agent: starts components, reloads config, stops cleanly. A thin coordinator.

Threads: the asyncio loop (HTTP server, signals, schedules, reload) runs in the main
thread; collectors run in a small thread pool under a timeout; each push exporter has
its own sink thread (``agent.sinks``).

Reload (SIGHUP, file change, ``POST /reload``) is: read → validate → dry-build (bind
the new listener, load TLS files, pick the backend) → swap, restarting only the
components whose config section changed. Any failure before the swap leaves the
running config untouched and is reported in ``/status``, the log and the
``predis_agent_config_*`` metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent import __version__, fdlimits, logs
from agent.cache_service import CacheService
from agent.config import (
    MAX_CONFIG_BYTES,
    Config,
    FileReadRefused,
    changed_paths,
    load_config,
    read_config_text,
    read_regular_file,
    section_changed,
)
from agent.errors import AgentError, ConfigError, StartupError
from agent.http import HttpServer, Route, error_response, json_response
from agent.plugins import PluginHost
from agent.mlops.drift_monitor import DriftMonitor
from agent.mlops.service import MlopsService
from agent.pidfile import remove_pid_file, write_pid_file
from agent.security import TokenStore
from agent.sinks import ResilientSink, SinkSettings
from agent.systemd import Notifier
from agent.telemetry import Metric, Telemetry
from agent.tracing import Tracing
from cache_core.backend import Backend, BackendError

log = logging.getLogger(__name__)

# Threads that close the sinks a reload turned off (each close may wait for its timeout).
SINK_CLOSE_WORKERS = 2

REGISTER_HOOKS = (
    "predis_agent_register_collectors",
    "predis_agent_register_exporters",
    "predis_agent_register_health_checks",
    "predis_agent_register_drift_detectors",
    "predis_agent_register_origins",
)


@dataclass(frozen=True)
class Event:
    """A notification passed to ``predis_agent_event``."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


@dataclass
class ReloadResult:
    ok: bool
    trigger: str
    time: float
    generation: int
    changed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "trigger": self.trigger,
            "time": self.time,
            "generation": self.generation,
            "changed": self.changed,
            "errors": self.errors,
        }


def _check_log_file(section: dict[str, Any]) -> None:
    """Raise OSError (with the path) when the log file of ``section`` cannot be opened for appending.

    Checked while a reload dry-builds: switching logs removes the running handlers first,
    so a file that cannot be opened must be found before anything is swapped.
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


class Agent:
    """One running agent. Create, ``await start()``, ``await run_until_stopped()``."""

    def __init__(
        self,
        config_path: str | None,
        overrides: tuple[str, ...] = (),
        *,
        host: PluginHost | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.version = __version__
        self.config_path = config_path
        self.overrides = tuple(overrides)
        self.host = host or PluginHost()
        self.telemetry = Telemetry(self.version)
        self.tracing = Tracing()
        self.notifier = notifier or Notifier()
        self.http = HttpServer(self.telemetry)
        # exporters.prometheus.listen: the exposition on a port of its own (same auth and TLS).
        self.metrics_http: HttpServer | None = None
        self.host.error_listeners.append(self._on_plugin_error)
        for (plugin, hook), count in self.host.error_counts().items():
            self.telemetry["predis_agent_plugin_errors_total"].labels(plugin=plugin, hook=hook).inc(count)
        self.config: Config = self.load_config()
        self.generation = 1
        self.started_at = time.time()
        self.last_reload: ReloadResult | None = None
        self.backend: Backend | None = None
        self.cache_service = CacheService()
        self.tokens: TokenStore | None = None
        self.collectors: list[tuple[str, Any]] = []
        self.health_checks: list[tuple[str, Any]] = []
        self.drift_detectors: list[tuple[str, Any]] = []
        self.origins: list[tuple[str, Any]] = []
        self.sinks: dict[str, ResilientSink] = {}
        self._sink_owner: dict[str, str] = {}
        self.plugin_routes: list[Route] = []
        self.readiness: dict[str, Any] = {"ready": False, "components": {}}
        # Sections plugins add to /status "components" (e.g. "gpu": why GPU metrics are off);
        # informational only, never part of readiness. Built-in component names take precedence.
        self.component_status: dict[str, dict[str, Any]] = {}
        self._reload_lock: asyncio.Lock | None = None
        self._stop_event: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="collect")
        # Sinks a reload turned off flush and stop here, off the event loop: with their
        # endpoint down a close takes up to agent.shutdown_timeout_seconds.
        self._close_pool = concurrent.futures.ThreadPoolExecutor(max_workers=SINK_CLOSE_WORKERS, thread_name_prefix="sink-close")
        self._retired_sinks: list[ResilientSink] = []
        self._closing: list[concurrent.futures.Future[None]] = []
        self._collect_busy: set[int] = set()
        self._collect_lock = threading.Lock()
        self._watch_digest: str | None = None
        self.collection_runs = 0
        self.drift = DriftMonitor(
            ring_source=lambda: self.cache_service.access_log,
            detectors=lambda: [d for _, d in self.drift_detectors],
            on_drift=self._on_drift,
        )
        self.mlops = MlopsService(
            emit=lambda kind, data: self.emit(Event(kind, data)),
            prefetcher=lambda: self.cache_service.prefetcher,
            ring=lambda: self.cache_service.access_log,
            on_retrained=lambda dataset: self.drift.policy.refresh_after_retrain(dataset.features()),
        )
        self.cache_service.model_source = self.mlops.champion
        self._mlops_wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retrain_future: asyncio.Future[Any] | None = None
        self.last_collect_monotonic: float | None = None
        self.next_collect_monotonic: float | None = None

    # ------------------------------------------------------------------ config
    def load_config(self, text: str | None = None) -> Config:
        fragments, opaque = self.host.schema_fragments()
        config = load_config(
            self.config_path, overrides=self.overrides, plugin_fragments=fragments, opaque_plugins=opaque, text=text
        )
        for path in config.literal_secrets:  # the path only, never the value
            log.warning("config: %s holds a secret written into the config file; give it as ${env:NAME}, ${file:/path} or ${cred:NAME}", path)
        return config

    def _plugin_enabled(self, config: Config) -> Any:
        return lambda name: config.plugin_enabled(name)

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        """Start every component; raises :class:`StartupError` with a clear message."""
        self._reload_lock = asyncio.Lock()
        self._stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        cfg = self.config
        logs.configure(cfg.section("agent.log"))
        fdlimits.setup(cfg.get("agent.reserved_descriptors"), self.telemetry)
        self.tracing.configure(cfg.section("agent.tracing"))
        self.backend = self._make_backend(cfg)
        self.tokens = TokenStore(cfg.get("agent.auth.token_store"))
        self.host.apply_config(self._plugin_enabled(cfg))
        self._register_all(cfg, only=None)
        self.cache_service.configure_access_log(cfg.section("collectors.access_log"))
        self.drift.configure(cfg.section("drift"))
        self.mlops.configure(cfg)
        self._mlops_wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await self.cache_service.apply(self.cache_service.plan(cfg, self.backend, self.origins))
        self.http.configure(cfg.section("agent.http"), cfg.section("agent.auth"), self.tokens)
        self._refresh_routes()
        await self.http.start(await self.http.prepare_site(cfg.section("agent.http")))
        await self._apply_metrics_listener(cfg, await self._plan_metrics_listener(cfg))
        self._write_pid_file(cfg)
        self._set_config_metrics(success=True)
        self.host.call("predis_agent_startup", agent=self)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self.reload("SIGHUP")))
        self._watch_digest = await loop.run_in_executor(None, self._file_digest)
        self._tasks = [
            asyncio.create_task(self._collect_loop(), name="collect"),
            asyncio.create_task(self._watch_loop(), name="config-watch"),
            asyncio.create_task(self._drift_loop(), name="drift"),
            asyncio.create_task(self._mlops_loop(), name="mlops"),
        ]
        if self.notifier.watchdog_interval:
            self._tasks.append(asyncio.create_task(self._watchdog_loop(), name="watchdog"))
        readiness = await self.check_ready()
        failing = sorted(name for name, c in readiness["components"].items() if not c["ok"])
        state = "ready" if not failing else f"NOT ready ({', '.join(failing)})"
        self.notifier.ready(f"serving on {self.http.address}, config generation {self.generation}, {state}")
        if failing:
            log.warning("started but not ready: %s", "; ".join(f"{n}: {readiness['components'][n]['detail']}" for n in failing))
        log.info(
            "predis-agent %s started: %s; cache: %s on %s",
            self.version,
            self.http.address,
            self.cache_service.address or "RESP disabled",
            self.backend.name,
        )

    def _make_backend(self, cfg: Config) -> Backend:
        try:
            backend = Backend(cfg.get("cache.backend"))
        except BackendError as exc:
            raise StartupError(str(exc)) from None
        if backend.fallback_reason:
            log.info("cache backend: numpy (%s)", backend.fallback_reason)
        return backend

    def _write_pid_file(self, cfg: Config) -> None:
        path = cfg.get("agent.pid_file")
        if path:
            write_pid_file(path)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the agent cancels at stop; an exception it ends with is logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("task %s failed: %s: %s", task.get_name(), exc.__class__.__name__, exc)

    # ------------------------------------------------------------------ plugins' objects
    def _register_all(self, cfg: Config, only: set[str] | None) -> None:
        """(Re)build the objects of ``only`` plugins (all when None) from their hooks."""

        def keep(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
            return [(p, o) for p, o in items if only is not None and p not in only and self._active(p)]

        self.collectors = keep(self.collectors) + self.host.collect("predis_agent_register_collectors", only, agent=self, config=cfg)
        self.health_checks = keep(self.health_checks) + self.host.collect(
            "predis_agent_register_health_checks", only, agent=self, config=cfg
        )
        self.drift_detectors = keep(self.drift_detectors) + self.host.collect(
            "predis_agent_register_drift_detectors", only, agent=self, config=cfg
        )
        self.origins = keep(self.origins) + self.host.collect("predis_agent_register_origins", only, agent=self, config=cfg)
        exporters = self.host.collect("predis_agent_register_exporters", only, agent=self, config=cfg)
        self._update_sinks(cfg, exporters, only)

    def _repoint_origin(self, cfg: Config) -> None:
        """After origin plugins were rebuilt, give the cache the new object of its origin."""
        try:
            found = self.cache_service.find_origin(cfg.section("cache"), self.origins)
        except StartupError as exc:
            log.error("read-through disabled: %s", exc)
            found = None
        self.cache_service.set_origin(found, cfg.get("cache.read_through"))

    def _active(self, plugin: str) -> bool:
        return self.host.pm.get_plugin(plugin) is not None

    def sink_settings(self, cfg: Config, name: str) -> SinkSettings:
        """The queue/retry/breaker settings of exporter ``name`` (``agent.sinks`` and its interval)."""
        interval = cfg.get(f"exporters.{name}.interval", 0.0) or 0.0
        return SinkSettings.from_config(cfg.section("agent.sinks"), interval=float(interval))

    def _update_sinks(self, cfg: Config, exporters: list[tuple[str, Any]], only: set[str] | None) -> None:
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
                        name, exporter, settings, metrics=self.telemetry, on_event=self._on_sink_event, span=self.tracing.span
                    )
                except (OSError, ValueError) as exc:
                    self.host.report_error(plugin, "predis_agent_register_exporters", exc)
                    continue
            self._sink_owner[name] = plugin
        for name in list(sinks):
            owner = self._sink_owner.get(name, "")
            affected = only is None or owner in only
            if name not in seen and (affected or not self._active(owner)):
                self._retired_sinks.append(sinks.pop(name))
                self._sink_owner.pop(name, None)
            elif name not in seen:
                sinks[name].tune(self.sink_settings(cfg, name))
        self.sinks = sinks

    def _close_retired_sinks(self, timeout: float) -> None:
        """Close the sinks :meth:`_update_sinks` took out, each in a thread of its own pool."""
        retired, self._retired_sinks = self._retired_sinks, []
        self._closing = [f for f in self._closing if not f.done()]
        for sink in retired:
            self._closing.append(self._close_pool.submit(self._close_sink, sink, timeout))

    @staticmethod
    def _close_sink(sink: ResilientSink, timeout: float) -> None:
        try:
            sink.close(timeout)
        except Exception as exc:
            log.error("sink %s: closing it failed: %s: %s", sink.name, exc.__class__.__name__, exc)

    async def _settle_sink_closes(self) -> None:
        """Wait (without blocking the loop) until the sinks being closed are closed.

        A reload that may build a sink again waits for this first, so the old and the new
        sink of one exporter never share its spool at the same time.
        """
        pending = [f for f in self._closing if not f.done()]
        if pending:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in pending))
        self._closing = []

    @staticmethod
    def _metrics_section(cfg: Config) -> dict[str, Any] | None:
        listen = cfg.get("exporters.prometheus.listen")
        if not listen or not cfg.get("exporters.prometheus.enabled"):
            return None
        return {**cfg.section("agent.http"), "listen": listen}

    async def _plan_metrics_listener(self, cfg: Config) -> Any:
        """Bind the metrics port when it is configured and new (a dry-build: nothing served)."""
        section = self._metrics_section(cfg)
        if section is None:
            return None
        server = self.metrics_http or HttpServer(self.telemetry)
        if self.metrics_http is not None and not server.needs_rebind(section):
            return None
        return await server.prepare_site(section)

    async def _apply_metrics_listener(self, cfg: Config, plan: Any) -> None:
        section = self._metrics_section(cfg)
        if section is None:
            if self.metrics_http is not None:
                await self.metrics_http.stop()
                self.metrics_http = None
                log.info("metrics listener stopped (exporters.prometheus.listen unset)")
            return
        if self.metrics_http is None:
            self.metrics_http = HttpServer(self.telemetry)
        self.metrics_http.configure(section, cfg.section("agent.auth"), self.tokens or TokenStore(cfg.get("agent.auth.token_store")))
        self.metrics_http.set_routes([r for r in self.http.routes.values() if r.plugin == "prometheus"])
        if plan is not None:
            await self.metrics_http.start(plan)
            log.info("metrics also served on %s", self.metrics_http.address)

    def _refresh_routes(self) -> None:
        routes = [
            Route("GET", "/livez", self._livez),
            Route("GET", "/readyz", self._readyz),
            Route("GET", "/status", self._status),
            Route("POST", "/reload", self._reload_route),
        ]
        for plugin, route in self.host.collect("predis_agent_register_routes", agent=self):
            if isinstance(route, Route):
                routes.append(Route(route.method, route.path, route.handler, plugin))
            else:
                self.host.report_error(plugin, "predis_agent_register_routes", TypeError("expected agent.http.Route"))
        self.http.set_routes(routes)
        if self.metrics_http is not None:
            self.metrics_http.set_routes([r for r in self.http.routes.values() if r.plugin == "prometheus"])

    def _on_plugin_error(self, plugin: str, hook: str) -> None:
        self.telemetry["predis_agent_plugin_errors_total"].labels(plugin=plugin, hook=hook).inc()

    def _on_drift(self, result: Any) -> None:
        self.emit(Event("drift_detected", {"features": result.affected_features, "detectors": result.drifted_detectors, "result": result.public()}))
        decision = self.mlops.on_drift(result, self.drift.performance(), self.drift.policy.settings)
        log.info("drift: %s (%s)", "retrain requested" if decision.retrain else "no retrain", decision.reason)
        self._wake_mlops()

    def _wake_mlops(self) -> None:
        wake = self._mlops_wake
        loop = self._loop
        if wake is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def _on_sink_event(self, kind: str, data: dict[str, Any]) -> None:
        self.emit(Event(kind, data))

    def emit(self, event: Event) -> None:
        """Tell the plugins (each listener isolated) and the exporters that send events."""
        self.host.call("predis_agent_event", agent=self, event=event)
        for sink in list(self.sinks.values()):
            sink.submit_events([event])

    # ------------------------------------------------------------------ reload
    def _file_digest(self) -> str | None:
        """A digest of the config file; blocking (a bounded read): call it off the loop.

        A file the reader refuses (a FIFO, a device, over the size cap) digests as its
        refusal, so that replacing a good file by one is noticed and reported by a reload.
        """
        if not self.config_path:
            return None
        try:
            return hashlib.sha256(read_regular_file(self.config_path, MAX_CONFIG_BYTES, "config file")).hexdigest()
        except FileReadRefused as exc:
            return f"refused: {exc}"
        except OSError:
            return None

    def _read_and_load(self) -> Config:
        """The config on disk, read and validated; blocking: run off the loop. Raises ConfigError."""
        return self.load_config(read_config_text(self.config_path) if self.config_path else None)

    async def reload(self, trigger: str) -> ReloadResult:
        """Apply the config on disk if it is valid; keep the running one otherwise."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            self.notifier.reloading()
            with self.tracing.span("config.reload", trigger=trigger) as span:
                try:
                    result = await self._reload_locked(trigger)
                except Exception as exc:
                    # Whatever went wrong is a rejected reload, reported as such: a 422, an
                    # error line, last_reload_success 0, never a 500 or a lost task exception.
                    log.exception("reload (%s) failed unexpectedly", trigger)
                    result = self._reload_failed(trigger, [f"reload failed: {exc.__class__.__name__}: {exc}"])
                if span is not None and hasattr(span, "set_attribute"):
                    span.set_attribute("predis.reload.ok", result.ok)
                    span.set_attribute("predis.config.generation", result.generation)
            self.notifier.ready(
                f"config generation {self.generation}" + ("" if result.ok else " (last reload rejected)")
            )
            return result

    async def _reload_locked(self, trigger: str) -> ReloadResult:
        old = self.config
        timeout = float(old.get("agent.reload.timeout_seconds"))
        loop = asyncio.get_running_loop()
        # Reading the file and its secret references and validating run in a thread, under
        # a deadline: the loop keeps serving Redis and HTTP whatever the file holds.
        # The digest is taken first, so that the watch does not retry a file that failed.
        self._watch_digest = await loop.run_in_executor(None, self._file_digest)
        try:
            new = await asyncio.wait_for(loop.run_in_executor(None, self._read_and_load), timeout)
        except ConfigError as exc:
            return self._reload_failed(trigger, [str(p) for p in exc.problems])
        except TimeoutError:
            return self._reload_failed(
                trigger,
                [f"reading and validating the config took more than agent.reload.timeout_seconds ({timeout}s); "
                 "check its secret references (a slow filesystem?) and reload again"],
            )
        except (MemoryError, RecursionError) as exc:
            return self._reload_failed(trigger, [f"reading the config failed: {exc.__class__.__name__}; is the file what you meant?"])
        changed = sorted(changed_paths(old.data, new.data))
        rebind = self.http.needs_rebind(new.section("agent.http"))
        if not changed and not rebind and not self.cache_service.tls_renewed(new.section("cache.resp")):
            result = ReloadResult(True, trigger, time.time(), self.generation, [], [])
            self._finish_reload(result, success=True)
            log.info("reload (%s): no change; generation stays %d", trigger, self.generation)
            return result
        # Dry-build everything that can fail, off to the side, in a thread under the same
        # deadline: it reads TLS files, may start a backend and allocate a rebuilt cache.
        def dry_build() -> tuple[Backend, Any]:
            backend = self._make_backend(new) if section_changed(changed, ["cache.backend"]) else self.backend
            assert backend is not None
            plugins_changed = any(p.startswith("plugins.") for p in changed)
            if section_changed(changed, ["agent.log.file"]):
                _check_log_file(new.section("agent.log"))
            return backend, self.cache_service.plan(new, backend, None if plugins_changed else self.origins)

        building = loop.run_in_executor(None, dry_build)
        try:
            backend, cache_plan = await asyncio.wait_for(asyncio.shield(building), timeout)
        except TimeoutError:
            building.add_done_callback(self._discard_late_plan)
            return self._reload_failed(
                trigger,
                [f"building the new config (TLS files, listeners, cache) took more than agent.reload.timeout_seconds "
                 f"({timeout}s); check the files it names and reload again"],
            )
        except (StartupError, AgentError, OSError) as exc:
            return self._reload_failed(trigger, [str(exc)])
        except Exception as exc:
            return self._reload_failed(trigger, [f"building the new config failed: {exc.__class__.__name__}: {exc}"])
        try:
            site = await self.http.prepare_site(new.section("agent.http")) if rebind else None
            metrics_site = await self._plan_metrics_listener(new)
            if section_changed(changed, ["plugins", "exporters", "agent.sinks"]):
                # Sinks a previous reload turned off finish closing before any is built again.
                await self._settle_sink_closes()
        except Exception as exc:
            self.cache_service.discard(cache_plan)
            reason = str(exc) if isinstance(exc, (StartupError, AgentError, OSError)) else f"{exc.__class__.__name__}: {exc}"
            return self._reload_failed(trigger, [reason])
        if rebind and not section_changed(changed, ["agent.http"]):
            changed.append("agent.http.tls (certificate files renewed)")
        if cache_plan.sock is not None and not section_changed(changed, ["cache.resp"]):
            changed.append("cache.resp.tls (certificate files renewed)")
        # Swap. Everything that can fail was built above; should applying still raise, the
        # previous config, generation and backend are put back and the reload is rejected.
        old_generation, old_backend = self.generation, self.backend
        self.config = new
        self.generation += 1
        self.backend = backend
        try:
            if section_changed(changed, ["agent.log"]):
                logs.configure(new.section("agent.log"))
            if section_changed(changed, ["agent.tracing"]):
                self.tracing.configure(new.section("agent.tracing"))
            if section_changed(changed, ["agent.auth.token_store"]):
                self.tokens = TokenStore(new.get("agent.auth.token_store"))
            fdlimits.set_reserved(new.get("agent.reserved_descriptors"))
            self.http.configure(new.section("agent.http"), new.section("agent.auth"), self.tokens or TokenStore(new.get("agent.auth.token_store")))
            if site is not None:
                await self.http.start(site)
            await self._apply_metrics_listener(new, metrics_site)
            if section_changed(changed, ["mlops", "cache.prefetch", "collectors.access_log"]):
                self.mlops.configure(new)
                self._wake_mlops()
            for what in await self.cache_service.apply(cache_plan):
                log.info("reload: %s", what)
            if section_changed(changed, ["collectors.access_log"]):
                self.cache_service.configure_access_log(new.section("collectors.access_log"))
            if section_changed(changed, ["drift"]):
                self.drift.configure(new.section("drift"))
            if section_changed(changed, ["agent.pid_file"]):
                self._write_pid_file(new)
            changed_plugins = {p.split(".")[1] for p in changed if p.startswith(("plugins.", "exporters."))}
            if changed_plugins or section_changed(changed, ["agent.sinks"]):
                self.host.apply_config(self._plugin_enabled(new))
                # Off the loop: plugins build their objects (SDK clients) and new sinks read
                # their spools from disk.
                await loop.run_in_executor(None, self._register_all, new, changed_plugins)
                self._close_retired_sinks(float(new.get("agent.shutdown_timeout_seconds")))
                self._refresh_routes()
            if cache_plan.origin_deferred:
                self._repoint_origin(new)
        except Exception as exc:
            self.config, self.generation, self.backend = old, old_generation, old_backend
            if section_changed(changed, ["agent.log"]):
                logs.configure(old.section("agent.log"))
            self._close_retired_sinks(float(old.get("agent.shutdown_timeout_seconds")))
            log.exception("reload (%s): applying the new config failed", trigger)
            return self._reload_failed(
                trigger,
                [f"applying the new config failed: {exc.__class__.__name__}: {exc}; generation {old_generation} stays "
                 "in force, but components applied before the failure run with their new settings until the next reload"],
            )
        if self._wake is not None:
            self._wake.set()
        result = ReloadResult(True, trigger, time.time(), self.generation, changed, [])
        self._finish_reload(result, success=True)
        log.info("reload (%s) applied: generation %d; changed: %s", trigger, self.generation, ", ".join(changed))
        self.emit(Event("config_reloaded", {"generation": self.generation, "changed": changed, "trigger": trigger}))
        return result

    def _discard_late_plan(self, building: asyncio.Future[Any]) -> None:
        """Release what a dry-build that finished after its reload gave up on holds."""
        if not building.cancelled() and building.exception() is None:
            self.cache_service.discard(building.result()[1])

    def _reload_failed(self, trigger: str, errors: list[str]) -> ReloadResult:
        result = ReloadResult(False, trigger, time.time(), self.generation, [], errors)
        self._finish_reload(result, success=False)
        self.telemetry["predis_agent_config_reload_failures_total"].inc()
        self.telemetry.end_round()
        log.error(
            "reload (%s) rejected; generation %d keeps running:\n  %s", trigger, self.generation, "\n  ".join(errors)
        )
        self.emit(Event("config_reload_failed", {"generation": self.generation, "errors": errors, "trigger": trigger}))
        return result

    def _finish_reload(self, result: ReloadResult, success: bool) -> None:
        self.last_reload = result
        self._set_config_metrics(success)

    def _set_config_metrics(self, success: bool) -> None:
        self.telemetry["predis_agent_config_generation"].set(self.generation)
        self.telemetry["predis_agent_config_last_reload_success"].set(1 if success else 0)
        self.telemetry["predis_agent_config_last_reload_timestamp_seconds"].set(time.time())
        # A reload is a state change worth a fresh exposition before the next collection round.
        self.telemetry.end_round()

    async def _watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.get("agent.reload.watch_interval_seconds"))
            if not self.config.get("agent.reload.watch") or not self.config_path:
                continue
            try:
                digest = await loop.run_in_executor(None, self._file_digest)
                if digest is not None and digest != self._watch_digest:
                    await self.reload("file-watch")
            except Exception as exc:
                log.error("config watch: %s: %s", exc.__class__.__name__, exc)

    # ------------------------------------------------------------------ drift
    async def _drift_loop(self) -> None:
        """Check the live access stream every ``drift.check_interval_seconds`` (off the loop)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.drift.interval)
            try:
                with self.tracing.span("drift.check"):
                    await loop.run_in_executor(None, self.drift.step)
            except Exception as exc:
                log.error("drift check failed: %s: %s", exc.__class__.__name__, exc)

    # ------------------------------------------------------------------ model lifecycle
    async def _mlops_loop(self) -> None:
        """Follow the registry and start retrains, every ``mlops.check_interval_seconds`` or on a wake-up."""
        assert self._mlops_wake is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.mlops.sync)
                running = self._retrain_future is not None and not self._retrain_future.done()
                due = None if running else self.mlops.pipeline.due()
                if due is not None:
                    self._retrain_future = loop.run_in_executor(None, self.mlops.pipeline.run, *due)
                    self._retrain_future.add_done_callback(lambda _f: self._wake_mlops())
            except Exception as exc:
                log.error("model lifecycle check failed: %s: %s", exc.__class__.__name__, exc)
            self._mlops_wake.clear()
            try:
                await asyncio.wait_for(self._mlops_wake.wait(), timeout=self.mlops.interval)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ collection
    async def _collect_loop(self) -> None:
        """Run collection every ``agent.collect.interval_seconds``, keeping the phase on reload."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            interval = float(self.config.get("agent.collect.interval_seconds"))
            now = time.monotonic()
            base = self.last_collect_monotonic
            due = now if base is None else base + interval
            self.next_collect_monotonic = due
            if due <= now:
                self.last_collect_monotonic = now if base is None or now - due > interval else due
                with self.tracing.span("collect"):
                    await loop.run_in_executor(None, self.collect_once)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=due - now)
            except TimeoutError:
                pass

    def collect_once(self) -> list[Metric]:
        """One collection round: every collector under a timeout, then fan-out to sinks."""
        started = time.monotonic()
        timeout = float(self.config.get("agent.collect.timeout_seconds"))
        futures = []
        for plugin, collector in list(self.collectors):
            key = id(collector)
            with self._collect_lock:
                if key in self._collect_busy:
                    self.host.report_error(plugin, "collect", TimeoutError("previous collect() still running"))
                    continue
                self._collect_busy.add(key)
            futures.append((plugin, collector, key, self._pool.submit(self._run_collector, collector, key)))
        batch: list[Metric] = []
        deadline = started + timeout
        for plugin, collector, _key, future in futures:
            try:
                batch.extend(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                self.host.report_error(plugin, "collect", TimeoutError(f"collect() exceeded {timeout}s"))
            except Exception as exc:
                self.host.report_error(plugin, "collect", exc)
        batch.extend(self.drift.samples())
        batch.extend(self.mlops.samples())
        batch = self.telemetry.set_batch(batch)
        now = time.time()
        interval = float(self.config.get("agent.collect.interval_seconds"))
        due = [sink for sink in list(self.sinks.values()) if sink.due(now, interval)]
        if due:
            pushed = batch + self.telemetry.self_samples()
            for sink in due:
                sink.submit(pushed)
        self.collection_runs += 1
        self.telemetry["predis_agent_collection_runs_total"].inc()
        self.telemetry["predis_agent_collection_duration_seconds"].observe(time.monotonic() - started)
        self.telemetry.end_round()
        return batch

    def _run_collector(self, collector: Any, key: int) -> list[Metric]:
        try:
            return [m for m in collector.collect() if isinstance(m, Metric)]
        finally:
            with self._collect_lock:
                self._collect_busy.discard(key)

    # ------------------------------------------------------------------ health
    async def check_ready(self) -> dict[str, Any]:
        timeout = float(self.config.get("agent.readiness.timeout_seconds"))
        loop = asyncio.get_running_loop()
        components: dict[str, Any] = {}
        backend = self.backend
        checks: list[tuple[str, Any]] = []
        if backend is not None:
            slots = int(self.config.get("cache.self_test_slots"))
            checks.append(("cache", lambda: self.cache_service.self_test(slots)))
        wanted_origin = self.config.get("cache.origin")
        if wanted_origin is not None:
            found = self.cache_service.origin_name == wanted_origin
            components["origin"] = {
                "ok": found,
                "detail": f"read-through from origin {wanted_origin!r}"
                if found
                else f"cache.origin {wanted_origin!r} is not registered by any enabled plugin; read-through is off",
            }
        for plugin, check in self.health_checks:
            name = f"{plugin}.{getattr(check, 'name', 'check')}"
            checks.append((name, check.check))
        for name, func in checks:
            try:
                ok, detail = await asyncio.wait_for(loop.run_in_executor(None, func), timeout=timeout)
            except TimeoutError:
                ok, detail = False, f"check did not finish within {timeout}s"
            except Exception as exc:
                ok, detail = False, f"check raised {exc.__class__.__name__}: {exc}"
            components[name] = {"ok": bool(ok), "detail": str(detail)}
        prefetch = self.mlops.readiness()
        if prefetch is not None:
            components["prefetch"] = {"ok": bool(prefetch[0]), "detail": str(prefetch[1])}
        if backend is None:
            components["cache"] = {"ok": False, "detail": "cache backend not started"}
        ready = all(c["ok"] for c in components.values())
        self.readiness = {"ready": ready, "components": components, "checked_at": time.time()}
        self.telemetry["predis_agent_ready"].set(1 if ready else 0)
        return self.readiness

    async def _livez(self, request: Any) -> Any:
        return json_response({"status": "alive"})

    async def _readyz(self, request: Any) -> Any:
        result = await self.check_ready()
        return json_response(result, status=200 if result["ready"] else 503)

    async def _reload_route(self, request: Any) -> Any:
        if not self.config_path:
            return error_response(409, "running on the embedded default config; there is no file to reload")
        # Shielded: a client that hangs up must not cancel a reload half-way through its swap.
        result = await asyncio.shield(self.spawn(self.reload("api")))
        return json_response(result.public(), status=200 if result.ok else 422)

    def status(self) -> dict[str, Any]:
        backend = self.backend
        return {
            "version": self.version,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "config_generation": self.generation,
            "config_source": self.config_path or "<embedded default>",
            "last_reload": self.last_reload.public() if self.last_reload else None,
            "plugins": self.host.public(),
            "components": {
                **{name: dict(section) for name, section in list(self.component_status.items())},
                "http": {
                    "address": self.http.address,
                    "tls": self.http.tls,
                    "metrics_address": self.metrics_http.address if self.metrics_http is not None else None,
                },
                "cache": {
                    "backend": backend.name if backend else None,
                    "requested": backend.requested if backend else None,
                    "fallback_reason": backend.fallback_reason if backend else None,
                    **self.cache_service.status(),
                },
                "collection": {
                    "runs": self.collection_runs,
                    "interval_seconds": self.config.get("agent.collect.interval_seconds"),
                    "collectors": [f"{p}.{getattr(c, 'name', '?')}" for p, c in self.collectors],
                },
                "tracing": {"otlp_endpoint": self.tracing.endpoint},
                "drift": self.drift.status(),
                "mlops": self.mlops.status(),
                "readiness": self.readiness,
            },
            "sinks": {name: sink.status() for name, sink in self.sinks.items()},
        }

    async def _status(self, request: Any) -> Any:
        return json_response(self.status())

    # ------------------------------------------------------------------ stop
    def request_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    async def run_until_stopped(self) -> None:
        assert self._stop_event is not None
        await self._stop_event.wait()
        await self.stop()

    async def stop(self) -> None:
        self.notifier.stopping()
        log.info("predis-agent stopping")
        for task in list(self._tasks):
            task.cancel()
        self.host.call("predis_agent_shutdown", agent=self)
        await self.cache_service.stop()
        await self.http.stop()
        if self.metrics_http is not None:
            await self.metrics_http.stop()
        timeout = float(self.config.get("agent.shutdown_timeout_seconds"))
        loop = asyncio.get_running_loop()
        for sink in list(self.sinks.values()):
            await loop.run_in_executor(None, sink.close, timeout)
        await self._settle_sink_closes()
        self._close_pool.shutdown(wait=False)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.tracing.flush()
        self.tracing.shutdown()
        pid_file = self.config.get("agent.pid_file")
        if pid_file:
            remove_pid_file(pid_file)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval or 1.0
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)


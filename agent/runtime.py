# SPDX-License-Identifier: Apache-2.0
"""The Agent: a coordinator that takes its components (:mod:`agent.components`) through
start-up, reloads and stop, and runs the schedules (collection, drift, model lifecycle).

Threads: the asyncio loop (HTTP server, signals, schedules, reload) runs in the main
thread; collectors run in a small thread pool under a timeout; each push exporter has
its own sink thread (``agent.sinks``).

Start-up and reload are one path: start-up is a change from nothing to the loaded
config. A reload (SIGHUP, file change, ``POST /reload``) reads and validates the file
(schema and rules: :mod:`agent.config_rules`), dry-builds every component whose sections
changed (bind the new listener, load TLS files, pick the backend, allocate a rebuilt
cache), then swaps them in. Any failure before the swap leaves the running config
untouched and is reported in ``/status``, the log and the ``predis_agent_config_*``
metrics.
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

from agent import __version__, eventloop
from agent.aiops.service import AiopsComponent, AiopsService
from agent.cache_service import CacheService
from agent.components import (
    AccessLogComponent,
    BackendComponent,
    CacheComponent,
    Changes,
    Component,
    DescriptorComponent,
    DriftComponent,
    HistoryComponent,
    HttpComponent,
    LogComponent,
    MetricsListenerComponent,
    ModelComponent,
    PidFileComponent,
    PluginComponent,
    TracingComponent,
)
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
from agent.console import api as console_api
from agent.console.gate import ConsoleComponent, ConsoleGate
from agent.console.pages import ConsolePages
from agent.console.sessions import SessionStore
from agent.errors import AgentError, ConfigError, StartupError
from agent.federated.service import FederatedComponent, FederatedService
from agent.http import HttpServer, Route, error_response, json_response
from agent.mlops.drift_monitor import DriftMonitor
from agent.mlops.service import MlopsService
from agent.plugins import PluginHost
from agent.security import SCOPES, TokenStore
from agent.sinks import ResilientSink
from agent.systemd import Notifier
from agent.telemetry import Metric, Telemetry
from agent.tracing import Tracing
from cache_core.backend import Backend

log = logging.getLogger(__name__)


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


class _Refused(AgentError):
    """A dry-build failed: nothing running was touched. ``reason`` is what to report."""

    def __init__(self, cause: Exception) -> None:
        if isinstance(cause, (AgentError, OSError)):
            self.reason = str(cause)
        else:
            self.reason = f"building the new config failed: {cause.__class__.__name__}: {cause}"
        super().__init__(self.reason)


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
        self.host.error_listeners.append(self._on_plugin_error)
        for (plugin, hook), count in self.host.error_counts().items():
            self.telemetry["predis_agent_plugin_errors_total"].labels(plugin=plugin, hook=hook).inc(count)
        self.config: Config = self.load_config()
        self.generation = 1
        self.started_at = time.time()
        self.last_reload: ReloadResult | None = None
        self.cache_service = CacheService()
        self.readiness: dict[str, Any] = {"ready": False, "components": {}}
        # Sections plugins add to /status "components" (e.g. "gpu": why GPU metrics are off);
        # informational only, never part of readiness. Built-in component names take precedence.
        self.component_status: dict[str, dict[str, Any]] = {}
        self._reload_lock: asyncio.Lock | None = None
        self._stop_event: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="collect")
        self._collect_busy: set[int] = set()
        self._collect_lock = threading.Lock()
        self._watch_digest: str | None = None
        self.collection_runs = 0
        self.drift = DriftMonitor(
            ring_source=lambda: self.cache_service.access_log,
            detectors=lambda: [d for _, d in self.plugins.drift_detectors],
            on_drift=self._on_drift,
        )
        self.mlops = MlopsService(
            emit=lambda kind, data: self.emit(Event(kind, data)),
            prefetcher=lambda: self.cache_service.prefetcher,
            ring=lambda: self.cache_service.access_log,
            on_retrained=lambda dataset: self.drift.policy.refresh_after_retrain(dataset.features()),
        )
        self.cache_service.model_source = self.mlops.champion
        self.federated = FederatedService(ring=lambda: self.cache_service.access_log, emit=lambda kind, data: self.emit(Event(kind, data)))
        self._mlops_wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retrain_future: asyncio.Future[Any] | None = None
        self.last_collect_monotonic: float | None = None
        self.next_collect_monotonic: float | None = None
        # The components, in the order a change applies to them (agent.components).
        self.backend_component = BackendComponent()
        self.plugins = PluginComponent(self.host, self, self.telemetry, self.tracing, self._on_sink_event, self._refresh_routes)
        self.http_component = HttpComponent(self.http)
        console = self.config.section("console")
        self.console = ConsoleGate(
            SessionStore(console["session_ttl_seconds"], console["session_max_seconds"], console["max_sessions"])
        )
        self.http.console = self.console
        self.console_pages = ConsolePages(self, self.console)
        self.metrics_listener = MetricsListenerComponent(self.telemetry, self.http_component)
        self.drift_component = DriftComponent(self.drift)
        self.history = HistoryComponent()
        self.aiops = AiopsService(lambda kind, data: self.emit(Event(kind, data)), self.telemetry, lambda: self.sinks)
        self.cache_component = CacheComponent(self.cache_service, self.backend_component, self.plugins)
        self.components: list[Component] = [
            LogComponent(),
            TracingComponent(self.tracing),
            DescriptorComponent(self.telemetry),
            self.backend_component,
            self.plugins,
            ModelComponent(self.mlops, self._wake_mlops),
            self.cache_component,
            AccessLogComponent(self.cache_service),
            self.http_component,
            self.metrics_listener,
            self.drift_component,
            self.history,
            AiopsComponent(self.aiops, self),
            ConsoleComponent(self.console),
            FederatedComponent(self.federated),
            PidFileComponent(),
        ]
        # At stop: the cache and the listeners first, the sinks flushed, the pid file last.
        self.stop_order: list[Component] = [
            self.cache_component,
            self.http_component,
            self.metrics_listener,
            self.plugins,
            self.history,
            *(c for c in self.components if c.name == "federated"),
            *(c for c in self.components if c.name in ("aiops", "tracing")),
            *(c for c in self.components if c.name == "pid_file"),
        ]

    # What the plugins registered and the running backend (read by plugins and /status).
    @property
    def backend(self) -> Backend | None:
        return self.backend_component.current

    @property
    def tokens(self) -> TokenStore | None:
        return self.http_component.tokens

    @property
    def metrics_http(self) -> HttpServer | None:
        return self.metrics_listener.server

    @property
    def sinks(self) -> dict[str, ResilientSink]:
        return self.plugins.sinks

    @property
    def collectors(self) -> list[tuple[str, Any]]:
        return self.plugins.collectors

    @property
    def health_checks(self) -> list[tuple[str, Any]]:
        return self.plugins.health_checks

    @property
    def drift_detectors(self) -> list[tuple[str, Any]]:
        return self.plugins.drift_detectors

    @property
    def origins(self) -> list[tuple[str, Any]]:
        return self.plugins.origins

    # ------------------------------------------------------------------ config
    def load_config(self, text: str | None = None) -> Config:
        config = load_config(self.config_path, overrides=self.overrides, text=text, **self.host.config_parts())
        for path in config.literal_secrets:  # the path only, never the value
            log.warning("config: %s holds a secret written into the config file; give it as ${env:NAME}, ${file:/path} or ${cred:NAME}", path)
        return config

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        """Start every component: a change from nothing to the loaded config.

        Raises :class:`StartupError` with a clear message.
        """
        self._reload_lock = asyncio.Lock()
        self._stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._mlops_wake = asyncio.Event()
        self.drift_component.wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        changes = Changes((), initial=True)
        try:
            built = await self._build(cfg, changes, float(cfg.get("agent.reload.timeout_seconds")))
            await self._apply(built, cfg, changes)
        except TimeoutError:
            raise StartupError(
                "building the config (TLS files, listeners, cache) took more than agent.reload.timeout_seconds; "
                "check the files it names"
            ) from None
        except _Refused as exc:
            raise StartupError(exc.reason) from None
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
            self.backend.name if self.backend else "no backend",
        )

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

    # ------------------------------------------------------------------ one change
    async def _build(self, new: Config, changes: Changes, timeout: float) -> tuple[list[Component], dict[str, Any]]:
        """Dry-build the components ``changes`` touches for ``new``: ``plan`` in a thread
        under ``timeout``, then ``prepare`` on the loop. Any failure discards every plan and
        raises (:class:`_Refused`, or TimeoutError), leaving everything running as it was.
        """
        touched = [c for c in self.components if changes.touches(c.sections)]
        loop = asyncio.get_running_loop()

        def dry_build() -> dict[str, Any]:
            plans: dict[str, Any] = {}
            try:
                for component in touched:
                    plans[component.name] = component.plan(new, changes, plans)
            except BaseException:
                self._discard(touched, plans)
                raise
            return plans

        building = loop.run_in_executor(None, dry_build)
        try:
            plans = await asyncio.wait_for(asyncio.shield(building), timeout)
        except TimeoutError:
            building.add_done_callback(lambda done: self._discard_late(touched, done))
            raise
        except Exception as exc:
            raise _Refused(exc) from exc
        try:
            for component in touched:
                plans[component.name] = await component.prepare(plans.get(component.name), new, changes)
        except BaseException as exc:
            self._discard(touched, plans)
            if isinstance(exc, Exception):
                raise _Refused(exc) from exc
            raise
        return touched, plans

    async def _apply(self, built: tuple[list[Component], dict[str, Any]], new: Config, changes: Changes) -> list[str]:
        """Swap the dry-built components in, in order; return what was restarted. Should one
        raise, the ones applied keep their new settings and the exception propagates (the
        caller tells every touched component to ``abandon``)."""
        touched, plans = built
        done: list[str] = []
        for index, component in enumerate(touched):
            try:
                done.extend(await component.apply(plans.get(component.name), new, changes))
            except BaseException:
                self._discard(touched[index + 1 :], plans)
                raise
        return done

    @staticmethod
    def _discard(components: list[Component], plans: dict[str, Any]) -> None:
        for component in components:
            if component.name in plans:
                component.discard(plans[component.name])

    def _discard_late(self, components: list[Component], building: asyncio.Future[Any]) -> None:
        """Release what a dry-build that finished after its change gave up on holds."""
        if not building.cancelled() and building.exception() is None:
            self._discard(components, building.result())

    # ------------------------------------------------------------------ routes and events
    def _refresh_routes(self) -> None:
        routes = [
            Route("GET", "/livez", self._livez),
            Route("GET", "/readyz", self._readyz, scope="read"),
            Route("GET", "/status", self._status, scope="read"),
            Route("POST", "/reload", self._reload_route, scope="admin", bounded=False),
            *self.console_pages.routes(),
            *console_api.routes(self),
        ]
        for plugin, route in self.host.collect("predis_agent_register_routes", agent=self):
            if isinstance(route, Route) and route.scope in SCOPES:
                routes.append(Route(route.method, route.path, route.handler, plugin, route.scope))
            elif isinstance(route, Route):
                self.host.report_error(plugin, "predis_agent_register_routes", ValueError(f"route scope {route.scope!r} is not one of {', '.join(SCOPES)}"))
            else:
                self.host.report_error(plugin, "predis_agent_register_routes", TypeError("expected agent.http.Route"))
        self.http.set_routes(routes)
        self.metrics_listener.set_routes(self.http.routes.values())

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
        if self.history.history is not None:
            # Off the caller's thread (often the event loop): a slow disk delays only this.
            try:
                self._pool.submit(self.history.record_event, event.time, event.kind, event.data)
            except RuntimeError:  # the pool is shut down: the agent is stopping
                self.history.record_event(event.time, event.kind, event.data)

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
        """The config on disk, read and validated; blocking: run off the loop. Raises ConfigError.

        Plugins installed since start are imported first, so that the config is validated
        with their sections and the change registers them (:meth:`PluginComponent.renewed`).
        """
        self.plugins.arrived.extend(self.host.load_new_entrypoints())
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
        for component in self.components:
            if not section_changed(changed, component.sections or ()):
                changed.extend(component.renewed(new))
        if not changed:
            result = ReloadResult(True, trigger, time.time(), self.generation, [], [])
            self._finish_reload(result, success=True)
            log.info("reload (%s): no change; generation stays %d", trigger, self.generation)
            return result
        # Everything that can fail is built off to the side first (agent.components); should
        # applying still raise, the previous config and generation are put back.
        if "agent.event_loop" in changed and new.get("agent.event_loop") not in ("auto", eventloop.running()):
            log.warning("reload (%s): agent.event_loop is now %s; the agent keeps running on %s until its next start",
                        trigger, new.get("agent.event_loop"), eventloop.running())
        changes = Changes(tuple(changed))
        try:
            built = await self._build(new, changes, timeout)
        except TimeoutError:
            return self._reload_failed(
                trigger,
                [f"building the new config (TLS files, listeners, cache) took more than agent.reload.timeout_seconds "
                 f"({timeout}s); check the files it names and reload again"],
            )
        except _Refused as exc:
            return self._reload_failed(trigger, [exc.reason])
        old_generation = self.generation
        self.config = new
        self.generation += 1
        try:
            restarted = await self._apply(built, new, changes)
        except Exception as exc:
            self.config, self.generation = old, old_generation
            for component in self.components:
                if changes.touches(component.sections):
                    component.abandon(old, changes)
            log.exception("reload (%s): applying the new config failed", trigger)
            return self._reload_failed(
                trigger,
                [f"applying the new config failed: {exc.__class__.__name__}: {exc}; generation {old_generation} stays "
                 "in force, but components applied before the failure run with their new settings until the next reload"],
            )
        for what in restarted:
            log.info("reload: %s", what)
        if self._wake is not None:
            self._wake.set()
        result = ReloadResult(True, trigger, time.time(), self.generation, changed, [])
        self._finish_reload(result, success=True)
        log.info("reload (%s) applied: generation %d; changed: %s", trigger, self.generation, ", ".join(changed))
        self.emit(Event("config_reloaded", {"generation": self.generation, "changed": changed, "trigger": trigger}))
        return result

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
        """Check the live access stream every ``drift.check_interval_seconds`` (off the loop).

        A reload of the ``drift`` section wakes the wait, so a new interval counts from then
        rather than after the old one ran out.
        """
        wake = self.drift_component.wake
        assert wake is not None
        loop = asyncio.get_running_loop()

        def schedule() -> float:
            self.drift.next_check = time.time() + self.drift.interval  # shown by /status and `status`
            return loop.time() + self.drift.interval

        deadline = schedule()
        while True:
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
            else:
                deadline = schedule()
                continue
            try:
                with self.tracing.span("drift.check"):
                    await loop.run_in_executor(None, self.drift.step)
            except Exception as exc:
                log.error("drift check failed: %s: %s", exc.__class__.__name__, exc)
            deadline = schedule()

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
        for plugin, _collector, _key, future in futures:
            try:
                batch.extend(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                self.host.report_error(plugin, "collect", TimeoutError(f"collect() exceeded {timeout}s"))
            except Exception as exc:
                self.host.report_error(plugin, "collect", exc)
        batch.extend(self.drift.samples())
        batch.extend(self.mlops.samples())
        batch.extend(self.federated.samples())
        batch = self.telemetry.set_batch(batch)
        now = time.time()
        own = self.telemetry.self_samples()
        self.history.record(now, batch + own)
        self.aiops.observe(now, batch + own)
        interval = float(self.config.get("agent.collect.interval_seconds"))
        due = [sink for sink in list(self.sinks.values()) if sink.due(now, interval)]
        if due:
            pushed = batch + own
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
        """Every component's readiness checks, each under ``agent.readiness.timeout_seconds``."""
        config = self.config
        timeout = float(config.get("agent.readiness.timeout_seconds"))
        loop = asyncio.get_running_loop()
        components: dict[str, Any] = {}
        checks = [check for component in self.components for check in component.readiness(config)]
        for name, func in checks:
            try:
                ok, detail = await asyncio.wait_for(loop.run_in_executor(None, func), timeout=timeout)
            except TimeoutError:
                ok, detail = False, f"check did not finish within {timeout}s"
            except Exception as exc:
                ok, detail = False, f"check raised {exc.__class__.__name__}: {exc}"
            components[name] = {"ok": bool(ok), "detail": str(detail)}
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
        return {
            "version": self.version,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "config_generation": self.generation,
            "config_source": self.config_path or "<embedded default>",
            "event_loop": eventloop.running(),
            "last_reload": self.last_reload.public() if self.last_reload else None,
            "plugins": self.host.public(),
            "components": {
                **{name: dict(section) for name, section in list(self.component_status.items())},
                "http": {
                    "address": self.http.address,
                    "tls": self.http.tls,
                    "metrics_address": self.metrics_http.address if self.metrics_http is not None else None,
                    "routes": sorted(f"{method} {path}" for method, path in self.http.routes),
                },
                "cache": self.cache_component.status(),
                "collection": {
                    "runs": self.collection_runs,
                    "interval_seconds": self.config.get("agent.collect.interval_seconds"),
                    "collectors": [f"{p}.{getattr(c, 'name', '?')}" for p, c in self.collectors],
                },
                **{c.name: c.status() for c in self.components if c.name in ("tracing", "drift", "mlops", "history", "aiops", "console", "federated")},
                "readiness": self.readiness,
            },
            "sinks": self.plugins.status(),
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
        for component in self.stop_order:
            if component is self.plugins:
                self._pool.shutdown(wait=False, cancel_futures=True)
            await component.stop(self.config)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval or 1.0
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)


# SPDX-License-Identifier: Apache-2.0
"""The agent's side of federated learning: a Flower ClientApp answered in a thread of its own.

With ``mlops.federated.enabled`` the agent starts its Flower SuperNode (a child process,
agent.federated.runtime) against the fleet's SuperLink at ``mlops.federated.server`` and
answers the SuperNode's ClientApp tasks in its client thread with the ClientApp of
agent.federated.flower_app (the host's agent.federated.client): each round of a run, then,
after the evaluate step of the run's last round, keeps the final aggregate, waits
``retry_interval_seconds`` and takes part in the next run. A server that is down or slow
costs this thread retries (the SuperNode's ``max_retries`` / ``max_wait_seconds``, after
which it exits), a doubling back-off (``backoff_seconds`` up to ``max_backoff_seconds``) and
a circuit breaker (pybreaker, as the exporters' sinks: after ``breaker_failures`` failed
runs in a row no SuperNode is started for ``breaker_reset_seconds``), never a request: the
thread only reads the access-log ring (one short copy under its lock) or the exported
segments (``source: segments``), and the cache never waits on it. ``enabled: false`` is the
host's opt-out: nothing is sent. The SuperNode authenticates with ``auth_key_file`` (checked:
0600, an ECDSA OpenSSH key) and hands its tasks only to this thread (a SuperExec secret made
for each SuperNode).

A run's result is never served as such: with ``register`` on, the agent builds a
challenger (the tenant's champion, or a fresh mixture when there is none, with the template
expert carrying the fleet's rates), registers it with its provenance (server, rounds,
examples, privacy settings and ε) and makes it the challenger; the model lifecycle then
runs its test inference and the canary against the local champion, which promotes it or
rolls it back (docs/models.md).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.components import BaseComponent, Changes
from agent.config import Config, Secret
from agent.errors import AgentError
from agent.federated.privacy import PrivacyAccountant, PrivacySettings
from agent.mlops.dataset import parse_key
from agent.telemetry import MLOPS_METRICS, Metric, sample

log = logging.getLogger("predis.federated")
_SPECS = {spec.name: spec for spec in MLOPS_METRICS}
# What the federated extra brings (checked before the client thread starts).
EXTRA_MODULES = ("flwr", "dp_accounting")
# The most keys one round reads from the ring at a time (the ring's own bound applies too).
READ_CHUNK = 1 << 16
# How often the client thread asks its SuperNode for a task while it waits for a round.
TASK_POLL_SECONDS = 0.2


def _describe(exc: BaseException) -> str:
    """An exception as its type and the first line of its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


class FederatedRunError(AgentError):
    """A run this host took part in ended before its last round."""


class FederatedService:
    """Runs the client thread and keeps the record of its rounds for /status and /metrics."""

    def __init__(self, ring: Callable[[], Any], emit: Callable[[str, dict[str, Any]], None]) -> None:
        self._ring = ring
        self._emit = emit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.section: dict[str, Any] = {}
        self.mlops: dict[str, Any] = {}
        self.vocabulary_size = 0
        self.last_version: int | None = None
        self.register_error: str | None = None
        self._final = False
        self._cursor = 0  # the ring sequence the next round reads from
        self._segments_read: set[str] = set()  # exported segments a round has read (source: segments)
        self.access_log: dict[str, Any] = {}
        self.scorer: Any = None
        self.accountant = PrivacyAccountant(PrivacySettings())
        self.rounds_completed = 0
        self.runs = {"ok": 0, "error": 0}
        self.last_round_at: float | None = None
        self.last_result: str | None = None
        self.last_loss: float | None = None
        self.state = "disabled"
        self._breaker: Any = None
        self._node: Any = None  # the host's SuperNode (agent.federated.runtime.FlowerProcess)
        self._node_address = ""
        self._node_secret = b""  # the SuperExec secret its Runtime API's tasks are acquired with

    # -- lifecycle ----------------------------------------------------------------------
    def configure(self, cfg: Config) -> None:
        """Apply ``cfg``; the client thread restarts only when ``mlops.federated`` changed."""
        section = cfg.section("mlops.federated")
        with self._lock:
            self.mlops = cfg.section("mlops")
            self.access_log = cfg.section("collectors.access_log")
            self.vocabulary_size = int(cfg.section("cache.prefetch")["vocabulary_size"])
            if section == self.section and (self._thread is not None or not section["enabled"]):
                return
        self.stop()
        with self._lock:
            self.section = dict(section)
            if not section["enabled"]:
                self.state = "disabled"
                return
            missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
            if missing:
                self.state = "error"
                self.last_result = f"the federated extra is not installed (pip install 'predis-agent[federated]'): no {', '.join(missing)}"
                log.error("federated: %s", self.last_result)
                return
            if section["auth_key_file"]:
                from agent.federated.runtime import KeyFileError, check_private_key

                try:
                    check_private_key(section["auth_key_file"])
                except KeyFileError as exc:
                    self.state = "error"
                    self.last_result = f"mlops.federated.auth_key_file: {exc}"
                    log.error("federated: %s; no SuperNode is started", self.last_result)
                    return
            self.accountant = PrivacyAccountant(PrivacySettings(section["clip_norm"], float(section["noise_multiplier"]), float(section["delta"])))
            self.state = "starting"
        stop = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(target=self._run, args=(stop, dict(section)), name="predis-federated", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Tell the client thread to end and stop the host's SuperNode (the thread is a daemon:
        an agent that stops never waits for a round; the server counts the host as gone)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread = None
        with self._lock:
            node, self._node = self._node, None
        if node is not None:
            node.stop()

    # -- the client thread --------------------------------------------------------------
    def _keys(self) -> list[bytes]:
        """The raw keys read since the last round, from the configured source."""
        if self.section.get("source") == "segments":
            return self._segment_keys()
        ring = self._ring()
        if ring is None:
            return []
        out: list[bytes] = []
        while True:
            got = ring.read(self._cursor, READ_CHUNK)
            self._cursor = got.next_sequence
            out += [k for k in (got.keys or ()) if k is not None]
            if got.events.shape[0] < READ_CHUNK:
                return out

    def _segment_keys(self) -> list[bytes]:
        """The keys of the exported segments not read by an earlier round, oldest first; a
        segment that fails verification is skipped (and not read again)."""
        from agent.mlops.dataset import SegmentError, list_segments, read_segments

        directory = self.access_log.get("export_dir")
        if not directory or not Path(directory).is_dir():
            return []
        material = self.access_log.get("encryption_key")
        text = material.reveal_bytes() if isinstance(material, Secret) else material
        keys = [parse_key(text)] if text else []
        fresh = [name for name in list_segments(directory) if name not in self._segments_read]

        def skip(exc: SegmentError) -> None:
            log.warning("federated: skipping a segment that failed verification: %s", exc)

        out: list[bytes] = []
        for data in read_segments(directory, keys, on_error=skip, names=fresh):
            out += [k for k in (data.keys or ()) if k is not None]
        self._segments_read.update(fresh)
        return out

    def _on_round(self, info: dict[str, Any]) -> None:
        with self._lock:
            if info["step"] == "fit":
                self.rounds_completed += 1
                self.last_round_at = time.time()
                self.state = "training"
            else:
                self.last_loss = float(info["loss"])
                self._final = self._final or bool(info["final"])
        self._emit(f"federated_{info['step']}", {k: v for k, v in info.items() if k not in ("step", "final")})

    def _run(self, stop: threading.Event, section: dict[str, Any]) -> None:
        import pybreaker
        from flwr.supercore.logger import console_handler

        from agent.federated import flower_app, runtime
        from agent.federated.client import TemplateClient
        from cache_core.models.template import TemplateScorer

        # Flower's records go through the agent's logging only (its format, its files), once,
        # and without Flower's per-message debug lines.
        flower_log = logging.getLogger("flwr")
        flower_log.removeHandler(console_handler)
        flower_log.setLevel(logging.INFO)
        runtime.quiet_http_logs()
        self.scorer = self.scorer or TemplateScorer()
        backoff = float(section["backoff_seconds"])
        # Failed runs in a row open the breaker: no connection is tried until it half-opens.
        breaker = pybreaker.CircuitBreaker(fail_max=int(section["breaker_failures"]), reset_timeout=float(section["breaker_reset_seconds"]))
        self._breaker = breaker
        while not stop.is_set():
            client = TemplateClient(self.scorer, self._keys, self.accountant.settings, self.accountant, self._on_round)
            flower_app.register(client, bool(section["secure_aggregation"]))
            with self._lock:
                self.state = "connecting"
                self._final = False
            try:
                breaker.call(self._attempt, stop, section)
            except pybreaker.CircuitBreakerError as exc:
                # The run that opened the breaker (or failed its trial) is the exception's context.
                why = f" ({_describe(exc.__context__)})" if exc.__context__ is not None else ""
                result, ok, wait = f"error: {exc}{why}", False, float(section["breaker_reset_seconds"])
            except Exception as exc:
                result, ok, wait = f"error: {_describe(exc)}", False, backoff
            else:
                result, ok, wait = "ok", True, float(section["retry_interval_seconds"])
            if stop.is_set():
                return
            with self._lock:
                self.runs["ok" if ok else "error"] += 1
                self.last_result = result
                self.state = "waiting" if ok else "backing_off"
            self._emit("federated_run", {"result": result})
            if ok:
                backoff = float(section["backoff_seconds"])
                if section["register"]:
                    self._register()
            else:
                log.warning("federated: run against %s failed (%s); next try in %.1fs", section["server"], result, wait)
                backoff = min(2 * backoff, float(section["max_backoff_seconds"]))
            stop.wait(wait)

    def _attempt(self, stop: threading.Event, section: dict[str, Any]) -> None:
        """One run: this thread answers the ClientApp tasks of the host's SuperNode until the
        evaluate step of the run's last round. The SuperNode (started when there is none)
        outlives the run, so that it delivers the last reply and the next run finds it
        connected. Raises when it exits during the run (the server was not reachable in
        ``max_retries`` / ``max_wait_seconds``, or went away) or a task fails; returns early
        when the agent stops."""
        import httpx

        from agent.federated import flower_app, runtime

        node = self._supernode(stop, section)
        if node is None:
            return
        acquirer = runtime.runtime_client(self._node_address, None, None, "SuperExec", self._node_secret)
        try:
            while not stop.is_set() and not self._final:
                code = node.poll()
                if code is not None:
                    # Flower's last error line says why: unreachable, TLS, or a key the server refused.
                    why = node.exit_reason() or f"the server {section['server']} was not reachable or went away"
                    raise FederatedRunError(f"the SuperNode exited with status {code}: {why}")
                try:
                    task = runtime.acquire(acquirer, runtime.CLIENT_TASK)
                except httpx.TransportError:
                    task = None  # its Runtime API is not up yet
                if task is None:
                    stop.wait(TASK_POLL_SECONDS)
                    continue
                with self._lock:
                    self.state = "training"
                runtime.run_client_task(self._node_address, task[0], flower_app.client_app)
        finally:
            acquirer.close()

    def _supernode(self, stop: threading.Event, section: dict[str, Any]) -> Any:
        """The host's running SuperNode, started (again) when there is none; None once stopping."""
        from agent.federated import runtime

        with self._lock:
            node = self._node
        if node is not None and node.poll() is None:
            return node
        if node is not None:
            node.stop()
        port = runtime.free_loopback_port()
        with self._lock:
            if stop.is_set():
                self._node = None
                return None
            # A fresh SuperExec secret for each SuperNode: no other local process takes its tasks.
            secret = runtime.new_secret()
            node = runtime.start_supernode(
                section["server"], section["tls"]["ca_file"], port, int(section["max_retries"]), float(section["max_wait_seconds"]), secret, section["auth_key_file"]
            )
            self._node, self._node_address, self._node_secret = node, f"127.0.0.1:{port}", secret
        return node

    def _register(self) -> None:
        """Register the fleet's model as the tenant's challenger (see the module docstring)."""
        from agent.mlops.registry import ModelRegistry, save_model
        from cache_core.models import MixtureModel, Vocabulary, make_model

        scorer = copy.deepcopy(self.scorer)
        registry = ModelRegistry(self.mlops["registry_dir"])
        tenant = self.mlops["tenant"]
        try:
            champion = registry.aliases(tenant)["champion"]
            model, vocab = registry.load_model(tenant, champion) if champion is not None else (None, None)
            if not isinstance(model, MixtureModel) or vocab is None:
                vocab = Vocabulary(self.vocabulary_size)
                model = make_model("federated", vocab)
            if model.template is None:
                model.add_template(vocab, scorer)
            else:
                model.template.set_shared([scorer.shared_pair, scorer.shared_source])
            privacy = self.accountant.settings
            meta = {
                "kind": "federated",
                "parent": champion,
                "federated": {
                    "server": self.section["server"],
                    "rounds": self.rounds_completed,
                    "host_examples": int(scorer.examples),
                    "loss": self.last_loss,
                    "clip_norm": privacy.clip_norm,
                    "noise_multiplier": privacy.noise_multiplier,
                    "epsilon": self.accountant.epsilon(),
                    "delta": privacy.delta if self.accountant.active else None,
                },
            }
            with tempfile.TemporaryDirectory(prefix="predis-federated-") as staging:
                files = save_model(model, vocab, staging)
                version = registry.register(tenant, [f"{staging}/{name}" for name in files], meta, first_is_champion=False)
            base = f"champion v{champion}" if champion is not None else "the fresh local model"
            registry.promote(tenant, version, "challenger", f"federated run of {self.rounds_completed} round(s); a canary against {base} decides", "predis-agent federated")
        except (AgentError, OSError, ValueError) as exc:
            with self._lock:
                self.register_error = f"{type(exc).__name__}: {exc}"
            log.error("federated: the fleet's model was not registered: %s", exc)
            return
        with self._lock:
            self.last_version = version
            self.register_error = None
        log.info("federated: registered v%d of tenant %s as the challenger", version, tenant)
        self._emit("federated_registered", {"tenant": tenant, "version": version, "parent": champion})

    # -- reporting ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": bool(self.section.get("enabled", False)),
                "server": self.section.get("server"),
                "tls": bool(self.section.get("tls", {}).get("ca_file")),
                "authenticated": bool(self.section.get("auth_key_file")),
                "state": self.state,
                "rounds_completed": self.rounds_completed,
                "last_round_at": self.last_round_at,
                "last_result": self.last_result,
                "last_loss": self.last_loss,
                "runs": dict(self.runs),
                "breaker": None if self._breaker is None else str(self._breaker.current_state),
                "examples": 0 if self.scorer is None else int(self.scorer.examples),
                "epsilon_spent": self.accountant.epsilon(),
                "delta": self.accountant.settings.delta if self.accountant.active else None,
                "registered_version": self.last_version,
                "register_error": self.register_error,
            }

    def samples(self) -> list[Metric]:
        with self._lock:
            out = [sample(_SPECS["predis_mlops_federated_runs_total"], float(n), {"result": r}) for r, n in sorted(self.runs.items())]
            out.append(sample(_SPECS["predis_mlops_federated_rounds_total"], float(self.rounds_completed)))
            epsilon = self.accountant.epsilon()
        if epsilon is not None:
            out.append(sample(_SPECS["predis_mlops_federated_epsilon"], epsilon))
        return out


class FederatedComponent(BaseComponent):
    """:class:`FederatedService`, restarted when ``mlops.federated`` changes (``mlops``,
    ``cache.prefetch`` and the access log's export apply at once)."""

    name = "federated"
    sections = ("mlops", "cache.prefetch", "collectors.access_log")

    def __init__(self, service: FederatedService) -> None:
        self.service = service

    async def apply(self, plan: Any, new: Config, changes: Changes) -> list[str]:
        self.service.configure(new)
        return []

    def status(self) -> dict[str, Any]:
        return self.service.status()

    async def stop(self, config: Config) -> None:
        self.service.stop()

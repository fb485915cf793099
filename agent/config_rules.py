# SPDX-License-Identifier: Apache-2.0
"""Config rules the JSON Schema cannot say: one key's value constrains another's.

They run after the schema (on the defaults-filled, secret-resolved data) inside
:func:`agent.config.load_config`, so ``predis-agent config validate``, ``predis-agent run``
and every reload (SIGHUP, file watch, ``POST /reload``) accept and refuse exactly the
same files, each problem naming its rule::

    cache.prefetch.enabled: true needs cache.origin: prefetching loads from an origin;
    name one (e.g. files, s3, redis) [rule prefetch-needs-origin]

What no rule can know from the file alone is checked when a component starts: that a
certificate file exists, a port is free, a GPU is present, an origin plugin is enabled.

Every rule is listed in :data:`RULES` (docs/configuration.md renders the table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigProblem, StartupError
from agent.net import is_loopback, split_listen

Finding = tuple[str, str]  # (dotted key path, problem)


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: ``check`` yields a (path, problem) per violation."""

    name: str
    summary: str
    check: Callable[[Mapping[str, Any]], Iterator[Finding]]


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _reveal(value: Any) -> str:
    reveal = getattr(value, "reveal", None)
    return str(reveal()) if callable(reveal) else str(value)


# --------------------------------------------------------------------------- the rules
LISTENERS = ("agent.http.listen", "cache.resp.listen", "exporters.prometheus.listen")
TLS_SECTIONS = ("agent.http.tls", "cache.resp.tls")


def _listen_addresses(data: Mapping[str, Any]) -> Iterator[Finding]:
    for path in LISTENERS:
        value = _at(data, path)
        if isinstance(value, str):
            parsed = split_listen(value)
            if isinstance(parsed, str):
                yield path, parsed


def _tls_files(data: Mapping[str, Any]) -> Iterator[Finding]:
    for path in TLS_SECTIONS:
        tls = _at(data, path)
        if isinstance(tls, Mapping) and tls.get("enabled") and not (tls.get("cert_file") and tls.get("key_file")):
            yield f"{path}.enabled", "is true but cert_file and key_file are not both set"


def _resp_password(data: Mapping[str, Any]) -> Iterator[Finding]:
    value = _at(data, "cache.resp.requirepass")
    if value is not None and not _reveal(value):
        yield (
            "cache.resp.requirepass",
            "is empty (or its secret reference resolves to an empty string): set a non-empty password, "
            "or remove the key to serve without one on a loopback address",
        )


def _resp_public(data: Mapping[str, Any]) -> Iterator[Finding]:
    resp = _at(data, "cache.resp")
    if not isinstance(resp, Mapping) or not resp.get("enabled") or resp.get("requirepass") is not None:
        return
    parsed = split_listen(str(resp.get("listen", "")))
    if not isinstance(parsed, str) and not is_loopback(parsed[0]):
        yield (
            "cache.resp.listen",
            f"is {resp['listen']!r}, not a loopback address, but cache.resp.requirepass is not set: "
            "set a password (as a secret reference) or listen on 127.0.0.1",
        )


def _read_through(data: Mapping[str, Any]) -> Iterator[Finding]:
    if _at(data, "cache.read_through") and _at(data, "cache.origin") is None:
        yield "cache.read_through", "is true but cache.origin is not set: name an origin, e.g. files"


def _origin_plugin(data: Mapping[str, Any]) -> Iterator[Finding]:
    origin = _at(data, "cache.origin")
    plugin = _at(data, f"plugins.{origin}") if isinstance(origin, str) and "." not in origin else None
    if isinstance(plugin, Mapping) and plugin.get("enabled") is False:
        yield "cache.origin", f"is {origin!r} but plugins.{origin}.enabled is false: enable the plugin or name another origin"


def _prefetch_origin(data: Mapping[str, Any]) -> Iterator[Finding]:
    if _at(data, "cache.prefetch.enabled") and _at(data, "cache.origin") is None:
        yield (
            "cache.prefetch.enabled",
            "is true but cache.origin is not set: prefetching loads from an origin; name one (e.g. files, s3, redis)",
        )


def _prefetch_thresholds(data: Mapping[str, Any]) -> Iterator[Finding]:
    prefetch = _at(data, "cache.prefetch")
    if isinstance(prefetch, Mapping) and prefetch.get("enabled"):
        low, high = prefetch.get("min_threshold"), prefetch.get("max_threshold")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
            yield "cache.prefetch.min_threshold", f"({low}) is above cache.prefetch.max_threshold ({high})"


def _ring_capacity(data: Mapping[str, Any]) -> Iterator[Finding]:
    capacity = _at(data, "collectors.access_log.ring_capacity")
    if isinstance(capacity, int) and capacity > 0 and capacity & (capacity - 1):
        yield (
            "collectors.access_log.ring_capacity",
            f"is {capacity}; it must be a power of two (e.g. {1 << capacity.bit_length()})",
        )


def _aiops_live(data: Mapping[str, Any]) -> Iterator[Finding]:
    opt_in = _at(data, "aiops.remediation.opt_in") or []
    for name in _at(data, "aiops.remediation.live") or []:
        if name not in opt_in:
            yield "aiops.remediation.live", f"names {name!r}, which aiops.remediation.opt_in does not; an action acts only when opted in"


def _aiops_windows(data: Mapping[str, Any]) -> Iterator[Finding]:
    window, least = _at(data, "aiops.forecast.window_rounds"), _at(data, "aiops.forecast.min_rounds")
    if isinstance(window, int) and isinstance(least, int) and least > window:
        yield "aiops.forecast.min_rounds", f"is {least}, more than aiops.forecast.window_rounds {window}: no ETA could ever be published"
    window, warmup = _at(data, "aiops.anomaly.window_rounds"), _at(data, "aiops.anomaly.warmup_rounds")
    if isinstance(window, int) and isinstance(warmup, int) and warmup > window:
        yield "aiops.anomaly.warmup_rounds", f"is {warmup}, more than aiops.anomaly.window_rounds {window}: no anomaly could ever be raised"


def _rollout_steps(data: Mapping[str, Any]) -> Iterator[Finding]:
    from agent.config import settings_of
    from agent.mlops.rollout import RolloutError, RolloutSettings

    rollout = _at(data, "mlops.rollout")
    if isinstance(rollout, Mapping):
        try:
            settings_of(RolloutSettings, rollout).check()
        except RolloutError as exc:
            yield "mlops.rollout", str(exc)


def _federated(data: Mapping[str, Any]) -> Iterator[Finding]:
    section = _at(data, "mlops.federated")
    if not isinstance(section, Mapping) or not section.get("enabled"):
        return
    if section.get("noise_multiplier") and section.get("clip_norm") is None:
        yield "mlops.federated.noise_multiplier", "needs mlops.federated.clip_norm: noise is scaled to the clip norm"
    if not _at(data, "collectors.access_log.enabled") or not _at(data, "collectors.access_log.store_raw_keys"):
        yield "mlops.federated.enabled", "needs collectors.access_log with enabled and store_raw_keys: true (the host learns template transitions from its keys)"
    if section.get("source") == "segments" and not (_at(data, "collectors.access_log.export_dir") and _at(data, "collectors.access_log.encryption_key")):
        yield "mlops.federated.source", "segments needs collectors.access_log.export_dir and encryption_key (the host learns from the segments it exported)"
    parsed = split_listen(str(section.get("server", "")))
    if isinstance(parsed, str):
        yield "mlops.federated.server", parsed
    elif section.get("tls", {}).get("ca_file") is None and not is_loopback(parsed[0]):
        yield "mlops.federated.tls.ca_file", f"is needed for the non-loopback server {parsed[0]}: updates never travel in clear text off the host"
    if section.get("auth_key_file") and section.get("tls", {}).get("ca_file") is None:
        yield "mlops.federated.auth_key_file", "needs mlops.federated.tls.ca_file: Flower's SuperNode authentication runs over TLS only"


RULES: tuple[Rule, ...] = (
    Rule("listen-address", "every listen address is host:port ([v6]:port) with a port in 0..65535", _listen_addresses),
    Rule("tls-needs-cert-and-key", "a TLS section that is enabled names both cert_file and key_file", _tls_files),
    Rule("resp-password-not-empty", "cache.resp.requirepass, when given, is not empty", _resp_password),
    Rule("resp-public-needs-password", "a RESP listener on a non-loopback address has cache.resp.requirepass", _resp_public),
    Rule("read-through-needs-origin", "cache.read_through needs cache.origin", _read_through),
    Rule("origin-plugin-enabled", "cache.origin does not name a plugin whose section says enabled: false", _origin_plugin),
    Rule("prefetch-needs-origin", "cache.prefetch.enabled needs cache.origin", _prefetch_origin),
    Rule("prefetch-thresholds-ordered", "with prefetching on, cache.prefetch.min_threshold <= max_threshold", _prefetch_thresholds),
    Rule("aiops-live-opted-in", "every action in aiops.remediation.live is in aiops.remediation.opt_in", _aiops_live),
    Rule("aiops-windows", "aiops.forecast.min_rounds <= window_rounds and aiops.anomaly.warmup_rounds <= window_rounds", _aiops_windows),
    Rule("ring-capacity-power-of-two", "collectors.access_log.ring_capacity is a power of two", _ring_capacity),
    Rule(
        "rollout-steps",
        "mlops.rollout.steps increase above 0 and end at 1.0 with one share below it; 2 <= min_blocks <= max_blocks",
        _rollout_steps,
    ),
    Rule(
        "federated-settings",
        "mlops.federated.enabled needs the access log with raw keys (and its export for source: segments), a HOST:PORT server, TLS off loopback and with auth_key_file, and clip_norm when noise is on",
        _federated,
    ),
)


def check_rules(data: Mapping[str, Any], rules: tuple[Rule, ...] = RULES) -> list[ConfigProblem]:
    """Every violation of ``rules`` in the (schema-valid) ``data``, each naming its rule."""
    return [ConfigProblem(path, f"{problem} [rule {rule.name}]") for rule in rules for path, problem in rule.check(data)]


def enforce(data: Mapping[str, Any], section: str) -> None:
    """Raise :class:`StartupError` for a violated rule at or under ``section``.

    A component runs this on what it is handed, so a config built without
    :func:`agent.config.load_config` (a plugin, a test) still cannot, say, open a
    non-loopback Redis port without a password.
    """
    problems = [p for p in check_rules(data) if p.path == section or p.path.startswith(section + ".")]
    if problems:
        raise StartupError("; ".join(str(p) for p in problems))

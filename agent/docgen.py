# SPDX-License-Identifier: Apache-2.0
"""Markdown generated from the config schema: ``docs/configuration.md``.

The schema is the single source of every key, default and range, so the reference is
rendered from it rather than written by hand; ``tests/unit/test_docs.py`` fails when
the file in ``docs/`` and the generator disagree. ``docs/metrics.md`` is generated the
same way from the metric registry in ``agent/telemetry.py`` (:func:`render_metrics_doc`). The hand-written guide that follows
the tables (where the file is found, secrets, hot reload) lives here too, so that the
whole file is reproduced by one command: ``predis-agent config docs``.

Output is deterministic: sections and keys appear in schema order, values are JSON.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.telemetry import MetricSpec

GENERATOR_COMMAND = "predis-agent config docs > docs/configuration.md"


def builtin_schema() -> dict[str, Any]:
    """The merged schema with the built-in plugins only (what ``docs/configuration.md`` holds)."""
    from agent.config import build_schema
    from agent.plugins import PluginHost

    return build_schema(**PluginHost(load_entrypoints=False).schema_parts())


# ---------------------------------------------------------------------------
# Walking the schema
# ---------------------------------------------------------------------------


def _is_section(node: Mapping[str, Any]) -> bool:
    """An object with declared properties is a section; anything else is a leaf key."""
    return isinstance(node.get("properties"), Mapping)


def iter_sections(
    schema: Mapping[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any], list[tuple[str, Mapping[str, Any]]]]]:
    """Yield (section path, section schema, [(leaf name, leaf schema)]) in pre-order."""
    props: Mapping[str, Any] = schema.get("properties", {})
    leaves = [(name, sub) for name, sub in props.items() if not _is_section(sub)]
    yield path, schema, leaves
    for name, sub in props.items():
        if _is_section(sub):
            yield from iter_sections(sub, (*path, name))


def leaf_keys(schema: Mapping[str, Any]) -> list[str]:
    """Dotted paths of every leaf key, in schema order."""
    return [".".join((*path, name)) for path, _section, leaves in iter_sections(schema) for name, _leaf in leaves]


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------


def _code(text: str) -> str:
    """A Markdown code span that survives backticks and table pipes in ``text``."""
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def _cell(text: str) -> str:
    """Plain text for a table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _type_text(node: Mapping[str, Any]) -> str:
    if "const" in node:
        return f"constant {_code(_json(node['const']))}"
    if "enum" in node:
        return "one of " + ", ".join(_code(_json(v)) for v in node["enum"])
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives and "type" not in node:
        return " or ".join(_type_text(alt) for alt in alternatives)
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if not kinds:
        return "any"
    words = []
    for item in kinds:
        if item == "array" and isinstance(node.get("items"), Mapping):
            words.append(f"array of {_type_text(node['items'])}")
        else:
            words.append(str(item))
    return " or ".join(words)


def _number(value: Any) -> str:
    return _json(value)


def _range_text(node: Mapping[str, Any]) -> str:
    parts: list[str] = []
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        parts.append(f"{_number(low)} … {_number(high)}")
    elif low is not None:
        parts.append(f"≥ {_number(low)}")
    elif high is not None:
        parts.append(f"≤ {_number(high)}")
    if node.get("exclusiveMinimum") is not None:
        parts.append(f"> {_number(node['exclusiveMinimum'])}")
    if node.get("exclusiveMaximum") is not None:
        parts.append(f"< {_number(node['exclusiveMaximum'])}")
    if node.get("minLength") is not None:
        parts.append(f"min length {node['minLength']}")
    if node.get("maxLength") is not None:
        parts.append(f"max length {node['maxLength']}")
    if node.get("pattern") is not None:
        parts.append(f"pattern {_code(str(node['pattern']))}")
    if node.get("format") is not None:
        parts.append(f"format {node['format']}")
    if node.get("minItems") is not None:
        parts.append(f"min items {node['minItems']}")
    if node.get("maxItems") is not None:
        parts.append(f"max items {node['maxItems']}")
    if node.get("uniqueItems"):
        parts.append("items unique")
    items = node.get("items")
    if isinstance(items, Mapping):
        inner = _range_text(items)
        if inner:
            parts.append(f"each item: {inner}")
    return "; ".join(parts)


def _default_text(node: Mapping[str, Any]) -> str:
    return _code(_json(node["default"])) if "default" in node else "(none)"


# ---------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------

_TABLE_HEAD = "| Key | Type | Default | Range | Description |\n|---|---|---|---|---|\n"


def _section_intro(path: tuple[str, ...], node: Mapping[str, Any]) -> str:
    text = _cell(str(node.get("description", "")))
    if len(path) == 2 and path[0] == "plugins" and not text:
        text = (
            f"Section of the `{path[1]}` plugin. `enabled` is added by the agent; the other keys "
            "come from the plugin's `predis_agent_config_schema()` hook."
        )
    return text


def render_config_reference(schema: Mapping[str, Any]) -> str:
    """Render ``schema`` (as built by :func:`agent.config.build_schema`) as Markdown tables."""
    title = schema.get("title") or "Configuration"
    out: list[str] = [f"# {title}\n\n"]
    out.append(
        "<!-- Generated by `predis-agent config docs` from config_schema/agent.schema.json and the "
        "built-in plugins' schema fragments. Do not edit by hand: run "
        f"`{GENERATOR_COMMAND}`. -->\n\n"
    )
    if schema.get("description"):
        out.append(_cell(str(schema["description"])) + "\n\n")
    out.append(
        "The agent reads one YAML file. Every key is optional: an empty file (or no file at all) "
        "means the defaults below. Each table lists one section; a key is written in YAML by "
        "nesting its dotted path, so `agent.http.listen` is `listen` under `http` under `agent`. "
        "*Type* and *Default* are given in JSON terms (YAML `null`, `true`, numbers and strings "
        "mean the same); *Range* lists the limits that validation enforces. A value outside its "
        "range, an unknown key or a wrong type makes the whole file invalid, and every problem is "
        "reported with its key path and line (see [Validation](#validation-and-error-messages)).\n\n"
        "How the file is found, secret references, `--set` overrides and hot reload are described "
        "after the tables.\n\n"
    )
    for path, node, leaves in iter_sections(schema):
        if not path:
            if leaves:
                out.append("## Top level\n\n")
                out.append(_table((), leaves))
            continue
        out.append(f"## `{'.'.join(path)}`\n\n")
        intro = _section_intro(path, node)
        if intro:
            out.append(intro + "\n\n")
        if leaves:
            out.append(_table(path, leaves))
    return "".join(out)


def _table(path: tuple[str, ...], leaves: list[tuple[str, Mapping[str, Any]]]) -> str:
    rows = [_TABLE_HEAD]
    for name, leaf in leaves:
        key = ".".join((*path, name))
        rows.append(
            f"| `{key}` | {_type_text(leaf)} | {_default_text(leaf)} | {_range_text(leaf) or '—'} | "
            f"{_cell(str(leaf.get('description', '')))} |\n"
        )
    rows.append("\n")
    return "".join(rows)


def render_configuration_doc(schema: Mapping[str, Any]) -> str:
    """The whole ``docs/configuration.md``: the generated reference, the rules, then the guide."""
    return render_config_reference(schema) + render_config_rules() + CONFIG_GUIDE


def render_config_rules() -> str:
    """The rules across keys, as a table: the core's (:mod:`agent.config_rules`), then the
    built-in plugins' (``predis_agent_config_rules``)."""
    from agent.config_rules import RULES
    from agent.plugins import PluginHost

    rules = (*RULES, *PluginHost(load_entrypoints=False).config_rules())

    lines = [
        "## Rules across keys",
        "",
        "After the schema, these rules run on the whole config. `config validate`, `run` and every",
        "reload apply the same ones; a problem names its rule, e.g.",
        "`cache.prefetch.enabled: is true but cache.origin is not set: ... [rule prefetch-needs-origin]`.",
        "What a file alone cannot tell (a certificate file exists, a port is free, a GPU is there, an",
        "origin plugin is enabled) is checked when the component starts.",
        "",
        "| rule | what it requires |",
        "|---|---|",
        *(f"| `{rule.name}` | {rule.summary} |" for rule in rules),
        "",
        "",
    ]
    return "\n".join(lines)


CONFIG_GUIDE = r"""## Where the config comes from

Every command that needs a config (`run`, `config show`, `status`, `reload`, `plugins list`,
`token ...`) looks for it in this order and uses the first that applies:

1. `--config PATH` on the command line;
2. the environment variable `$PREDIS_AGENT_CONFIG`;
3. `/etc/predis/agent.yaml`, if that file exists;
4. the embedded default: no file at all, which is the same as an empty file: every key at its
   default.

A file named by `--config` or `$PREDIS_AGENT_CONFIG` must exist; when it does not, the command
fails with `<root>: config file PATH does not exist` and exit code 2. `config validate FILE`
takes the file as an argument instead.

`predis-agent run` prints the file it uses in its start-up line, e.g.
`config: /etc/predis/agent.yaml` or `config: <embedded default>`, and `/status` reports it as
`config_source`. Useful commands:

```sh
predis-agent config validate /etc/predis/agent.yaml   # exit 0 valid, 2 invalid
predis-agent config show                              # effective config: defaults filled in, secrets redacted
predis-agent config schema                            # the JSON Schema, with every installed plugin's section
predis-agent config docs                              # this document
```

`config docs` documents the built-in plugins only, so that this file does not depend on what is
installed; `config docs --installed` also includes plugins installed through entry points.

## Validation and error messages

The file is parsed as YAML, `--set` overrides are applied, secret references are resolved,
defaults are filled in and the result is validated against the schema. Validation reports
**every** problem, not just the first, one line each in the form `<key.path>: <problem> (line N)`:

```text
$ predis-agent config validate bad.yaml
agent.http.listen: '127.0.0.1:99999x' does not match the pattern ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$ (line 3)
agent.http.request_timeout_seconds: must be at least 0.1, found 0 (line 4)
agent.log.level: expected one of 'debug', 'info', 'warning', 'error', 'critical', found 'verbose' (line 6)
agent.colect: unknown key (allowed here: auth, collect, http, log, pid_file, readiness, reload, shutdown_timeout_seconds, sinks, tracing) (line 7)
cache.backend: expected one of 'auto', 'cupy', 'numpy', found 'gpu' (line 9)
exporters.prometheus.foo: unknown key (allowed here: enabled, path) (line 13)
plugins.nosuch: unknown key (allowed here: access_log, cache_metrics, cloudwatch, datadog, ...) (line 14)
```

A few rules worth knowing:

- The top level must be a mapping; YAML syntax errors are reported with their line.
- A key written twice in the same mapping is an error (`agent.log.level: duplicate key (line 7)`);
  YAML would otherwise silently keep the last one. Duplicate keys are reported on their own,
  before any other validation.
- Unknown keys are errors everywhere, including inside `plugins.<name>`, and the message lists
  the keys allowed at that place. `plugins` accepts one section per plugin the agent knows
  (`predis-agent plugins list`). A plugin that is installed but failed to load, or is blocked
  by `PREDIS_AGENT_DISABLE_PLUGINS`, keeps its section valid as it is written, so a broken
  plugin never makes an otherwise good file invalid.
- Plugins declare sections under `exporters` and `collectors` too (the built-in exporters and
  the cache, process and GPU collectors do). While a plugin has failed to load or is blocked,
  the sections it would declare are unknown, so `exporters` and `collectors` then accept any
  sub-section that no loaded plugin declares, as it is written.
- A plugin section always accepts `enabled` (default `true`); `enabled: false` keeps the plugin
  installed and its section validated, but none of its other hooks is called.
- In a message about a value that came from a secret reference, the value is shown as `***`.

## Overriding single keys: `--set`

`run`, `config validate` and `config show` accept `--set KEY.PATH=VALUE`, repeatable. The
override is applied to the parsed file before validation, so it is checked like the file:

```sh
predis-agent run --config /etc/predis/agent.yaml --set agent.log.level=debug --set agent.http.listen=127.0.0.1:0
predis-agent config show --set 'agent.auth.anonymous_routes=[/livez, /metrics]'
```

- `VALUE` is parsed as YAML: `5` is a number, `true` a boolean, `null` null, `[a, b]` a list;
  quote it (`--set 'key="5"'`) to force a string. An empty value is the empty string.
- Missing intermediate sections are created; descending into a key that holds a non-mapping
  value is an error (`--set cannot descend into a non-mapping`), and an argument without `=`
  is reported as `KEY: --set expects key.path=value`.
- A value may contain a secret reference (below); quote it in the shell so that `$` survives.
- `--set` values given to `run` stay in force for the life of the process: every hot reload
  re-reads the file and applies the same overrides on top of it.

## Secret references

Secret values are never written into the config file. Instead a string value refers to where
the secret is:

| reference | resolves to |
|---|---|
| `${env:NAME}` | the environment variable `NAME` (`[A-Za-z_][A-Za-z0-9_]*`) |
| `${file:/abs/path}` | the content of the file; the path must be absolute |
| `${cred:NAME}` | the file `$CREDENTIALS_DIRECTORY/NAME`, i.e. a systemd credential (`LoadCredential=`); `NAME` is `[A-Za-z0-9_.-]+` |

- A reference may be the whole value or part of it: `"Bearer ${env:API_KEY}"` is allowed.
  A value that contains at least one reference becomes a *secret value* as a whole.
- File and credential contents are read as UTF-8; trailing newlines (`\n`, `\r`) are removed.
  Only regular files of at most 65536 bytes are read: a FIFO, a device, a directory or a
  larger file is refused with an error that says which (see docs/security.md, "Config and
  reload limits").
- To write a literal `${`, double the dollar: `$${` (so `"cost: $${not_a_ref}"` is the plain
  string `cost: ${not_a_ref}`). Text like `${other:x}` whose prefix is not `env`, `file` or
  `cred` is left as it is.
- A reference that cannot be resolved is a validation problem naming the key, never the value:

  ```text
  plugins.example.api_key: environment variable API_KEY is not set (referenced as ${env:API_KEY})
  plugins.example.api_key: ${file:secret.txt} must name an absolute path
  plugins.example.api_key: secret file /etc/predis/api_key does not exist
  plugins.example.api_key: secret file /etc/predis/api_key is not readable by this user
  plugins.example.api_key: ${cred:api_key} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
  ```

- References are resolved every time the config is loaded: at start-up and on every reload.
  Rewriting a secret file and then reloading applies the new value (a changed secret counts as
  a changed key; the file watch only looks at the config file itself, so trigger the reload with
  `systemctl reload`, SIGHUP or `predis-agent reload`). An environment variable cannot change
  under a running process. systemd copies `LoadCredential=` files when the service starts, so a
  changed credential source needs a restart.
- Secret values are meant for plugin settings such as vendor API keys and passwords; plugins
  receive them as `agent.config.Secret` objects and call `.reveal()`. None of the agent's own
  keys in the tables above is a secret: give them plain values.

### Using systemd credentials

The unit in `deploy/systemd/` loads every file of `/etc/predis/credentials` as a credential
named `predis_<file name>` (`LoadCredential=predis:/etc/predis/credentials`). The files stay
readable by root only; systemd hands the agent a private copy:

```sh
sudo install -m 0600 /dev/stdin /etc/predis/credentials/datadog_api_key <<<"$DD_API_KEY"
```

```yaml
plugins:
  example:                  # a plugin whose schema has an api_key setting
    api_key: ${cred:predis_datadog_api_key}
```

## Redaction

A secret value is never printed by the agent:

- `predis-agent config show` prints `*** (<reference>)` in its place, e.g.
  `api_key: '*** (${cred:predis_datadog_api_key})'`.
- `str()`, `repr()` and f-strings of an `agent.config.Secret` give `***` and `Secret('<reference>')`.
- Validation messages show `***` instead of a value that came from a reference.
- Every log handler (stderr and the log file, text and JSON) replaces any resolved secret value
  that appears in a log line with `***`. Values shorter than 4 characters are exempt from this
  free-text scrubbing (they would mangle unrelated text), though `Secret` objects still never
  print them.

## Hot reload

The running agent applies a changed config without a restart. A reload is started by any of:

| trigger | how | shown as `trigger` |
|---|---|---|
| SIGHUP | `kill -HUP <pid>`, or `systemctl reload predis-agent` (the unit's `ExecReload` sends SIGHUP) | `SIGHUP` |
| file watch | the agent hashes the config file every `agent.reload.watch_interval_seconds` and reloads when the SHA-256 changes (on by default; `agent.reload.watch: false` turns it off) | `file-watch` |
| `predis-agent reload` | with a token (`--token-file` or `$PREDIS_AGENT_TOKEN`) it calls `POST /reload` and prints the outcome; without one it sends SIGHUP to the PID in `agent.pid_file` | `api` / `SIGHUP` |
| `POST /reload` | authenticated HTTP call | `api` |

Reloads are serialised: one at a time. Each reload:

1. **reads and validates** the file exactly as at start-up (same path, same `--set` overrides,
   secrets resolved, every plugin's schema);
2. compares it with the running config, and the TLS certificate and key files (when TLS is
   enabled) with those loaded last, by inode, size and modification time; if no value changed
   and the files are the same, it is done (`"changed": []`) and the generation stays the same;
3. **dry-builds** what can fail, off to the side: a new cache backend when `cache.backend`
   changed (asking for `cupy` without a usable GPU fails here), and, when `agent.http.listen` or
   `agent.http.tls` changed or the certificate files were renewed, the TLS context (certificate
   files loaded) and the listening socket: for a new address a new socket, bound while the old
   one still serves; for the same address a duplicate (`dup()`) of the socket already
   listening;
4. **swaps**: the new config becomes active, the config generation goes up by one, and only
   the components whose section changed are rebuilt (table below).

If step 1 or 3 fails, **the running config stays in force, untouched**. The problems are logged
at error level, returned by `POST /reload` (HTTP 422), shown under `last_reload` in `/status`
and counted in the metrics below:

```text
2026-11-28 18:35:45,856 ERROR agent.runtime: reload (file-watch) rejected; generation 2 keeps running:
  agent.log.level: expected one of 'debug', 'info', 'warning', 'error', 'critical', found 'loud' (line 10)
```

```json
{"changed": [], "errors": ["agent.log.level: expected one of 'debug', 'info', 'warning', 'error', 'critical', found 'loud' (line 10)"],
 "generation": 2, "ok": false, "time": 1795890946.07, "trigger": "api"}
```

A successful `POST /reload` answers 200 with the same shape, `ok: true` and the list of
changed keys. When the agent runs on the embedded default (no file), `POST /reload` answers
409. `predis-agent reload` exits 0 when the reload was applied, 2 when it was rejected as
invalid, 1 when the agent cannot be reached. The CLI reads the same file to find the agent's
address and token store. When that file is invalid, `predis-agent reload` (and
`predis-agent status`) prints
`warning: <path> has N problem(s); using only its agent.http, agent.auth and agent.pid_file to reach the agent`
on stderr and goes on with just those three keys, so the agent itself rejects the reload and
reports the problems. Only when even those keys are invalid does the CLI print the
problems itself and exit 2 without contacting the agent.

### What a change restarts

| changed keys | effect |
|---|---|
| `agent.log.*` | logging reconfigured: level, format and log file take effect at once |
| `agent.tracing.*` | the span exporter is replaced (pending spans of the old one are flushed) |
| `agent.http.listen`, `agent.http.tls.*` | a new address is bound first, then the old listener is closed; with the same address, a duplicate of the listening socket is served with the new TLS context, then the old one is closed; requests keep being served throughout |
| none: the TLS certificate and key files were renewed in place (same paths) | the files are loaded again and the listening socket is re-served with them, as for a TLS change; `changed` lists `agent.http.tls (certificate files renewed)` (unless other `agent.http` keys changed too) and the generation goes up by one. The file watch does not notice renewed certificates: trigger the reload with SIGHUP, `predis-agent reload` or `POST /reload` |
| `agent.http.request_timeout_seconds` | applies to the next request |
| `agent.http.max_request_bytes` | enforced per request, so it applies to the next request: a larger `Content-Length`, or a chunked body that grows past it as it is read, is answered 413 with a JSON error (hard ceiling 104857600 bytes, the schema's maximum) |
| `agent.http.max_connections`, `agent.http.extra_reserved_descriptors`, `agent.http.header_timeout_seconds`, `agent.http.body_timeout_seconds`, `agent.http.accept_retry_seconds`, `agent.reserved_descriptors` | applied in place: the next connection accepted, deadline started or body read uses them; connections already open are not closed for a smaller cap |
| `agent.log.rate_limit_seconds` | the next rate-limited warning uses the new interval |
| `agent.auth.anonymous_routes` | applies to the next request |
| `agent.auth.token_store` | the token store at the new path is used from the next request |
| `agent.collect.*` | the collection schedule is woken and uses the new interval; the schedule keeps its phase |
| `agent.sinks.*` | every exporter's queue bounds, retry policy, breaker, dead-letter and spool settings are updated in place; queued payloads are kept (when a new bound is smaller than the queue, the oldest payloads are dropped and counted) |
| `exporters.<name>.*` | that exporter is rebuilt and swapped into its sink; the queue is kept (`exporters.prometheus.*` re-registers the `/metrics` route) |
| `agent.reload.*`, `agent.readiness.*`, `agent.shutdown_timeout_seconds`, `cache.self_test_slots` | read where they are used: take effect from the next watch round, readiness check or shutdown |
| `agent.pid_file` | the PID is written to the new path (the old file is left in place) |
| `cache.backend`, `cache.max_memory_bytes`, `cache.max_keys`, `cache.max_key_bytes`, `cache.max_value_bytes`, `cache.eviction`, `cache.slab_growth_factor`, `cache.max_load_factor` | a new, **empty** cache is built off to the side (a backend that cannot start, or memory that cannot be allocated, rejects the reload) and swapped in; the keys of the old one are dropped and the log says how many, while its counters carry on into the new one (`predis_cache_hits_total` and the rest never go down). Open client connections stay open and see the new cache |
| `cache.resp.listen`, `cache.resp.tls.*` (or its certificate files renewed in place) | as for the HTTP listener: the new address (or a duplicate of the same socket, with the new TLS context) is bound first, then the old listener stops accepting; connections already open keep being served |
| `cache.resp.requirepass`, `cache.resp.max_*`, `cache.resp.idle_timeout_seconds`, `cache.resp.output_buffer_bytes` | applied in place: new connections and the next command see them; connections already authenticated stay authenticated |
| `cache.resp.enabled` | `false` stops the Redis-protocol server and closes its connections; `true` starts it |
| `cache.read_through`, `cache.origin` | applied in place; an origin that no enabled plugin registers rejects the reload |
| `cache.ttl_sweep_*` | read by the sweep: the next sweep uses them |
| `cache.prefetch.*` pacing, thresholds, depth, budget and queue keys | the running prefetcher is retuned in place from its next step; its online model keeps what it learned |
| `cache.prefetch.model`, `.vocabulary_size`, `.learn_online`, `.model_process`, `.enabled` | a new prefetcher (its model starts over, or the registry's champion is loaded again) |
| `drift.*` | applied at once; a new `check_interval_seconds` wakes the drift loop, so the next check is one new interval after the reload |
| `plugins.<name>.*` | that plugin only: its collectors, exporters, health checks, drift detectors and origins are built again from its hooks; `enabled: false` removes them, `enabled: true` adds them. An exporter keeps its queue: only the exporter object inside it is replaced. The HTTP routes of all plugins are collected again. |

Not reloadable: installing or removing a plugin package (entry points are read at start-up),
`PREDIS_AGENT_DISABLE_PLUGINS`, environment variables and systemd credentials. Restart the
agent for those.

A reload that applied a change also sends `predis_agent_event` to plugins with an event of kind
`config_reloaded` (data: `generation`, `changed`, `trigger`); a rejected one sends
`config_reload_failed` (data: `generation`, `errors`, `trigger`). Under systemd the agent sends
`RELOADING=1` when a reload starts and `READY=1` when it ends (see docs/operations.md), and
every reload is traced as a `config.reload` span.

### Reload metrics

| metric | type | meaning |
|---|---|---|
| `predis_agent_config_generation` | gauge | generation of the active config: 1 at start-up, +1 on every applied reload that changed something |
| `predis_agent_config_last_reload_success` | gauge | 1 if the last reload attempt was applied (or changed nothing), 0 if it was rejected; 1 at start-up |
| `predis_agent_config_last_reload_timestamp_seconds` | gauge | Unix time of the last reload attempt (start-up time before the first one) |
| `predis_agent_config_reload_failures_total` | counter | reload attempts rejected; the previous config kept running |

An alert on a config that was edited but not applied:

```yaml
- alert: PredisAgentConfigReloadFailed
  expr: predis_agent_config_last_reload_success == 0
  for: 5m
  annotations:
    summary: "predis-agent on {{ $labels.instance }} rejected its config; see `predis-agent status`"
```
"""


# ---------------------------------------------------------------------------
# docs/metrics.md, from the metric registry (agent/telemetry.py)
# ---------------------------------------------------------------------------

METRICS_GENERATOR_COMMAND = "predis-agent metrics docs > docs/metrics.md"

_METRICS_TABLE_HEAD = "| Name | Type | Unit | Labels | Series cap | Help |\n|---|---|---|---|---|---|\n"


def metric_registry() -> tuple[MetricSpec, ...]:
    """Every metric the agent and its built-in plugins define, in the order of docs/metrics.md:
    the agent's self-metrics, each built-in plugin's (imported here, in DEFAULT_PLUGINS order),
    then the drift checks' and the MLOps services'."""
    from agent.plugins import DEFAULT_PLUGINS
    from agent.telemetry import (
        DRIFT_METRICS,
        MLOPS_METRICS,
        SELF_METRICS,
        declared_metrics,
    )

    plugin_specs: list[MetricSpec] = []
    for _, module in DEFAULT_PLUGINS:
        importlib.import_module(module)
        plugin_specs.extend(declared_metrics(module))
    return SELF_METRICS + tuple(plugin_specs) + DRIFT_METRICS + MLOPS_METRICS


def render_metrics_doc(specs: Iterable[MetricSpec] | None = None) -> str:
    """The whole ``docs/metrics.md``: one table per emitting module, specs in registry order.

    Each metric is declared once, the agent's in ``agent/telemetry.py`` and each plugin's in
    its module, so the reference is generated from the declarations
    (:func:`metric_registry`); ``tests/unit/test_docs.py`` fails when the committed file differs.
    """
    from agent.telemetry import SELF_METRICS, emitter_of

    groups: dict[str, list[MetricSpec]] = {}
    for spec in metric_registry() if specs is None else specs:
        groups.setdefault(emitter_of(spec), []).append(spec)
    out = [
        "# Metrics reference\n\n",
        f"<!-- Generated by `{METRICS_GENERATOR_COMMAND}`; do not edit by hand. -->\n\n",
        "Every metric the agent and its built-in plugins define, declared once: the agent's own in\n",
        "`agent/telemetry.py`, each built-in plugin's in its module (`agent.api.declare_metrics`).\n",
        "Counters are cumulative and end in `_total`; histograms expose `_bucket`, `_count` and `_sum`;\n",
        "no `_created` series are exported. **Series cap** is the most label sets a family exports\n",
        "per collection round: past it, new label sets are folded (not exported) and counted in\n",
        "`predis_agent_metric_series_folded_total{family}`. Self-metrics of the agent (cap —) are\n",
        "exported directly and are bounded by construction.\n\n",
        "The Prometheus exposition at `/metrics` is rendered once per collection round\n",
        "(`agent.collect.interval_seconds`) and served from a cache, so values are as of the last round.\n\n",
    ]
    for module, members in groups.items():
        out.append(f"## `{module}`\n\n")
        out.append(_METRICS_TABLE_HEAD)
        for spec in members:
            labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
            cap = "—" if spec in SELF_METRICS else str(spec.max_series)
            out.append(f"| `{spec.name}` | {spec.kind} | {spec.unit or '—'} | {labels} | {cap} | {_cell(spec.help)} |\n")
        out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------
# The Redis-protocol command index (docs/redis-protocol.md)
# ---------------------------------------------------------------------------

COMMANDS_GENERATOR_COMMAND = "predis-agent resp docs"
COMMANDS_BEGIN = "<!-- commands:begin -->"
COMMANDS_END = "<!-- commands:end -->"


def render_command_index() -> str:
    """Every command the RESP server implements, from its command table: group, syntax with
    every option, arity and whether it names keys. What lies between the markers in
    docs/redis-protocol.md."""
    from cache_core.resp.server import COMMANDS, KEY_COMMANDS
    from cache_core.resp.syntax import GROUPS, SYNTAX

    lines = [
        COMMANDS_BEGIN,
        f"<!-- Generated by `{COMMANDS_GENERATOR_COMMAND}` from the server's command table; do not edit by hand. -->",
        "",
        "| group | command | syntax | arity | keys |",
        "|---|---|---|---:|---|",
    ]
    for group, names in GROUPS.items():
        for name in sorted(names):
            arity = COMMANDS[name][1]
            arity_text = str(arity) if arity > 0 else f"{-arity}+"
            lines.append(f"| {group} | `{name.upper()}` | {_code(SYNTAX[name])} | {arity_text} | {'yes' if name in KEY_COMMANDS else ''} |")
    lines.append(COMMANDS_END)
    return "\n".join(lines) + "\n"


def command_index_in(text: str) -> str:
    """The generated block as it stands in a page (markers included)."""
    start, end = text.find(COMMANDS_BEGIN), text.find(COMMANDS_END)
    if start < 0 or end < 0:
        return ""
    return text[start : end + len(COMMANDS_END)] + "\n"

# SPDX-License-Identifier: Apache-2.0
"""``predis-agent`` commands. Thin: parse arguments, call the library, print.

Exit codes: 0 success, 1 runtime failure (cannot start, agent unreachable), 2 invalid
input (bad config, bad arguments).

Each command imports what it needs when it runs: ``--help`` and ``version`` load no plugin
and no config, ``config validate`` loads the plugins (for their config schemas) and the
config, never the runtime, the HTTP server or the cache. Plugins are loaded to find
commands only when some are installed through entry points: the built-in plugins add none.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from agent import __version__
from agent.errors import ConfigError, SecurityError, StartupError
from agent.federated import SECAGG_CLIPPING_RANGE, SECAGG_MAX_WEIGHT, SECAGG_NUM_SHARES, SECAGG_QUANTIZATION_RANGE, SECAGG_RECONSTRUCTION_THRESHOLD

if TYPE_CHECKING:
    from agent.config import Config
    from agent.plugins import PluginHost
    from agent.security import TokenStore

TOKEN_ENV_VAR = "PREDIS_AGENT_TOKEN"
CLIENT_TIMEOUT_SECONDS = 10.0
# `replay` on a non-terminal stderr (a CI log): a progress line at most this often.
REPLAY_PROGRESS_SECONDS = 10.0

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $PREDIS_AGENT_CONFIG, else /etc/predis/agent.yaml, else the embedded default).",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override one config value (repeatable); validated like the file.",
)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(config_path: str | None, overrides: tuple[str, ...], host: PluginHost | None = None) -> tuple[Config, PluginHost]:
    from agent.config import load_config, resolve_config_path
    from agent.plugins import PluginHost

    host = host or PluginHost()
    path, explicit = resolve_config_path(config_path)
    parts = host.config_parts()
    try:
        cfg = load_config(path, overrides=overrides, **parts)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)
    return cfg, host


def _load_for_client(config_path: str | None) -> Config:
    """The config a client command needs to reach the agent.

    When the file is invalid (the running agent keeps its last good config), fall back
    to the file's ``agent.http`` and ``agent.auth`` sections alone, so that ``status``
    and ``reload`` still work while an operator fixes the file.
    """
    import yaml

    from agent.config import (
        load_config,
        load_yaml,
        read_config_text,
        resolve_config_path,
    )
    from agent.plugins import PluginHost

    path, _ = resolve_config_path(config_path)
    host = PluginHost(load_entrypoints=False)
    parts = host.schema_parts()
    try:
        return load_config(path, **parts)
    except ConfigError as exc:
        try:
            raw = load_yaml(read_config_text(path)) if path else {}
            agent_section = raw.get("agent", {}) if isinstance(raw, dict) else {}
            subset = {k: agent_section[k] for k in ("http", "auth", "pid_file") if isinstance(agent_section, dict) and k in agent_section}
            cfg = load_config(None, text=yaml.safe_dump({"agent": subset}))
        except (ConfigError, yaml.YAMLError, AttributeError):
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            sys.exit(2)
        click.echo(f"warning: {path} has {len(exc.problems)} problem(s); using only its agent.http, agent.auth and agent.pid_file to reach the agent", err=True)
        return cfg


class AgentGroup(click.Group):
    """The root group; plugins add commands through ``predis_agent_register_commands``."""

    def _with_plugins(self) -> None:
        if getattr(self, "_plugins_added", False):
            return
        self._plugins_added = True
        from agent.plugins import PluginHost, plugin_entry_points

        try:
            if not plugin_entry_points():
                return  # the built-in plugins add no commands: only installed plugins can
            from agent.config import load_config, resolve_config_path

            host = PluginHost()
            path, _ = resolve_config_path(None)
            enabled = lambda name: True  # noqa: E731 - without a valid config every loaded plugin may add commands
            try:
                enabled = load_config(path, **host.config_parts()).plugin_enabled
            except ConfigError:
                pass
            host.apply_config(enabled)
            host.call("predis_agent_register_commands", cli=self)
        except Exception as exc:  # a broken plugin must never break the CLI
            click.echo(f"warning: plugin commands unavailable: {exc}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._with_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            self._with_plugins()
            command = super().get_command(ctx, name)
        return command


@click.group(cls=AgentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="predis-agent")
def cli() -> None:
    """Predis Agent: runs the Predis GPU cache, its exporters and its health API."""


@cli.command()
def version() -> None:
    """Print the agent version."""
    click.echo(__version__)


# ---------------------------------------------------------------------------- run


@cli.command()
@config_option
@set_option
def run(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Run the agent in the foreground (systemd: Type=notify)."""

    from agent import eventloop, logs
    from agent.config import resolve_config_path
    from agent.runtime import Agent

    logs.hold_early_records()
    path, _explicit = resolve_config_path(config_path)
    try:
        agent = Agent(path, overrides)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)

    async def main() -> None:
        await agent.start()
        # The console's pages and files are one entry, /dashboard (/status lists every route).
        routes = ", ".join(sorted({p for (_m, p) in agent.http.routes if not p.startswith("/dashboard/")}))
        backend = agent.backend.name if agent.backend else "none"
        text = (
            f"predis-agent {__version__} ready: {agent.http.address} ({routes}); "
            f"config: {path or '<embedded default>'}; cache backend: {backend}; "
            f"redis protocol: {agent.cache_service.address or 'disabled'}"
        )
        click.echo(logs.banner(text, agent.config.get("agent.log.format")))
        sys.stdout.flush()
        await agent.run_until_stopped()

    try:
        run_loop = eventloop.runner(agent.config.get("agent.event_loop"))[1]
        run_loop(main())
    except StartupError as exc:
        _fail(f"cannot start: {exc}")


# ---------------------------------------------------------------------------- config


@cli.group()
def config() -> None:
    """Validate, show and describe configuration."""


@config.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@set_option
def config_validate(file: str, overrides: tuple[str, ...]) -> None:
    """Validate FILE: exit 0 when valid, 2 with one `<key.path>: <problem>` line per problem."""
    cfg, _ = _load(file, overrides)
    _warn_literal_secrets(cfg)
    click.echo(f"{file}: valid")


def _warn_literal_secrets(cfg: Any) -> None:
    """Say on stderr which keys hold a secret written into the file (never its value)."""
    for path in cfg.literal_secrets:
        click.echo(f"warning: {path} holds a secret written into the config file: it is never printed, but give it as ${{env:NAME}}, ${{file:/path}} or ${{cred:NAME}}", err=True)


@config.command("show")
@config_option
@set_option
def config_show(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the effective config (defaults filled in, secrets redacted)."""
    import yaml

    cfg, _ = _load(config_path, overrides)
    _warn_literal_secrets(cfg)
    click.echo(yaml.safe_dump(cfg.redacted(), sort_keys=False, default_flow_style=False), nl=False)


@config.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON Schema, including every installed plugin's section."""
    from agent.config import build_schema
    from agent.plugins import PluginHost

    host = PluginHost()
    click.echo(json.dumps(build_schema(**host.schema_parts()), indent=2))


@config.command("docs")
@click.option(
    "--installed",
    is_flag=True,
    help="Also document plugins installed through entry points (docs/configuration.md holds the built-in ones only).",
)
def config_docs(installed: bool) -> None:
    """Print the configuration reference as Markdown (the source of docs/configuration.md)."""
    from agent.config import build_schema
    from agent.docgen import render_configuration_doc
    from agent.plugins import PluginHost

    host = PluginHost(load_entrypoints=installed)
    click.echo(render_configuration_doc(build_schema(**host.schema_parts())), nl=False)


# ---------------------------------------------------------------------------- metrics


@cli.group()
def metrics() -> None:
    """Metrics the agent defines."""


@cli.group()
def resp() -> None:
    """The Redis-protocol server's reference."""


@resp.command("docs")
def resp_docs() -> None:
    """Print the command index of docs/redis-protocol.md (between its markers), generated from the server's command table."""
    from agent.docgen import render_command_index

    click.echo(render_command_index(), nl=False)


@metrics.command("docs")
def metrics_docs() -> None:
    """Print the metrics reference as Markdown (the source of docs/metrics.md)."""
    from agent.docgen import render_metrics_doc

    click.echo(render_metrics_doc(), nl=False)


@cli.group()
def exporters() -> None:
    """Push exporters (Datadog, New Relic, CloudWatch)."""


@exporters.command("dry-run")
@config_option
@set_option
@click.option("--exporter", "only", multiple=True, help="Check this exporter even if it is disabled (repeatable).")
@click.option("--payloads", "include_body", is_flag=True, help="Include every payload's body in --json output.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def exporters_dry_run(config_path: str | None, overrides: tuple[str, ...], only: tuple[str, ...], include_body: bool, as_json: bool) -> None:
    """Build the payloads each enabled push exporter would send for one collection and run
    them through the vendor limit checks; prints counts, sizes and what would be split,
    trimmed or rejected. Sends nothing."""
    from agent.config import resolve_config_path
    from agent.dryrun import dry_run, render_text, to_json

    path, _ = resolve_config_path(config_path)
    try:
        result = dry_run(path, overrides, only=only, include_body=include_body)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)
    click.echo(to_json(result) if as_json else render_text(result))


# ---------------------------------------------------------------------------- plugins


@cli.group()
def plugins() -> None:
    """List, install, uninstall and run plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_option
def plugins_list(as_json: bool, config_path: str | None) -> None:
    """List built-in and installed plugins and their state."""
    from agent.config import load_config, resolve_config_path
    from agent.plugins import PluginHost

    host = PluginHost()
    path, _ = resolve_config_path(config_path)
    parts = host.config_parts()
    try:
        cfg = load_config(path, **parts)
        host.apply_config(cfg.plugin_enabled)
    except ConfigError as exc:
        click.echo(f"warning: config not applied ({len(exc.problems)} problem(s)); showing load state only", err=True)
    rows = host.public()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        extra = f"  ({row['error']})" if row["error"] else ""
        click.echo(f"{row['name']:<20} {row['state']:<9} {row['source']:<32} {row['version'] or '-'}{extra}")


@plugins.command("install")
@click.argument("name")
def plugins_install(name: str) -> None:
    """pip-install plugin NAME (a requirement or a local wheel/dir) into the agent's environment."""
    import subprocess

    from packaging.requirements import InvalidRequirement, Requirement

    if name.startswith("-"):
        _fail(f"{name!r} looks like an option; give a package name, a requirement or a path", 2)
    if not os.path.exists(name):
        try:
            Requirement(name)
        except InvalidRequirement as exc:
            _fail(f"{name!r} is not a valid requirement: {exc}", 2)
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", name]
    click.echo(f"running: {' '.join(command)}", err=True)
    code = subprocess.call(command)
    if code != 0:
        _fail(f"pip exited with {code}", 1)
    click.echo("installed; restart the agent, or `predis-agent reload`, to load it (a reload imports plugins installed since start)")


@plugins.command("uninstall")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def plugins_uninstall(name: str, yes: bool) -> None:
    """pip-uninstall the distribution that provides plugin NAME (an installed plugin's name
    as `plugins list` shows it; built-in plugins cannot be uninstalled)."""
    import subprocess

    from agent.plugins import plugin_entry_points

    found = [ep for ep in plugin_entry_points() if ep.name == name]
    if not found:
        from agent.plugins import DEFAULT_PLUGINS

        if name in {builtin for builtin, _module in DEFAULT_PLUGINS}:
            _fail(f"{name!r} is built into predis-agent; disable it with plugins.{name}.enabled: false instead", 2)
        installed = ", ".join(ep.name for ep in plugin_entry_points()) or "none"
        _fail(f"no installed plugin named {name!r} (installed: {installed})", 2)
    dist = found[0].dist
    if dist is None:
        _fail(f"plugin {name!r} has no distribution pip could uninstall", 2)
    assert dist is not None
    dist_name = dist.metadata["Name"]
    if not yes:
        click.confirm(f"uninstall {dist_name} {dist.version} (provides plugin {name})?", abort=True)
    command = [sys.executable, "-m", "pip", "uninstall", "--disable-pip-version-check", "-y", dist_name]
    click.echo(f"running: {' '.join(command)}", err=True)
    code = subprocess.call(command)
    if code != 0:
        _fail(f"pip exited with {code}", 1)
    click.echo("uninstalled; restart the agent to unload it from a running agent (a loaded plugin stays until then)")


def _printable_body(body: Any) -> str:
    """A payload's body as text: JSON for an object, UTF-8 text, or a note for binary bytes."""
    if isinstance(body, (bytes, bytearray)):
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(body)} bytes of binary data>"
    if isinstance(body, str):
        return body
    return json.dumps(body, indent=2, sort_keys=True, default=str)


@plugins.command("run")
@click.argument("name")
@click.option("--once", is_flag=True, required=True, help="Run it once and print what it produced (the only mode).")
@config_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_run(name: str, once: bool, config_path: str | None, overrides: tuple[str, ...], as_json: bool) -> None:
    """Run collector or exporter NAME once, as `telegraf --test` does: a collector prints the
    samples it produced; an exporter prints the payloads it would send, sent nowhere."""
    from agent.config import resolve_config_path
    from agent.dryrun import NotFound, render_samples, render_text, run_once, to_json

    path, _ = resolve_config_path(config_path)
    try:
        result = run_once(path, overrides, name)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)
    except NotFound as exc:
        _fail(str(exc), 2)
    if as_json:
        click.echo(to_json(result))
    elif "samples" in result:
        click.echo(render_samples(result))
    else:
        click.echo(render_text(result))
        for entry in result["exporters"].values():
            for payload in entry.get("payload_list", []):
                click.echo(f"--- {payload['kind']} payload, {payload['points']} point(s), {payload['bytes']} bytes")
                click.echo(_printable_body(payload.get("body")))


# ---------------------------------------------------------------------------- data

DATA_TABLE_COLUMNS = ("time", "seq", "op", "result", "tenant", "size", "fp")


def _printable_key(encoded: str | None) -> str | None:
    """A raw key for the table: as text when it is printable ASCII, else as ``base64:...``."""
    import base64

    if encoded is None:
        return None
    raw = base64.b64decode(encoded)
    text = raw.decode("ascii", "replace")
    return text if raw.isascii() and text.isprintable() and "\t" not in text else f"base64:{encoded}"


@cli.group()
def data() -> None:
    """Read the access-log segments the production data collector exported."""


@data.command("read")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--key-file",
    "key_files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False),
    help="File holding a segment key (32 raw bytes, 64 hex characters or base64). Repeat it to pass old keys after a rotation.",
)
@click.option("--since", default=None, help="Only events at or after this time: epoch seconds or ISO 8601 (naive means UTC).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event instead of a table.")
def data_read(directory: str, key_files: tuple[str, ...], since: str | None, as_json: bool) -> None:
    """Verify, decrypt and print the events of every segment in DIRECTORY, oldest first.

    A segment that fails verification (tampered, truncated, unknown key) is reported on
    stderr and none of its data is printed. Exit 0 when every segment verified, 2 when any
    failed or the arguments are invalid.
    """
    from agent.mlops.dataset import (
        KeyFormatError,
        SegmentError,
        event_records,
        load_key_file,
        parse_since,
        read_segments,
    )

    keys: list[bytes] = []
    for path in key_files:
        try:
            keys.append(load_key_file(path))
        except KeyFormatError as exc:
            _fail(str(exc), 2)
    since_value = None
    if since is not None:
        try:
            since_value = parse_since(since)
        except ValueError as exc:
            _fail(f"--since: {exc}", 2)
    failed: list[SegmentError] = []

    def report(exc: SegmentError) -> None:
        failed.append(exc)
        click.echo(f"error: segment failed verification: {exc}", err=True)

    segments = events = 0
    header_done = False
    try:
        for segment in read_segments(directory, keys, since=since_value, on_error=report):
            segments += 1
            lines: list[str] = []
            for record in event_records(segment):
                events += 1
                if as_json:
                    lines.append(json.dumps(record, sort_keys=True))
                    continue
                if "key_b64" in record:
                    record["key"] = _printable_key(record["key_b64"])
                columns = DATA_TABLE_COLUMNS + (("key",) if "key" in record else ())
                if not header_done:
                    lines.append("\t".join(columns))
                    header_done = True
                lines.append("\t".join("-" if record[c] is None else str(record[c]) for c in columns))
            click.echo("\n".join(lines))
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, as other CLI tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as exc:
        _fail(f"cannot read {directory}: {exc.strerror or exc}", 2)
    click.echo(f"{segments} segment(s) verified, {events} event(s); {len(failed)} segment(s) failed verification", err=True)
    if failed:
        sys.exit(2)


@cli.group()
def federated() -> None:
    """Federated learning across agents, on Flower (needs pip install 'predis-agent[federated]')."""


def _supernode_public_keys(paths: tuple[str, ...], load: Any) -> list[bytes]:
    """The distinct public keys of ``paths`` (files, or directories of ``*.pub`` files)."""
    from pathlib import Path

    files: list[Path] = []
    for path in map(Path, paths):
        found = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        if not found:
            _fail(f"--supernode-keys: no *.pub file in {path}", 2)
        files += found
    keys: list[bytes] = []
    for key in map(load, files):
        if key not in keys:
            keys.append(key)
    return keys


@federated.command("serve")
@click.option("--listen", required=True, help="HOST:PORT the Flower SuperLink listens on (agents' mlops.federated.server).")
@click.option("--rounds", type=click.IntRange(min=1), required=True, help="Rounds to run.")
@click.option("--min-clients", "min_clients", type=click.IntRange(min=1), required=True, help="Agents every round waits for (and averages).")
@click.option("--ca-file", "ca_file", type=click.Path(dir_okay=False, exists=True), help="CA certificate the agents verify the server with (TLS needs all three files).")
@click.option("--certfile", type=click.Path(dir_okay=False, exists=True), help="The server's certificate (PEM).")
@click.option("--keyfile", type=click.Path(dir_okay=False, exists=True), help="The server's private key (PEM).")
@click.option("--insecure", is_flag=True, help="Serve without TLS (refused unless the address is loopback).")
@click.option(
    "--supernode-keys",
    "supernode_keys",
    multiple=True,
    type=click.Path(exists=True),
    help="Public key of an agent allowed to join (its mlops.federated.auth_key_file's .pub, ECDSA on a NIST curve), or a directory of *.pub files (repeatable). Needs TLS.",
)
@click.option("--allow-any-supernode", "allow_any", is_flag=True, help="Let any host that reaches --listen join the rounds (no --supernode-keys).")
@click.option(
    "--superexec-secret-file",
    "secret_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="SuperExec secret the run's ServerApp task is acquired with (a 0600 file; default: a fresh secret of this run).",
)
@click.option("--round-timeout", "round_timeout", type=click.FloatRange(min=1), default=None, help="Seconds a round (each SecAgg+ stage) waits for its clients' answers (none: no limit).")
@click.option("--record", type=click.Path(file_okay=False), default=None, help="Directory for the audit of each round: every client message, the counts and the aggregate.")
@click.option("--secure-aggregation", "secure", is_flag=True, help="Aggregate with SecAgg+: the server sees only masked vectors and their sum.")
@click.option("--num-shares", "num_shares", type=click.FloatRange(min=0, min_open=True), default=SECAGG_NUM_SHARES, show_default=True, help="SecAgg+: shares of each host's secret (a count above 2, or a fraction of the round's hosts).")
@click.option("--reconstruction-threshold", "threshold", type=click.FloatRange(min=0, min_open=True), default=SECAGG_RECONSTRUCTION_THRESHOLD, show_default=True, help="SecAgg+: shares that reconstruct a secret (a count, or a fraction of the shares).")
@click.option("--clipping-range", "clipping_range", type=click.FloatRange(min=0, min_open=True), default=SECAGG_CLIPPING_RANGE, show_default=True, help="SecAgg+: parameters are clipped to [-range, range] before quantisation.")
@click.option("--quantization-range", "quantization_range", type=click.IntRange(min=2), default=SECAGG_QUANTIZATION_RANGE, show_default=True, help="SecAgg+: integers the clipped range is quantised to.")
@click.option("--max-weight", "max_weight", type=click.FloatRange(min=1), default=SECAGG_MAX_WEIGHT, show_default=True, help="SecAgg+: a host's weight is its example count over this (keep it above the largest count).")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as one JSON object.")
def federated_serve(
    listen: str,
    rounds: int,
    min_clients: int,
    ca_file: str | None,
    certfile: str | None,
    keyfile: str | None,
    insecure: bool,
    supernode_keys: tuple[str, ...],
    allow_any: bool,
    secret_file: str | None,
    round_timeout: float | None,
    record: str | None,
    secure: bool,
    num_shares: float,
    threshold: float,
    clipping_range: float,
    quantization_range: int,
    max_weight: float,
    as_json: bool,
) -> None:
    """Run a Flower SuperLink and one run of ROUNDS rounds of FedAvg (weighted by examples).

    Only the agents whose public keys --supernode-keys names join (Flower's SuperNode
    authentication), unless --allow-any-supernode says that any may. Exit 2 on a bad
    address, missing TLS files, a key or secret file that cannot be used, neither
    --supernode-keys nor --allow-any-supernode, or a missing federated extra.
    """
    from pathlib import Path

    from agent.net import is_loopback, parse_listen

    try:
        host, _ = parse_listen(listen)
    except StartupError as exc:
        _fail(f"--listen: {exc}", 2)
    files = [ca_file, certfile, keyfile]
    if any(files) and not all(files):
        _fail("TLS needs --ca-file, --certfile and --keyfile together", 2)
    if not all(files) and not insecure:
        _fail("give --ca-file, --certfile and --keyfile (TLS), or --insecure on a loopback address", 2)
    if insecure and not is_loopback(host):
        _fail(f"--insecure serves in clear text; refused on the non-loopback address {host}", 2)
    if supernode_keys and allow_any:
        _fail("--supernode-keys and --allow-any-supernode exclude each other", 2)
    if not supernode_keys and not allow_any:
        _fail("name the agents that may join with --supernode-keys (their public keys), or give --allow-any-supernode", 2)
    if supernode_keys and not all(files):
        _fail("--supernode-keys needs TLS (Flower's SuperNode authentication refuses to run without it)", 2)
    try:
        from agent.federated.runtime import KeyFileError, load_public_key, read_private
        from agent.federated.server import serve
    except ImportError as exc:
        _fail(f"federated learning needs the federated extra (pip install 'predis-agent[federated]'): {exc}", 2)
    try:
        public_keys = _supernode_public_keys(supernode_keys, load_public_key) if supernode_keys else None
        secret = read_private(secret_file, "SuperExec secret file") if secret_file else None
    except KeyFileError as exc:
        _fail(str(exc), 2)
    tls = (str(ca_file), str(certfile), str(keyfile)) if all(files) else None
    run_config = {
        "rounds": rounds,
        "min-clients": min_clients,
        "round-timeout": float(round_timeout or 0),
        "record": str(Path(record).resolve()) if record else "",
        "secure-aggregation": secure,
        "num-shares": float(num_shares),
        "reconstruction-threshold": float(threshold),
        "clipping-range": float(clipping_range),
        "quantization-range": quantization_range,
        "max-weight": float(max_weight),
    }
    try:
        result = serve(listen, run_config, tls, public_keys, secret)
    except (RuntimeError, TimeoutError) as exc:
        _fail(f"federated serve: {exc}", 1)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{result['rounds_completed']} of {rounds} round(s) completed")
    if result["rounds_completed"] < rounds:
        sys.exit(1)


@cli.command("replay")
@click.argument("trace", type=click.Path())
@click.option("--cache-entries", "cache_entries", required=True, type=click.IntRange(min=1), help="Cache size in entries (keys).")
@click.option("--policy", type=click.Choice(["clock", "lru", "s3fifo"]), default="lru", show_default=True, help="Replacement policy.")
@click.option("--prefetch", type=click.Choice(["none", "stride", "markov", "model", "federated"]), default="none", show_default=True, help="Prefetch model.")
@click.option("--value-bytes", "value_bytes", type=click.IntRange(min=1, max=1 << 20), default=64, show_default=True, help="Size of every value the in-memory origin returns.")
@click.option("--key-file", "key_files", multiple=True, type=click.Path(dir_okay=False), help="Segment key for a directory trace (repeatable).")
@click.option("--json", "as_json", is_flag=True, help='Print one object: {"requests", "hits", "hit_ratio", "prefetches", "prefetch_used", "prefetch_precision", "policy", "prefetch"}.')
@click.option(
    "--progress-seconds",
    "progress_seconds",
    type=click.FloatRange(min=0),
    default=REPLAY_PROGRESS_SECONDS,
    show_default=True,
    help="When stderr is not a terminal (a CI log), print a progress line at most this often (0: at every step).",
)
def replay_cmd(
    trace: str, cache_entries: int, policy: str, prefetch: str, value_bytes: int, key_files: tuple[str, ...], as_json: bool, progress_seconds: float
) -> None:
    """Replay TRACE through the real cache code with an in-memory origin.

    Every request is a demand read; hits include hits on prefetched entries, and
    prefetches are not requests. The model learns online from the replayed stream only.
    TRACE is a key-per-line text file, a CSV with a 'key' column, or a directory of
    exported access-log segments (their fingerprints stand in for keys). Exit 2 when the
    trace cannot be read.
    """
    from agent.mlops.dataset import KeyFormatError, load_key_file
    from agent.mlops.traces import TraceError, read_trace
    from cache_core.replay import replay

    segment_keys: list[bytes] = []
    for path in key_files:
        try:
            segment_keys.append(load_key_file(path))
        except (KeyFormatError, OSError) as exc:
            _fail(f"--key-file {path}: {exc}", 2)
    try:
        loaded = read_trace(trace, segment_keys)
    except TraceError as exc:
        _fail(str(exc), 2)
    keys = loaded.keys if loaded.keys is not None else [b"%016x" % int(fp) for fp in loaded.fp.tolist()]
    if not keys:
        _fail(f"{trace}: the trace holds no requests", 2)
    show_bar = sys.stderr.isatty() and len(keys) >= 50_000
    if show_bar:
        with click.progressbar(length=len(keys), label="replaying", file=sys.stderr) as bar:
            done = [0]

            def advance(n: int) -> None:
                bar.update(n - done[0])
                done[0] = n

            result = replay(keys, cache_entries, policy=policy, prefetch=prefetch, value_bytes=value_bytes, progress=advance)
    else:
        result = replay(
            keys, cache_entries, policy=policy, prefetch=prefetch, value_bytes=value_bytes, progress=_progress_lines(len(keys), progress_seconds)
        )
    if as_json:
        click.echo(json.dumps({k: result[k] for k in ("requests", "hits", "hit_ratio", "prefetches", "prefetch_used", "prefetch_precision", "policy", "prefetch")}))
        return
    precision = "n/a" if result["prefetch_precision"] is None else f"{result['prefetch_precision']:.1%}"
    click.echo(
        f"{result['requests']} requests, {result['hits']} hits ({result['hit_ratio']:.2%}); "
        f"{result['prefetches']} prefetches, {result['prefetch_used']} used (precision {precision}); "
        f"policy {policy}, prefetch {prefetch}, {cache_entries} entries"
    )


def _progress_lines(total: int, every_seconds: float) -> Any:
    """A replay progress callback that writes a line to stderr at most every ``every_seconds``."""
    started = time.monotonic()
    last = [started]

    def report(done: int) -> None:
        now = time.monotonic()
        if now - last[0] < every_seconds and done < total:
            return
        last[0] = now
        rate = done / max(now - started, 1e-9)
        left = (total - done) / rate if rate > 0 else float("inf")
        click.echo(f"replaying: {done}/{total} requests ({done / total:.0%}), {rate:,.0f}/s, about {left:.0f}s left", err=True)

    return report


@cli.group()
def drift() -> None:
    """Compare access traces with the drift detectors."""


@drift.command("check")
@click.option("--reference", "reference", required=True, type=click.Path(), help="Reference trace: key-per-line text, CSV with a 'key' column, or a directory of exported segments.")
@click.option("--current", "current", required=True, type=click.Path(), help="Current trace, in any of the same formats.")
@click.option(
    "--key-file",
    "key_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Segment key for a directory trace (repeatable, as for 'data read').",
)
@click.option("--config", "config_path", default=None, help="Config file whose 'drift' section sets the thresholds (default: the usual lookup).")
@click.option("--json", "as_json", is_flag=True, help='Print one object: {"status", "drift_detected", "detectors": [...]}.')
def drift_check(reference: str, current: str, key_files: tuple[str, ...], config_path: str | None, as_json: bool) -> None:
    """Run every enabled drift detector on REFERENCE against CURRENT.

    Exit 0 whatever the verdict (drift, no_drift, insufficient_data); 2 when a trace or a
    key file cannot be read.
    """
    from agent.config import settings_of
    from agent.mlops.dataset import KeyFormatError, load_key_file
    from agent.mlops.drift import DriftSettings, run_check
    from agent.mlops.traces import TraceError, read_trace

    keys: list[bytes] = []
    for path in key_files:
        try:
            keys.append(load_key_file(path))
        except (KeyFormatError, OSError) as exc:
            _fail(f"--key-file {path}: {exc}", 2)
    cfg, host = _load(config_path, ())
    host.apply_config(cfg.plugin_enabled)
    detectors = [d for _, found in host.call("predis_agent_register_drift_detectors", agent=None, config=cfg) for d in found]
    try:
        ref_trace = read_trace(reference, keys)
        cur_trace = read_trace(current, keys)
    except TraceError as exc:
        _fail(str(exc), 2)
    result = run_check(detectors, ref_trace.features(), cur_trace.features(), settings_of(DriftSettings, cfg.section("drift")))
    if as_json:
        click.echo(json.dumps(result.public()))
        return
    click.echo(f"status: {result.status}")
    for entry in result.detectors:
        p_value = "-" if entry.p_value is None else f"{entry.p_value:.3g}"
        statistic = "-" if entry.statistic is None else f"{entry.statistic:.4g}"
        threshold = "-" if entry.threshold is None else f"{entry.threshold:.3g}"
        mark = "DRIFT" if entry.drift else entry.status
        click.echo(f"  {entry.detector:<15} {entry.feature:<20} statistic={statistic:<10} p={p_value:<9} threshold={threshold:<8} {mark}")


# ---------------------------------------------------------------------------- talking to a running agent


def _local_token(cfg: Config) -> str | None:
    """The running agent's local token (agent.auth.local_token_file), when this user can read it."""
    path = cfg.get("agent.auth.local_token_file")
    if not path:
        return None
    try:
        with open(os.path.expanduser(path), encoding="ascii") as handle:
            return handle.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _client_token(token_file: str | None, cfg: Config | None = None) -> str:
    """The token ``status`` and ``reload`` send: --token-file, else $PREDIS_AGENT_TOKEN, else
    the agent's local token file (readable by the agent's user and root)."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            _fail(f"cannot read token file {token_file}: {exc.strerror}", 2)
    token = os.environ.get(TOKEN_ENV_VAR, "").strip() or (_local_token(cfg) if cfg is not None else None)
    if not token:
        _fail(
            f"no API token: pass --token-file, set {TOKEN_ENV_VAR} (create one with `predis-agent token create`), "
            "or run as the agent's user or root to use its local token (agent.auth.local_token_file)",
            2,
        )
    assert token is not None
    return token


def _request(cfg: Config, method: str, path: str, token: str | None, timeout: float = CLIENT_TIMEOUT_SECONDS) -> tuple[int, Any]:
    import ssl
    import urllib.error
    import urllib.request

    from agent.net import parse_listen

    host, port = parse_listen(cfg.get("agent.http.listen"))
    if port == 0:
        _fail("agent.http.listen uses port 0; the CLI cannot find the agent. Set a fixed port.", 2)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    tls = cfg.section("agent.http.tls")
    scheme = "https" if tls.get("enabled") else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{port}{path}"
    context = None
    if tls.get("enabled"):
        context = ssl.create_default_context()
        if tls.get("cert_file"):
            context.load_verify_locations(os.path.expanduser(tls["cert_file"]))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, {"error": body.decode("utf-8", "replace")}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        _fail(f"cannot reach the agent at {url}: {reason}")
    raise AssertionError("unreachable")


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help=f"File holding an API token (else ${TOKEN_ENV_VAR}).")
def status(config_path: str | None, as_json: bool, token_file: str | None) -> None:
    """Show the running agent's status."""
    cfg = _load_for_client(config_path)
    code, body = _request(cfg, "GET", "/status", _client_token(token_file, cfg))
    if code != 200:
        _fail(f"agent answered {code}: {body.get('error') if isinstance(body, dict) else body}")
    if as_json:
        click.echo(json.dumps(body, indent=2, sort_keys=True))
        return
    click.echo(f"predis-agent {body['version']} pid {body['pid']}, up {body['uptime_seconds']:.0f}s")
    click.echo(f"config: {body['config_source']} (generation {body['config_generation']})")
    last = body.get("last_reload")
    if last:
        click.echo(f"last reload: {'applied' if last['ok'] else 'REJECTED'} via {last['trigger']}")
        for err in last["errors"]:
            click.echo(f"  {err}")
    components = body["components"]
    cache = components.get("cache", {})
    stats = cache.get("stats") or {}
    resp = cache.get("resp", {})
    click.echo(
        f"cache: {cache.get('backend')} backend, {stats.get('keys', 0)} keys, "
        f"redis protocol {resp.get('address') or 'disabled'} ({resp.get('clients', 0)} clients)"
    )
    gpu = components.get("gpu")
    if isinstance(gpu, dict) and gpu.get("enabled", True):
        click.echo(f"gpu: {'up' if gpu.get('up') else 'down'}" + (f" ({gpu['reason']})" if gpu.get("reason") else ""))
    access = components.get("access_log")
    if isinstance(access, dict) and access.get("state"):
        click.echo(f"access log: {access['state']}" + (f" ({access['reason']})" if access.get("reason") else ""))
    ready = components["readiness"]
    click.echo(f"ready: {'yes' if ready.get('ready') else 'NO'}")
    for name, comp in sorted(ready.get("components", {}).items()):
        click.echo(f"  {name:<24} {'ok' if comp['ok'] else 'FAIL'}  {comp['detail']}")
    for line in _status_prefetch(cache.get("prefetch")) + _status_drift(components.get("drift")) + _status_models(components.get("mlops")):
        click.echo(line)
    click.echo("plugins:")
    for p in body["plugins"]:
        errs = sum(p["hook_errors"].values())
        click.echo(f"  {p['name']:<22} {p['state']:<9} errors={errs}")
    for name, sink in sorted(body.get("sinks", {}).items()):
        dropped = sum((sink.get("dropped_points") or {}).values())
        line = (
            f"sink {name}: breaker {sink.get('breaker')}, queued {sink.get('queued_points', 0)} points in "
            f"{sink.get('queued_payloads', 0)} payloads, dropped {dropped} points, failed attempts {sink.get('failed_attempts', 0)}"
        )
        if sink.get("spool_paused"):
            line += f", spool paused ({sink.get('spool_reason')})"
        click.echo(line)


def _when(ts: float | None, now: float | None = None) -> str:
    """A Unix time as an ISO time with how far it is from now."""
    if ts is None:
        return "never"
    now = time.time() if now is None else now
    delta = ts - now
    rel = f"in {delta:.0f}s" if delta >= 0 else f"{-delta:.0f}s ago"
    return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(ts))} ({rel})"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _status_prefetch(prefetch: dict[str, Any] | None) -> list[str]:
    if not isinstance(prefetch, dict):
        return ["prefetch: off"]
    version = prefetch.get("version")
    backoff = prefetch.get("backoff") or {}
    lines = [
        f"prefetch: model {prefetch.get('model')}" + (f" v{version}" if version is not None else " (fresh, learning online)")
        + f", threshold {prefetch.get('threshold')}, loaded {prefetch.get('loaded', 0)}, used {prefetch.get('used', 0)}, "
        f"wasted {prefetch.get('wasted', 0)}, precision {_share(prefetch.get('precision'))}"
        + (", BACKED OFF" if backoff.get("active") else "")
    ]
    return lines


def _rollout_line(label: str, rollout: dict[str, Any]) -> str:
    arms = rollout.get("arms") or {}
    ratios = ", ".join(
        f"{name} {_share(arm['hits'] / arm['reads']) if arm.get('reads') else 'n/a'} of {arm.get('reads', 0)} reads"
        for name, arm in sorted(arms.items())
        if isinstance(arm, dict)
    )
    steps = rollout.get("steps") or []
    decisions = rollout.get("decisions") or []
    last = decisions[-1] if decisions else None
    return (
        f"{label}: {rollout.get('state')}, champion v{rollout.get('champion_version')} vs challenger "
        f"v{rollout.get('challenger_version')} at {_share(rollout.get('share'))} of keys "
        f"(step {int(rollout.get('step', 0)) + 1} of {len(steps)}); {ratios or 'no reads yet'}"
        + (f"; last decision {last.get('action')}: {last.get('reason')}" if isinstance(last, dict) else "")
    )


def _status_drift(drift: dict[str, Any] | None) -> list[str]:
    if not isinstance(drift, dict):
        return []
    if not drift.get("enabled", True):
        return ["drift: off (drift.enabled is false)"]
    last = drift.get("last_result") or {}
    affected = ", ".join(last.get("affected_features") or []) or "none"
    return [
        f"drift: {drift.get('state')}; {drift.get('checks', 0)} checks, last {_when(drift.get('last_check'))}, "
        f"next {_when(drift.get('next_check'))}; drifted features: {affected}"
    ]


def _status_models(mlops: dict[str, Any] | None) -> list[str]:
    if not isinstance(mlops, dict):
        return []
    decisions = mlops.get("decisions") or {}
    retrain = mlops.get("retrain") or {}
    served = mlops.get("serving_version")
    lines = [
        f"models: tenant {mlops.get('tenant')}, serving {'v' + str(served) if served is not None else 'no registered model'}; "
        f"retrain {'on' if retrain.get('enabled') else 'off'} ({retrain.get('phase', 'idle')}); "
        + ", ".join(f"{k} {v}" for k, v in sorted(decisions.items()))
    ]
    for label, rollout in (("rollout", mlops.get("rollout")), ("last rollout", mlops.get("last_rollout"))):
        if isinstance(rollout, dict):
            lines.append("  " + _rollout_line(label, rollout))
    if mlops.get("load_error"):
        lines.append(f"  registry error: {mlops['load_error']}")
    return lines


@cli.command()
@config_option
@click.option("--token-file", type=click.Path(dir_okay=False), default=None)
def reload(config_path: str | None, token_file: str | None) -> None:
    """Ask the running agent to reload its config (via the API, or SIGHUP via agent.pid_file)."""
    import signal

    cfg = _load_for_client(config_path)
    token = None
    if token_file or os.environ.get(TOKEN_ENV_VAR):
        token = _client_token(token_file)
    else:
        token = _local_token(cfg)
    if token:
        code, body = _request(cfg, "POST", "/reload", token)
        if code == 200:
            changed = ", ".join(body.get("changed", [])) or "nothing changed"
            click.echo(f"reload applied: generation {body['generation']} ({changed})")
            return
        errors = body.get("errors") if isinstance(body, dict) else None
        click.echo(f"reload rejected ({code}); the previous config keeps running:", err=True)
        for err in errors or [body.get("error") if isinstance(body, dict) else body]:
            click.echo(f"  {err}", err=True)
        sys.exit(2 if code == 422 else 1)
    pid_file = cfg.get("agent.pid_file")
    if not pid_file:
        _fail(f"no API token and no agent.pid_file: set {TOKEN_ENV_VAR}, or use `systemctl reload predis-agent`", 2)
    try:
        with open(os.path.expanduser(pid_file), encoding="ascii") as handle:
            pid = int(handle.read().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        _fail(f"cannot signal the agent through {pid_file}: {exc}")
    click.echo(f"sent SIGHUP to pid {pid}; see `predis-agent status` for the outcome")


@cli.command()
@config_option
@click.argument("route", type=click.Choice(["livez", "readyz"]))
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help=f"File holding an API token for readyz (else ${TOKEN_ENV_VAR}).")
@click.option(
    "--timeout",
    "timeout",
    type=click.FloatRange(min=0.1, max=CLIENT_TIMEOUT_SECONDS),
    default=CLIENT_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds to wait for the answer.",
)
def probe(config_path: str | None, route: str, token_file: str | None, timeout: float) -> None:
    """Health probe for containers and orchestrators: exit 0 when the running agent answers
    GET /ROUTE with 200, 1 otherwise (livez needs no token; readyz does)."""
    cfg = _load_for_client(config_path)
    token = _client_token(token_file) if route == "readyz" else None
    code, body = _request(cfg, "GET", f"/{route}", token, timeout=timeout)
    if code == 200:
        click.echo(f"/{route}: ok")
        return
    components = body.get("components") if isinstance(body, dict) else None
    if isinstance(components, dict):
        failing = "; ".join(f"{name}: {comp.get('detail')}" for name, comp in sorted(components.items()) if not comp.get("ok"))
        _fail(f"/{route} answered {code}: {failing}")
    _fail(f"/{route} answered {code}: {body.get('error') if isinstance(body, dict) else body}")


# ---------------------------------------------------------------------------- tokens


@cli.group()
def token() -> None:
    """Create, list and revoke API tokens (stored hashed)."""


def _store(config_path: str | None) -> TokenStore:
    from agent.security import TokenStore

    cfg, _ = _load(config_path, ())
    return TokenStore(cfg.get("agent.auth.token_store"))


@token.command("create")
@config_option
@click.option("--name", default="", help="A label to recognise the token by.")
@click.option(
    "--scope",
    type=click.Choice(["metrics", "read", "admin"]),
    default="admin",
    show_default=True,
    help="metrics: /metrics only; read: also /status, /readyz and the console; admin: everything (reload, plugin routes).",
)
def token_create(config_path: str | None, name: str, scope: str) -> None:
    """Create a token and print it once on stdout; only its hash is stored."""
    store = _store(config_path)
    try:
        plaintext, record = store.create(name, scope)
    except (SecurityError, OSError) as exc:
        _fail(str(exc))
    click.echo(plaintext)
    click.echo(f"created {record.scope} token {record.id} in {store.path}; it is shown only once", err=True)


@token.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def token_list(config_path: str | None, as_json: bool) -> None:
    """List token IDs, scopes, labels and creation times (never the tokens)."""
    store = _store(config_path)
    rows = [r.public() for r in store.records()]
    if store.load_error:
        _fail(store.load_error)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row["created"]))
        click.echo(f"{row['id']}  {created}  {row['scope']:<7}  {row['name']}")


@token.command("revoke")
@config_option
@click.argument("token_id")
def token_revoke(config_path: str | None, token_id: str) -> None:
    """Revoke the token with TOKEN_ID; a running agent refuses it at once."""
    store = _store(config_path)
    if not store.revoke(token_id):
        _fail(f"no token with id {token_id}", 2)
    click.echo(f"revoked {token_id}")


# ---------------------------------------------------------------------------- model registry


def _tenant_arg(tenant: str) -> str:
    """The tenant ID, validated before it reaches a path (exit 2 otherwise)."""
    from agent.security import validate_tenant_id

    try:
        return validate_tenant_id(tenant)
    except SecurityError as exc:
        _fail(str(exc), 2)
    return tenant


def _mlops_config(config_path: str | None) -> Config:
    """The config for the model and backup commands, without importing any plugin.

    The core sections (``mlops`` among them) are validated as usual; plugin sections
    (``plugins.<name>`` and the sub-sections of ``exporters`` and ``collectors`` that plugins
    declare) are taken as they are: every plugin is opaque here. These commands need no
    plugin, a plugin's config mistake should not keep an operator from rolling a model back,
    and importing every plugin (SciPy for the drift detectors) is most of a CLI call's
    start-up time.
    """
    import yaml

    from agent.config import (
        load_config,
        load_yaml,
        read_config_text,
        resolve_config_path,
    )
    from agent.plugins import DEFAULT_PLUGINS

    path, _ = resolve_config_path(config_path)
    try:
        text = read_config_text(path) if path else ""
        try:
            raw = load_yaml(text)
        except yaml.YAMLError:
            raw = None  # load_config reports the syntax error with its line
        section = raw.get("plugins") if isinstance(raw, dict) else None
        names = {str(name) for name in section} if isinstance(section, dict) else set()
        names.update(name for name, _ in DEFAULT_PLUGINS)
        return load_config(path, text=text, plugin_fragments={}, opaque_plugins=sorted(names))
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(2)


def _registry(config_path: str | None, registry_dir: str | None) -> Any:
    from agent.mlops.registry import ModelRegistry

    root = registry_dir if registry_dir else _mlops_config(config_path).get("mlops.registry_dir")
    try:
        return ModelRegistry(root)
    except SecurityError as exc:
        _fail(str(exc), 2)


def _registry_call(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a registry operation: its refusals exit 2, I/O failures exit 1."""
    from agent.mlops.registry import RegistryError
    from agent.mlops.training import TrainingError

    try:
        return call(*args, **kwargs)
    except (RegistryError, SecurityError, TrainingError, ValueError) as exc:
        _fail(str(exc), 2)
    except OSError as exc:
        _fail(f"{exc.filename or 'registry'}: {exc.strerror or exc}", 1)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


tenant_option = click.option("--tenant", required=True, help="Tenant ID (3-50 characters of a-z, 0-9, '_', '-').")
registry_option = click.option("--registry", "registry_dir", type=click.Path(file_okay=False), default=None, help="Registry directory (default: mlops.registry_dir from the config).")
model_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Config file whose 'mlops' section applies (default: the usual lookup).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@cli.group()
def model() -> None:
    """Versioned per-tenant prefetch models: train, list, show, promote, roll back, audit.

    Invalid input (tenant ID, unknown version, corrupted artefact) exits 2.
    """


@model.command("list")
@tenant_option
@registry_option
@model_config_option
@json_option
def model_list(tenant: str, registry_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """List a tenant's versions with their aliases and metrics."""
    tenant = _tenant_arg(tenant)
    rows = _registry_call(_registry(config_path, registry_dir).list, tenant)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"tenant {tenant} has no models")
    for row in rows:
        metrics = row.get("metrics") or {}
        aliases = ",".join(row["aliases"]) or "-"
        click.echo(f"v{row['version']:<4} {row.get('created_at') or '?':<20} {row.get('kind') or '?':<7} {aliases:<20} hit ratio {_ratio(metrics.get('candidate_hit_ratio'))}")


@model.command("show")
@tenant_option
@click.option("--version", "version", required=True, help="Version number, or 'champion' / 'challenger'.")
@registry_option
@model_config_option
@json_option
def model_show(tenant: str, version: str, registry_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Print a version's metadata after checking every artefact's checksum (exit 2 when one fails)."""
    tenant = _tenant_arg(tenant)
    import yaml

    meta = _registry_call(_registry(config_path, registry_dir).show, tenant, version)
    if as_json:
        click.echo(json.dumps(meta, indent=2, sort_keys=True))
    else:
        click.echo(yaml.safe_dump({k: v for k, v in meta.items() if k != "verification"}, sort_keys=True).rstrip())
    verification = meta["verification"]
    if not verification["ok"]:
        _fail(f"version {meta['version']} of tenant {tenant} is corrupted: {'; '.join(verification['problems'])}", 2)
    if not as_json:
        click.echo(f"checksums: all {len(meta.get('artefacts', {}))} artefacts verified")


@model.command("promote")
@tenant_option
@click.option("--version", "version", required=True, help="Version number to promote.")
@click.option("--alias", type=click.Choice(["champion", "challenger"]), default="champion", show_default=True, help="Alias to point at it.")
@click.option("--reason", default="manual promotion", show_default=True, help="Why (kept in the audit log).")
@click.option("--actor", default=None, help="Who (default: the user running the command).")
@registry_option
@model_config_option
@json_option
def model_promote(tenant: str, version: str, alias: str, reason: str, actor: str | None, registry_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Point an alias at a verified version; the move is audited."""
    tenant = _tenant_arg(tenant)
    entries = _registry_call(_registry(config_path, registry_dir).promote, tenant, version, alias, reason, actor)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    elif not entries:
        click.echo(f"{alias} of {tenant} already is v{version.lstrip('v')}; nothing changed")
    for entry in [] if as_json else entries:
        click.echo(f"{entry['alias']}: {entry['from']} -> {entry['to']} ({entry['reason']})")


@model.command("rollback")
@tenant_option
@click.option("--reason", default="manual rollback", show_default=True, help="Why (kept in the audit log).")
@click.option("--actor", default=None, help="Who (default: the user running the command).")
@registry_option
@model_config_option
@json_option
def model_rollback(tenant: str, reason: str, actor: str | None, registry_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Make the previous champion (per the audit history) the champion again."""
    tenant = _tenant_arg(tenant)
    entry = _registry_call(_registry(config_path, registry_dir).rollback, tenant, reason, actor)
    if as_json:
        click.echo(json.dumps(entry, indent=2))
        return
    click.echo(f"champion: {entry['from']} -> {entry['to']} ({entry['reason']})")


@model.command("audit")
@tenant_option
@registry_option
@model_config_option
@json_option
def model_audit(tenant: str, registry_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Print every alias move of a tenant, oldest first."""
    tenant = _tenant_arg(tenant)
    entries = _registry_call(_registry(config_path, registry_dir).audit, tenant)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        click.echo(_audit_line(entry))


def _audit_line(entry: dict[str, Any]) -> str:
    """One audit entry for people: the alias's move in versions (v1 -> v2; "set to v1" for
    an alias's first assignment, "cleared" when it was unset), the action, who and why."""
    old, new = entry.get("from"), entry.get("to")
    if old is None:
        move = f"set to v{new}" if new is not None else "unset"
    elif new is None:
        move = f"v{old} cleared"
    elif old == new:
        move = f"stays v{new}"
    else:
        move = f"v{old} -> v{new}"
    return f"{entry.get('time')}  {entry.get('alias'):<10} {move:<16} {entry.get('action')} by {entry.get('actor')}: {entry.get('reason')}"


@model.command("train")
@tenant_option
@click.option("--trace", "trace", required=True, type=click.Path(dir_okay=False), help="Training trace: key-per-line text or a CSV with a 'key' column.")
@click.option("--model", "kind", type=click.Choice(["stride", "markov", "model"]), default="model", show_default=True, help="Model kind to train.")
@click.option("--promote", "promote", is_flag=True, help="Make a registered candidate the champion at once (default: the challenger).")
@click.option("--actor", default=None, help="Who (default: the user running the command).")
@registry_option
@model_config_option
@json_option
def model_train(tenant: str, trace: str, kind: str, promote: bool, actor: str | None, registry_dir: str | None, config_path: str | None, as_json: bool) -> None:
    """Train a model on TRACE, compare it with the champion, register it if it wins.

    The model learns from the first part of the trace; candidate and champion are replayed
    over the held-out end (mlops.holdout_share, at most mlops.holdout_max_requests) with a cache of mlops.eval_cache_share of
    the distinct keys. The candidate is registered when it beats the champion by
    mlops.promote_margin; a tenant's first model becomes the champion.
    """
    from agent.mlops.traces import TraceError, read_trace
    from agent.mlops.training import train_and_register

    tenant = _tenant_arg(tenant)
    cfg = _mlops_config(config_path)
    registry = _registry(config_path, registry_dir or cfg.get("mlops.registry_dir"))
    try:
        loaded = read_trace(trace)
    except TraceError as exc:
        _fail(str(exc), 2)
    if not loaded.keys:
        _fail(f"{trace}: the trace holds no keys", 2)
    report = _registry_call(
        train_and_register,
        registry,
        tenant,
        loaded.keys,
        kind=kind,
        holdout=float(cfg.get("mlops.holdout_share")),
        holdout_max=int(cfg.get("mlops.holdout_max_requests")),
        margin=float(cfg.get("mlops.promote_margin")),
        eval_cache_share=float(cfg.get("mlops.eval_cache_share")),
        trace_name=os.path.basename(trace),
        promote=promote,
        actor=actor,
        learn_online=bool(cfg.get("cache.prefetch.learn_online")),
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    champion = "none" if report["champion_version"] is None else f"v{report['champion_version']}"
    click.echo(
        f"{kind}: trained on {report['train_requests']} requests, replayed {report['eval_requests']} held out "
        f"({report['eval_cache_entries']} cache entries): candidate {_ratio(report['candidate_hit_ratio'])}, "
        f"champion ({champion}) {_ratio(report['champion_hit_ratio'])}, no prefetch {_ratio(report['baseline_hit_ratio'])}"
    )
    if report["registered"]:
        click.echo(f"registered v{report['version']}" + (f" as {report['alias']}" if report["alias"] else ""))
    else:
        click.echo(f"not registered: not better than the champion by the margin {report['margin']}")


# ---------------------------------------------------------------------------- backup


def _backup_call(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a backup operation: refusals exit 2, I/O failures exit 1."""
    from agent.backup import BackupError

    try:
        return _registry_call(call, *args, **kwargs)
    except BackupError as exc:
        _fail(str(exc), 2)


@cli.group()
def backup() -> None:
    """Back up and restore the agent's whole state: config, tokens, model registry,
    exporter spool and dead letters, console history, and the files the config names
    (key files, TLS). See docs/operations.md."""


@backup.command("create")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="Archive to write (tar.gz, mode 0600).")
@click.option("--registry-only", is_flag=True, help="Only the model registry (versions, aliases, audit logs), as earlier versions wrote it.")
@registry_option
@model_config_option
def backup_create_cmd(out_file: str, registry_only: bool, registry_dir: str | None, config_path: str | None) -> None:
    """Write the state, with a manifest of checksums, to one tar.gz; safe while the agent runs."""
    from agent.backup import StateSources, create
    from agent.config import read_config_text, resolve_config_path
    from agent.mlops.registry import backup_create

    cfg = _mlops_config(config_path)
    if registry_only:
        manifest = _registry_call(backup_create, registry_dir or cfg.get("mlops.registry_dir"), out_file)
        click.echo(f"wrote {out_file}: {len(manifest['files'])} files")
        return
    path, _ = resolve_config_path(config_path)
    sources = StateSources.from_config(path, read_config_text(path) if path else "", cfg.get, registry_dir)
    manifest = _backup_call(create, sources, out_file)
    for note in manifest["skipped"]:
        click.echo(f"note: not in the backup: {note}", err=True)
    parts = ", ".join(sorted(manifest["parts"]))
    click.echo(f"wrote {out_file}: {len(manifest['files'])} files ({parts or 'nothing'})")


@backup.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--target", "target", default=None, type=click.Path(file_okay=False), help="Empty (or absent) directory to restore the whole state into; its agent.yaml uses the restored files.")
@click.option("--registry", "registry_dir", default=None, type=click.Path(file_okay=False), help="Restore only the model registry into this empty (or absent) directory (from either kind of backup).")
def backup_restore_cmd(archive: str, target: str | None, registry_dir: str | None) -> None:
    """Restore ARCHIVE into an empty directory; every file is checked against the manifest."""
    from agent.backup import RESTORED_CONFIG, restore, restore_registry

    if registry_dir is not None and target is None:
        manifest = _backup_call(restore_registry, archive, registry_dir)
        click.echo(f"restored {len(manifest['files'])} files into {registry_dir}")
        return
    if target is None or registry_dir is not None:
        _fail("give exactly one of --target DIR (the whole state) and --registry DIR (the model registry only)", 2)
        return
    manifest = _backup_call(restore, archive, target)
    config = os.path.join(os.path.abspath(target), RESTORED_CONFIG)
    click.echo(f"restored {len(manifest['files'])} files into {target}; start it with: predis-agent run --config {config}")


def main() -> None:
    cli(prog_name="predis-agent")

# SPDX-License-Identifier: Apache-2.0
"""Configuration: one YAML file, validated against a JSON Schema, with secret references.

Flow (one way): YAML text → parse (keeping line numbers, rejecting duplicate keys) →
``--set`` overrides → secret references resolved into :class:`Secret` objects →
defaults filled from the schema → validated (every problem reported with its key path
and line) → :class:`Config`.

Secret references are whole or embedded ``${env:NAME}``, ``${file:/abs/path}`` and
``${cred:NAME}`` (a systemd ``LoadCredential=`` file in ``$CREDENTIALS_DIRECTORY``);
``$${`` writes a literal ``${``. A value that contains a reference becomes a
:class:`Secret`, which never prints its value: ``str()``, ``repr()``, logging,
``config show`` and error messages all see ``***``. Code that needs the value calls
``.reveal()``.

Only keys the schema marks ``"writeOnly": true`` (API keys, passwords) keep the
:class:`Secret` wrapper in the loaded config. Elsewhere a reference is substituted as a
plain string, so that ``listen: "${env:BIND}:9470"`` works; the value is still
registered for log scrubbing and ``config show`` still prints the reference, not the
value.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import math
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import jsonschema
import yaml

from agent.config_rules import RULES, Rule, check_rules
from agent.errors import AgentError, ConfigError, ConfigProblem
from agent.hookspecs import CONFIG_SECTION_NAMESPACES
from config_schema import load_schema

DEFAULT_CONFIG_PATH = "/etc/predis/agent.yaml"
CONFIG_ENV_VAR = "PREDIS_AGENT_CONFIG"
REDACTED = "***"
# What the schema's end-anchored patterns end with ($ alone matches before a final newline
# in Python's re, which jsonschema uses).
END_ANCHOR_GUARD = "(?!\\n)"
# A secret shorter than this is not scrubbed from free text (it would mangle logs);
# it is still never printed through Secret's own str()/repr().
MIN_SCRUB_LENGTH = 4

# Bounds on what a config can make the agent read and build. They are constants, not
# config keys: they protect the parsing of the config itself. docs/security.md lists them.
# A secret file (${file:...}, ${cred:...}) larger than this is refused: keys and passwords are small.
MAX_SECRET_FILE_BYTES = 64 * 1024
# A config file (or text) larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 1024 * 1024
# Values (mappings, lists and scalars) in the document with every alias expanded: an alias
# bomb ("billion laughs") is refused as soon as its expansion passes this.
MAX_YAML_NODES = 100_000
# Nesting depth of mappings and lists, aliases expanded.
MAX_YAML_DEPTH = 64

_REF_RE = re.compile(r"\$\$\{|\$\{(env|file|cred):([^}]*)\}")

Path_ = tuple[str, ...]


# What a secret written literally into the config file shows instead of a reference.
LITERAL_SECRET_REF = "literal in the config file; give it as ${env:NAME}, ${file:/path} or ${cred:NAME}"


class Secret:
    """A config value that came from a secret reference. Prints as ``***``.

    ``reveal()`` gives its text; ``reveal_bytes()`` the exact bytes of the file or
    credential a whole ``${file:...}`` / ``${cred:...}`` reference named (a key file of 32
    raw bytes is not text: its text form is then their base64, which key parsers accept
    too)."""

    __slots__ = ("_value", "_raw", "ref")

    def __init__(self, value: str, ref: str, raw: bytes | None = None) -> None:
        self._value = value
        self._raw = raw
        self.ref = ref
        if len(value) >= MIN_SCRUB_LENGTH:
            _SECRET_VALUES.add(value)

    @classmethod
    def literal(cls, value: str) -> Secret:
        """A secret written into the config file itself (not a reference): kept and used,
        but never printed, like any other (its "reference" says where it came from)."""
        return cls(value, LITERAL_SECRET_REF)

    @property
    def is_literal(self) -> bool:
        return self.ref == LITERAL_SECRET_REF

    def reveal(self) -> str:
        """Return the plaintext. Do not log it."""
        return self._value

    def reveal_bytes(self) -> bytes:
        """The referenced file's exact bytes (else the text, UTF-8). Do not log them."""
        return self._raw if self._raw is not None else self._value.encode("utf-8")

    def reread(self) -> Secret:
        """Resolve the reference again (a rotated key file or credential); a literal is
        itself.

        Raises ValueError, without the value, when the reference no longer resolves.
        """
        if self.is_literal:
            return self
        value, problems, _ = resolve_secrets(self.ref)
        if problems:
            raise ValueError(problems[0].message)
        if not isinstance(value, Secret):
            raise ValueError(f"{self.ref} no longer resolves to a secret")
        return value

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Secret({self.ref!r})"

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value and other._raw == self._raw and other.ref == self.ref

    def __hash__(self) -> int:
        return hash((self.ref, self._value))


class _SecretValues:
    """Process-wide set of resolved secret values, used to scrub logs and output."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        with self._lock:
            self._values.add(value)

    def scrub(self, text: str) -> str:
        if not self._values:
            return text
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text


_SECRET_VALUES = _SecretValues()


def scrub(text: str) -> str:
    """Replace every known secret value in ``text`` with ``***``."""
    return _SECRET_VALUES.scrub(text)


def dotted(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


# ---------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------


class ConfigYamlError(AgentError, yaml.MarkedYAMLError):
    """A YAML document the config loader refuses to read (a bound passed, a tag, a recursive alias)."""

    def __init__(self, problem: str, mark: Any) -> None:
        # MarkedYAMLError's initialiser, the one super() reaches (AgentError has none), named
        # outright: PyYAML has no type information, so a checker would look past it.
        yaml.MarkedYAMLError.__init__(self, problem=problem, problem_mark=mark)


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds, for text an operator (or an attacker) wrote.

    Numbers in exponent form without a dot (``2e-6``, ``1E3``) read as floats, as YAML 1.2
    and JSON do; YAML 1.1 takes them for strings, and a schema's "expected number" for
    ``max_model_seconds_per_read: 2e-6`` would puzzle anyone who wrote it.

    Composing counts every value as the document would be once its aliases are expanded
    and refuses, at the first node that passes a bound, an expansion above
    :data:`MAX_YAML_NODES`, nesting deeper than :data:`MAX_YAML_DEPTH`, an alias inside
    the value it names (recursive) and explicit tags (``!!python/object``, ``!!binary``,
    ``!custom``): a config is plain mappings, lists and scalars. An alias costs what it
    expands to, so a "billion laughs" document stops after a few thousand events instead
    of growing until memory runs out.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height), aliases expanded
        self._open_anchors: set[str] = set()
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise ConfigYamlError(
                    f"recursive alias *{event.anchor}: the alias is inside the value its anchor names; "
                    "a config must be a tree, so copy the value instead",
                    event.start_mark,
                )
            node = super().compose_node(parent, index)
            count, height = self._expanded[id(node)]
            if self._depth + height > MAX_YAML_DEPTH:
                raise ConfigYamlError(
                    f"alias *{event.anchor} nests values deeper than {MAX_YAML_DEPTH} levels once expanded", event.start_mark
                )
            return node
        tag = getattr(event, "tag", None)
        if tag is not None:
            raise ConfigYamlError(
                f"YAML tag {tag!r} is not accepted in the agent config: write plain mappings, lists and scalars "
                "(quote a value to make it a string)",
                event.start_mark,
            )
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise ConfigYamlError(f"values nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        anchor = event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        node = super().compose_node(parent, index)
        if anchor is not None:
            self._open_anchors.discard(anchor)
        self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        sizes = [self._expanded[id(child)] for child in children]
        count = 1 + sum(c for c, _ in sizes)
        height = 1 + max((h for _, h in sizes), default=0)
        if count > MAX_YAML_NODES:
            raise ConfigYamlError(
                f"the document expands to more than {MAX_YAML_NODES} values (aliases counted as copies of what they name); "
                "a config this large is refused, check it for an alias bomb",
                event.start_mark,
            )
        self._expanded[id(node)] = (count, height)
        return node


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

# What reading a hostile document can raise besides YAMLError: an integer with more
# digits than Python converts (ValueError), and what a bound does not foresee.
_PARSE_FAILURES = (yaml.YAMLError, ValueError, OverflowError, RecursionError, MemoryError)


def _check_size(text: str, source: str) -> None:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [ConfigProblem("", f"config text is {len(text)} characters, more than the {MAX_CONFIG_BYTES} accepted; "
                           "is this the right file?")],
            source,
        )


def _yaml_problem(exc: BaseException) -> ConfigProblem:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    if isinstance(exc, ConfigYamlError):
        return ConfigProblem("", f"YAML refused: {exc.problem}", line)
    if isinstance(exc, yaml.YAMLError):
        problem = getattr(exc, "problem", None) or str(exc)
        return ConfigProblem("", f"YAML syntax error: {problem}", line)
    if isinstance(exc, RecursionError):
        return ConfigProblem("", "YAML refused: values nested too deeply to read", line)
    if isinstance(exc, MemoryError):
        return ConfigProblem("", "YAML refused: reading it ran out of memory", line)
    return ConfigProblem("", f"YAML refused: {exc.__class__.__name__}: {exc}", line)


def load_yaml(text: str) -> Any:
    """One YAML document, read by :class:`ConfigLoader` (bounded; raises ``yaml.YAMLError``)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigYamlError(f"YAML text is more than {MAX_CONFIG_BYTES} characters", None)
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError:
        raise
    except (ValueError, OverflowError, RecursionError, MemoryError) as exc:
        raise ConfigYamlError(_yaml_problem(exc).message.removeprefix("YAML refused: "), None) from None


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML, returning the data and a map from key path to (1-based) line."""
    _check_size(text, source)
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines: dict[Path_, int] = {}
        problems: list[ConfigProblem] = []
        _walk_nodes(node, (), lines, problems)
        if problems:
            raise ConfigError(problems, source)
        data = loader.construct_document(node)
    except ConfigError:
        raise
    except _PARSE_FAILURES as exc:
        raise ConfigError([_yaml_problem(exc)], source) from None
    finally:
        loader.dispose()
    return data, lines


def _walk_nodes(node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[ConfigProblem]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in seen:
                problems.append(ConfigProblem(dotted(child), "duplicate key", key_node.start_mark.line + 1))
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _walk_nodes(value_node, child, lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_nodes(item, (*path, str(index)), lines, problems)


# ---------------------------------------------------------------------------
# Overrides and secrets
# ---------------------------------------------------------------------------


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> list[ConfigProblem]:
    """Apply ``key.path=value`` overrides in place (value parsed as YAML)."""
    problems: list[ConfigProblem] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(ConfigProblem(key or item, "--set expects key.path=value"))
            continue
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                problems.append(ConfigProblem(dotted(parts[: depth + 1]), "--set cannot descend into a non-mapping"))
                break
            node = nxt
        else:
            node[parts[-1]] = value
    return problems


def _credentials_dir() -> str | None:
    return os.environ.get("CREDENTIALS_DIRECTORY")


def _resolve_ref_bytes(kind: str, arg: str, path: str) -> tuple[str | None, bytes | None, str | None]:
    """Return (text, the file's bytes or None, error). Errors never contain the value. A
    file that is not UTF-8 (a key of raw bytes) has its base64 as its text."""
    arg = arg.strip()
    if kind == "env":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", arg):
            return None, None, f"invalid environment variable name in ${{env:{arg}}}"
        value = os.environ.get(arg)
        if value is None:
            return None, None, f"environment variable {arg} is not set (referenced as ${{env:{arg}}})"
        return value, None, None
    if kind == "cred":
        base = _credentials_dir()
        if not base:
            return None, None, f"${{cred:{arg}}} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", arg) or arg in {".", ".."}:
            return None, None, f"invalid credential name in ${{cred:{arg}}}"
        file_path = os.path.join(base, arg)
    else:
        if not os.path.isabs(arg):
            return None, None, f"${{file:{arg}}} must name an absolute path"
        file_path = arg
    try:
        raw = read_regular_file(file_path, MAX_SECRET_FILE_BYTES, "secret file")
    except FileNotFoundError:
        return None, None, f"secret file {file_path} does not exist"
    except PermissionError:
        return None, None, f"secret file {file_path} is not readable by this user"
    except FileReadRefused as exc:
        return None, None, str(exc)
    except OSError as exc:
        return None, None, f"secret file {file_path} cannot be read ({type(exc).__name__})"
    try:
        return raw.decode("utf-8").rstrip("\r\n"), raw, None
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), raw, None


class FileReadRefused(AgentError, OSError):
    """A file that is not read: not a regular file, or larger than its cap. The message says which."""


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular_file(path: str, max_bytes: int, what: str) -> bytes:
    """The bytes of regular file ``path``, refusing anything else without blocking.

    Opened with ``O_NONBLOCK`` (a FIFO with no writer does not hang the open) and checked
    with ``fstat`` on the open descriptor (no race with a rename): a directory, FIFO,
    device or socket raises :class:`FileReadRefused`, and so does a file longer than
    ``max_bytes`` (at most ``max_bytes + 1`` bytes are read, whatever its size claims).
    Other ``OSError`` (missing, no permission) propagate as they are.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise FileReadRefused(f"{what} {path} is {kind}; expected a regular file: point the reference at a file")
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileReadRefused(f"{what} {path} is larger than the {max_bytes} bytes accepted; is this the right file?")
    return data


def resolve_secrets(data: Any, path: Path_ = ()) -> tuple[Any, list[ConfigProblem], set[Path_]]:
    """Replace strings holding references by :class:`Secret`; return (data, problems, secret paths)."""
    problems: list[ConfigProblem] = []
    secret_paths: set[Path_] = set()

    def walk(value: Any, where: Path_) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*where, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*where, str(i))) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return substitute(value, where)
        return value

    def substitute(text: str, where: Path_) -> Any:
        found_ref = False
        failed = False
        out: list[str] = []
        pos = 0
        for match in _REF_RE.finditer(text):
            out.append(text[pos : match.start()])
            pos = match.end()
            if match.group(0) == "$${":
                out.append("${")
                continue
            found_ref = True
            resolved, raw, error = _resolve_ref_bytes(match.group(1), match.group(2), dotted(where))
            if error:
                problems.append(ConfigProblem(dotted(where), error))
                failed = True
            else:
                out.append(resolved or "")
        out.append(text[pos:])
        if not found_ref:
            return "".join(out)
        secret_paths.add(where)
        whole = raw if not failed and len(out) == 3 and out[0] == out[2] == "" else None  # the reference alone
        return Secret("" if failed else "".join(out), text, whole)

    return walk(data, path), problems, secret_paths


def reveal_all(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: reveal_all(v) for k, v in data.items()}
    if isinstance(data, list):
        return [reveal_all(v) for v in data]
    if isinstance(data, Secret):
        return data.reveal()
    return data


def redact(data: Any) -> Any:
    """A copy safe to print: secrets become ``*** (<reference>)``."""
    if isinstance(data, dict):
        return {k: redact(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, Secret):
        return f"{REDACTED} ({data.ref})"
    return data


# ---------------------------------------------------------------------------
# Schema: base + plugin fragments, defaults, validation
# ---------------------------------------------------------------------------


def plugin_section_schema(fragment: Mapping[str, Any] | None) -> dict[str, Any]:
    """Wrap a plugin's schema fragment into its ``plugins.<name>`` section schema."""
    section: dict[str, Any] = copy.deepcopy(dict(fragment)) if fragment else {}
    section.setdefault("type", "object")
    section.setdefault("additionalProperties", False)
    section["default"] = {}
    props = section.setdefault("properties", {})
    props["enabled"] = {"type": "boolean", "default": True, "description": "Load this plugin."}
    return section


def declared_section_schema(fragment: Mapping[str, Any]) -> dict[str, Any]:
    """A section a plugin declared (``exporters.<name>``, ``collectors.<name>``), with the
    defaults the host gives it: an object, no unknown keys, present even when left out."""
    section: dict[str, Any] = copy.deepcopy(dict(fragment))
    section.setdefault("type", "object")
    section.setdefault("additionalProperties", False)
    section.setdefault("default", {})
    return section


def build_schema(
    plugin_fragments: Mapping[str, Mapping[str, Any] | None] | None = None,
    opaque_plugins: Iterable[str] = (),
    plugin_sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The base schema with one section per known plugin and the sections plugins declared.

    ``plugin_sections`` maps ``exporters.<name>``/``collectors.<name>`` to the section's
    schema (``agent.plugins.PluginHost.config_sections`` checked them); they come before the
    core's own sub-sections of the same namespace, in the order given.

    ``opaque_plugins`` are plugins that are installed but could not be loaded (failed or
    blocked), or whose schema hooks failed: their ``plugins.<name>`` sections are accepted as
    they are and, since the sections they would declare are unknown, so are sub-sections of
    ``exporters`` and ``collectors`` that nobody declared. A broken plugin never makes an
    otherwise good config invalid.
    """
    schema = load_schema()
    opaque = list(opaque_plugins)
    plugins = schema["properties"]["plugins"]
    props: dict[str, Any] = {}
    for name, fragment in (plugin_fragments or {}).items():
        props[name] = plugin_section_schema(fragment)
    for name in opaque:
        props.setdefault(name, {"type": "object", "default": {}})
    plugins["properties"] = props
    plugins["additionalProperties"] = False
    declared: dict[str, dict[str, Any]] = {namespace: {} for namespace in CONFIG_SECTION_NAMESPACES}
    for path, fragment in (plugin_sections or {}).items():
        namespace, _, name = path.partition(".")
        core = schema["properties"].get(namespace, {}).get("properties", {})
        if namespace not in declared or not name or "." in name or name in core:
            raise ValueError(f"plugin section {path!r} is not a free exporters.<name> or collectors.<name> path")
        declared[namespace][name] = declared_section_schema(fragment)
    for namespace, sections in declared.items():
        node = schema["properties"][namespace]
        node["properties"] = {**sections, **node.get("properties", {})}
        if opaque:
            node["additionalProperties"] = {"type": "object"}
    return schema


def fill_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    """Insert schema defaults for absent properties, recursively, in place."""
    if not isinstance(instance, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if name in instance and isinstance(instance[name], dict):
            fill_defaults(instance[name], sub)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _describe(error: jsonschema.ValidationError, secret: bool) -> str:
    kind = error.validator
    want = error.validator_value
    found = REDACTED if secret else repr(error.instance)
    if kind == "type":
        expected = " or ".join(want) if isinstance(want, list) else want
        return f"expected {expected}, found {_json_type(error.instance)}"
    if kind == "enum":
        return f"expected one of {', '.join(repr(v) for v in want)}, found {found}"
    if kind in ("minimum", "exclusiveMinimum"):
        rel = "at least" if kind == "minimum" else "greater than"
        return f"must be {rel} {want}, found {found}"
    if kind in ("maximum", "exclusiveMaximum"):
        rel = "at most" if kind == "maximum" else "less than"
        return f"must be {rel} {want}, found {found}"
    if kind == "pattern":
        # The schema's patterns end in $(?!\n) so that Python's $ cannot match before a final
        # newline; the message shows the pattern as a person reads it.
        shown = str(want).removesuffix(END_ANCHOR_GUARD)
        return f"{found} does not match the pattern {shown}"
    if kind == "minLength" and want == 1:
        return "must not be empty: give a value, or leave the key out to use its default"
    if kind == "minLength":
        return f"must be at least {want} characters long"
    if kind == "maxLength":
        return f"must be at most {want} characters long"
    if kind == "required":
        return error.message
    if kind == "uniqueItems":
        return "items must be unique"
    if secret or isinstance(error.instance, (dict, list)):
        return f"fails the '{kind}' rule ({want!r})"
    return error.message


def validate(
    data: Any, schema: Mapping[str, Any], lines: Mapping[Path_, int], secret_paths: set[Path_]
) -> list[ConfigProblem]:
    """Return every problem in ``data`` (which must already hold defaults)."""
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[ConfigProblem] = []
    revealed = reveal_all(data)
    for error in validator.iter_errors(revealed):
        path = tuple(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - allowed):
                child = (*path, str(key))
                choices = ", ".join(sorted(allowed)) or "none"
                problems.append(ConfigProblem(dotted(child), f"unknown key (allowed here: {choices})", lines.get(child)))
            continue
        secret = _holds_secret(path, secret_paths)
        message = scrub(_describe(error, secret))
        problems.append(ConfigProblem(dotted(path), message, _line_for(path, lines)))
    reported = {p.path for p in problems}
    for path, value in _non_finite_numbers(revealed, ()):
        if dotted(path) not in reported:
            problems.append(
                ConfigProblem(
                    dotted(path),
                    f"must be a finite number, found {value!r} (.nan, .inf and -.inf are not accepted): write a number",
                    _line_for(path, lines),
                )
            )
    problems.sort(key=lambda p: (p.line or 0, p.path))
    return problems


def _non_finite_numbers(value: Any, path: Path_) -> Iterator[tuple[Path_, float]]:
    """Every NaN or infinity in ``value``: the schema's ``minimum``/``maximum`` let NaN through
    (every comparison with it is false), and no setting means anything with one."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_numbers(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite_numbers(item, (*path, str(index)))


def _holds_secret(path: Path_, secret_paths: set[Path_]) -> bool:
    """True when the value at ``path`` is a secret, lies inside one, or contains one.

    A mapping or list that holds a secret somewhere below it would print the plaintext
    through ``repr(instance)``, so it is redacted like the secret itself.
    """
    for secret_path in secret_paths:
        common = min(len(path), len(secret_path))
        if path[:common] == secret_path[:common]:
            return True
    return False


def _line_for(path: Path_, lines: Mapping[Path_, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


# ---------------------------------------------------------------------------
# Sections as typed settings
# ---------------------------------------------------------------------------

SettingsT = TypeVar("SettingsT")

# Dataclass field metadata naming the config key a field is read from, when it differs.
CONFIG_KEY = "config_key"


def settings_of(cls: type[SettingsT], section: Mapping[str, Any], **given: Any) -> SettingsT:
    """The settings dataclass ``cls`` from a validated config ``section``: the one way a
    section becomes a typed object.

    Every init field is read from the section (at the key its ``config_key`` metadata
    names, else its own name) unless it is ``given``. Defaults live in the schema alone:
    a field the section does not hold is a programming error (KeyError naming it), never
    a silent dataclass default.
    """
    values: dict[str, Any] = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        if not spec.init:
            continue
        if spec.name in given:
            values[spec.name] = given[spec.name]
            continue
        key = spec.metadata.get(CONFIG_KEY, spec.name)
        if key not in section:
            raise KeyError(f"{cls.__name__}.{spec.name}: the config section has no key {key!r} (the schema must give it a default)")
        values[spec.name] = section[key]
    unknown = set(given) - set(values)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return cls(**values)


# ---------------------------------------------------------------------------
# The Config object
# ---------------------------------------------------------------------------


@dataclass
class Config:
    """A validated config with defaults filled in. Treat it as read-only."""

    data: dict[str, Any]
    source: str | None = None
    text_digest: str | None = None
    secret_paths: set[Path_] = field(default_factory=set)
    secret_refs: dict[Path_, str] = field(default_factory=dict)
    # writeOnly keys holding a secret written literally (kept, never printed; warned about)
    literal_secrets: list[str] = field(default_factory=list)

    def get(self, path: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def section(self, path: str) -> dict[str, Any]:
        value = self.get(path, {})
        return value if isinstance(value, dict) else {}

    def plugin_config(self, name: str) -> dict[str, Any]:
        return self.section(f"plugins.{name}")

    def plugin_enabled(self, name: str) -> bool:
        return bool(self.plugin_config(name).get("enabled", True))

    def redacted(self) -> dict[str, Any]:
        result: dict[str, Any] = redact(self.data)
        for path, ref in self.secret_refs.items():
            node: Any = result
            for part in path[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            key: Any = int(path[-1]) if isinstance(node, list) else path[-1]
            node[key] = f"{REDACTED} ({ref})"
        return result

    def secrets(self) -> Iterator[Secret]:
        def walk(value: Any) -> Iterator[Secret]:
            if isinstance(value, Secret):
                yield value
            elif isinstance(value, dict):
                for v in value.values():
                    yield from walk(v)
            elif isinstance(value, list):
                for v in value:
                    yield from walk(v)

        return walk(self.data)


def resolve_config_path(explicit: str | None) -> tuple[str | None, bool]:
    """Return (path or None for the embedded default, whether it was asked for explicitly)."""
    if explicit:
        return explicit, True
    env = os.environ.get(CONFIG_ENV_VAR)
    if env:
        return env, True
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH, False
    return None, False


def read_config_text(path: str) -> str:
    """The config file's text: a regular file of at most :data:`MAX_CONFIG_BYTES` bytes."""
    try:
        return read_regular_file(path, MAX_CONFIG_BYTES, "config file").decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem("", f"config file {path} does not exist")], path) from None
    except FileReadRefused as exc:
        raise ConfigError([ConfigProblem("", str(exc))], path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem("", f"cannot read config file {path}: {exc.__class__.__name__}")], path) from None


def load_config(
    path: str | None,
    *,
    overrides: Iterable[str] = (),
    plugin_fragments: Mapping[str, Mapping[str, Any] | None] | None = None,
    opaque_plugins: Iterable[str] = (),
    plugin_sections: Mapping[str, Mapping[str, Any]] | None = None,
    plugin_rules: Iterable[Rule] = (),
    text: str | None = None,
) -> Config:
    """Load, resolve and validate a config. Raises :class:`ConfigError` listing every problem.

    ``path`` None means the embedded default (the schema's defaults). The plugins' parts
    of the schema are :func:`build_schema`'s arguments (``PluginHost.schema_parts()``).
    """
    source = path or "<embedded default>"
    if text is None:
        text = read_config_text(path) if path else ""
    data, lines = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem("", f"expected a mapping at the top level, found {_json_type(data)}", 1)], source)
    problems = apply_overrides(data, overrides)
    data, secret_problems, secret_paths = resolve_secrets(data)
    problems.extend(secret_problems)
    schema = build_schema(plugin_fragments, opaque_plugins, plugin_sections)
    literal_paths = _wrap_literal_secrets(data, schema, secret_paths)
    fill_defaults(data, schema)
    problems.extend(validate(data, schema, lines, secret_paths))
    if not problems:
        problems.extend(
            ConfigProblem(p.path, p.message, _line_for(tuple(p.path.split(".")), lines)) for p in check_rules(data, RULES + tuple(plugin_rules))
        )
    if problems:
        raise ConfigError(problems, source)
    refs = _unwrap_plain_references(data, schema, secret_paths)
    digest = hashlib.sha256(text.encode("utf-8") + repr(list(overrides)).encode()).hexdigest()
    return Config(data=data, source=path, text_digest=digest, secret_paths=secret_paths, secret_refs=refs, literal_secrets=literal_paths)


def _wrap_literal_secrets(data: Any, schema: Mapping[str, Any], secret_paths: set[Path_], path: Path_ = ()) -> list[str]:
    """Wrap every string written literally at a writeOnly key (an API key, a password) into
    a :class:`Secret`, so that it is never printed (``config show``, error messages, logs);
    return their dotted paths, which ``config validate`` and the agent warn about."""
    found: list[str] = []
    if not isinstance(data, dict):
        return found
    for key, value in data.items():
        where = (*path, str(key))
        if isinstance(value, dict):
            found += _wrap_literal_secrets(value, schema, secret_paths, where)
        elif isinstance(value, str) and value and _schema_at(schema, where).get("writeOnly"):
            data[key] = Secret.literal(value)
            secret_paths.add(where)
            found.append(dotted(where))
    return found


def _schema_at(schema: Mapping[str, Any], path: Path_) -> Mapping[str, Any]:
    node: Mapping[str, Any] = schema
    for part in path:
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif "items" in node and part.isdigit():
            node = node["items"]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    return node


def _unwrap_plain_references(data: dict[str, Any], schema: Mapping[str, Any], secret_paths: set[Path_]) -> dict[Path_, str]:
    """Replace Secrets at keys not marked writeOnly by their string; return path → reference."""
    refs: dict[Path_, str] = {}
    for path in secret_paths:
        node: Any = data
        for part in path[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(path[-1]) if isinstance(node, list) else path[-1]
        value = node[key]
        if not isinstance(value, Secret):
            continue
        refs[path] = value.ref
        if not _schema_at(schema, path).get("writeOnly"):
            node[key] = value.reveal()
    return refs


def changed_paths(old: Any, new: Any, path: Path_ = ()) -> set[str]:
    """Dotted paths of every leaf that differs between two configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        changed: set[str] = set()
        for key in set(old) | set(new):
            if key not in old or key not in new:
                changed.add(dotted((*path, key)))
            else:
                changed |= changed_paths(old[key], new[key], (*path, key))
        return changed
    return set() if old == new else {dotted(path)}


def section_changed(changed: Iterable[str], prefixes: Iterable[str]) -> bool:
    """True when any changed path lies under (or above) one of ``prefixes``."""
    prefixes = tuple(prefixes)
    for path in changed:
        for prefix in prefixes:
            if path == prefix or path.startswith(prefix + ".") or prefix.startswith(path + "."):
                return True
    return False


class SecretScrubFilter(logging.Filter):
    """Logging filter that replaces known secret values in every record's text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True

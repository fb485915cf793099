# SPDX-License-Identifier: Apache-2.0
"""State files (issue 21, item 8): a token store looser than 0600 is refused, and tenant
IDs are anchored at the end of the string wherever they are validated.

Reproduced first: a 0666 token store was accepted silently, and the schema's tenant-ID
pattern let ``"acme\\n"`` through (``$`` in Python's ``re`` also matches before a final
newline, and jsonschema uses ``re.search``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.config import load_config
from agent.docgen import builtin_schema
from agent.errors import AuthError, ConfigError, SecurityError
from agent.security import TokenStore, validate_tenant_id

pytestmark = pytest.mark.security


# ----------------------------------------------------------------------------- token store modes


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640, 0o604, 0o700, 0o620], ids=lambda m: f"{m:04o}")
def test_a_token_store_looser_than_0600_accepts_no_token(tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens.json"
    token, record = TokenStore(path).create("ops")
    os.chmod(path, mode)
    store = TokenStore(path)
    with caplog.at_level(logging.ERROR, logger="agent.security"):
        with pytest.raises(AuthError):
            store.verify(token)
    assert store.load_error is not None
    assert f"mode {mode:04o}" in store.load_error and "chmod 600" in store.load_error and str(path) in store.load_error
    assert [r.getMessage() for r in caplog.records if "looser than 0600" in r.getMessage()], "the refusal is logged"
    with pytest.raises(SecurityError, match="looser than 0600"):
        store.create("more")
    # Tightened by the operator: accepted again without a restart.
    os.chmod(path, 0o600)
    assert store.verify(token).id == record.id and store.load_error is None


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=lambda m: f"{m:04o}")
def test_a_token_store_at_0600_or_stricter_is_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "tokens.json"
    token, record = TokenStore(path).create("ops")
    os.chmod(path, mode)
    assert TokenStore(path).verify(token).id == record.id


def test_a_store_loosened_while_the_agent_runs_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    token, _ = store.create("ops")
    assert store.verify(token)
    os.chmod(path, 0o666)  # only the mode changes: same inode, size and mtime
    with pytest.raises(AuthError):
        store.verify(token)


# ----------------------------------------------------------------------------- tenant IDs


BAD_TENANTS = ["acme\n", "acme\r\n", "\nacme", "acme ", "ACME", "ac", "-acme", "a" * 51, "acme\x00", "ac/me", "acme\n\n"]


def _tenant_problem(tenant: str) -> str | None:
    try:
        load_config(None, text=json.dumps({"mlops": {"tenant": tenant}}))
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("tenant", BAD_TENANTS)
def test_the_schema_refuses_bad_tenant_ids(tenant: str) -> None:
    problem = _tenant_problem(tenant)
    assert problem is not None and "mlops.tenant" in problem, f"{tenant!r} was accepted"
    with pytest.raises(SecurityError):
        validate_tenant_id(tenant)


@pytest.mark.parametrize("tenant", ["acme", "a-1", "tenant_42", "a" * 50])
def test_the_schema_accepts_good_tenant_ids(tenant: str) -> None:
    assert _tenant_problem(tenant) is None
    assert validate_tenant_id(tenant) == tenant


def _patterns(node: Any, where: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            found.append((where, node["pattern"]))
        for key, value in node.items():
            found.extend(_patterns(value, f"{where}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_patterns(value, f"{where}/{i}"))
    return found


END = "$(?!\\n)"
# A value each end-anchored pattern accepts, by the name of its property.
SAMPLES = {
    "listen": "127.0.0.1:6390",
    "origin": "files",
    "path": "/metrics",
    "api_host": "https://api.datadoghq.com",
    "endpoint": "https://example.com",
    "endpoint_url": "https://s3.example.com",
    "tags": "env:prod",
    "namespace": "Predis",
    "region": "us-east-1",
    "role_arn": "arn:aws:iam::123456789012:role/predis",
    "tenant": "acme",
    "url": "redis://127.0.0.1:6379/0",
    "root": "/srv/data",
    "bucket": "my-bucket",
    "prefix": "cache/",
    "currency": "USD",
}


def _sample(where: str) -> str | None:
    parts = [p for p in where.split("/") if p not in ("properties", "items", "pattern", "additionalProperties") and not p.isdigit()]
    for part in reversed(parts):
        if part in SAMPLES:
            return SAMPLES[part]
    return None


def test_no_schema_pattern_lets_a_trailing_newline_through() -> None:
    """Every end-anchored pattern of the schema, plugins' sections included, ends with
    ``$(?!\\n)`` (valid in JSON Schema's ECMA-262 dialect too, where ``$`` alone would do),
    and refuses a value that matched only because ``$`` matched before a final newline."""
    patterns = _patterns(builtin_schema())
    anchored = [(where, pattern) for where, pattern in patterns if pattern.endswith("$") or pattern.endswith(END)]
    assert len(anchored) >= 15
    loose = [(where, pattern) for where, pattern in anchored if not pattern.endswith(END)]
    assert loose == [], "patterns that accept a trailing newline"
    tried = 0
    for where, pattern in anchored:
        sample = _sample(where)
        if sample is None:
            continue
        validator = jsonschema.Draft202012Validator({"type": "string", "pattern": pattern})
        assert validator.is_valid(sample), (where, pattern, sample)
        assert not validator.is_valid(sample + "\n"), f"{where}: {pattern!r} accepts {sample!r} plus a newline"
        tried += 1
    assert tried >= 12


def test_a_metric_name_with_a_trailing_newline_is_not_sent_to_datadog() -> None:
    from agent.telemetry import Metric
    from plugins.exporters.datadog import DatadogExporter

    exporter = DatadogExporter(None, {"api_host": "http://127.0.0.1:9", "api_key": "k", "host": "h", "service_check": False})
    payloads = exporter.encode([Metric("predis_probe\n", 1.0, "gauge", {}, ""), Metric("predis_probe", 1.0, "gauge", {}, "")])
    assert [s["metric"] for p in payloads for s in p.body["series"]] == ["predis.probe"]
    assert exporter.last_report.rejected == {"invalid_name": 1}

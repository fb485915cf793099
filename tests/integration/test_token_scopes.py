# SPDX-License-Identifier: Apache-2.0
"""Token scopes on a running agent: every route answers its scope and refuses the lower ones
with a 403 that says what is needed; a token stored before scopes keeps full access."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from agent.security import hash_token
from tests.agentproc import AgentProcess, cli
from tests.peers import free_port

pytestmark = pytest.mark.integration

# Which routes each scope may call (each includes the ones before it).
ROUTES = (("GET", "/metrics", "metrics"), ("GET", "/readyz", "read"), ("GET", "/status", "read"), ("POST", "/reload", "admin"))
SCOPES = ("metrics", "read", "admin")


def test_each_route_takes_its_scope_and_refuses_the_lower_ones(tmp_path: Path) -> None:
    metrics_port = free_port()
    agent = AgentProcess(tmp_path, {"agent": {"reload": {"watch": False}}, "exporters": {"prometheus": {"listen": f"127.0.0.1:{metrics_port}"}}})
    tokens = {}
    for scope in SCOPES:
        out = cli("token", "create", "--config", str(agent.config_path), "--name", f"{scope}-token", "--scope", scope, env=agent.env)
        tokens[scope] = out.stdout.strip()
        assert f"created {scope} token" in out.stderr
    agent.token = tokens["admin"]
    agent.start()
    try:
        for method, path, needed in ROUTES:
            for scope, token in tokens.items():
                response = requests.request(method, agent.base_url + path, headers=agent.headers(token), timeout=10)
                if SCOPES.index(scope) >= SCOPES.index(needed):
                    assert response.status_code == 200, (method, path, scope, response.text)
                else:
                    assert response.status_code == 403, (method, path, scope, response.text)
                    error = response.json()["error"]
                    assert f"token '{scope}-token' has scope '{scope}'" in error and f"needs scope '{needed}'" in error
                    assert f"token create --scope {needed}" in error
        # The metrics port of its own takes a metrics token too.
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", headers=agent.headers(tokens["metrics"]), timeout=10)
        assert scraped.status_code == 200 and "predis_agent_build_info" in scraped.text
        listed = json.loads(cli("token", "list", "--json", "--config", str(agent.config_path), env=agent.env).stdout)
        assert {row["name"]: row["scope"] for row in listed} == {f"{s}-token": s for s in SCOPES}
    finally:
        agent.stop()


def test_a_token_stored_before_scopes_keeps_full_access(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"agent": {"reload": {"watch": False}}})
    old = "pda_0123abcd_" + "B" * 43
    agent.token_store.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    agent.token_store.write_text(json.dumps({"version": 1, "tokens": [{"id": "0123abcd", "name": "old", "created": 1.0, "digest": hash_token(old)}]}))
    os.chmod(agent.token_store, 0o600)
    agent.token = old
    agent.start()
    try:
        assert agent.post("/reload").status_code == 200
        assert agent.get("/status").status_code == 200
    finally:
        agent.stop()

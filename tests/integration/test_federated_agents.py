# SPDX-License-Identifier: Apache-2.0
"""Federated learning over the network: a Flower SuperLink (``predis-agent federated serve``)
and three agents (each with its SuperNode), each under its own slice of one structured
workload, over loopback TLS. Host 1 learns from the segments it exported
(``mlops.federated.source: segments``), the others from their in-memory rings; each host's
example count is that of the reads it exported.

The agents are driven (redis-py) while the server is still down: they keep serving and
their clients keep retrying. Then the server runs 3 rounds with Flower's SuperNode
authentication: it registers the three agents' public keys (``--supernode-keys``); in the
plain run a fourth agent, whose key it does not know, is refused (its status says why; no
round counts it). Neither the server's nor an agent's Runtime API hands a task to a request without its
SuperExec secret. The server's audit record holds every message each client sent. Without SecAgg+, the test checks that each round's aggregate is
the example-weighted mean of the parameters the clients sent (within 1e-12; one host clips
and noises what it sends, and the aggregate is still the exact mean of what was sent). With
SecAgg+ (every host requires it), the server only receives masked vectors: the clients'
parameters are computed from the keys each agent exported (its segments hold the same reads
its ring gave the client) and the aggregate is their weighted mean within the quantisation
error the SecAgg+ parameters allow (:func:`secagg_bound`). Both check that no message holds a
key, a key's text or a fingerprint the agents logged, that /status and /metrics report the
rounds (and the noisy host's ε), and that the fleet's model is registered as a challenger and
canaried, never served directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dp_accounting
import httpx
import numpy
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dp_accounting.rdp import RdpAccountant
from flwr.common import parameters_to_ndarrays
from flwr.common.serde import message_from_proto
from flwr.compat.common.recorddict_compat import recorddict_to_evaluateres, recorddict_to_fitres
from flwr.proto.message_pb2 import Message as MessageProto

from agent.federated import runtime
from agent.mlops.dataset import read_segments
from agent.mlops.registry import ModelRegistry
from cache_core.models.template import TemplateScorer
from tests import peers
from tests.agentproc import AgentProcess, pid_running
from tests.polling import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from federated_workload import ENTITIES, FIELDS, host_trace

pytestmark = pytest.mark.integration

HOSTS = 3
ROUNDS = 3
READS = 1500
FINGERPRINT_BYTES = 8
TENANT = "fleet"
# Host 2 clips and noises its updates (the aggregate is still the weighted mean of what was sent).
NOISY = 2
# Host 1 learns from the segments it exported (mlops.federated.source: segments), the others
# from their rings.
FROM_SEGMENTS = 1
CLIP_NORM = 0.05
NOISE = 0.5
BREAKER_FAILURES = 2
BREAKER_RESET_SECONDS = 2
# Connections the hung server accepts and holds (the agent's first ones).
HUNG_CONNECTIONS = 1
# SecAgg+ settings of the secure run: every host shares with every other, two shares
# reconstruct a secret; parameters (rates in [0, 1]) are clipped to [-CLIP, CLIP] and
# quantised to QUANT integers; a host's weight is its example count over MAX_WEIGHT.
SECAGG_CLIP = 2.0
SECAGG_QUANT = 1 << 22
SECAGG_MAX_WEIGHT = 2 * READS


def supernode_key(home: Path, public_dir: Path) -> Path:
    """A SuperNode key pair as ``ssh-keygen -t ecdsa -b 384`` makes it: the private key (0600)
    in ``home``, the public key in ``public_dir`` (named after the home); the private key's path."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = home / "supernode.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    private.chmod(0o600)
    public_dir.mkdir(exist_ok=True)
    (public_dir / f"{home.name}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return private


def acquire_refused(address: str, ca: Path | None, task_type: str) -> int:
    """The HTTP status a Runtime API at ``address`` answers a task acquisition without its
    SuperExec secret with (raises while nothing answers, and if a task is handed out)."""
    client = runtime.runtime_client(address, None if ca is None else ca.read_bytes(), None, "SuperExec")
    try:
        got = runtime.acquire(client, task_type)
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code
    finally:
        client.close()
    raise AssertionError(f"{address} answered an unsigned acquisition with {got}")


def supernode_runtime(pid: int) -> tuple[int, bytes]:
    """The Runtime API port of agent ``pid``'s SuperNode and its SuperExec secret (its --port
    and the content of its --superexec-auth-secret-file)."""
    (node,) = supernodes(pid)
    argv = Path(f"/proc/{node}/cmdline").read_bytes().split(b"\0")
    secret = Path(argv[argv.index(b"--superexec-auth-secret-file") + 1].decode())
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.parent.stat().st_mode & 0o777 == 0o700
    return int(argv[argv.index(b"--port") + 1]), secret.read_bytes()


def agent_config(tmp: Path, port: int, ca: Path, prefetch: bool) -> dict[str, Any]:
    key_file = tmp / "segment.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o600)
    origin = tmp / "origin"
    origin.mkdir()
    serving = {
        "cache": {"read_through": True, "origin": "files", "prefetch": {"enabled": True, "model": "model"}},
        "plugins": {"files": {"root": str(origin)}},
    }
    return {
        **(serving if prefetch else {}),
        "agent": {"reload": {"watch": False}},
        "collectors": {
            "access_log": {
                "enabled": True,
                "store_raw_keys": True,
                "ring_capacity": 65536,
                "export_dir": str(tmp / "export"),
                "encryption_key": f"${{file:{key_file}}}",
                "flush_interval_seconds": 0.2,
                "min_free_bytes": 0,
                "min_free_percent": 0,
            }
        },
        "mlops": {
            "registry_dir": str(tmp / "models"),
            "tenant": TENANT,
            "check_interval_seconds": 0.5,
            "federated": {
                "enabled": True,
                "server": f"127.0.0.1:{port}",
                "tls": {"ca_file": str(ca)},
                "max_retries": 3,
                "max_wait_seconds": 10,
                "retry_interval_seconds": 3600,
                "backoff_seconds": 0.2,
                "max_backoff_seconds": 1,
                "breaker_failures": BREAKER_FAILURES,
                "breaker_reset_seconds": BREAKER_RESET_SECONDS,
            },
        },
    }


def drive(agent: AgentProcess, keys: list[bytes]) -> int:
    """GET every key (one pipeline); how many answers came back."""
    address = agent.status()["components"]["cache"]["resp"]["address"]
    client = redis.Redis(host="127.0.0.1", port=int(address.rsplit(":", 1)[1]), socket_timeout=10, protocol=2)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    answers = len(pipe.execute())
    client.close()
    return answers


def fingerprints(tmp: Path) -> set[bytes]:
    key = bytes.fromhex((tmp / "segment.key").read_text().strip())
    out: set[bytes] = set()
    for segment in read_segments(tmp / "export", [key]):
        for fp in segment.events["fp"].tolist():
            out |= {fp.to_bytes(FINGERPRINT_BYTES, "little"), fp.to_bytes(FINGERPRINT_BYTES, "big"), b"%016x" % fp}
    return out


def windows(blob: bytes, widths: set[int]) -> set[bytes]:
    return {blob[i : i + w] for w in widths for i in range(len(blob) - w + 1)}


def secagg_bound(params: list[list[numpy.ndarray]], weights: list[int], i: int) -> float:
    """Largest error SecAgg+ may add to coordinate array ``i`` of the weighted mean.

    Each host scales its parameters by r = round(w Q / M) / Q (its weight w over M, rounded
    to 1/Q), stochastically rounds them on a grid of step 2C/Q (error below one step) and the
    server divides the unmasked sum by Σr. Against the exact mean Σ w p / Σ w this is off by
    at most n · 2C/Q / Σr (the rounding of the n vectors) plus Σ|r - w/M| · max|p - mean| / Σr
    (the rounding of the weights, each below 1/(2Q))."""
    n = len(weights)
    ratios = [round(w * SECAGG_QUANT / SECAGG_MAX_WEIGHT) / SECAGG_QUANT for w in weights]
    mean = sum(p[i] * w for p, w in zip(params, weights)) / sum(weights)
    spread = max(float(numpy.abs(p[i] - mean).max()) for p in params)
    return (n * 2 * SECAGG_CLIP / SECAGG_QUANT + n / (2 * SECAGG_QUANT) * spread) / sum(ratios)


def exported_parameters(tmp: Path) -> tuple[list[numpy.ndarray], int]:
    """The template parameters and example count of the reads an agent exported."""
    key = bytes.fromhex((tmp / "segment.key").read_text().strip())
    scorer = TemplateScorer()
    for segment in read_segments(tmp / "export", [key]):
        scorer.observe_keys([k for k in segment.keys if k is not None])
    return scorer.rates(), scorer.examples


def recorded(where: Path) -> list[tuple[str, bytes]]:
    """(message type, bytes) of every message the clients sent in one round, as recorded."""
    index = json.loads((where / "messages" / "messages.json").read_text())
    assert not [e for e in index if e["error"]]
    return [(e["message_type"], (where / "messages" / e["file"]).read_bytes()) for e in index]


@pytest.mark.parametrize("secure", [False, True], ids=["fedavg", "secagg+"])
def test_three_agents_federate_over_tls(tmp_path: Path, secure: bool) -> None:
    cert = peers.self_signed_cert(tmp_path / "tls")
    port = peers.free_port()
    record = tmp_path / "record"
    keys = tmp_path / "supernode-keys"
    traces = [host_trace(h, READS, seed=h + 1) for h in range(HOSTS)]
    agents = []
    intruder = None
    try:
        for h in range(HOSTS):
            home = tmp_path / f"agent{h}"
            home.mkdir()
            config = agent_config(home, port, cert.cert, prefetch=h == 0)
            config["mlops"]["federated"]["auth_key_file"] = str(supernode_key(home, keys))
            if h == FROM_SEGMENTS:
                config["mlops"]["federated"]["source"] = "segments"
            if secure:
                config["mlops"]["federated"]["secure_aggregation"] = True
            elif h == NOISY:
                config["mlops"]["federated"].update(clip_norm=CLIP_NORM, noise_multiplier=NOISE)
            agents.append(AgentProcess(home, config).start())
        if not secure:
            # A fourth agent with a key of its own, which the server does not register.
            home = tmp_path / "intruder"
            home.mkdir()
            config = agent_config(home, port, cert.cert, prefetch=False)
            config["mlops"]["federated"]["auth_key_file"] = str(supernode_key(home, tmp_path / "unregistered"))
            intruder = AgentProcess(home, config).start()
        # The server is down: every agent serves its traffic all the same.
        for agent, trace in zip(agents, traces):
            assert drive(agent, trace) == READS
            # Failed connections open the breaker (the server is not tried until it half-opens).
            # (Each failed run starts a SuperNode, a Python process that imports Flower: slow on a busy machine.)
            federated = wait_for(lambda a=agent: (s := a.status()["components"]["federated"])["breaker"] == "open" and s, timeout=60, what="the breaker to open")
            assert federated["runs"]["error"] >= BREAKER_FAILURES
            assert federated["rounds_completed"] == 0 and federated["last_result"].startswith("error")
        wait_for(lambda: all(a.status()["components"]["access_log"]["events_exported"] >= READS for a in agents), timeout=30, what="the segments")
        server = subprocess.Popen(
            [
                sys.executable, "-m", "agent", "federated", "serve", "--listen", f"127.0.0.1:{port}",
                "--rounds", str(ROUNDS), "--min-clients", str(HOSTS),
                "--ca-file", str(cert.cert), "--certfile", str(cert.cert), "--keyfile", str(cert.key),
                "--supernode-keys", str(keys), "--record", str(record), "--json",
                *(["--secure-aggregation", "--num-shares", "1.0", "--reconstruction-threshold", "0.5",
                   "--clipping-range", str(SECAGG_CLIP), "--quantization-range", str(SECAGG_QUANT),
                   "--max-weight", str(SECAGG_MAX_WEIGHT)] if secure else []),
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # The SuperLink's Runtime API hands the run's ServerApp task to serve alone.
            assert wait_for(lambda: acquire_refused(f"127.0.0.1:{port}", cert.cert, runtime.SERVER_TASK), what="the SuperLink's Runtime API") == 401
            if intruder is not None:
                # The unregistered agent's SuperNode is refused: its run fails, and says why.
                refused = wait_for(lambda: "Failed to activate SuperNode" in str((s := intruder.status()["components"]["federated"])["last_result"]) and s, what="the intruder refused")
                assert refused["authenticated"] is True and refused["rounds_completed"] == 0
            out, err = server.communicate(timeout=180)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
        assert server.returncode == 0, err
        result = json.loads(out)
        assert result["rounds_completed"] == ROUNDS
        statuses = [wait_for(lambda a=a: (s := a.status()["components"]["federated"])["registered_version"] is not None and s, timeout=60, what="the fleet's model registered") for a in agents]
        for h, status in enumerate(statuses):
            assert status["rounds_completed"] == ROUNDS and status["tls"] is True and status["authenticated"] is True
            assert status["examples"] > 0 and (status["epsilon_spent"] is None) == (secure or h != NOISY)
        assert wait_for(lambda: agents[0].metric("predis_mlops_federated_rounds_total") == ROUNDS, what="the rounds metric")
        if not secure:
            # The noisy host clipped and noised its updates; its budget is dp-accounting's RDP over
            # its rounds (sensitivity two clip norms), in /status, /metrics and its registered meta.
            accountant = RdpAccountant()
            accountant.compose(dp_accounting.GaussianDpEvent(NOISE / 2), ROUNDS)
            epsilon = accountant.get_epsilon(1e-5)
            assert statuses[NOISY]["epsilon_spent"] == pytest.approx(epsilon) and statuses[NOISY]["delta"] == 1e-5
            assert wait_for(lambda: agents[NOISY].metric("predis_mlops_federated_epsilon"), what="the epsilon metric") == pytest.approx(epsilon)
            noisy_meta = ModelRegistry(tmp_path / f"agent{NOISY}" / "models").meta(TENANT, 1)["federated"]
            assert noisy_meta["epsilon"] == pytest.approx(epsilon) and noisy_meta["noise_multiplier"] == NOISE and noisy_meta["clip_norm"] == CLIP_NORM
        # Agent 0 prefetches: the fleet's model is registered with its provenance as the
        # challenger, never served as such, and the canary against the local model starts.
        registry = ModelRegistry(tmp_path / "agent0" / "models")
        assert statuses[0]["registered_version"] == 1 and statuses[1]["registered_version"] == 1
        assert registry.aliases(TENANT) == {"champion": None, "challenger": 1}
        meta = registry.meta(TENANT, 1)
        assert meta["kind"] == "federated" and meta["parent"] is None
        assert meta["federated"]["rounds"] == ROUNDS and meta["federated"]["host_examples"] == statuses[0]["examples"]
        assert meta["federated"]["epsilon"] is None and meta["federated"]["server"] == f"127.0.0.1:{port}"
        mlops = wait_for(lambda: (m := agents[0].status()["components"]["mlops"])["rollout"] and m, timeout=30, what="the canary")
        assert mlops["rollout"]["challenger_version"] == 1 and mlops["serving_version"] is None
        model, _ = registry.load_model(TENANT, 1)
        assert model.template is not None and model.template.shared_pair.any()
        # An agent's SuperNode hands its tasks to the agent alone, too.
        assert agents[0].proc is not None
        node_port, node_secret = supernode_runtime(agents[0].proc.pid)
        assert acquire_refused(f"127.0.0.1:{node_port}", None, runtime.CLIENT_TASK) == 401
        assert node_secret not in agents[0].logs().encode()
        if intruder is not None:
            intruded = intruder.status()["components"]["federated"]
            assert intruded["rounds_completed"] == 0 and intruded["registered_version"] is None and intruded["runs"]["ok"] == 0
        secrets = set().union(*(fingerprints(tmp_path / f"agent{h}") for h in range(HOSTS)))
        exported = [exported_parameters(tmp_path / f"agent{h}") for h in range(HOSTS)]
    finally:
        for agent in [*agents, *([intruder] if intruder else [])]:
            assert agent.stop() == 0

    messages = []
    for r in range(1, ROUNDS + 1):
        where = record / f"round-{r:03d}"
        fits = json.loads((where / "fit.json").read_text())["clients"]
        assert len(fits) == HOSTS
        assert sum("update_norm" in entry["metrics"] for entry in fits) == (0 if secure else 1)
        round_messages = recorded(where)
        messages += [blob for _, blob in round_messages]
        replies = [(kind, message_from_proto(MessageProto.FromString(blob))) for kind, blob in round_messages]
        with numpy.load(where / "aggregate.npz") as data:
            aggregate = [data[f"arr_{i}"] for i in range(len(data.files))]
        # Every host learned all its reads (its ring's or its segments'; all were logged and
        # exported before the first round) and sends the same parameters every round.
        weights = [n for _, n in exported]
        assert sorted(entry["num_examples"] for entry in fits) == sorted(weights) and len(set(weights)) > 1
        if secure:
            # Four SecAgg+ stages and the evaluate step, one message each per host; the train
            # replies hold no parameters the server could read, only the masked vector.
            assert sorted(kind for kind, _ in replies) == sorted(["train"] * 4 * HOSTS + ["evaluate"] * HOSTS)
            assert all(len(part) == 0 for kind, reply in replies if kind == "train" for part in reply.content.array_records.values())
            configs = [reply.content.config_records.get("secaggplus_configs", {}) for kind, reply in replies if kind == "train"]
            assert sum("masked_params" in c for c in configs) == HOSTS
            for i, part in enumerate(aggregate):
                mean = sum(params[i] * n for (params, _), n in zip(exported, weights)) / sum(weights)
                assert numpy.abs(part - mean).max() <= secagg_bound([p for p, _ in exported], weights, i)
                assert part.any()
        else:
            fit_sent = [recorddict_to_fitres(reply.content, keep_input=True) for kind, reply in replies if kind == "train"]
            assert len(fit_sent) == HOSTS
            sent = [(parameters_to_ndarrays(res.parameters), res.num_examples) for res in fit_sent]
            total = sum(n for _, n in sent)
            assert total > 0 and len({n for _, n in sent}) > 1
            for i, part in enumerate(aggregate):
                mean = sum(params[i] * n for params, n in sent) / total
                assert numpy.abs(part - mean).max() <= 1e-12
                assert part.any()
        evaluations = [recorddict_to_evaluateres(reply.content) for kind, reply in replies if kind == "evaluate"]
        assert len(evaluations) == HOSTS and all(res.num_examples > 0 for res in evaluations)
    assert len(messages) == (5 if secure else 2) * HOSTS * ROUNDS
    # Every key starts with "entity:" and ends with ":field": with none of those, no key (nor
    # a template's text) is in a message. (A bare word can be: NumPy's array header says "fortran_order".)
    words = [f"{e}:".encode() for e in ENTITIES] + [f":{f}".encode() for f in FIELDS]
    for blob in messages:
        assert not [w for w in words if w in blob]
        assert not any(key in blob for key in traces[0][:50])
        assert not windows(blob, {len(s) for s in secrets}) & secrets


def test_an_agent_serves_and_stops_while_the_server_hangs(tmp_path: Path) -> None:
    """A server that accepts connections and never answers (a hung or overloaded host)."""
    cert = peers.self_signed_cert(tmp_path / "tls")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        held: list[socket.socket] = []
        accepting = threading.Thread(target=lambda: held.extend(listener.accept()[0] for _ in range(HUNG_CONNECTIONS)), daemon=True)
        accepting.start()
        home = tmp_path / "agent"
        home.mkdir()
        agent = AgentProcess(home, agent_config(home, port, cert.cert, prefetch=False)).start()
        try:
            wait_for(lambda: held, what="the agent to connect")
            trace = host_trace(0, READS, seed=1)
            assert drive(agent, trace) == READS
            wait_for(lambda: agent.status()["components"]["access_log"]["events_logged"] >= READS, what="the reads logged")
            status = agent.status()["components"]
            assert status["federated"]["rounds_completed"] == 0 and status["federated"]["state"] in ("connecting", "backing_off")
        finally:
            assert agent.stop() == 0
            for conn in held:
                conn.close()


def supernodes(pid: int) -> list[int]:
    """The flower-supernode children of process ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"flower-supernode" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
            except FileNotFoundError:
                continue
    return found


def test_a_killed_agent_leaves_no_supernode_behind(tmp_path: Path) -> None:
    """An agent killed outright takes its SuperNode with it: an orphan would stay connected
    to the fleet, be counted in its rounds and never answer."""
    cert = peers.self_signed_cert(tmp_path / "tls")
    home = tmp_path / "agent"
    home.mkdir()
    config = agent_config(home, peers.free_port(), cert.cert, prefetch=False)
    # Retries that outlast the test: the SuperNode does not end by itself.
    config["mlops"]["federated"].update(max_retries=1000, max_wait_seconds=3600)
    agent = AgentProcess(home, config).start()
    try:
        assert agent.proc is not None
        (node,) = wait_for(lambda: supernodes(agent.proc.pid), what="the SuperNode")  # type: ignore[union-attr]
        agent.signal(signal.SIGKILL)
        agent.proc.wait(timeout=10)
        wait_for(lambda: not pid_running(node), timeout=30, what="the orphaned SuperNode to end")
    finally:
        agent.stop()

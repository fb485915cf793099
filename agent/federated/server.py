# SPDX-License-Identifier: Apache-2.0
"""``predis-agent federated serve``: the fleet's Flower SuperLink and its ServerApp, FedAvg by examples.

Starts Flower's SuperLink (``flower-superlink`` on ``--listen``, TLS from ``--ca-file``,
``--certfile`` and ``--keyfile``; agent.federated.runtime), starts one run on it and runs
the run's ServerApp (agent.federated.flower_app) in this process: Flower's default
workflow with Flower's :class:`~flwr.server.strategy.FedAvg`: every round waits for
``--min-clients`` agents, sends them the fleet's parameters and averages what they answer
weighted by their example counts (with ``--secure-aggregation``, through Flower's SecAgg+
workflow: the server only ever holds the masked vectors and their sum); every round ends
with an evaluate step that sends the aggregate to every agent, which keeps the last one as
its federated model. The SuperLink stops when the run ends.

Only the SuperNodes whose public keys ``--supernode-keys`` names join (Flower's SuperNode
authentication: ``serve`` registers them through the SuperLink's Control API, and its
rounds pick only their node IDs); the run's ServerApp task is acquired with a SuperExec
secret only ``serve`` holds (docs/federated.md, "Ports and trust").

With ``--record DIR`` the server keeps an audit of each round (``round-NNN/``): every
message a client sent (``messages/NNN-<type>-<node>.pb``: Flower's serialized
``Message``, exactly the content that crossed the wire, listed in ``messages.json``), the
example counts and metrics (``fit.json``, ``evaluate.json``) and the aggregated parameters
(``aggregate.npz``), so an operator can check what the hosts shared.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy
from flwr.app import Message
from flwr.common import EvaluateRes, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.serde import message_to_proto
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.serverapp.grid import Grid

from agent.federated.client import empty_parameters
from cache_core.files import atomic_file

log = logging.getLogger("predis.federated")
# How often the ServerApp asks the SuperLink for the replies it waits for (Flower's own grid
# waits 3 s between pulls: four SecAgg+ stages and an evaluate step make that 15 s a round).
PULL_INTERVAL_SECONDS = 0.2
# How often serve checks that its SuperLink is up, and how long it waits for it to be.
STARTUP_POLL_SECONDS = 0.2
STARTUP_TIMEOUT_SECONDS = 120.0


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _write(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def round_dir(record: Path, server_round: int) -> Path:
    return _private_dir(record / f"round-{server_round:03d}")


class RecordingFedAvg(FedAvg):
    """FedAvg (weighted by examples) that records each round under ``record`` when given, and
    tells the clients in the evaluate step which round it is of how many."""

    def __init__(self, min_clients: int, record: Path | None, rounds: int) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=min_clients,
            min_evaluate_clients=min_clients,
            min_available_clients=min_clients,
            initial_parameters=ndarrays_to_parameters(empty_parameters()),
            fit_metrics_aggregation_fn=_weighted_metrics,
            evaluate_metrics_aggregation_fn=_weighted_metrics,
            on_evaluate_config_fn=lambda server_round: {"server_round": server_round, "num_rounds": rounds},
        )
        self.record = record
        self.rounds_completed = 0

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[tuple[ClientProxy, FitRes] | BaseException]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        aggregated, metrics = super().aggregate_fit(server_round, results, failures)
        if self.record is not None:
            where = round_dir(self.record, server_round)
            clients = [{"num_examples": res.num_examples, "metrics": dict(res.metrics)} for _, res in results]
            _write(where / "fit.json", json.dumps({"clients": clients, "failures": len(failures), "metrics": dict(metrics)}, indent=1).encode())
            if aggregated is not None:
                _write(where / "aggregate.npz", _npz(parameters_to_ndarrays(aggregated)))
        log.info("federated: round %d aggregated %d result(s), %d failure(s)", server_round, len(results), len(failures))
        if aggregated is not None:
            self.rounds_completed = server_round
        return aggregated, metrics

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]
    ) -> tuple[float | None, dict[str, Scalar]]:
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)
        if self.record is not None:
            clients = [{"num_examples": res.num_examples, "loss": res.loss} for _, res in results]
            _write(round_dir(self.record, server_round) / "evaluate.json", json.dumps({"clients": clients, "failures": len(failures), "loss": loss}, indent=1).encode())
        return loss, metrics


class RecordingGrid(Grid):
    """The ServerApp's grid: Flower's, polled every :data:`PULL_INTERVAL_SECONDS`, and with
    ``record``, every reply a client sent kept under its round (the message's group). With
    ``nodes``, a round only ever picks the SuperNodes ``serve`` registered (their node IDs):
    one that registered itself through the SuperLink's open Control API is never sent the
    fleet's parameters, and no reply of its is ever asked for."""

    def __init__(self, grid: Grid, record: Path | None, nodes: set[int] | None = None) -> None:
        self.grid = grid
        self.record = record
        self.nodes = nodes
        self.count = 0

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        found = self.grid.get_node_ids()
        return found if self.nodes is None else [node for node in found if node in self.nodes]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        if self.record is not None:
            for reply in replies:
                self._keep(reply)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(PULL_INTERVAL_SECONDS)
        return replies

    def _keep(self, reply: Message) -> None:
        assert self.record is not None
        group = reply.metadata.group_id
        where = _private_dir(round_dir(self.record, int(group) if group.isdigit() else 0) / "messages")
        self.count += 1
        name = f"{self.count:04d}-{reply.metadata.message_type}-{reply.metadata.src_node_id}.pb"
        _write(where / name, message_to_proto(reply).SerializeToString())
        index = where / "messages.json"
        entries = json.loads(index.read_text()) if index.exists() else []
        entries.append({"file": name, "message_type": reply.metadata.message_type, "node": reply.metadata.src_node_id, "error": reply.has_error()})
        _write(index, json.dumps(entries, indent=1).encode())


def _npz(arrays: list[numpy.ndarray]) -> bytes:
    buffer = io.BytesIO()
    numpy.savez(buffer, *arrays)
    return buffer.getvalue()


def _weighted_metrics(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Each numeric metric's mean over the clients, weighted by their example counts."""
    total = sum(n for n, _ in results)
    names = {name for _, metrics in results for name, value in metrics.items() if isinstance(value, (int, float))}
    if total == 0:
        return {}
    return {name: sum(n * float(m.get(name, 0.0)) for n, m in results) / total for name in sorted(names)}


def _control_client(address: str, root_certificates: bytes | None) -> Any:
    from flwr.supercore.control.control_http_client import ControlHttpClient

    return ControlHttpClient.from_server_address(address, root_certificates is None, root_certificates, [])


def register_supernodes(control: Any, public_keys: list[bytes]) -> list[int]:
    """Register the SuperNodes allowed to join (their public keys) with the SuperLink's Control
    API (what ``flwr supernode register`` does); their node IDs."""
    from flwr.proto.control_pb2 import RegisterNodeRequest

    nodes = []
    for key in public_keys:
        got = _try(control.RegisterNode, RegisterNodeRequest(public_key=key))
        if got is None:
            raise RuntimeError("the SuperLink did not answer the registration of a SuperNode key")
        nodes.append(int(got.node_id))
    return nodes


def serve(listen: str, run_config: dict[str, Any], tls: tuple[str, str, str] | None, supernode_keys: list[bytes] | None, secret: bytes | None = None) -> dict[str, Any]:
    """Run one run of ``run_config["rounds"]`` rounds on a SuperLink at ``listen`` (``tls``: CA,
    certificate and key files); what it achieved. With ``supernode_keys`` (public keys, see
    :func:`agent.federated.runtime.load_public_key`), only those SuperNodes join (Flower's
    SuperNode authentication) and the rounds only pick them; None lets any SuperNode join.
    ``secret`` is the SuperExec secret the run's ServerApp task is acquired with (a fresh one
    when None); it is never logged."""
    from flwr.common.serde import fab_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    from agent.federated import flower_app, runtime
    from agent.net import parse_listen

    runtime.quiet_http_logs()
    host, port = parse_listen(listen)
    record = run_config["record"]
    if record:
        _private_dir(Path(record))
    # Our own clients reach the SuperLink on loopback when it listens on every address.
    address = f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else listen
    certs = None if tls is None else Path(tls[0]).read_bytes()
    secret = secret or runtime.new_secret()
    superlink = runtime.start_superlink(host, port, tls, secret, supernode_keys is not None)
    try:
        control = _control_client(address, certs)
        try:
            # The first call waits for the SuperLink to answer; a refusal of a key ends serve.
            _until(lambda: _try(control.ListRuns, _list_runs()), superlink, STARTUP_TIMEOUT_SECONDS, "the SuperLink to start")
            nodes = None if supernode_keys is None else register_supernodes(control, supernode_keys)
            run_config = {**run_config, "supernodes": "" if nodes is None else json.dumps(nodes)}
            if nodes is not None:
                log.info("federated: %d SuperNode(s) registered (node IDs %s); no other SuperNode joins", len(nodes), nodes)
            with tempfile.TemporaryDirectory(prefix="predis-fab-") as staging:
                content, fab_hash = runtime.build_fab(Path(staging), run_config)
            request = StartRunRequest(fab=fab_to_proto(Fab(fab_hash, content, {})))
            started = _until(lambda: _try(control.StartRun, request), superlink, STARTUP_TIMEOUT_SECONDS, "the SuperLink to start")
            run_id = int(started.run_id)
        finally:
            control.close()
        log.info("federated: run %d started on %s (%d round(s), %d client(s) a round)", run_id, listen, run_config["rounds"], run_config["min-clients"])
        acquirer = runtime.runtime_client(address, certs, None, "SuperExec", secret)
        try:
            token, task_run = _until(lambda: _try(runtime.acquire, acquirer, runtime.SERVER_TASK), superlink, STARTUP_TIMEOUT_SECONDS, "the run's ServerApp task")
        finally:
            acquirer.close()
        if task_run != run_id:
            # Anyone who reaches the port reaches the Control API too (docs/federated.md).
            raise RuntimeError(f"the SuperLink offered the ServerApp task of run {task_run}, not of this run {run_id}: another client started a run on it")
        context = runtime.run_server_task(address, certs, token, flower_app.server_app, run_config)
    finally:
        superlink.stop()
    result = context.state.config_records[flower_app.RESULT_RECORD]
    return {"rounds_completed": int(result["rounds_completed"]), "losses": json.loads(str(result["losses"])), "metrics": json.loads(str(result["metrics"]))}


def _list_runs() -> Any:
    from flwr.proto.control_pb2 import ListRunsRequest

    return ListRunsRequest()


def _try(call: Any, *args: Any) -> Any:
    """``call(*args)``; None while the SuperLink does not answer yet."""
    import httpx

    try:
        return call(*args)
    except httpx.TransportError:
        return None
    except httpx.HTTPStatusError as exc:
        raise RuntimeError(f"the SuperLink answered {exc.response.status_code} to {exc.request.url.path} (its log, logger predis.federated.flower, says why)") from exc


def _until(probe: Any, superlink: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if superlink.poll() is not None:
            raise RuntimeError(f"the SuperLink exited (status {superlink.poll()}) while waiting for {what}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f}s")
        time.sleep(STARTUP_POLL_SECONDS)

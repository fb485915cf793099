# SPDX-License-Identifier: Apache-2.0
"""``predis-agent federated serve``: the Flower server of a fleet, FedAvg weighted by examples.

Runs Flower's gRPC server (``flwr.server.start_server``, TLS from ``--ca-file``,
``--certfile`` and ``--keyfile``) with Flower's :class:`~flwr.server.strategy.FedAvg`:
every round waits for ``--min-clients`` agents, sends them the fleet's parameters, and
averages what they answer weighted by their example counts; after the last round it sends
the result to every agent (the evaluate step), which keeps it as its federated model.

With ``--record DIR`` the server keeps an audit of each round: every message a client
sent (its serialized Flower ``FitRes`` and ``EvaluateRes``, exactly the content that
crossed the wire), the example counts and metrics, and the aggregated parameters
(``round-NNN/``), so an operator can check what the hosts shared.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy
from flwr.common import EvaluateRes, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.serde import evaluate_res_to_proto, fit_res_to_proto
from flwr.server import ServerConfig, start_server
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from agent.federated.client import empty_parameters
from cache_core.files import atomic_file

log = logging.getLogger("predis.federated")


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _write(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


class RecordingFedAvg(FedAvg):
    """FedAvg (weighted by examples) that records each round under ``record`` when given."""

    def __init__(self, min_clients: int, record: Path | None) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=min_clients,
            min_evaluate_clients=min_clients,
            min_available_clients=min_clients,
            initial_parameters=ndarrays_to_parameters(empty_parameters()),
            fit_metrics_aggregation_fn=_weighted_metrics,
            evaluate_metrics_aggregation_fn=_weighted_metrics,
        )
        self.record = record
        self.rounds_completed = 0

    def _round_dir(self, server_round: int) -> Path | None:
        return None if self.record is None else _private_dir(self.record / f"round-{server_round:03d}")

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[tuple[ClientProxy, FitRes] | BaseException]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        aggregated, metrics = super().aggregate_fit(server_round, results, failures)
        where = self._round_dir(server_round)
        if where is not None:
            clients = []
            for i, (_, res) in enumerate(results):
                _write(where / f"fit-{i}.pb", fit_res_to_proto(res).SerializeToString())
                clients.append({"message": f"fit-{i}.pb", "num_examples": res.num_examples, "metrics": dict(res.metrics)})
            _write(where / "fit.json", json.dumps({"clients": clients, "failures": len(failures), "metrics": dict(metrics)}, indent=1).encode())
            if aggregated is not None:
                buffer = _npz(parameters_to_ndarrays(aggregated))
                _write(where / "aggregate.npz", buffer)
        log.info("federated: round %d aggregated %d result(s), %d failure(s)", server_round, len(results), len(failures))
        if aggregated is not None:
            self.rounds_completed = server_round
        return aggregated, metrics

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]
    ) -> tuple[float | None, dict[str, Scalar]]:
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)
        where = self._round_dir(server_round)
        if where is not None:
            clients = []
            for i, (_, res) in enumerate(results):
                _write(where / f"evaluate-{i}.pb", evaluate_res_to_proto(res).SerializeToString())
                clients.append({"message": f"evaluate-{i}.pb", "num_examples": res.num_examples, "loss": res.loss})
            _write(where / "evaluate.json", json.dumps({"clients": clients, "failures": len(failures), "loss": loss}, indent=1).encode())
        return loss, metrics


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


def serve(listen: str, rounds: int, min_clients: int, certificates: tuple[bytes, bytes, bytes] | None, record: Path | None, round_timeout: float | None) -> dict[str, Any]:
    """Run ``rounds`` rounds on ``listen``; what the run achieved."""
    strategy = RecordingFedAvg(min_clients, None if record is None else _private_dir(record))
    history = start_server(server_address=listen, config=ServerConfig(num_rounds=rounds, round_timeout=round_timeout), strategy=strategy, certificates=certificates)
    return {
        "rounds_completed": strategy.rounds_completed,
        "losses": [[r, loss] for r, loss in history.losses_distributed],
        "metrics": {name: [[r, v] for r, v in values] for name, values in history.metrics_distributed_fit.items()},
    }

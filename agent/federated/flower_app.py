# SPDX-License-Identifier: Apache-2.0
"""The fleet's Flower apps: the ClientApp each agent runs and the ServerApp of ``federated serve``.

**ClientApp** (:data:`client_app`): answers the server's messages with the host's
:class:`~agent.federated.client.TemplateClient`, which the agent registers here
(:func:`register`; the app runs in the agent's own process, agent.federated.runtime).
Under SecAgg+ (a train message carrying the ``secaggplus_configs`` record) the messages go
through Flower's ``secaggplus_mod``: the host's parameters leave it only masked. A host
with ``mlops.federated.secure_aggregation: true`` refuses to train for a run without it.

**ServerApp** (:data:`server_app`): Flower's FedAvg weighted by examples
(:class:`~agent.federated.server.RecordingFedAvg`) in Flower's default workflow, with
Flower's ``SecAggPlusWorkflow`` as the fit step when the run config asks for it. Its
settings come from the run config (:data:`RUN_CONFIG_KEYS`); what it achieved goes back in
its context's state (``predis_result``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.client import ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from agent.errors import AgentError

RESULT_RECORD = "predis_result"
# The run config the ServerApp reads (``predis-agent federated serve`` sets every key;
# ``supernodes``: the JSON list of the node IDs it registered, empty when any may join).
RUN_CONFIG_KEYS = (
    "rounds",
    "min-clients",
    "round-timeout",
    "record",
    "secure-aggregation",
    "num-shares",
    "reconstruction-threshold",
    "clipping-range",
    "quantization-range",
    "max-weight",
    "supernodes",
)


class PlainUpdateRefused(AgentError, RuntimeError):
    """This host requires SecAgg+ and the server asked for its parameters in the clear."""


class _Participant:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: Any = None
        self.require_secure = False


_participant = _Participant()


def register(client: Any, require_secure: bool) -> None:
    """Make ``client`` (a NumPyClient) the one this process's ClientApp answers with."""
    with _participant.lock:
        _participant.client = client
        _participant.require_secure = require_secure


def _client_fn(context: Context) -> Any:
    with _participant.lock:
        client = _participant.client
    if client is None:
        raise RuntimeError("no federated participant is registered in this process")
    return client.to_client()


def _secure_aggregation(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ runs; a plain train message is refused when the
    host requires SecAgg+ and passes through otherwise."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    with _participant.lock:
        require = _participant.require_secure
    if require:
        raise PlainUpdateRefused("this host requires secure aggregation (mlops.federated.secure_aggregation) and the run does not use SecAgg+")
    return call_next(msg, ctxt)


client_app = ClientApp(client_fn=_client_fn, mods=[_secure_aggregation])
server_app = ServerApp()


@server_app.main()
def _serve(grid: Any, context: Context) -> None:
    from agent.federated.server import RecordingFedAvg, RecordingGrid

    cfg = context.run_config
    rounds = int(cfg["rounds"])
    record = Path(str(cfg["record"])) if cfg["record"] else None
    timeout = float(cfg["round-timeout"]) or None
    strategy = RecordingFedAvg(int(cfg["min-clients"]), record, rounds)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds, round_timeout=timeout), strategy=strategy)
    fit = None
    if cfg["secure-aggregation"]:
        fit = SecAggPlusWorkflow(
            num_shares=_share_setting(cfg["num-shares"]),
            reconstruction_threshold=_share_setting(cfg["reconstruction-threshold"]),
            max_weight=float(cfg["max-weight"]),
            clipping_range=float(cfg["clipping-range"]),
            quantization_range=int(cfg["quantization-range"]),
            timeout=timeout,
        )
    nodes = set(json.loads(str(cfg["supernodes"]))) if cfg["supernodes"] else None
    DefaultWorkflow(fit_workflow=fit)(RecordingGrid(grid, record, nodes), legacy)
    history = legacy.history
    context.state.config_records[RESULT_RECORD] = ConfigRecord(
        {
            "rounds_completed": strategy.rounds_completed,
            "losses": json.dumps([[r, loss] for r, loss in history.losses_distributed]),
            "metrics": json.dumps({name: [[r, v] for r, v in values] for name, values in history.metrics_distributed_fit.items()}),
        }
    )


def _share_setting(value: Any) -> int | float:
    """SecAgg+ reads a whole number as a count of clients and a fraction as a proportion."""
    number = float(value)
    return int(number) if number.is_integer() and number > 1 else number

# SPDX-License-Identifier: Apache-2.0
"""The agent's Flower client: trains the key-free template scorer on this host's reads.

Each round the server sends the fleet's parameters; the client takes them as its prior,
learns from the reads logged since the last round (raw keys from the access-log ring or
its exported segments, ``collectors.access_log.store_raw_keys``), and answers with its parameters (clipped and
noised when configured, agent.federated.privacy), its example count and scalar metrics.
Nothing else leaves the host: no key, no template text, no fingerprint (the parameters
are the per-example rates of cache_core.models.template, arrays of fixed shape indexed by
a public hash); under SecAgg+ they leave it only masked (agent.federated.flower_app). The
evaluate step receives the round's aggregate, scores it on the host's own transitions (a
log-loss) and keeps it; the last round's is the host's federated model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy
from flwr.client import NumPyClient

from agent.federated.privacy import PrivacyAccountant, PrivacySettings, privatize
from cache_core.models.template import TemplateScorer

# Probability floor of the log-loss (a transition the model gives no chance costs this much).
LOSS_FLOOR = 1e-6


class TemplateClient(NumPyClient):
    """One host's participant: ``keys()`` returns the raw keys read since its last call."""

    def __init__(
        self,
        scorer: TemplateScorer,
        keys: Callable[[], list[bytes]],
        privacy: PrivacySettings,
        accountant: PrivacyAccountant,
        on_round: Callable[[dict[str, Any]], None],
        seed: int | None = None,
    ) -> None:
        self.scorer = scorer
        self.keys = keys
        self.privacy = privacy
        self.accountant = accountant
        self.on_round = on_round
        self.rng = numpy.random.default_rng(seed)

    def get_parameters(self, config: dict[str, Any]) -> list[numpy.ndarray]:
        return self.scorer.rates()

    def fit(self, parameters: list[numpy.ndarray], config: dict[str, Any]) -> tuple[list[numpy.ndarray], int, dict[str, Any]]:
        self.scorer.set_shared(parameters)
        added = self.scorer.observe_keys(self.keys())
        sent, norm = privatize(self.scorer.rates(), [numpy.asarray(p, dtype=numpy.float64) for p in parameters], self.privacy, self.rng)
        if self.accountant.active:
            self.accountant.spend_round()
        metrics: dict[str, Any] = {"examples_added": int(added)}
        if norm is not None:
            metrics["update_norm"] = float(norm)
        self.on_round({"step": "fit", "examples": self.scorer.examples, "examples_added": added})
        return sent, int(self.scorer.examples), metrics

    def evaluate(self, parameters: list[numpy.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        self.scorer.set_shared(parameters)
        loss = self.log_loss(parameters)
        final = "num_rounds" in config and config.get("server_round") == config["num_rounds"]
        self.on_round({"step": "evaluate", "loss": loss, "final": final})
        return loss, int(self.scorer.examples), {}

    def log_loss(self, parameters: list[numpy.ndarray]) -> float:
        """Cross-entropy of this host's template pairs under the fleet's pair rates (nats)."""
        pair = numpy.asarray(parameters[0], dtype=numpy.float64)
        if self.scorer.examples == 0:
            return 0.0
        local = self.scorer.pair / self.scorer.examples
        shared = numpy.maximum(pair, 0.0)
        total = float(shared.sum())
        if total <= 0.0:
            return -math.log(LOSS_FLOOR)
        probs = numpy.maximum(shared / total, LOSS_FLOOR)
        used = local > 0
        return float(-(local[used] * numpy.log(probs[used])).sum())


def empty_parameters() -> list[numpy.ndarray]:
    """The fleet's parameters before any round: no transition known."""
    return TemplateScorer().rates()
